//! Tasks between in-process nodes on 127.0.0.1 (no root needed): the
//! owner's checks on `/lanswarm/task/2`, seen through the node handle, and
//! inference against an in-process stand-in for Ollama (which cannot be
//! installed here; `lanswarm::sim::fake_ollama` speaks the subset of its
//! API that lanswarm uses).

use std::collections::BTreeMap;
use std::time::Duration;

use lanswarm::core::tasks::Template;
use lanswarm::handle::{AllocationRequest, TaskUpdate};
use lanswarm::model::{
    Capacity, InferenceCall, InferenceRequest, ResourceRequirements, TaskOutcome, TaskSpec,
};
use lanswarm::net::node::{self, ModelServerSettings, NodeConfig};
use lanswarm::net::protocol::{TaskRequest, TaskResponse, TaskState};
use lanswarm::sim::fake_ollama::{self, FakeOllama};
use lanswarm::{Node, NodeError};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn cap(cores: u32) -> Capacity {
    Capacity {
        cpu_cores: cores,
        memory_mb: 4096,
        disk_mb: 1024,
        gpus: vec![],
        custom: Default::default(),
    }
}

fn template(toml_text: &str) -> Template {
    let t: Template = toml::from_str(toml_text).expect("template TOML");
    t.validate().expect("valid template");
    t
}

struct Running {
    node: Node,
    _shutdown: tokio_util::sync::DropGuard,
    _dir: tempfile::TempDir,
}

async fn start(
    name: &str,
    bootstrap: Option<String>,
    tweak: impl FnOnce(&mut NodeConfig),
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::for_test(name, cap(4), dir.path().join("state.redb"));
    if let Some(b) = bootstrap {
        cfg.bootstrap = vec![b.parse().unwrap()];
    }
    tweak(&mut cfg);
    let shutdown = CancellationToken::new();
    let (node, _task) = node::start(cfg, shutdown.clone()).await.unwrap();
    Running {
        node,
        _shutdown: shutdown.drop_guard(),
        _dir: dir,
    }
}

async fn addr(n: &Node) -> String {
    for _ in 0..200 {
        if let Some(a) = n.listen_addrs().await.unwrap().into_iter().next() {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no listen address");
}

/// Wait until `n` sees `count` other nodes online.
async fn sees(n: &Node, count: usize) {
    let t0 = tokio::time::Instant::now();
    loop {
        let online = n
            .nodes()
            .await
            .unwrap()
            .iter()
            .filter(|i| !i.is_local && i.status == lanswarm::model::NodeStatus::Online)
            .count();
        if online >= count {
            return;
        }
        assert!(t0.elapsed() < WAIT, "only {online} of {count} peers online");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn echo_spec(msg: &str) -> TaskSpec {
    TaskSpec::Template {
        template: "echo".into(),
        params: BTreeMap::from([("msg".to_owned(), msg.to_owned())]),
    }
}

async fn lease_on(holder: &Node, owner: &Node) -> String {
    let alloc = holder
        .request(AllocationRequest {
            required_resources: ResourceRequirements {
                cpu_cores: 1,
                ..Default::default()
            },
            node_id: Some(owner.id().0.clone()),
            ..Default::default()
        })
        .await
        .expect("a lease");
    alloc.allocation_id
}

/// Run `spec` and wait for its result.
async fn run(
    from: &Node,
    owner: &Node,
    allocation: &str,
    spec: TaskSpec,
) -> Result<(Vec<String>, Box<lanswarm::model::TaskResult>), NodeError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let id = uuid::Uuid::new_v4().to_string();
    from.start_task(owner.id().clone(), allocation, &id, spec, tx)
        .await?;
    let mut chunks = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a result in time")
        {
            Some(TaskUpdate::Chunk(c)) => chunks.push(c),
            Some(TaskUpdate::Finished(r)) => return Ok((chunks, r)),
            Some(TaskUpdate::OwnerDisconnected) => {}
            None => panic!("updates closed without a result"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_may_run_a_task() {
    let echo = template(
        "name = \"echo\"\nargv = [\"echo\", \"{msg}\"]\n[params.msg]\ntype = \"string\"\n",
    );
    let owner = start("owner", None, |c| c.tasks.templates = vec![echo]).await;
    let boot = addr(&owner.node).await;
    let holder = start("holder", Some(boot.clone()), |_| {}).await;
    let other = start("other", Some(boot), |_| {}).await;
    sees(&holder.node, 2).await;
    sees(&other.node, 2).await;
    let lease = lease_on(&holder.node, &owner.node).await;

    // The holder runs it.
    let (_, r) = run(&holder.node, &owner.node, &lease, echo_spec("hi"))
        .await
        .unwrap();
    assert_eq!(r.outcome, TaskOutcome::Succeeded);
    assert_eq!(r.stdout, "hi\n");
    assert_eq!(r.node_id, *owner.node.id());

    // Another peer, naming the holder's lease, or a made-up one: refused.
    for lease in [lease.as_str(), "00000000-0000-0000-0000-000000000000"] {
        match run(&other.node, &owner.node, lease, echo_spec("pwned")).await {
            Err(NodeError::TaskRefused { reason, message }) => {
                assert_eq!(reason, "no_lease", "{message}");
                assert!(message.contains("held by you"), "{message}");
            }
            other => panic!("expected no_lease, got {other:?}"),
        }
    }
    // It cannot poll or cancel the holder's tasks either.
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    holder
        .node
        .start_task(
            owner.node.id().clone(),
            &lease,
            "the-holders-task",
            echo_spec("x"),
            tx,
        )
        .await
        .unwrap();
    let asked = other
        .node
        .task_call(
            owner.node.id().clone(),
            TaskRequest::Poll {
                task_id: "the-holders-task".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(asked, TaskResponse::Status(TaskState::Unknown));
    // Only the holder's two tasks ever ran on the owner.
    let offers = owner.node.offers().await.unwrap();
    assert_eq!(offers.tasks.len(), 2, "{:?}", offers.tasks);
    assert!(offers
        .tasks
        .iter()
        .all(|t| t.requester == *holder.node.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_task_or_releasing_its_lease_stops_it() {
    let sleep = template(
        "name = \"sleep\"\nargv = [\"sleep\", \"{secs}\"]\n[params.secs]\ntype = \"int\"\n",
    );
    let owner = start("owner", None, |c| c.tasks.templates = vec![sleep]).await;
    let boot = addr(&owner.node).await;
    let holder = start("holder", Some(boot), |_| {}).await;
    sees(&holder.node, 1).await;
    let lease = lease_on(&holder.node, &owner.node).await;
    let spec = TaskSpec::Template {
        template: "sleep".into(),
        params: BTreeMap::from([("secs".to_owned(), "600".to_owned())]),
    };
    // Cancelled by its requester.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    holder
        .node
        .start_task(
            owner.node.id().clone(),
            &lease,
            "cancel-me",
            spec.clone(),
            tx,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = holder
        .node
        .task_call(
            owner.node.id().clone(),
            TaskRequest::Cancel {
                task_id: "cancel-me".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(asked, TaskResponse::Ack);
    let r = loop {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("stopped in time")
        {
            Some(TaskUpdate::Finished(r)) => break r,
            Some(_) => {}
            None => panic!("no result"),
        }
    };
    assert_eq!(r.outcome, TaskOutcome::Cancelled, "{r:?}");
    // The lease is free for the next task; releasing it stops that one.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    holder
        .node
        .start_task(owner.node.id().clone(), &lease, "sleeper", spec, tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.node.release(&lease).await.unwrap();
    let r = loop {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("stopped in time")
        {
            Some(TaskUpdate::Finished(r)) => break r,
            Some(_) => {}
            None => panic!("no result"),
        }
    };
    assert_eq!(r.outcome, TaskOutcome::LeaseEnded, "{r:?}");
    assert!(r.error.unwrap().contains("ended while the task ran"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_is_forwarded_to_the_local_model_server_and_streamed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let fake = FakeOllama {
        name: "gpu-box".into(),
        models: vec!["llama3:latest".into()],
        loaded: vec!["llama3:latest".into()],
        delay_ms: 1,
    };
    tokio::spawn(fake_ollama::serve(listener, fake, stop.clone()));
    let settings = |url: String| ModelServerSettings {
        api: lanswarm::hw::models::ModelApi::Ollama,
        url,
        refresh: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
    };
    let owner = start("owner", None, |c| {
        c.tasks.model_server = Some(settings(url))
    })
    .await;
    let boot = addr(&owner.node).await;
    // A node whose model server is down (nothing listens on port 9).
    let down = start("down", Some(boot.clone()), |c| {
        c.tasks.model_server = Some(settings("http://127.0.0.1:9".into()))
    })
    .await;
    let laptop = start("laptop", Some(boot), |_| {}).await;
    sees(&laptop.node, 2).await;
    let t0 = tokio::time::Instant::now();
    loop {
        let nodes = laptop.node.nodes().await.unwrap();
        if nodes
            .iter()
            .any(|n| n.models.contains(&"llama3".to_owned()))
        {
            break;
        }
        assert!(
            t0.elapsed() < WAIT,
            "the model is never announced: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = down.node.offers().await.unwrap();
    assert!(o.models.is_empty());
    assert!(o.model_status.contains("down"), "{}", o.model_status);

    let alloc = laptop
        .node
        .request(AllocationRequest {
            required_resources: ResourceRequirements {
                cpu_cores: 1,
                preferred_models: vec!["llama3".into()],
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(&alloc.node_id, owner.node.id(), "only the node serving it");
    let spec = TaskSpec::Inference(InferenceRequest {
        model: "llama3".into(),
        call: InferenceCall::Generate {
            prompt: "tell me a story".into(),
            system: None,
        },
        stream: true,
        options: None,
    });
    let (chunks, r) = run(
        &laptop.node,
        &owner.node,
        &alloc.allocation_id,
        spec.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.outcome, TaskOutcome::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "[gpu-box/llama3] tell me a story");
    assert!(chunks.len() > 1, "streamed: {chunks:?}");
    assert_eq!(chunks.concat(), r.stdout);
    // A chat, not streamed: the answer comes whole, in the result.
    let chat = TaskSpec::Inference(InferenceRequest {
        model: "llama3".into(),
        call: InferenceCall::Chat {
            messages: vec![
                lanswarm::model::ChatMessage {
                    role: "system".into(),
                    content: "be brief".into(),
                },
                lanswarm::model::ChatMessage {
                    role: "user".into(),
                    content: "hello there".into(),
                },
            ],
        },
        stream: false,
        options: Some("{\"temperature\": 0}".into()),
    });
    let (chunks, r) = run(&laptop.node, &owner.node, &alloc.allocation_id, chat)
        .await
        .unwrap();
    assert!(chunks.is_empty(), "{chunks:?}");
    assert_eq!(r.stdout, "[gpu-box/llama3] hello there");
    // A model the owner does not serve is refused by name.
    let other = TaskSpec::Inference(InferenceRequest {
        model: "mistral".into(),
        call: InferenceCall::Generate {
            prompt: "x".into(),
            system: None,
        },
        stream: false,
        options: None,
    });
    match run(&laptop.node, &owner.node, &alloc.allocation_id, other).await {
        Err(NodeError::TaskRefused { reason, message }) => {
            assert_eq!(reason, "unknown_model", "{message}");
            assert!(message.contains("llama3"), "{message}");
        }
        other => panic!("expected unknown_model, got {other:?}"),
    }

    // The server goes down: a clear error, and the node stops offering.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lease = alloc.allocation_id.clone();
    match run(&laptop.node, &owner.node, &lease, spec.clone()).await {
        Ok((_, r)) => {
            assert_eq!(r.outcome, TaskOutcome::Error, "{r:?}");
            assert!(r.error.unwrap().contains("down"));
        }
        Err(NodeError::TaskRefused { reason, message }) => {
            assert_eq!(reason, "no_model_server", "{message}");
        }
        Err(e) => panic!("{e}"),
    }
    let t0 = tokio::time::Instant::now();
    loop {
        let o = owner.node.offers().await.unwrap();
        if o.models.is_empty() && o.model_status.contains("down") {
            break;
        }
        assert!(t0.elapsed() < WAIT, "still offering: {o:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it stays healthy.
    assert!(owner.node.local_node().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_in_a_priority_queue() {
    use lanswarm::core::tasks::{JobSpec, JobStatus};
    use lanswarm::work::{Work, WorkConfig};
    let sleep = template(
        "name = \"sleep\"\nargv = [\"sh\", \"-c\", \"sleep \\\"$1\\\"; echo \\\"$1\\\"\", \"sh\", \"{secs}\"]\n\
         [params.secs]\ntype = \"float\"\n",
    );
    let node = start("solo", None, |c| c.tasks.templates = vec![sleep]).await;
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let work = Work::start(
        node.node.clone(),
        &dir.path().join("work.redb"),
        WorkConfig {
            max_running_jobs: 1,
        },
        stop.clone(),
    )
    .unwrap();
    let job = |priority: &str, secs: &str| {
        JobSpec::from_toml(&format!(
            "priority = \"{priority}\"\n[defaults]\ntemplate = \"sleep\"\n\
             [[subtasks]]\nparams = {{ secs = {secs} }}\n"
        ))
        .unwrap()
    };
    let first = work.submit_job(job("normal", "0.8")).unwrap();
    // Let the first one start, then queue a low and a high one.
    let t0 = tokio::time::Instant::now();
    while work.job(&first.job.id).unwrap().job.status == JobStatus::Queued {
        assert!(t0.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let low = work.submit_job(job("low", "0.1")).unwrap();
    let high = work.submit_job(job("high", "0.1")).unwrap();
    // The high one is ahead of the low one, which was queued first.
    assert_eq!(work.job(&high.job.id).unwrap().queue_position, Some(1));
    assert_eq!(work.job(&low.job.id).unwrap().queue_position, Some(2));
    let t0 = tokio::time::Instant::now();
    let done = loop {
        let all: Vec<_> = [&first, &low, &high]
            .iter()
            .map(|j| work.job(&j.job.id).unwrap().job)
            .collect();
        if all.iter().all(|j| j.status == JobStatus::Succeeded) {
            break all;
        }
        assert!(t0.elapsed() < WAIT, "{all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let started = |i: usize| done[i].started_at_ms.unwrap();
    let finished = |i: usize| done[i].finished_at_ms.unwrap();
    // One at a time: each starts after the one before it ended.
    assert!(started(2) >= finished(0), "high after first");
    assert!(started(1) >= finished(2), "low after high");
    assert_eq!(done[1].result, Some(serde_json::json!(["0.1"])));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_larger_than_the_swarm_waits_for_room() {
    use lanswarm::core::tasks::{JobSpec, JobStatus};
    use lanswarm::work::{Work, WorkConfig};
    let sleep = template(
        "name = \"sleep\"\nargv = [\"sh\", \"-c\", \"sleep 0.2; echo \\\"$1\\\"\", \"sh\", \"{n}\"]\n\
         [params.n]\ntype = \"int\"\n",
    );
    // 4 cores; 6 subtasks of 2 cores each: 2 at a time.
    let node = start("small", None, |c| c.tasks.templates = vec![sleep]).await;
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let work = Work::start(
        node.node.clone(),
        &dir.path().join("work.redb"),
        WorkConfig::default(),
        stop.clone(),
    )
    .unwrap();
    let mut text = String::from(
        "aggregate = \"sum\"\nmax_attempts = 1\n[defaults]\ntemplate = \"sleep\"\ncpu_cores = 2\n",
    );
    for n in 1..=6 {
        text.push_str(&format!("[[subtasks]]\nparams = {{ n = {n} }}\n"));
    }
    let job = work.submit_job(JobSpec::from_toml(&text).unwrap()).unwrap();
    let t0 = tokio::time::Instant::now();
    let done = loop {
        let j = work.job(&job.job.id).unwrap().job;
        if j.is_done() {
            break j;
        }
        assert!(t0.elapsed() < WAIT, "{j:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.status, JobStatus::Succeeded, "{:?}", done.error);
    assert_eq!(done.result, Some(serde_json::json!(21)));
    assert!(done.subtasks.iter().all(|s| s.attempts == 1));
    stop.cancel();
}
