//! The steps of running one task on a lease: place the lease, follow the
//! task to its end, carry out cancellations.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::tasks::Cancel;
use crate::handle::{AllocationRequest, AllocationStatus, Node, NodeError, TaskUpdate};
use crate::model::{NodeId, TaskResult};
use crate::net::node::now_ms;
use crate::net::protocol::{TaskRequest, TaskResponse, TaskState};

/// How often a running task is asked after, to catch a lost result push.
const POLL_EVERY: Duration = Duration::from_secs(3);
/// How soon to ask again after a failed ask.
const RETRY_AFTER: Duration = Duration::from_millis(700);
/// Failed asks in a row after which the owner counts as lost.
const LOST_AFTER: u32 = 3;

/// How a task ended, for the requester.
#[derive(Debug)]
pub enum Outcome {
    /// The owner reported a result.
    Finished(Box<TaskResult>),
    /// The owner is gone, or no longer knows the task.
    Lost(String),
    /// No node could take it now (a job may wait for its own subtasks to
    /// free room before counting this as an attempt).
    NoRoom(String),
    /// This node is shutting down; nothing is decided.
    Shutdown,
}

/// A lease to run on.
#[derive(Clone, Debug)]
pub struct LeaseInfo {
    pub node_id: NodeId,
    pub node_name: String,
    pub allocation_id: String,
}

/// Place a lease for `req`, waiting in an owner's queue if it says so.
pub async fn place(node: &Node, req: AllocationRequest) -> Result<LeaseInfo, NodeError> {
    let wait = Duration::from_secs(req.wait_secs.unwrap_or(0) + 5);
    let alloc = node.request(req).await?;
    let info = LeaseInfo {
        node_id: alloc.node_id.clone(),
        node_name: alloc.node_name.clone(),
        allocation_id: alloc.allocation_id.clone(),
    };
    if alloc.status == AllocationStatus::Active {
        return Ok(info);
    }
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let all = node.allocations().await?;
        match all
            .held
            .iter()
            .find(|a| a.allocation_id == info.allocation_id)
        {
            Some(a) if a.status == AllocationStatus::Active => return Ok(info),
            Some(a) if a.status == AllocationStatus::Queued => continue,
            _ => break,
        }
    }
    let _ = node.release(&info.allocation_id).await;
    Err(NodeError::Conflict(format!(
        "the request waited in {}'s queue and was not granted",
        info.node_name
    )))
}

/// A lease this node already holds.
pub async fn held_lease(node: &Node, id: &str) -> Result<LeaseInfo, NodeError> {
    let all = node.allocations().await?;
    match all.held.into_iter().find(|a| a.allocation_id == id) {
        Some(a) if a.status == AllocationStatus::Active => Ok(LeaseInfo {
            node_id: a.node_id,
            node_name: a.node_name,
            allocation_id: a.allocation_id,
        }),
        Some(a) => Err(NodeError::Conflict(format!(
            "allocation {id} is not active ({:?})",
            a.status
        ))),
        None => Err(NodeError::UnknownAllocation(id.to_owned())),
    }
}

/// Follow task `task_id` on `owner` until it ends: pieces go to
/// `on_chunk`; the owner is asked after every few seconds, and at once
/// when the connection to it drops. Three failed asks in a row, or an
/// owner that no longer knows the task, make it lost.
pub async fn follow(
    node: &Node,
    owner: &NodeId,
    task_id: &str,
    mut updates: mpsc::UnboundedReceiver<TaskUpdate>,
    mut on_chunk: impl FnMut(String),
    shutdown: &CancellationToken,
) -> Outcome {
    let mut failures = 0u32;
    let mut open = true;
    let mut next_poll = tokio::time::Instant::now() + POLL_EVERY;
    loop {
        let poll_now = tokio::select! {
            _ = shutdown.cancelled() => return Outcome::Shutdown,
            u = updates.recv(), if open => match u {
                Some(TaskUpdate::Chunk(text)) => {
                    on_chunk(text);
                    false
                }
                Some(TaskUpdate::Finished(r)) => return Outcome::Finished(r),
                Some(TaskUpdate::OwnerDisconnected) => true,
                None => {
                    open = false;
                    true
                }
            },
            _ = tokio::time::sleep_until(next_poll) => true,
        };
        if !poll_now {
            continue;
        }
        let asked = node
            .task_call(
                owner.clone(),
                TaskRequest::Poll {
                    task_id: task_id.to_owned(),
                },
            )
            .await;
        match asked {
            Ok(TaskResponse::Status(TaskState::Finished(r))) => return Outcome::Finished(r),
            Ok(TaskResponse::Status(TaskState::Running { .. })) => {
                failures = 0;
                next_poll = tokio::time::Instant::now() + POLL_EVERY;
            }
            Ok(TaskResponse::Status(TaskState::Unknown)) => {
                return Outcome::Lost(format!(
                    "node {owner} no longer knows the task (it restarted, or forgot it)"
                ))
            }
            Err(NodeError::Stopped) => return Outcome::Shutdown,
            Ok(other) => {
                failures += 1;
                tracing::debug!(task = %task_id, ?other, "unexpected answer to a poll");
                next_poll = tokio::time::Instant::now() + RETRY_AFTER;
            }
            Err(e) => {
                failures += 1;
                if failures >= LOST_AFTER {
                    return Outcome::Lost(format!("lost contact with node {owner}: {e}"));
                }
                next_poll = tokio::time::Instant::now() + RETRY_AFTER;
            }
        }
    }
}

/// Stop tasks a job no longer wants, and give back their leases.
pub async fn carry_out(node: &Node, cancels: Vec<Cancel>) {
    for c in cancels {
        let _ = node
            .task_call(
                c.node_id.clone(),
                TaskRequest::Cancel {
                    task_id: c.task_id.clone(),
                },
            )
            .await;
        let _ = node.release(&c.allocation_id).await;
    }
}

/// The result recorded for a task its owner refused to run because the
/// work itself is wrong (no such template, bad parameters).
pub fn refused_result(task_id: &str, lease: &LeaseInfo, error: String) -> TaskResult {
    let mut r = TaskResult::empty(
        task_id,
        &lease.node_id,
        &lease.node_name,
        &lease.allocation_id,
        now_ms(),
    );
    r.error = Some(error);
    r
}
