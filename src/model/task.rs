//! Tasks: work run on a lease, on the machine of the node that granted it.
//!
//! A task is either a command *template* the owner declared in its config
//! (the peer names it and fills in its declared parameters, never a
//! command line), or an *inference* call forwarded to the owner's local
//! model server. These are the wire and API shapes; the owner-side checks
//! live in [`crate::core::tasks`], the runner in [`crate::exec`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::NodeId;

/// What a task runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskSpec {
    /// A template the owner declared, by name, with values for its
    /// declared parameters. Values travel as text; the owner parses them
    /// by the parameter's declared type.
    Template {
        template: String,
        params: BTreeMap<String, String>,
    },
    /// A generate or chat call on a model the owner serves.
    Inference(InferenceRequest),
}

impl TaskSpec {
    /// A short label for logs and listings: the template or the model.
    pub fn label(&self) -> String {
        match self {
            TaskSpec::Template { template, .. } => template.clone(),
            TaskSpec::Inference(r) => format!("infer:{}", r.model),
        }
    }
}

/// An inference call (Ollama `/api/generate` or `/api/chat`, or the
/// OpenAI-compatible `/v1/completions` or `/v1/chat/completions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceRequest {
    pub model: String,
    pub call: InferenceCall,
    /// Send the answer in pieces as the model server produces them.
    pub stream: bool,
    /// Model options (temperature, num_predict, ...) as a JSON object in
    /// text form, passed through to the server; `None` for its defaults.
    pub options: Option<String>,
}

/// The two kinds of inference call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferenceCall {
    /// Complete a prompt.
    Generate {
        prompt: String,
        system: Option<String>,
    },
    /// Answer a conversation.
    Chat { messages: Vec<ChatMessage> },
}

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// Exit status 0, or the model answered.
    Succeeded,
    /// A non-zero exit status, or death by a signal.
    Failed,
    /// Ran past the template's timeout and was killed.
    TimedOut,
    /// Cancelled by the requester.
    Cancelled,
    /// The lease ended (released, expired, preempted) and the task was
    /// killed with it.
    LeaseEnded,
    /// Could not be run at all: the program does not start, the model
    /// server is down. `error` says why.
    Error,
}

impl TaskOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskOutcome::Succeeded => "succeeded",
            TaskOutcome::Failed => "failed",
            TaskOutcome::TimedOut => "timed_out",
            TaskOutcome::Cancelled => "cancelled",
            TaskOutcome::LeaseEnded => "lease_ended",
            TaskOutcome::Error => "error",
        }
    }
}

/// The result of a task, as the owner reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: String,
    /// The node that ran it.
    pub node_id: NodeId,
    pub node_name: String,
    /// The lease it ran under.
    pub allocation_id: String,
    pub outcome: TaskOutcome,
    /// The process's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, when one did.
    pub signal: Option<i32>,
    /// Standard output (the model's answer for inference), lossily UTF-8,
    /// at most the template's `max_output` bytes.
    pub stdout: String,
    pub stderr: String,
    /// Whether output was cut at `max_output`; the `*_bytes` fields count
    /// everything the process wrote.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Why it could not run, or what went wrong around it.
    pub error: Option<String>,
    /// What limits held the process (cgroup v2, setrlimit, none).
    pub enforcement: String,
    /// When the owner accepted it, started it, and saw it end, ms.
    pub accepted_at_ms: u64,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

impl TaskResult {
    /// A result with no output yet: outcome `error`, every time `now_ms`.
    /// The runner fills in the rest.
    pub fn empty(
        task_id: &str,
        node_id: &NodeId,
        node_name: &str,
        allocation_id: &str,
        now_ms: u64,
    ) -> Self {
        TaskResult {
            task_id: task_id.to_owned(),
            node_id: node_id.clone(),
            node_name: node_name.to_owned(),
            allocation_id: allocation_id.to_owned(),
            outcome: TaskOutcome::Error,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_bytes: 0,
            stderr_bytes: 0,
            error: None,
            enforcement: String::new(),
            accepted_at_ms: now_ms,
            started_at_ms: now_ms,
            finished_at_ms: now_ms,
        }
    }
}
