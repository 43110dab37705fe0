//! Usage accounting: resource-seconds per requester, group and node.
//!
//! The [`Meter`] integrates held resources over time. The event loop calls
//! [`Meter::observe`] on every maintenance tick with the leases that exist
//! right now: the leases this node granted (the owner's view, keyed by the
//! requester: [`Side::Lent`]) and the leases it holds on other nodes (the
//! requester's view, keyed by the owner: [`Side::Used`]). Each lease is
//! charged from when the meter first saw it (or from its grant, if that
//! is later than the meter's start) until the tick that no longer sees it,
//! and never past its `expires_at_ms`. So the precision is one maintenance
//! tick, and nothing is charged for time the node was not running: leases
//! restored after a restart are charged from the restart on.
//!
//! Charges land in hourly [`Bucket`]s (start of the hour, ms since the
//! epoch), so `since`/`until` queries work at hour granularity. Buckets
//! older than the retention are dropped; each side of a bucket holds at
//! most [`MAX_PEERS_PER_BUCKET`] peers, the rest are summed under
//! [`OTHER_PEER`]. Amounts are unit-milliseconds in `u64`, added with
//! saturation, so nothing ever wraps or goes negative.
//!
//! Prices ([`PriceList`]) are per unit and hour, set by the owner, and
//! apply to the owner's view only (what others used here).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::history::{parse_time, rfc3339, QueryError};
use crate::model::{Lease, LeaseId, NodeId, Usage};

/// One hour, ms: the width of a bucket.
pub const HOUR_MS: u64 = 3_600_000;
/// Most peers kept per side of one bucket; further peers are summed under
/// [`OTHER_PEER`].
pub const MAX_PEERS_PER_BUCKET: usize = 1024;
/// The key that sums peers past [`MAX_PEERS_PER_BUCKET`].
pub const OTHER_PEER: &str = "(other)";
/// The group key of requesters in no group.
pub const NO_GROUP: &str = "(no group)";

/// `[accounting]`: how long usage is kept and what it costs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountingConfig {
    /// Hourly usage buckets older than this are dropped. Default 90d; at
    /// least 1h, at most 3650d.
    #[serde(with = "crate::units::serde_duration")]
    pub retention: Duration,
    /// Currency of the prices, shown beside costs (e.g. "EUR"), 1 to 16
    /// letters. Optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// `[accounting.price]`: price per unit and hour. Without it, usage is
    /// reported without costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<PriceList>,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        AccountingConfig {
            retention: Duration::from_secs(90 * 24 * 3600),
            currency: None,
            price: None,
        }
    }
}

impl AccountingConfig {
    /// Retention, ms.
    pub fn retention_ms(&self) -> u64 {
        self.retention.as_millis().min(u64::MAX as u128) as u64
    }
}

/// Prices per unit and hour. Every price is finite and at least zero;
/// an unset price is zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceList {
    /// Per CPU core and hour.
    pub cpu_core_hour: f64,
    /// Per GiB of memory and hour.
    pub memory_gib_hour: f64,
    /// Per GiB of disk and hour.
    pub disk_gib_hour: f64,
    /// Per GPU and hour (whole or shared GPUs alike).
    pub gpu_hour: f64,
    /// Per GiB of GPU memory and hour.
    pub gpu_memory_gib_hour: f64,
    /// Per unit of a named custom resource and hour.
    pub custom: BTreeMap<String, f64>,
}

/// Most a price may be, per unit and hour.
pub const MAX_PRICE: f64 = 1e9;

impl PriceList {
    /// The first bad price, as (key, message).
    pub fn check(&self) -> Result<(), (String, String)> {
        let ok = |v: f64| v.is_finite() && (0.0..=MAX_PRICE).contains(&v);
        let fixed = [
            ("cpu_core_hour", self.cpu_core_hour),
            ("memory_gib_hour", self.memory_gib_hour),
            ("disk_gib_hour", self.disk_gib_hour),
            ("gpu_hour", self.gpu_hour),
            ("gpu_memory_gib_hour", self.gpu_memory_gib_hour),
        ];
        for (k, v) in fixed {
            if !ok(v) {
                return Err((k.to_owned(), format!("must be between 0 and 1e9, got {v}")));
            }
        }
        for (k, v) in &self.custom {
            if k.is_empty() || k.len() > 64 {
                return Err((
                    "custom".to_owned(),
                    format!("resource names must be 1 to 64 bytes, got {k:?}"),
                ));
            }
            if !ok(*v) {
                return Err((
                    format!("custom.{k}"),
                    format!("must be between 0 and 1e9, got {v}"),
                ));
            }
        }
        Ok(())
    }

    /// What `rt` costs.
    pub fn cost(&self, rt: &ResourceTime) -> f64 {
        let hours = |ms: u64| ms as f64 / HOUR_MS as f64;
        let gib_hours = |mb_ms: u64| mb_ms as f64 / 1024.0 / HOUR_MS as f64;
        let mut c = hours(rt.cpu_core_ms) * self.cpu_core_hour
            + gib_hours(rt.memory_mb_ms) * self.memory_gib_hour
            + gib_hours(rt.disk_mb_ms) * self.disk_gib_hour
            + hours(rt.gpu_ms) * self.gpu_hour
            + gib_hours(rt.gpu_memory_mb_ms) * self.gpu_memory_gib_hour;
        for (k, ms) in &rt.custom_ms {
            c += hours(*ms) * self.custom.get(k).copied().unwrap_or(0.0);
        }
        c
    }
}

/// Which view a charge belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Side {
    /// A lease this node granted; the peer is the requester.
    Lent,
    /// A lease this node holds; the peer is the owner.
    Used,
}

/// Resource-time: held resources integrated over time, unit-milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceTime {
    pub cpu_core_ms: u64,
    pub memory_mb_ms: u64,
    pub disk_mb_ms: u64,
    pub gpu_ms: u64,
    pub gpu_memory_mb_ms: u64,
    pub custom_ms: BTreeMap<String, u64>,
}

impl ResourceTime {
    /// Add `usage` held for `dt_ms` (saturating).
    pub fn charge(&mut self, usage: &Usage, dt_ms: u64) {
        let m = |a: u64| a.saturating_mul(dt_ms);
        self.cpu_core_ms = self
            .cpu_core_ms
            .saturating_add(m(u64::from(usage.cpu_cores)));
        self.memory_mb_ms = self.memory_mb_ms.saturating_add(m(usage.memory_mb));
        self.disk_mb_ms = self.disk_mb_ms.saturating_add(m(usage.disk_mb));
        self.gpu_ms = self.gpu_ms.saturating_add(m(u64::from(usage.gpus)));
        self.gpu_memory_mb_ms = self.gpu_memory_mb_ms.saturating_add(m(usage.gpu_memory_mb));
        for (k, v) in &usage.custom {
            if *v > 0 {
                let e = self.custom_ms.entry(k.clone()).or_insert(0);
                *e = e.saturating_add(m(*v));
            }
        }
    }

    /// Add `other` (saturating).
    pub fn add(&mut self, other: &ResourceTime) {
        self.cpu_core_ms = self.cpu_core_ms.saturating_add(other.cpu_core_ms);
        self.memory_mb_ms = self.memory_mb_ms.saturating_add(other.memory_mb_ms);
        self.disk_mb_ms = self.disk_mb_ms.saturating_add(other.disk_mb_ms);
        self.gpu_ms = self.gpu_ms.saturating_add(other.gpu_ms);
        self.gpu_memory_mb_ms = self.gpu_memory_mb_ms.saturating_add(other.gpu_memory_mb_ms);
        for (k, v) in &other.custom_ms {
            let e = self.custom_ms.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// In unit-seconds, for people and the API.
    pub fn seconds(&self) -> ResourceSeconds {
        let s = |ms: u64| ms as f64 / 1000.0;
        ResourceSeconds {
            cpu_core_seconds: s(self.cpu_core_ms),
            memory_mib_seconds: s(self.memory_mb_ms),
            disk_mib_seconds: s(self.disk_mb_ms),
            gpu_seconds: s(self.gpu_ms),
            gpu_memory_mib_seconds: s(self.gpu_memory_mb_ms),
            custom_unit_seconds: self
                .custom_ms
                .iter()
                .map(|(k, v)| (k.clone(), s(*v)))
                .collect(),
        }
    }
}

/// Resource-seconds, as reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSeconds {
    pub cpu_core_seconds: f64,
    pub memory_mib_seconds: f64,
    pub disk_mib_seconds: f64,
    pub gpu_seconds: f64,
    pub gpu_memory_mib_seconds: f64,
    #[serde(default)]
    pub custom_unit_seconds: BTreeMap<String, f64>,
}

/// One hour of usage: per peer, on each side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// What each requester used here.
    pub lent: BTreeMap<NodeId, ResourceTime>,
    /// What this node used on each owner.
    pub used: BTreeMap<NodeId, ResourceTime>,
}

impl Bucket {
    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<NodeId, ResourceTime> {
        match side {
            Side::Lent => &mut self.lent,
            Side::Used => &mut self.used,
        }
    }

    /// The sum over every peer of one side.
    pub fn total(&self, side: Side) -> ResourceTime {
        let map = match side {
            Side::Lent => &self.lent,
            Side::Used => &self.used,
        };
        let mut t = ResourceTime::default();
        for rt in map.values() {
            t.add(rt);
        }
        t
    }
}

/// A lease being metered.
#[derive(Clone, Debug)]
struct Open {
    peer: NodeId,
    usage: Usage,
    /// Charged up to here.
    from_ms: u64,
    expires_at_ms: u64,
}

/// The accumulator. See the module docs.
#[derive(Clone, Debug)]
pub struct Meter {
    retention_ms: u64,
    started_ms: u64,
    open: BTreeMap<(Side, LeaseId), Open>,
    buckets: BTreeMap<u64, Bucket>,
    dirty: BTreeSet<u64>,
    dropped: BTreeSet<u64>,
}

/// Buckets changed since the last [`Meter::take_changes`]: to write, and
/// to delete (past retention).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub put: Vec<(u64, Bucket)>,
    pub delete: Vec<u64>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

impl Meter {
    /// A meter started at `now_ms`, with the buckets kept from earlier
    /// runs. Leases seen later are charged from `now_ms` at the earliest.
    pub fn new(retention_ms: u64, stored: Vec<(u64, Bucket)>, now_ms: u64) -> Self {
        let mut m = Meter {
            retention_ms: retention_ms.max(1),
            started_ms: now_ms,
            open: BTreeMap::new(),
            buckets: stored
                .into_iter()
                .map(|(h, b)| (h - h % HOUR_MS, b))
                .collect(),
            dirty: BTreeSet::new(),
            dropped: BTreeSet::new(),
        };
        m.prune(now_ms);
        m
    }

    /// Charge every lease that exists at `now_ms` up to then, and the ones
    /// gone since the last call up to when they ended (their expiry, if
    /// sooner). `lent` are leases this node granted; `used` are leases it
    /// holds (on any owner, itself included).
    pub fn observe<'a>(
        &mut self,
        now_ms: u64,
        lent: impl IntoIterator<Item = &'a Lease>,
        used: impl IntoIterator<Item = &'a Lease>,
    ) {
        let mut seen: BTreeSet<(Side, LeaseId)> = BTreeSet::new();
        let all = lent
            .into_iter()
            .map(|l| (Side::Lent, l))
            .chain(used.into_iter().map(|l| (Side::Used, l)));
        for (side, lease) in all {
            let key = (side, lease.lease_id.clone());
            if !seen.insert(key.clone()) {
                continue;
            }
            let peer = match side {
                Side::Lent => lease.holder.clone(),
                Side::Used => lease.node_id.clone(),
            };
            let open = self.open.entry(key).or_insert_with(|| Open {
                peer,
                usage: Usage::of_lease(lease),
                from_ms: lease.created_at_ms.max(self.started_ms).min(now_ms),
                expires_at_ms: lease.expires_at_ms,
            });
            open.expires_at_ms = lease.expires_at_ms;
            let (peer, usage, from) = (open.peer.clone(), open.usage.clone(), open.from_ms);
            let to = now_ms.min(lease.expires_at_ms.max(from));
            if to > from {
                if let Some(o) = self.open.get_mut(&(side, lease.lease_id.clone())) {
                    o.from_ms = to;
                }
                self.charge(side, &peer, &usage, from, to, now_ms);
            }
        }
        let gone: Vec<(Side, LeaseId)> = self
            .open
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(o) = self.open.remove(&key) {
                let to = now_ms.min(o.expires_at_ms);
                if to > o.from_ms {
                    self.charge(key.0, &o.peer, &o.usage, o.from_ms, to, now_ms);
                }
            }
        }
        self.prune(now_ms);
    }

    /// Add `usage` held over `[from, to)` to the hourly buckets it spans,
    /// skipping what is already past retention at `now_ms`.
    fn charge(
        &mut self,
        side: Side,
        peer: &NodeId,
        usage: &Usage,
        from: u64,
        to: u64,
        now_ms: u64,
    ) {
        let mut t = from.max(self.cutoff(now_ms));
        while t < to {
            let hour = t - t % HOUR_MS;
            let end = to.min(hour.saturating_add(HOUR_MS));
            if end <= t {
                break;
            }
            let map = self.buckets.entry(hour).or_default().side_mut(side);
            let key = if map.contains_key(peer) || map.len() < MAX_PEERS_PER_BUCKET {
                peer.clone()
            } else {
                NodeId(OTHER_PEER.to_owned())
            };
            map.entry(key).or_default().charge(usage, end - t);
            self.dirty.insert(hour);
            t = end;
        }
    }

    /// Buckets wholly before this are past retention.
    fn cutoff(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.retention_ms)
    }

    /// Drop buckets past retention.
    fn prune(&mut self, now_ms: u64) {
        let cutoff = self.cutoff(now_ms);
        let old: Vec<u64> = self
            .buckets
            .keys()
            .take_while(|h| h.saturating_add(HOUR_MS) <= cutoff)
            .copied()
            .collect();
        for h in old {
            self.buckets.remove(&h);
            self.dirty.remove(&h);
            self.dropped.insert(h);
        }
    }

    /// What changed since the last call, to write to the store.
    pub fn take_changes(&mut self) -> Changes {
        let put = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|h| Some((h, self.buckets.get(&h)?.clone())))
            .collect();
        Changes {
            put,
            delete: std::mem::take(&mut self.dropped).into_iter().collect(),
        }
    }

    /// Put changes back after a failed write (they are written next time).
    pub fn restore_changes(&mut self, c: Changes) {
        self.dirty.extend(c.put.into_iter().map(|(h, _)| h));
        self.dropped.extend(c.delete);
    }

    /// The hourly buckets kept.
    pub fn buckets(&self) -> &BTreeMap<u64, Bucket> {
        &self.buckets
    }

    /// Leases being metered.
    pub fn open_leases(&self) -> usize {
        self.open.len()
    }

    /// Answer a query. `groups_of` names the groups a requester is in now
    /// (usage is grouped by today's membership). `prices` apply to the
    /// owner's view only.
    pub fn report(
        &self,
        q: &UsageQuery,
        now_ms: u64,
        prices: Option<&PriceList>,
        currency: Option<&str>,
        groups_of: impl Fn(&NodeId) -> Vec<String>,
    ) -> UsageReport {
        let since = q.since_ms.map(|s| s - s % HOUR_MS);
        let until = q.until_ms.unwrap_or(now_ms);
        let mut lent: BTreeMap<String, ResourceTime> = BTreeMap::new();
        let mut used: BTreeMap<String, ResourceTime> = BTreeMap::new();
        let mut lent_total = ResourceTime::default();
        let mut used_total = ResourceTime::default();
        let mut first: Option<u64> = None;
        let mut last: Option<u64> = None;
        for (h, b) in &self.buckets {
            if since.is_some_and(|s| *h < s) || *h > until {
                continue;
            }
            first.get_or_insert(*h);
            last = Some(h.saturating_add(HOUR_MS));
            for (peer, rt) in &b.lent {
                lent_total.add(rt);
                let keys = match q.by {
                    By::Group => {
                        let g = groups_of(peer);
                        if g.is_empty() {
                            vec![NO_GROUP.to_owned()]
                        } else {
                            g
                        }
                    }
                    _ => vec![peer.0.clone()],
                };
                for k in keys {
                    lent.entry(k).or_default().add(rt);
                }
            }
            for (peer, rt) in &b.used {
                used_total.add(rt);
                used.entry(peer.0.clone()).or_default().add(rt);
            }
        }
        let cost = |rt: &ResourceTime| prices.map(|p| p.cost(rt));
        let rows_of = |m: BTreeMap<String, ResourceTime>, priced: bool| {
            let mut rows: Vec<UsageRow> = m
                .into_iter()
                .map(|(key, rt)| UsageRow {
                    key,
                    cost: if priced { cost(&rt) } else { None },
                    seconds: rt.seconds(),
                    raw: rt,
                })
                .collect();
            rows.sort_by(|a, b| {
                b.raw
                    .cpu_core_ms
                    .cmp(&a.raw.cpu_core_ms)
                    .then(b.raw.memory_mb_ms.cmp(&a.raw.memory_mb_ms))
                    .then(a.key.cmp(&b.key))
            });
            rows
        };
        let rows = match q.by {
            By::Node => rows_of(used, false),
            _ => rows_of(lent, true),
        };
        UsageReport {
            by: q.by,
            since: first.map(rfc3339),
            until: rfc3339(last.map_or(until, |l| l.min(until))),
            currency: prices.and(currency.map(str::to_owned)),
            lent_cost: cost(&lent_total),
            lent: lent_total.seconds(),
            used: used_total.seconds(),
            rows,
        }
    }
}

/// How a usage report is grouped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    /// The owner's view, per requester.
    #[default]
    Requester,
    /// The owner's view, per group of the requester (a requester in two
    /// groups counts in both; one in none under [`NO_GROUP`]).
    Group,
    /// The requester's view: what this node used on each owner node.
    Node,
}

impl By {
    pub fn name(self) -> &'static str {
        match self {
            By::Requester => "requester",
            By::Group => "group",
            By::Node => "node",
        }
    }
}

impl fmt::Display for By {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for By {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [By::Requester, By::Group, By::Node]
            .into_iter()
            .find(|b| b.name() == s.trim())
            .ok_or_else(|| format!("{s:?} is not a grouping; expected requester, group or node"))
    }
}

/// A usage query: `since`, `until` (as the history takes them) and `by`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageQuery {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub by: By,
}

/// The parameters a usage query accepts.
pub const USAGE_PARAMS: [&str; 3] = ["since", "until", "by"];

impl UsageQuery {
    /// Parse query parameters. Unknown, repeated or malformed parameters
    /// are errors naming the parameter; times parse as the history's do.
    pub fn parse<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
        now_ms: u64,
    ) -> Result<UsageQuery, QueryError> {
        let err = |p: &str, m: String| QueryError {
            param: p.to_owned(),
            message: m,
        };
        let mut q = UsageQuery::default();
        let mut seen = BTreeSet::new();
        for (key, value) in params {
            if !USAGE_PARAMS.contains(&key) {
                return Err(err(
                    key,
                    format!("unknown parameter; expected {}", USAGE_PARAMS.join(", ")),
                ));
            }
            if !seen.insert(key) {
                return Err(err(key, "given more than once".to_owned()));
            }
            match key {
                "since" => q.since_ms = Some(parse_time(key, value, now_ms)?),
                "until" => q.until_ms = Some(parse_time(key, value, now_ms)?),
                _ => q.by = value.parse().map_err(|m| err("by", m))?,
            }
        }
        if let (Some(s), Some(u)) = (q.since_ms, q.until_ms) {
            if u < s {
                return Err(err(
                    "until",
                    format!("{} is before since ({})", rfc3339(u), rfc3339(s)),
                ));
            }
        }
        Ok(q)
    }
}

/// One row of a usage report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The requester (peer id), the group, or the owner node (peer id).
    pub key: String,
    pub seconds: ResourceSeconds,
    /// At this node's prices; only in the owner's view with prices set.
    pub cost: Option<f64>,
    /// The exact amounts, unit-milliseconds.
    pub raw: ResourceTime,
}

/// `GET /api/v1/usage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub by: By,
    /// Start of the first hour that had usage in the window (RFC 3339);
    /// absent when nothing was used.
    pub since: Option<String>,
    /// End of the window covered (RFC 3339).
    pub until: String,
    /// Currency of the costs, when prices and a currency are set.
    pub currency: Option<String>,
    /// The owner's view: everything requesters used here.
    pub lent: ResourceSeconds,
    /// Its cost, at this node's prices (absent without prices).
    pub lent_cost: Option<f64>,
    /// The requester's view: everything this node used on owners.
    pub used: ResourceSeconds,
    /// Per requester or group (owner's view) or per owner node
    /// (requester's view), most CPU time first.
    pub rows: Vec<UsageRow>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GpuSlot, Priority};
    use proptest::prelude::*;

    fn lease(id: &str, holder: &str, cores: u32, mem: u64, at: u64, exp: u64) -> Lease {
        Lease {
            lease_id: LeaseId(id.to_owned()),
            request_id: id.to_owned(),
            node_id: NodeId("owner".into()),
            holder: NodeId(holder.into()),
            cpu_cores: cores,
            memory_mb: mem,
            disk_mb: 0,
            gpus: vec![],
            custom: BTreeMap::new(),
            models: vec![],
            task_type: String::new(),
            priority: Priority::Normal,
            created_at_ms: at,
            expires_at_ms: exp,
            lease_ms: 30_000,
        }
    }

    fn total(m: &Meter, side: Side) -> ResourceTime {
        let mut t = ResourceTime::default();
        for b in m.buckets().values() {
            t.add(&b.total(side));
        }
        t
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn a_lease_is_charged_from_grant_to_release() {
        let mut m = Meter::new(HOUR_MS * 24, vec![], T0);
        let l = lease("a", "alice", 2, 1024, T0 + 1_000, T0 + 1_000_000);
        m.observe(T0 + 1_000, [&l], []);
        m.observe(T0 + 11_000, [&l], []);
        m.observe(T0 + 21_000, [], []);
        let t = total(&m, Side::Lent);
        assert_eq!(t.cpu_core_ms, 2 * 20_000);
        assert_eq!(t.memory_mb_ms, 1024 * 20_000);
        assert_eq!(m.open_leases(), 0);
    }

    #[test]
    fn a_vanished_lease_is_charged_only_until_it_expired() {
        let mut m = Meter::new(HOUR_MS, vec![], T0);
        let l = lease("a", "alice", 1, 0, T0, T0 + 5_000);
        m.observe(T0 + 2_000, [&l], []);
        m.observe(T0 + 60_000, [], []);
        assert_eq!(total(&m, Side::Lent).cpu_core_ms, 5_000);
    }

    #[test]
    fn time_before_a_restart_is_not_charged() {
        // Granted an hour before the meter (the process) started.
        let mut m = Meter::new(HOUR_MS * 24, vec![], T0);
        let l = lease("a", "alice", 1, 0, T0 - HOUR_MS, T0 + HOUR_MS);
        m.observe(T0 + 3_000, [&l], []);
        assert_eq!(total(&m, Side::Lent).cpu_core_ms, 3_000);
    }

    #[test]
    fn a_restart_keeps_the_buckets_and_does_not_count_twice() {
        let mut m = Meter::new(HOUR_MS * 24, vec![], T0);
        let l = lease("a", "alice", 1, 0, T0, T0 + HOUR_MS);
        m.observe(T0 + 10_000, [&l], []);
        let stored: Vec<(u64, Bucket)> = m.take_changes().put;
        // Down for 50 s, then the lease is restored.
        let mut m2 = Meter::new(HOUR_MS * 24, stored, T0 + 60_000);
        m2.observe(T0 + 70_000, [&l], []);
        assert_eq!(total(&m2, Side::Lent).cpu_core_ms, 20_000);
    }

    #[test]
    fn charges_split_at_hour_boundaries() {
        let start = T0 - T0 % HOUR_MS + HOUR_MS - 1_000;
        let mut m = Meter::new(HOUR_MS * 24, vec![], start);
        let l = lease("a", "alice", 1, 0, start, start + HOUR_MS);
        m.observe(start + 3_000, [&l], []);
        let b: Vec<u64> = m
            .buckets()
            .values()
            .map(|b| b.total(Side::Lent).cpu_core_ms)
            .collect();
        assert_eq!(b, vec![1_000, 2_000]);
    }

    #[test]
    fn old_buckets_are_dropped_and_reported_for_deletion() {
        let mut m = Meter::new(HOUR_MS, vec![], T0);
        let l = lease("a", "alice", 1, 0, T0, T0 + 2_000);
        m.observe(T0 + 1_000, [&l], []);
        m.take_changes();
        m.observe(T0 + 3 * HOUR_MS, [], []);
        assert!(m.buckets().is_empty());
        assert!(!m.take_changes().delete.is_empty());
    }

    #[test]
    fn gpus_and_custom_resources_are_charged() {
        let mut m = Meter::new(HOUR_MS, vec![], T0);
        let mut l = lease("g", "bob", 0, 0, T0, T0 + HOUR_MS);
        l.gpus = vec![GpuSlot {
            index: 0,
            memory_mb: 8_000,
        }];
        l.custom.insert("licenses".into(), 3);
        m.observe(T0 + 2_000, [], [&l]);
        let t = total(&m, Side::Used);
        assert_eq!(t.gpu_ms, 2_000);
        assert_eq!(t.gpu_memory_mb_ms, 16_000_000);
        assert_eq!(t.custom_ms.get("licenses"), Some(&6_000));
        assert_eq!(total(&m, Side::Lent), ResourceTime::default());
    }

    #[test]
    fn prices_turn_resource_time_into_cost() {
        let p = PriceList {
            cpu_core_hour: 0.5,
            memory_gib_hour: 0.25,
            ..Default::default()
        };
        let rt = ResourceTime {
            cpu_core_ms: 2 * HOUR_MS,
            memory_mb_ms: 4096 * HOUR_MS,
            ..Default::default()
        };
        assert!((p.cost(&rt) - 2.0).abs() < 1e-9);
        assert!(PriceList {
            gpu_hour: -1.0,
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(PriceList {
            cpu_core_hour: f64::NAN,
            ..Default::default()
        }
        .check()
        .is_err());
    }

    #[test]
    fn reports_group_by_requester_group_and_node() {
        let mut m = Meter::new(HOUR_MS, vec![], T0);
        let a = lease("a", "alice", 1, 0, T0, T0 + HOUR_MS);
        let b = lease("b", "bob", 2, 0, T0, T0 + HOUR_MS);
        let mut held = lease("h", "me", 4, 0, T0, T0 + HOUR_MS);
        held.node_id = NodeId("far".into());
        m.observe(T0 + 1_000, [&a, &b], [&held]);
        let groups = |p: &NodeId| {
            if p.0 == "alice" {
                vec!["lab".to_owned()]
            } else {
                vec![]
            }
        };
        let prices = PriceList {
            cpu_core_hour: 3.6,
            ..Default::default()
        };
        let q = |by| UsageQuery {
            by,
            ..Default::default()
        };
        let r = m.report(
            &q(By::Requester),
            T0 + 1_000,
            Some(&prices),
            Some("EUR"),
            groups,
        );
        let keys: Vec<&str> = r.rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, vec!["bob", "alice"]);
        assert_eq!(r.lent.cpu_core_seconds, 3.0);
        assert!((r.lent_cost.unwrap() - 0.003).abs() < 1e-12);
        assert_eq!(r.currency.as_deref(), Some("EUR"));
        let r = m.report(&q(By::Group), T0 + 1_000, None, None, groups);
        let keys: Vec<&str> = r.rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, vec![NO_GROUP, "lab"]);
        assert_eq!(r.lent_cost, None);
        let r = m.report(&q(By::Node), T0 + 1_000, Some(&prices), None, groups);
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].key, "far");
        assert_eq!(r.rows[0].seconds.cpu_core_seconds, 4.0);
        assert_eq!(r.rows[0].cost, None);
        // A window that ends before the usage shows none.
        let early = UsageQuery {
            until_ms: Some(T0 - 2 * HOUR_MS),
            ..Default::default()
        };
        assert!(m.report(&early, T0, None, None, groups).rows.is_empty());
    }

    #[test]
    fn queries_parse_and_bad_ones_name_the_parameter() {
        let now = T0;
        let q = UsageQuery::parse([("since", "24h"), ("by", "group")], now).unwrap();
        assert_eq!(q.since_ms, Some(now - 24 * HOUR_MS));
        assert_eq!(q.by, By::Group);
        for (bad, param) in [
            (vec![("by", "colour")], "by"),
            (vec![("since", "yesterday")], "since"),
            (vec![("since", "1h"), ("since", "2h")], "since"),
            (vec![("limit", "3")], "limit"),
            (vec![("since", "1h"), ("until", "2h")], "until"),
        ] {
            let e = UsageQuery::parse(bad.clone(), now).unwrap_err();
            assert_eq!(e.param, param, "{bad:?}");
        }
    }

    #[derive(Clone, Debug)]
    struct Spec {
        cores: u32,
        mem: u64,
        start: u64,
        /// Tick index at which the lease vanishes (released).
        end_tick: usize,
        /// Lease expiry, relative to its start.
        ttl: u64,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            0u32..64,
            0u64..1_000_000,
            0u64..3 * HOUR_MS,
            0usize..40,
            1u64..2 * HOUR_MS,
        )
            .prop_map(|(cores, mem, start, end_tick, ttl)| Spec {
                cores,
                mem,
                start,
                end_tick,
                ttl,
            })
    }

    proptest! {
        /// The total charged equals the integral of held resources (each
        /// lease from its start until the first tick that no longer sees
        /// it, capped at its expiry), buckets sum to that total, and no
        /// bucket spans more than an hour of one lease.
        #[test]
        fn total_charged_is_the_integral(
            specs in proptest::collection::vec(spec(), 0..12),
            gaps in proptest::collection::vec(1u64..20 * 60_000, 1..40),
        ) {
            let mut ticks = Vec::new();
            let mut t = T0;
            for g in &gaps {
                t += g;
                ticks.push(t);
            }
            let leases: Vec<Lease> = specs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    lease(&i.to_string(), &format!("p{}", i % 3), s.cores, s.mem,
                          T0 + s.start, T0 + s.start + s.ttl)
                })
                .collect();
            let mut m = Meter::new(HOUR_MS * 1000, vec![], T0);
            // A lease is visible at tick k if it started by then, has not
            // expired by then and k < end_tick.
            let visible = |i: usize, k: usize| {
                let l = &leases[i];
                let now = ticks[k];
                l.created_at_ms <= now && l.expires_at_ms > now && k < specs[i].end_tick
            };
            for (k, now) in ticks.iter().enumerate() {
                let seen: Vec<&Lease> = (0..leases.len()).filter(|i| visible(*i, k)).map(|i| &leases[i]).collect();
                m.observe(*now, seen, []);
            }
            // The integral: from created_at to the first tick after the
            // last visible one (or the end), capped at expiry.
            let mut want_cpu: u64 = 0;
            let mut want_mem: u64 = 0;
            for (i, l) in leases.iter().enumerate() {
                let ks: Vec<usize> = (0..ticks.len()).filter(|k| visible(i, *k)).collect();
                let (Some(first), Some(last)) = (ks.first(), ks.last()) else { continue };
                // Visibility is contiguous here by construction.
                prop_assert_eq!(ks.len(), last - first + 1);
                let end = ticks.get(last + 1).copied().unwrap_or(ticks[*last]).min(l.expires_at_ms);
                let dt = end - l.created_at_ms;
                want_cpu += u64::from(l.cpu_cores) * dt;
                want_mem += l.memory_mb * dt;
            }
            let got = total(&m, Side::Lent);
            prop_assert_eq!(got.cpu_core_ms, want_cpu);
            prop_assert_eq!(got.memory_mb_ms, want_mem);
            // Per-peer rows sum to the bucket totals, and buckets to the total.
            let r = m.report(&UsageQuery::default(), ticks[ticks.len() - 1], None, None, |_| vec![]);
            let rows_cpu: u64 = r.rows.iter().map(|r| r.raw.cpu_core_ms).sum();
            prop_assert_eq!(rows_cpu, want_cpu);
            for h in m.buckets().keys() {
                prop_assert_eq!(h % HOUR_MS, 0);
            }
        }

        /// Saving and restoring at any tick never counts time twice and
        /// never charges the time the meter was down.
        #[test]
        fn restarts_never_double_count(
            cores in 1u32..16,
            restart_at in 1usize..10,
            down in 0u64..600_000,
        ) {
            let l = lease("x", "p", cores, 0, T0, u64::MAX);
            let mut m = Meter::new(HOUR_MS * 24, vec![], T0);
            let mut now = T0;
            let mut stored: BTreeMap<u64, Bucket> = BTreeMap::new();
            for _ in 0..restart_at {
                now += 10_000;
                m.observe(now, [&l], []);
                stored.extend(m.take_changes().put);
            }
            let up_before = now - T0;
            now += down;
            let mut m = Meter::new(HOUR_MS * 24, stored.into_iter().collect(), now);
            let restarted = now;
            now += 10_000;
            m.observe(now, [&l], []);
            let want = u64::from(cores) * (up_before + (now - restarted));
            prop_assert_eq!(total(&m, Side::Lent).cpu_core_ms, want);
        }

        /// Hostile lease values (huge sizes, times at the ends of the
        /// range) never panic and never exceed u64.
        #[test]
        fn extreme_values_never_panic(
            cores in any::<u32>(),
            mem in any::<u64>(),
            created in any::<u64>(),
            expires in any::<u64>(),
            now in any::<u64>(),
        ) {
            let mut m = Meter::new(HOUR_MS, vec![], now.saturating_sub(5));
            let l = lease("x", "p", cores, mem, created, expires);
            m.observe(now, [&l], [&l]);
            m.observe(now.saturating_add(1), [], []);
            let _ = m.report(&UsageQuery::default(), now, Some(&PriceList::default()), None, |_| vec![]);
        }
    }
}
