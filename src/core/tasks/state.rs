//! The state machine of one distributed job, on the requester's node.
//!
//! The driver in the network shell owns a [`JobState`] per job and feeds
//! it what happens; the state says what to do next and keeps the record
//! the API shows. One round of the driver:
//!
//! 1. [`JobState::start`] when the job leaves the queue.
//! 2. For each index of [`JobState::next_to_place`]: [`JobState::placing`],
//!    then allocate with [`JobSpec::subtask`](super::JobSpec::subtask)'s
//!    plan (ordering candidates with [`JobState::rank_candidates`]) and send
//!    the task.
//! 3. Once the task is accepted: [`JobState::placed`]. If nothing can be
//!    placed right now (no room anywhere, worth waiting for):
//!    [`JobState::deferred`], which does not use up an attempt. If the
//!    placement failed in a way that should count: [`JobState::lost`].
//! 4. When the result arrives: [`JobState::finished`]. When the node dies
//!    or the lease is lost: [`JobState::lost`], which re-queues the
//!    subtask (avoiding that node) while attempts remain.
//! 5. Every call that can end the job returns the [`Cancel`]s the driver
//!    must carry out: the tasks still running elsewhere, whose leases it
//!    should release too.
//!
//! Work that itself failed (a non-zero exit, a timeout, a program that
//! cannot start) is not retried: it would fail again. The job fails and
//! names the subtask.

use serde::{Deserialize, Serialize};

use super::aggregate::aggregate;
use super::job::JobSpec;
use super::serde_text;
use super::shorten;
use crate::model::{NodeId, Priority, TaskOutcome, TaskResult};

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting in the requester's queue.
    Queued,
    /// Placing and running subtasks.
    Running,
    /// Every subtask succeeded and the result is aggregated.
    Succeeded,
    /// A subtask failed, gave up, or the aggregation failed; `error` says
    /// which.
    Failed,
    /// Cancelled by the requester.
    Cancelled,
}

impl JobStatus {
    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// Where one subtask stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubtaskStatus {
    /// Waiting to be placed (first time, or again after a lost node).
    Pending,
    /// An allocation for it is being made.
    Placing,
    /// Its task runs on `node_id` under `allocation_id`.
    Running,
    /// Done; `result` holds the output.
    Succeeded,
    /// Its work failed, or it gave up after `max_attempts`.
    Failed,
    /// Stopped (or never started) because the job ended.
    Cancelled,
}

impl SubtaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubtaskStatus::Pending => "pending",
            SubtaskStatus::Placing => "placing",
            SubtaskStatus::Running => "running",
            SubtaskStatus::Succeeded => "succeeded",
            SubtaskStatus::Failed => "failed",
            SubtaskStatus::Cancelled => "cancelled",
        }
    }

    /// Placing or running: counts against `parallel`.
    pub fn is_active(self) -> bool {
        matches!(self, SubtaskStatus::Placing | SubtaskStatus::Running)
    }
}

/// One subtask's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtaskState {
    /// Its position in the job (and in the aggregated result).
    pub index: usize,
    pub status: SubtaskStatus,
    /// Placements started so far, this one included.
    pub attempts: u32,
    /// Where the current (or last successful) attempt runs or ran.
    pub node_id: Option<NodeId>,
    pub node_name: Option<String>,
    pub allocation_id: Option<String>,
    pub task_id: Option<String>,
    /// The owner's report, once it finished (succeeded or failed).
    pub result: Option<TaskResult>,
    /// What became of each attempt: `"attempt 1 on node-b: node lost"`.
    pub history: Vec<String>,
    /// Nodes that were lost under it; placed elsewhere while possible.
    pub avoid: Vec<NodeId>,
}

impl SubtaskState {
    fn new(index: usize) -> Self {
        SubtaskState {
            index,
            status: SubtaskStatus::Pending,
            attempts: 0,
            node_id: None,
            node_name: None,
            allocation_id: None,
            task_id: None,
            result: None,
            history: Vec::new(),
            avoid: Vec::new(),
        }
    }

    /// The node as people know it: its name, else its id.
    fn node_label(&self) -> Option<String> {
        match (&self.node_name, &self.node_id) {
            (Some(n), _) if !n.is_empty() => Some(n.clone()),
            (_, Some(id)) => Some(id.to_string()),
            _ => None,
        }
    }

    fn attempt_label(&self) -> String {
        match self.node_label() {
            Some(node) => format!("attempt {} on {node}", self.attempts),
            None => format!("attempt {}", self.attempts),
        }
    }

    fn clear_placement(&mut self) {
        self.node_id = None;
        self.node_name = None;
        self.allocation_id = None;
        self.task_id = None;
    }
}

/// A task the driver must stop: cancel `task_id` on `node_id` and release
/// `allocation_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The subtask it belonged to.
    pub index: usize,
    pub node_id: NodeId,
    pub node_name: String,
    pub allocation_id: String,
    pub task_id: String,
}

/// How many subtasks are where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub total: usize,
    pub pending: usize,
    pub placing: usize,
    pub running: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub cancelled: usize,
}

impl Progress {
    /// Subtasks that will not change any more.
    pub fn done(&self) -> usize {
        self.succeeded + self.failed + self.cancelled
    }
}

/// One job on the requester's node: spec, status, every subtask's record
/// and, at the end, the result or the error. Stored with postcard and
/// shown as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub id: String,
    pub spec: JobSpec,
    pub priority: Priority,
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub status: JobStatus,
    pub subtasks: Vec<SubtaskState>,
    /// The aggregated outputs, once the job succeeded.
    #[serde(with = "serde_text::json_opt")]
    pub result: Option<serde_json::Value>,
    /// Why the job failed.
    pub error: Option<String>,
}

impl JobState {
    /// A queued job. The spec should have passed
    /// [`JobSpec::validate`](super::JobSpec::validate).
    pub fn new(id: impl Into<String>, spec: JobSpec, now_ms: u64) -> Self {
        let subtasks = (0..spec.subtasks.len()).map(SubtaskState::new).collect();
        JobState {
            id: id.into(),
            priority: spec.priority,
            spec,
            submitted_at_ms: now_ms,
            started_at_ms: None,
            finished_at_ms: None,
            status: JobStatus::Queued,
            subtasks,
            result: None,
            error: None,
        }
    }

    /// Queued → running. `false` if the job was not queued.
    pub fn start(&mut self, now_ms: u64) -> bool {
        if self.status != JobStatus::Queued {
            return false;
        }
        self.status = JobStatus::Running;
        self.started_at_ms = Some(now_ms);
        if self.subtasks.is_empty() {
            self.complete(now_ms);
        }
        true
    }

    /// Subtasks placing or running now.
    pub fn active(&self) -> usize {
        self.subtasks
            .iter()
            .filter(|s| s.status.is_active())
            .count()
    }

    /// How many more may be active now under `parallel`.
    fn room(&self) -> usize {
        match self.spec.parallel {
            0 => usize::MAX,
            p => (p as usize).saturating_sub(self.active()),
        }
    }

    /// The pending subtasks to place now, lowest index first, as many as
    /// `parallel` allows. Empty unless the job is running.
    pub fn next_to_place(&self) -> Vec<usize> {
        if self.status != JobStatus::Running {
            return Vec::new();
        }
        self.subtasks
            .iter()
            .filter(|s| s.status == SubtaskStatus::Pending)
            .map(|s| s.index)
            .take(self.room())
            .collect()
    }

    /// Subtask `i` starts an attempt: pending → placing. `false` (and no
    /// change) unless the job runs, the subtask is pending and `parallel`
    /// has room.
    pub fn placing(&mut self, i: usize) -> bool {
        if self.status != JobStatus::Running || self.room() == 0 {
            return false;
        }
        let max = self.spec.max_attempts;
        let Some(s) = self.subtasks.get_mut(i) else {
            return false;
        };
        if s.status != SubtaskStatus::Pending || s.attempts >= max {
            return false;
        }
        s.status = SubtaskStatus::Placing;
        s.attempts += 1;
        true
    }

    /// The placement of subtask `i` cannot be made now but may later (no
    /// room anywhere): back to pending, without using up the attempt.
    pub fn deferred(&mut self, i: usize) -> bool {
        match self.subtasks.get_mut(i) {
            Some(s) if s.status == SubtaskStatus::Placing => {
                s.status = SubtaskStatus::Pending;
                s.attempts = s.attempts.saturating_sub(1);
                true
            }
            _ => false,
        }
    }

    /// Subtask `i` got a lease and its task was accepted: placing →
    /// running. When the job no longer wants it (it ended meanwhile, or
    /// the subtask is not placing), the answer is the [`Cancel`] to carry
    /// out instead.
    #[must_use = "a returned Cancel must be carried out"]
    pub fn placed(
        &mut self,
        i: usize,
        node_id: NodeId,
        node_name: impl Into<String>,
        allocation_id: impl Into<String>,
        task_id: impl Into<String>,
    ) -> Option<Cancel> {
        let (node_name, allocation_id, task_id) =
            (node_name.into(), allocation_id.into(), task_id.into());
        let running = self.status == JobStatus::Running;
        match self.subtasks.get_mut(i) {
            Some(s) if running && s.status == SubtaskStatus::Placing => {
                s.status = SubtaskStatus::Running;
                s.node_id = Some(node_id);
                s.node_name = Some(node_name);
                s.allocation_id = Some(allocation_id);
                s.task_id = Some(task_id);
                None
            }
            _ => Some(Cancel {
                index: i,
                node_id,
                node_name,
                allocation_id,
                task_id,
            }),
        }
    }

    /// The index of the subtask whose current task is `task_id`.
    pub fn find_task(&self, task_id: &str) -> Option<usize> {
        self.subtasks
            .iter()
            .find(|s| s.status.is_active() && s.task_id.as_deref() == Some(task_id))
            .map(|s| s.index)
    }

    /// The owner reported subtask `i`'s result. Ignored unless the subtask
    /// runs that very task (a late report of an earlier attempt changes
    /// nothing).
    ///
    /// - `succeeded`: the subtask is done; when it is the last, the job
    ///   aggregates and ends.
    /// - `failed`, `timed_out`, `error`: the work itself failed and is not
    ///   retried; the job fails, naming the subtask, and the other running
    ///   subtasks are returned to be cancelled.
    /// - `lease_ended`, `cancelled` (not by this job): like [`lost`]; the
    ///   subtask is placed again while attempts remain.
    ///
    /// [`lost`]: JobState::lost
    #[must_use = "returned Cancels must be carried out"]
    pub fn finished(&mut self, i: usize, result: TaskResult, now_ms: u64) -> Vec<Cancel> {
        if self.status != JobStatus::Running {
            return Vec::new();
        }
        let Some(s) = self.subtasks.get_mut(i) else {
            return Vec::new();
        };
        if s.status != SubtaskStatus::Running || s.task_id.as_deref() != Some(&result.task_id) {
            return Vec::new();
        }
        match result.outcome {
            TaskOutcome::Succeeded => {
                s.history.push(format!("{}: succeeded", s.attempt_label()));
                s.status = SubtaskStatus::Succeeded;
                s.result = Some(result);
                if self
                    .subtasks
                    .iter()
                    .all(|s| s.status == SubtaskStatus::Succeeded)
                {
                    self.complete(now_ms);
                }
                Vec::new()
            }
            TaskOutcome::LeaseEnded | TaskOutcome::Cancelled => {
                let why = match (&result.error, result.outcome) {
                    (Some(e), _) => format!("{}: {}", result.outcome.as_str(), e),
                    (None, TaskOutcome::LeaseEnded) => "the lease ended".to_owned(),
                    (None, _) => "cancelled on the node".to_owned(),
                };
                self.lost(i, &why, now_ms)
            }
            TaskOutcome::Failed | TaskOutcome::TimedOut | TaskOutcome::Error => {
                let what = describe_failure(&result);
                let error = match s.node_label() {
                    Some(node) => format!("subtask {i} failed on {node}: {what}"),
                    None => format!("subtask {i} failed: {what}"),
                };
                s.history.push(format!("{}: {what}", s.attempt_label()));
                s.status = SubtaskStatus::Failed;
                s.result = Some(result);
                self.fail(error, now_ms)
            }
        }
    }

    /// Subtask `i`'s attempt is gone without a result: its node died, its
    /// lease was lost, or its placement failed in a way that should count.
    /// The node goes on the subtask's `avoid` list and the subtask back to
    /// pending while attempts remain; otherwise the job fails (`"subtask 2:
    /// gave up after 3 attempts: node lost"`) and the other running
    /// subtasks are returned to be cancelled. Ignored unless the subtask
    /// is placing or running.
    #[must_use = "returned Cancels must be carried out"]
    pub fn lost(&mut self, i: usize, why: &str, now_ms: u64) -> Vec<Cancel> {
        if self.status != JobStatus::Running {
            return Vec::new();
        }
        let max = self.spec.max_attempts;
        let Some(s) = self.subtasks.get_mut(i) else {
            return Vec::new();
        };
        if !s.status.is_active() {
            return Vec::new();
        }
        s.history.push(format!("{}: {why}", s.attempt_label()));
        if let Some(node) = s.node_id.take() {
            if !s.avoid.contains(&node) {
                s.avoid.push(node);
            }
        }
        s.clear_placement();
        if s.attempts < max {
            s.status = SubtaskStatus::Pending;
            return Vec::new();
        }
        s.status = SubtaskStatus::Failed;
        let error = format!(
            "subtask {i}: gave up after {} attempt{}: {why}",
            s.attempts,
            if s.attempts == 1 { "" } else { "s" }
        );
        self.fail(error, now_ms)
    }

    /// The requester cancels the job. Returns the running tasks to stop;
    /// nothing once the job is over.
    #[must_use = "returned Cancels must be carried out"]
    pub fn cancel(&mut self, now_ms: u64) -> Vec<Cancel> {
        if self.status.is_final() {
            return Vec::new();
        }
        self.status = JobStatus::Cancelled;
        self.finished_at_ms = Some(now_ms);
        self.stop_all("job cancelled")
    }

    /// Whether the job is over (succeeded, failed or cancelled).
    pub fn is_done(&self) -> bool {
        self.status.is_final()
    }

    /// How many subtasks are where.
    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            total: self.subtasks.len(),
            ..Progress::default()
        };
        for s in &self.subtasks {
            match s.status {
                SubtaskStatus::Pending => p.pending += 1,
                SubtaskStatus::Placing => p.placing += 1,
                SubtaskStatus::Running => p.running += 1,
                SubtaskStatus::Succeeded => p.succeeded += 1,
                SubtaskStatus::Failed => p.failed += 1,
                SubtaskStatus::Cancelled => p.cancelled += 1,
            }
        }
        p
    }

    /// `ranked` (candidates in the strategy's order) reordered for subtask
    /// `i`: nodes that were lost under it go last; with `spread`, nodes
    /// already running fewer of this job's subtasks come first. The order
    /// is otherwise kept, and nothing is dropped: an avoided or busy node
    /// is still better than none.
    pub fn rank_candidates(&self, i: usize, ranked: &[NodeId]) -> Vec<NodeId> {
        let avoid = self
            .subtasks
            .get(i)
            .map(|s| s.avoid.as_slice())
            .unwrap_or(&[]);
        let load = |n: &NodeId| {
            if !self.spec.spread {
                return 0;
            }
            self.subtasks
                .iter()
                .filter(|s| s.index != i && s.status.is_active() && s.node_id.as_ref() == Some(n))
                .count()
        };
        let mut keyed: Vec<(bool, usize, usize, &NodeId)> = ranked
            .iter()
            .enumerate()
            .map(|(pos, n)| (avoid.contains(n), load(n), pos, n))
            .collect();
        keyed.sort();
        keyed.into_iter().map(|(_, _, _, n)| n.clone()).collect()
    }

    /// Every subtask succeeded: aggregate, and end the job.
    fn complete(&mut self, now_ms: u64) {
        let mode = self.spec.aggregate;
        let mut outputs = Vec::with_capacity(self.subtasks.len());
        for s in &self.subtasks {
            let r = s.result.as_ref();
            if mode.is_numeric() && r.is_some_and(|r| r.stdout_truncated) {
                let written = r.map_or(0, |r| r.stdout_bytes);
                let _ = self.fail(
                    format!(
                        "subtask {}: its output was cut ({written} bytes written), so it cannot be read as a number; raise the template's max_output",
                        s.index
                    ),
                    now_ms,
                );
                return;
            }
            outputs.push(r.map_or("", |r| r.stdout.as_str()));
        }
        match aggregate(mode, &outputs) {
            Ok(value) => {
                self.status = JobStatus::Succeeded;
                self.result = Some(value);
                self.finished_at_ms = Some(now_ms);
            }
            Err(e) => {
                let _ = self.fail(format!("aggregating with {mode}: {e}"), now_ms);
            }
        }
    }

    /// The job fails with `error`; every unfinished subtask is stopped.
    fn fail(&mut self, error: String, now_ms: u64) -> Vec<Cancel> {
        self.status = JobStatus::Failed;
        self.error = Some(error);
        self.result = None;
        self.finished_at_ms = Some(now_ms);
        self.stop_all("job failed")
    }

    /// Marks every unfinished subtask cancelled; returns the running ones.
    fn stop_all(&mut self, why: &str) -> Vec<Cancel> {
        let mut out = Vec::new();
        for s in &mut self.subtasks {
            match s.status {
                SubtaskStatus::Running => {
                    s.history.push(format!("{}: {why}", s.attempt_label()));
                    if let (Some(node_id), Some(allocation_id), Some(task_id)) = (
                        s.node_id.clone(),
                        s.allocation_id.clone(),
                        s.task_id.clone(),
                    ) {
                        out.push(Cancel {
                            index: s.index,
                            node_id,
                            node_name: s.node_name.clone().unwrap_or_default(),
                            allocation_id,
                            task_id,
                        });
                    }
                    s.status = SubtaskStatus::Cancelled;
                }
                SubtaskStatus::Placing => {
                    s.history.push(format!("{}: {why}", s.attempt_label()));
                    s.status = SubtaskStatus::Cancelled;
                }
                SubtaskStatus::Pending => s.status = SubtaskStatus::Cancelled,
                _ => {}
            }
        }
        out
    }
}

/// What went wrong, for the job's error and the subtask's history:
/// `"exit status 1: Traceback …"`, `"timed out"`, `"could not run: …"`.
fn describe_failure(r: &TaskResult) -> String {
    let mut what = match r.outcome {
        TaskOutcome::TimedOut => "timed out".to_owned(),
        TaskOutcome::Error => format!(
            "could not run: {}",
            r.error.as_deref().unwrap_or("no reason given")
        ),
        _ => match (r.exit_code, r.signal) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => r.outcome.as_str().to_owned(),
        },
    };
    if r.outcome != TaskOutcome::Error {
        if let Some(line) = r
            .stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
        {
            what.push_str(": ");
            what.push_str(&shorten(line, 200));
        }
    }
    what
}

#[cfg(test)]
mod tests {
    use super::super::aggregate::Aggregate;
    use super::super::job::SubtaskSpec;
    use super::*;
    use serde_json::json;

    fn spec(n: usize, parallel: u32, max_attempts: u32, aggregate: Aggregate) -> JobSpec {
        JobSpec {
            name: "t".into(),
            aggregate,
            parallel,
            max_attempts,
            defaults: SubtaskSpec {
                template: Some("square".into()),
                ..SubtaskSpec::default()
            },
            subtasks: vec![SubtaskSpec::default(); n],
            ..JobSpec::default()
        }
    }

    fn node(n: u32) -> NodeId {
        NodeId(format!("node-{n}"))
    }

    fn result(task_id: &str, outcome: TaskOutcome, stdout: &str) -> TaskResult {
        TaskResult {
            task_id: task_id.into(),
            node_id: node(0),
            node_name: "n".into(),
            allocation_id: "a".into(),
            outcome,
            exit_code: match outcome {
                TaskOutcome::Succeeded => Some(0),
                TaskOutcome::Failed => Some(1),
                _ => None,
            },
            signal: None,
            stdout: stdout.into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_bytes: stdout.len() as u64,
            stderr_bytes: 0,
            error: None,
            enforcement: "none".into(),
            accepted_at_ms: 0,
            started_at_ms: 0,
            finished_at_ms: 0,
        }
    }

    /// Places subtask `i` on node `n` with task id `t{i}.{attempt}`.
    fn place(job: &mut JobState, i: usize, n: u32) -> String {
        assert!(job.placing(i), "placing {i}");
        let task = format!("t{i}.{}", job.subtasks[i].attempts);
        assert_eq!(
            job.placed(
                i,
                node(n),
                format!("name-{n}"),
                format!("a{i}"),
                task.clone()
            ),
            None
        );
        task
    }

    #[test]
    fn happy_path_aggregates_in_index_order() {
        let mut job = JobState::new("j1", spec(3, 0, 3, Aggregate::Collect), 100);
        assert_eq!(job.status, JobStatus::Queued);
        assert!(job.next_to_place().is_empty(), "nothing before start");
        assert!(job.start(200));
        assert!(!job.start(201));
        assert_eq!(job.started_at_ms, Some(200));
        assert_eq!(job.next_to_place(), [0, 1, 2]);
        let tasks: Vec<String> = (0..3).map(|i| place(&mut job, i, i as u32)).collect();
        assert_eq!(job.progress().running, 3);
        assert_eq!(job.find_task(&tasks[1]), Some(1));
        // Results arrive out of order.
        for i in [2, 0, 1] {
            let out = format!("out{i}\n");
            let c = job.finished(
                i,
                result(&tasks[i], TaskOutcome::Succeeded, &out),
                300 + i as u64,
            );
            assert!(c.is_empty());
        }
        assert!(job.is_done());
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(job.result, Some(json!(["out0", "out1", "out2"])));
        assert_eq!(job.finished_at_ms, Some(301));
        assert_eq!(job.error, None);
        assert_eq!(job.subtasks[1].history, ["attempt 1 on name-1: succeeded"]);
        let p = job.progress();
        assert_eq!((p.total, p.succeeded, p.done()), (3, 3, 3));
    }

    #[test]
    fn lost_node_is_replaced_elsewhere_and_avoided() {
        let mut job = JobState::new("j", spec(2, 0, 3, Aggregate::Sum), 0);
        job.start(0);
        let t0 = place(&mut job, 0, 1);
        let t1 = place(&mut job, 1, 2);
        assert!(job.lost(0, "node lost", 10).is_empty());
        let s = &job.subtasks[0];
        assert_eq!(s.status, SubtaskStatus::Pending);
        assert_eq!(s.avoid, [node(1)]);
        assert_eq!(s.history, ["attempt 1 on name-1: node lost"]);
        assert_eq!(s.node_id, None);
        assert_eq!(job.next_to_place(), [0]);
        // The lost node is ranked last, and node-2 (busy with subtask 1)
        // after the free node-3.
        assert_eq!(
            job.rank_candidates(0, &[node(1), node(2), node(3)]),
            [node(3), node(2), node(1)]
        );
        // A late result from the lost attempt changes nothing.
        assert!(job
            .finished(0, result(&t0, TaskOutcome::Succeeded, "99"), 11)
            .is_empty());
        assert_eq!(job.subtasks[0].status, SubtaskStatus::Pending);
        let t0b = place(&mut job, 0, 3);
        assert_eq!(job.subtasks[0].attempts, 2);
        let _ = job.finished(1, result(&t1, TaskOutcome::Succeeded, "4"), 12);
        let _ = job.finished(0, result(&t0b, TaskOutcome::Succeeded, "9\n"), 13);
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(job.result, Some(json!(13)));
    }

    #[test]
    fn gives_up_after_max_attempts_and_cancels_the_rest() {
        let mut job = JobState::new("j", spec(3, 0, 2, Aggregate::Collect), 0);
        job.start(0);
        place(&mut job, 0, 1);
        let t1 = place(&mut job, 1, 2);
        assert!(job.lost(0, "node lost", 1).is_empty());
        place(&mut job, 0, 3);
        let cancels = job.lost(0, "lease lost", 2);
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(
            job.error.as_deref(),
            Some("subtask 0: gave up after 2 attempts: lease lost")
        );
        assert_eq!(
            cancels,
            [Cancel {
                index: 1,
                node_id: node(2),
                node_name: "name-2".into(),
                allocation_id: "a1".into(),
                task_id: t1,
            }]
        );
        assert_eq!(job.subtasks[0].status, SubtaskStatus::Failed);
        assert_eq!(job.subtasks[0].avoid, [node(1), node(3)]);
        assert_eq!(job.subtasks[1].status, SubtaskStatus::Cancelled);
        assert_eq!(
            job.subtasks[2].status,
            SubtaskStatus::Cancelled,
            "never started"
        );
        assert!(job.result.is_none());
        assert!(job.next_to_place().is_empty());
        assert!(!job.placing(2));
    }

    #[test]
    fn failed_work_fails_the_job_without_retry() {
        let mut job = JobState::new("j", spec(3, 2, 3, Aggregate::Collect), 0);
        job.start(0);
        let t0 = place(&mut job, 0, 1);
        let t1 = place(&mut job, 1, 2);
        let mut r = result(&t0, TaskOutcome::Failed, "");
        r.exit_code = Some(2);
        r.stderr = "Traceback\nValueError: n must be positive\n\n".into();
        let cancels = job.finished(0, r, 5);
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(
            job.error.as_deref(),
            Some("subtask 0 failed on name-1: exit status 2: ValueError: n must be positive")
        );
        assert_eq!(cancels.len(), 1);
        assert_eq!(cancels[0].task_id, t1);
        assert_eq!(job.subtasks[0].attempts, 1, "not retried");
        assert!(job.subtasks[0].result.is_some(), "the failure is kept");
        assert_eq!(job.subtasks[2].status, SubtaskStatus::Cancelled);

        for (outcome, want) in [
            (
                TaskOutcome::TimedOut,
                "subtask 0 failed on name-1: timed out",
            ),
            (
                TaskOutcome::Error,
                "subtask 0 failed on name-1: could not run: no such program",
            ),
        ] {
            let mut job = JobState::new("j", spec(1, 0, 3, Aggregate::Collect), 0);
            job.start(0);
            let t = place(&mut job, 0, 1);
            let mut r = result(&t, outcome, "");
            r.error = Some("no such program".into());
            let _ = job.finished(0, r, 1);
            assert_eq!(job.error.as_deref(), Some(want));
        }
    }

    #[test]
    fn lease_ended_is_retried_like_a_lost_node() {
        let mut job = JobState::new("j", spec(1, 0, 3, Aggregate::Collect), 0);
        job.start(0);
        let t = place(&mut job, 0, 1);
        assert!(job
            .finished(0, result(&t, TaskOutcome::LeaseEnded, ""), 1)
            .is_empty());
        assert_eq!(job.subtasks[0].status, SubtaskStatus::Pending);
        assert_eq!(
            job.subtasks[0].history,
            ["attempt 1 on name-1: the lease ended"]
        );
        assert_eq!(job.subtasks[0].avoid, [node(1)]);
    }

    #[test]
    fn parallel_limits_active_subtasks() {
        let mut job = JobState::new("j", spec(5, 2, 3, Aggregate::Concat), 0);
        job.start(0);
        assert_eq!(job.next_to_place(), [0, 1]);
        assert!(job.placing(0));
        assert_eq!(job.next_to_place(), [1]);
        assert!(job.placing(3), "any pending one may go");
        assert!(job.next_to_place().is_empty());
        assert!(!job.placing(1), "over the limit");
        // A deferred placement frees its slot and its attempt.
        assert!(job.deferred(3));
        assert_eq!(job.subtasks[3].attempts, 0);
        assert_eq!(job.next_to_place(), [1]);
        let t0 = format!("t0.{}", job.subtasks[0].attempts);
        assert_eq!(job.placed(0, node(1), "n1", "a0", t0.clone()), None);
        let _ = job.finished(0, result(&t0, TaskOutcome::Succeeded, "a"), 1);
        assert_eq!(job.next_to_place(), [1, 2]);
        for i in 1..5 {
            let t = place(&mut job, i, 1);
            let _ = job.finished(i, result(&t, TaskOutcome::Succeeded, "b"), 2);
        }
        assert_eq!(job.result, Some(json!("abbbb")));
    }

    #[test]
    fn cancel_stops_running_tasks_and_late_placements() {
        let mut job = JobState::new("j", spec(3, 0, 3, Aggregate::Collect), 0);
        job.start(0);
        let t0 = place(&mut job, 0, 1);
        assert!(job.placing(1));
        let cancels = job.cancel(9);
        assert_eq!(job.status, JobStatus::Cancelled);
        assert_eq!(job.finished_at_ms, Some(9));
        assert_eq!(cancels.len(), 1);
        assert_eq!(cancels[0].task_id, t0);
        assert_eq!(cancels[0].allocation_id, "a0");
        assert!(job
            .subtasks
            .iter()
            .all(|s| s.status == SubtaskStatus::Cancelled));
        // The placement in flight completes after the cancel: undo it.
        let c = job.placed(1, node(2), "n2", "a1", "t1").expect("cancel it");
        assert_eq!((c.index, c.task_id.as_str()), (1, "t1"));
        assert!(job.cancel(10).is_empty(), "idempotent");
        assert!(job.result.is_none());
        // A queued job cancels too.
        let mut q = JobState::new("q", spec(2, 0, 3, Aggregate::Collect), 0);
        assert!(q.cancel(1).is_empty());
        assert_eq!(q.status, JobStatus::Cancelled);
        assert!(!q.start(2));
    }

    #[test]
    fn aggregate_errors_fail_the_job() {
        let mut job = JobState::new("j", spec(2, 0, 3, Aggregate::Sum), 0);
        job.start(0);
        let t0 = place(&mut job, 0, 1);
        let t1 = place(&mut job, 1, 1);
        let _ = job.finished(0, result(&t0, TaskOutcome::Succeeded, "1"), 1);
        let _ = job.finished(1, result(&t1, TaskOutcome::Succeeded, "lots"), 2);
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(
            job.error.as_deref(),
            Some("aggregating with sum: subtask 1: expected a number to sum, got \"lots\"")
        );
        assert!(job.result.is_none());

        let mut job = JobState::new("j", spec(1, 0, 3, Aggregate::Max), 0);
        job.start(0);
        let t = place(&mut job, 0, 1);
        let mut r = result(&t, TaskOutcome::Succeeded, "12");
        r.stdout_truncated = true;
        r.stdout_bytes = 99;
        let _ = job.finished(0, r, 1);
        assert!(job.error.as_deref().unwrap().contains("its output was cut"));
    }

    #[test]
    fn ignores_calls_that_do_not_fit_the_state() {
        let mut job = JobState::new("j", spec(2, 0, 1, Aggregate::Collect), 0);
        assert!(!job.placing(0), "not started");
        job.start(0);
        assert!(!job.placing(7));
        assert!(!job.deferred(0));
        assert!(job.lost(0, "x", 0).is_empty());
        assert_eq!(job.subtasks[0].status, SubtaskStatus::Pending);
        assert!(
            job.placed(0, node(1), "n", "a", "t").is_some(),
            "not placing"
        );
        let t = place(&mut job, 0, 1);
        assert!(job
            .finished(0, result("other", TaskOutcome::Succeeded, ""), 1)
            .is_empty());
        assert_eq!(job.subtasks[0].status, SubtaskStatus::Running);
        assert!(job
            .finished(1, result(&t, TaskOutcome::Succeeded, ""), 1)
            .is_empty());
        assert_eq!(job.subtasks[1].status, SubtaskStatus::Pending);
    }

    #[test]
    fn rank_candidates_without_spread_keeps_the_strategy_order() {
        let mut s = spec(2, 0, 3, Aggregate::Collect);
        s.spread = false;
        let mut job = JobState::new("j", s, 0);
        job.start(0);
        place(&mut job, 0, 1);
        assert_eq!(
            job.rank_candidates(1, &[node(1), node(2)]),
            [node(1), node(2)]
        );
        job.spec.spread = true;
        assert_eq!(
            job.rank_candidates(1, &[node(1), node(2)]),
            [node(2), node(1)]
        );
    }

    #[test]
    fn round_trips_through_postcard_and_json() {
        let mut spec = JobSpec::from_toml(
            "aggregate = \"collect\"\nstrategy = \"best-fit\"\n[defaults]\ntemplate = \"sq\"\nmemory = \"1GiB\"\n\
             [[subtasks]]\nparams = { n = 1 }\nconstraints = { min_compute_capability = \"8.0\" }\n\
             [[subtasks]]\nparams = { n = 2.5, b = true }",
        )
        .unwrap();
        spec.priority = Priority::Critical;
        let mut job = JobState::new("job-1", spec, 5);
        job.start(6);
        let t0 = place(&mut job, 0, 1);
        let t1 = place(&mut job, 1, 2);
        let _ = job.lost(1, "node lost", 7);
        let t1b = place(&mut job, 1, 3);
        let _ = job.finished(0, result(&t0, TaskOutcome::Succeeded, "x\n"), 8);
        let mid = job.clone();
        let _ = job.finished(1, result(&t1b, TaskOutcome::Succeeded, "y"), 9);
        assert_eq!(job.result, Some(json!(["x", "y"])));
        assert_ne!(t1, t1b);
        for state in [mid, job] {
            let bytes = postcard::to_stdvec(&state).unwrap();
            assert_eq!(postcard::from_bytes::<JobState>(&bytes).unwrap(), state);
            let text = serde_json::to_string(&state).unwrap();
            assert_eq!(serde_json::from_str::<JobState>(&text).unwrap(), state);
        }
        let text = serde_json::to_string(&JobStatus::Succeeded).unwrap();
        assert_eq!(text, "\"succeeded\"");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Start,
            Place(usize),
            Defer(usize),
            Placed(usize, u32),
            Finish(usize, u8),
            Stale(usize),
            Lost(usize),
            Cancel,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                1 => Just(Op::Start),
                6 => (0usize..8).prop_map(Op::Place),
                1 => (0usize..8).prop_map(Op::Defer),
                6 => (0usize..8, 0u32..4).prop_map(|(i, n)| Op::Placed(i, n)),
                6 => (0usize..8, 0u8..6).prop_map(|(i, o)| Op::Finish(i, o)),
                1 => (0usize..8).prop_map(Op::Stale),
                3 => (0usize..8).prop_map(Op::Lost),
                1 => Just(Op::Cancel),
            ]
        }

        const OUTCOMES: [TaskOutcome; 6] = [
            TaskOutcome::Succeeded,
            TaskOutcome::Succeeded,
            TaskOutcome::Succeeded,
            TaskOutcome::Failed,
            TaskOutcome::LeaseEnded,
            TaskOutcome::TimedOut,
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn events_keep_the_invariants(
                n in 1usize..6,
                parallel in 0u32..4,
                max_attempts in 1u32..4,
                sum in any::<bool>(),
                ops in prop::collection::vec(op(), 0..80),
            ) {
                let mode = if sum { Aggregate::Sum } else { Aggregate::Collect };
                let mut job = JobState::new("p", spec(n, parallel, max_attempts, mode), 0);
                let mut seq = 0u64;
                for (now, op) in ops.into_iter().enumerate() {
                    let now = now as u64;
                    let was_final = job.is_done();
                    let running_before: Vec<Option<String>> = job
                        .subtasks
                        .iter()
                        .map(|s| (s.status == SubtaskStatus::Running).then(|| s.task_id.clone().unwrap()))
                        .collect();
                    let cancels = match op {
                        Op::Start => { job.start(now); vec![] }
                        Op::Place(i) => { job.placing(i % n); vec![] }
                        Op::Defer(i) => { job.deferred(i % n); vec![] }
                        Op::Placed(i, node_n) => {
                            let i = i % n;
                            seq += 1;
                            let task = format!("task-{seq}");
                            let was_placing = job.subtasks[i].status == SubtaskStatus::Placing;
                            let back = job.placed(i, node(node_n), "x", format!("a{seq}"), task.clone());
                            prop_assert_eq!(back.is_none(), was_placing && job.status == JobStatus::Running);
                            if let Some(c) = back { prop_assert_eq!(c.task_id, task); }
                            vec![]
                        }
                        Op::Finish(i, o) => {
                            let i = i % n;
                            match job.subtasks[i].task_id.clone() {
                                Some(t) => job.finished(i, result(&t, OUTCOMES[o as usize], "1\n"), now),
                                None => job.finished(i, result("none", OUTCOMES[o as usize], "1"), now),
                            }
                        }
                        Op::Stale(i) => job.finished(i % n, result("stale", TaskOutcome::Failed, ""), now),
                        Op::Lost(i) => job.lost(i % n, "node lost", now),
                        Op::Cancel => job.cancel(now),
                    };

                    // Never more active than `parallel`.
                    if parallel > 0 {
                        prop_assert!(job.active() <= parallel as usize);
                    }
                    // Never beyond max_attempts.
                    for s in &job.subtasks {
                        prop_assert!(s.attempts <= max_attempts);
                        prop_assert!(s.history.len() <= s.attempts as usize);
                        if s.status == SubtaskStatus::Running {
                            prop_assert!(s.task_id.is_some() && s.node_id.is_some());
                        }
                    }
                    // Cancels only for tasks that were running, and only
                    // when the job just ended.
                    for c in &cancels {
                        prop_assert_eq!(running_before[c.index].as_deref(), Some(c.task_id.as_str()));
                    }
                    if !cancels.is_empty() {
                        prop_assert!(job.is_done() && !was_final);
                    }
                    if job.is_done() {
                        prop_assert!(job.finished_at_ms.is_some());
                        prop_assert!(job.subtasks.iter().all(|s| !s.status.is_active()));
                        prop_assert!(job.next_to_place().is_empty());
                        prop_assert_eq!(job.result.is_some(), job.status == JobStatus::Succeeded);
                        prop_assert_eq!(job.error.is_some(), job.status == JobStatus::Failed);
                        if job.status == JobStatus::Succeeded {
                            prop_assert!(job.subtasks.iter().all(|s| s.status == SubtaskStatus::Succeeded));
                            if sum {
                                prop_assert_eq!(job.result.clone(), Some(json!(n)));
                            }
                        }
                    } else {
                        prop_assert!(job.result.is_none() && job.error.is_none());
                    }
                    let p = job.progress();
                    prop_assert_eq!(p.pending + p.placing + p.running + p.done(), n);
                }
            }
        }
    }
}
