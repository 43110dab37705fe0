//! The requester's side of tasks and jobs: allocate, run, watch, release.
//!
//! A *task* here is one piece of work this node asked a peer (or itself)
//! to run: [`Work::submit_task`] places a lease for it (or uses one the
//! node already holds), starts the task on the lease's owner, follows its
//! streamed pieces and its result, and gives back a lease it took for the
//! task. A *job* ([`Work::submit_job`]) is N subtasks, each placed and run
//! the same way, spread over the swarm, re-placed when their node is lost,
//! and aggregated when all succeed. Jobs wait in a priority queue
//! ([`JobQueue`]) on this node; [`JobState`] (sans-IO) decides every step.
//!
//! Every record is written to `work.redb` in the data directory when it
//! changes. After a restart, a task or subtask that was running is asked
//! after on its owner: a finished one gets its result, a running one is
//! followed again, and one its owner no longer knows is reported `lost`
//! (a job then places that subtask again). Queued jobs stay queued.

mod runner;
mod store;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::core::tasks::{JobQueue, JobSpec, JobState, JobStatus};
use crate::handle::{AllocationRequest, Node, NodeError};
use crate::model::{ChatMessage, InferenceCall, InferenceRequest, NodeId, TaskResult, TaskSpec};
use crate::net::node::now_ms;

pub use runner::Outcome;

/// Where a job's active subtasks run, by subtask index.
type Claims = Arc<tokio::sync::Mutex<BTreeMap<usize, NodeId>>>;

/// Most task records kept (finished ones are dropped oldest first).
const MAX_TASK_RECORDS: usize = 10_000;
/// Most job records kept.
const MAX_JOB_RECORDS: usize = 1_000;

/// Where a task stands, as the requester sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Getting a lease for it.
    Placing,
    /// Accepted by its owner.
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    LeaseEnded,
    Error,
    /// Its owner went away, or forgot it, before it reported a result.
    Lost,
}

impl TaskStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Placing | TaskStatus::Running)
    }

    fn of(outcome: crate::model::TaskOutcome) -> Self {
        use crate::model::TaskOutcome as O;
        match outcome {
            O::Succeeded => TaskStatus::Succeeded,
            O::Failed => TaskStatus::Failed,
            O::TimedOut => TaskStatus::TimedOut,
            O::Cancelled => TaskStatus::Cancelled,
            O::LeaseEnded => TaskStatus::LeaseEnded,
            O::Error => TaskStatus::Error,
        }
    }
}

/// A task this node submitted, as stored and as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    /// The template, or `infer:MODEL`.
    pub label: String,
    pub spec: TaskSpec,
    pub status: TaskStatus,
    /// Where it runs (once placed).
    pub node_id: Option<NodeId>,
    pub node_name: Option<String>,
    pub allocation_id: Option<String>,
    /// Whether the lease was taken for this task (and is given back after).
    pub own_lease: bool,
    pub submitted_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// The owner's report, once it ended.
    pub result: Option<TaskResult>,
    /// Why it failed to run or was lost.
    pub error: Option<String>,
}

/// A task to run, as the API and the CLI send it: a template with its
/// parameters, or an inference call; and where to run it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSubmission {
    /// A template the owner declared.
    pub template: Option<String>,
    /// Its parameters: strings, numbers or booleans.
    pub params: BTreeMap<String, serde_json::Value>,
    /// For inference: the model.
    pub model: Option<String>,
    /// For inference: a prompt (generate) ...
    pub prompt: Option<String>,
    pub system: Option<String>,
    /// ... or a conversation (chat).
    pub messages: Option<Vec<ChatMessage>>,
    /// Model options (temperature, ...), a JSON object.
    pub options: Option<serde_json::Value>,
    /// Stream the answer as it comes (inference).
    pub stream: bool,
    /// Run on this lease, which this node already holds, instead of
    /// placing a new one.
    pub allocation_id: Option<String>,
    /// How to place the lease for it (resources, priority, node, pool,
    /// group, constraints...). Default: one CPU core anywhere that offers
    /// the template or serves the model.
    pub request: Option<AllocationRequest>,
}

impl TaskSubmission {
    /// The task spec and the allocation request it needs.
    pub fn plan(&self) -> Result<(TaskSpec, AllocationRequest), String> {
        let mut req = self.request.clone().unwrap_or_default();
        let spec = match (&self.template, &self.model) {
            (Some(_), Some(_)) => return Err("give a template or a model, not both".into()),
            (None, None) => return Err("give a template (with params) or a model".into()),
            (Some(t), None) => {
                if self.prompt.is_some() || self.messages.is_some() || self.system.is_some() {
                    return Err("prompt, system and messages are for a model".into());
                }
                let mut params = BTreeMap::new();
                for (k, v) in &self.params {
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(format!("params.{k}: a string, number or boolean, not {v}"))
                        }
                    };
                    params.insert(k.clone(), text);
                }
                req.template = Some(t.clone());
                TaskSpec::Template {
                    template: t.clone(),
                    params,
                }
            }
            (None, Some(m)) => {
                if !self.params.is_empty() {
                    return Err("params are for a template".into());
                }
                let call = match (&self.prompt, &self.messages) {
                    (Some(_), Some(_)) => return Err("give a prompt or messages, not both".into()),
                    (None, None) => return Err("give a prompt or messages".into()),
                    (Some(p), None) => InferenceCall::Generate {
                        prompt: p.clone(),
                        system: self.system.clone(),
                    },
                    (None, Some(msgs)) => {
                        let mut msgs = msgs.clone();
                        if let Some(s) = &self.system {
                            msgs.insert(
                                0,
                                ChatMessage {
                                    role: "system".into(),
                                    content: s.clone(),
                                },
                            );
                        }
                        InferenceCall::Chat { messages: msgs }
                    }
                };
                let options = match &self.options {
                    None | Some(serde_json::Value::Null) => None,
                    Some(o @ serde_json::Value::Object(_)) => Some(o.to_string()),
                    Some(_) => return Err("options must be a JSON object".into()),
                };
                // Only nodes serving this very model can run the call.
                req.required_resources.preferred_models = vec![m.clone()];
                TaskSpec::Inference(InferenceRequest {
                    model: m.clone(),
                    call,
                    stream: self.stream,
                    options,
                })
            }
        };
        if req.required_resources.is_empty() {
            req.required_resources.cpu_cores = 1;
        }
        Ok((spec, req))
    }
}

/// A job as the API shows it: its state, and its place in the queue.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: JobState,
    pub progress: crate::core::tasks::Progress,
    /// 1-based position in this node's job queue, while queued.
    pub queue_position: Option<usize>,
}

/// What a task's followers hear.
#[derive(Clone, Debug)]
pub enum TaskEvent {
    Chunk(String),
    Done(Box<TaskRecord>),
}

/// Settings of the requester's work.
#[derive(Clone, Debug)]
pub struct WorkConfig {
    /// Most jobs running at once; the rest wait in the queue.
    pub max_running_jobs: usize,
}

impl Default for WorkConfig {
    fn default() -> Self {
        WorkConfig {
            max_running_jobs: 4,
        }
    }
}

struct State {
    tasks: BTreeMap<String, TaskRecord>,
    jobs: BTreeMap<String, JobState>,
    queue: JobQueue,
    running_jobs: HashSet<String>,
    next_seq: u64,
    followers: BTreeMap<String, broadcast::Sender<TaskEvent>>,
}

struct Inner {
    node: Node,
    db: store::WorkStore,
    state: Mutex<State>,
    /// Wakes the job scheduler.
    wake: Notify,
    /// Wakes running jobs' drivers when they are cancelled.
    shutdown: CancellationToken,
    cfg: WorkConfig,
}

/// The requester's tasks and jobs. Cheap to clone.
#[derive(Clone)]
pub struct Work {
    inner: Arc<Inner>,
}

/// An error of a task or job call.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("storage: {0}")]
    Storage(String),
}

impl Work {
    /// Open `path` (created if missing), resume what was in flight, and
    /// start the job scheduler.
    pub fn start(
        node: Node,
        path: &Path,
        cfg: WorkConfig,
        shutdown: CancellationToken,
    ) -> Result<Work, WorkError> {
        let db = store::WorkStore::open(path).map_err(WorkError::Storage)?;
        let (tasks, jobs) = db.load().map_err(WorkError::Storage)?;
        let mut queue = JobQueue::new();
        let mut next_seq = 0;
        let mut queued: Vec<&JobState> = jobs
            .values()
            .filter(|j| j.status == JobStatus::Queued)
            .collect();
        queued.sort_by_key(|j| j.submitted_at_ms);
        for j in queued {
            queue.push(j.id.clone(), j.priority, next_seq);
            next_seq += 1;
        }
        let work = Work {
            inner: Arc::new(Inner {
                node,
                db,
                state: Mutex::new(State {
                    tasks,
                    jobs,
                    queue,
                    running_jobs: HashSet::new(),
                    next_seq,
                    followers: BTreeMap::new(),
                }),
                wake: Notify::new(),
                shutdown,
                cfg,
            }),
        };
        work.resume();
        let w = work.clone();
        tokio::spawn(async move { w.schedule_jobs().await });
        Ok(work)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn node(&self) -> &Node {
        &self.inner.node
    }

    /// Write a task record (and keep it in memory).
    fn save_task(&self, rec: &TaskRecord) {
        {
            let mut st = self.lock();
            st.tasks.insert(rec.task_id.clone(), rec.clone());
            if st.tasks.len() > MAX_TASK_RECORDS {
                let oldest = st
                    .tasks
                    .values()
                    .filter(|t| t.status.is_final())
                    .min_by_key(|t| t.submitted_at_ms)
                    .map(|t| t.task_id.clone());
                if let Some(id) = oldest {
                    st.tasks.remove(&id);
                    let _ = self.inner.db.delete_task(&id);
                }
            }
        }
        if let Err(e) = self.inner.db.put_task(rec) {
            warn!(task = %rec.task_id, error = %e, "cannot store task record");
        }
    }

    fn save_job(&self, job: &JobState) {
        {
            let mut st = self.lock();
            st.jobs.insert(job.id.clone(), job.clone());
            if st.jobs.len() > MAX_JOB_RECORDS {
                let oldest = st
                    .jobs
                    .values()
                    .filter(|j| j.is_done())
                    .min_by_key(|j| j.submitted_at_ms)
                    .map(|j| j.id.clone());
                if let Some(id) = oldest {
                    st.jobs.remove(&id);
                    let _ = self.inner.db.delete_job(&id);
                }
            }
        }
        if let Err(e) = self.inner.db.put_job(job) {
            warn!(job = %job.id, error = %e, "cannot store job record");
        }
    }

    /// Every task record, newest first.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        let mut v: Vec<TaskRecord> = self.lock().tasks.values().cloned().collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.submitted_at_ms));
        v
    }

    pub fn task(&self, id: &str) -> Result<TaskRecord, WorkError> {
        self.lock()
            .tasks
            .get(id)
            .cloned()
            .ok_or_else(|| WorkError::NotFound(format!("no task {id} on this node")))
    }

    /// Follow a task: its pieces, then its final record. `None` once it
    /// ended (read it with [`Work::task`]).
    pub fn follow(&self, id: &str) -> Option<broadcast::Receiver<TaskEvent>> {
        self.lock().followers.get(id).map(|tx| tx.subscribe())
    }

    /// Place and start a task; returns its record once its owner accepted
    /// it (or the error that kept it from running, with nothing left held),
    /// and a receiver of its pieces and final record.
    pub async fn submit_task(
        &self,
        sub: TaskSubmission,
    ) -> Result<(TaskRecord, broadcast::Receiver<TaskEvent>), WorkError> {
        let (spec, req) = sub.plan().map_err(WorkError::BadRequest)?;
        let task_id = uuid::Uuid::new_v4().to_string();
        let mut rec = TaskRecord {
            task_id: task_id.clone(),
            label: spec.label(),
            spec: spec.clone(),
            status: TaskStatus::Placing,
            node_id: None,
            node_name: None,
            allocation_id: None,
            own_lease: sub.allocation_id.is_none(),
            submitted_at_ms: now_ms(),
            finished_at_ms: None,
            result: None,
            error: None,
        };
        let (tx, events) = broadcast::channel(1024);
        self.lock().followers.insert(task_id.clone(), tx);
        self.save_task(&rec);
        let placed = match &sub.allocation_id {
            Some(id) => runner::held_lease(self.node(), id).await,
            None => runner::place(self.node(), req).await,
        };
        let lease = match placed {
            Ok(l) => l,
            Err(e) => {
                rec.status = TaskStatus::Error;
                rec.error = Some(e.to_string());
                rec.finished_at_ms = Some(now_ms());
                self.finish_task(rec);
                return Err(e.into());
            }
        };
        rec.node_id = Some(lease.node_id.clone());
        rec.node_name = Some(lease.node_name.clone());
        rec.allocation_id = Some(lease.allocation_id.clone());
        self.save_task(&rec);
        let (utx, urx) = tokio::sync::mpsc::unbounded_channel();
        if let Err(e) = self
            .node()
            .start_task(
                lease.node_id.clone(),
                &lease.allocation_id,
                &task_id,
                spec,
                utx,
            )
            .await
        {
            if rec.own_lease {
                let _ = self.node().release(&lease.allocation_id).await;
            }
            rec.status = TaskStatus::Error;
            rec.error = Some(e.to_string());
            rec.finished_at_ms = Some(now_ms());
            self.finish_task(rec);
            return Err(e.into());
        }
        rec.status = TaskStatus::Running;
        self.save_task(&rec);
        info!(task = %task_id, node = %lease.node_name, "task running");
        let w = self.clone();
        let watched = rec.clone();
        tokio::spawn(async move { w.watch(watched, urx).await });
        Ok((rec, events))
    }

    /// Follow a running task to its end.
    async fn watch(
        &self,
        mut rec: TaskRecord,
        updates: tokio::sync::mpsc::UnboundedReceiver<crate::handle::TaskUpdate>,
    ) {
        let (Some(owner), Some(task_id)) = (rec.node_id.clone(), Some(rec.task_id.clone())) else {
            return;
        };
        let chunks = self.lock().followers.get(&task_id).cloned();
        let mut streamed = String::new();
        let outcome = runner::follow(
            self.node(),
            &owner,
            &task_id,
            updates,
            |text| {
                streamed.push_str(&text);
                if let Some(tx) = &chunks {
                    let _ = tx.send(TaskEvent::Chunk(text));
                }
            },
            &self.inner.shutdown,
        )
        .await;
        // Pieces still in flight when the result came: the result has
        // them, so followers get the rest of the answer in one piece.
        if let (Outcome::Finished(r), Some(tx)) = (&outcome, &chunks) {
            if r.stdout.len() > streamed.len() {
                if let Some(rest) = r.stdout.strip_prefix(streamed.as_str()) {
                    let _ = tx.send(TaskEvent::Chunk(rest.to_owned()));
                }
            }
        }
        match outcome {
            Outcome::Finished(result) => {
                rec.status = TaskStatus::of(result.outcome);
                rec.error = result.error.clone();
                rec.finished_at_ms = Some(result.finished_at_ms);
                rec.result = Some(*result);
            }
            Outcome::Lost(why) | Outcome::NoRoom(why) => {
                rec.status = TaskStatus::Lost;
                rec.error = Some(why);
                rec.finished_at_ms = Some(now_ms());
            }
            Outcome::Shutdown => return,
        }
        if rec.own_lease {
            if let Some(a) = &rec.allocation_id {
                let _ = self.node().release(a).await;
            }
        }
        self.finish_task(rec);
    }

    fn finish_task(&self, rec: TaskRecord) {
        self.save_task(&rec);
        let tx = self.lock().followers.remove(&rec.task_id);
        if let Some(tx) = tx {
            let _ = tx.send(TaskEvent::Done(Box::new(rec)));
        }
    }

    /// Cancel a task: the owner stops it; the record ends `cancelled`
    /// when the owner reports back.
    pub async fn cancel_task(&self, id: &str) -> Result<TaskRecord, WorkError> {
        let rec = self.task(id)?;
        if rec.status.is_final() {
            return Ok(rec);
        }
        if let Some(owner) = &rec.node_id {
            self.node()
                .task_call(
                    owner.clone(),
                    crate::net::protocol::TaskRequest::Cancel {
                        task_id: id.to_owned(),
                    },
                )
                .await?;
        }
        Ok(rec)
    }

    /// Queue a job; it starts when the queue reaches it.
    pub fn submit_job(&self, spec: JobSpec) -> Result<JobView, WorkError> {
        spec.validate().map_err(WorkError::BadRequest)?;
        let id = uuid::Uuid::new_v4().to_string();
        let job = JobState::new(id.clone(), spec, now_ms());
        self.save_job(&job);
        {
            let mut st = self.lock();
            let seq = st.next_seq;
            st.next_seq += 1;
            st.queue.push(id.clone(), job.priority, seq);
        }
        info!(job = %id, subtasks = job.subtasks.len(), "job queued");
        self.inner.wake.notify_one();
        self.job(&id)
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Vec<JobView> {
        let st = self.lock();
        let mut v: Vec<JobView> = st.jobs.values().map(|j| view(&st, j)).collect();
        v.sort_by_key(|j| std::cmp::Reverse(j.job.submitted_at_ms));
        v
    }

    pub fn job(&self, id: &str) -> Result<JobView, WorkError> {
        let st = self.lock();
        st.jobs
            .get(id)
            .map(|j| view(&st, j))
            .ok_or_else(|| WorkError::NotFound(format!("no job {id} on this node")))
    }

    /// Cancel a job: queued, it leaves the queue; running, its tasks are
    /// stopped and their leases given back.
    pub async fn cancel_job(&self, id: &str) -> Result<JobView, WorkError> {
        let cancels = {
            let mut st = self.lock();
            let Some(job) = st.jobs.get_mut(id) else {
                return Err(WorkError::NotFound(format!("no job {id} on this node")));
            };
            let cancels = job.cancel(now_ms());
            let job = job.clone();
            st.queue.remove(id);
            drop(st);
            self.save_job(&job);
            cancels
        };
        runner::carry_out(self.node(), cancels).await;
        self.inner.wake.notify_waiters();
        self.job(id)
    }

    /// Start queued jobs while there is room.
    async fn schedule_jobs(self) {
        loop {
            let next = {
                let mut st = self.lock();
                let running = st.running_jobs.len();
                let next = st.queue.pop_ready(running, self.inner.cfg.max_running_jobs);
                if let Some(id) = &next {
                    st.running_jobs.insert(id.clone());
                }
                next
            };
            match next {
                Some(id) => {
                    let w = self.clone();
                    tokio::spawn(async move {
                        w.drive_job(&id).await;
                        w.lock().running_jobs.remove(&id);
                        w.inner.wake.notify_one();
                    });
                }
                None => {
                    tokio::select! {
                        _ = self.inner.shutdown.cancelled() => return,
                        _ = self.inner.wake.notified() => {}
                    }
                }
            }
        }
    }

    /// Resume what was in flight before a restart.
    fn resume(&self) {
        let (tasks, jobs): (Vec<TaskRecord>, Vec<String>) = {
            let st = self.lock();
            (
                st.tasks
                    .values()
                    .filter(|t| !t.status.is_final())
                    .cloned()
                    .collect(),
                st.jobs
                    .values()
                    .filter(|j| j.status == JobStatus::Running)
                    .map(|j| j.id.clone())
                    .collect(),
            )
        };
        for mut rec in tasks {
            if rec.status == TaskStatus::Placing {
                rec.status = TaskStatus::Lost;
                rec.error = Some(
                    "this node restarted while the task was being placed; it never started".into(),
                );
                rec.finished_at_ms = Some(now_ms());
                self.save_task(&rec);
                continue;
            }
            info!(task = %rec.task_id, "resuming a task that ran before the restart");
            let (tx, _) = broadcast::channel(1024);
            self.lock().followers.insert(rec.task_id.clone(), tx);
            let w = self.clone();
            tokio::spawn(async move {
                let (utx, urx) = tokio::sync::mpsc::unbounded_channel();
                if let Some(owner) = rec.node_id.clone() {
                    let _ = w.node().watch_task(owner, &rec.task_id, utx).await;
                }
                w.watch(rec, urx).await;
            });
        }
        for id in jobs {
            info!(job = %id, "resuming a job that ran before the restart");
            self.lock().running_jobs.insert(id.clone());
            let w = self.clone();
            tokio::spawn(async move {
                w.drive_job(&id).await;
                w.lock().running_jobs.remove(&id);
                w.inner.wake.notify_one();
            });
        }
    }

    /// Run a job to its end: place pending subtasks, follow running ones,
    /// feed every outcome to the job's state machine.
    async fn drive_job(&self, id: &str) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String, Outcome)>();
        let mut in_flight: HashSet<usize> = HashSet::new();
        // Where each active subtask runs, claimed while it is placed, so
        // that subtasks placed at the same time spread out.
        let claims: Claims = Arc::new(tokio::sync::Mutex::new(BTreeMap::new()));
        // Subtasks that were running before a restart: follow them again.
        let resumed: Vec<(usize, NodeId, String, Option<String>)> = {
            let mut st = self.lock();
            let Some(job) = st.jobs.get_mut(id) else {
                return;
            };
            if job.status == JobStatus::Queued {
                job.start(now_ms());
            }
            let mut out = Vec::new();
            for s in &mut job.subtasks {
                use crate::core::tasks::SubtaskStatus as S;
                match (s.status, &s.node_id, &s.task_id) {
                    (S::Running, Some(n), Some(t)) => {
                        out.push((s.index, n.clone(), t.clone(), s.allocation_id.clone()))
                    }
                    (S::Placing, ..) => {
                        s.status = S::Pending;
                        s.attempts = s.attempts.saturating_sub(1);
                    }
                    _ => {}
                }
            }
            out
        };
        if let Ok(job) = self.job(id) {
            self.save_job(&job.job);
        }
        for (i, owner, task_id, allocation) in resumed {
            in_flight.insert(i);
            let (w, tx) = (self.clone(), tx.clone());
            tokio::spawn(async move {
                let (utx, urx) = tokio::sync::mpsc::unbounded_channel();
                let _ = w.node().watch_task(owner.clone(), &task_id, utx).await;
                let out =
                    runner::follow(w.node(), &owner, &task_id, urx, |_| {}, &w.inner.shutdown)
                        .await;
                if let (Some(a), false) = (allocation, matches!(out, Outcome::Shutdown)) {
                    let _ = w.node().release(&a).await;
                }
                let _ = tx.send((i, task_id, out));
            });
        }
        loop {
            // Start what may start.
            let starts: Vec<(usize, crate::core::tasks::SubtaskPlan, Vec<String>, bool)> = {
                let mut st = self.lock();
                let Some(job) = st.jobs.get_mut(id) else {
                    return;
                };
                let mut starts = Vec::new();
                for i in job.next_to_place() {
                    if in_flight.contains(&i) || !job.placing(i) {
                        continue;
                    }
                    let plan = job.spec.subtask(i);
                    let lost: Vec<String> =
                        job.subtasks[i].avoid.iter().map(|n| n.0.clone()).collect();
                    starts.push((i, plan, lost, job.spec.spread));
                }
                let snapshot = job.clone();
                drop(st);
                if !starts.is_empty() {
                    self.save_job(&snapshot);
                }
                starts
            };
            for (i, plan, lost, spread) in starts {
                in_flight.insert(i);
                let (w, tx, job_id) = (self.clone(), tx.clone(), id.to_owned());
                let claims = claims.clone();
                tokio::spawn(async move {
                    let task_id = uuid::Uuid::new_v4().to_string();
                    let out = w
                        .run_subtask(&job_id, i, &task_id, plan, lost, spread.then_some(&claims))
                        .await;
                    claims.lock().await.remove(&i);
                    let _ = tx.send((i, task_id, out));
                });
            }
            if self.job(id).map(|j| j.job.is_done()).unwrap_or(true) && in_flight.is_empty() {
                break;
            }
            let (i, task_id, out) = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                got = rx.recv() => match got {
                    Some(got) => got,
                    None => return,
                },
            };
            in_flight.remove(&i);
            let cancels = {
                let mut st = self.lock();
                let Some(job) = st.jobs.get_mut(id) else {
                    return;
                };
                let now = now_ms();
                let cancels = match out {
                    Outcome::Finished(result) if job.find_task(&task_id) == Some(i) => {
                        job.finished(i, *result, now)
                    }
                    Outcome::Finished(_) => Vec::new(),
                    Outcome::Lost(why) => job.lost(i, &why, now),
                    // Others of this job hold the room it needs: wait for
                    // them without using up an attempt.
                    Outcome::NoRoom(_) if job.active() > 1 => {
                        job.deferred(i);
                        Vec::new()
                    }
                    Outcome::NoRoom(why) => job.lost(i, &why, now),
                    Outcome::Shutdown => return,
                };
                let snapshot = job.clone();
                drop(st);
                self.save_job(&snapshot);
                if snapshot.is_done() {
                    info!(job = %id, status = snapshot.status.as_str(), "job ended");
                }
                cancels
            };
            runner::carry_out(self.node(), cancels).await;
        }
    }

    /// Place one subtask and run it to its end. The lease is given back
    /// before this returns.
    async fn run_subtask(
        &self,
        job_id: &str,
        i: usize,
        task_id: &str,
        plan: crate::core::tasks::SubtaskPlan,
        lost: Vec<String>,
        claims: Option<&Claims>,
    ) -> Outcome {
        let mut req = AllocationRequest {
            required_resources: plan.req.clone(),
            priority: plan.priority,
            strategy: plan.strategy,
            node_id: plan.node_id.clone(),
            pool: plan.pool.clone(),
            group: plan.group.clone(),
            constraints: plan.constraints.clone(),
            task_type: format!("job:{job_id}"),
            ..Default::default()
        };
        if let TaskSpec::Template { template, .. } = &plan.spec {
            req.template = Some(template.clone());
        }
        // Prefer nodes this job is not using, then any node it did not
        // lose, then any node at all. Placements of one job take turns, so
        // each sees where the others went.
        let mut claimed = match claims {
            Some(c) => Some(c.lock().await),
            None => None,
        };
        let busy: Vec<String> = claimed
            .as_ref()
            .map(|c| c.values().map(|n| n.0.clone()).collect())
            .unwrap_or_default();
        let mut tries = Vec::new();
        if !busy.is_empty() {
            tries.push([lost.clone(), busy].concat());
        }
        tries.push(lost.clone());
        if !lost.is_empty() {
            tries.push(Vec::new());
        }
        let mut last_err = None;
        let mut lease = None;
        for avoid in tries {
            req.avoid = avoid;
            match runner::place(self.node(), req.clone()).await {
                Ok(l) => {
                    lease = Some(l);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if let (Some(c), Some(l)) = (claimed.as_mut(), &lease) {
            c.insert(i, l.node_id.clone());
        }
        drop(claimed);
        let Some(lease) = lease else {
            // Nothing could take it now: wait a moment before the retry
            // (it counts as an attempt).
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Outcome::NoRoom(format!(
                "no node could take it: {}",
                last_err.map(|e| e.to_string()).unwrap_or_default()
            ));
        };
        let (utx, urx) = tokio::sync::mpsc::unbounded_channel();
        let started = self
            .node()
            .start_task(
                lease.node_id.clone(),
                &lease.allocation_id,
                task_id,
                plan.spec.clone(),
                utx,
            )
            .await;
        let permanent = match &started {
            // The work itself is wrong: running it elsewhere will not help.
            Err(NodeError::TaskRefused { reason, .. }) => {
                reason == "unknown_template" || reason == "bad_params"
            }
            _ => false,
        };
        if let Err(e) = &started {
            let _ = self.node().release(&lease.allocation_id).await;
            if !permanent {
                return Outcome::Lost(format!("{} refused or failed: {e}", lease.node_name));
            }
        }
        let placed = {
            let mut st = self.lock();
            let r = st.jobs.get_mut(job_id).map(|job| {
                job.placed(
                    i,
                    lease.node_id.clone(),
                    lease.node_name.clone(),
                    lease.allocation_id.clone(),
                    task_id,
                )
            });
            let snapshot = st.jobs.get(job_id).cloned();
            drop(st);
            if let Some(j) = snapshot {
                self.save_job(&j);
            }
            r
        };
        if let Some(Some(cancel)) = placed {
            if !permanent {
                runner::carry_out(self.node(), vec![cancel]).await;
            }
            return Outcome::Lost("the job no longer wanted it".into());
        }
        if let Err(e) = started {
            return Outcome::Finished(Box::new(runner::refused_result(
                task_id,
                &lease,
                e.to_string(),
            )));
        }
        let out = runner::follow(
            self.node(),
            &lease.node_id,
            task_id,
            urx,
            |_| {},
            &self.inner.shutdown,
        )
        .await;
        if !matches!(out, Outcome::Shutdown) {
            let _ = self.node().release(&lease.allocation_id).await;
        }
        out
    }
}

fn view(st: &State, j: &JobState) -> JobView {
    JobView {
        job: j.clone(),
        progress: j.progress(),
        queue_position: st.queue.position(&j.id),
    }
}
