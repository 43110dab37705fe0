//! The requester node's queue of jobs waiting to start: higher priority
//! first, first come first served within a priority.

use serde::{Deserialize, Serialize};

use crate::model::Priority;

/// A job waiting in the [`JobQueue`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedJob {
    pub id: String,
    pub priority: Priority,
    /// Submission order: lower goes first among equal priorities. The
    /// caller hands out increasing numbers (and keeps them across
    /// restarts, so the order survives).
    pub seq: u64,
}

impl QueuedJob {
    fn key(&self) -> (std::cmp::Reverse<Priority>, u64) {
        (std::cmp::Reverse(self.priority), self.seq)
    }
}

/// Jobs waiting to start, kept in start order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobQueue {
    entries: Vec<QueuedJob>,
}

impl JobQueue {
    pub fn new() -> Self {
        JobQueue::default()
    }

    /// Adds a job (or moves it, if its id is already queued).
    pub fn push(&mut self, id: impl Into<String>, priority: Priority, seq: u64) {
        let job = QueuedJob {
            id: id.into(),
            priority,
            seq,
        };
        self.remove(&job.id);
        let at = self.entries.partition_point(|e| e.key() <= job.key());
        self.entries.insert(at, job);
    }

    /// The next job to start, taken out of the queue, when fewer than
    /// `max_running` jobs run now (`max_running == 0`: no limit).
    pub fn pop_ready(&mut self, running_now: usize, max_running: usize) -> Option<String> {
        if self.entries.is_empty() || (max_running != 0 && running_now >= max_running) {
            return None;
        }
        Some(self.entries.remove(0).id)
    }

    /// The job that would start next.
    pub fn peek(&self) -> Option<&QueuedJob> {
        self.entries.first()
    }

    /// Takes a job out (cancelled while waiting). `false` if not queued.
    pub fn remove(&mut self, id: &str) -> bool {
        match self.entries.iter().position(|e| e.id == id) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// The job's 1-based place in start order, if it waits.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.id == id).map(|i| i + 1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The waiting jobs in start order.
    pub fn iter(&self) -> impl Iterator<Item = &QueuedJob> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn priority_first_then_fifo() {
        let mut q = JobQueue::new();
        q.push("low", Priority::Low, 1);
        q.push("n1", Priority::Normal, 2);
        q.push("crit", Priority::Critical, 3);
        q.push("n2", Priority::Normal, 4);
        q.push("high", Priority::High, 5);
        assert_eq!(q.len(), 5);
        assert_eq!(q.position("crit"), Some(1));
        assert_eq!(q.position("n2"), Some(4));
        assert_eq!(q.position("nope"), None);
        assert_eq!(q.peek().map(|j| j.id.as_str()), Some("crit"));
        let order: Vec<String> = std::iter::from_fn(|| q.pop_ready(0, 0)).collect();
        assert_eq!(order, ["crit", "high", "n1", "n2", "low"]);
        assert!(q.is_empty());
    }

    #[test]
    fn respects_the_running_limit_and_removal() {
        let mut q = JobQueue::new();
        q.push("a", Priority::Normal, 1);
        q.push("b", Priority::Normal, 2);
        assert_eq!(q.pop_ready(2, 2), None);
        assert_eq!(q.pop_ready(1, 2).as_deref(), Some("a"));
        assert!(q.remove("b"));
        assert!(!q.remove("b"));
        assert_eq!(q.pop_ready(0, 1), None);
        // Pushing a queued id again moves it.
        q.push("x", Priority::Low, 3);
        q.push("y", Priority::Low, 4);
        q.push("x", Priority::High, 3);
        assert_eq!(q.len(), 2);
        assert_eq!(q.position("x"), Some(1));
        let bytes = postcard::to_stdvec(&q).unwrap();
        assert_eq!(postcard::from_bytes::<JobQueue>(&bytes).unwrap(), q);
    }

    proptest! {
        #[test]
        fn pops_in_priority_then_seq_order(jobs in prop::collection::vec((0usize..4, any::<u16>()), 0..40)) {
            let mut q = JobQueue::new();
            for (i, (p, _)) in jobs.iter().enumerate() {
                q.push(format!("j{i}"), Priority::ALL[*p], i as u64);
            }
            let mut last: Option<(std::cmp::Reverse<Priority>, u64)> = None;
            while let Some(id) = q.pop_ready(0, 0) {
                let i: usize = id[1..].parse().unwrap();
                let key = (std::cmp::Reverse(Priority::ALL[jobs[i].0]), i as u64);
                prop_assert!(last.is_none_or(|l| l < key));
                last = Some(key);
            }
        }
    }
}
