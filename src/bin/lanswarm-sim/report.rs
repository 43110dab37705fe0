//! The report of a run: one serialisable struct, written as JSON with
//! `--json` and printed as a short text summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::workload::Usage;

/// Latency percentiles of one kind of call, ms (nearest rank).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(samples: &[f64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Latency {
            count: v.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// One node: what it lends, what it granted, and the most it had out at
/// once.
#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    pub name: String,
    pub profile: String,
    pub id: String,
    pub lendable_cpu_cores: u32,
    pub lendable_memory_mb: u64,
    pub lendable_disk_mb: u64,
    pub lendable_gpus: usize,
    /// Grants it made as owner.
    pub grants: u64,
    pub peak: Usage,
}

/// Denied requests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Denials {
    pub total: u64,
    /// Top-level error codes (`no_capacity`, and `<status> <code>` for
    /// anything unexpected).
    pub by_code: BTreeMap<String, u64>,
    /// `no_capacity`: the reason of every refusal by a node that was asked.
    pub refusal_reasons: BTreeMap<String, u64>,
    /// `no_capacity`: why each other node was not asked, without numbers.
    pub excluded_reasons: BTreeMap<String, u64>,
}

/// The invariants checked.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Invariants {
    /// No sample ever saw an owner's granted leases exceed what it lends,
    /// in any dimension or on any GPU.
    pub never_overcommitted: bool,
    /// Sweeps over all nodes, and owner ledgers read, while requests ran.
    pub sample_sweeps: u64,
    pub samples: u64,
    pub failed_samples: u64,
    pub overcommit_violations: u64,
    /// After the last request, no lease is held or granted anywhere.
    pub all_released: bool,
    /// How long after the last request that was true, s.
    pub released_after_secs: Option<f64>,
    pub leaked_leases: Vec<String>,
    /// Every node sees every node with all its capacity free again.
    pub views_settled: bool,
    pub views_settled_after_secs: Option<f64>,
    pub views_unsettled: Vec<String>,
    /// No node penalised a peer for invalid messages: every peer here is
    /// an honest node, so a penalty is a false positive.
    pub no_peer_penalised: bool,
    pub penalties: Vec<String>,
    /// No node process exited during the run.
    pub nodes_alive: bool,
    pub dead_nodes: Vec<String>,
    /// No unexpected answer or transport error.
    pub no_errors: bool,
    pub examples: Vec<String>,
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub nodes: usize,
    pub requests: usize,
    pub concurrency: usize,
    pub hold_ms: u64,
    pub seed: u64,
    /// Fingerprint of the requests drawn from the seed.
    pub workload_digest: String,
    pub lanswarm_bin: String,
    /// From spawning the first node to the last one answering, s.
    pub nodes_up_secs: f64,
    pub converged: bool,
    /// After `nodes_up_secs`, s.
    pub converged_after_secs: Option<f64>,
    pub not_converged_because: Option<String>,
    /// Whether Ctrl-C (or SIGTERM) cut the run short.
    pub interrupted: bool,
    /// Start of the first request to the end of the last, s.
    pub workload_secs: f64,
    /// Whole run, nodes' start and teardown included, s.
    pub wall_secs: f64,
    pub sent: u64,
    pub requests_per_sec: f64,
    pub grants: u64,
    /// Grants placed after at least one refusal (their `refusals` is
    /// non-empty).
    pub late_binding_grants: u64,
    /// Reasons of the refusals that late binding got past.
    pub late_binding_refusals: BTreeMap<String, u64>,
    /// Grants on another node than the requester.
    pub remote_grants: u64,
    pub denials: Denials,
    pub errors: BTreeMap<String, u64>,
    pub releases: u64,
    pub releases_unconfirmed: u64,
    /// Grants by owner name.
    pub placement: BTreeMap<String, u64>,
    /// `[grants, denials]` by strategy.
    pub by_strategy: BTreeMap<String, [u64; 2]>,
    /// `POST /api/v1/allocations` round trips, ms.
    pub grant_latency_ms: Latency,
    pub denial_latency_ms: Latency,
    /// `DELETE /api/v1/allocations/{id}` round trips, ms.
    pub release_latency_ms: Latency,
    pub node_reports: Vec<NodeReport>,
    pub invariants: Invariants,
    /// Converged, not interrupted, and every invariant held.
    pub passed: bool,
    /// The run directory, when kept.
    pub kept_dir: Option<String>,
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let s: Vec<String> = v.iter().map(|(k, n)| format!("{k} {n}")).collect();
    if s.is_empty() {
        "none".into()
    } else {
        s.join(", ")
    }
}

fn gib(mb: u64) -> String {
    if mb.is_multiple_of(1024) {
        format!("{}G", mb / 1024)
    } else {
        format!("{:.1}G", mb as f64 / 1024.0)
    }
}

fn ok(b: bool) -> &'static str {
    if b {
        "ok"
    } else {
        "FAILED"
    }
}

impl Report {
    /// The short text report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = self.write_text(&mut s);
        s
    }

    fn write_text(&self, s: &mut String) -> std::fmt::Result {
        let how = if self.mode == "netns" {
            "virtual LAN of network namespaces, mDNS only"
        } else {
            "127.0.0.1, bootstrap from n0"
        };
        writeln!(
            s,
            "lanswarm-sim: {} nodes ({}: {how}), {} requests, concurrency {}, hold {} ms, seed {} (workload {})",
            self.nodes, self.mode, self.requests, self.concurrency, self.hold_ms, self.seed, self.workload_digest
        )?;
        match (self.converged, self.converged_after_secs) {
            (true, Some(t)) => writeln!(
                s,
                "nodes up in {:.2} s; converged (every node sees every node online, all free) {t:.2} s later",
                self.nodes_up_secs
            )?,
            _ => writeln!(
                s,
                "NOT CONVERGED: {}",
                self.not_converged_because.as_deref().unwrap_or("?")
            )?,
        }
        if self.interrupted {
            writeln!(
                s,
                "INTERRUPTED: the figures below cover the requests sent before"
            )?;
        }
        writeln!(
            s,
            "wall time {:.1} s; workload {:.2} s for {} requests ({:.0} requests/s)",
            self.wall_secs, self.workload_secs, self.sent, self.requests_per_sec
        )?;
        writeln!(s)?;
        writeln!(
            s,
            "grants    {:>6}  ({:.1} %); late binding placed {} of them after a refusal ({}); {} on another node than the requester",
            self.grants,
            pct(self.grants, self.sent),
            self.late_binding_grants,
            counts(&self.late_binding_refusals),
            self.remote_grants
        )?;
        writeln!(
            s,
            "denials   {:>6}  ({:.1} %): {}",
            self.denials.total,
            pct(self.denials.total, self.sent),
            counts(&self.denials.by_code)
        )?;
        writeln!(
            s,
            "  refused by the node asked: {}",
            counts(&self.denials.refusal_reasons)
        )?;
        writeln!(
            s,
            "  not asked, because:        {}",
            counts(&self.denials.excluded_reasons)
        )?;
        let errors: u64 = self.errors.values().sum();
        writeln!(
            s,
            "errors    {errors:>6}{}",
            if errors == 0 {
                String::new()
            } else {
                format!("  {}", counts(&self.errors))
            }
        )?;
        writeln!(
            s,
            "releases  {:>6}  ({} not confirmed by the owner)",
            self.releases, self.releases_unconfirmed
        )?;
        writeln!(s)?;
        writeln!(
            s,
            "placement (grants by owner; peak = most granted at once / lent)"
        )?;
        writeln!(
            s,
            "  node  profile       grants  share   cores     memory      disk        gpu memory"
        )?;
        for n in &self.node_reports {
            let gpus: Vec<String> = n
                .peak
                .gpu_memory_mb
                .iter()
                .map(|(i, m)| format!("#{i} {}", gib(*m)))
                .collect();
            writeln!(
                s,
                "  {:<5} {:<12} {:>7} {:>5.1}%   {:<9} {:<11} {:<11} {}",
                n.name,
                n.profile,
                n.grants,
                pct(n.grants, self.grants),
                format!("{}/{}", n.peak.cpu_cores, n.lendable_cpu_cores),
                format!("{}/{}", gib(n.peak.memory_mb), gib(n.lendable_memory_mb)),
                format!("{}/{}", gib(n.peak.disk_mb), gib(n.lendable_disk_mb)),
                if n.lendable_gpus == 0 {
                    "-".to_owned()
                } else {
                    gpus.join(" ")
                }
            )?;
        }
        writeln!(s)?;
        writeln!(s, "by strategy (grants/denials): {}", {
            let v: Vec<String> = self
                .by_strategy
                .iter()
                .map(|(k, [g, d])| format!("{k} {g}/{d}"))
                .collect();
            v.join(", ")
        })?;
        writeln!(s)?;
        writeln!(s, "latency, ms (one HTTP exchange on an open connection)")?;
        writeln!(
            s,
            "                                n      p50      p90      p99      max"
        )?;
        for (name, l) in [
            ("grant (POST, 201)", &self.grant_latency_ms),
            ("denial (POST, 503)", &self.denial_latency_ms),
            ("release (DELETE)", &self.release_latency_ms),
        ] {
            writeln!(
                s,
                "  {:<24} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                name, l.count, l.p50, l.p90, l.p99, l.max
            )?;
        }
        writeln!(s)?;
        let i = &self.invariants;
        writeln!(s, "invariants")?;
        writeln!(
            s,
            "  {:<6} no owner ever granted more than it lends, in any dimension or GPU ({} samples in {} sweeps, {} violations, {} failed reads)",
            ok(i.never_overcommitted), i.samples, i.sample_sweeps, i.overcommit_violations, i.failed_samples
        )?;
        writeln!(
            s,
            "  {:<6} every allocation released, none held or granted anywhere{}",
            ok(i.all_released),
            match i.released_after_secs {
                Some(t) => format!(" ({t:.2} s after the last request)"),
                None => format!(" ({} leaked)", i.leaked_leases.len()),
            }
        )?;
        writeln!(
            s,
            "  {:<6} every node sees every node fully free again{}",
            ok(i.views_settled),
            match i.views_settled_after_secs {
                Some(t) => format!(" ({t:.2} s after that)"),
                None => String::new(),
            }
        )?;
        writeln!(
            s,
            "  {:<6} no node penalised a peer (all peers are honest here)",
            ok(i.no_peer_penalised)
        )?;
        writeln!(
            s,
            "  {:<6} every node process still running",
            ok(i.nodes_alive)
        )?;
        writeln!(
            s,
            "  {:<6} no unexpected answer or transport error",
            ok(i.no_errors)
        )?;
        for e in i
            .examples
            .iter()
            .chain(&i.leaked_leases)
            .chain(&i.views_unsettled)
            .chain(&i.penalties)
            .chain(&i.dead_nodes)
            .take(12)
        {
            writeln!(s, "         {e}")?;
        }
        if let Some(d) = &self.kept_dir {
            writeln!(s, "\nnode configs, logs and data kept in {d}")?;
        }
        let result = if self.passed {
            "PASS"
        } else if self.interrupted {
            "INTERRUPTED"
        } else {
            "FAIL"
        };
        writeln!(s, "\nRESULT: {result}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = Latency::of(&v);
        assert_eq!(
            (l.count, l.p50, l.p90, l.p99, l.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        let one = Latency::of(&[3.0]);
        assert_eq!((one.p50, one.p99, one.max), (3.0, 3.0, 3.0));
        assert_eq!(Latency::of(&[]).count, 0);
    }
}
