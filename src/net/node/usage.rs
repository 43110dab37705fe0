//! Usage accounting and bottlenecks, loop side: feeds the leases that
//! exist into the [`Meter`] on every maintenance tick, writes changed
//! hourly buckets to the store every [`FLUSH_EVERY_MS`] (and at shutdown),
//! counts capacity refusals per dimension, and answers the API.

use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::{now_ms, EventLoop};
use crate::core::bottleneck::{self, DimCount, Refusals};
use crate::core::usage::{AccountingConfig, Meter, UsageQuery, UsageReport};
use crate::model::{Denial, DenyReason, NodeId, ResourceRequirements};
use crate::store::Store;

/// How often changed usage buckets are written. A crash loses at most
/// this much accounting (never more, and never counts anything twice).
pub(super) const FLUSH_EVERY_MS: u64 = 10_000;

/// The accounting state of the loop.
pub(super) struct Accounting {
    meter: Meter,
    refusals: Refusals,
    cfg: AccountingConfig,
    next_flush_ms: u64,
}

impl Accounting {
    /// Start from the buckets kept in the store. A store that cannot be
    /// read starts an empty meter (logged); accounting never stops a node.
    pub(super) fn start(store: &Store, cfg: &AccountingConfig, now: u64) -> Self {
        let stored = match store.usage_buckets() {
            Ok((b, 0)) => b,
            Ok((b, bad)) => {
                warn!(
                    skipped = bad,
                    "usage records that do not decode were skipped"
                );
                b
            }
            Err(e) => {
                error!(error = %e, "cannot read usage accounting; starting empty");
                Vec::new()
            }
        };
        Accounting {
            meter: Meter::new(cfg.retention_ms(), stored, now),
            refusals: Refusals::default(),
            cfg: cfg.clone(),
            next_flush_ms: now.saturating_add(FLUSH_EVERY_MS),
        }
    }

    /// This node's refusal counts, as announced.
    pub(super) fn announced_refusals(&self, now: u64) -> Vec<DimCount> {
        self.refusals.top(now)
    }
}

/// One node's bottleneck, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBottleneck {
    pub node_id: NodeId,
    pub name: String,
    /// The dimension that refused the most requests, if any did.
    pub bottleneck: Option<String>,
    /// Refusals per dimension, most first.
    pub dimensions: Vec<DimCount>,
}

/// `GET /api/v1/bottlenecks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BottleneckReport {
    /// The window the counts cover, seconds.
    pub window_secs: u64,
    /// The dimension that refused the most requests swarm-wide.
    pub bottleneck: Option<String>,
    /// Refusals per dimension over every node this node knows, most first.
    pub swarm: Vec<DimCount>,
    /// Requests this node refused for capacity in the window.
    pub local_refused: u64,
    /// Per node (this one first, then by name), nodes with no refusals
    /// left out.
    pub nodes: Vec<NodeBottleneck>,
}

impl EventLoop {
    /// Meter the leases that exist now, and write changes when due.
    pub(super) fn account(&mut self, now: u64) {
        let lent = self.sched.ledger().leases();
        let used = self.held.values().map(|h| &h.rec.lease);
        self.accounting.meter.observe(now, lent, used);
        if now >= self.accounting.next_flush_ms {
            self.flush_usage();
            self.accounting.next_flush_ms = now.saturating_add(FLUSH_EVERY_MS);
        }
    }

    /// Write changed usage buckets now (a failed write is retried).
    pub(super) fn flush_usage(&mut self) {
        let changes = self.accounting.meter.take_changes();
        if changes.is_empty() {
            return;
        }
        if let Err(e) = self.store.apply_usage(&changes) {
            error!(error = %e, "cannot write usage accounting; will retry");
            self.accounting.meter.restore_changes(changes);
        }
    }

    /// Count a refusal for capacity: which dimensions of `req` did not fit
    /// what is free now. Other refusals (forbidden, quota, busy, ...) are
    /// not bottlenecks of capacity and are not counted.
    pub(super) fn note_refusal(&mut self, req: &ResourceRequirements, denial: &Denial, now: u64) {
        if !matches!(
            denial.reason,
            DenyReason::InsufficientCapacity | DenyReason::QueueTimeout
        ) {
            return;
        }
        let ledger = self.sched.ledger();
        let dims = bottleneck::short_dimensions(&ledger.free(), ledger.capacity(), req);
        self.accounting.refusals.record(now, &dims);
        for d in &dims {
            self.metrics
                .m
                .capacity_refusals
                .get_or_create(&crate::metrics::DimensionLabels {
                    dimension: d.clone(),
                })
                .inc();
        }
        self.schedule_announce();
    }

    /// Answer `GET /api/v1/usage`.
    pub(super) fn usage_report(&self, q: &UsageQuery) -> UsageReport {
        let cfg = &self.accounting.cfg;
        self.accounting.meter.report(
            q,
            now_ms(),
            cfg.price.as_ref(),
            cfg.currency.as_deref(),
            |peer| {
                self.state
                    .groups
                    .groups()
                    .into_iter()
                    .filter(|g| g.members.contains(peer))
                    .map(|g| g.name.clone())
                    .collect()
            },
        )
    }

    /// Answer `GET /api/v1/bottlenecks`.
    pub(super) fn bottleneck_report(&self) -> BottleneckReport {
        let now = now_ms();
        let mine = self.accounting.refusals.ranked(now);
        let mut nodes = vec![NodeBottleneck {
            node_id: self.local_id.clone(),
            name: self.cfg.name.clone(),
            bottleneck: mine.first().map(|d| d.dimension.clone()),
            dimensions: mine.clone(),
        }];
        let mut peers: Vec<NodeBottleneck> = self
            .view
            .peers()
            .filter(|p| p.ann.node_id != self.local_id && !p.ann.refusals.is_empty())
            .map(|p| {
                let dims = bottleneck::swarm_wide([p.ann.refusals.as_slice()]);
                NodeBottleneck {
                    node_id: p.ann.node_id.clone(),
                    name: p.ann.name.clone(),
                    bottleneck: dims.first().map(|d| d.dimension.clone()),
                    dimensions: dims,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name).then(a.node_id.cmp(&b.node_id)));
        nodes.extend(peers);
        let swarm = bottleneck::swarm_wide(nodes.iter().map(|n| n.dimensions.as_slice()));
        if nodes[0].dimensions.is_empty() {
            nodes.remove(0);
        }
        BottleneckReport {
            window_secs: bottleneck::WINDOW_MS / 1000,
            bottleneck: swarm.first().map(|d| d.dimension.clone()),
            swarm,
            local_refused: self.accounting.refusals.requests(now),
            nodes,
        }
    }
}
