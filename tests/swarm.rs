//! In-process swarm tests: real nodes (real libp2p swarms, TCP + Noise +
//! Yamux) on 127.0.0.1, with mDNS off and bootstrap peers.

use std::time::Duration;

use lanswarm::core::placement::{Strategy, StrategyConfig};
use lanswarm::handle::{AllocationRequest, NodeInfo};
use lanswarm::model::{Capacity, DenyReason, GpuSlot, ResourceRequirements};
use lanswarm::net::node::{self, NodeConfig};
use lanswarm::{Node, NodeError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

struct TestNode {
    node: Node,
    task: JoinHandle<()>,
    shutdown: CancellationToken,
    cfg: NodeConfig,
    _dir: tempfile::TempDir,
}

impl TestNode {
    /// The first listen address, once the swarm is listening.
    async fn addr(&self) -> String {
        eventually("the node listens", || async {
            self.node.listen_addrs().await.ok()?.into_iter().next()
        })
        .await
    }

    /// Stop without any goodbye, as a crash would.
    async fn crash(self) -> (NodeConfig, tempfile::TempDir) {
        self.task.abort();
        let _ = self.task.await;
        (self.cfg, self._dir)
    }
}

fn cap(cores: u32, mem_gib: u64) -> Capacity {
    Capacity {
        cpu_cores: cores,
        memory_mb: mem_gib * 1024,
        disk_mb: 10 * 1024,
        gpus: vec![],
        custom: Default::default(),
    }
}

async fn spawn_with(
    mut cfg: NodeConfig,
    dir: tempfile::TempDir,
    bootstrap: Option<String>,
) -> TestNode {
    if let Some(b) = bootstrap {
        cfg.bootstrap = vec![b.parse().unwrap()];
    }
    let shutdown = CancellationToken::new();
    let (node, task) = node::start(cfg.clone(), shutdown.clone()).await.unwrap();
    TestNode {
        node,
        task,
        shutdown,
        cfg,
        _dir: dir,
    }
}

async fn spawn(
    name: &str,
    capacity: Capacity,
    bootstrap: Option<String>,
    tweak: impl FnOnce(&mut NodeConfig),
) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::for_test(name, capacity, dir.path().join("state.redb"));
    tweak(&mut cfg);
    spawn_with(cfg, dir, bootstrap).await
}

/// Poll `f` until it returns Some, or fail after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `n` knows `count` nodes (itself included); returns them.
async fn sees_nodes(n: &Node, count: usize) -> Vec<NodeInfo> {
    eventually(&format!("{} to see {count} nodes", n.id()), || async {
        let ns = n.nodes().await.ok()?;
        (ns.len() == count).then_some(ns)
    })
    .await
}

async fn node_named(n: &Node, name: &str) -> Option<NodeInfo> {
    n.nodes().await.ok()?.into_iter().find(|i| i.name == name)
}

fn req(cores: u32, mem_mb: u64) -> AllocationRequest {
    AllocationRequest {
        required_resources: ResourceRequirements {
            cpu_cores: cores,
            memory_mb: mem_mb,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_converge_across_three_nodes() {
    let a = spawn("a", cap(2, 4), None, |_| {}).await;
    let a_addr = a.addr().await;
    let mut gpu_cap = cap(8, 32);
    gpu_cap.gpus = vec![GpuSlot {
        index: 0,
        memory_mb: 24_000,
    }];
    let b = spawn("b", gpu_cap, Some(a_addr.clone()), |_| {}).await;
    let c = spawn("c", cap(4, 8), Some(a_addr), |_| {}).await;

    for n in [&a.node, &b.node, &c.node] {
        let nodes = sees_nodes(n, 3).await;
        let b_info = nodes.iter().find(|i| i.name == "b").unwrap();
        assert_eq!(b_info.resources.lendable.cpu_cores, 8);
        assert_eq!(b_info.resources.lendable.memory_mb, 32 * 1024);
        assert_eq!(
            b_info.resources.free.gpus,
            vec![GpuSlot {
                index: 0,
                memory_mb: 24_000
            }]
        );
        assert_eq!(nodes.iter().filter(|i| i.is_local).count(), 1);
    }

    // A change is announced and seen elsewhere.
    let alloc = c
        .node
        .request(AllocationRequest {
            node_id: Some("b".into()),
            ..req(3, 1024)
        })
        .await
        .unwrap();
    assert_eq!(alloc.node_name, "b");
    eventually("a sees b's free cores drop to 5", || async {
        let b_info = node_named(&a.node, "b").await?;
        (b_info.resources.free.cpu_cores == 5).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_gets_the_full_view_on_connect() {
    // Heartbeats and change announcements far in the future: only the
    // sync-on-connect swap can tell the new node about b.
    let slow = |c: &mut NodeConfig| {
        c.announce_interval = Duration::from_secs(3600);
        c.announce_debounce = Duration::from_secs(3600);
    };
    let a = spawn("a", cap(2, 4), None, slow).await;
    let a_addr = a.addr().await;
    let b = spawn("b", cap(6, 12), Some(a_addr.clone()), slow).await;
    eventually("a knows b", || async { node_named(&a.node, "b").await }).await;

    // `eventually` gives up after WAIT (20 s), far inside the hour-long
    // heartbeat, so only the swap on connect can make this pass.
    let c = spawn("c", cap(1, 1), Some(a_addr), slow).await;
    let b_seen = eventually("c learns b through a", || async {
        node_named(&c.node, "b").await
    })
    .await;
    assert_eq!(b_seen.resources.lendable.cpu_cores, 6);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lands_on_the_node_the_strategy_picks_and_release_frees_it() {
    let a = spawn("a", cap(0, 0), None, |_| {}).await;
    let a_addr = a.addr().await;
    let big = spawn("big", cap(16, 64), Some(a_addr.clone()), |_| {}).await;
    let small = spawn("small", cap(4, 8), Some(a_addr), |_| {}).await;
    sees_nodes(&a.node, 3).await;

    // Pre-load `big` so that least-loaded must pick `small`.
    big.node
        .request(AllocationRequest {
            node_id: Some("big".into()),
            ..req(12, 1024)
        })
        .await
        .unwrap();
    eventually("a sees big loaded", || async {
        (node_named(&a.node, "big").await?.resources.free.cpu_cores == 4).then_some(())
    })
    .await;
    let alloc = a
        .node
        .request(AllocationRequest {
            strategy: Some(Strategy::LeastLoaded),
            ..req(2, 2048)
        })
        .await
        .unwrap();
    assert_eq!(alloc.node_name, "small");
    assert_eq!(alloc.holder, *a.node.id());
    let granted = small.node.allocations().await.unwrap().granted;
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].allocation_id, alloc.allocation_id);
    assert_eq!(granted[0].holder, *a.node.id());
    let held = a.node.allocations().await.unwrap().held;
    assert_eq!(held.len(), 1);

    let out = a.node.release(&alloc.allocation_id).await.unwrap();
    assert!(out.owner_confirmed);
    assert!(small.node.allocations().await.unwrap().granted.is_empty());
    assert!(a.node.allocations().await.unwrap().held.is_empty());
    // Idempotent from the owner's point of view; unknown to the holder now.
    assert!(matches!(
        a.node.release(&alloc.allocation_id).await,
        Err(NodeError::UnknownAllocation(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_from_a_stale_view_falls_through_to_the_next_candidate() {
    // `b` announces only at start: a's view of it goes stale once b fills
    // itself up locally.
    let a = spawn("a", cap(0, 0), None, |_| {}).await;
    let a_addr = a.addr().await;
    let b = spawn("b", cap(8, 16), Some(a_addr.clone()), |c| {
        c.announce_interval = Duration::from_secs(3600);
        c.announce_debounce = Duration::from_secs(3600);
    })
    .await;
    let _c = spawn("c", cap(4, 8), Some(a_addr), |_| {}).await;
    sees_nodes(&a.node, 3).await;
    b.node
        .request(AllocationRequest {
            node_id: Some("b".into()),
            ..req(8, 1024)
        })
        .await
        .unwrap();
    assert_eq!(
        node_named(&a.node, "b")
            .await
            .unwrap()
            .resources
            .free
            .cpu_cores,
        8,
        "a's view of b is stale"
    );

    // Weighted with b heavily preferred: b is asked first, refuses, and
    // the request lands on c.
    let weights = [(b.node.id().0.clone(), 100), ("c".to_owned(), 1)]
        .into_iter()
        .collect();
    a.node
        .set_strategy(StrategyConfig {
            strategy: Strategy::Weighted,
            weights,
        })
        .await
        .unwrap();
    let alloc = a.node.request(req(4, 1024)).await.unwrap();
    assert_eq!(alloc.node_name, "c");
    assert_eq!(alloc.refusals.len(), 1);
    assert_eq!(alloc.refusals[0].node_name, "b");
    assert_eq!(alloc.refusals[0].reason, DenyReason::InsufficientCapacity);

    // b's refusal carried its real free capacity, so a's view of b is now
    // right even though b has not announced: b is not asked again.
    assert_eq!(
        node_named(&a.node, "b")
            .await
            .unwrap()
            .resources
            .free
            .cpu_cores,
        0,
        "a learned b's free capacity from the refusal"
    );

    // Now nobody has room: every node is listed with why.
    let err = a.node.request(req(2, 1024)).await.unwrap_err();
    match err {
        NodeError::NoCapacity { refusals, excluded } => {
            assert!(
                excluded
                    .iter()
                    .any(|e| e.node_name == "b" && e.why.contains("cpu_cores")),
                "{excluded:?}"
            );
            let names: Vec<_> = refusals
                .iter()
                .map(|r| r.node_name.as_str())
                .chain(excluded.iter().map(|e| e.node_name.as_str()))
                .collect();
            for n in ["a", "b", "c"] {
                assert!(names.contains(&n), "{n} missing from {names:?}");
            }
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_while_the_holder_lives_and_reclaimed_when_it_dies() {
    let short = |c: &mut NodeConfig| c.limits.min_lease_ms = 500;
    let owner = spawn("owner", cap(4, 8), None, short).await;
    let holder = spawn("holder", cap(0, 0), Some(owner.addr().await), short).await;
    eventually("holder sees owner", || async {
        node_named(&holder.node, "owner").await
    })
    .await;
    let alloc = holder
        .node
        .request(AllocationRequest {
            timeout_secs: Some(1),
            ..req(2, 1024)
        })
        .await
        .unwrap();
    // Three lease terms later the lease is still there: it was renewed.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let granted = owner.node.allocations().await.unwrap().granted;
    assert_eq!(granted.len(), 1, "renewals keep the lease");
    assert!(granted[0].expires_at > alloc.expires_at);

    // The holder crashes: the owner takes the lease back after it expires
    // and announces the freed capacity.
    holder.crash().await;
    eventually("owner reclaims the lease", || async {
        owner
            .node
            .allocations()
            .await
            .ok()?
            .granted
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(
        owner
            .node
            .local_node()
            .await
            .unwrap()
            .resources
            .free
            .cpu_cores,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_restart_keeps_its_leases_and_renewals_continue() {
    let short = |c: &mut NodeConfig| c.limits.min_lease_ms = 500;
    let holder = spawn("holder", cap(0, 0), None, short).await;
    let holder_addr = holder.addr().await;
    let owner = spawn("owner", cap(4, 8), Some(holder_addr.clone()), short).await;
    let owner_id = owner.node.id().clone();
    eventually("holder sees owner", || async {
        node_named(&holder.node, "owner").await
    })
    .await;
    let alloc = holder
        .node
        .request(AllocationRequest {
            timeout_secs: Some(2),
            ..req(3, 2048)
        })
        .await
        .unwrap();

    let (cfg, dir) = owner.crash().await;
    let owner = spawn_with(cfg, dir, Some(holder_addr)).await;
    assert_eq!(owner.node.id(), &owner_id, "same identity after restart");
    let granted = owner.node.allocations().await.unwrap().granted;
    assert_eq!(granted.len(), 1, "the lease survived the crash");
    assert_eq!(granted[0].allocation_id, alloc.allocation_id);
    assert_eq!(
        owner
            .node
            .local_node()
            .await
            .unwrap()
            .resources
            .free
            .cpu_cores,
        1
    );

    // Well past the original term, renewals through the restarted owner
    // keep it alive.
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let granted = owner.node.allocations().await.unwrap().granted;
    assert_eq!(granted.len(), 1);
    assert!(granted[0].expires_at > alloc.expires_at);
    assert_eq!(holder.node.allocations().await.unwrap().held.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_lend_remotely_refuses_peers_but_serves_itself() {
    let owner = spawn("private", cap(4, 8), None, |c| {
        c.access.allow_remote = false
    })
    .await;
    let other = spawn("other", cap(0, 0), Some(owner.addr().await), |_| {}).await;
    eventually("other sees private", || async {
        node_named(&other.node, "private").await
    })
    .await;
    let err = other
        .node
        .request(AllocationRequest {
            node_id: Some("private".into()),
            ..req(1, 64)
        })
        .await
        .unwrap_err();
    // Aimed at the owner, the owner's own answer comes back.
    assert!(
        matches!(&err, NodeError::Denied(d) if d.reason == lanswarm::model::DenyReason::Forbidden),
        "{err:?}"
    );
    // Not aimed, the owner's announced policy keeps it off the list.
    let err = other.node.request(req(1, 64)).await.unwrap_err();
    let NodeError::NoCapacity { excluded, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        excluded
            .iter()
            .any(|e| e.node_name == "private" && e.why.contains("access policy")),
        "{err:?}"
    );
    assert!(owner.node.allocations().await.unwrap().granted.is_empty());
    let own = owner.node.request(req(1, 64)).await.unwrap();
    assert_eq!(own.node_name, "private");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_releases_held_leases_and_says_goodbye() {
    let owner = spawn("owner", cap(4, 8), None, |_| {}).await;
    let holder = spawn("holder", cap(0, 0), Some(owner.addr().await), |_| {}).await;
    eventually("holder sees owner", || async {
        node_named(&holder.node, "owner").await
    })
    .await;
    eventually("owner sees holder", || async {
        node_named(&owner.node, "holder").await
    })
    .await;
    holder.node.request(req(2, 1024)).await.unwrap();
    assert_eq!(owner.node.allocations().await.unwrap().granted.len(), 1);
    holder.shutdown.cancel();
    tokio::time::timeout(WAIT, holder.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        owner.node.allocations().await.unwrap().granted.is_empty(),
        "released on the way out"
    );
    eventually("owner marks holder left", || async {
        let h = node_named(&owner.node, "holder").await?;
        (h.status == lanswarm::model::NodeStatus::Left).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_quic_alone() {
    let quic =
        |c: &mut NodeConfig| c.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    let a = spawn("a", cap(0, 0), None, quic).await;
    let a_addr = a.addr().await;
    assert!(a_addr.contains("quic-v1"), "{a_addr}");
    let b = spawn("b", cap(2, 2), Some(a_addr), quic).await;
    eventually("a sees b over QUIC", || async {
        node_named(&a.node, "b").await
    })
    .await;
    let alloc = a.node.request(req(1, 512)).await.unwrap();
    assert_eq!(alloc.node_name, "b");
    assert_eq!(b.node.allocations().await.unwrap().granted.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_leased_like_any_other_dimension() {
    let mut with_db = cap(1, 1);
    with_db.custom.insert("db-connections".into(), 5);
    let a = spawn("a", cap(0, 0), None, |_| {}).await;
    let b = spawn("b", with_db, Some(a.addr().await), |_| {}).await;
    eventually("a sees b", || async { node_named(&a.node, "b").await }).await;
    let custom_req = |n: u64| AllocationRequest {
        required_resources: ResourceRequirements {
            custom: [("db-connections".to_owned(), n)].into_iter().collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    let alloc = a.node.request(custom_req(3)).await.unwrap();
    assert_eq!(alloc.node_name, "b");
    assert_eq!(alloc.allocated_resources.custom["db-connections"], 3);
    eventually("a sees 2 connections left on b", || async {
        let b_info = node_named(&a.node, "b").await?;
        (b_info.resources.free.custom.get("db-connections") == Some(&2)).then_some(())
    })
    .await;
    let err = a.node.request(custom_req(3)).await.unwrap_err();
    assert!(matches!(err, NodeError::NoCapacity { .. }), "{err:?}");
    assert_eq!(b.node.allocations().await.unwrap().granted.len(), 1);
}

fn gpu_box(gpus: &[u64]) -> Capacity {
    Capacity {
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(i, m)| GpuSlot {
                index: i as u32,
                memory_mb: *m,
            })
            .collect(),
        ..cap(8, 32)
    }
}

fn multi(parts: u32, mem_mb: u64, allow_partial: bool) -> lanswarm::handle::MultiAllocationRequest {
    lanswarm::handle::MultiAllocationRequest {
        request_id: None,
        parts,
        each: ResourceRequirements {
            gpu_count: 1,
            gpu_memory_mb: mem_mb,
            ..Default::default()
        },
        affinity: lanswarm::core::multi::Affinity::Any,
        strategy: lanswarm::core::multi::SplitStrategy::BestFit,
        allow_partial,
        priority: Default::default(),
        timeout_secs: None,
        task_type: String::new(),
        constraints: Default::default(),
        pool: None,
        group: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_node_request_is_held_then_confirmed_everywhere_or_nowhere() {
    // Three GPU boxes: 2 + 1 GPUs of 24 GiB, and one 8 GiB GPU.
    let a = spawn("gpu-a", gpu_box(&[24_576, 24_576]), None, |_| {}).await;
    let addr = a.addr().await;
    let b = spawn("gpu-b", gpu_box(&[24_576]), Some(addr.clone()), |_| {}).await;
    let c = spawn("gpu-c", gpu_box(&[8_192]), Some(addr), |_| {}).await;
    for n in [&a, &b, &c] {
        sees_nodes(&n.node, 3).await;
    }
    // "3 GPUs with at least 16 GiB each, anywhere": needs a and b.
    let m = c.node.request_multi(multi(3, 16_384, false)).await.unwrap();
    assert_eq!(
        m.status,
        lanswarm::core::multi::MultiStatus::Confirmed,
        "{m:?}"
    );
    let nodes: Vec<&str> = m.parts.iter().map(|p| p.node_name.as_str()).collect();
    assert_eq!(
        nodes.iter().filter(|n| **n == "gpu-a").count(),
        2,
        "{nodes:?}"
    );
    assert!(nodes.contains(&"gpu-b"), "{nodes:?}");
    // The confirmed parts are held (and renewed) like any allocation.
    let held = c.node.allocations().await.unwrap().held;
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(
        held.iter().all(|h| h.lease_secs >= 30.0),
        "renewed to the full term: {held:?}"
    );

    // A fourth 16 GiB GPU does not exist: nothing is held anywhere.
    let err = c
        .node
        .request_multi(multi(1, 16_384, false))
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::NoCapacity { .. }), "{err:?}");
    assert_eq!(a.node.allocations().await.unwrap().granted.len(), 2);
    assert_eq!(b.node.allocations().await.unwrap().granted.len(), 1);

    // Free them; then two of three can be had, and with allow_partial the
    // two are kept.
    for h in &held {
        c.node.release(&h.allocation_id).await.unwrap();
    }
    eventually("the owners see the releases", || async {
        (a.node.allocations().await.ok()?.granted.is_empty()
            && b.node.allocations().await.ok()?.granted.is_empty())
        .then_some(())
    })
    .await;
    // Fill gpu-a (its own view of itself catches up within one
    // announcement).
    eventually("gpu-a takes both its GPUs", || async {
        a.node
            .request(AllocationRequest {
                node_id: Some("gpu-a".into()),
                required_resources: ResourceRequirements {
                    gpu_count: 2,
                    ..Default::default()
                },
                ..Default::default()
            })
            .await
            .ok()
    })
    .await;
    eventually("c sees gpu-a full", || async {
        let n = node_named(&c.node, "gpu-a").await?;
        n.resources
            .free
            .gpus
            .iter()
            .all(|g| g.memory_mb == 0)
            .then_some(())
    })
    .await;
    let m = c.node.request_multi(multi(2, 16_384, true)).await.unwrap();
    assert_eq!(
        m.status,
        lanswarm::core::multi::MultiStatus::Partial,
        "{m:?}"
    );
    assert!(m.partial_plan);
    assert_eq!(c.node.allocations().await.unwrap().held.len(), 1);
}

/// Swarm-wide quotas are enforced by each owner from gossiped usage, so
/// requests that reach several owners at the same moment can overshoot the
/// cap, by at most what the other owners grant within one gossip delay
/// (`core::quota::overshoot_bound`). This measures it: a burst of one
/// request per owner at once, then the same once gossip has settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_wide_quota_overshoot_stays_within_its_bound() {
    use lanswarm::handle::QuotaChange;
    const OWNERS: usize = 5;
    const CAP: u32 = 4;
    const EACH: u32 = 2;
    let requester = spawn("requester", cap(0, 0), None, |_| {}).await;
    let addr = requester.addr().await;
    let mut owners = Vec::new();
    for i in 0..OWNERS {
        owners.push(spawn(&format!("owner{i}"), cap(8, 16), Some(addr.clone()), |_| {}).await);
    }
    sees_nodes(&requester.node, OWNERS + 1).await;
    for o in &owners {
        o.node
            .set_quota(QuotaChange {
                subject: format!("node:{}", requester.node.id()),
                swarm: true,
                limits: lanswarm::core::quota::Limits {
                    cpu_cores: Some(CAP),
                    ..Default::default()
                },
                burst: None,
                parent: None,
            })
            .await
            .unwrap();
    }
    let ask = |i: usize| {
        let n = requester.node.clone();
        async move {
            n.request(AllocationRequest {
                node_id: Some(format!("owner{i}")),
                ..req(EACH, 64)
            })
            .await
        }
    };
    // The burst: every owner asked at once, none has heard of the others'
    // grants yet.
    let results = futures::future::join_all((0..OWNERS).map(ask)).await;
    let granted = results.iter().filter(|r| r.is_ok()).count() as u32 * EACH;
    let bound = lanswarm::core::quota::overshoot_bound(
        OWNERS as u32,
        &lanswarm::model::Usage {
            cpu_cores: EACH,
            ..Default::default()
        },
    );
    let overshoot = granted.saturating_sub(CAP);
    println!(
        "swarm quota burst: cap {CAP} cores, {OWNERS} owners asked at once for {EACH} each: \
         {granted} granted, overshoot {overshoot} (bound {})",
        bound.cpu_cores
    );
    assert!(granted >= EACH, "at least one owner grants");
    assert!(
        overshoot <= bound.cpu_cores,
        "overshoot {overshoot} over the bound"
    );
    // Release everything, let gossip settle, then ask again one owner at a
    // time: no overshoot at all.
    for r in results.into_iter().flatten() {
        requester.node.release(&r.allocation_id).await.unwrap();
    }
    for o in &owners {
        eventually("the owner's usage is back to zero", || async {
            o.node
                .allocations()
                .await
                .ok()?
                .granted
                .is_empty()
                .then_some(())
        })
        .await;
    }
    let mut total = 0;
    for (i, owner) in owners.iter().enumerate() {
        // Each owner must have heard of the grants before it.
        eventually("the owner sees the requester's usage elsewhere", || async {
            let q = owner.node.quotas().await.ok()?;
            (q.iter().find(|e| e.scope == "swarm")?.usage.cpu_cores == total).then_some(())
        })
        .await;
        if ask(i).await.is_ok() {
            total += EACH;
        }
    }
    println!("swarm quota, paced: {total} cores granted against a cap of {CAP}");
    assert_eq!(total, CAP, "paced requests stop exactly at the cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_uses_only_the_gpus_a_constraint_allows() {
    use lanswarm::model::GpuInfo;
    let gpu = |index: u32, name: &str, mb: u64| GpuInfo {
        index,
        name: name.into(),
        memory_total_mb: mb,
        memory_free_mb: mb,
        utilization_pct: 0,
        synthetic: true,
        compute_capability: None,
    };
    let owner = spawn("mixed", gpu_box(&[16_384, 40_960]), None, |c| {
        c.gpus = vec![
            gpu(0, "Synthetic T4", 16_384),
            gpu(1, "Synthetic A100", 40_960),
        ];
    })
    .await;
    let asker = spawn("asker", cap(1, 1), Some(owner.addr().await), |_| {}).await;
    sees_nodes(&asker.node, 2).await;
    let want = |name: &str| AllocationRequest {
        required_resources: ResourceRequirements {
            gpu_count: 1,
            gpu_memory_mb: 8_192,
            ..Default::default()
        },
        constraints: lanswarm::core::constraints::Constraints {
            gpu_name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    // Best fit alone would take the T4 (the least free memory that fits).
    let a = asker.node.request(want("A100")).await.unwrap();
    assert_eq!(a.node_name, "mixed");
    assert_eq!(a.allocated_resources.gpus[0].index, 1, "{a:?}");
    let t4 = asker.node.request(want("T4")).await.unwrap();
    assert_eq!(t4.allocated_resources.gpus[0].index, 0, "{t4:?}");
    // No node has one: refused at once, naming the constraint.
    let err = asker.node.request(want("H100")).await.unwrap_err();
    assert!(
        matches!(&err, NodeError::Denied(d) if d.reason == DenyReason::Unsatisfiable
            && d.message.contains("H100")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_rate_gets_busy_with_a_retry_time() {
    use lanswarm::handle::SchedPolicyChange;
    let owner = spawn("owner", cap(8, 16), None, |_| {}).await;
    let peer = spawn("peer", cap(0, 0), Some(owner.addr().await), |_| {}).await;
    sees_nodes(&peer.node, 2).await;
    owner
        .node
        .set_sched_policy(SchedPolicyChange {
            rate_per_sec: Some(0.5),
            rate_burst: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let ask = || {
        peer.node.request(AllocationRequest {
            node_id: Some("owner".into()),
            ..req(1, 64)
        })
    };
    ask().await.unwrap();
    ask().await.unwrap();
    let err = ask().await.unwrap_err();
    match &err {
        NodeError::Denied(d) => {
            assert_eq!(d.reason, DenyReason::Busy, "{err:?}");
            let wait = d.retry_after_ms.expect("busy says when to retry");
            assert!(wait > 0 && wait <= 2_000, "{err:?}");
        }
        _ => panic!("{err:?}"),
    }
    assert_eq!(owner.node.allocations().await.unwrap().granted.len(), 2);
    // The owner's own requests are never throttled.
    owner.node.request(req(1, 64)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elastic_sharing_lends_less_while_the_owner_is_busy_and_never_breaks_leases() {
    use lanswarm::core::elastic::ElasticPolicy;
    use lanswarm::handle::Telemetry;
    let owner = spawn("owner", cap(6, 8), None, |c| {
        c.machine_cpu_cores = 8;
        c.machine_memory_mb = 16 * 1024;
        c.elastic = ElasticPolicy {
            enabled: true,
            headroom_cores: 1.0,
            headroom_memory_mb: 1024,
            shrink_after_ms: 0,
            grow_after_ms: 0,
            step_fraction: 1.0,
            break_leases: false,
            ..ElasticPolicy::default()
        };
    })
    .await;
    let lease = owner.node.request(req(2, 64)).await.unwrap();
    let load = |busy_pct: f32| Telemetry {
        cpu_usage_pct: busy_pct,
        gpus: vec![],
        memory_available_mb: 12 * 1024,
    };
    let lendable = || async {
        owner
            .node
            .local_node()
            .await
            .unwrap()
            .resources
            .lendable
            .cpu_cores
    };
    // The owner uses 7 of 8 cores: nothing is left to lend but what the
    // lease already holds (2 cores), which shrinking never takes.
    eventually(
        "the lendable cores shrink to what the lease holds",
        || async {
            owner.node.update_telemetry(load(87.5));
            (lendable().await == 2).then_some(())
        },
    )
    .await;
    assert!(owner
        .node
        .allocations()
        .await
        .unwrap()
        .granted
        .iter()
        .any(|a| a.allocation_id == lease.allocation_id));
    // Idle again: back up to the configured 6.
    eventually("the lendable cores grow back to the cap", || async {
        owner.node.update_telemetry(load(0.0));
        (lendable().await == 6).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_ask_every_node_at_once() {
    let a = spawn("a", cap(4, 8), None, |_| {}).await;
    let boot = a.addr().await;
    let b = spawn("b", cap(2, 4), Some(boot.clone()), |_| {}).await;
    let c = spawn("c", cap(1, 2), Some(boot), |_| {}).await;
    for n in [&a, &b, &c] {
        eventually("three nodes known", || async {
            (n.node.nodes().await.ok()?.len() == 3).then_some(())
        })
        .await;
    }
    let lease = b
        .node
        .request(AllocationRequest {
            required_resources: ResourceRequirements {
                cpu_cores: 1,
                ..Default::default()
            },
            node_id: Some("c".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let checks = a.node.perform_health_checks().await.unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], "a", "this node first");
    for chk in &checks {
        assert_eq!(chk.status, lanswarm::model::NodeStatus::Online, "{chk:?}");
        assert!(chk.error.is_none());
        let rt = chk.response_time_ms.unwrap();
        assert!(rt.is_finite() && rt >= 0.0);
        assert!(chk.resources.is_some());
        assert_eq!(chk.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    }
    let on_c = checks.iter().find(|x| x.name == "c").unwrap();
    assert_eq!(on_c.active_allocations, 1);
    assert_eq!(on_c.resources.as_ref().unwrap().free.cpu_cores, 0);
    let _ = lease;
    // A node that crashed answers nothing: reported, with why, in time.
    let (_cfg, _dir) = c.crash().await;
    let t0 = tokio::time::Instant::now();
    let checks = a.node.perform_health_checks().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let gone = checks
        .iter()
        .find(|x| x.name == "c")
        .expect("c is still known");
    assert!(
        matches!(
            gone.status,
            lanswarm::model::NodeStatus::Offline | lanswarm::model::NodeStatus::Suspect
        ),
        "{gone:?}"
    );
    assert!(gone.error.is_some() && gone.resources.is_none(), "{gone:?}");
    assert_eq!(checks.iter().filter(|x| x.error.is_none()).count(), 2);
}

/// Elastic sharing with `policy = "forecast"` (issue 9): the learned
/// profile is stored, so a restarted owner still lends less ahead of the
/// use it learned, while its owner is idle right now. Without the stored
/// profile, an idle owner would lend its whole cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forecast_profile_survives_a_restart() {
    use lanswarm::core::elastic::{ElasticMode, ElasticPolicy};
    use lanswarm::core::forecast::ForecastPolicy;
    use lanswarm::handle::Telemetry;
    // A 4 s "day" of four 1 s buckets, looking a whole day ahead.
    let policy = ElasticPolicy {
        enabled: true,
        shrink_after_ms: 0,
        grow_after_ms: 0,
        step_fraction: 1.0,
        mode: ElasticMode::Forecast,
        forecast: ForecastPolicy {
            period_ms: 4_000,
            buckets: 4,
            horizon_ms: 4_000,
            trend_horizon_ms: 0,
            ..ForecastPolicy::default()
        },
        ..ElasticPolicy::default()
    };
    let owner = spawn("owner", cap(6, 8), None, |c| {
        c.machine_cpu_cores = 8;
        c.machine_memory_mb = 16 * 1024;
        c.elastic = policy.clone();
    })
    .await;
    let load = |busy_pct: f32| Telemetry {
        cpu_usage_pct: busy_pct,
        gpus: vec![],
        memory_available_mb: 12 * 1024,
    };
    let lendable = |n: Node| async move {
        n.local_node()
            .await
            .ok()
            .map(|i| i.resources.lendable.cpu_cores)
    };
    // 7 of 8 cores busy for more than a period: every bucket learns it.
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_millis(5_500) {
        owner.node.update_telemetry(load(87.5));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lendable(owner.node.clone()).await, Some(0));
    // A clean stop flushes the store; start again on it.
    let TestNode {
        task,
        shutdown,
        cfg,
        _dir,
        ..
    } = owner;
    shutdown.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;
    let owner = spawn_with(cfg, _dir, None).await;
    assert_eq!(
        lendable(owner.node.clone()).await,
        Some(6),
        "starts at the cap"
    );
    // Idle now, but the restored profile forecasts 7 busy cores.
    eventually(
        "the restarted owner lends less ahead of its learned use",
        || async {
            owner.node.update_telemetry(load(0.0));
            (lendable(owner.node.clone()).await? == 0).then_some(())
        },
    )
    .await;
}
