//! Tasks and jobs with real `lanswarm` processes on the virtual LAN
//! (`tests/common/vlan.rs`): templates run on the node that holds the
//! lease, with `CUDA_VISIBLE_DEVICES` set to the lease's GPUs; refusals
//! run nothing; scatter/gather jobs aggregate over 3 nodes, survive a node
//! killed mid-job and a requester restarted mid-job; inference routed to
//! nodes serving the model, through `lanswarm-fake-ollama`, which stands in
//! for Ollama (it cannot be installed here) and speaks the subset of its
//! API that lanswarm uses (`/api/tags`, `/api/ps`, `/api/generate`).
//!
//! They need root for `ip netns`; without it each test says what it would
//! have checked and passes.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::vlan::Lan;

const CONVERGE: Duration = Duration::from_secs(20);
const FAKE_OLLAMA: &str = env!("CARGO_BIN_EXE_lanswarm-fake-ollama");

/// Templates every task host offers. `sh -c` scripts take parameters as
/// positional arguments, never inside the script.
const TEMPLATES: &str = r#"
[[tasks.templates]]
name = "whoami"
description = "says hello, and what the lease gave it"
argv = ["sh", "-c", "echo \"hello $1\"; echo \"alloc=$LANSWARM_ALLOCATION_ID\"; echo \"gpus=$CUDA_VISIBLE_DEVICES\"", "sh", "{name}"]
[tasks.templates.params.name]
type = "string"

[[tasks.templates]]
name = "square"
argv = ["sh", "-c", "echo $(( $1 * $1 ))", "sh", "{n}"]
[tasks.templates.params.n]
type = "int"
min = -1000
max = 1000

[[tasks.templates]]
name = "slow"
argv = ["sh", "-c", "sleep \"$1\"; echo \"$2\"", "sh", "{secs}", "{n}"]
[tasks.templates.params.secs]
type = "float"
min = 0
max = 60
[tasks.templates.params.n]
type = "int"

[[tasks.templates]]
name = "hang"
timeout = "1s"
argv = ["sh", "-c", "sleep 987654 & sleep 987654"]

[[tasks.templates]]
name = "orphan"
argv = ["sh", "-c", "sleep 876543 & sleep 876543"]

[[tasks.templates]]
name = "flood"
max_output = "64KiB"
argv = ["sh", "-c", "yes lanswarm | head -c \"$1\"", "sh", "{bytes}"]
[tasks.templates.params.bytes]
type = "int"
min = 0
"#;

/// Three synthetic GPUs (no GPU is probed on the test LAN).
const GPUS: &str = r#"
[[resources.gpus]]
name = "Synthetic A100"
memory = "40GiB"
[[resources.gpus]]
name = "Synthetic A100"
memory = "40GiB"
[[resources.gpus]]
name = "Synthetic A100"
memory = "40GiB"
"#;

fn api(lan: &Lan, i: usize, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    lan.api(i, method, path, body)
}

/// Host `owner`'s own view of the tasks it ran for peers.
fn owner_tasks(lan: &Lan, owner: usize) -> Vec<Value> {
    lan.get(owner, "/api/v1/offers")["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The number of processes whose command line contains `needle` (read
/// from `/proc`, so no `pgrep` is needed).
fn processes_matching(needle: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let line: Vec<u8> = c.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
            String::from_utf8_lossy(&line).contains(needle)
        })
        .count()
}

#[test]
fn a_template_task_runs_on_the_lease_holder_with_its_gpus() {
    let checks = "a template task runs on the node that granted the lease and returns its \
                  output; CUDA_VISIBLE_DEVICES is exactly the lease's GPUs; the lease taken \
                  for a task is given back when it ends";
    let Some(mut lan) = Lan::builder(checks)
        .host("")
        .host(&format!("{TEMPLATES}{GPUS}"))
        .start()
    else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let owner = lan.id(1);
    // A lease with two of the three GPUs, then a task on it.
    let (code, alloc) = lan.request(
        0,
        &json!({"required_resources": {"cpu_cores": 1, "gpu_count": 2}, "node_id": owner}),
    );
    assert_eq!(code, 201, "{alloc}");
    let id = alloc["allocation_id"].as_str().unwrap().to_owned();
    let mut gpus: Vec<u64> = alloc["allocated_resources"]["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["index"].as_u64().unwrap())
        .collect();
    gpus.sort();
    let want_gpus = gpus
        .iter()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let rec = lan
        .cli_json(
            0,
            &["task", "run", "whoami", "name=world", "--allocation", &id],
        )
        .expect("the task runs");
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(rec["node_name"], "h1");
    let stdout = rec["result"]["stdout"].as_str().unwrap();
    assert!(stdout.contains("hello world\n"), "{stdout}");
    assert!(stdout.contains(&format!("alloc={id}\n")), "{stdout}");
    assert!(
        stdout.contains(&format!("gpus={want_gpus}\n")),
        "want {want_gpus}: {stdout}"
    );
    assert_eq!(rec["result"]["exit_code"], 0);
    assert_eq!(rec["result"]["node_id"], owner.as_str());
    // Our own lease stays: the task did not take it.
    assert!(lan.allocations(0)["held"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["allocation_id"] == id.as_str()));
    eprintln!("enforcement on h1: {}", rec["result"]["enforcement"]);

    // Without a lease: one is placed on the only node offering the
    // template, with no GPU, and given back afterwards.
    let rec = lan
        .cli_json(0, &["task", "run", "whoami", "name=again", "--cpu", "1"])
        .expect("the task runs");
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert_eq!(rec["node_name"], "h1");
    let stdout = rec["result"]["stdout"].as_str().unwrap();
    assert!(stdout.contains("hello again\n"), "{stdout}");
    assert!(
        stdout.contains("\ngpus=\n"),
        "a lease without GPUs hides them all: {stdout}"
    );
    let task_lease = rec["allocation_id"].as_str().unwrap().to_owned();
    lan.eventually("the task's own lease is given back", CONVERGE, || {
        let granted = lan.allocations(1)["granted"].clone();
        if granted
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["allocation_id"] == task_lease.as_str())
        {
            Err(format!("h1 still grants {task_lease}"))
        } else {
            Ok(())
        }
    });
    // The record survives a restart of the requester.
    let task_id = rec["task_id"].as_str().unwrap().to_owned();
    lan.restart(0);
    let (code, after) = api(&lan, 0, "GET", &format!("/api/v1/tasks/{task_id}"), None);
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["status"], "succeeded");
    assert_eq!(after["result"]["stdout"], rec["result"]["stdout"]);
}

#[test]
fn refused_tasks_run_nothing() {
    let checks = "an undeclared template, an undeclared parameter, a parameter of the wrong \
                  type and a run without a lease are refused with a clear error, and the \
                  owner runs nothing";
    let Some(mut lan) = Lan::builder(checks)
        .host("")
        .host(TEMPLATES)
        .host("")
        .start()
    else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let owner = lan.id(1);
    let (code, alloc) = lan.request(
        0,
        &json!({"required_resources": {"cpu_cores": 1}, "node_id": owner}),
    );
    assert_eq!(code, 201, "{alloc}");
    let id = alloc["allocation_id"].as_str().unwrap().to_owned();
    let cases: [(Value, u16, &str, &str); 4] = [
        (
            json!({"template": "rm-everything", "allocation_id": id}),
            404,
            "unknown_template",
            "declares no template \"rm-everything\"",
        ),
        (
            json!({"template": "whoami", "params": {"name": "x", "shell": "rm -rf /"}, "allocation_id": id}),
            400,
            "bad_params",
            "shell",
        ),
        (
            json!({"template": "square", "params": {"n": "3; reboot"}, "allocation_id": id}),
            400,
            "bad_params",
            "integer",
        ),
        (
            json!({"template": "square", "params": {"n": 1.5}, "allocation_id": id}),
            400,
            "bad_params",
            "integer",
        ),
    ];
    for (body, status, reason, text) in cases {
        let (code, err) = api(&lan, 0, "POST", "/api/v1/tasks", Some(&body));
        assert_eq!(code, status, "{body}: {err}");
        assert_eq!(err["error"]["code"], "task_refused", "{err}");
        assert_eq!(err["error"]["reason"], reason, "{err}");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(text), "{body}: {msg}");
    }
    // The CLI says the same and fails.
    let out = lan.cli(0, &["task", "run", "square", "n=abc", "--allocation", &id]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected an integer"), "{stderr}");
    // A node that holds no lease there cannot use ours: h2 does not hold
    // it, so it never even asks.
    let (code, err) = api(
        &lan,
        2,
        "POST",
        "/api/v1/tasks",
        Some(&json!({"template": "whoami", "params": {"name": "x"}, "allocation_id": id})),
    );
    assert_eq!(code, 404, "{err}");
    assert!(
        owner_tasks(&lan, 1).is_empty(),
        "h1 ran something: {:?}",
        owner_tasks(&lan, 1)
    );
    // And a template nobody offers is not placed anywhere.
    let (code, err) = api(
        &lan,
        0,
        "POST",
        "/api/v1/tasks",
        Some(&json!({"template": "nosuch"})),
    );
    assert_eq!(code, 503, "{err}");
    assert!(err.to_string().contains("offers no task template"), "{err}");
    assert!(owner_tasks(&lan, 1).is_empty());
    assert!(owner_tasks(&lan, 2).is_empty());
}

#[test]
fn bad_tasks_end_with_clear_errors_and_leave_no_process() {
    let checks = "a task that hangs past its timeout is killed with its children \
                  (timed_out), oversized output is cut at max_output and says so, a program \
                  that does not exist is an error, and the node stays healthy";
    let Some(mut lan) = Lan::builder(checks).host(TEMPLATES).start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let rec = lan
        .cli_json(0, &["task", "run", "hang", "--cpu", "1"])
        .unwrap_err();
    let rec = if rec.is_null() {
        // The CLI fails for a task that did not succeed; read the record.
        let list = lan.get(0, "/api/v1/tasks");
        list[0].clone()
    } else {
        rec
    };
    assert_eq!(rec["status"], "timed_out", "{rec:#}");
    assert!(
        rec["error"].as_str().unwrap().contains("timeout of 1s"),
        "{rec:#}"
    );
    lan.eventually(
        "no process of the hung task is left",
        CONVERGE,
        || match processes_matching("sleep 987654") {
            0 => Ok(()),
            n => Err(format!("{n} left")),
        },
    );
    let (code, rec) = api(
        &lan,
        0,
        "POST",
        "/api/v1/tasks",
        Some(&json!({"template": "flood", "params": {"bytes": 5_000_000}})),
    );
    assert_eq!(code, 200, "{rec}");
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    let r = &rec["result"];
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stdout_bytes"], 5_000_000);
    assert_eq!(r["stdout"].as_str().unwrap().len(), 64 * 1024);
    // Still healthy, and still running tasks.
    let (code, _) = api(&lan, 0, "GET", "/healthz", None);
    assert_eq!(code, 200);
    let rec = lan
        .cli_json(0, &["task", "run", "square", "n=12", "--cpu", "1"])
        .unwrap();
    assert_eq!(rec["result"]["stdout"], "144\n");

    // A node killed outright leaves what its tasks started in the
    // background (no cgroup here); when it starts again, it stops them.
    lan.cli_json(0, &["task", "run", "orphan", "--cpu", "1", "--detach"])
        .expect("the task starts");
    lan.eventually(
        "the orphan task runs",
        CONVERGE,
        || match processes_matching("sleep 876543") {
            0 => Err("not yet".to_owned()),
            n => Ok(n),
        },
    );
    lan.kill9(0);
    std::thread::sleep(Duration::from_millis(500));
    let left = processes_matching("sleep 876543");
    eprintln!("{left} processes of the task outlived its node");
    lan.start(0);
    lan.eventually(
        "the restarted node stopped them",
        CONVERGE,
        || match processes_matching("sleep 876543") {
            0 => Ok(()),
            n => Err(format!("{n} left")),
        },
    );
    if left > 0 {
        assert!(lan
            .log(0)
            .contains("killed processes left by tasks of an earlier run"));
    }
}

/// Submit a job from host `i` and wait for it to end.
fn run_job(lan: &Lan, i: usize, job: &Value, timeout: Duration) -> Value {
    let (code, j) = api(lan, i, "POST", "/api/v1/jobs", Some(job));
    assert_eq!(code, 202, "{j}");
    let id = j["id"].as_str().unwrap().to_owned();
    wait_job(lan, i, &id, timeout)
}

fn wait_job(lan: &Lan, i: usize, id: &str, timeout: Duration) -> Value {
    lan.eventually(&format!("job {id} ends"), timeout, || {
        let (code, j) = api(lan, i, "GET", &format!("/api/v1/jobs/{id}"), None);
        if code != 200 {
            return Err(format!("HTTP {code}: {j}"));
        }
        match j["status"].as_str() {
            Some("succeeded" | "failed" | "cancelled") => Ok(j),
            _ => Err(format!("{} {}", j["status"], j["progress"])),
        }
    })
    .0
}

#[test]
fn a_scatter_gather_job_over_three_nodes_aggregates() {
    let checks = "a job of 3 subtasks is spread over 3 nodes and its outputs summed; a \
                  collect job keeps subtask order; a failing subtask fails the job, naming it";
    let Some(mut lan) = Lan::builder(checks).hosts(3, TEMPLATES).start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let job = json!({
        "name": "sum-of-squares",
        "aggregate": "sum",
        "defaults": {"template": "square", "cpu_cores": 1},
        "subtasks": [{"params": {"n": 2}}, {"params": {"n": 3}}, {"params": {"n": 4}}],
    });
    let j = run_job(&lan, 0, &job, CONVERGE);
    assert_eq!(j["status"], "succeeded", "{j:#}");
    assert_eq!(j["result"], 29, "{j:#}");
    let mut nodes: Vec<&str> = j["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node_name"].as_str().unwrap())
        .collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "spread over every node: {j:#}");

    let job = json!({
        "aggregate": "collect",
        "defaults": {"template": "square"},
        "subtasks": [{"params": {"n": 5}}, {"params": {"n": -6}}, {"params": {"n": 7}}, {"params": {"n": 8}}],
    });
    let j = run_job(&lan, 1, &job, CONVERGE);
    assert_eq!(j["result"], json!(["25", "36", "49", "64"]), "{j:#}");

    // The CLI with a job file.
    let dir = lan.data_dir(0);
    let file = dir.join("job.toml");
    std::fs::write(
        &file,
        "name = \"cli\"\naggregate = \"max\"\n[defaults]\ntemplate = \"square\"\n\
         [[subtasks]]\nparams = { n = 9 }\n[[subtasks]]\nparams = { n = -11 }\n",
    )
    .unwrap();
    let j = lan
        .cli_json(0, &["job", "run", file.to_str().unwrap()])
        .expect("the job runs");
    assert_eq!(j["result"], 121, "{j:#}");

    // A subtask whose work fails fails the job (no retry: the work is wrong).
    let job = json!({
        "aggregate": "sum",
        "defaults": {"template": "square"},
        "subtasks": [{"params": {"n": 2}}, {"params": {"n": 5000}}],
    });
    let j = run_job(&lan, 0, &job, CONVERGE);
    assert_eq!(j["status"], "failed", "{j:#}");
    assert!(j["error"].as_str().unwrap().contains("subtask 1"), "{j:#}");
}

/// The subtask of job `j` running on host `name`, if any.
fn subtask_on<'a>(j: &'a Value, name: &str) -> Option<&'a Value> {
    j["subtasks"]
        .as_array()?
        .iter()
        .find(|s| s["status"] == "running" && s["node_name"] == name)
}

#[test]
fn a_node_killed_mid_job_has_its_subtask_placed_again() {
    let checks = "killing a node while it runs a subtask re-places that subtask on another \
                  node, and the job still completes with the right result";
    let Some(mut lan) = Lan::builder(checks).hosts(3, TEMPLATES).start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    let job = json!({
        "aggregate": "sum",
        "defaults": {"template": "slow", "cpu_cores": 1},
        "subtasks": [
            {"params": {"secs": 4, "n": 1}},
            {"params": {"secs": 4, "n": 10}},
            {"params": {"secs": 4, "n": 100}},
        ],
    });
    let (code, j) = api(&lan, 0, "POST", "/api/v1/jobs", Some(&job));
    assert_eq!(code, 202, "{j}");
    let id = j["id"].as_str().unwrap().to_owned();
    let (victim, _) = lan.eventually("a subtask runs on h2", CONVERGE, || {
        let (_, j) = api(&lan, 0, "GET", &format!("/api/v1/jobs/{id}"), None);
        match subtask_on(&j, "h2") {
            Some(s) => Ok(s["index"].as_u64().unwrap()),
            None => Err(format!("{}", j["progress"])),
        }
    });
    let killed_at = std::time::Instant::now();
    lan.kill9(2);
    let j = wait_job(&lan, 0, &id, Duration::from_secs(40));
    eprintln!("job done {:?} after h2 was killed", killed_at.elapsed());
    assert_eq!(j["status"], "succeeded", "{j:#}");
    assert_eq!(j["result"], 111, "{j:#}");
    let s = &j["subtasks"][victim as usize];
    assert_eq!(s["attempts"], 2, "{s:#}");
    assert_ne!(s["node_name"], "h2", "{s:#}");
    let history = s["history"].to_string();
    assert!(
        history.contains("lost") || history.contains("contact"),
        "{history}"
    );
}

#[test]
fn a_job_survives_a_restart_of_its_requester() {
    let checks = "a job in flight when its requester is killed and restarted resumes: \
                  finished subtasks keep their results, the others run to the end";
    let Some(mut lan) = Lan::builder(checks).hosts(3, TEMPLATES).start() else {
        return;
    };
    lan.wait_converged(CONVERGE);
    // Subtasks only on h1 and h2, so the restart kills none of them.
    let job = json!({
        "aggregate": "collect",
        "defaults": {"template": "slow", "cpu_cores": 1},
        "subtasks": [
            {"params": {"secs": 3, "n": 1}, "node_id": "h1"},
            {"params": {"secs": 3, "n": 2}, "node_id": "h2"},
        ],
    });
    let (code, j) = api(&lan, 0, "POST", "/api/v1/jobs", Some(&job));
    assert_eq!(code, 202, "{j}");
    let id = j["id"].as_str().unwrap().to_owned();
    lan.eventually("both subtasks run", CONVERGE, || {
        let (_, j) = api(&lan, 0, "GET", &format!("/api/v1/jobs/{id}"), None);
        match j["progress"]["running"].as_u64() {
            Some(2) => Ok(()),
            _ => Err(format!("{}", j["progress"])),
        }
    });
    lan.kill9(0);
    lan.start(0);
    let j = wait_job(&lan, 0, &id, Duration::from_secs(40));
    assert_eq!(j["status"], "succeeded", "{j:#}");
    assert_eq!(j["result"], json!(["1", "2"]), "{j:#}");
    for s in j["subtasks"].as_array().unwrap() {
        assert_eq!(s["attempts"], 1, "resumed, not run again: {s:#}");
    }
}

#[test]
fn inference_goes_only_to_nodes_serving_the_model() {
    let checks = "requests for a model land only on nodes whose (stand-in) Ollama serves it, \
                  a node with it loaded first; the streamed answer comes back; a node whose \
                  model server is down says so and advertises no models";
    let ollama =
        |port: u16| format!("[models]\nserver = \"http://127.0.0.1:{port}\"\nrefresh = \"1s\"\n");
    let Some(mut lan) = Lan::builder(checks)
        .host("")
        .host(&ollama(11434))
        .host(&ollama(11434))
        .host(&ollama(11434))
        .build()
    else {
        return;
    };
    // h1: llama3 loaded; h2: llama3 (not loaded) and phi3; h3: no server.
    let mut h1 = lan.spawn_in(
        1,
        "ollama",
        FAKE_OLLAMA,
        &[
            "--listen",
            "127.0.0.1:11434",
            "--name",
            "h1",
            "--models",
            "llama3:latest",
            "--loaded",
            "llama3:latest",
        ],
    );
    let mut h2 = lan.spawn_in(
        2,
        "ollama",
        FAKE_OLLAMA,
        &[
            "--listen",
            "127.0.0.1:11434",
            "--name",
            "h2",
            "--models",
            "llama3:latest,phi3:latest",
            "--delay-ms",
            "30",
        ],
    );
    lan.start_all();
    lan.wait_converged(CONVERGE);
    lan.eventually("h0 sees the models of h1 and h2", CONVERGE, || {
        let m = lan.get(0, "/api/v1/models");
        let llama = m["llama3"].as_array().map(|a| a.len()).unwrap_or(0);
        let phi = m["phi3"].as_array().map(|a| a.len()).unwrap_or(0);
        if llama == 2 && phi == 1 {
            Ok(())
        } else {
            Err(m.to_string())
        }
    });
    let models = lan.get(0, "/api/v1/models");
    assert_eq!(
        models["llama3"][0]["node_name"], "h1",
        "loaded first: {models:#}"
    );
    assert_eq!(models["llama3"][0]["loaded"], true);
    assert!(models.get("phi3").is_some());
    // h3's server is down: it says so and advertises nothing.
    let offers = lan.get(3, "/api/v1/offers");
    assert_eq!(offers["models"], json!([]), "{offers:#}");
    let status = offers["model_status"].as_str().unwrap();
    assert!(
        status.contains("127.0.0.1:11434") && status.contains("down"),
        "{status}"
    );

    for _ in 0..3 {
        let rec = lan
            .cli_json(0, &["infer", "--model", "llama3", "why is the sky blue?"])
            .expect("the model answers");
        assert_eq!(rec["status"], "succeeded", "{rec:#}");
        assert_eq!(rec["node_name"], "h1", "loaded first: {rec:#}");
        assert_eq!(rec["result"]["stdout"], "[h1/llama3] why is the sky blue?");
    }
    let rec = lan
        .cli_json(0, &["infer", "--model", "phi3", "hi"])
        .expect("the model answers");
    assert_eq!(rec["node_name"], "h2");
    assert_eq!(rec["result"]["stdout"], "[h2/phi3] hi");
    // Streamed: the CLI prints pieces as they come, then the whole answer.
    let out = lan.cli(0, &["infer", "--model", "phi3", "one two three"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "[h2/phi3] one two three"
    );
    let (code, body) = api(
        &lan,
        0,
        "POST",
        "/api/v1/infer",
        Some(&json!({"model": "phi3", "prompt": "a b c d", "stream": true})),
    );
    assert_eq!(code, 200);
    let lines = body.as_array().cloned().unwrap_or_default();
    let chunks: Vec<&str> = lines.iter().filter_map(|l| l["chunk"].as_str()).collect();
    assert!(chunks.len() >= 4, "streamed in pieces: {body}");
    assert_eq!(chunks.concat(), "[h2/phi3] a b c d");
    assert_eq!(lines.last().unwrap()["task"]["status"], "succeeded");
    // A model nobody serves: a clear error, nothing placed.
    let (code, err) = api(
        &lan,
        0,
        "POST",
        "/api/v1/infer",
        Some(&json!({"model": "mistral", "prompt": "x"})),
    );
    assert_eq!(code, 503, "{err}");
    assert!(
        err.to_string()
            .contains("serves none of the preferred models"),
        "{err}"
    );
    // The stand-in on h2 goes down: h2 stops advertising its models.
    h2.kill().expect("stopping the stand-in on h2");
    let _ = h2.wait();
    lan.eventually("h0 no longer sees phi3", CONVERGE, || {
        let m = lan.get(0, "/api/v1/models");
        if m.get("phi3").is_none() {
            Ok(())
        } else {
            Err(m.to_string())
        }
    });
    h1.kill().expect("stopping the stand-in on h1");
    let _ = h1.wait();
}
