//! `cargo bench --bench swarm`: the node measured against the physical
//! limit, with the baseline in the same run.
//!
//! Figures, each printed as it is measured and written to
//! `target/bench/swarm.json` and `target/bench/swarm.svg`:
//!
//! 1. raw TCP ping-pong round trip on 127.0.0.1 (the baseline);
//! 2. allocation round trip (request → grant) between two nodes on an
//!    established connection, p50/p99, and its ratio to the baseline;
//! 3. grants per second of one owner under 8 concurrent requesters;
//! 4. full placement (view → rank → ask → grant, late binding included)
//!    under contention with 20 nodes, p50/p99;
//! 5. time until a capacity change is seen at every other node of 20, p99;
//! 6. resident memory and CPU of an idle `lanswarm` process with 20 peers
//!    (real processes of the release binary, on 127.0.0.1, mDNS off);
//! 7. a task on a lease (run `true` on the owner, result back at the
//!    requester) beside spawning `true` directly, and an inference task
//!    through the swarm beside the same call made straight to the model
//!    server (the in-process Ollama stand-in).
//!
//! `LANSWARM_BENCH_QUICK=1` runs a smaller version of each.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanswarm::core::placement::Strategy;
use lanswarm::handle::AllocationRequest;
use lanswarm::model::{Capacity, ResourceRequirements};
use lanswarm::net::node::{self, NodeConfig};
use lanswarm::Node;
use tokio_util::sync::CancellationToken;

struct Bench {
    quick: bool,
    results: BTreeMap<String, f64>,
    series: BTreeMap<String, Vec<f64>>,
    _dirs: Vec<tempfile::TempDir>,
    shutdown: CancellationToken,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn sorted_ms(d: &[Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn cap(cores: u32) -> Capacity {
    Capacity {
        cpu_cores: cores,
        memory_mb: cores as u64 * 1024,
        disk_mb: 0,
        gpus: vec![],
        custom: Default::default(),
    }
}

fn req(cores: u32) -> AllocationRequest {
    AllocationRequest {
        required_resources: ResourceRequirements {
            cpu_cores: cores,
            ..Default::default()
        },
        ..Default::default()
    }
}

impl Bench {
    fn record(&mut self, name: &str, value: f64, unit: &str) {
        println!("  {name:<44} {value:>12.3} {unit}");
        self.results.insert(format!("{name} ({unit})"), value);
    }

    fn record_latencies(&mut self, name: &str, d: &[Duration]) -> (f64, f64) {
        let s = sorted_ms(d);
        let (p50, p99) = (pct(&s, 0.5), pct(&s, 0.99));
        self.record(&format!("{name} p50"), p50, "ms");
        self.record(&format!("{name} p99"), p99, "ms");
        self.series.insert(name.to_owned(), s);
        (p50, p99)
    }

    async fn node(&mut self, name: &str, capacity: Capacity, bootstrap: Option<&str>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::for_test(name, capacity, dir.path().join("state.redb"));
        cfg.limits.max_leases = 10_000_000;
        cfg.default_lease = Duration::from_secs(600);
        cfg.announce_interval = Duration::from_secs(5);
        // The defaults of a real node.
        cfg.announce_debounce = Duration::from_millis(100);
        if let Some(b) = bootstrap {
            cfg.bootstrap = vec![b.parse().unwrap()];
        }
        let (node, _task) = node::start(cfg, self.shutdown.clone()).await.unwrap();
        self._dirs.push(dir);
        node
    }
}

async fn first_addr(n: &Node) -> String {
    loop {
        if let Some(a) = n.listen_addrs().await.unwrap().into_iter().next() {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_for_view(nodes: &[Node], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in nodes {
        while node.nodes().await.unwrap().len() < n {
            assert!(Instant::now() < deadline, "the swarm did not converge");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Raw TCP ping-pong between two OS threads with blocking sockets, like two
/// processes on one host: the floor any request/response over TCP here
/// can reach. Where the scheduler puts the two threads matters a lot (on
/// the 2-core VM used for docs/benchmarks.md, a wake-up on the same core
/// costs ~5 us, across cores ~50 us), so 5 fresh pairs are measured and
/// both the fastest and the slowest pair are reported. Two hosts never
/// share a core, so the ratio uses the slower (cross-core) figure.
async fn tcp_baseline(b: &mut Bench) -> f64 {
    let n = if b.quick { 500 } else { 3000 };
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(
            tokio::task::spawn_blocking(move || tcp_pair(n))
                .await
                .unwrap(),
        );
    }
    runs.sort_by_key(|d| {
        let mut v = d.clone();
        v.sort();
        v[v.len() / 2]
    });
    let slow = runs.pop().unwrap();
    let fast = runs.swap_remove(0);
    b.record_latencies("tcp ping-pong rtt, fastest of 5 thread pairs", &fast);
    b.record_latencies("tcp ping-pong rtt, slowest of 5 thread pairs", &slow)
        .0
}

fn tcp_pair(n: usize) -> Vec<Duration> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; 128];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut buf = [7u8; 128];
    let mut d = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        c.write_all(&buf).unwrap();
        c.read_exact(&mut buf).unwrap();
        if i >= 100 {
            d.push(t.elapsed());
        }
    }
    drop(c);
    let _ = server.join();
    d
}

async fn alloc_rtt(b: &mut Bench, tcp_p50: f64) {
    let n = if b.quick { 300 } else { 3000 };
    let owner = b.node("owner", cap(1_000_000), None).await;
    let requester = b
        .node("requester", cap(0), Some(&first_addr(&owner).await))
        .await;
    wait_for_view(&[owner.clone(), requester.clone()], 2).await;
    let pinned = AllocationRequest {
        node_id: Some("owner".into()),
        ..req(1)
    };
    let mut d = Vec::with_capacity(n);
    let mut rel = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let t = Instant::now();
        let a = requester.request(pinned.clone()).await.unwrap();
        let took = t.elapsed();
        let t = Instant::now();
        requester.release(&a.allocation_id).await.unwrap();
        if i >= 50 {
            d.push(took);
            rel.push(t.elapsed());
        }
    }
    let (p50, _) = b.record_latencies("allocation rtt (request -> grant)", &d);
    b.record(
        "allocation rtt p50 / slowest tcp rtt p50",
        p50 / tcp_p50,
        "x",
    );
    b.record_latencies("release rtt", &rel);
}

/// Figure 7: what running work through the swarm adds to the work itself.
async fn task_rtt(b: &mut Bench) {
    use lanswarm::handle::TaskUpdate;
    use lanswarm::model::{InferenceCall, InferenceRequest, TaskSpec};
    let n = if b.quick { 50 } else { 300 };
    // Baseline: spawn and reap `true` here.
    let mut spawn = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        std::process::Command::new("true").status().unwrap();
        spawn.push(t.elapsed());
    }
    let (spawn_p50, _) = b.record_latencies("spawn `true` directly (baseline)", &spawn);

    let (addr, _server) = lanswarm::sim::fake_ollama::spawn_local(
        lanswarm::sim::fake_ollama::FakeOllama::new("bench", &["llama3:latest"]),
        b.shutdown.clone(),
    )
    .await
    .unwrap();
    let url = format!("http://{addr}");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::for_test("task-owner", cap(64), dir.path().join("state.redb"));
    cfg.tasks.templates = vec![lanswarm::core::tasks::Template::new("true", ["true"])];
    cfg.tasks.model_server = Some(lanswarm::net::node::ModelServerSettings {
        api: lanswarm::hw::models::ModelApi::Ollama,
        url: url.clone(),
        refresh: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
    });
    let (owner, _task) = node::start(cfg, b.shutdown.clone()).await.unwrap();
    b._dirs.push(dir);
    let requester = b
        .node("task-requester", cap(0), Some(&first_addr(&owner).await))
        .await;
    wait_for_view(&[owner.clone(), requester.clone()], 2).await;
    while !requester
        .nodes()
        .await
        .unwrap()
        .iter()
        .any(|n| n.models.contains(&"llama3".to_owned()))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease = requester
        .request(AllocationRequest {
            node_id: Some("task-owner".into()),
            ..req(1)
        })
        .await
        .unwrap();
    let run = |spec: TaskSpec| {
        let requester = requester.clone();
        let owner_id = owner.id().clone();
        let lease = lease.allocation_id.clone();
        async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let id = uuid::Uuid::new_v4().to_string();
            requester
                .start_task(owner_id, &lease, &id, spec, tx)
                .await
                .unwrap();
            loop {
                if let Some(TaskUpdate::Finished(r)) = rx.recv().await {
                    return r;
                }
            }
        }
    };
    let true_spec = TaskSpec::Template {
        template: "true".into(),
        params: BTreeMap::new(),
    };
    let mut d = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t = Instant::now();
        let r = run(true_spec.clone()).await;
        assert_eq!(r.exit_code, Some(0));
        if i >= 10 {
            d.push(t.elapsed());
        }
    }
    let (p50, _) = b.record_latencies("task `true` on a lease (start -> result)", &d);
    b.record(
        "task p50 - spawn p50 (what the swarm adds)",
        p50 - spawn_p50,
        "ms",
    );

    // Inference: straight to the server, then through the swarm.
    let client = reqwest::Client::new();
    let body = serde_json::json!({"model": "llama3", "prompt": "one two three", "stream": false});
    let mut direct = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .post(format!("{url}/api/generate"))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
        direct.push(t.elapsed());
    }
    let (direct_p50, _) = b.record_latencies("generate straight to the model server", &direct);
    let spec = TaskSpec::Inference(InferenceRequest {
        model: "llama3".into(),
        call: InferenceCall::Generate {
            prompt: "one two three".into(),
            system: None,
        },
        stream: false,
        options: None,
    });
    let mut via = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = run(spec.clone()).await;
        assert_eq!(r.stdout, "[bench/llama3] one two three");
        via.push(t.elapsed());
    }
    let (via_p50, _) = b.record_latencies("generate through the swarm (task)", &via);
    b.record(
        "inference p50 - direct p50 (what the swarm adds)",
        via_p50 - direct_p50,
        "ms",
    );
}

async fn grants_per_second(b: &mut Bench, in_flight: usize) {
    let secs = if b.quick { 2.0 } else { 5.0 };
    let owner_name = format!("gowner{in_flight}");
    let owner = b.node(&owner_name, cap(100_000_000), None).await;
    let addr = first_addr(&owner).await;
    let mut reqs = Vec::new();
    for i in 0..8 {
        reqs.push(
            b.node(&format!("greq{in_flight}-{i}"), cap(0), Some(&addr))
                .await,
        );
    }
    wait_for_view(std::slice::from_ref(&owner), 9).await;
    wait_for_view(&reqs, 2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in reqs
        .iter()
        .flat_map(|r| std::iter::repeat_n(r.clone(), in_flight))
    {
        let (stop, count) = (stop.clone(), count.clone());
        let owner_name = owner_name.clone();
        tasks.push(tokio::spawn(async move {
            let pinned = AllocationRequest {
                node_id: Some(owner_name),
                ..req(1)
            };
            while !stop.load(Ordering::Relaxed) {
                r.request(pinned.clone()).await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_count = count.load(Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let got = count.load(Ordering::Relaxed) - start_count;
    let rate = got as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    b.record(
        &format!("grants/s, one owner, 8 requesters x {in_flight} in flight"),
        rate,
        "grants/s",
    );
}

async fn placement_under_contention(b: &mut Bench) -> Vec<Node> {
    let rounds = if b.quick { 20 } else { 100 };
    let first = b.node("p00", cap(2), None).await;
    let addr = first_addr(&first).await;
    let mut nodes = vec![first];
    for i in 1..20 {
        nodes.push(b.node(&format!("p{i:02}"), cap(2), Some(&addr)).await);
    }
    wait_for_view(&nodes, 20).await;
    // 20 nodes x 2 cores = 40 cores; 16 requesters each hold up to 2
    // one-core leases at once, so owners fill up and views go stale.
    let refusals = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in nodes.iter().take(16) {
        let r = r.clone();
        let (refusals, failures) = (refusals.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut d = Vec::new();
            let mut held = std::collections::VecDeque::new();
            for _ in 0..rounds {
                let t = Instant::now();
                match r
                    .request(AllocationRequest {
                        strategy: Some(Strategy::LeastLoaded),
                        ..req(1)
                    })
                    .await
                {
                    Ok(a) => {
                        d.push(t.elapsed());
                        refusals.fetch_add(a.refusals.len() as u64, Ordering::Relaxed);
                        held.push_back(a.allocation_id);
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if held.len() >= 2 {
                    let id = held.pop_front().unwrap();
                    let _ = r.release(&id).await;
                }
            }
            for id in held {
                let _ = r.release(&id).await;
            }
            d
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    b.record_latencies("placement under contention, 20 nodes", &all);
    b.record(
        "  late-binding refusals along the way",
        refusals.load(Ordering::Relaxed) as f64,
        "count",
    );
    b.record(
        "  requests with no room anywhere",
        failures.load(Ordering::Relaxed) as f64,
        "count",
    );
    nodes
}

async fn propagation(b: &mut Bench, nodes: &[Node]) {
    let rounds = if b.quick { 10 } else { 40 };
    let mut d = Vec::new();
    for round in 0..rounds {
        let k = round % nodes.len();
        let name = format!("p{k:02}");
        let before = nodes[k]
            .local_node()
            .await
            .unwrap()
            .resources
            .free
            .cpu_cores;
        if before == 0 {
            continue;
        }
        let t = Instant::now();
        let Ok(a) = nodes[k]
            .request(AllocationRequest {
                node_id: Some(name.clone()),
                ..req(1)
            })
            .await
        else {
            // A lease of the contention phase still draining: skip.
            continue;
        };
        for (i, n) in nodes.iter().enumerate() {
            if i == k {
                continue;
            }
            loop {
                let seen = n
                    .nodes()
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|x| x.name == name)
                    .map(|x| x.resources.free.cpu_cores);
                if seen == Some(before - 1) {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
        d.push(t.elapsed());
        let _ = nodes[k].release(&a.allocation_id).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.record_latencies("capacity change seen by all 19 others", &d);
}

fn idle_process(b: &mut Bench) {
    let secs = if b.quick { 5 } else { 20 };
    let bin = env!("CARGO_BIN_EXE_lanswarm");
    let dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    let mut first_addr = String::new();
    for i in 0..21 {
        let d = dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = format!(
            "name = \"idle{i}\"\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[network]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\nbootstrap = [{}]\n[resources]\ndetect_gpus = false\n",
            d.display(),
            if i == 0 { String::new() } else { format!("{first_addr:?}") }
        );
        std::fs::write(d.join("c.toml"), cfg).unwrap();
        let child = std::process::Command::new(bin)
            .args(["run", "--config"])
            .arg(d.join("c.toml"))
            .env("LANSWARM_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let api = format!("127.0.0.1:{port}");
        let node = loop {
            if let Some(v) = get_json(&api, "/api/v1/node") {
                break v;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if i == 0 {
            first_addr = node["addresses"][0].as_str().unwrap().to_owned();
        }
        children.push((child, api));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (_, api) in &children {
        while get_json(api, "/api/v1/nodes").map_or(0, |v| v.as_array().unwrap().len()) < 21 {
            assert!(Instant::now() < deadline, "processes did not converge");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let pid = children[10].0.id();
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let t0 = ticks();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu_s = (ticks() - t0) as f64 / 100.0; // USER_HZ
    let cpu_pct = 100.0 * cpu_s / start.elapsed().as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    for (mut c, _) in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    b.record(
        "idle node with 20 peers: resident memory",
        rss_kb / 1024.0,
        "MiB",
    );
    b.record("idle node with 20 peers: CPU", cpu_pct, "% of a core");
}

fn get_json(addr: &str, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let body = resp.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(body).ok()
}

fn svg(series: &BTreeMap<String, Vec<f64>>) -> String {
    let (w, h, left, bottom) = (720.0, 380.0, 70.0, 50.0);
    let total_h = h + 16.0 * series.len() as f64 + 10.0;
    let max = series
        .values()
        .filter_map(|v| v.last().copied())
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let lmax = max.log10().ceil();
    let lmin = series
        .values()
        .filter_map(|v| v.first().copied())
        .fold(f64::INFINITY, f64::min)
        .max(1e-3)
        .log10()
        .floor();
    let x = |ms: f64| left + (ms.max(1e-3).log10() - lmin) / (lmax - lmin) * (w - left - 20.0);
    let y = |q: f64| (h - bottom) - q * (h - bottom - 20.0);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{total_h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"15\" text-anchor=\"middle\">Latency CDF (log scale), cargo bench --bench swarm</text>\n",
        w / 2.0
    );
    for e in (lmin as i32)..=(lmax as i32) {
        let v = 10f64.powi(e);
        let xv = x(v);
        out += &format!(
            "<line x1=\"{xv}\" y1=\"20\" x2=\"{xv}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{xv}\" y=\"{}\" text-anchor=\"middle\">{v} ms</text>\n",
            h - bottom,
            h - bottom + 18.0
        );
    }
    for q in [0.0, 0.5, 0.9, 0.99] {
        out += &format!(
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{0}\" text-anchor=\"end\">p{3}</text>\n",
            y(q),
            w - 20.0,
            left - 6.0,
            (q * 100.0) as u32
        );
    }
    for (i, (name, v)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(j, ms)| format!("{:.1},{:.1}", x(*ms), y((j + 1) as f64 / v.len() as f64)))
            .collect();
        out += &format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"{c}\">{name}</text>\n",
            pts.join(" "),
            left,
            h + 12.0 + 16.0 * i as f64
        );
    }
    out + "</svg>\n"
}

fn main() {
    let quick = std::env::var_os("LANSWARM_BENCH_QUICK").is_some();
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut b = Bench {
        quick,
        results: BTreeMap::new(),
        series: BTreeMap::new(),
        _dirs: Vec::new(),
        shutdown: CancellationToken::new(),
    };
    let want = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    println!(
        "lanswarm swarm benchmark{}",
        if quick { " (quick)" } else { "" }
    );
    rt.block_on(async {
        let tcp = tcp_baseline(&mut b).await;
        if want("rtt") {
            alloc_rtt(&mut b, tcp).await;
        }
        if want("throughput") {
            grants_per_second(&mut b, 1).await;
            grants_per_second(&mut b, 8).await;
        }
        if want("tasks") {
            task_rtt(&mut b).await;
        }
        if want("placement") || want("propagation") {
            let nodes = placement_under_contention(&mut b).await;
            propagation(&mut b, &nodes).await;
        }
        b.shutdown.cancel();
    });
    if want("idle") {
        idle_process(&mut b);
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("swarm.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "results": b.results,
            "quick": quick,
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(out.join("swarm.svg"), svg(&b.series)).unwrap();
    println!("wrote {}", out.join("swarm.json").display());
}
