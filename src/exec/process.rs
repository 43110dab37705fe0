//! Spawning, watching and ending one task process.
//!
//! The process is forked by a launcher thread that lives as long as the
//! daemon (so `PR_SET_PDEATHSIG`, which follows the forking *thread*, means
//! "dies with the daemon"). Its stdout and stderr are non-blocking pipes read
//! on the runtime; its exit is seen through a pidfd (or `waitid(WNOWAIT)`
//! polling where pidfds are missing) *without reaping it*, so the process
//! group is killed while its id cannot yet have been reused; then the leader
//! is reaped. `std::process` rather than `tokio::process` because the crate
//! builds tokio without its `process` feature; [`Running`]'s `Drop` gives the
//! `kill_on_drop` behaviour.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::limits::{self, Plan, TaskCgroup};
use super::{now_ms, ExecOutcome, ExitKind, Launch};

/// After `SIGTERM` on timeout or cancel, how long the task has before
/// `SIGKILL`.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// After the kill, how long processes of the group may take to die.
const GROUP_GONE_BOUND: Duration = Duration::from_millis(500);

/// After the group is gone, how long output may still be read. Pipes held by
/// a process that left the group (and no cgroup) are given up after this.
const OUTPUT_DRAIN_BOUND: Duration = Duration::from_millis(500);

/// How long reaping the killed leader may take before it is left to a
/// background thread.
const REAP_BOUND: Duration = Duration::from_secs(1);

/// How often exit is polled where there is no pidfd.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// Retry interval of the short loops after the kill.
const RETRY: Duration = Duration::from_millis(10);

/// Bytes read from a pipe at once.
const READ_CHUNK: usize = 64 * 1024;

/// Reads a pipe may still do once told to stop (what is already buffered).
const FINAL_READS: usize = 16;

/// See [`super::run`].
pub(crate) async fn run(launch: Launch, cancel: CancellationToken) -> ExecOutcome {
    let started_at_ms = now_ms();
    let Some(program) = launch.argv.first().cloned() else {
        return failed(
            "cannot start a task with an empty argv".into(),
            "none",
            started_at_ms,
        );
    };
    if let Some(dir) = &launch.workdir {
        if !dir.is_dir() {
            return failed(
                format!(
                    "cannot start `{program}`: working directory {} is not a directory",
                    dir.display()
                ),
                "none",
                started_at_ms,
            );
        }
    }
    if cancel.is_cancelled() {
        let mut outcome = failed(String::new(), "none", started_at_ms);
        outcome.exit = ExitKind::Cancelled;
        return outcome;
    }
    let Plan {
        mut cgroup,
        rlimit_as,
        enforcement,
    } = match limits::plan(&launch) {
        Ok(plan) => plan,
        Err(why) => {
            return failed(
                format!("cannot start `{program}`: {why}"),
                "none",
                started_at_ms,
            )
        }
    };

    let procs = cgroup.as_mut().and_then(TaskCgroup::take_procs);
    let cmd = command(&launch, &program, procs, rlimit_as);

    let started_at_ms = now_ms();
    let mut child = match spawn(cmd).await {
        Ok(child) => child,
        Err(e) => {
            if let Some(cg) = cgroup {
                cg.remove().await;
            }
            return failed(
                format!("cannot start `{program}`: {e}"),
                &enforcement,
                started_at_ms,
            );
        }
    };
    let pid = child.id();
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    let mut task = Running {
        pgid: libc::pid_t::try_from(pid).unwrap_or(0),
        child: Some(child),
        cgroup,
        stop: CancellationToken::new(),
        finished: false,
    };
    tracing::debug!(task_id = %launch.task_id, pid, %enforcement, "task started");

    let readers = match (pipe_reader(stdout), pipe_reader(stderr)) {
        (Ok(out), Ok(err)) => {
            [out, err].map(|pipe| tokio::spawn(capture(pipe, launch.max_output, task.stop.clone())))
        }
        (Err(e), _) | (_, Err(e)) => {
            task.kill_all();
            task.reap().await;
            task.finish().await;
            let mut outcome = failed(
                format!("cannot read the output of `{program}`: {e}"),
                &enforcement,
                started_at_ms,
            );
            outcome.pid = Some(pid);
            return outcome;
        }
    };

    let exit = ExitWatch::new(pid);
    let verdict = tokio::select! {
        biased;
        () = exit.wait() => None,
        () = cancel.cancelled() => Some(ExitKind::Cancelled),
        () = tokio::time::sleep(launch.timeout) => Some(ExitKind::TimedOut),
    };
    if verdict.is_some() {
        signal_group(task.pgid, libc::SIGTERM);
        let _ = tokio::time::timeout(TERM_GRACE, exit.wait()).await;
    }
    // The leader has exited but is not reaped, so its pid is still the
    // group's: kill what it left behind, or everything after a timeout.
    task.kill_all();
    let status = task.reap().await;
    task.wait_gone().await;
    let [stdout, stderr] = collect(readers, &task.stop).await;
    task.finish().await;

    let exit = verdict.unwrap_or(match status {
        Some(status) => exit_kind(status),
        None => ExitKind::Signaled(libc::SIGKILL),
    });
    tracing::debug!(task_id = %launch.task_id, pid, ?exit, "task ended");
    ExecOutcome {
        exit,
        stdout_truncated: stdout.truncated(),
        stderr_truncated: stderr.truncated(),
        stdout_total: stdout.total,
        stderr_total: stderr.total,
        stdout: stdout.kept,
        stderr: stderr.kept,
        enforcement,
        pid: Some(pid),
        started_at_ms,
        finished_at_ms: now_ms(),
    }
}

/// The task's command: its own environment and process group, null stdin,
/// piped output, and [`child_setup`] between fork and exec.
fn command(launch: &Launch, program: &str, procs: Option<File>, rlimit_as: Option<u64>) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(launch.argv.iter().skip(1))
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = &launch.workdir {
        cmd.current_dir(dir);
    }
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: `child_setup` makes only async-signal-safe calls (write,
    // prctl, getppid, getrlimit, setrlimit) and allocates nothing. The
    // closure owns `procs`, so the descriptor stays open until the fork.
    unsafe {
        cmd.pre_exec(move || {
            child_setup(parent, procs.as_ref().map(AsRawFd::as_raw_fd), rlimit_as)
        });
    }
    cmd
}

/// An outcome for a task that did not run.
fn failed(message: String, enforcement: &str, started_at_ms: u64) -> ExecOutcome {
    ExecOutcome {
        exit: ExitKind::SpawnFailed(message),
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        stdout_total: 0,
        stderr_total: 0,
        enforcement: enforcement.to_string(),
        pid: None,
        started_at_ms,
        finished_at_ms: now_ms(),
    }
}

fn exit_kind(status: ExitStatus) -> ExitKind {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitKind::Exited(code),
        (None, Some(sig)) => ExitKind::Signaled(sig),
        (None, None) => ExitKind::Exited(-1),
    }
}

/// In the child, between fork and exec. Only async-signal-safe calls.
fn child_setup(
    parent: libc::pid_t,
    procs: Option<RawFd>,
    rlimit_as: Option<u64>,
) -> io::Result<()> {
    if let Some(fd) = procs {
        // Writing "0" to cgroup.procs moves the writing process.
        // SAFETY: write(2) of a 1-byte static buffer to an fd we own.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(2) and getppid(2) are plain system calls.
        unsafe {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) == -1
            {
                return Err(io::Error::last_os_error());
            }
            // The daemon died before the prctl: the signal will not come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
    set_rlimit(libc::RLIMIT_CORE, 0)?;
    if let Some(bytes) = rlimit_as {
        set_rlimit(libc::RLIMIT_AS, bytes)?;
    }
    Ok(())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type RlimitResource = libc::c_int;

/// Lowers a limit to `value` (never above the current hard limit, which an
/// unprivileged process may not raise).
fn set_rlimit(resource: RlimitResource, value: u64) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(resource, &mut current) == -1 {
            return Err(io::Error::last_os_error());
        }
        let value = libc::rlim_t::try_from(value).unwrap_or(libc::RLIM_INFINITY);
        let value = if current.rlim_max == libc::RLIM_INFINITY {
            value
        } else {
            value.min(current.rlim_max)
        };
        let new = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        if libc::setrlimit(resource, &new) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

type SpawnJob = (Command, oneshot::Sender<io::Result<Child>>);

/// Forks `cmd` on the launcher thread (or here, if it cannot be started).
async fn spawn(cmd: Command) -> io::Result<Child> {
    static LAUNCHER: OnceLock<Option<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let launcher = LAUNCHER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("lanswarm-launcher".to_string())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    if let Err(Ok(mut child)) = reply.send(cmd.spawn()) {
                        // Nobody waits for it any more: end it.
                        signal_group(
                            libc::pid_t::try_from(child.id()).unwrap_or(0),
                            libc::SIGKILL,
                        );
                        let _ = child.wait();
                    }
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(launcher) = launcher else {
        let mut cmd = cmd;
        return cmd.spawn();
    };
    let (tx, rx) = oneshot::channel();
    if let Err(mpsc::SendError((mut cmd, _))) = launcher.send((cmd, tx)) {
        return cmd.spawn();
    }
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("the launcher thread is gone")))
}

/// `kill(-pgid, sig)`; nothing for a pgid that is not a real group.
fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: killpg(2) on the task's own process group.
        unsafe { libc::killpg(pgid, sig) };
    }
}

/// Whether a process of group `pgid` is still running (zombies waiting for
/// their new parent to reap them do not count).
pub(crate) fn group_alive(pgid: libc::pid_t) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: signal 0 only checks that the group exists.
    if unsafe { libc::kill(-pgid, 0) } == -1
        && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false; // Cannot tell apart; the kill was sent.
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            // "pid (comm) state ppid pgrp ...": comm may hold spaces.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let pgrp = fields.nth(1).and_then(|p| p.parse::<libc::pid_t>().ok());
            pgrp == Some(pgid) && state != "Z" && state != "X"
        })
}

/// A started task: its group, leader and cgroup. Dropped before
/// [`Running::finish`] (the future of `run` was dropped), it kills them all.
struct Running {
    pgid: libc::pid_t,
    /// The leader, until reaped.
    child: Option<Child>,
    cgroup: Option<TaskCgroup>,
    /// Tells the output readers to stop.
    stop: CancellationToken,
    /// [`Running::finish`] ran: nothing is left to clean up.
    finished: bool,
}

impl Running {
    /// SIGKILL to the group and the cgroup.
    fn kill_all(&self) {
        signal_group(self.pgid, libc::SIGKILL);
        if let Some(cg) = &self.cgroup {
            cg.kill();
        }
    }

    /// Reaps the leader (which has exited or been killed), waiting at most
    /// [`REAP_BOUND`].
    async fn reap(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + REAP_BOUND;
        loop {
            let child = self.child.as_mut()?;
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(RETRY).await,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(pid = child.id(), error = %e, "cannot reap task process");
                    self.child = None;
                    return None;
                }
            }
        }
    }

    /// Waits, at most [`GROUP_GONE_BOUND`], until no process of the group or
    /// the cgroup runs, killing again meanwhile.
    async fn wait_gone(&self) {
        let deadline = Instant::now() + GROUP_GONE_BOUND;
        loop {
            let group = self.child.is_some() || group_alive(self.pgid);
            let cgroup = self.cgroup.as_ref().is_some_and(|cg| !cg.is_empty());
            if !group && !cgroup {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(pgid = self.pgid, "task processes still there after SIGKILL");
                return;
            }
            self.kill_all();
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Removes the cgroup and hands a leader that could not be reaped to a
    /// background thread.
    async fn finish(&mut self) {
        self.finished = true;
        self.stop.cancel();
        if let Some(cg) = self.cgroup.take() {
            cg.remove().await;
        }
        if let Some(child) = self.child.take() {
            reap_in_background(child);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        if self.finished {
            return;
        }
        // Kill the group only while its id is surely ours: the leader is
        // unreaped, or members are still running.
        if self.child.is_some() || group_alive(self.pgid) {
            signal_group(self.pgid, libc::SIGKILL);
        }
        // Dropping the cgroup kills what is in it and removes it.
        self.cgroup = None;
        if let Some(child) = self.child.take() {
            reap_in_background(child);
        }
    }
}

fn reap_in_background(mut child: Child) {
    let _ = child.kill();
    let _ = std::thread::Builder::new()
        .name("lanswarm-reap".to_string())
        .spawn(move || child.wait());
}

/// Sees the leader exit without reaping it.
struct ExitWatch {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl ExitWatch {
    fn new(pid: u32) -> Self {
        ExitWatch {
            pid,
            pidfd: pidfd_open(pid).and_then(|fd| register(fd).ok()),
        }
    }

    /// Returns once the leader has exited; at once on every later call.
    async fn wait(&self) {
        if let Some(fd) = &self.pidfd {
            // A pidfd is readable once the process has exited. The guard
            // is dropped without clearing, so later calls return at once.
            if fd.readable().await.is_ok() {
                return;
            }
        }
        while !has_exited(self.pid) {
            tokio::time::sleep(EXIT_POLL).await;
        }
    }
}

#[cfg(target_os = "linux")]
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open(2) returns a new fd (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn pidfd_open(_pid: u32) -> Option<OwnedFd> {
    None
}

/// Whether our child `pid` has exited, leaving it unreaped.
fn has_exited(pid: u32) -> bool {
    let id = libc::id_t::from(pid);
    // SAFETY: an all-zero siginfo_t is valid; waitid(2) fills it in.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            id,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // -1 is ECHILD (already reaped) or EINVAL: nothing left to wait for.
        r == -1 || info.si_pid() != 0
    }
}

/// A non-blocking pipe on the runtime's reactor.
fn pipe_reader(fd: Option<OwnedFd>) -> io::Result<AsyncFd<File>> {
    let fd = fd.ok_or_else(|| io::Error::other("pipe missing"))?;
    // SAFETY: fcntl(2) on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags == -1 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == -1
        {
            return Err(io::Error::last_os_error());
        }
    }
    register(File::from(fd))
}

/// Registers an owned descriptor with the runtime's reactor, for reading.
fn register<T: AsRawFd>(owned: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `owned` (an `OwnedFd` or a `File`) owns its descriptor, which
    // stays open and the same until the `AsyncFd` is dropped.
    unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// What was read from one stream.
#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    total: u64,
}

impl Captured {
    fn push(&mut self, data: &[u8], max: usize) {
        self.total = self.total.saturating_add(data.len() as u64);
        let room = max.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }
}

/// Reads `pipe` to its end (or until `stop`), keeping the first `max`
/// bytes and counting all.
async fn capture(pipe: AsyncFd<File>, max: usize, stop: CancellationToken) -> Captured {
    let mut captured = Captured::default();
    let mut buf = vec![0; READ_CHUNK];
    let stopped = loop {
        let read = tokio::select! {
            biased;
            () = stop.cancelled() => break true,
            read = read_some(&pipe, &mut buf) => read,
        };
        match read {
            Ok(0) => break false,
            Ok(n) => captured.push(&buf[..n], max),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    if stopped {
        // Keep what is already in the pipe.
        let mut file: &File = pipe.get_ref();
        for _ in 0..FINAL_READS {
            match file.read(&mut buf) {
                Ok(n) if n > 0 => captured.push(&buf[..n], max),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
    }
    captured
}

async fn read_some(pipe: &AsyncFd<File>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = pipe.readable().await?;
        if let Ok(read) = guard.try_io(|fd| {
            let mut file: &File = fd.get_ref();
            file.read(buf)
        }) {
            return read;
        }
    }
}

/// Both streams' captures, waiting at most [`OUTPUT_DRAIN_BOUND`] for their
/// ends before telling the readers to stop.
async fn collect(readers: [JoinHandle<Captured>; 2], stop: &CancellationToken) -> [Captured; 2] {
    let [out, err] = readers;
    let both = async { tokio::join!(out, err) };
    tokio::pin!(both);
    let (out, err) = tokio::select! {
        both = &mut both => both,
        () = tokio::time::sleep(OUTPUT_DRAIN_BOUND) => {
            stop.cancel();
            both.await
        }
    };
    [out.unwrap_or_default(), err.unwrap_or_default()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_is_seen_without_reaping() {
        // The fallback of ExitWatch where there is no pidfd.
        let mut child = Command::new("true").spawn().expect("spawn true");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !has_exited(child.id()) {
            assert!(Instant::now() < deadline, "exit not seen");
            std::thread::sleep(RETRY);
        }
        assert!(has_exited(child.id()), "seen again on a second look");
        let status = child.try_wait().expect("try_wait").expect("left to reap");
        assert!(status.success());
    }

    #[test]
    fn capture_keeps_the_first_bytes_and_counts_all() {
        let mut captured = Captured::default();
        captured.push(b"abcdef", 4);
        captured.push(b"gh", 4);
        assert_eq!(captured.kept, b"abcd");
        assert_eq!(captured.total, 8);
        assert!(captured.truncated());
    }
}
