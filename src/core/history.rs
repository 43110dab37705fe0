//! The allocation history and audit log, sans-IO: the record of every
//! grant, denial, release, expiry, preemption and local change, the query
//! over it, and the retention rule.
//!
//! The node ([`crate::net::node`]) builds a [`HistoryEvent`] where something
//! happens and writes it with the next store transaction (a grant and its
//! record commit together). [`crate::store::Store`] keeps them in redb under
//! a monotonic id, answers [`HistoryQuery`]s newest first, and prunes by
//! [`prune_count`]. Nothing here reads a clock: `now_ms` comes in.
//!
//! Records are bounded: the `detail` text, the `reason` and the models
//! listed are cut to fixed sizes, so a hostile peer cannot grow a record,
//! and [`HistoryConfig::max_events`] bounds how many are kept.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Lease, LeaseId, NodeId, Priority, ResourceRequirements};
use crate::units;

/// Longest `detail`, in characters.
pub const MAX_DETAIL_CHARS: usize = 300;
/// Longest `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 64;
/// Most models listed in a resource summary, each at most 64 bytes.
pub const MAX_MODELS: usize = 4;
/// Default number of records a query returns.
pub const DEFAULT_LIMIT: usize = 100;
/// Most records one query may return.
pub const MAX_LIMIT: usize = 10_000;

/// What kind of thing happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// A lease was granted (at once, from the queue, or a reservation began).
    Grant,
    /// A request was refused (with the reason), or its wait ran out.
    Denial,
    /// A request was put in an owner's wait queue.
    Queued,
    /// A lease (or a waiting request) was given back.
    Release,
    /// A lease ran out without being renewed.
    Expiry,
    /// A lease was ended for a higher-priority request (or for the
    /// machine's owner, under elastic sharing).
    Preemption,
    /// A lease this node held was lost (its owner went away, or forgot it).
    Lost,
    /// The access policy, balancing strategy, scheduling policy or a quota
    /// changed.
    PolicyChange,
    /// A group was created, joined, left, or someone was invited.
    GroupChange,
    /// A resource pool was created or deleted.
    PoolChange,
    /// An advance reservation was booked, refused, cancelled, started or ended.
    Reservation,
}

impl HistoryKind {
    /// Every kind, in order.
    pub const ALL: [HistoryKind; 11] = [
        HistoryKind::Grant,
        HistoryKind::Denial,
        HistoryKind::Queued,
        HistoryKind::Release,
        HistoryKind::Expiry,
        HistoryKind::Preemption,
        HistoryKind::Lost,
        HistoryKind::PolicyChange,
        HistoryKind::GroupChange,
        HistoryKind::PoolChange,
        HistoryKind::Reservation,
    ];

    /// The snake_case name used in JSON, queries and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            HistoryKind::Grant => "grant",
            HistoryKind::Denial => "denial",
            HistoryKind::Queued => "queued",
            HistoryKind::Release => "release",
            HistoryKind::Expiry => "expiry",
            HistoryKind::Preemption => "preemption",
            HistoryKind::Lost => "lost",
            HistoryKind::PolicyChange => "policy_change",
            HistoryKind::GroupChange => "group_change",
            HistoryKind::PoolChange => "pool_change",
            HistoryKind::Reservation => "reservation",
        }
    }
}

impl fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HistoryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        HistoryKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = HistoryKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown kind {s:?}: expected one of {}", names.join(", "))
            })
    }
}

/// From whose side the event was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// This node's resources: it decided.
    Owner,
    /// This node asked (or held) resources of another node.
    Requester,
    /// A change made on this node (policy, groups, pools).
    Local,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Requester => "requester",
            Role::Local => "local",
        }
    }
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Granted,
    Denied,
    Queued,
    Released,
    /// A waiting request or a reservation was withdrawn.
    Cancelled,
    Expired,
    Preempted,
    Lost,
    /// A waiting request's wait ran out.
    TimedOut,
    Changed,
    Created,
    Deleted,
    Joined,
    Left,
    Invited,
    /// A reservation was booked.
    Booked,
    /// A reservation's window began.
    Started,
    /// A reservation's window ended (or it could not start).
    Ended,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Denied => "denied",
            Outcome::Queued => "queued",
            Outcome::Released => "released",
            Outcome::Cancelled => "cancelled",
            Outcome::Expired => "expired",
            Outcome::Preempted => "preempted",
            Outcome::Lost => "lost",
            Outcome::TimedOut => "timed_out",
            Outcome::Changed => "changed",
            Outcome::Created => "created",
            Outcome::Deleted => "deleted",
            Outcome::Joined => "joined",
            Outcome::Left => "left",
            Outcome::Invited => "invited",
            Outcome::Booked => "booked",
            Outcome::Started => "started",
            Outcome::Ended => "ended",
        }
    }
}

/// What was asked for or leased, in short.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSummary {
    pub cpu_cores: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// GPUs asked for or leased.
    pub gpus: u32,
    /// GPU memory asked for on each GPU, or leased over all, MiB.
    pub gpu_memory_mb: u64,
    /// Models asked for (at most [`MAX_MODELS`], each cut to 64 bytes).
    pub models: Vec<String>,
    pub priority: Priority,
}

impl ResourceSummary {
    /// What a request asks for.
    pub fn of_request(req: &ResourceRequirements, priority: Priority) -> Self {
        ResourceSummary {
            cpu_cores: req.cpu_cores,
            memory_mb: req.memory_mb,
            disk_mb: req.disk_mb,
            gpus: req.gpus_wanted(),
            gpu_memory_mb: req.gpu_memory_mb,
            models: bounded_models(&req.preferred_models),
            priority,
        }
    }

    /// What a lease holds.
    pub fn of_lease(lease: &Lease) -> Self {
        ResourceSummary {
            cpu_cores: lease.cpu_cores,
            memory_mb: lease.memory_mb,
            disk_mb: lease.disk_mb,
            gpus: lease.gpus.len() as u32,
            gpu_memory_mb: lease.gpus.iter().map(|g| g.memory_mb).sum(),
            models: bounded_models(&lease.models),
            priority: lease.priority,
        }
    }

    /// `2 cores, 1024 MiB, 1 GPU` style text.
    pub fn short(&self) -> String {
        let mut parts = Vec::new();
        if self.cpu_cores > 0 {
            parts.push(format!("{} cores", self.cpu_cores));
        }
        if self.memory_mb > 0 {
            parts.push(units::format_mb(self.memory_mb));
        }
        if self.disk_mb > 0 {
            parts.push(format!("{} disk", units::format_mb(self.disk_mb)));
        }
        if self.gpus > 0 {
            parts.push(format!(
                "{} GPU{}",
                self.gpus,
                if self.gpus == 1 { "" } else { "s" }
            ));
        }
        if !self.models.is_empty() {
            parts.push(self.models.join("|"));
        }
        if parts.is_empty() {
            parts.push("nothing".to_owned());
        }
        format!("{} ({})", parts.join(", "), self.priority)
    }
}

fn bounded_models(models: &[String]) -> Vec<String> {
    models
        .iter()
        .take(MAX_MODELS)
        .map(|m| truncate(m, 64))
        .collect()
}

/// `s` cut to at most `max` characters (an ellipsis marks the cut).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// One record of the history: who, what, when and how it ended.
///
/// Stored with postcard (so every field is always present); the JSON form
/// is [`HistoryRecord`], which adds `at` as RFC 3339.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// Monotonic over the node's life, restarts included; set by the store
    /// when the record is written (0 before).
    pub id: u64,
    /// When it happened, ms since the Unix epoch.
    pub at_ms: u64,
    pub kind: HistoryKind,
    pub role: Role,
    pub outcome: Outcome,
    /// Who asked (the holder), where it applies.
    pub requester: Option<NodeId>,
    /// Whose resources (the owner), where it applies.
    pub node: Option<NodeId>,
    /// The lease, ticket or reservation.
    pub lease_id: Option<LeaseId>,
    /// What was asked for or leased.
    pub resources: Option<ResourceSummary>,
    /// Machine-readable why: a denial's reason code (`insufficient_capacity`,
    /// `forbidden`, ...), or why a lease was preempted or lost.
    pub reason: Option<String>,
    /// A short human summary (at most [`MAX_DETAIL_CHARS`] characters).
    pub detail: String,
}

impl HistoryEvent {
    /// A record with the bounds applied; `id` is set by the store.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        at_ms: u64,
        kind: HistoryKind,
        role: Role,
        outcome: Outcome,
        requester: Option<NodeId>,
        node: Option<NodeId>,
        lease_id: Option<LeaseId>,
        resources: Option<ResourceSummary>,
        reason: Option<&str>,
        detail: &str,
    ) -> Self {
        HistoryEvent {
            id: 0,
            at_ms,
            kind,
            role,
            outcome,
            requester,
            node,
            lease_id,
            resources,
            reason: reason.map(|r| truncate(r, MAX_REASON_CHARS)),
            detail: truncate(detail, MAX_DETAIL_CHARS),
        }
    }

    /// A change on this node that concerns no lease.
    pub fn local(at_ms: u64, kind: HistoryKind, outcome: Outcome, detail: &str) -> Self {
        HistoryEvent::new(
            at_ms,
            kind,
            Role::Local,
            outcome,
            None,
            None,
            None,
            None,
            None,
            detail,
        )
    }

    /// An event about a lease, from `role`'s side.
    pub fn lease(
        at_ms: u64,
        kind: HistoryKind,
        role: Role,
        outcome: Outcome,
        lease: &Lease,
        reason: Option<&str>,
        detail: &str,
    ) -> Self {
        HistoryEvent::new(
            at_ms,
            kind,
            role,
            outcome,
            Some(lease.holder.clone()),
            Some(lease.node_id.clone()),
            Some(lease.lease_id.clone()),
            Some(ResourceSummary::of_lease(lease)),
            reason,
            detail,
        )
    }

    /// The JSON form, with `at` in RFC 3339.
    pub fn to_record(&self) -> HistoryRecord {
        HistoryRecord {
            at: rfc3339(self.at_ms),
            event: self.clone(),
        }
    }
}

/// A history record as the API returns it: the event's fields and `at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// When it happened, RFC 3339 in UTC.
    pub at: String,
    #[serde(flatten)]
    pub event: HistoryEvent,
}

/// How long history is kept, and how much of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Records older than this are pruned. Default 30d; at least 1m, at
    /// most 3650d.
    #[serde(with = "crate::units::serde_duration")]
    pub retention: Duration,
    /// Most records kept; the oldest go first. Default 100000; 1 to
    /// 10000000.
    pub max_events: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            retention: Duration::from_secs(30 * 24 * 3600),
            max_events: 100_000,
        }
    }
}

impl HistoryConfig {
    /// Records written before this time are past retention.
    pub fn cutoff_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.retention.as_millis().min(u64::MAX as u128) as u64)
    }
}

/// How many of the oldest records to prune. `oldest_first` gives the
/// records' `at_ms`, oldest (lowest id) first; `total` is how many are
/// stored. Records go from the oldest while there are more than
/// `max_events` or the oldest remaining is past retention; the walk stops
/// at the first record kept, so what is kept is always the newest part and
/// the store reads only what it prunes (plus one). A record behind a newer
/// one (the clock went back) goes when the records before it go.
pub fn prune_count(
    oldest_first: impl IntoIterator<Item = u64>,
    total: usize,
    now_ms: u64,
    cfg: &HistoryConfig,
) -> usize {
    let cutoff = cfg.cutoff_ms(now_ms);
    let mut pruned = 0;
    for at_ms in oldest_first {
        if pruned >= total {
            break;
        }
        let too_many = total - pruned > cfg.max_events;
        if !too_many && at_ms >= cutoff {
            break;
        }
        pruned += 1;
    }
    pruned
}

/// A malformed history query: which parameter, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct QueryError {
    pub param: String,
    pub message: String,
}

fn qerr(param: &str, message: impl Into<String>) -> QueryError {
    QueryError {
        param: param.to_owned(),
        message: message.into(),
    }
}

/// The parameters a query accepts.
pub const QUERY_PARAMS: [&str; 6] = ["since", "until", "requester", "node", "kind", "limit"];

const TIME_HELP: &str = "expected a duration back from now (90s, 30m, 24h, 7d), an RFC 3339 time \
                         (2026-01-02T03:04:05Z), milliseconds since the Unix epoch, or `now`";

/// A query over the history: records newest first, filtered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only records at or after this time, ms.
    pub since_ms: Option<u64>,
    /// Only records at or before this time, ms.
    pub until_ms: Option<u64>,
    /// Only records whose requester is this node.
    pub requester: Option<NodeId>,
    /// Only records about this node's resources.
    pub node: Option<NodeId>,
    /// Only these kinds (empty: every kind).
    pub kinds: BTreeSet<HistoryKind>,
    /// Most records returned, 1..=[`MAX_LIMIT`].
    pub limit: usize,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        HistoryQuery {
            since_ms: None,
            until_ms: None,
            requester: None,
            node: None,
            kinds: BTreeSet::new(),
            limit: DEFAULT_LIMIT,
        }
    }
}

impl HistoryQuery {
    /// Parse query parameters (`since`, `until`, `requester`, `node`,
    /// `kind`, `limit`). `is_node_id` says whether a text is a node id (the
    /// shell checks it is a peer id). Every malformed value, unknown or
    /// repeated parameter is an error naming the parameter.
    pub fn parse<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
        now_ms: u64,
        is_node_id: impl Fn(&str) -> bool,
    ) -> Result<HistoryQuery, QueryError> {
        let mut q = HistoryQuery::default();
        let mut seen = BTreeSet::new();
        for (key, value) in params {
            if !QUERY_PARAMS.contains(&key) {
                return Err(qerr(
                    key,
                    format!("unknown parameter; expected {}", QUERY_PARAMS.join(", ")),
                ));
            }
            if !seen.insert(key) {
                return Err(qerr(key, "given more than once"));
            }
            match key {
                "since" => q.since_ms = Some(parse_time(key, value, now_ms)?),
                "until" => q.until_ms = Some(parse_time(key, value, now_ms)?),
                "requester" => q.requester = Some(parse_node(key, value, &is_node_id)?),
                "node" => q.node = Some(parse_node(key, value, &is_node_id)?),
                "kind" => q.kinds = parse_kinds(value)?,
                "limit" => q.limit = parse_limit(value)?,
                _ => unreachable!("checked against QUERY_PARAMS"),
            }
        }
        if let (Some(since), Some(until)) = (q.since_ms, q.until_ms) {
            if until < since {
                return Err(qerr(
                    "until",
                    format!("{} is before since ({})", rfc3339(until), rfc3339(since)),
                ));
            }
        }
        Ok(q)
    }

    /// Whether a record passes the filters (the limit aside).
    pub fn matches(&self, ev: &HistoryEvent) -> bool {
        self.since_ms.is_none_or(|s| ev.at_ms >= s)
            && self.until_ms.is_none_or(|u| ev.at_ms <= u)
            && self
                .requester
                .as_ref()
                .is_none_or(|r| ev.requester.as_ref() == Some(r))
            && self
                .node
                .as_ref()
                .is_none_or(|n| ev.node.as_ref() == Some(n))
            && (self.kinds.is_empty() || self.kinds.contains(&ev.kind))
    }

    /// The query as URL parameters (the inverse of [`HistoryQuery::parse`],
    /// times as epoch ms).
    pub fn to_params(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(s) = self.since_ms {
            out.push(("since", s.to_string()));
        }
        if let Some(u) = self.until_ms {
            out.push(("until", u.to_string()));
        }
        if let Some(r) = &self.requester {
            out.push(("requester", r.0.clone()));
        }
        if let Some(n) = &self.node {
            out.push(("node", n.0.clone()));
        }
        if !self.kinds.is_empty() {
            let names: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
            out.push(("kind", names.join(",")));
        }
        if self.limit != DEFAULT_LIMIT {
            out.push(("limit", self.limit.to_string()));
        }
        out
    }
}

/// `ms` since the epoch in RFC 3339, UTC, with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A time: a duration back from `now_ms`, an RFC 3339 time, epoch ms, or
/// `now`.
pub fn parse_time(param: &str, value: &str, now_ms: u64) -> Result<u64, QueryError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(qerr(param, format!("empty; {TIME_HELP}")));
    }
    if v.starts_with('-') {
        return Err(qerr(param, format!("{v:?} is negative; {TIME_HELP}")));
    }
    if v.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return v
            .parse::<u64>()
            .map_err(|_| qerr(param, format!("{v:?} is too large; {TIME_HELP}")));
    }
    if v.contains(':') {
        let t = chrono::DateTime::parse_from_rfc3339(v).map_err(|e| {
            qerr(
                param,
                format!("{v:?} is not an RFC 3339 time ({e}); {TIME_HELP}"),
            )
        })?;
        return u64::try_from(t.timestamp_millis())
            .map_err(|_| qerr(param, format!("{v:?} is before 1970")));
    }
    let d = units::parse_duration(v).map_err(|e| match e {
        units::UnitError::Duration { reason, .. } | units::UnitError::Size { reason, .. } => {
            let reason = reason.split(';').next().unwrap_or_default().to_owned();
            qerr(param, format!("{v:?}: {reason}; {TIME_HELP}"))
        }
    })?;
    Ok(now_ms.saturating_sub(d.as_millis().min(u64::MAX as u128) as u64))
}

fn parse_node(
    param: &str,
    value: &str,
    is_node_id: &impl Fn(&str) -> bool,
) -> Result<NodeId, QueryError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(qerr(param, "empty; expected a node id (a peer id)"));
    }
    if v.len() > 128 || !is_node_id(v) {
        return Err(qerr(
            param,
            format!(
                "{:?} is not a node id (a peer id such as 12D3KooW…)",
                truncate(v, 64)
            ),
        ));
    }
    Ok(NodeId(v.to_owned()))
}

fn parse_kinds(value: &str) -> Result<BTreeSet<HistoryKind>, QueryError> {
    let mut out = BTreeSet::new();
    for part in value.split(',') {
        if part.trim().is_empty() {
            return Err(qerr(
                "kind",
                "an empty kind; write one kind or several separated by commas",
            ));
        }
        out.insert(part.parse::<HistoryKind>().map_err(|e| qerr("kind", e))?);
    }
    Ok(out)
}

fn parse_limit(value: &str) -> Result<usize, QueryError> {
    let v = value.trim();
    match v.parse::<u64>() {
        Ok(n) if (1..=MAX_LIMIT as u64).contains(&n) => Ok(n as usize),
        Ok(n) => Err(qerr(
            "limit",
            format!("{n} is out of range; expected 1 to {MAX_LIMIT}"),
        )),
        Err(_) => Err(qerr(
            "limit",
            format!("{v:?} is not a whole number from 1 to {MAX_LIMIT}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;
    const PEER: &str = "12D3KooWGzh4JV6aFSUJfvVnLCa1d9mPg5vBQGWSbE4nRXyb5cK8";

    fn is_peer(s: &str) -> bool {
        s.starts_with("12D3KooW") && s.len() == PEER.len()
    }

    fn parse(params: &[(&str, &str)]) -> Result<HistoryQuery, QueryError> {
        HistoryQuery::parse(params.iter().copied(), NOW, is_peer)
    }

    fn err_param(params: &[(&str, &str)]) -> String {
        match parse(params) {
            Err(e) => {
                assert!(!e.message.is_empty());
                e.param
            }
            Ok(q) => panic!("{params:?} parsed as {q:?}"),
        }
    }

    #[test]
    fn times_are_durations_back_rfc3339_or_epoch_ms() {
        let cases = [
            ("90s", NOW - 90_000),
            ("30m", NOW - 30 * 60_000),
            ("24h", NOW - 24 * 3_600_000),
            ("7d", NOW - 7 * 86_400_000),
            ("1h30m", NOW - 90 * 60_000),
            ("0s", NOW),
            ("now", NOW),
            ("1699999000000", 1_699_999_000_000),
            ("2023-11-14T22:13:20Z", 1_700_000_000_000),
            ("2023-11-14T23:13:20.5+01:00", 1_700_000_000_500),
        ];
        for (text, want) in cases {
            assert_eq!(parse_time("since", text, NOW), Ok(want), "{text}");
        }
        // Further back than the epoch is the epoch.
        assert_eq!(parse_time("since", "100000d", 5), Ok(0));
    }

    #[test]
    fn a_query_parses_every_parameter() {
        let q = parse(&[
            ("since", "24h"),
            ("until", "now"),
            ("requester", PEER),
            ("node", PEER),
            ("kind", "grant, denial"),
            ("limit", "5"),
        ])
        .unwrap();
        assert_eq!(q.since_ms, Some(NOW - 24 * 3_600_000));
        assert_eq!(q.until_ms, Some(NOW));
        assert_eq!(q.requester, Some(NodeId(PEER.into())));
        assert_eq!(q.node, Some(NodeId(PEER.into())));
        assert_eq!(
            q.kinds,
            [HistoryKind::Grant, HistoryKind::Denial]
                .into_iter()
                .collect()
        );
        assert_eq!(q.limit, 5);
        assert_eq!(parse(&[]).unwrap(), HistoryQuery::default());
        assert_eq!(HistoryQuery::default().limit, 100);
    }

    #[test]
    fn every_malformed_value_names_its_parameter() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("since", "abc")], "since"),
            (&[("since", "-5m")], "since"),
            (&[("since", "5 parsecs")], "since"),
            (&[("since", "")], "since"),
            (&[("since", "99999999999999999999999")], "since"),
            (&[("until", "2023-13-45T00:00:00Z")], "until"),
            (&[("since", "1h"), ("until", "2h")], "until"),
            (&[("limit", "0")], "limit"),
            (&[("limit", "10001")], "limit"),
            (&[("limit", "x")], "limit"),
            (&[("limit", "-1")], "limit"),
            (&[("kind", "bogus")], "kind"),
            (&[("kind", "grant,")], "kind"),
            (&[("requester", "nobody")], "requester"),
            (&[("node", "")], "node"),
            (&[("foo", "bar")], "foo"),
            (&[("limit", "5"), ("limit", "6")], "limit"),
        ];
        for (params, want) in cases {
            assert_eq!(err_param(params), *want, "{params:?}");
        }
        let e = parse(&[("since", "1h"), ("until", "2h")]).unwrap_err();
        assert!(e.message.contains("before since"), "{e}");
        let e = parse(&[("kind", "bogus")]).unwrap_err();
        assert!(e.message.contains("policy_change"), "{e}");
        assert_eq!(parse(&[("limit", "10000")]).unwrap().limit, 10_000);
        assert_eq!(parse(&[("limit", "1")]).unwrap().limit, 1);
    }

    fn ev(
        at_ms: u64,
        kind: HistoryKind,
        requester: Option<&str>,
        node: Option<&str>,
    ) -> HistoryEvent {
        HistoryEvent::new(
            at_ms,
            kind,
            Role::Owner,
            Outcome::Granted,
            requester.map(NodeId::from),
            node.map(NodeId::from),
            None,
            None,
            None,
            "x",
        )
    }

    #[test]
    fn filters_select_by_time_requester_node_and_kind() {
        let q = HistoryQuery {
            since_ms: Some(100),
            until_ms: Some(200),
            requester: Some(NodeId::from("r")),
            node: Some(NodeId::from("n")),
            kinds: [HistoryKind::Grant].into_iter().collect(),
            limit: 10,
        };
        assert!(q.matches(&ev(100, HistoryKind::Grant, Some("r"), Some("n"))));
        assert!(q.matches(&ev(200, HistoryKind::Grant, Some("r"), Some("n"))));
        assert!(!q.matches(&ev(99, HistoryKind::Grant, Some("r"), Some("n"))));
        assert!(!q.matches(&ev(201, HistoryKind::Grant, Some("r"), Some("n"))));
        assert!(!q.matches(&ev(150, HistoryKind::Denial, Some("r"), Some("n"))));
        assert!(!q.matches(&ev(150, HistoryKind::Grant, Some("x"), Some("n"))));
        assert!(!q.matches(&ev(150, HistoryKind::Grant, None, Some("n"))));
        assert!(!q.matches(&ev(150, HistoryKind::Grant, Some("r"), None)));
        assert!(HistoryQuery::default().matches(&ev(0, HistoryKind::PoolChange, None, None)));
    }

    #[test]
    fn records_are_bounded_and_json_has_at_in_rfc3339() {
        let long = "é".repeat(1000);
        let e = HistoryEvent::new(
            NOW,
            HistoryKind::Denial,
            Role::Owner,
            Outcome::Denied,
            None,
            None,
            None,
            Some(ResourceSummary::of_request(
                &ResourceRequirements {
                    cpu_cores: 2,
                    preferred_models: vec![long.clone(); 10],
                    ..Default::default()
                },
                Priority::High,
            )),
            Some(&long),
            &long,
        );
        assert_eq!(e.detail.chars().count(), MAX_DETAIL_CHARS);
        assert_eq!(e.reason.as_ref().unwrap().chars().count(), MAX_REASON_CHARS);
        let r = e.resources.as_ref().unwrap();
        assert_eq!(r.models.len(), MAX_MODELS);
        assert!(r.models.iter().all(|m| m.chars().count() <= 64));

        let json = serde_json::to_value(e.to_record()).unwrap();
        assert_eq!(json["at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["at_ms"], NOW);
        assert_eq!(json["kind"], "denial");
        assert_eq!(json["role"], "owner");
        assert_eq!(json["outcome"], "denied");
        assert_eq!(json["resources"]["priority"], "high");
        let back: HistoryRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.event, e);
        let bytes = postcard::to_stdvec(&e).unwrap();
        assert_eq!(postcard::from_bytes::<HistoryEvent>(&bytes).unwrap(), e);
    }

    #[test]
    fn pruning_drops_old_records_and_the_oldest_beyond_the_cap() {
        let cfg = HistoryConfig {
            retention: Duration::from_millis(100),
            max_events: 3,
        };
        // Cutoff is 900: 850 and 890 are past retention.
        assert_eq!(prune_count([850, 890, 950, 960], 4, 1000, &cfg), 2);
        // Five in retention, cap 3: the two oldest go.
        assert_eq!(prune_count([901, 902, 903, 904, 905], 5, 1000, &cfg), 2);
        // Nothing to do.
        assert_eq!(prune_count([950, 960], 2, 1000, &cfg), 0);
        assert_eq!(prune_count([], 0, 1000, &cfg), 0);
        // The walk stops at the first record kept.
        assert_eq!(prune_count([950, 10, 960], 3, 1000, &cfg), 0);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_kind() -> impl Strategy<Value = HistoryKind> {
            (0..HistoryKind::ALL.len()).prop_map(|i| HistoryKind::ALL[i])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// A query written as parameters parses back to itself.
            #[test]
            fn queries_round_trip_through_parameters(
                since in proptest::option::of(0u64..NOW),
                span in proptest::option::of(0u64..1_000_000),
                requester in any::<bool>(),
                node in any::<bool>(),
                kinds in proptest::collection::btree_set(arb_kind(), 0..4),
                limit in 1usize..=MAX_LIMIT,
            ) {
                let q = HistoryQuery {
                    since_ms: since,
                    until_ms: span.map(|s| since.unwrap_or(0) + s),
                    requester: requester.then(|| NodeId(PEER.into())),
                    node: node.then(|| NodeId(PEER.into())),
                    kinds,
                    limit,
                };
                let params = q.to_params();
                let back = HistoryQuery::parse(
                    params.iter().map(|(k, v)| (*k, v.as_str())),
                    NOW,
                    is_peer,
                );
                prop_assert_eq!(back, Ok(q));
            }

            /// A duration written by `format_duration` reads back as that
            /// far before now.
            #[test]
            fn durations_round_trip(ms in 0u64..10 * 365 * 86_400_000) {
                let text = units::format_duration(Duration::from_millis(ms));
                prop_assert_eq!(parse_time("since", &text, NOW), Ok(NOW.saturating_sub(ms)));
            }

            /// Pruning keeps at most `max_events`, always a newest part,
            /// never more than it must: every record newer than retention
            /// and among the newest `max_events` is kept when the times
            /// are in order, and the newest record stays if it is in
            /// retention.
            #[test]
            fn pruning_keeps_the_newest_within_the_bounds(
                mut times in proptest::collection::vec(0u64..2_000, 0..60),
                sorted in any::<bool>(),
                retention in 0u64..1_500,
                max_events in 1usize..40,
                now in 0u64..2_500,
            ) {
                if sorted {
                    times.sort_unstable();
                }
                let cfg = HistoryConfig {
                    retention: Duration::from_millis(retention),
                    max_events,
                };
                let total = times.len();
                let k = prune_count(times.iter().copied(), total, now, &cfg);
                let kept = &times[k..];
                let cutoff = now.saturating_sub(retention);
                prop_assert!(kept.len() <= max_events);
                if let Some(first) = kept.first() {
                    prop_assert!(*first >= cutoff, "the oldest kept is in retention");
                }
                if let Some(newest) = times.last() {
                    if *newest >= cutoff {
                        prop_assert!(!kept.is_empty(), "the newest record in retention is kept");
                    }
                }
                if sorted {
                    let want = times
                        .iter()
                        .rev()
                        .take(max_events)
                        .filter(|t| **t >= cutoff)
                        .count();
                    prop_assert_eq!(kept.len(), want);
                }
            }
        }
    }
}
