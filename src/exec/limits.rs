//! What holds a task to its lease: a cgroup v2 directory when the
//! hierarchy is writable and has the controllers the lease needs, else
//! setrlimit; and the words for the outcome's `enforcement`.
//!
//! The default parent of task cgroups (`<own cgroup>/lanswarm-tasks`) is
//! found and prepared once per process; whether it can hold a given launch
//! is checked per launch, so a failure (a missing controller, a cgroup that
//! cannot be made) falls back or fails that launch only.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{sanitize_task_id, Isolation, Launch, ResourceLimits};

/// The directory made under the daemon's own cgroup for task cgroups.
pub(crate) const TASKS_DIR: &str = "lanswarm-tasks";

/// The period of `cpu.max`, in µs; the quota is `cores` times this.
const CPU_PERIOD_US: u64 = 100_000;

/// The controllers a lease can need.
const CONTROLLERS: [&str; 2] = ["cpu", "memory"];

/// How long removing a task cgroup may wait for its processes to go.
const REMOVE_BOUND: Duration = Duration::from_secs(1);

/// How often the cgroup is checked again while it empties.
const REMOVE_RETRY: Duration = Duration::from_millis(10);

/// How a launch will be held, decided before the fork.
pub(crate) struct Plan {
    /// The task's cgroup, made and configured, when cgroup v2 holds it.
    pub cgroup: Option<TaskCgroup>,
    /// `RLIMIT_AS` in bytes, when setrlimit holds its memory.
    pub rlimit_as: Option<u64>,
    /// The outcome's `enforcement` text.
    pub enforcement: String,
}

/// Chooses the mechanism for `launch` by its [`Isolation`]. An error is the
/// reason the launch must not start ([`Isolation::Cgroup`] only).
pub(crate) fn plan(launch: &Launch) -> Result<Plan, String> {
    let limits = launch.limits;
    match launch.isolation {
        Isolation::None => Ok(Plan {
            cgroup: None,
            rlimit_as: None,
            enforcement: "none (isolation = none: process group, RLIMIT_CORE 0 and timeout only)"
                .to_string(),
        }),
        Isolation::Rlimit => Ok(rlimit_plan(limits, "isolation = rlimit")),
        Isolation::Cgroup => cgroup_plan(launch).map_err(|why| {
            format!("isolation = cgroup, but cgroup v2 cannot hold this task: {why}")
        }),
        Isolation::Auto => Ok(cgroup_plan(launch)
            .unwrap_or_else(|why| rlimit_plan(limits, &format!("cgroup v2 not usable: {why}")))),
    }
}

/// setrlimit: `RLIMIT_AS` for memory (virtual memory, so a coarse cap),
/// `RLIMIT_CORE 0`; CPU cannot be held this way.
fn rlimit_plan(limits: ResourceLimits, why: &str) -> Plan {
    let mut held = Vec::new();
    let rlimit_as = (limits.memory_mb > 0).then(|| {
        held.push(format!("RLIMIT_AS {} MiB", limits.memory_mb));
        limits.memory_mb.saturating_mul(1 << 20)
    });
    held.push("RLIMIT_CORE 0".to_string());
    let mut enforcement = format!("setrlimit: {}", held.join(", "));
    if limits.cpu_cores > 0 {
        enforcement.push_str("; cpu not limited without cgroup v2");
    }
    enforcement.push_str(&format!(" ({why})"));
    Plan {
        cgroup: None,
        rlimit_as,
        enforcement,
    }
}

/// cgroup v2: a configured task cgroup under the launch's parent.
fn cgroup_plan(launch: &Launch) -> Result<Plan, String> {
    let parent = match &launch.cgroup_parent {
        Some(dir) => Parent::explicit(dir)?,
        None => default_parent()?.clone(),
    };
    let (cgroup, held) =
        TaskCgroup::create(&parent, &sanitize_task_id(&launch.task_id), launch.limits)?;
    let enforcement = format!(
        "cgroup v2 {}: {}; RLIMIT_CORE 0",
        cgroup.dir().display(),
        held.join(", ")
    );
    Ok(Plan {
        cgroup: Some(cgroup),
        rlimit_as: None,
        enforcement,
    })
}

/// The cgroup under which task cgroups are made.
#[derive(Clone, Debug)]
struct Parent {
    dir: PathBuf,
    /// Why a controller could not be enabled for its children, if one
    /// could not.
    note: Option<String>,
}

impl Parent {
    /// An administrator's delegated cgroup (`tasks.cgroup_parent`). Checked
    /// per launch: it is a few reads, and the admin may fix it at any time.
    fn explicit(dir: &Path) -> Result<Parent, String> {
        if !dir.join("cgroup.controllers").is_file() {
            return Err(format!(
                "tasks.cgroup_parent {} is not a cgroup v2 directory (no cgroup.controllers)",
                dir.display()
            ));
        }
        let note = enable_controllers(&[dir]);
        Ok(Parent {
            dir: dir.to_path_buf(),
            note,
        })
    }

    /// The controllers children of this parent get.
    fn enabled(&self) -> Vec<String> {
        read_list(&self.dir.join("cgroup.subtree_control"))
    }
}

/// `<own cgroup>/lanswarm-tasks`, found and prepared once per process.
fn default_parent() -> Result<&'static Parent, String> {
    static PARENT: OnceLock<Result<Parent, String>> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            let found = detect_default_parent();
            match &found {
                Ok(p) => tracing::debug!(parent = %p.dir.display(), note = ?p.note, "cgroup v2 parent for tasks"),
                Err(why) => tracing::debug!(%why, "no cgroup v2 parent for tasks"),
            }
            found
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn detect_default_parent() -> Result<Parent, String> {
    let (mount, mount_root) = cgroup2_mount()?;
    let own = own_cgroup()?;
    let rel = Path::new(&own).strip_prefix(&mount_root).map_err(|_| {
        format!(
            "our cgroup {own} is outside the cgroup2 mount at {} (its root is {mount_root})",
            mount.display()
        )
    })?;
    let own_dir = if rel.as_os_str().is_empty() {
        mount.clone()
    } else {
        mount.join(rel)
    };
    if !own_dir.join("cgroup.controllers").is_file() {
        return Err(format!(
            "our cgroup {} is not a cgroup v2 directory",
            own_dir.display()
        ));
    }
    let dir = own_dir.join(TASKS_DIR);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let note = enable_controllers(&[&own_dir, &dir]);
    Ok(Parent { dir, note })
}

/// Enables `cpu` and `memory` in the `cgroup.subtree_control` of each level
/// in turn (top first), as far as each level has them. Returns why one
/// could not be enabled, if one could not.
fn enable_controllers(levels: &[&Path]) -> Option<String> {
    let mut notes = Vec::new();
    'controller: for ctrl in CONTROLLERS {
        for level in levels {
            if !read_list(&level.join("cgroup.controllers"))
                .iter()
                .any(|c| c == ctrl)
            {
                notes.push(format!(
                    "{ctrl} is not in {}/cgroup.controllers",
                    level.display()
                ));
                continue 'controller;
            }
            let control = level.join("cgroup.subtree_control");
            if read_list(&control).iter().any(|c| c == ctrl) {
                continue;
            }
            if let Err(e) = write_file(&control, &format!("+{ctrl}")) {
                notes.push(if e.raw_os_error() == Some(libc::EBUSY) {
                    format!(
                        "cannot enable {ctrl} in {}: that cgroup holds processes, and cgroup v2 \
                         gives controllers only to children of cgroups without processes \
                         (set tasks.cgroup_parent to a cgroup delegated to the daemon)",
                        control.display()
                    )
                } else {
                    format!("cannot enable {ctrl} in {}: {e}", control.display())
                });
                continue 'controller;
            }
        }
    }
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// The mount point and mount root of the cgroup2 file system:
/// `/sys/fs/cgroup` where it is cgroup2, else the first cgroup2 mount
/// (hybrid systems mount it at `/sys/fs/cgroup/unified`).
fn cgroup2_mount() -> Result<(PathBuf, String), String> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mut first = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let point = PathBuf::from(unescape_mount(point));
        if point == Path::new("/sys/fs/cgroup") {
            return Ok((point, unescape_mount(root)));
        }
        first.get_or_insert((point, unescape_mount(root)));
    }
    first.ok_or_else(|| "no cgroup2 file system is mounted".to_string())
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Our cgroup v2 path, from the `0::` line of `/proc/self/cgroup`.
fn own_cgroup() -> Result<String, String> {
    let text = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| "no cgroup v2 entry in /proc/self/cgroup (cgroup v1 only)".to_string())
}

/// The words of a cgroup list file (`cgroup.controllers`), empty when it
/// cannot be read.
fn read_list(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// One `write()` of `text` to an existing cgroup file.
fn write_file(path: &Path, text: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// A task's own cgroup. Dropping it without [`TaskCgroup::remove`] kills
/// what is in it and removes it from a background thread.
pub(crate) struct TaskCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened before the fork; the child writes `0` to it.
    procs: Option<File>,
    /// Still to be removed.
    armed: bool,
}

impl TaskCgroup {
    /// Makes `<parent>/task-<id>` with the limits' `cpu.max` and
    /// `memory.max`. Returns it and the limits set, in words.
    fn create(
        parent: &Parent,
        safe_id: &str,
        limits: ResourceLimits,
    ) -> Result<(TaskCgroup, Vec<String>), String> {
        let enabled = parent.enabled();
        let needed = [
            ("cpu", limits.cpu_cores > 0),
            ("memory", limits.memory_mb > 0),
        ];
        for (ctrl, _) in needed.iter().filter(|(_, need)| *need) {
            if !enabled.iter().any(|c| c == ctrl) {
                let why = parent
                    .note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default();
                return Err(format!(
                    "the {ctrl} controller is not enabled for children of {} (enabled: {}){why}",
                    parent.dir.display(),
                    if enabled.is_empty() {
                        "none".to_string()
                    } else {
                        enabled.join(" ")
                    },
                ));
            }
        }
        let mut cgroup = TaskCgroup {
            dir: make_task_dir(&parent.dir, safe_id)?,
            procs: None,
            armed: true,
        };
        let held = cgroup.configure(limits)?;
        Ok((cgroup, held))
    }

    fn configure(&mut self, limits: ResourceLimits) -> Result<Vec<String>, String> {
        let set = |file: &str, value: &str| {
            let path = self.dir.join(file);
            write_file(&path, value)
                .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
        };
        let mut held = Vec::new();
        if limits.cpu_cores > 0 {
            let quota = u64::from(limits.cpu_cores).saturating_mul(CPU_PERIOD_US);
            set("cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
            held.push(format!("cpu.max {} cores", limits.cpu_cores));
        }
        if limits.memory_mb > 0 {
            let bytes = limits.memory_mb.saturating_mul(1 << 20);
            set("memory.max", &bytes.to_string())?;
            held.push(format!("memory.max {} MiB", limits.memory_mb));
            // Without swap the limit is one of memory, not of memory + swap;
            // and an OOM kill ends the whole task, not one of its processes.
            if self.dir.join("memory.swap.max").is_file() && set("memory.swap.max", "0").is_ok() {
                held.push("memory.swap.max 0".to_string());
            }
            if self.dir.join("memory.oom.group").is_file() {
                let _ = set("memory.oom.group", "1");
            }
        }
        if held.is_empty() {
            held.push("no cpu or memory limit asked".to_string());
        }
        let procs = self.dir.join("cgroup.procs");
        self.procs = Some(
            OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(|e| format!("cannot open {}: {e}", procs.display()))?,
        );
        Ok(held)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs`, open for writing, for the child to join with `0`.
    pub(crate) fn take_procs(&mut self) -> Option<File> {
        self.procs.take()
    }

    /// SIGKILL to everything in the cgroup: `cgroup.kill` (Linux 5.14+),
    /// else a kill per pid in `cgroup.procs`.
    pub(crate) fn kill(&self) {
        kill_dir(&self.dir);
    }

    /// Whether no process is left in the cgroup.
    pub(crate) fn is_empty(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.procs")).map_or(true, |s| s.trim().is_empty())
    }

    /// Kills what is left and removes the cgroup, waiting at most
    /// [`REMOVE_BOUND`] for its processes to go.
    pub(crate) async fn remove(mut self) {
        self.armed = false;
        let deadline = Instant::now() + REMOVE_BOUND;
        loop {
            match try_remove(&self.dir) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!(cgroup = %self.dir.display(), error = %e, "cannot remove task cgroup");
                    return;
                }
                Err(_) => {}
            }
            kill_dir(&self.dir);
            tokio::time::sleep(REMOVE_RETRY).await;
        }
    }
}

impl Drop for TaskCgroup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        kill_dir(&self.dir);
        let dir = self.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("lanswarm-cgroup-rm".to_string())
            .spawn(move || {
                let deadline = Instant::now() + REMOVE_BOUND;
                while try_remove(&dir).is_err() && Instant::now() < deadline {
                    kill_dir(&dir);
                    std::thread::sleep(REMOVE_RETRY);
                }
            });
        if spawned.is_err() {
            let _ = try_remove(&self.dir);
        }
    }
}

/// rmdir, where a cgroup already gone counts as removed.
fn try_remove(dir: &Path) -> io::Result<()> {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn kill_dir(dir: &Path) {
    if write_file(&dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
    {
        if pid > 0 {
            // SAFETY: kill(2) with a positive pid signals that one process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// `<parent>/task-<id>`, or a name made unique with our pid and a counter
/// when that exists (the same task id launched twice, or a leftover).
fn make_task_dir(parent: &Path, safe_id: &str) -> Result<PathBuf, String> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut dir = parent.join(format!("task-{safe_id}"));
    for _ in 0..8 {
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                dir = parent.join(format!("task-{safe_id}.{}.{n}", std::process::id()));
            }
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
    }
    Err(format!(
        "cannot create a cgroup for task {safe_id} under {}: names taken",
        parent.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/x\\"), "/x\\");
    }

    #[test]
    fn rlimit_plan_says_what_it_cannot_hold() {
        let plan = rlimit_plan(
            ResourceLimits {
                cpu_cores: 2,
                memory_mb: 512,
            },
            "isolation = rlimit",
        );
        assert_eq!(plan.rlimit_as, Some(512 << 20));
        assert_eq!(
            plan.enforcement,
            "setrlimit: RLIMIT_AS 512 MiB, RLIMIT_CORE 0; cpu not limited without cgroup v2 \
             (isolation = rlimit)"
        );
        let plan = rlimit_plan(ResourceLimits::default(), "why");
        assert_eq!(plan.rlimit_as, None);
        assert_eq!(plan.enforcement, "setrlimit: RLIMIT_CORE 0 (why)");
    }

    #[test]
    fn explicit_parent_must_be_a_cgroup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Parent::explicit(dir.path()).expect_err("a plain directory is no cgroup");
        assert!(err.contains("not a cgroup v2 directory"), "{err}");
    }
}
