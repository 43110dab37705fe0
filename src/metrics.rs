//! Prometheus metrics: the families a node exports at `GET /metrics`.
//!
//! One [`prometheus_client`] registry holds the node's own families (prefix
//! `lanswarm_`) and libp2p's (prefix `libp2p_`, from `libp2p-metrics`: the
//! swarm, gossipsub, identify and ping). The event loop owns [`Metrics`] and
//! updates it as things happen (see `net/node/metrics.rs`): counters and
//! histograms at the event, gauges (capacity, queue, contention, peers) on
//! the maintenance tick. The [`crate::Node`] handle keeps the registry and
//! encodes it in the OpenMetrics text format on every scrape, so a scrape
//! never waits on the event loop.
//!
//! Label values are few and fixed (outcomes, [`DenyReason`] codes,
//! resource dimensions, GPU indexes, node statuses, topics), so no peer or
//! user can grow the number of series. `docs/operations.md` lists every
//! family.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::{DenyReason, NodeStatus};

/// The Content-Type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Content-Type of [`to_text_format`]'s output: Prometheus' classic
/// text format, for clients that do not ask for OpenMetrics.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Final outcomes of an allocation request (requester side).
pub const OUTCOMES: [&str; 4] = ["granted", "queued", "denied", "failed"];

/// Every [`DenyReason`], in declaration order. [`reason_index`] fails to
/// compile when a variant is added and not listed here.
pub const DENY_REASONS: [DenyReason; 14] = [
    DenyReason::InsufficientCapacity,
    DenyReason::Forbidden,
    DenyReason::UnknownLease,
    DenyReason::NotHolder,
    DenyReason::BadRequest,
    DenyReason::ModelUnavailable,
    DenyReason::ShuttingDown,
    DenyReason::Unreachable,
    DenyReason::StorageError,
    DenyReason::Busy,
    DenyReason::QuotaExceeded,
    DenyReason::Unsatisfiable,
    DenyReason::Preempted,
    DenyReason::QueueTimeout,
];

/// A reason's place in [`DENY_REASONS`]; exhaustive, so a new variant must
/// be added there too.
pub fn reason_index(r: DenyReason) -> usize {
    match r {
        DenyReason::InsufficientCapacity => 0,
        DenyReason::Forbidden => 1,
        DenyReason::UnknownLease => 2,
        DenyReason::NotHolder => 3,
        DenyReason::BadRequest => 4,
        DenyReason::ModelUnavailable => 5,
        DenyReason::ShuttingDown => 6,
        DenyReason::Unreachable => 7,
        DenyReason::StorageError => 8,
        DenyReason::Busy => 9,
        DenyReason::QuotaExceeded => 10,
        DenyReason::Unsatisfiable => 11,
        DenyReason::Preempted => 12,
        DenyReason::QueueTimeout => 13,
    }
}

/// The resource dimensions, as [`crate::model::Capacity`] names them.
pub const DIMENSIONS: [&str; 5] = ["cpu_cores", "memory_mb", "disk_mb", "gpus", "gpu_memory_mb"];

/// Every node status, as the API names them.
pub const STATUSES: [NodeStatus; 5] = [
    NodeStatus::Online,
    NodeStatus::Degraded,
    NodeStatus::Suspect,
    NodeStatus::Offline,
    NodeStatus::Left,
];

/// The label value of a node status.
pub fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Online => "online",
        NodeStatus::Degraded => "degraded",
        NodeStatus::Suspect => "suspect",
        NodeStatus::Offline => "offline",
        NodeStatus::Left => "left",
    }
}

/// `outcome`: granted, queued, denied or failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// `reason`: a [`DenyReason`] code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// `dimension`: one of [`DIMENSIONS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DimensionLabels {
    pub dimension: String,
}

/// `gpu`: a GPU's index on this node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub gpu: String,
}

/// `status`: one of [`STATUSES`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

/// `source` of a grant: request, queue, reservation or draw (a lease drawn
/// from a pooled reservation).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// A gossip topic and the direction (`in` or `out`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GossipLabels {
    pub topic: String,
    pub direction: String,
}

/// `probe`: `ping` (libp2p ping) or `health_check` (`/lanswarm/health/1`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: String,
}

/// `version` of the running binary.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms to about 33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// 50 ms to about 22 h.
fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 3.0, 14))
}

/// 0.25 ms to about 4 s.
fn rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// Every family a node exports. Cloning a family clones a handle to the
/// same values, so the registry sees what the event loop records.
pub struct Metrics {
    /// libp2p's own: swarm, gossipsub, identify, ping (`libp2p_` prefix).
    pub libp2p: libp2p::metrics::Metrics,
    /// Allocation requests made through this node, by final outcome.
    pub allocations: Family<OutcomeLabels, Counter>,
    /// From request to final answer, by outcome.
    pub allocation_latency: HistogramFamily<OutcomeLabels>,
    /// This node's requests that ended denied, by the deciding reason.
    pub allocation_denials: Family<ReasonLabels, Counter>,
    /// Leases this node granted as owner, by source.
    pub grants: Family<SourceLabels, Counter>,
    /// Requests this node refused as owner (allocate, renew, release,
    /// reserve), by reason.
    pub denials: Family<ReasonLabels, Counter>,
    /// Requests this node refused for capacity, once per dimension that
    /// did not fit (see [`crate::core::bottleneck`]).
    pub capacity_refusals: Family<DimensionLabels, Counter>,
    /// Leases released on this node (by holders or the admin).
    pub releases: Counter,
    /// Leases on this node that ran out without renewal.
    pub expiries: Counter,
    /// Leases on this node ended for higher-priority requests, or taken
    /// back for the machine's own use (elastic sharing).
    pub preemptions: Counter,
    /// Active leases on this node.
    pub leases: Gauge,
    /// Leases this node holds on owners (itself included).
    pub held_leases: Gauge,
    /// Lendable capacity per dimension.
    pub capacity_lent: Family<DimensionLabels, Gauge>,
    /// Leased capacity per dimension.
    pub capacity_used: Family<DimensionLabels, Gauge>,
    /// Free capacity per dimension.
    pub capacity_free: Family<DimensionLabels, Gauge>,
    /// Lendable memory per GPU, bytes.
    pub gpu_memory_lent: Family<GpuLabels, Gauge>,
    /// Leased memory per GPU, bytes.
    pub gpu_memory_used: Family<GpuLabels, Gauge>,
    /// Free memory per GPU, bytes.
    pub gpu_memory_free: Family<GpuLabels, Gauge>,
    /// Requests waiting in this node's queue.
    pub queue_depth: Gauge,
    /// The per-peer admission rate in force (adaptive throttling), per s.
    pub throttle_rate: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Peers whose circuit breaker is open or half-open.
    pub breakers_open: Gauge,
    /// Live reservations on this node, by status (confirmed, waiting,
    /// active).
    pub reservations: Family<StatusLabels, Gauge>,
    /// With elastic sharing's forecast policy: the highest own use of the
    /// machine's cores expected over the horizon (0 until a forecast).
    pub elastic_forecast_cores: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Likewise for memory, bytes.
    pub elastic_forecast_memory: Gauge,
    /// What elastic sharing lends now, per dimension (the cap when it is
    /// off; only cores and memory move).
    pub elastic_current: Family<DimensionLabels, Gauge>,
    /// From joining this node's queue to leaving it, by outcome (granted,
    /// timed_out, failed).
    pub queue_wait: HistogramFamily<OutcomeLabels>,
    /// Contention severity: 0 none, 1 low, 2 medium, 3 high, 4 critical.
    pub contention_severity: Gauge,
    /// Queued demand over free capacity, per dimension.
    pub contention_ratio: Family<DimensionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Known peers by status.
    pub peers: Family<StatusLabels, Gauge>,
    /// Gossip messages published and received, by topic.
    pub gossip_messages: Family<GossipLabels, Counter>,
    /// Health round trips, by probe.
    pub health_rtt: HistogramFamily<ProbeLabels>,
}

impl Metrics {
    /// Every family, registered in a new registry with libp2p's. The
    /// registry is shared with the [`crate::Node`] handle for scraping.
    pub fn new() -> (Metrics, Arc<Registry>) {
        let mut registry = Registry::default();
        let libp2p = libp2p::metrics::Metrics::new(&mut registry);
        let m = Metrics {
            libp2p,
            allocations: Family::default(),
            allocation_latency: Family::new_with_constructor(latency_histogram),
            allocation_denials: Family::default(),
            grants: Family::default(),
            denials: Family::default(),
            capacity_refusals: Family::default(),
            releases: Counter::default(),
            expiries: Counter::default(),
            preemptions: Counter::default(),
            leases: Gauge::default(),
            held_leases: Gauge::default(),
            capacity_lent: Family::default(),
            capacity_used: Family::default(),
            capacity_free: Family::default(),
            gpu_memory_lent: Family::default(),
            gpu_memory_used: Family::default(),
            gpu_memory_free: Family::default(),
            queue_depth: Gauge::default(),
            throttle_rate: Gauge::default(),
            breakers_open: Gauge::default(),
            reservations: Family::default(),
            elastic_forecast_cores: Gauge::default(),
            elastic_forecast_memory: Gauge::default(),
            elastic_current: Family::default(),
            queue_wait: Family::new_with_constructor(wait_histogram),
            contention_severity: Gauge::default(),
            contention_ratio: Family::default(),
            peers: Family::default(),
            gossip_messages: Family::default(),
            health_rtt: Family::new_with_constructor(rtt_histogram),
        };
        // Series that always exist, at zero until something happens, so
        // `rate()` and dashboards have them from the first scrape.
        for o in OUTCOMES {
            m.allocations.get_or_create(&outcome(o)).inc_by(0);
        }
        for r in DENY_REASONS {
            m.allocation_denials.get_or_create(&reason(r)).inc_by(0);
            m.denials.get_or_create(&reason(r)).inc_by(0);
        }
        for s in ["confirmed", "waiting", "active"] {
            m.reservations
                .get_or_create(&StatusLabels { status: s.into() })
                .set(0);
        }
        for s in ["request", "queue", "reservation", "draw"] {
            m.grants
                .get_or_create(&SourceLabels { source: s.into() })
                .inc_by(0);
        }
        for s in STATUSES {
            m.peers
                .get_or_create(&StatusLabels {
                    status: status_name(s).into(),
                })
                .set(0);
        }
        m.register(registry.sub_registry_with_prefix("lanswarm"));
        (m, Arc::new(registry))
    }

    fn register(&self, r: &mut Registry) {
        // A gauge at 1 rather than an OpenMetrics `info`, which the
        // Prometheus text parser (promtool) does not know.
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        r.register(
            "build_info",
            "The running lanswarm version (always 1)",
            build,
        );
        r.register(
            "allocations",
            "Allocation requests made through this node, by final outcome",
            self.allocations.clone(),
        );
        r.register(
            "allocation_latency_seconds",
            "Time from an allocation request to its final answer, by outcome",
            self.allocation_latency.clone(),
        );
        r.register(
            "allocation_denials",
            "This node's allocation requests that ended denied, by reason",
            self.allocation_denials.clone(),
        );
        r.register(
            "grants",
            "Leases this node granted as owner, by source (request, queue, reservation)",
            self.grants.clone(),
        );
        r.register(
            "denials",
            "Requests this node refused as owner, by reason",
            self.denials.clone(),
        );
        r.register(
            "capacity_refusals",
            "Requests this node refused for capacity, per dimension that did not fit",
            self.capacity_refusals.clone(),
        );
        r.register(
            "releases",
            "Leases released on this node",
            self.releases.clone(),
        );
        r.register(
            "expiries",
            "Leases on this node that ran out without renewal",
            self.expiries.clone(),
        );
        r.register(
            "preemptions",
            "Leases on this node ended for higher-priority requests or the machine's own use",
            self.preemptions.clone(),
        );
        r.register("leases", "Active leases on this node", self.leases.clone());
        r.register(
            "held_leases",
            "Leases this node holds on owners",
            self.held_leases.clone(),
        );
        r.register(
            "capacity_lent",
            "Lendable capacity per dimension (the unit is in the dimension's name)",
            self.capacity_lent.clone(),
        );
        r.register(
            "capacity_used",
            "Leased capacity per dimension (the unit is in the dimension's name)",
            self.capacity_used.clone(),
        );
        r.register(
            "capacity_free",
            "Free capacity per dimension (the unit is in the dimension's name)",
            self.capacity_free.clone(),
        );
        r.register(
            "gpu_memory_lent_bytes",
            "Lendable memory per GPU, bytes",
            self.gpu_memory_lent.clone(),
        );
        r.register(
            "gpu_memory_used_bytes",
            "Leased memory per GPU, bytes",
            self.gpu_memory_used.clone(),
        );
        r.register(
            "gpu_memory_free_bytes",
            "Free memory per GPU, bytes",
            self.gpu_memory_free.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting in this node's queue",
            self.queue_depth.clone(),
        );
        r.register(
            "throttle_rate_per_second",
            "Allocation requests each peer may make per second here now (adaptive throttling)",
            self.throttle_rate.clone(),
        );
        r.register(
            "breakers_open",
            "Peers this node does not ask now: circuit breaker open or half-open",
            self.breakers_open.clone(),
        );
        r.register(
            "reservations",
            "Live advance reservations on this node, by status (confirmed, waiting for a condition, active)",
            self.reservations.clone(),
        );
        r.register(
            "elastic_forecast_cpu_cores",
            "Elastic sharing, forecast policy: the highest own use of the machine's cores expected over the horizon",
            self.elastic_forecast_cores.clone(),
        );
        r.register(
            "elastic_forecast_memory_bytes",
            "Elastic sharing, forecast policy: the highest own use of the machine's memory expected over the horizon, bytes",
            self.elastic_forecast_memory.clone(),
        );
        r.register(
            "elastic_current",
            "What elastic sharing lends now, per dimension (memory in MiB, as capacity_lent)",
            self.elastic_current.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time from joining this node's queue to leaving it, by outcome",
            self.queue_wait.clone(),
        );
        r.register(
            "contention_severity",
            "Contention on this node: 0 none, 1 low, 2 medium, 3 high, 4 critical",
            self.contention_severity.clone(),
        );
        r.register(
            "contention_ratio",
            "Queued demand over free capacity, per dimension",
            self.contention_ratio.clone(),
        );
        r.register("peers", "Known peers by status", self.peers.clone());
        r.register(
            "gossip_messages",
            "Gossip messages published (out) and received (in), by topic",
            self.gossip_messages.clone(),
        );
        r.register(
            "health_rtt_seconds",
            "Round trips of health probes (libp2p ping, /lanswarm/health/1), by probe",
            self.health_rtt.clone(),
        );
    }
}

/// The label set of an outcome.
pub fn outcome(o: &str) -> OutcomeLabels {
    OutcomeLabels { outcome: o.into() }
}

/// The label set of a deny reason.
pub fn reason(r: DenyReason) -> ReasonLabels {
    ReasonLabels {
        reason: r.code().into(),
    }
}

/// The registry in the OpenMetrics text format ([`CONTENT_TYPE`]).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an error would only come from a
    // metric's own encoder, and then the text so far is still served.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

/// OpenMetrics text ([`encode`]) in Prometheus' classic text format
/// (0.0.4), which `promtool check metrics`, older scrapers and people with
/// curl read: a counter's `HELP` and `TYPE` name its `_total` samples,
/// there is no `# UNIT` or `# EOF` line and no exemplars, and types that
/// format does not know become `untyped`.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let rename = |name: &str| -> String {
        if counters.contains(name) && !name.ends_with("_total") {
            format!("{name}_total")
        } else {
            name.to_owned()
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", rename(name)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {kind}\n", rename(name)));
        } else {
            // A sample; drop an exemplar (` # {...} value`) if any.
            let sample = match line.find(" # ") {
                Some(i) => &line[..i],
                None => line,
            };
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_has_every_family_and_ends_with_eof() {
        let (m, registry) = Metrics::new();
        m.allocations.get_or_create(&outcome("granted")).inc();
        m.allocation_latency
            .get_or_create(&outcome("granted"))
            .observe(0.004);
        m.capacity_lent
            .get_or_create(&DimensionLabels {
                dimension: "cpu_cores".into(),
            })
            .set(8);
        m.health_rtt
            .get_or_create(&ProbeLabels {
                probe: "ping".into(),
            })
            .observe(0.0003);
        let text = encode(&registry);
        for family in [
            "lanswarm_allocations_total{outcome=\"granted\"} 1",
            "lanswarm_allocations_total{outcome=\"failed\"} 0",
            "lanswarm_allocation_latency_seconds_bucket{le=\"0.004\",outcome=\"granted\"} 1",
            "lanswarm_allocation_latency_seconds_count{outcome=\"granted\"} 1",
            "lanswarm_capacity_lent{dimension=\"cpu_cores\"} 8",
            "lanswarm_releases_total 0",
            "lanswarm_queue_depth 0",
            "lanswarm_throttle_rate_per_second 0.0",
            "lanswarm_breakers_open 0",
            "lanswarm_reservations{status=\"waiting\"} 0",
            "lanswarm_grants_total{source=\"draw\"} 0",
            "lanswarm_elastic_forecast_cpu_cores 0.0",
            "lanswarm_peers{status=\"online\"} 0",
            "# TYPE lanswarm_health_rtt_seconds histogram",
            "lanswarm_health_rtt_seconds_bucket{le=\"0.0005\",probe=\"ping\"} 1",
            "lanswarm_health_rtt_seconds_bucket{le=\"0.00025\",probe=\"ping\"} 0",
            "libp2p_swarm_dial_attempt_total 0",
            "# TYPE libp2p_ping_rtt_seconds histogram",
        ] {
            assert!(text.contains(family), "missing {family:?} in:\n{text}");
        }
        let build = format!(
            "lanswarm_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "missing {build:?}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn text_format_names_counters_by_their_samples() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
                  a_requests_total{x=\"1\"} 2 # {trace=\"t\"} 1.0\n\
                  # HELP a_rtt_seconds RTT.\n# TYPE a_rtt_seconds histogram\n\
                  # UNIT a_rtt_seconds seconds\na_rtt_seconds_count 1\n\
                  # TYPE a_up info\na_up_info 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
             a_requests_total{x=\"1\"} 2\n\
             # HELP a_rtt_seconds RTT.\n# TYPE a_rtt_seconds histogram\n\
             a_rtt_seconds_count 1\n# TYPE a_up untyped\na_up_info 1\n"
        );
    }

    #[test]
    fn every_deny_reason_has_its_own_series() {
        for (i, r) in DENY_REASONS.iter().enumerate() {
            assert_eq!(reason_index(*r), i, "{r} out of order in DENY_REASONS");
        }
        let (m, registry) = Metrics::new();
        m.denials
            .get_or_create(&reason(DenyReason::QuotaExceeded))
            .inc();
        let text = encode(&registry);
        for r in DENY_REASONS {
            let series = format!("lanswarm_denials_total{{reason=\"{}\"}}", r.code());
            assert!(text.contains(&series), "missing {series}");
        }
        assert!(text.contains("lanswarm_denials_total{reason=\"quota_exceeded\"} 1"));
        assert!(text.contains("lanswarm_denials_total{reason=\"busy\"} 0"));
    }

    /// Every `lanswarm_` series the Grafana dashboard queries is one the
    /// node writes (once each family has a value).
    #[test]
    fn the_grafana_dashboard_queries_existing_series() {
        let dashboard = include_str!("../swarm-config/grafana-dashboard.json");
        let parsed: serde_json::Value =
            serde_json::from_str(dashboard).expect("the dashboard is JSON");
        assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
        let (m, registry) = Metrics::new();
        let o = outcome("granted");
        m.allocation_latency.get_or_create(&o).observe(0.1);
        m.queue_wait.get_or_create(&o).observe(1.0);
        let probe = ProbeLabels {
            probe: "ping".into(),
        };
        m.health_rtt.get_or_create(&probe).observe(0.001);
        let d = DimensionLabels {
            dimension: "cpu_cores".into(),
        };
        m.capacity_lent.get_or_create(&d).set(1);
        m.capacity_used.get_or_create(&d).set(1);
        m.capacity_free.get_or_create(&d).set(1);
        m.contention_ratio.get_or_create(&d).set(0.5);
        let g = GpuLabels { gpu: "0".into() };
        m.gpu_memory_lent.get_or_create(&g).set(1);
        m.gpu_memory_used.get_or_create(&g).set(1);
        m.gpu_memory_free.get_or_create(&g).set(1);
        let gossip = GossipLabels {
            topic: "t".into(),
            direction: "in".into(),
        };
        m.gossip_messages.get_or_create(&gossip).inc();
        let text = encode(&registry);
        let mut names = std::collections::BTreeSet::new();
        for (i, _) in dashboard.match_indices("lanswarm_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
        assert!(names.len() >= 15, "{names:?}");
        for name in names {
            // A sample, or a family named in a description.
            let written = text.lines().any(|l| {
                l.starts_with(&format!("{name}{{"))
                    || l.starts_with(&format!("{name} "))
                    || l.starts_with(&format!("# TYPE {name} "))
            });
            assert!(
                written,
                "the dashboard queries {name}, which no family writes"
            );
        }
    }

    #[test]
    fn every_status_has_a_name() {
        let names: std::collections::BTreeSet<&str> =
            STATUSES.iter().map(|s| status_name(*s)).collect();
        assert_eq!(names.len(), STATUSES.len());
        for s in STATUSES {
            // The API's serde name is the label value.
            let json = serde_json::to_string(&s).expect("status serialises");
            assert_eq!(json.trim_matches('"'), status_name(s));
        }
    }
}
