//! The decentralized run: every node has a real owner core
//! ([`OwnerCore`]) and a real requester-side [`Placer`], and they talk only
//! through modelled messages.
//!
//! A job arrives at its requester, which builds [`Candidate`]s from what it
//! has heard of the owners (the gossip [`Board`], plus the free capacity
//! the owners it asked sent back with their answers), ranks them with
//! [`Placer::rank`] for the run's strategy and asks them one at a time, at
//! most `max_tries`, each ask costing a round trip. If all refuse and the
//! job may wait, it asks again, in the order the strategy ranks the owners
//! that could ever hold it, with its remaining wait, and waits in the first
//! queue that takes it; that owner's tick grants it later and tells the
//! requester (one way). A core without a queue makes the requester retry
//! after a back-off instead.
//!
//! Crashes: a crashed owner answers nothing (asks time out), loses its
//! queue (the requesters waiting there notice after `failure_detect` and
//! place their jobs again) and keeps its leases (they are on disk; they
//! come back at restart, minus those that ran out). A crashed requester
//! loses the jobs it was placing or running: they count as lost, and the
//! leases it held run out at their expiry since nobody releases them.

use std::time::Instant;

use crate::core::ledger::AllocateInput;
use crate::core::placement::{Candidate, Placer, Strategy, StrategyConfig};
use crate::model::{Capacity, LeaseId, Location, Priority};

use super::events::{hash, EventQueue};
use super::gossip::{Board, Snapshot};
use super::metrics::{lease_usage, used_of, Checker, Metrics};
use super::owner::{Answer, Ask, OwnerCore, Woken};
use super::scenario::Scenario;
use super::workload::{node_id, node_index, Drawn, Job};
use super::RunResult;

/// Answers an owner sent back that a requester remembers, newest win.
const OBSERVED: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotYet,
    Placing,
    Queued(u32),
    Running(u32),
    Done,
    Unserved,
    Lost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Ask for a grant now (no waiting).
    Now,
    /// Ask to wait in the owner's queue.
    Queue,
}

struct JobRt {
    state: State,
    requester: u32,
    gen: u32,
    phase: Phase,
    ranked: Vec<u32>,
    next: usize,
    deadline_ms: u64,
    retries: u32,
    lease: Option<(u32, LeaseId)>,
    waited: bool,
    /// Owners that did not answer in this placement round.
    unreachable: Vec<u32>,
}

#[derive(Clone, Debug)]
enum ReplyKind {
    Granted,
    Queued,
    Denied,
    Unreachable,
}

#[derive(Clone, Debug)]
enum Ev {
    Arrive(u32),
    Ask {
        job: u32,
        gen: u32,
        owner: u32,
    },
    Reply {
        job: u32,
        gen: u32,
        owner: u32,
        kind: ReplyKind,
        seen: Option<Box<Snapshot>>,
    },
    Retry {
        job: u32,
        gen: u32,
    },
    QueueGranted {
        job: u32,
        gen: u32,
        owner: u32,
        lease: LeaseId,
    },
    QueueTimedOut {
        job: u32,
        gen: u32,
        owner: u32,
    },
    Preempted {
        job: u32,
        gen: u32,
    },
    OwnerLost {
        job: u32,
        gen: u32,
        owner: u32,
    },
    Complete {
        job: u32,
        gen: u32,
    },
    Release {
        owner: u32,
        holder: u32,
        lease: LeaseId,
    },
    Tick {
        owner: u32,
        epoch: u32,
    },
    Announce {
        owner: u32,
        epoch: u32,
    },
    Heartbeat {
        owner: u32,
        epoch: u32,
    },
    Crash {
        node: u32,
        down_ms: u64,
    },
    Restart {
        node: u32,
    },
}

struct SimNode<O> {
    core: O,
    alive: bool,
    epoch: u32,
    placer: Placer,
    /// Free capacity owners sent back with their answers.
    observed: Vec<(u32, Snapshot)>,
    observed_next: usize,
    ann_last_ms: u64,
    ann_pending: bool,
    tick_at: u64,
    used: [f64; 3],
    /// Jobs waiting in this owner's queue, with their queue position and
    /// ticket (the simulator's own record, to check invariant 4 against).
    waiting: Vec<(u32, u64, LeaseId)>,
}

struct Swarm<'a, O: OwnerCore> {
    sc: &'a Scenario,
    d: &'a Drawn,
    cfg: StrategyConfig,
    now: u64,
    stop_ms: u64,
    q: EventQueue<Ev>,
    nodes: Vec<SimNode<O>>,
    jobs: Vec<JobRt>,
    templates: Vec<Candidate>,
    origins: Vec<Location>,
    board: Board,
    m: Metrics,
    ck: Checker,
    queue_pos: u64,
}

/// Run the decentralized swarm with `strategy` on the drawn workload.
pub fn run<O: OwnerCore>(sc: &Scenario, d: &Drawn, strategy: Strategy) -> RunResult {
    let started = Instant::now();
    let n = d.nodes.len();
    let zone = |z: u32| Location {
        zone: Some(format!("z{z}")),
        latitude: None,
        longitude: None,
    };
    let templates: Vec<Candidate> = d
        .nodes
        .iter()
        .map(|s| Candidate {
            node_id: s.id.clone(),
            name: s.id.0.clone(),
            is_local: false,
            capacity: s.capacity.clone(),
            free: s.capacity.clone(),
            location: zone(s.zone),
            rtt_ms: None,
            weight: s.weight,
            cpu_usage_pct: 0.0,
            active_leases: 0,
        })
        .collect();
    let origins = d.nodes.iter().map(|s| zone(s.zone)).collect();
    let nodes = d
        .nodes
        .iter()
        .map(|s| SimNode {
            core: O::new(s.id.clone(), s.capacity.clone(), &sc.policy),
            alive: true,
            epoch: 0,
            placer: Placer::new(),
            observed: Vec::new(),
            observed_next: 0,
            ann_last_ms: 0,
            ann_pending: false,
            tick_at: u64::MAX,
            used: [0.0; 3],
            waiting: Vec::new(),
        })
        .collect();
    let jobs = d
        .jobs
        .iter()
        .map(|j| JobRt {
            state: State::NotYet,
            requester: j.origin,
            gen: 0,
            phase: Phase::Now,
            ranked: Vec::new(),
            next: 0,
            deadline_ms: j.arrival_ms + j.wait_ms,
            retries: 0,
            lease: None,
            waited: false,
            unreachable: Vec::new(),
        })
        .collect();
    let max_dur = d.jobs.iter().map(|j| j.duration_ms).max().unwrap_or(0);
    let mut s = Swarm {
        sc,
        d,
        cfg: StrategyConfig {
            strategy,
            weights: Default::default(),
        },
        now: 0,
        stop_ms: sc.duration_ms + sc.workload.wait_ms + max_dur.min(sc.workload.wait_ms) + 60_000,
        q: EventQueue::default(),
        nodes,
        jobs,
        templates,
        origins,
        board: Board::new(n, &sc.network, sc.seed),
        m: Metrics::new(sc.warmup_ms, sc.duration_ms),
        ck: Checker::default(),
        queue_pos: 0,
    };
    for x in 0..n {
        let free = s.nodes[x].core.ledger().free();
        s.board.publish(x, 0, free, 0, 0);
        let first = hash(&[sc.seed, 3, x as u64]) % sc.network.heartbeat_ms + 1;
        s.q.push(
            first,
            Ev::Heartbeat {
                owner: x as u32,
                epoch: 0,
            },
        );
    }
    for j in &d.jobs {
        s.q.push(j.arrival_ms, Ev::Arrive(j.id));
    }
    for c in &d.crashes {
        s.q.push(
            c.at_ms,
            Ev::Crash {
                node: c.node as u32,
                down_ms: c.down_ms,
            },
        );
    }
    while let Some((t, ev)) = s.q.pop() {
        if t > s.stop_ms {
            break;
        }
        s.now = t;
        s.m.events += 1;
        s.handle(ev);
    }
    s.finish();
    let (utilization, useful) = s.m.utilization(&d.capacity);
    RunResult {
        name: strategy.name().to_owned(),
        core: O::NAME.to_owned(),
        metrics: s.m,
        checker: s.ck,
        utilization,
        useful,
        wall_ms: started.elapsed().as_millis() as u64,
    }
}

/// Whether `req` fits in `free` (GPUs by the whole-GPU rule against `cap`),
/// without allocating: the same answer as [`crate::core::fit::fit`] for the
/// dimensions the simulator uses.
pub(crate) fn quick_fit(free: &Capacity, cap: &Capacity, job: &Job) -> bool {
    let req = &job.req;
    if req.cpu_cores > free.cpu_cores
        || req.memory_mb > free.memory_mb
        || req.disk_mb > free.disk_mb
    {
        return false;
    }
    let want = req.gpus_wanted() as usize;
    if want == 0 {
        return true;
    }
    let ok = free
        .gpus
        .iter()
        .filter(|f| {
            if req.gpu_memory_mb == 0 {
                cap.gpus
                    .iter()
                    .find(|t| t.index == f.index)
                    .is_some_and(|t| t.memory_mb > 0 && f.memory_mb >= t.memory_mb)
            } else {
                f.memory_mb >= req.gpu_memory_mb
            }
        })
        .count();
    ok >= want
}

fn job_of(request_id: &str) -> Option<u32> {
    request_id.strip_prefix('j')?.parse().ok()
}

impl<O: OwnerCore> Swarm<'_, O> {
    fn job(&self, j: u32) -> &Job {
        &self.d.jobs[j as usize]
    }

    /// Round trip between two nodes for one exchange: half as long inside a
    /// zone, jittered per exchange by `nonce`.
    fn one_way(&self, a: u32, b: u32, nonce: u64) -> u64 {
        if a == b {
            return 0;
        }
        let net = &self.sc.network;
        let same_zone = self.d.nodes[a as usize].zone == self.d.nodes[b as usize].zone;
        let base = if same_zone {
            net.rtt_ms / 2
        } else {
            net.rtt_ms
        };
        let span = 2 * net.rtt_jitter_ms + 1;
        let rtt = (base + hash(&[self.sc.seed, 4, nonce]) % span).saturating_sub(net.rtt_jitter_ms);
        rtt.div_ceil(2).max(1)
    }

    fn measured_rtt(&self, a: usize, b: usize) -> f64 {
        let net = &self.sc.network;
        if self.d.nodes[a].zone == self.d.nodes[b].zone {
            (net.rtt_ms / 2) as f64
        } else {
            net.rtt_ms as f64
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive(j) => self.arrive(j),
            Ev::Ask { job, gen, owner } => self.ask(job, gen, owner),
            Ev::Reply {
                job,
                gen,
                owner,
                kind,
                seen,
            } => self.reply(job, gen, owner, kind, seen),
            Ev::Retry { job, gen } => {
                if self.jobs[job as usize].gen == gen
                    && self.jobs[job as usize].state == State::Placing
                {
                    self.place(job);
                }
            }
            Ev::QueueGranted {
                job,
                gen,
                owner,
                lease,
            } => self.queue_granted(job, gen, owner, lease),
            Ev::QueueTimedOut { job, gen, owner } => {
                let rt = &self.jobs[job as usize];
                if rt.gen == gen && rt.state == State::Queued(owner) {
                    if self.now < rt.deadline_ms {
                        self.place(job);
                    } else {
                        self.unserved(job, "queue_timeout");
                    }
                }
            }
            Ev::Preempted { job, gen } => {
                let rt = &mut self.jobs[job as usize];
                if rt.gen == gen && matches!(rt.state, State::Running(_) | State::Placing) {
                    rt.lease = None;
                    rt.deadline_ms = self.now + self.d.jobs[job as usize].wait_ms;
                    rt.retries = 0;
                    self.place(job);
                }
            }
            Ev::OwnerLost { job, gen, owner } => {
                let rt = &self.jobs[job as usize];
                if rt.gen == gen && rt.state == State::Queued(owner) {
                    if self.now < rt.deadline_ms {
                        self.place(job);
                    } else {
                        self.unserved(job, "owner_crashed");
                    }
                }
            }
            Ev::Complete { job, gen } => self.complete(job, gen),
            Ev::Release {
                owner,
                holder,
                lease,
            } => self.release(owner, holder, lease),
            Ev::Tick { owner, epoch } => {
                let n = &mut self.nodes[owner as usize];
                if n.alive && n.epoch == epoch && n.tick_at == self.now {
                    n.tick_at = u64::MAX;
                    self.tick(owner);
                }
            }
            Ev::Announce { owner, epoch } => {
                let n = &mut self.nodes[owner as usize];
                if n.epoch == epoch {
                    n.ann_pending = false;
                    if n.alive {
                        self.publish(owner);
                    }
                }
            }
            Ev::Heartbeat { owner, epoch } => {
                let n = &self.nodes[owner as usize];
                if n.alive && n.epoch == epoch {
                    self.publish(owner);
                    let next = self.now + self.sc.network.heartbeat_ms;
                    if next <= self.stop_ms {
                        self.q.push(next, Ev::Heartbeat { owner, epoch });
                    }
                }
            }
            Ev::Crash { node, down_ms } => self.crash(node, down_ms),
            Ev::Restart { node } => self.restart(node),
        }
    }

    // -- requester side ----------------------------------------------------

    fn arrive(&mut self, j: u32) {
        // A job submitted to a node that is down goes to the next live one.
        let n = self.nodes.len() as u32;
        let origin = self.job(j).origin;
        let Some(r) = (0..n)
            .map(|k| (origin + k) % n)
            .find(|r| self.nodes[*r as usize].alive)
        else {
            self.jobs[j as usize].state = State::Placing;
            self.unserved(j, "no_live_node");
            return;
        };
        self.jobs[j as usize].requester = r;
        self.place(j);
    }

    /// Start (or restart) placing a job: rank, then ask the first.
    fn place(&mut self, j: u32) {
        let ranked = self.rank(j);
        let rt = &mut self.jobs[j as usize];
        rt.gen += 1;
        rt.state = State::Placing;
        rt.phase = Phase::Now;
        rt.ranked = ranked;
        rt.next = 0;
        rt.unreachable.clear();
        self.ask_next(j);
    }

    /// Rank candidates for job `j` from its requester's view: the owners
    /// that look able to hold it now, as the node's view lists them.
    fn rank(&mut self, j: u32) -> Vec<u32> {
        let job = &self.d.jobs[j as usize];
        let rt = &self.jobs[j as usize];
        let r = rt.requester as usize;
        let n = self.nodes.len();
        let net = &self.sc.network;
        let mut observed: Vec<&(u32, Snapshot)> = self.nodes[r].observed.iter().collect();
        observed.sort_by_key(|(x, s)| (*x, std::cmp::Reverse(s.at_ms)));
        let limit = self.sc.policy.max_candidates;
        let start = if limit > 0 {
            (hash(&[self.sc.seed, 5, u64::from(j), u64::from(rt.gen)]) % n as u64) as usize
        } else {
            0
        };
        let mut cands = Vec::new();
        for k in 0..n {
            let x = (start + k) % n;
            let (free, leases, local) = if x == r {
                let node = &self.nodes[r];
                if !node.alive {
                    continue;
                }
                let l = node.core.ledger();
                (l.free(), l.len() as u32, true)
            } else {
                let seen = observed
                    .binary_search_by_key(&(x as u32), |(o, _)| *o)
                    .ok()
                    .map(|i| {
                        // The newest observation of x.
                        let mut i = i;
                        while i > 0 && observed[i - 1].0 == x as u32 {
                            i -= 1;
                        }
                        &observed[i].1
                    });
                let board = self.board.view(x, r, self.now);
                let snap = match (board, seen) {
                    (Some(b), Some(s)) if s.at_ms > b.at_ms => s,
                    (Some(b), _) => b,
                    (None, Some(s)) => s,
                    (None, None) => continue,
                };
                if self.now.saturating_sub(snap.at_ms) > net.stale_after_ms {
                    continue;
                }
                (snap.free.clone(), snap.active_leases, false)
            };
            let cap = &self.templates[x].capacity;
            if !quick_fit(&free, cap, job) {
                continue;
            }
            let mut c = self.templates[x].clone();
            c.free = free;
            c.active_leases = leases;
            c.is_local = local;
            c.rtt_ms = (!local).then(|| self.measured_rtt(r, x));
            cands.push(c);
            if limit > 0 && cands.len() >= limit {
                break;
            }
        }
        let seed = hash(&[self.sc.seed, 6, u64::from(j), u64::from(rt.gen)]);
        let origin = &self.origins[r];
        let ranked = self.nodes[r]
            .placer
            .rank(&cands, &self.cfg, &job.req, origin, seed);
        ranked
            .iter()
            .take(self.sc.policy.max_tries)
            .filter_map(node_index)
            .map(|i| i as u32)
            .collect()
    }

    /// The owner to wait at once no one could grant the job at once, as the
    /// node's requester picks it: among the owners that could ever hold it
    /// (by total capacity, online in the view), except those that refused
    /// for another reason than capacity (here: did not answer), the one
    /// with the shortest announced queue, then the most free cores, then
    /// the smallest node id.
    fn queue_target(&self, j: u32) -> Option<u32> {
        let job = &self.d.jobs[j as usize];
        let rt = &self.jobs[j as usize];
        let r = rt.requester as usize;
        // (announced queue, most free cores first, node index)
        type Key = (u32, std::cmp::Reverse<u32>, usize);
        let mut best: Option<(Key, u32)> = None;
        for x in 0..self.nodes.len() {
            if rt.unreachable.contains(&(x as u32)) {
                continue;
            }
            let cap = &self.templates[x].capacity;
            if !quick_fit(cap, cap, job) {
                continue;
            }
            let (queued, free_cpu) = if x == r {
                let n = &self.nodes[r];
                if !n.alive {
                    continue;
                }
                (n.core.queued() as u32, n.core.ledger().free().cpu_cores)
            } else {
                let Some(s) = self.seen(r, x) else { continue };
                (s.queued, s.free.cpu_cores)
            };
            let key = (queued, std::cmp::Reverse(free_cpu), x);
            if best.as_ref().is_none_or(|(b, _)| key < *b) {
                best = Some((key, x as u32));
            }
        }
        best.map(|(_, x)| x)
    }

    /// The newest of what requester `r` has heard of owner `x` (gossip, or
    /// an answer), if it is fresh.
    fn seen(&self, r: usize, x: usize) -> Option<&Snapshot> {
        let board = self.board.view(x, r, self.now);
        let answer = self.nodes[r]
            .observed
            .iter()
            .filter(|(o, _)| *o as usize == x)
            .map(|(_, s)| s)
            .max_by_key(|s| s.at_ms);
        let snap = match (board, answer) {
            (Some(b), Some(a)) if a.at_ms > b.at_ms => a,
            (Some(b), _) => b,
            (None, Some(a)) => a,
            (None, None) => return None,
        };
        (self.now.saturating_sub(snap.at_ms) <= self.sc.network.stale_after_ms).then_some(snap)
    }

    fn ask_next(&mut self, j: u32) {
        loop {
            let rt = &mut self.jobs[j as usize];
            if rt.next < rt.ranked.len() {
                let owner = rt.ranked[rt.next];
                rt.next += 1;
                let (r, gen, k) = (rt.requester, rt.gen, rt.next as u64);
                let delay = self.one_way(r, owner, hash(&[u64::from(j), u64::from(gen), k]));
                self.q
                    .push(self.now + delay, Ev::Ask { job: j, gen, owner });
                return;
            }
            // Last resort: one owner that could hold it in total, asked to
            // queue it (if it may wait) and allowed to preempt.
            let can_preempt =
                self.sc.policy.preemption && self.d.jobs[j as usize].priority > Priority::Low;
            let rt = &mut self.jobs[j as usize];
            if rt.phase == Phase::Now && O::QUEUES && (self.now < rt.deadline_ms || can_preempt) {
                rt.phase = Phase::Queue;
                let target = self.queue_target(j);
                let rt = &mut self.jobs[j as usize];
                rt.ranked = target.into_iter().collect();
                rt.next = 0;
                continue;
            }
            // Everybody refused.
            let backoff = self.sc.policy.retry_ms << rt.retries.min(3);
            if self.now + backoff < rt.deadline_ms {
                rt.retries += 1;
                let gen = rt.gen;
                self.q.push(self.now + backoff, Ev::Retry { job: j, gen });
            } else {
                self.unserved(j, "refused_everywhere");
            }
            return;
        }
    }

    fn unserved(&mut self, j: u32, why: &str) {
        self.jobs[j as usize].state = State::Unserved;
        let job = &self.d.jobs[j as usize];
        self.m.record_unserved(job, why);
        self.m.record_requester_unserved(job.origin, job.arrival_ms);
    }

    fn reply(
        &mut self,
        j: u32,
        gen: u32,
        owner: u32,
        kind: ReplyKind,
        seen: Option<Box<Snapshot>>,
    ) {
        let rt = &self.jobs[j as usize];
        if rt.gen != gen || rt.state != State::Placing {
            return;
        }
        let r = rt.requester as usize;
        if let Some(s) = seen {
            let node = &mut self.nodes[r];
            if node.observed.len() < OBSERVED {
                node.observed.push((owner, *s));
            } else {
                let i = node.observed_next;
                node.observed[i] = (owner, *s);
                node.observed_next = (i + 1) % OBSERVED;
            }
        }
        match kind {
            ReplyKind::Granted => self.begin_running(j, owner),
            ReplyKind::Queued => self.jobs[j as usize].state = State::Queued(owner),
            ReplyKind::Denied => self.ask_next(j),
            ReplyKind::Unreachable => {
                self.jobs[j as usize].unreachable.push(owner);
                self.ask_next(j);
            }
        }
    }

    fn begin_running(&mut self, j: u32, owner: u32) {
        let job = &self.d.jobs[j as usize];
        let rt = &mut self.jobs[j as usize];
        rt.state = State::Running(owner);
        if !rt.waited {
            rt.waited = true;
            self.m.record_first_grant(job, self.now);
        }
        let gen = rt.gen;
        self.q
            .push(self.now + job.duration_ms, Ev::Complete { job: j, gen });
    }

    fn queue_granted(&mut self, j: u32, gen: u32, owner: u32, lease: LeaseId) {
        let rt = &self.jobs[j as usize];
        if rt.gen == gen && rt.state == State::Queued(owner) {
            self.begin_running(j, owner);
            return;
        }
        if rt.state != State::Lost && self.nodes[rt.requester as usize].alive {
            // Not wanted any more: give it back.
            let holder = rt.requester;
            let delay = self.one_way(holder, owner, hash(&[u64::from(j), 7]));
            self.q.push(
                self.now + delay,
                Ev::Release {
                    owner,
                    holder,
                    lease,
                },
            );
        }
    }

    fn complete(&mut self, j: u32, gen: u32) {
        let rt = &mut self.jobs[j as usize];
        if rt.gen != gen || !matches!(rt.state, State::Running(_)) {
            return;
        }
        rt.state = State::Done;
        self.m.completed += 1;
        if let Some((owner, lease)) = rt.lease.take() {
            let holder = rt.requester;
            let delay = self.one_way(holder, owner, hash(&[u64::from(j), 8]));
            self.q.push(
                self.now + delay,
                Ev::Release {
                    owner,
                    holder,
                    lease,
                },
            );
        }
    }

    // -- owner side ----------------------------------------------------------

    fn ask(&mut self, j: u32, gen: u32, owner: u32) {
        let rt = &self.jobs[j as usize];
        if rt.gen != gen || rt.state != State::Placing {
            return;
        }
        self.m.asks += 1;
        let r = rt.requester;
        let phase = rt.phase;
        let back = self.one_way(
            owner,
            r,
            hash(&[u64::from(j), u64::from(gen), 9, rt.next as u64]),
        );
        let o = owner as usize;
        if !self.nodes[o].alive {
            let at = self.now + self.sc.network.ask_timeout_ms.saturating_sub(back);
            self.q.push(
                at,
                Ev::Reply {
                    job: j,
                    gen,
                    owner,
                    kind: ReplyKind::Unreachable,
                    seen: None,
                },
            );
            self.m.record_denial("unreachable");
            return;
        }
        let job = &self.d.jobs[j as usize];
        let tag = if phase == Phase::Queue { 'q' } else { 'n' };
        let input = AllocateInput {
            lease_id: LeaseId(format!("j{j}.{gen}{tag}@{owner}")),
            request_id: format!("j{j}"),
            holder: node_id(r as usize),
            req: job.req.clone(),
            task_type: String::new(),
            priority: job.priority,
            lease_ms: job.duration_ms + self.sc.workload.lease_grace_ms,
        };
        let wait_ms = match phase {
            Phase::Queue => rt.deadline_ms.saturating_sub(self.now),
            Phase::Now => 0,
        };
        // As the node's requester: preemption on the last-resort pass,
        // from the first ask for critical requests, and from the second for
        // high ones.
        let preempt = phase == Phase::Queue
            || job.priority == Priority::Critical
            || (job.priority == Priority::High && rt.next >= 2);
        let answer = self.nodes[o].core.submit(
            Ask {
                input,
                wait_ms,
                preempt,
            },
            self.now,
        );
        let ticket = LeaseId(format!("j{j}.{gen}{tag}@{owner}"));
        let kind = match answer {
            Answer::Granted { lease, preempted } => {
                self.ck.on_grant(j, &lease, self.now);
                self.m.granted += 1;
                for v in &preempted {
                    self.preempted(owner, v, lease.priority);
                }
                self.jobs[j as usize].lease = Some((owner, lease.lease_id.clone()));
                ReplyKind::Granted
            }
            Answer::Queued => {
                self.m.queued += 1;
                self.queue_pos += 1;
                self.nodes[o].waiting.push((j, self.queue_pos, ticket));
                ReplyKind::Queued
            }
            Answer::Denied(d) => {
                self.m.record_denial(d.reason.code());
                ReplyKind::Denied
            }
        };
        self.after_change(owner);
        let l = self.nodes[o].core.ledger();
        let seen = Snapshot {
            at_ms: self.now,
            seq: 0,
            free: l.free(),
            active_leases: l.len() as u32,
            queued: self.nodes[o].core.queued() as u32,
        };
        self.q.push(
            self.now + back,
            Ev::Reply {
                job: j,
                gen,
                owner,
                kind,
                seen: Some(Box::new(seen)),
            },
        );
    }

    /// Lease `v` at `owner` was taken back for a request of priority `by`.
    fn preempted(&mut self, owner: u32, v: &crate::model::Lease, by: Priority) {
        self.ck.on_preempt(v, by, self.now);
        self.m.preemptions += 1;
        self.m.wasted(self.now, v.created_at_ms, lease_usage(v));
        let Some(vj) = job_of(&v.request_id) else {
            return;
        };
        let rt = &mut self.jobs[vj as usize];
        if rt
            .lease
            .as_ref()
            .is_some_and(|(o, id)| *o == owner && *id == v.lease_id)
        {
            rt.lease = None;
            let (gen, holder) = (rt.gen, rt.requester);
            let delay = self.one_way(owner, holder, hash(&[u64::from(vj), 10]));
            self.q
                .push(self.now + delay, Ev::Preempted { job: vj, gen });
        }
    }

    fn release(&mut self, owner: u32, holder: u32, lease: LeaseId) {
        let o = owner as usize;
        if !self.nodes[o].alive {
            // Lost with the owner down: the lease runs out after restart.
            return;
        }
        if let Some(l) = self.nodes[o]
            .core
            .release(&lease, &node_id(holder as usize), self.now)
        {
            self.ck.on_end(&l.lease_id);
        }
        self.after_change(owner);
        // The owner looks at its queue after every release.
        let n = &mut self.nodes[o];
        if n.tick_at > self.now {
            n.tick_at = self.now;
            let epoch = n.epoch;
            self.q.push(self.now, Ev::Tick { owner, epoch });
        }
    }

    fn tick(&mut self, owner: u32) {
        let o = owner as usize;
        let woken: Woken = self.nodes[o].core.tick(self.now);
        for l in &woken.expired {
            self.ck.on_end(&l.lease_id);
        }
        let mut granted: Vec<u32> = Vec::new();
        for l in &woken.granted {
            let Some(j) = job_of(&l.request_id) else {
                continue;
            };
            self.ck.on_grant(j, l, self.now);
            self.m.granted += 1;
            take_waiting(&mut self.nodes[o].waiting, j);
            granted.push(j);
            let rt = &mut self.jobs[j as usize];
            if rt.state == State::Queued(owner) {
                rt.lease = Some((owner, l.lease_id.clone()));
            }
            let (gen, holder) = (rt.gen, rt.requester);
            let delay = self.one_way(owner, holder, hash(&[u64::from(j), 11]));
            self.q.push(
                self.now + delay,
                Ev::QueueGranted {
                    job: j,
                    gen,
                    owner,
                    lease: l.lease_id.clone(),
                },
            );
        }
        let by = woken
            .granted
            .iter()
            .map(|l| l.priority)
            .max()
            .unwrap_or(Priority::Low);
        for v in &woken.preempted {
            self.preempted(owner, v, by);
        }
        for rid in &woken.timed_out {
            let Some(j) = job_of(rid) else { continue };
            take_waiting(&mut self.nodes[o].waiting, j);
            let rt = &self.jobs[j as usize];
            let gen = rt.gen;
            let delay = self.one_way(owner, rt.requester, hash(&[u64::from(j), 12]));
            self.q
                .push(self.now + delay, Ev::QueueTimedOut { job: j, gen, owner });
        }
        let _ = granted;
        self.check_head_of_line(owner);
        self.after_change(owner);
    }

    /// After anything that may have changed an owner: check it, account
    /// for its use, announce it, and schedule its next tick.
    fn after_change(&mut self, owner: u32) {
        let o = owner as usize;
        let used = used_of(&self.nodes[o].core.ledger().used());
        self.ck.check_owner(self.nodes[o].core.ledger(), self.now);
        let n = &mut self.nodes[o];
        let delta = [0, 1, 2].map(|k| used[k] - n.used[k]);
        n.used = used;
        if delta != [0.0; 3] {
            self.m.used_delta(self.now, delta);
        }
        let n = &self.nodes[o];
        if !n.alive {
            return;
        }
        let changed = {
            let l = n.core.ledger();
            match self.board_latest(o) {
                Some((free, queued)) => free != l.free() || queued != n.core.queued() as u32,
                None => true,
            }
        };
        let n = &mut self.nodes[o];
        if changed && !n.ann_pending {
            let at = n.ann_last_ms + self.sc.network.debounce_ms;
            if self.now >= at {
                self.publish(owner);
            } else {
                n.ann_pending = true;
                let epoch = n.epoch;
                self.q.push(at, Ev::Announce { owner, epoch });
            }
        }
        let n = &mut self.nodes[o];
        if let Some(t) = n.core.next_wakeup() {
            let t = t.max(self.now);
            if t < n.tick_at {
                n.tick_at = t;
                let epoch = n.epoch;
                self.q.push(t, Ev::Tick { owner, epoch });
            }
        }
    }

    fn board_latest(&self, o: usize) -> Option<(Capacity, u32)> {
        self.board.latest(o).map(|s| (s.free.clone(), s.queued))
    }

    fn publish(&mut self, owner: u32) {
        let o = owner as usize;
        let n = &mut self.nodes[o];
        n.ann_last_ms = self.now;
        let l = n.core.ledger();
        let (free, leases, queued) = (l.free(), l.len() as u32, n.core.queued() as u32);
        self.board.publish(o, self.now, free, leases, queued);
    }

    // -- faults ----------------------------------------------------------------

    fn crash(&mut self, node: u32, down_ms: u64) {
        let x = node as usize;
        if !self.nodes[x].alive {
            return;
        }
        let detect = self.sc.network.failure_detect_ms;
        let n = &mut self.nodes[x];
        n.alive = false;
        n.epoch += 1;
        n.tick_at = u64::MAX;
        n.ann_pending = false;
        // A queue kept only in memory is lost: its requesters notice and
        // place again. A durable one comes back at restart.
        let lost = if O::DURABLE_QUEUE {
            Vec::new()
        } else {
            std::mem::take(&mut n.waiting)
        };
        for (j, _, _) in lost {
            let gen = self.jobs[j as usize].gen;
            self.q.push(
                self.now + detect,
                Ev::OwnerLost {
                    job: j,
                    gen,
                    owner: node,
                },
            );
        }
        // Its own requests die with it.
        for rt in &mut self.jobs {
            if rt.requester == node
                && matches!(
                    rt.state,
                    State::Placing | State::Queued(_) | State::Running(_)
                )
            {
                rt.state = State::Lost;
                self.m.lost += 1;
            }
        }
        self.q.push(self.now + down_ms, Ev::Restart { node });
    }

    fn restart(&mut self, node: u32) {
        let x = node as usize;
        let (core, refused) = self.nodes[x].core.restart(&self.sc.policy, self.now);
        for l in &refused {
            self.ck.on_end(&l.lease_id);
        }
        let n = &mut self.nodes[x];
        n.core = core;
        n.alive = true;
        n.tick_at = u64::MAX;
        let epoch = n.epoch;
        // Requests whose wait ran out while the owner was down are gone
        // from its queue: their requesters hear of it.
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut n.waiting)
            .into_iter()
            .partition(|(_, _, t)| n.core.is_waiting(t));
        n.waiting = kept;
        for (j, _, _) in gone {
            let rt = &self.jobs[j as usize];
            let (gen, holder) = (rt.gen, rt.requester);
            let delay = self.one_way(node, holder, hash(&[u64::from(j), 13]));
            self.q.push(
                self.now + delay,
                Ev::QueueTimedOut {
                    job: j,
                    gen,
                    owner: node,
                },
            );
        }
        self.publish(node);
        self.after_change(node);
        self.q.push(
            self.now + self.sc.network.heartbeat_ms,
            Ev::Heartbeat { owner: node, epoch },
        );
    }

    /// Invariant 4, as the queue guarantees it: after an owner's step, the
    /// first request in grant order (priority, then arrival) still waiting
    /// there does not fit in what is free. Nothing is ahead of it, so no
    /// earmark excuses it; a later request can only have been granted from
    /// capacity it did not need.
    fn check_head_of_line(&mut self, owner: u32) {
        let n = &self.nodes[owner as usize];
        if self.sc.policy.queue_policy != crate::core::fairshare::QueuePolicy::Fifo {
            // Within a priority the order follows the owner's record of
            // use, which the simulator does not see. The first in line is
            // one of the highest-priority waiting requests, so if every one
            // of those fits, the first fits and should have been granted.
            let Some(top) = n
                .waiting
                .iter()
                .map(|(j, _, _)| self.d.jobs[*j as usize].priority)
                .max()
            else {
                return;
            };
            let l = n.core.ledger();
            let (free, cap) = (l.free(), l.capacity());
            self.ck.checks += 1;
            let all_fit = n
                .waiting
                .iter()
                .map(|(j, _, _)| &self.d.jobs[*j as usize])
                .filter(|job| job.priority == top)
                .all(|job| quick_fit(&free, cap, job));
            if all_fit {
                let msg = format!(
                    "{}: every {top} request waiting fits, and none was granted",
                    l.node_id()
                );
                self.ck.record(self.now, msg);
            }
            return;
        }
        let Some((j, pos, _)) = n
            .waiting
            .iter()
            .min_by_key(|(j, pos, _)| (std::cmp::Reverse(self.d.jobs[*j as usize].priority), *pos))
        else {
            return;
        };
        let job = &self.d.jobs[*j as usize];
        let l = n.core.ledger();
        self.ck.checks += 1;
        if quick_fit(&l.free(), l.capacity(), job) {
            let msg = format!(
                "{}: job {j} ({}, queue position {pos}) is first in line, fits, and was not granted",
                l.node_id(),
                job.priority
            );
            self.ck.record(self.now, msg);
        }
    }

    fn finish(&mut self) {
        for j in 0..self.jobs.len() {
            if matches!(self.jobs[j].state, State::Placing | State::Queued(_)) {
                self.unserved(j as u32, "run_ended");
            }
        }
    }
}

fn take_waiting(w: &mut Vec<(u32, u64, LeaseId)>, j: u32) -> Option<u64> {
    let i = w.iter().position(|(x, _, _)| *x == j)?;
    Some(w.remove(i).1)
}
