//! Tests of the runner against real processes. Those about limits pass both
//! where cgroup v2 is writable and where it is not, and print which
//! mechanism they exercised (`cargo test -- --nocapture` shows it).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::process::group_alive;
use super::*;

/// A generous bound for any single run (no test relies on finer timing).
const BOUND: Duration = Duration::from_secs(10);

fn launch(task_id: &str, argv: &[&str]) -> Launch {
    let mut launch = Launch::new(task_id, argv.iter().map(|s| s.to_string()).collect());
    launch.timeout = BOUND;
    launch
}

async fn run_bounded(launch: Launch, cancel: CancellationToken) -> ExecOutcome {
    tokio::time::timeout(BOUND, run(launch, cancel))
        .await
        .expect("run returned within the bound")
}

async fn run_plain(launch: Launch) -> ExecOutcome {
    run_bounded(launch, CancellationToken::new()).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// No process of the group runs once `run` has returned, and the group
/// disappears entirely (`kill(-pgid, 0)` fails with ESRCH) once the killed
/// processes' new parent has reaped them.
async fn assert_group_gone(outcome: &ExecOutcome) {
    let pgid = libc::pid_t::try_from(outcome.pid.expect("the task started")).expect("pid");
    assert!(!group_alive(pgid), "a process of group {pgid} still runs");
    let deadline = Instant::now() + BOUND;
    loop {
        // SAFETY: signal 0 only checks that the group exists.
        let r = unsafe { libc::kill(-pgid, 0) };
        if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process group {pgid} still exists"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether process `pid` is gone or a zombie.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[tokio::test]
async fn echo_output_is_captured() {
    let outcome = run_plain(launch("echo", &["echo", "hello", "world"])).await;
    assert_eq!(outcome.exit, ExitKind::Exited(0));
    assert!(outcome.exit.success());
    assert_eq!(text(&outcome.stdout), "hello world\n");
    assert_eq!(outcome.stdout_total, 12);
    assert!(!outcome.stdout_truncated);
    assert!(outcome.stderr.is_empty());
    assert!(!outcome.enforcement.is_empty());
    assert!(outcome.started_at_ms > 0);
    assert!(outcome.finished_at_ms >= outcome.started_at_ms);
}

#[tokio::test]
async fn exit_code_and_stderr() {
    let outcome = run_plain(launch("exit-code", &["sh", "-c", "echo oops >&2; exit 3"])).await;
    assert_eq!(outcome.exit, ExitKind::Exited(3));
    assert_eq!(outcome.exit.code(), Some(3));
    assert_eq!(text(&outcome.stderr), "oops\n");
    assert!(outcome.stdout.is_empty());
}

#[tokio::test]
async fn death_by_signal_is_signaled() {
    let outcome = run_plain(launch("signal", &["sh", "-c", "kill -USR1 $$"])).await;
    assert_eq!(outcome.exit, ExitKind::Signaled(libc::SIGUSR1));
    assert_eq!(outcome.exit.signal(), Some(libc::SIGUSR1));
}

#[tokio::test]
async fn environment_is_exactly_the_given_one() {
    let path = base_env()
        .into_iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v)
        .expect("base_env has PATH");
    let mut l = launch("env", &["env"]);
    l.env = vec![
        ("PATH".to_string(), path.clone()),
        ("LANSWARM_TASK_ID".to_string(), "env".to_string()),
        gpu_env(&[1, 3]),
    ];
    let outcome = run_plain(l).await;
    assert_eq!(outcome.exit, ExitKind::Exited(0));
    let mut lines: Vec<String> = text(&outcome.stdout).lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "CUDA_VISIBLE_DEVICES=1,3".to_string(),
            "LANSWARM_TASK_ID=env".to_string(),
            format!("PATH={path}"),
        ]
    );
}

#[tokio::test]
async fn workdir_is_used_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = launch("workdir", &["pwd", "-P"]);
    l.workdir = Some(dir.path().to_path_buf());
    let outcome = run_plain(l).await;
    assert_eq!(outcome.exit, ExitKind::Exited(0));
    let expected = dir.path().canonicalize().expect("canonical tempdir");
    assert_eq!(
        text(&outcome.stdout).trim_end(),
        expected.to_str().expect("utf-8 path")
    );

    let mut l = launch("workdir-missing", &["pwd"]);
    l.workdir = Some(dir.path().join("missing"));
    let outcome = run_plain(l).await;
    match &outcome.exit {
        ExitKind::SpawnFailed(why) => {
            assert!(
                why.contains("cannot start `pwd`") && why.contains("working directory"),
                "{why}"
            )
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn output_beyond_max_output_is_counted_not_kept() {
    let mut l = launch(
        "truncate",
        &[
            "sh",
            "-c",
            "head -c 5000000 /dev/zero; head -c 300000 /dev/zero >&2; echo done >&2",
        ],
    );
    l.max_output = 1000;
    let outcome = run_plain(l).await;
    assert_eq!(outcome.exit, ExitKind::Exited(0));
    assert_eq!(outcome.stdout.len(), 1000);
    assert!(outcome.stdout_truncated);
    assert_eq!(outcome.stdout_total, 5_000_000);
    assert_eq!(outcome.stderr.len(), 1000);
    assert!(outcome.stderr_truncated);
    assert_eq!(outcome.stderr_total, 300_005);

    let mut l = launch("truncate-none", &["echo", "abc"]);
    l.max_output = 0;
    let outcome = run_plain(l).await;
    assert!(outcome.stdout.is_empty());
    assert!(outcome.stdout_truncated);
    assert_eq!(outcome.stdout_total, 4);
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    // Isolation::None: the process group alone must end the grandchild.
    let mut l = launch("timeout", &["sh", "-c", "sleep 1000 & sleep 1000"]);
    l.isolation = Isolation::None;
    l.timeout = Duration::from_millis(300);
    let start = Instant::now();
    let outcome = run_plain(l).await;
    assert_eq!(outcome.exit, ExitKind::TimedOut);
    assert!(start.elapsed() < BOUND);
    assert!(
        outcome.enforcement.starts_with("none"),
        "{}",
        outcome.enforcement
    );
    assert_group_gone(&outcome).await;
}

#[tokio::test]
async fn normal_exit_kills_what_the_task_left_behind() {
    // The background sleep keeps stdout open: run must not wait for it.
    let mut l = launch("leftover", &["sh", "-c", "sleep 1000 & echo started"]);
    l.isolation = Isolation::None;
    let start = Instant::now();
    let outcome = run_plain(l).await;
    assert_eq!(outcome.exit, ExitKind::Exited(0));
    assert_eq!(text(&outcome.stdout), "started\n");
    assert!(start.elapsed() < BOUND);
    assert_group_gone(&outcome).await;
}

#[tokio::test]
async fn cancel_kills_the_task() {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let outcome = run_bounded(
        launch("cancel", &["sh", "-c", "sleep 1000 & sleep 1000"]),
        cancel,
    )
    .await;
    assert_eq!(outcome.exit, ExitKind::Cancelled);
    assert_group_gone(&outcome).await;

    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let outcome = run_bounded(launch("cancel-early", &["sleep", "1000"]), cancelled).await;
    assert_eq!(outcome.exit, ExitKind::Cancelled);
    assert_eq!(outcome.pid, None, "nothing is started once cancelled");
}

#[tokio::test]
async fn dropping_the_run_future_kills_the_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; sleep 1000 & sleep 1000", pid_file.display());
    let mut l = launch("dropped", &["sh", "-c", &script]);
    l.isolation = Isolation::None;
    let dropped =
        tokio::time::timeout(Duration::from_millis(500), run(l, CancellationToken::new())).await;
    assert!(dropped.is_err(), "the task ran for 1000 s");
    let pgid: libc::pid_t = std::fs::read_to_string(&pid_file)
        .expect("the task wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    let deadline = Instant::now() + BOUND;
    while group_alive(pgid) {
        assert!(
            Instant::now() < deadline,
            "group {pgid} outlived the dropped run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_task_ignoring_sigterm_is_killed_after_the_grace() {
    // The ignored SIGTERM is inherited by the sleep too.
    let mut l = launch(
        "ignore-term",
        &["sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000"],
    );
    l.isolation = Isolation::None;
    l.timeout = Duration::from_millis(100);
    let start = Instant::now();
    let outcome = run_plain(l).await;
    assert_eq!(outcome.exit, ExitKind::TimedOut);
    assert!(
        start.elapsed() >= TERM_GRACE,
        "SIGKILL came before the grace"
    );
    assert!(start.elapsed() < BOUND);
    assert_group_gone(&outcome).await;
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_failure() {
    let outcome = run_plain(launch("missing", &["lanswarm-no-such-program", "x"])).await;
    match &outcome.exit {
        ExitKind::SpawnFailed(why) => {
            assert!(
                why.starts_with("cannot start `lanswarm-no-such-program`: "),
                "{why}"
            );
            assert!(why.contains("No such file or directory"), "{why}");
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
    assert_eq!(outcome.pid, None);

    let outcome = run_plain(launch("empty", &[])).await;
    assert!(
        matches!(outcome.exit, ExitKind::SpawnFailed(_)),
        "{:?}",
        outcome.exit
    );
}

/// `tail` keeps a line that never ends in memory: 300 MiB of zeros.
const ALLOC_300M: &str = "head -c 300M /dev/zero | tail > /dev/null";

#[tokio::test]
async fn memory_limit_is_enforced_by_cgroup_or_rlimit() {
    // Without a limit the same command succeeds, so a failure below is the
    // limit's doing.
    let mut free = launch("mem-free", &["sh", "-c", ALLOC_300M]);
    free.isolation = Isolation::None;
    assert_eq!(run_plain(free).await.exit, ExitKind::Exited(0));

    let mut l = launch("mem-limit", &["sh", "-c", ALLOC_300M]);
    l.limits.memory_mb = 64;
    let outcome = run_plain(l).await;
    eprintln!("memory limit held by: {}", outcome.enforcement);
    if outcome.enforcement.starts_with("cgroup v2 ") {
        assert!(
            outcome.enforcement.contains("memory.max 64 MiB"),
            "{}",
            outcome.enforcement
        );
        // The OOM killer ends tail (sh reports 137) or, with
        // memory.oom.group, the whole task.
        assert!(
            matches!(
                outcome.exit,
                ExitKind::Signaled(libc::SIGKILL) | ExitKind::Exited(137)
            ),
            "{:?}",
            outcome.exit
        );
    } else {
        assert!(
            outcome
                .enforcement
                .starts_with("setrlimit: RLIMIT_AS 64 MiB, RLIMIT_CORE 0 (cgroup v2 not usable: "),
            "{}",
            outcome.enforcement
        );
        assert_eq!(
            outcome.exit,
            ExitKind::Exited(1),
            "stderr: {}",
            text(&outcome.stderr)
        );
        assert!(
            text(&outcome.stderr).contains("memory exhausted"),
            "{}",
            text(&outcome.stderr)
        );
    }
}

#[tokio::test]
async fn rlimit_isolation_caps_memory_and_says_cpu_is_free() {
    let mut l = launch("rlimit", &["sh", "-c", ALLOC_300M]);
    l.isolation = Isolation::Rlimit;
    l.limits = ResourceLimits {
        cpu_cores: 1,
        memory_mb: 64,
    };
    let outcome = run_plain(l).await;
    assert_eq!(
        outcome.enforcement,
        "setrlimit: RLIMIT_AS 64 MiB, RLIMIT_CORE 0; cpu not limited without cgroup v2 (isolation = rlimit)"
    );
    assert_eq!(outcome.exit, ExitKind::Exited(1));
}

#[tokio::test]
async fn core_files_are_off() {
    let mut l = launch("core", &["sh", "-c", "ulimit -c; ulimit -H -c"]);
    l.isolation = Isolation::None;
    let outcome = run_plain(l).await;
    assert_eq!(text(&outcome.stdout), "0\n0\n");
}

#[tokio::test]
async fn cgroup_isolation_runs_in_a_task_cgroup_or_fails_clearly() {
    let mut l = launch("cg run/1", &["cat", "/proc/self/cgroup"]);
    l.isolation = Isolation::Cgroup;
    let outcome = run_plain(l).await;
    match &outcome.exit {
        ExitKind::Exited(0) => {
            eprintln!("cgroup v2 used: {}", outcome.enforcement);
            let line = text(&outcome.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
                .expect("a cgroup v2 line");
            assert!(line.ends_with("/task-cg_run_1"), "{line}");
            assert!(
                outcome.enforcement.starts_with("cgroup v2 /"),
                "{}",
                outcome.enforcement
            );
            assert!(outcome.enforcement.contains("no cpu or memory limit asked"));
            let dir = outcome
                .enforcement
                .strip_prefix("cgroup v2 ")
                .and_then(|s| s.split_once(": "))
                .map(|(dir, _)| std::path::PathBuf::from(dir))
                .expect("the cgroup dir");
            assert!(
                dir.ends_with("lanswarm-tasks/task-cg_run_1"),
                "{}",
                dir.display()
            );
            assert!(!dir.exists(), "the task cgroup is removed");
        }
        ExitKind::SpawnFailed(why) => {
            eprintln!("cgroup v2 not usable here: {why}");
            assert!(
                why.contains("isolation = cgroup, but cgroup v2 cannot hold this task: "),
                "{why}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn cgroup_isolation_with_limits_holds_them_or_fails_clearly() {
    let mut l = launch("cg-mem", &["sh", "-c", ALLOC_300M]);
    l.isolation = Isolation::Cgroup;
    l.limits = ResourceLimits {
        cpu_cores: 1,
        memory_mb: 64,
    };
    let outcome = run_plain(l).await;
    match &outcome.exit {
        ExitKind::SpawnFailed(why) => {
            eprintln!("cgroup v2 cannot hold limits here: {why}");
            assert!(
                why.starts_with("cannot start `sh`: isolation = cgroup, "),
                "{why}"
            );
            assert_eq!(outcome.pid, None);
        }
        exit => {
            eprintln!("cgroup v2 holds limits: {}", outcome.enforcement);
            assert!(
                outcome
                    .enforcement
                    .contains("cpu.max 1 cores, memory.max 64 MiB"),
                "{}",
                outcome.enforcement
            );
            assert!(
                matches!(
                    exit,
                    ExitKind::Signaled(libc::SIGKILL) | ExitKind::Exited(137)
                ),
                "{exit:?}"
            );
        }
    }
}

#[tokio::test]
async fn cgroup_kills_processes_that_left_the_group() {
    // `setsid` takes the sleep out of the process group; only the cgroup
    // can still find it.
    let mut l = launch("cg-escape", &["sh", "-c", "setsid sleep 1000 & echo $!"]);
    l.isolation = Isolation::Cgroup;
    let outcome = run_plain(l).await;
    match &outcome.exit {
        ExitKind::SpawnFailed(why) => eprintln!("cgroup v2 not usable here, skipped: {why}"),
        exit => {
            assert_eq!(*exit, ExitKind::Exited(0));
            let escaped: u32 = text(&outcome.stdout).trim().parse().expect("a pid");
            assert!(
                dead(escaped),
                "process {escaped} left the group and survived"
            );
            eprintln!(
                "cgroup.kill ended a process outside the group: {}",
                outcome.enforcement
            );
        }
    }
}

#[tokio::test]
async fn auto_isolation_names_its_mechanism() {
    let outcome = run_plain(launch("auto", &["true"])).await;
    eprintln!("auto isolation: {}", outcome.enforcement);
    assert_eq!(outcome.exit, ExitKind::Exited(0));
    assert!(
        outcome.enforcement.starts_with("cgroup v2 /")
            || outcome
                .enforcement
                .starts_with("setrlimit: RLIMIT_CORE 0 (cgroup v2 not usable: "),
        "{}",
        outcome.enforcement
    );
}

#[test]
fn gpu_env_lists_indices_or_hides_all() {
    assert_eq!(
        gpu_env(&[0, 2]),
        ("CUDA_VISIBLE_DEVICES".to_string(), "0,2".to_string())
    );
    assert_eq!(
        gpu_env(&[]),
        ("CUDA_VISIBLE_DEVICES".to_string(), String::new())
    );
}

#[test]
fn base_env_has_a_path() {
    let env = base_env();
    assert_eq!(env[0].0, "PATH");
    assert!(!env[0].1.is_empty());
    assert!(env
        .iter()
        .all(|(k, _)| ["PATH", "HOME", "LANG"].contains(&k.as_str())));
}

#[test]
fn task_ids_are_sanitized_for_cgroup_names() {
    assert_eq!(sanitize_task_id("abc-DEF_123"), "abc-DEF_123");
    assert_eq!(sanitize_task_id("../x y"), "___x_y");
    assert_eq!(sanitize_task_id(""), "task");
    assert_eq!(sanitize_task_id(&"a".repeat(100)).len(), 64);
}

#[test]
fn isolation_reads_as_snake_case() {
    #[derive(serde::Deserialize)]
    struct Tasks {
        isolation: Isolation,
    }
    let tasks: Tasks = toml::from_str("isolation = \"rlimit\"").expect("parses");
    assert_eq!(tasks.isolation, Isolation::Rlimit);
    assert_eq!(Isolation::default(), Isolation::Auto);
}
