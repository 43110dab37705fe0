//! Task runners: one task process on the owner machine, held to its lease.
//!
//! [`run`] starts the program of a [`Launch`] (no shell unless the owner's
//! template names one), captures its output and ends it, and always returns
//! an [`ExecOutcome`]: it never panics, and a program that cannot start is
//! [`ExitKind::SpawnFailed`] with a message that names it.
//!
//! # What holds the process
//!
//! Always, whatever [`Isolation`] says:
//!
//! - **A process group of its own** (`setpgid(0, 0)`). On timeout or cancel
//!   the whole group gets `SIGTERM`, then `SIGKILL` after [`TERM_GRACE`]; when
//!   the program exits by itself, whatever it left behind in the group is
//!   killed too. A process that leaves the group (`setsid`) escapes this;
//!   only a cgroup holds it.
//! - **`PR_SET_PDEATHSIG = SIGKILL`** (Linux): the task dies with the daemon.
//!   The signal follows the *thread* that forked, so every task is forked by
//!   one launcher thread that lives as long as the process.
//! - **`RLIMIT_CORE = 0`**: a crashing task writes no core file.
//! - **The timeout** of the launch, and the caller's cancel token.
//! - **Bounded output**: at most `max_output` bytes of each stream are kept;
//!   the rest is read, counted and dropped, so a chatty task never blocks.
//! - **Kill on drop**: if the future of [`run`] is dropped, the group (and
//!   the cgroup) is killed and the leader reaped in the background.
//!
//! Then, by [`Isolation`]:
//!
//! - **cgroup v2**, when a writable cgroup2 hierarchy has the controllers the
//!   lease needs: each task runs in `<parent>/task-<id>/` with
//!   `cpu.max = "<cores * 100000> 100000"` (a quota of `cores` CPUs, not a
//!   pinning), `memory.max = <memory_mb> MiB`, `memory.swap.max = 0` and
//!   `memory.oom.group = 1`. The parent is `tasks.cgroup_parent` (a cgroup an
//!   administrator delegated to the daemon), else `<own cgroup>/lanswarm-tasks`.
//!   cgroup v2 lets a cgroup hand controllers to its children only while it
//!   holds no processes itself (the root excepted), so the default parent
//!   works where the daemon runs in the root cgroup or where the controllers
//!   are already enabled below it; the daemon is never moved. At the end the
//!   cgroup is emptied with `cgroup.kill` (or a `SIGKILL` per pid) and
//!   removed, which also catches processes that left the process group.
//! - **setrlimit**, when cgroup v2 cannot hold the task: `RLIMIT_AS =
//!   memory_mb MiB`. `RLIMIT_AS` caps *virtual* memory, so it is coarse: a
//!   program that maps much more than it touches (JIT runtimes, CUDA) fails
//!   under it sooner than its real use says. CPU cores cannot be held by
//!   setrlimit at all; the outcome's `enforcement` says so.
//!
//! [`Isolation::Auto`] (the default) tries cgroup v2 and falls back to
//! setrlimit, saying why in `enforcement`; [`Isolation::Cgroup`] fails the
//! launch when cgroup v2 cannot hold it; [`Isolation::Rlimit`] skips cgroups;
//! [`Isolation::None`] applies only the protections listed under "Always".
//!
//! # Layout
//!
//! - `limits.rs`: choosing the mechanism, cgroup v2 detection and the task
//!   cgroup, the text of `enforcement`.
//! - `process.rs`: spawning, output capture, waiting, killing and reaping.

mod limits;
pub mod orphans;
mod process;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use process::TERM_GRACE;

/// The time a task gets from a `Launch::new` when the caller sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The bytes kept per stream from a `Launch::new` when the caller sets none.
pub const DEFAULT_MAX_OUTPUT: usize = 1024 * 1024;

/// `PATH` for a task when the daemon has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// One task process to run.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The task's id, for the cgroup name and logs. Characters outside
    /// `[A-Za-z0-9_-]` are replaced by `_` where it names a cgroup.
    pub task_id: String,
    /// The program and its arguments. `argv[0]` is looked up in the `PATH`
    /// of [`Launch::env`], as `std::process::Command` does; it is never run
    /// through a shell unless the owner's template names one.
    pub argv: Vec<String>,
    /// The complete environment of the task: nothing of the daemon's own
    /// environment is passed on. Start from [`base_env`].
    pub env: Vec<(String, String)>,
    /// The working directory; the daemon's when `None`.
    pub workdir: Option<PathBuf>,
    /// The task is killed after this long ([`ExitKind::TimedOut`]).
    pub timeout: Duration,
    /// Bytes kept per stream (stdout, stderr); the rest is read and counted.
    pub max_output: usize,
    /// What the lease granted.
    pub limits: ResourceLimits,
    /// How to hold the task to `limits` (config `tasks.isolation`).
    pub isolation: Isolation,
    /// A cgroup v2 directory delegated to the daemon, under which task
    /// cgroups are made (config `tasks.cgroup_parent`); when `None`,
    /// `<own cgroup>/lanswarm-tasks`.
    pub cgroup_parent: Option<PathBuf>,
}

impl Launch {
    /// A launch of `argv` with [`base_env`], no limits, [`Isolation::Auto`],
    /// [`DEFAULT_TIMEOUT`] and [`DEFAULT_MAX_OUTPUT`].
    pub fn new(task_id: impl Into<String>, argv: Vec<String>) -> Self {
        Launch {
            task_id: task_id.into(),
            argv,
            env: base_env(),
            workdir: None,
            timeout: DEFAULT_TIMEOUT,
            max_output: DEFAULT_MAX_OUTPUT,
            limits: ResourceLimits::default(),
            isolation: Isolation::default(),
            cgroup_parent: None,
        }
    }
}

/// The resources a lease granted; `0` means no limit in that dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// CPU cores: a quota of this many CPUs' time (cgroup `cpu.max`).
    pub cpu_cores: u32,
    /// Memory in MiB (cgroup `memory.max`, or `RLIMIT_AS`).
    pub memory_mb: u64,
}

/// How a task is held to its limits (config `tasks.isolation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// cgroup v2 where it can hold the task, else setrlimit.
    #[default]
    Auto,
    /// cgroup v2 only: a launch it cannot hold fails.
    Cgroup,
    /// setrlimit only (memory as `RLIMIT_AS`; CPU not limited).
    Rlimit,
    /// No limits; process group, death signal and timeout only.
    None,
}

/// How the task's process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it (not one of ours: a timeout or cancel says so).
    Signaled(i32),
    /// It ran past `timeout` and was killed.
    TimedOut,
    /// The cancel token fired and it was killed.
    Cancelled,
    /// It could not be started; the text names the program and the reason.
    SpawnFailed(String),
}

impl ExitKind {
    /// The exit status, when the process exited by itself.
    pub fn code(&self) -> Option<i32> {
        match self {
            ExitKind::Exited(code) => Some(*code),
            _ => None,
        }
    }

    /// The signal, when one the daemon did not send ended the process.
    pub fn signal(&self) -> Option<i32> {
        match self {
            ExitKind::Signaled(sig) => Some(*sig),
            _ => None,
        }
    }

    /// Exit status 0.
    pub fn success(&self) -> bool {
        *self == ExitKind::Exited(0)
    }
}

/// What [`run`] saw of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutcome {
    pub exit: ExitKind,
    /// At most `max_output` bytes of each stream, from the start.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Whether the stream had more than was kept.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Bytes the task wrote to each stream, kept or not.
    pub stdout_total: u64,
    pub stderr_total: u64,
    /// What held the process, in words: the cgroup and its limits, the
    /// rlimits (and why not a cgroup), or `none`.
    pub enforcement: String,
    /// The pid of the task's first process, which is also its process group
    /// id; `None` when it did not start. Gone once `run` returns.
    pub pid: Option<u32>,
    /// When it was started and when `run` finished, ms since the Unix epoch.
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

/// Runs one task process to its end, held to the lease (see the module
/// docs), and returns what happened. Never panics.
///
/// When `cancel` fires, the task is killed and the outcome is
/// [`ExitKind::Cancelled`]. After a timeout or cancel, `run` returns within
/// about [`TERM_GRACE`] plus a second, even for a process that ignores
/// `SIGTERM`. When it returns, no process of the task's process group (nor,
/// with a cgroup, of its cgroup) is left running.
///
/// Needs a tokio runtime with IO and time enabled (as `#[tokio::main]` and
/// `#[tokio::test]` build): output pipes and the exit are watched by its
/// reactor.
pub async fn run(launch: Launch, cancel: CancellationToken) -> ExecOutcome {
    process::run(launch, cancel).await
}

/// The variable that shows a task the GPUs of its lease, by index:
/// `("CUDA_VISIBLE_DEVICES", "0,2")`. With no GPUs the value is empty, which
/// hides every GPU (as Slurm does).
pub fn gpu_env(indices: &[u32]) -> (String, String) {
    let list: Vec<String> = indices.iter().map(u32::to_string).collect();
    ("CUDA_VISIBLE_DEVICES".to_string(), list.join(","))
}

/// The environment every task starts from: the daemon's `PATH` (or
/// [`DEFAULT_PATH`]), and `HOME` and `LANG` where the daemon has them.
/// The caller adds the template's variables, [`gpu_env`],
/// `LANSWARM_ALLOCATION_ID` and `LANSWARM_TASK_ID`.
pub fn base_env() -> Vec<(String, String)> {
    let path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let mut env = vec![("PATH".to_string(), path)];
    for key in ["HOME", "LANG"] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.to_string(), value));
        }
    }
    env
}

/// `task_id` reduced to `[A-Za-z0-9_-]` (others become `_`), at most 64
/// characters, never empty: safe as a cgroup directory name.
pub fn sanitize_task_id(task_id: &str) -> String {
    let safe: String = task_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "task".to_string()
    } else {
        safe
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
