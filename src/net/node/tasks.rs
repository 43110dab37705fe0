//! Tasks on `/lanswarm/task/2`, both sides.
//!
//! **Owner.** A peer that holds one of our leases may run one task on it
//! at a time: a template we declared ([`crate::core::tasks::Template`],
//! rendered from its declared parameters, never a command line) or an
//! inference call on a model our model server serves. The process runs
//! under [`crate::exec::run`], held to the lease, with
//! `CUDA_VISIBLE_DEVICES` set to the lease's GPUs. A task whose lease ends
//! (released, expired, preempted) is killed with it. Results are pushed to
//! the requester and kept for `keep_results` so a requester that missed
//! the push (or restarted) can poll for them.
//!
//! **Requester.** The handle runs a task on an owner with a watcher: a
//! channel that gets the streamed pieces, the result, and a word when the
//! connection to the owner drops (the caller then polls to tell a lost
//! owner from a reconnect).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::core::tasks::Template;
use crate::exec::{self, ExecOutcome, ExitKind, Isolation, Launch, ResourceLimits};
use crate::handle::{LocalTask, TaskUpdate};
use crate::hw::models::{Discovered, ModelApi, ModelServer};
use crate::model::{InferenceRequest, TaskOutcome, TaskResult, TaskSpec};
use crate::net::protocol::{
    TaskRefuseReason, TaskRequest, TaskResponse, TaskState, MAX_TASK_CHUNK,
};

/// Most finished results an owner keeps for polling.
const MAX_FINISHED: usize = 4096;
/// Most models announced, and the most bytes of their names (the
/// announcement has a size limit; peers refuse longer lists).
const MAX_ANNOUNCED_MODELS: usize = 256;
const MAX_ANNOUNCED_MODEL_BYTES: usize = 8 * 1024;
/// Most templates announced (peers refuse more).
const MAX_ANNOUNCED_TEMPLATES: usize = crate::core::tasks::MAX_TEMPLATES;
/// Longest answer an inference task returns, bytes.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// What this node offers to run, from `[tasks]` and `[models]`.
#[derive(Clone, Debug)]
pub struct TaskSettings {
    pub templates: Vec<Template>,
    pub isolation: Isolation,
    pub cgroup_parent: Option<PathBuf>,
    /// Most tasks running at once on this node.
    pub max_running: u32,
    /// How long finished results are kept for polling.
    pub keep_results: Duration,
    /// The local model server, if any.
    pub model_server: Option<ModelServerSettings>,
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings {
            templates: Vec::new(),
            isolation: Isolation::Auto,
            cgroup_parent: None,
            max_running: 16,
            keep_results: Duration::from_secs(600),
            model_server: None,
        }
    }
}

/// Where the local model server is and how to talk to it.
#[derive(Clone, Debug)]
pub struct ModelServerSettings {
    pub api: ModelApi,
    pub url: String,
    /// How often its models are listed again.
    pub refresh: Duration,
    /// Connect timeout, and idle timeout while an answer streams.
    pub timeout: Duration,
}

/// What the runners tell the event loop.
pub(super) enum TaskEvent {
    Chunk { task_id: String, text: String },
    Finished(Box<TaskResult>),
    Models(Result<Discovered, String>),
}

struct RunningTask {
    allocation_id: LeaseId,
    requester: NodeId,
    label: String,
    cancel: CancellationToken,
    /// Why we stopped it, when we did (the runner only sees "cancelled").
    end_reason: Option<TaskOutcome>,
    accepted_at_ms: u64,
}

/// What an outbound task request is for. Request ids are counted per
/// protocol, so these have a map of their own (never the allocation
/// protocol's `pending`).
enum TaskPending {
    Run {
        task_id: String,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Call {
        reply: oneshot::Sender<Result<TaskResponse, NodeError>>,
    },
    /// A result pushed to a requester; the answer does not matter (it
    /// can poll).
    Push,
    /// A piece of a streamed answer: the next one goes when this one is
    /// answered, so pieces arrive in order and before the result.
    Chunk { task_id: String },
}

/// What is still to be delivered of a streamed answer, one piece at a
/// time.
struct Outbox {
    requester: NodeId,
    /// Text produced and not yet sent.
    text: String,
    next_seq: u64,
    /// Whether a piece is on its way.
    in_flight: bool,
    /// The result, held until the text before it is delivered.
    result: Option<Box<TaskResult>>,
    /// A piece could not be delivered: send no more pieces (the
    /// requester gets the whole answer in the result).
    broken: bool,
}

impl Outbox {
    fn new(requester: NodeId) -> Self {
        Outbox {
            requester,
            text: String::new(),
            next_seq: 0,
            in_flight: false,
            result: None,
            broken: false,
        }
    }
}

/// A task this node ran, kept for its requester to poll.
struct Finished {
    result: Box<TaskResult>,
    label: String,
    requester: NodeId,
    at_ms: u64,
}

/// A task of ours running on some owner.
struct Watch {
    owner: NodeId,
    tx: mpsc::UnboundedSender<TaskUpdate>,
    /// Pieces travel on separate streams and may arrive out of order:
    /// the next one to pass on, and those that came early.
    next_seq: u64,
    early: BTreeMap<u64, String>,
}

/// Most pieces held back waiting for an earlier one.
const MAX_EARLY_CHUNKS: usize = 64;

impl Watch {
    fn new(owner: NodeId, tx: mpsc::UnboundedSender<TaskUpdate>) -> Self {
        Watch {
            owner,
            tx,
            next_seq: 0,
            early: BTreeMap::new(),
        }
    }

    /// Pass piece `seq` on in order.
    fn chunk(&mut self, seq: u64, text: String) {
        if seq < self.next_seq || self.early.len() >= MAX_EARLY_CHUNKS {
            return;
        }
        self.early.insert(seq, text);
        while let Some(text) = self.early.remove(&self.next_seq) {
            let _ = self.tx.send(TaskUpdate::Chunk(text));
            self.next_seq += 1;
        }
    }
}

/// The state of the model server, as last seen.
#[derive(Default)]
struct Models {
    server: Option<Arc<ModelServer>>,
    /// Advertised: discovered (narrowed to `[models] served` when that is
    /// set), or `served` as declared when there is no server.
    models: Vec<String>,
    loaded: Vec<String>,
    /// What the last discovery said, for the API.
    status: String,
}

/// Both sides of the task protocol.
pub(super) struct Tasks {
    settings: TaskSettings,
    declared_models: Vec<String>,
    running: BTreeMap<String, RunningTask>,
    /// Finished results: the result, when it ended, and its requester.
    finished: BTreeMap<String, Finished>,
    watches: HashMap<String, Watch>,
    pending: HashMap<OutboundRequestId, TaskPending>,
    /// Streamed answers being delivered, by task.
    outbox: HashMap<String, Outbox>,
    models: Models,
    tx: mpsc::UnboundedSender<TaskEvent>,
    rx: mpsc::UnboundedReceiver<TaskEvent>,
}

impl Tasks {
    pub(super) fn new(settings: TaskSettings, declared_models: Vec<String>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut models = Models::default();
        match &settings.model_server {
            None => {
                models.models = declared_models.clone();
                models.status = "no model server configured".into();
            }
            Some(m) => match ModelServer::new(m.api, &m.url, m.timeout) {
                Ok(s) => {
                    models.server = Some(Arc::new(s));
                    models.status = format!("model server at {}: not asked yet", m.url);
                }
                Err(e) => models.status = format!("model server {}: {e}", m.url),
            },
        }
        Tasks {
            settings,
            declared_models,
            running: BTreeMap::new(),
            finished: BTreeMap::new(),
            watches: HashMap::new(),
            pending: HashMap::new(),
            outbox: HashMap::new(),
            models,
            tx,
            rx,
        }
    }

    pub(super) fn advertised_models(&self) -> Vec<String> {
        self.models.models.clone()
    }

    pub(super) fn loaded_models(&self) -> Vec<String> {
        self.models.loaded.clone()
    }

    pub(super) fn template_names(&self) -> Vec<String> {
        self.settings
            .templates
            .iter()
            .take(MAX_ANNOUNCED_TEMPLATES)
            .map(|t| t.name.clone())
            .collect()
    }

    pub(super) fn templates(&self) -> &[Template] {
        &self.settings.templates
    }

    pub(super) fn model_status(&self) -> String {
        self.models.status.clone()
    }

    pub(super) async fn next_event(&mut self) -> Option<TaskEvent> {
        self.rx.recv().await
    }

    /// Start listing the model server's models every `refresh`.
    pub(super) fn spawn_discovery(&self, shutdown: CancellationToken) {
        let (Some(server), Some(m)) = (self.models.server.clone(), &self.settings.model_server)
        else {
            return;
        };
        let tx = self.tx.clone();
        let refresh = m.refresh;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(refresh);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                let found = server.discover().await.map_err(|e| e.to_string());
                if tx.send(TaskEvent::Models(found)).is_err() {
                    return;
                }
            }
        });
    }
}

/// A refusal answer.
fn refuse(reason: TaskRefuseReason, message: impl Into<String>) -> TaskResponse {
    TaskResponse::Refused {
        reason,
        message: message.into(),
    }
}

/// Task ids are chosen by requesters: keep them short and plain.
fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl EventLoop {
    pub(super) fn on_task_event(
        &mut self,
        ev: request_response::Event<Frame<TaskRequest>, TaskResponse>,
    ) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let request = match request {
                    Frame::Valid(r) => r,
                    Frame::Invalid(why) => {
                        return self.penalise(peer, format!("bad task frame: {why}"))
                    }
                };
                let answer = self.on_task_request(&node_id_of(&peer), request);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .task
                    .send_response(channel, answer);
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match self.tasks.pending.remove(&request_id) {
                Some(TaskPending::Run { task_id, reply }) => {
                    self.breaker_task_answered(&node_id_of(&peer));
                    let result = match response {
                        TaskResponse::Accepted => Ok(()),
                        TaskResponse::Refused { reason, message } => {
                            self.tasks.watches.remove(&task_id);
                            Err(NodeError::TaskRefused {
                                reason: reason.as_str().to_owned(),
                                message,
                            })
                        }
                        other => {
                            self.tasks.watches.remove(&task_id);
                            Err(NodeError::Unreachable(format!(
                                "unexpected answer to a task: {other:?}"
                            )))
                        }
                    };
                    let _ = reply.send(result);
                }
                Some(TaskPending::Call { reply }) => {
                    let _ = reply.send(Ok(response));
                }
                Some(TaskPending::Chunk { task_id }) => {
                    if let Some(out) = self.tasks.outbox.get_mut(&task_id) {
                        out.in_flight = false;
                    }
                    self.send_next(&task_id);
                }
                Some(TaskPending::Push) | None => {}
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => match self.tasks.pending.remove(&request_id) {
                Some(TaskPending::Run { task_id, reply }) => {
                    self.breaker_task_failed(&node_id_of(&peer), &error.to_string());
                    self.tasks.watches.remove(&task_id);
                    let _ = reply.send(Err(NodeError::Unreachable(format!(
                        "{}: {error}",
                        self.name_of(&node_id_of(&peer))
                    ))));
                }
                Some(TaskPending::Call { reply }) => {
                    let _ = reply.send(Err(NodeError::Unreachable(format!(
                        "{}: {error}",
                        self.name_of(&node_id_of(&peer))
                    ))));
                }
                Some(TaskPending::Chunk { task_id }) => {
                    // The requester is unreachable: stop streaming; the
                    // result is kept for it to poll.
                    debug!(%peer, %error, task = %task_id, "streaming stopped");
                    if let Some(out) = self.tasks.outbox.get_mut(&task_id) {
                        out.broken = true;
                        out.in_flight = false;
                        out.text.clear();
                    }
                    self.send_next(&task_id);
                }
                _ => debug!(%peer, %error, "task message failed"),
            },
            request_response::Event::InboundFailure {
                peer,
                error: request_response::InboundFailure::Io(e),
                ..
            } => self.penalise(peer, format!("bad task frame: {e}")),
            request_response::Event::InboundFailure { .. }
            | request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// A task request from `from` (a peer, or this node for its own leases).
    fn on_task_request(&mut self, from: &NodeId, req: TaskRequest) -> TaskResponse {
        match req {
            TaskRequest::Run {
                task_id,
                allocation_id,
                spec,
            } => self.run_task(from, task_id, allocation_id, spec),
            TaskRequest::Cancel { task_id } => {
                if let Some(t) = self.tasks.running.get_mut(&task_id) {
                    if &t.requester == from {
                        info!(task = %task_id, "task cancelled by its requester");
                        t.end_reason.get_or_insert(TaskOutcome::Cancelled);
                        t.cancel.cancel();
                    }
                }
                TaskResponse::Ack
            }
            TaskRequest::Poll { task_id } => {
                let state = if let Some(t) = self.tasks.running.get(&task_id) {
                    if &t.requester == from {
                        TaskState::Running {
                            started_at_ms: t.accepted_at_ms,
                        }
                    } else {
                        TaskState::Unknown
                    }
                } else {
                    match self.tasks.finished.get(&task_id) {
                        Some(f) if &f.requester == from => TaskState::Finished(f.result.clone()),
                        _ => TaskState::Unknown,
                    }
                };
                TaskResponse::Status(state)
            }
            TaskRequest::Chunk { task_id, seq, text } => {
                if let Some(w) = self.tasks.watches.get_mut(&task_id) {
                    if &w.owner == from {
                        w.chunk(seq, text);
                    }
                }
                TaskResponse::Ack
            }
            TaskRequest::Finished(result) => {
                let ours = self
                    .tasks
                    .watches
                    .get(&result.task_id)
                    .is_some_and(|w| &w.owner == from && result.node_id == *from);
                if ours {
                    if let Some(w) = self.tasks.watches.remove(&result.task_id) {
                        let _ = w.tx.send(TaskUpdate::Finished(result));
                    }
                }
                TaskResponse::Ack
            }
        }
    }

    /// Check and start a task; the answer goes back at once.
    fn run_task(
        &mut self,
        from: &NodeId,
        task_id: String,
        allocation_id: LeaseId,
        spec: TaskSpec,
    ) -> TaskResponse {
        use TaskRefuseReason as R;
        let perm = match &spec {
            TaskSpec::Inference(_) => crate::core::roles::Permission::Infer,
            _ => crate::core::roles::Permission::RunTask,
        };
        if let Err(d) = self.permit(from, perm) {
            return refuse(R::Forbidden, d.message);
        }
        if !valid_task_id(&task_id) {
            return refuse(R::BadRequest, "task_id: 1 to 64 letters, digits, - or _");
        }
        if self.tasks.running.contains_key(&task_id) || self.tasks.finished.contains_key(&task_id) {
            return refuse(
                R::BadRequest,
                format!("task id {task_id} is already in use"),
            );
        }
        let lease = match self.sched.ledger().get(&allocation_id) {
            Some(l) if &l.holder == from => l.clone(),
            _ => {
                return refuse(
                    R::NoLease,
                    format!(
                        "no active allocation {allocation_id} held by you on {}",
                        self.cfg.name
                    ),
                )
            }
        };
        if let Some((id, _)) = self
            .tasks
            .running
            .iter()
            .find(|(_, t)| t.allocation_id == allocation_id)
        {
            return refuse(
                R::Busy,
                format!("task {id} is still running on allocation {allocation_id}"),
            );
        }
        if self.tasks.running.len() >= self.tasks.settings.max_running as usize {
            return refuse(
                R::Busy,
                format!(
                    "{} already runs its most tasks ({})",
                    self.cfg.name, self.tasks.settings.max_running
                ),
            );
        }
        let now = now_ms();
        let base = TaskResult::empty(
            &task_id,
            &self.local_id,
            &self.cfg.name,
            &allocation_id.0,
            now,
        );
        let cancel = CancellationToken::new();
        let tx = self.tasks.tx.clone();
        let label = spec.label();
        match spec {
            TaskSpec::Template { template, params } => {
                let Some(t) = self
                    .tasks
                    .settings
                    .templates
                    .iter()
                    .find(|t| t.name == template)
                else {
                    let offered = self.tasks.template_names();
                    return refuse(
                        R::UnknownTemplate,
                        format!(
                            "{} declares no template {template:?} (it offers: {})",
                            self.cfg.name,
                            if offered.is_empty() {
                                "none".to_owned()
                            } else {
                                offered.join(", ")
                            }
                        ),
                    );
                };
                let argv = match t.render(&params) {
                    Ok(a) => a,
                    Err(e) => return refuse(R::BadParams, format!("template {template}: {e}")),
                };
                let mut env = exec::base_env();
                env.extend(t.env.iter().map(|(k, v)| (k.clone(), v.clone())));
                let gpus: Vec<u32> = lease.gpus.iter().map(|g| g.index).collect();
                env.push(exec::gpu_env(&gpus));
                env.push(exec::orphans::marker(&self.local_id.0));
                env.push(("LANSWARM_ALLOCATION_ID".into(), allocation_id.0.clone()));
                env.push(("LANSWARM_TASK_ID".into(), task_id.clone()));
                env.push(("LANSWARM_CPU_CORES".into(), lease.cpu_cores.to_string()));
                env.push(("LANSWARM_MEMORY_MB".into(), lease.memory_mb.to_string()));
                let launch = Launch {
                    task_id: task_id.clone(),
                    argv,
                    env,
                    workdir: t.workdir.clone(),
                    timeout: t.timeout,
                    max_output: t.max_output as usize,
                    limits: ResourceLimits {
                        cpu_cores: lease.cpu_cores,
                        memory_mb: lease.memory_mb,
                    },
                    isolation: self.tasks.settings.isolation,
                    cgroup_parent: self.tasks.settings.cgroup_parent.clone(),
                };
                let timeout = t.timeout;
                let token = cancel.clone();
                tokio::spawn(async move {
                    let out = exec::run(launch, token).await;
                    let result = result_of(base, out, timeout);
                    let _ = tx.send(TaskEvent::Finished(Box::new(result)));
                });
            }
            TaskSpec::Inference(req) => {
                let Some(server) = self.tasks.models.server.clone() else {
                    return refuse(
                        R::NoModelServer,
                        format!("{} has no model server configured", self.cfg.name),
                    );
                };
                if !self.tasks.models.models.contains(&req.model) {
                    return if self.tasks.models.models.is_empty() {
                        refuse(R::NoModelServer, self.tasks.models.status.clone())
                    } else {
                        refuse(
                            R::UnknownModel,
                            format!(
                                "{} serves no model {:?} (it serves: {})",
                                self.cfg.name,
                                req.model,
                                self.tasks.models.models.join(", ")
                            ),
                        )
                    };
                }
                if let Err(e) = check_inference(&req) {
                    return refuse(R::BadRequest, e);
                }
                let token = cancel.clone();
                let id = task_id.clone();
                tokio::spawn(async move {
                    let result = infer(base, server, req, token, id, tx.clone()).await;
                    let _ = tx.send(TaskEvent::Finished(Box::new(result)));
                });
            }
        }
        info!(task = %task_id, %label, requester = %from, allocation = %allocation_id, "task started");
        self.tasks.running.insert(
            task_id.clone(),
            RunningTask {
                allocation_id,
                requester: from.clone(),
                label,
                cancel,
                end_reason: None,
                accepted_at_ms: now,
            },
        );
        TaskResponse::Accepted
    }

    /// Something a runner or the model discovery said.
    pub(super) fn on_runner_event(&mut self, ev: TaskEvent) {
        match ev {
            TaskEvent::Chunk { task_id, text } => {
                let Some(t) = self.tasks.running.get(&task_id) else {
                    return;
                };
                let requester = t.requester.clone();
                let out = self
                    .tasks
                    .outbox
                    .entry(task_id.clone())
                    .or_insert_with(|| Outbox::new(requester));
                if !out.broken {
                    out.text.push_str(&text);
                }
                self.send_next(&task_id);
            }
            TaskEvent::Finished(mut result) => {
                let Some(t) = self.tasks.running.remove(&result.task_id) else {
                    return;
                };
                if result.outcome == TaskOutcome::Cancelled {
                    if let Some(reason) = t.end_reason {
                        result.outcome = reason;
                        if reason == TaskOutcome::LeaseEnded {
                            result.error = Some(format!(
                                "allocation {} ended while the task ran; it was stopped",
                                t.allocation_id
                            ));
                        }
                    }
                }
                info!(
                    task = %result.task_id,
                    label = %t.label,
                    outcome = result.outcome.as_str(),
                    exit = ?result.exit_code,
                    ms = result.finished_at_ms.saturating_sub(result.started_at_ms),
                    "task finished"
                );
                while self.tasks.finished.len() >= MAX_FINISHED {
                    let oldest = self
                        .tasks
                        .finished
                        .iter()
                        .min_by_key(|(_, f)| f.at_ms)
                        .map(|(id, _)| id.clone());
                    match oldest {
                        Some(id) => self.tasks.finished.remove(&id),
                        None => break,
                    };
                }
                self.tasks.finished.insert(
                    result.task_id.clone(),
                    Finished {
                        result: result.clone(),
                        label: t.label.clone(),
                        requester: t.requester.clone(),
                        at_ms: now_ms(),
                    },
                );
                let id = result.task_id.clone();
                match self.tasks.outbox.get_mut(&id) {
                    // Pieces still to deliver: the result goes after them.
                    Some(out) => {
                        out.result = Some(result);
                        self.send_next(&id);
                    }
                    None => self.push_to(&t.requester, TaskRequest::Finished(result)),
                }
            }
            TaskEvent::Models(found) => self.on_models(found),
        }
    }

    /// Deliver the next piece of task `id`'s answer, or, when all of it is
    /// delivered and the task ended, its result.
    fn send_next(&mut self, id: &str) {
        let Some(out) = self.tasks.outbox.get_mut(id) else {
            return;
        };
        if out.in_flight {
            return;
        }
        if out.text.is_empty() {
            if let Some(result) = out.result.take() {
                let requester = out.requester.clone();
                self.tasks.outbox.remove(id);
                self.push_to(&requester, TaskRequest::Finished(result));
            }
            return;
        }
        let mut cut = out.text.len().min(MAX_TASK_CHUNK);
        while !out.text.is_char_boundary(cut) {
            cut -= 1;
        }
        let text: String = out.text.drain(..cut).collect();
        let msg = TaskRequest::Chunk {
            task_id: id.to_owned(),
            seq: out.next_seq,
            text,
        };
        out.next_seq += 1;
        let requester = out.requester.clone();
        if requester == self.local_id {
            let me = self.local_id.clone();
            let _ = self.on_task_request(&me, msg);
            return self.send_next(id);
        }
        let Some(peer) = peer_id_of(&requester) else {
            self.tasks.outbox.remove(id);
            return;
        };
        out.in_flight = true;
        let rid = self
            .swarm
            .behaviour_mut()
            .task
            .send_request(&peer, Frame::Valid(msg));
        self.tasks.pending.insert(
            rid,
            TaskPending::Chunk {
                task_id: id.to_owned(),
            },
        );
    }

    /// Send an owner → requester message; to ourselves inline.
    fn push_to(&mut self, requester: &NodeId, msg: TaskRequest) {
        if requester == &self.local_id {
            let me = self.local_id.clone();
            let _ = self.on_task_request(&me, msg);
            return;
        }
        let Some(peer) = peer_id_of(requester) else {
            return;
        };
        let rid = self
            .swarm
            .behaviour_mut()
            .task
            .send_request(&peer, Frame::Valid(msg));
        self.tasks.pending.insert(rid, TaskPending::Push);
    }

    fn on_models(&mut self, found: Result<Discovered, String>) {
        let url = self
            .tasks
            .settings
            .model_server
            .as_ref()
            .map(|m| m.url.clone())
            .unwrap_or_default();
        let (models, loaded, status) = match found {
            Ok(d) => {
                let keep = |m: &String| {
                    self.tasks.declared_models.is_empty() || self.tasks.declared_models.contains(m)
                };
                let mut budget = MAX_ANNOUNCED_MODEL_BYTES;
                let models: Vec<String> = d
                    .models
                    .into_iter()
                    .filter(keep)
                    .filter(|m| !m.is_empty() && m.len() <= 128)
                    .take_while(|m| match budget.checked_sub(m.len()) {
                        Some(left) => {
                            budget = left;
                            true
                        }
                        None => false,
                    })
                    .take(MAX_ANNOUNCED_MODELS)
                    .collect();
                let loaded: Vec<String> = d
                    .loaded
                    .into_iter()
                    .filter(|m| models.contains(m))
                    .collect();
                let status = format!(
                    "model server at {url}: {} models, {} loaded",
                    models.len(),
                    loaded.len()
                );
                (models, loaded, status)
            }
            Err(e) => (Vec::new(), Vec::new(), e),
        };
        if status != self.tasks.models.status {
            if models.is_empty() && !status.contains(": 0 models") {
                warn!(%status, "model server unavailable; advertising no models");
            } else {
                info!(%status, "model server");
            }
        }
        self.tasks.models.status = status;
        if models != self.tasks.models.models || loaded != self.tasks.models.loaded {
            self.tasks.models.models = models;
            self.tasks.models.loaded = loaded;
            self.schedule_announce();
        }
    }

    /// Kill tasks whose lease is gone; forget old results.
    pub(super) fn maintain_tasks(&mut self, now: u64) {
        let ended: Vec<String> = self
            .tasks
            .running
            .iter()
            .filter(|(_, t)| self.sched.ledger().get(&t.allocation_id).is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            if let Some(t) = self.tasks.running.get_mut(&id) {
                if t.end_reason.is_none() {
                    info!(task = %id, allocation = %t.allocation_id, "allocation ended; stopping its task");
                    t.end_reason = Some(TaskOutcome::LeaseEnded);
                    t.cancel.cancel();
                }
            }
        }
        let keep_ms = self.tasks.settings.keep_results.as_millis() as u64;
        let old: Vec<String> = self
            .tasks
            .finished
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.at_ms) > keep_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            self.tasks.finished.remove(&id);
        }
    }

    /// Stop every task (shutdown).
    pub(super) fn stop_all_tasks(&mut self) {
        for t in self.tasks.running.values_mut() {
            t.end_reason.get_or_insert(TaskOutcome::Cancelled);
            t.cancel.cancel();
        }
    }

    /// The connection to `peer` is gone: tell the watchers of its tasks.
    pub(super) fn owner_disconnected(&mut self, peer: &NodeId) {
        if self.tasks.watches.values().any(|w| &w.owner == peer) {
            self.breaker_task_failed(peer, "disconnected while running our tasks");
        }
        for w in self.tasks.watches.values() {
            if &w.owner == peer {
                let _ = w.tx.send(TaskUpdate::OwnerDisconnected);
            }
        }
    }

    /// Handle command: run `spec` on `owner` under `allocation_id`.
    pub(super) fn start_remote_task(
        &mut self,
        owner: NodeId,
        allocation_id: String,
        task_id: String,
        spec: TaskSpec,
        updates: mpsc::UnboundedSender<TaskUpdate>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    ) {
        self.tasks
            .watches
            .insert(task_id.clone(), Watch::new(owner.clone(), updates));
        let req = TaskRequest::Run {
            task_id: task_id.clone(),
            allocation_id: LeaseId(allocation_id),
            spec,
        };
        if owner == self.local_id {
            let me = self.local_id.clone();
            let result = match self.on_task_request(&me, req) {
                TaskResponse::Accepted => Ok(()),
                TaskResponse::Refused { reason, message } => {
                    self.tasks.watches.remove(&task_id);
                    Err(NodeError::TaskRefused {
                        reason: reason.as_str().to_owned(),
                        message,
                    })
                }
                other => Err(NodeError::Unreachable(format!(
                    "unexpected answer {other:?}"
                ))),
            };
            let _ = reply.send(result);
            return;
        }
        let Some(peer) = peer_id_of(&owner) else {
            self.tasks.watches.remove(&task_id);
            let _ = reply.send(Err(NodeError::BadRequest(format!(
                "{owner} is not a node id"
            ))));
            return;
        };
        let rid = self
            .swarm
            .behaviour_mut()
            .task
            .send_request(&peer, Frame::Valid(req));
        self.tasks
            .pending
            .insert(rid, TaskPending::Run { task_id, reply });
    }

    /// Handle command: watch a task already running on `owner` (after a
    /// restart), without starting it.
    pub(super) fn watch_task(
        &mut self,
        owner: NodeId,
        task_id: String,
        updates: mpsc::UnboundedSender<TaskUpdate>,
    ) {
        self.tasks
            .watches
            .insert(task_id, Watch::new(owner, updates));
    }

    /// Handle command: cancel or poll a task on `owner`.
    pub(super) fn task_call(
        &mut self,
        owner: NodeId,
        req: TaskRequest,
        reply: oneshot::Sender<Result<TaskResponse, NodeError>>,
    ) {
        if owner == self.local_id {
            let me = self.local_id.clone();
            let _ = reply.send(Ok(self.on_task_request(&me, req)));
            return;
        }
        let Some(peer) = peer_id_of(&owner) else {
            let _ = reply.send(Err(NodeError::BadRequest(format!(
                "{owner} is not a node id"
            ))));
            return;
        };
        let rid = self
            .swarm
            .behaviour_mut()
            .task
            .send_request(&peer, Frame::Valid(req));
        self.tasks.pending.insert(rid, TaskPending::Call { reply });
    }

    /// Tasks running here for peers.
    pub(super) fn running_task_count(&self) -> usize {
        self.tasks.running.len()
    }

    /// Whether this node offers template `name`.
    pub(super) fn tasks_offer(&self, name: &str) -> bool {
        self.tasks.templates().iter().any(|t| t.name == name)
    }

    /// The models loaded on this node's model server.
    pub(super) fn tasks_loaded(&self) -> Vec<String> {
        self.tasks.loaded_models()
    }

    /// Handle command: what this node offers, and its tasks.
    pub(super) fn offers(&self) -> crate::handle::Offers {
        crate::handle::Offers {
            templates: self.tasks.templates().to_vec(),
            models: self.tasks.advertised_models(),
            loaded_models: self.tasks.loaded_models(),
            model_server: self
                .tasks
                .settings
                .model_server
                .as_ref()
                .map(|m| m.url.clone()),
            model_status: self.tasks.model_status(),
            tasks: self.local_tasks(),
        }
    }

    /// The tasks running on this node for peers, and the recent results.
    fn local_tasks(&self) -> Vec<LocalTask> {
        let mut out: Vec<LocalTask> = self
            .tasks
            .running
            .iter()
            .map(|(id, t)| LocalTask {
                task_id: id.clone(),
                label: t.label.clone(),
                allocation_id: t.allocation_id.0.clone(),
                requester: t.requester.clone(),
                status: "running".into(),
                accepted_at: crate::handle::ms_to_utc(t.accepted_at_ms),
                finished_at: None,
                exit_code: None,
            })
            .collect();
        out.extend(self.tasks.finished.values().map(|f| LocalTask {
            task_id: f.result.task_id.clone(),
            label: f.label.clone(),
            allocation_id: f.result.allocation_id.clone(),
            requester: f.requester.clone(),
            status: f.result.outcome.as_str().into(),
            accepted_at: crate::handle::ms_to_utc(f.result.accepted_at_ms),
            finished_at: Some(crate::handle::ms_to_utc(f.result.finished_at_ms)),
            exit_code: f.result.exit_code,
        }));
        out
    }
}

/// Bounds on an inference call, checked before it is forwarded.
fn check_inference(req: &InferenceRequest) -> Result<(), String> {
    use crate::model::InferenceCall;
    let size = match &req.call {
        InferenceCall::Generate { prompt, system } => {
            prompt.len() + system.as_ref().map_or(0, |s| s.len())
        }
        InferenceCall::Chat { messages } => {
            if messages.is_empty() {
                return Err("a chat needs at least one message".into());
            }
            messages
                .iter()
                .map(|m| m.content.len() + m.role.len())
                .sum()
        }
    };
    if size > 1024 * 1024 {
        return Err("the prompt is larger than 1 MiB".into());
    }
    if let Some(o) = &req.options {
        match serde_json::from_str::<serde_json::Value>(o) {
            Ok(serde_json::Value::Object(_)) => {}
            _ => return Err("options must be a JSON object".into()),
        }
    }
    Ok(())
}

/// Forward an inference call to the model server; pieces go to the loop
/// as they come.
async fn infer(
    mut base: TaskResult,
    server: Arc<ModelServer>,
    req: InferenceRequest,
    cancel: CancellationToken,
    task_id: String,
    events: mpsc::UnboundedSender<TaskEvent>,
) -> TaskResult {
    let (ctx, mut crx) = mpsc::channel::<String>(256);
    let forward = {
        let events = events.clone();
        let task_id = task_id.clone();
        async move {
            while let Some(text) = crx.recv().await {
                let _ = events.send(TaskEvent::Chunk {
                    task_id: task_id.clone(),
                    text,
                });
            }
        }
    };
    let chunks = req.stream.then_some(ctx);
    let call = server.infer(&req, MAX_ANSWER, chunks);
    base.started_at_ms = now_ms();
    base.enforcement = format!("forwarded to the model server at {}", server.url());
    let answer = tokio::select! {
        _ = cancel.cancelled() => None,
        (a, ()) = async { futures::join!(call, forward) } => Some(a),
    };
    base.finished_at_ms = now_ms();
    match answer {
        None => base.outcome = TaskOutcome::Cancelled,
        Some(Ok(a)) => {
            base.outcome = TaskOutcome::Succeeded;
            base.stdout_bytes = a.text.len() as u64;
            base.stdout = a.text;
            base.stdout_truncated = a.truncated;
        }
        Some(Err(e)) => {
            base.outcome = TaskOutcome::Error;
            base.error = Some(e.to_string());
        }
    }
    base
}

/// A process's outcome as a task result.
fn result_of(mut base: TaskResult, out: ExecOutcome, timeout: Duration) -> TaskResult {
    base.started_at_ms = out.started_at_ms;
    base.finished_at_ms = out.finished_at_ms;
    base.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    base.stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    base.stdout_truncated = out.stdout_truncated;
    base.stderr_truncated = out.stderr_truncated;
    base.stdout_bytes = out.stdout_total;
    base.stderr_bytes = out.stderr_total;
    base.enforcement = out.enforcement;
    match out.exit {
        ExitKind::Exited(0) => base.outcome = TaskOutcome::Succeeded,
        ExitKind::Exited(code) => {
            base.outcome = TaskOutcome::Failed;
            base.exit_code = Some(code);
        }
        ExitKind::Signaled(sig) => {
            base.outcome = TaskOutcome::Failed;
            base.signal = Some(sig);
            base.error = Some(format!("killed by signal {sig}"));
        }
        ExitKind::TimedOut => {
            base.outcome = TaskOutcome::TimedOut;
            base.error = Some(format!(
                "ran past its timeout of {} and was killed",
                crate::units::format_duration(timeout)
            ));
        }
        ExitKind::Cancelled => base.outcome = TaskOutcome::Cancelled,
        ExitKind::SpawnFailed(why) => {
            base.outcome = TaskOutcome::Error;
            base.error = Some(why);
        }
    }
    if base.outcome == TaskOutcome::Succeeded {
        base.exit_code = Some(0);
    }
    base
}
