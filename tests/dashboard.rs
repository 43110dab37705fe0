//! The web dashboard in a real browser: headless Chromium, driven over the
//! WebDriver protocol by `chromedriver`, against two real `lanswarm`
//! nodes on loopback. It clicks through requesting and releasing an
//! allocation, a refused request, toggling remote access and a health
//! check, checks each result on the page and through the API, checks that
//! the page follows changes made elsewhere without a reload (server-sent
//! events), and saves a screenshot to `target/tmp/dashboard.png`. A
//! second browser test books, starts (by posting its event) and cancels
//! advance reservations from the Reservations panel.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). Without them the test fails under CI (`CI` set) and otherwise
//! says `SKIPPED` with what it needs.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use common::daemon::{free_port, Daemon, DaemonBuilder};
use common::eventually;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const WAIT: Duration = Duration::from_secs(20);

/// One headless Chromium at a time: the browser tests wait for each
/// other rather than share a small machine.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

fn one_browser() -> MutexGuard<'static, ()> {
    ONE_BROWSER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A node as these tests run it, logging at `info`.
fn node(name: &str) -> DaemonBuilder {
    Daemon::builder(name).log_filter("info")
}

/// One WebDriver exchange. chromedriver keeps connections open whatever
/// the request says, so the answer is read by its `Content-Length`.
fn webdriver(method: &str, url: &str, body: Option<&str>) -> Result<(u16, Value), String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| format!("bad length {v:?}"))?;
            }
        }
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_slice(&buf).unwrap_or(Value::Null)))
}

/// chromedriver and one headless Chromium session, ended on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        eventually("chromedriver is ready", WAIT, || {
            match webdriver("GET", &format!("{base}/status"), None) {
                Ok((200, v)) if v["value"]["ready"] == json!(true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        let profile = tempfile::tempdir().unwrap();
        // Flags as for any headless Chromium run as root on a machine with
        // no outside network: no sandbox (root), no GPU, and none of the
        // background connections to Google's hosts.
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--window-size=1400,2600",
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }}
        });
        let (status, v) = webdriver("POST", &format!("{base}/session"), Some(&caps.to_string()))
            .unwrap_or_else(|e| panic!("new WebDriver session: {e}"));
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        assert_eq!(status, 200, "new WebDriver session: {v}");
        b.session = v["value"]["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        b
    }

    /// One WebDriver command on the session; panics on a WebDriver error.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let body = body.map(|b| b.to_string());
        let (status, v) = webdriver(method, &url, body.as_deref())?;
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(format!("{status}: {v}"))
        }
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> Result<String, String> {
        let v = self.try_cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no element reference in {v}"))
    }

    /// Wait until `css` matches an element, and return it.
    fn wait_for(&self, css: &str) -> String {
        eventually(&format!("the page shows {css}"), WAIT, || self.find(css)).0
    }

    fn click(&self, css: &str) {
        let e = self.wait_for(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn text(&self, css: &str) -> String {
        let e = self.wait_for(css);
        self.cmd("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn set_value(&self, css: &str, value: &str) {
        let e = self.wait_for(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": value })),
        );
    }

    /// Run `script` (a function body) in the page.
    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Wait until the text of `css` satisfies `ok`, and return it.
    fn wait_text(&self, what: &str, css: &str, ok: impl Fn(&str) -> bool) -> String {
        eventually(what, WAIT, || {
            let t = self
                .find(css)
                .and_then(|e| self.try_cmd("GET", &format!("/element/{e}/text"), None))?;
            let t = t.as_str().unwrap_or_default().to_owned();
            if ok(&t) {
                Ok(t)
            } else {
                Err(format!("{css} says {t:?}"))
            }
        })
        .0
    }

    fn screenshot(&self, path: &Path) {
        let png = self.cmd("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 screenshot"))
            .expect("decoding the screenshot");
        assert!(bytes.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_cmd("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether Chromium and chromedriver are here; under CI they must be.
fn browser_available(checks: &str) -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install Debian's chromium and chromium-driver (.ci/run does); missing {missing:?}"
    );
    eprintln!(
        "SKIPPED (needs Debian's chromium and chromium-driver; missing {missing:?}): would have checked {checks}"
    );
    false
}

fn held(d: &Daemon, id: &str) -> Option<Value> {
    let (status, all) = d.get("/api/v1/allocations");
    assert_eq!(status, 200);
    all["held"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["allocation_id"] == json!(id))
        .cloned()
}

#[test]
fn the_dashboard_drives_a_real_node_in_headless_chromium() {
    if !browser_available(
        "requesting and releasing an allocation, a refusal, remote access, a health check \
         and live updates on the dashboard in headless Chromium",
    ) {
        return;
    }
    let _browser_turn = one_browser();
    let a = node("dash-a").start();
    let addr = a.get("/api/v1/node").1["addresses"][0]
        .as_str()
        .expect("an address")
        .to_owned();
    let b = node("dash-b").bootstrap(&addr).start();
    let (a_id, b_id) = (a.id(), b.id());
    let started = Instant::now();
    let browser = Browser::start();
    browser.goto(&format!("{}/", a.api()));

    // The page connects to the live stream and lists both nodes, online.
    browser.wait_text("the page is live", "#live", |t| t == "live");
    assert_eq!(browser.text("#node-name"), "dash-a");
    for id in [&a_id, &b_id] {
        browser.wait_text(
            "both nodes are listed online",
            &format!("#nodes-table tr[data-node='{id}'] .badge"),
            |t| t == "online",
        );
    }
    browser.click("#nodes-discover");
    let msg = browser.wait_text("discovery reports", "#nodes-msg", |t| {
        t.starts_with("discovering")
    });
    println!("discover: {msg}");

    // Request 2 cores and 1 GiB on node b from the form.
    browser.set_value("#req-cpu", "2");
    browser.set_value("#req-mem", "1024");
    browser.js(&format!(
        "document.getElementById('req-node').value = '{b_id}'; return true;"
    ));
    browser.click("#req-submit");
    browser.wait_text("the request is granted", "#req-result", |t| {
        t.starts_with("active")
    });
    let id = browser.text("#req-allocation-id");
    let lease = held(&a, &id).expect("the API lists the allocation the page made");
    assert_eq!(lease["status"], "active");
    assert_eq!(lease["node_id"], json!(b_id));
    assert_eq!(lease["allocated_resources"]["cpu_cores"], 2);
    assert_eq!(lease["allocated_resources"]["memory_mb"], 1024);
    let (_, on_b) = b.get(&format!("/api/v1/allocations/{id}"));
    assert_eq!(on_b["holder"], json!(a_id), "b granted it to a");
    // The allocations panel shows it, with a release button.
    browser.wait_for(&format!("#alloc-held button[data-release='{id}']"));

    // Release it from the allocations panel.
    browser.click(&format!("#alloc-held button[data-release='{id}']"));
    let msg = browser.wait_text("the release is confirmed", "#alloc-msg", |t| {
        t.starts_with("released")
    });
    assert!(msg.contains("owner confirmed"), "{msg}");
    assert!(held(&a, &id).is_none(), "a no longer holds {id}");
    let (status, _) = b.get(&format!("/api/v1/allocations/{id}"));
    assert_eq!(status, 404, "b took {id} back");
    eventually("the page drops the released lease", WAIT, || match browser
        .find(&format!("#alloc-held tr[data-allocation='{id}']"))
    {
        Ok(_) => Err("still listed".into()),
        Err(_) => Ok(()),
    });

    // More cores than any node lends: refused, with the reason on the page.
    browser.set_value("#req-cpu", "64");
    browser.click("#req-submit");
    let refusal = browser.wait_text("the refusal is shown", "#req-result", |t| {
        t.contains("unsatisfiable")
    });
    println!("refusal on the page: {refusal}");
    let (_, all) = a.get("/api/v1/allocations");
    assert_eq!(all["held"], json!([]), "nothing held after the refusal");

    // A lease made elsewhere (through the API) appears without a reload.
    let (status, made) = a.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 1}, "node_id": "dash-a"}"#,
    );
    assert_eq!(status, 201, "{made}");
    let other = made["allocation_id"].as_str().unwrap().to_owned();
    let (_, pushed_after) = eventually("the page shows the new lease live", WAIT, || {
        browser
            .find(&format!("#alloc-held tr[data-allocation='{other}']"))
            .map(|_| ())
    });
    println!("a lease made through the API appeared on the page after {pushed_after:?}");

    // Remote access: untick, check the API, tick again.
    let (_, access) = a.get("/api/v1/access");
    assert_eq!(access["allow_remote"], true);
    browser.click("#access-remote");
    browser.wait_text("remote access is off", "#access-status", |t| {
        t.contains("off") && t.contains("saved")
    });
    assert_eq!(a.get("/api/v1/access").1["allow_remote"], false);
    // b is now refused by a's access policy.
    let (status, denied) = b.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 1}, "node_id": "dash-a"}"#,
    );
    assert_eq!(status, 403, "{denied}");
    browser.click("#access-remote");
    browser.wait_text("remote access is on again", "#access-status", |t| {
        t.contains("allowed") && t.contains("saved")
    });
    assert_eq!(a.get("/api/v1/access").1["allow_remote"], true);
    browser.click("#access-get");

    // Health check: both nodes answer.
    browser.click("#health-check");
    for id in [&a_id, &b_id] {
        browser.wait_text(
            "the health check lists both nodes online",
            &format!("#health-table tr[data-node='{id}'] .badge"),
            |t| t == "online",
        );
    }

    // The charts have data from the stream: samples and the page's own
    // allocation round trips (granted and refused).
    let (counts, _) = eventually("the charts have samples and latencies", WAIT, || {
        let v = browser.js("return [state.samples.length, state.latency.length, \
             state.latency.filter(p => p.outcome === 'granted').length];");
        let n: Vec<u64> = v
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        if n.len() == 3 && n[0] >= 2 && n[1] >= 2 && n[2] >= 2 {
            Ok(n)
        } else {
            Err(format!("{v}"))
        }
    });
    println!(
        "charts: {} samples, {} allocation latencies ({} granted)",
        counts[0], counts[1], counts[2]
    );

    // The history panel lists the grant and the release the page made.
    browser.click("#history-refresh");
    let history = browser.wait_text(
        "the history lists the grant and the release",
        "#history-table",
        |t| t.contains("grant") && t.contains("release") && t.contains("policy change"),
    );
    println!(
        "history panel: {} rows",
        history.lines().count().saturating_sub(1)
    );

    // The bottlenecks panel: with preemption on, a is asked for more
    // cores than it has free (it holds one for `other`) and refuses;
    // `cpu_cores` becomes its bottleneck.
    // (b asks a only once a's announcement says it may preempt.)
    let (status, p) = a.send("PATCH", "/api/v1/scheduler", r#"{"preemption": true}"#);
    assert_eq!(status, 200, "{p}");
    eventually("a refuses b for cores", WAIT, || {
        let (status, refused) = b.send(
            "POST",
            "/api/v1/allocations",
            r#"{"required_resources": {"cpu_cores": 4}, "node_id": "dash-a"}"#,
        );
        assert_eq!(status, 503, "{refused}");
        let (_, r) = a.get("/api/v1/bottlenecks");
        if r["local_refused"].as_u64().unwrap_or(0) >= 1 {
            Ok(())
        } else {
            Err(format!("{refused} / {r}"))
        }
    });
    let (_, r) = a.get("/api/v1/bottlenecks");
    assert_eq!(r["bottleneck"], "cpu_cores", "{r}");
    let count = r["nodes"][0]["dimensions"][0]["count"].to_string();
    browser.click("#bottlenecks-refresh");
    browser.wait_text(
        "the bottlenecks panel names cpu_cores",
        &format!("#bottlenecks-table tr[data-node='{a_id}'][data-dimension='cpu_cores']"),
        |t| t.contains("dash-a") && t.contains("cpu_cores") && t.ends_with(&count),
    );
    let summary = browser.text("#bottleneck-summary");
    assert!(summary.contains("cpu_cores"), "{summary}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot);
    println!(
        "screenshot: {} (test took {:?})",
        shot.display(),
        started.elapsed()
    );
    let (status, _) = a.send("DELETE", &format!("/api/v1/allocations/{other}"), "");
    assert_eq!(status, 200);
}

/// One plain `GET` (`Connection: close`): the whole answer, status line
/// and headers included, for what the JSON client cannot show.
fn raw_get(api: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let host = api.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("reading the answer");
    String::from_utf8_lossy(&got).into_owned()
}

/// Read a node's event stream until the first `snapshot` event, and
/// return its data.
fn first_snapshot(api: &str) -> Value {
    use std::io::{Read, Write};
    let host = api.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = s.read(&mut buf).expect("reading the event stream");
        assert!(n > 0, "the stream ended early");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "not a 200: {}",
            &text[..text.len().min(200)]
        );
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{text}"
        );
        // Chunked: the event's lines arrive inside one chunk.
        if let Some(at) = text.find("event: snapshot\ndata: ") {
            let rest = &text[at + "event: snapshot\ndata: ".len()..];
            if let Some(end) = rest.find('\n') {
                return serde_json::from_str(&rest[..end]).expect("snapshot data is JSON");
            }
        }
        assert!(Instant::now() < deadline, "no snapshot within 10 s: {text}");
    }
}

#[test]
fn the_dashboard_assets_stream_and_utilization_answer_and_bad_queries_are_refused() {
    let a = node("dash-assets").start();
    // The page and its assets, from the binary, with their types.
    for (path, ctype, needle) in [
        ("/", "text/html", "<canvas id=\"chart-local\""),
        ("/dashboard/app.js", "text/javascript", "/api/v1/events"),
        ("/dashboard/app.css", "text/css", ".badge"),
    ] {
        let text = raw_get(a.api(), path);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text:.200}");
        assert!(
            text.to_ascii_lowercase()
                .contains(&format!("content-type: {ctype}")),
            "{path}: {text:.300}"
        );
        assert!(text.contains(needle), "{path} holds {needle:?}");
        // Nothing is fetched from elsewhere: no absolute URLs to load.
        assert!(
            !text.contains("src=\"http") && !text.contains("href=\"http"),
            "{path} loads nothing from other hosts"
        );
    }
    // The event stream's first snapshot: this node, the nodes, the
    // allocations and the utilization history so far.
    let snap = first_snapshot(a.api());
    assert_eq!(snap["node"]["name"], "dash-assets");
    assert_eq!(snap["nodes"].as_array().map(Vec::len), Some(1));
    assert!(snap["allocations"]["held"].is_array());
    assert_eq!(snap["utilization"]["every_ms"], 2000);

    // A granted request shows in the utilization samples and latencies.
    let (status, made) = a.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 3, "memory_mb": 2048}}"#,
    );
    assert_eq!(status, 201, "{made}");
    let (u, waited) = eventually("a sample shows the lease", WAIT, || {
        let (status, u) = a.get("/api/v1/utilization?since=1m");
        if status != 200 {
            return Err(format!("{status}: {u}"));
        }
        let last = u["samples"].as_array().and_then(|s| s.last()).cloned();
        match last {
            Some(s) if s["local"]["cpu_cores_free"] == 1 => Ok(u),
            other => Err(format!("latest sample {other:?}")),
        }
    });
    println!("the lease showed in a sample after {waited:?}");
    let last = u["samples"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["local"]["cpu_cores_total"], 4);
    assert_eq!(last["local"]["memory_mb_free"], 8192 - 2048);
    assert_eq!(last["local_active_leases"], 1);
    assert_eq!(last["swarm"]["nodes"], 1);
    assert_eq!(last["nodes"]["online"], 1);
    let lat = u["latency"].as_array().unwrap();
    assert_eq!(lat.len(), 1, "{u}");
    assert_eq!(lat[0]["outcome"], "granted");
    assert!(lat[0]["ms"].as_f64().unwrap() > 0.0);
    // after_ms past the last sample gives nothing older.
    let after = last["at_ms"].as_u64().unwrap();
    let (_, later) = a.get(&format!("/api/v1/utilization?after_ms={after}"));
    assert!(later["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["at_ms"].as_u64().unwrap() > after));

    // Discovery now: no bootstrap, no peers, mDNS off.
    let (status, d) = a.send("POST", "/api/v1/discover", "");
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        d,
        json!({"bootstrap_dialed": 0, "synced_with": 0, "known": 0, "mdns": false})
    );

    // Bad queries: 400 bad_query, JSON error, nothing else changes.
    for q in [
        "since=abc",
        "since=-5m",
        "since=1m&after_ms=5",
        "after_ms=soon",
        "every=1s",
    ] {
        let (status, e) = a.get(&format!("/api/v1/utilization?{q}"));
        assert_eq!(status, 400, "{q}: {e}");
        assert_eq!(e["error"]["code"], "bad_query", "{q}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().len() > 10,
            "{q}: {e}"
        );
    }
    let (_, all) = a.get("/api/v1/allocations");
    assert_eq!(all["held"].as_array().map(Vec::len), Some(1));
}

impl Browser {
    /// Wait until the reservation row `row` shows `status`, or is gone
    /// (the owner lists only live reservations).
    fn wait_finished(&self, row: &str, status: &str) {
        eventually(&format!("{row} is {status} or gone"), WAIT, || {
            let Ok(e) = self.find(&format!("{row} .resv-status")) else {
                return Ok(());
            };
            match self.try_cmd("GET", &format!("/element/{e}/text"), None) {
                Ok(t) if t == json!(status) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
}

/// The node lists `id` no longer, or only with the finished `status`.
fn assert_not_live(d: &Daemon, id: &str, status: &str) {
    for side in ["held", "granted"] {
        if let Some(r) = reservation(d, side, id) {
            assert_eq!(r["status"], status, "{side}: {r}");
        }
    }
}

fn reservation(d: &Daemon, side: &str, id: &str) -> Option<Value> {
    let (status, all) = d.get("/api/v1/reservations");
    assert_eq!(status, 200, "{all}");
    all[side]
        .as_array()
        .expect("a list of reservations")
        .iter()
        .find(|r| r["reservation_id"] == json!(id))
        .cloned()
}

#[test]
fn the_reservations_panel_lists_starts_books_and_cancels_reservations() {
    if !browser_available(
        "the reservations panel: a conditional reservation listed, its event posted from \
         the panel, booking and cancelling from the panel",
    ) {
        return;
    }
    let _browser_turn = one_browser();
    let a = node("dash-resv").start();
    let a_id = a.id();

    // A reservation made through the API, on this node, now, waiting for
    // the event `go`.
    let (status, made) = a.send(
        "POST",
        "/api/v1/reservations",
        r#"{"required_resources": {"cpu_cores": 1}, "start_in_secs": 0, "duration_secs": 600,
            "node_id": "dash-resv", "when_event": "go"}"#,
    );
    assert_eq!(status, 201, "{made}");
    let id = made["reservation_id"].as_str().expect("an id").to_owned();
    assert_eq!(made["when_event"], "go");

    let browser = Browser::start();
    browser.goto(&format!("{}/", a.api()));
    browser.wait_text("the page is live", "#live", |t| t == "live");

    // The panel lists it, not started yet, with its condition.
    let row = format!("#resv-table tr[data-reservation='{id}']");
    let before = browser.wait_text(
        "the reservation is listed, waiting for its event",
        &format!("{row} .resv-status"),
        |t| t == "waiting" || t == "confirmed",
    );
    assert_eq!(browser.text(&format!("{row} .resv-condition")), "event go");
    let text = browser.text(&row);
    assert!(
        text.contains("dash-resv") && text.contains("this node"),
        "{text}"
    );
    assert!(text.contains("1 core"), "{text}");
    // Still live: it has a Cancel button; no lease exists for it yet.
    browser.wait_for(&format!("#resv-table button[data-cancel='{id}']"));
    assert!(held(&a, &id).is_none(), "no lease before the event");
    println!("before the event the panel says {before}");

    // A bad event name is refused, and said so on the page.
    browser.set_value("#resv-event-name", "no spaces");
    browser.click("#resv-event-post");
    browser.wait_text("the bad name is refused", "#resv-event-result", |t| {
        t.starts_with("bad_request")
    });
    let kept = reservation(&a, "granted", &id).expect("still kept");
    assert!(
        kept["status"] == "waiting" || kept["status"] == "confirmed",
        "{kept}"
    );
    assert!(kept.get("condition_met").is_none(), "{kept}");

    // Post `go` from the panel's form: it meets the reservation.
    browser.set_value("#resv-event-name", "go");
    browser.click("#resv-event-post");
    browser.wait_text(
        "the event meets one reservation",
        "#resv-event-result",
        |t| t.starts_with("go: met 1 reservation"),
    );
    browser.wait_for(&format!("#resv-event-result li[data-met='{id}']"));
    browser.wait_text(
        "the reservation becomes active",
        &format!("{row} .resv-status"),
        |t| t == "active",
    );
    let cond = browser.text(&format!("{row} .resv-condition"));
    assert!(cond.starts_with("event go, met "), "{cond}");
    let kept = reservation(&a, "granted", &id).expect("kept by this node");
    assert_eq!(kept["status"], "active", "{kept}");
    assert!(kept["condition_met"].is_string(), "{kept}");
    let lease = held(&a, &id).expect("the reservation's lease, with its id");
    assert_eq!(lease["status"], "active");
    assert_eq!(lease["allocated_resources"]["cpu_cores"], 1);

    // Book one from the panel's form: 2 cores in 30 minutes, for 10.
    browser.set_value("#resv-cpu", "2");
    browser.set_value("#resv-start", "30");
    browser.set_value("#resv-duration", "10");
    browser.click("#resv-submit");
    let msg = browser.wait_text("the booking is confirmed", "#resv-msg", |t| {
        t.starts_with("reserved")
    });
    assert!(msg.ends_with("(confirmed)"), "{msg}");
    let (_, all) = a.get("/api/v1/reservations");
    let booked: Vec<&Value> = all["held"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reservation_id"] != json!(id))
        .collect();
    assert_eq!(booked.len(), 1, "{all}");
    let booked = booked[0].clone();
    let other = booked["reservation_id"].as_str().unwrap().to_owned();
    assert_eq!(booked["status"], "confirmed");
    assert_eq!(booked["node_id"], json!(a_id));
    assert_eq!(booked["required_resources"]["cpu_cores"], 2);
    assert!(booked.get("when_event").is_none(), "{booked}");
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(booked[k].as_str().unwrap())
            .unwrap()
            .timestamp()
    };
    assert_eq!(at("end") - at("start"), 600, "{booked}");
    let ahead = at("start") - chrono::Utc::now().timestamp();
    assert!(
        (1500..=1800).contains(&ahead),
        "starts in {ahead} s: {booked}"
    );
    let other_row = format!("#resv-table tr[data-reservation='{other}']");
    browser.wait_text(
        "the booking is listed",
        &format!("{other_row} .resv-status"),
        |t| t == "confirmed",
    );
    assert_eq!(browser.text(&format!("{other_row} .resv-condition")), "");

    // Cancel it from the panel: cancelled, and no Cancel button any more.
    browser.click(&format!("#resv-table button[data-cancel='{other}']"));
    browser.wait_text("the cancel is reported", "#resv-msg", |t| {
        t.starts_with("cancelled")
    });
    browser.wait_finished(&other_row, "cancelled");
    assert!(browser
        .find(&format!("#resv-table button[data-cancel='{other}']"))
        .is_err());
    assert_not_live(&a, &other, "cancelled");

    // End the active one from the panel: its lease goes, and the owner
    // no longer keeps it. (The row itself is not checked: the holder's
    // own copy of a reservation it ended still reads `active`.)
    browser.click(&format!("#resv-table button[data-cancel='{id}']"));
    browser.wait_text("the end is reported", "#resv-msg", |t| {
        t.starts_with("ended")
    });
    assert!(held(&a, &id).is_none(), "its lease is released");
    if let Some(kept) = reservation(&a, "granted", &id) {
        assert_eq!(kept["status"], "released", "{kept}");
    }
}
