//! Tasks left behind by a node that died without stopping them.
//!
//! `PR_SET_PDEATHSIG` reaches only a task's first process: when the daemon
//! is killed outright (`kill -9`, OOM killer) without a cgroup around its
//! tasks, what those processes started in the background is reparented to
//! init and keeps running. Every task carries `LANSWARM_NODE_ID=<node id>`
//! in its environment, so the node, when it starts again, finds such
//! processes by that exact entry in `/proc/<pid>/environ` and kills them.
//! A process that rewrote its own environment escapes this; a cgroup
//! (`tasks.isolation`) does not let it.

use std::path::Path;

/// The environment entry that marks the tasks of node `node_id`.
pub fn marker(node_id: &str) -> (String, String) {
    ("LANSWARM_NODE_ID".to_owned(), node_id.to_owned())
}

/// Whether the NUL-separated environment `environ` holds `KEY=VALUE`
/// exactly.
fn has_entry(environ: &[u8], entry: &[u8]) -> bool {
    environ.split(|b| *b == 0).any(|e| e == entry)
}

/// Kill (SIGKILL) every process under `proc_root` (normally `/proc`)
/// whose environment holds `KEY=VALUE` exactly, except this process.
/// Returns the pids killed. Processes that cannot be read (another user's,
/// or gone meanwhile) are skipped.
pub fn kill_marked(proc_root: &Path, key: &str, value: &str) -> Vec<u32> {
    let entry = format!("{key}={value}").into_bytes();
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut killed = Vec::new();
    for e in dir.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || pid <= 1 {
            continue;
        }
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if !has_entry(&environ, &entry) {
            continue;
        }
        // SAFETY: kill(2) with a positive pid and a valid signal number has
        // no memory effects.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
            killed.push(pid);
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_exactly() {
        let env = b"PATH=/bin\0LANSWARM_NODE_ID=abc\0X=1\0";
        assert!(has_entry(env, b"LANSWARM_NODE_ID=abc"));
        assert!(!has_entry(env, b"LANSWARM_NODE_ID=ab"));
        assert!(!has_entry(env, b"LANSWARM_NODE_ID=abcd"));
        assert!(!has_entry(
            b"XLANSWARM_NODE_ID=abc\0",
            b"LANSWARM_NODE_ID=abc"
        ));
    }

    #[test]
    fn a_marked_orphan_is_killed_and_others_are_not() {
        let value = format!("test-{}", std::process::id());
        let mut marked = std::process::Command::new("sleep")
            .arg("30")
            .env("LANSWARM_NODE_ID", &value)
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .env("LANSWARM_NODE_ID", format!("{value}-other"))
            .spawn()
            .unwrap();
        // Right after fork the child still has our environment: wait for
        // its exec.
        let entry = format!("LANSWARM_NODE_ID={value}").into_bytes();
        let environ = format!("/proc/{}/environ", marked.id());
        let t0 = std::time::Instant::now();
        while !std::fs::read(&environ).is_ok_and(|e| has_entry(&e, &entry)) {
            assert!(t0.elapsed() < std::time::Duration::from_secs(5), "no exec");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let killed = kill_marked(Path::new("/proc"), "LANSWARM_NODE_ID", &value);
        assert_eq!(killed, vec![marked.id()]);
        let status = marked.wait().unwrap();
        assert!(!status.success());
        assert!(other.try_wait().unwrap().is_none(), "the other one runs on");
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
