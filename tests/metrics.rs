//! `GET /metrics` on two real `lanswarm` binaries on loopback: after a
//! grant, a release and a denial, each node's Prometheus metrics hold the
//! values that happened, and `promtool check metrics` accepts them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::Daemon;
use common::eventually;

/// The API token of the first node: its /metrics needs it too.
const TOKEN: &str = "metrics-test-token";

impl Daemon {
    /// `GET /metrics` as text: status, Content-Type and body. With
    /// `openmetrics`, it asks for OpenMetrics as Prometheus does.
    fn scrape_with(&self, token: Option<&str>, openmetrics: bool) -> (u16, String, String) {
        let mut s = TcpStream::connect(self.addr()).expect("connecting to the API");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let accept = if openmetrics {
            "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"
        } else {
            ""
        };
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\n{auth}{accept}Connection: close\r\n\r\n",
            self.addr()
        )
        .expect("sending the request");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("reading the answer");
        let resp = String::from_utf8_lossy(&resp);
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
        let head_lc = head.to_ascii_lowercase();
        let content_type = head_lc
            .lines()
            .find_map(|l| l.strip_prefix("content-type:"))
            .unwrap_or("")
            .trim()
            .to_owned();
        let body = if head_lc.contains("transfer-encoding: chunked") {
            lanswarm::sim::http::dechunk(body)
        } else {
            body.to_owned()
        };
        (status, content_type, body)
    }

    /// The metrics in Prometheus' text format.
    fn scrape(&self) -> String {
        let (status, _, body) = self.scrape_with(self.token(), false);
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// The value of the sample whose name and labels are exactly `series`
/// (as the encoder writes them), if there is one.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(series)?.strip_prefix(' ')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// The sum over every series of the family sample `name` (any labels).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// A check for [`eventually`]: `series` has value `want` in `text`.
fn has(text: &str, series: &str, want: f64) -> Result<(), String> {
    match sample(text, series) {
        Some(v) if v == want => Ok(()),
        other => Err(format!("{series} is {other:?}, want {want}")),
    }
}

/// Run `promtool check metrics` on `text`. Without promtool: fail under
/// CI, else say the check was skipped.
fn promtool_check(name: &str, text: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var_os("CI").is_some() {
                panic!("promtool is missing (CI is set; .ci/run installs Debian's prometheus)");
            }
            println!(
                "SKIPPED (needs promtool from Debian's prometheus package): \
                 promtool check metrics on {name}'s /metrics"
            );
            return;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("waiting for promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("promtool check metrics ({name}): {} {said}", out.status);
    assert!(
        out.status.success(),
        "promtool rejected {name}'s metrics: {said}\n{text}"
    );
}

#[test]
fn metrics_count_what_happened_and_pass_promtool() {
    let owner = Daemon::builder("owner").token(TOKEN).start();
    let (s, node) = owner.get("/api/v1/node");
    assert_eq!(s, 200, "{node}");
    let owner_id = node["id"].as_str().expect("node id").to_owned();
    let addr = node["addresses"][0]
        .as_str()
        .expect("a listen address")
        .to_owned();
    let requester = Daemon::builder("requester").bootstrap(&addr).start();

    // /metrics needs the token where the API has one, and is open where
    // it has none.
    let (status, _, body) = owner.scrape_with(None, false);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
    let (status, _, _) = owner.scrape_with(Some("wrong-token"), true);
    assert_eq!(status, 401);
    // OpenMetrics for whoever asks for it (Prometheus), the classic text
    // format for everyone else.
    let (status, content_type, om) = requester.scrape_with(None, true);
    assert_eq!(status, 200);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE lanswarm_allocations counter\n"), "{om}");
    let (status, content_type, text) = owner.scrape_with(Some(TOKEN), false);
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        text.contains("# TYPE lanswarm_allocations_total counter\n"),
        "{text}"
    );

    // Each sees the other online (the gauge is refreshed on the tick).
    for d in [&owner, &requester] {
        eventually(
            "both nodes count one online peer",
            Duration::from_secs(30),
            || has(&d.scrape(), "lanswarm_peers{status=\"online\"}", 1.0),
        );
    }

    // A grant on the owner, asked for by the requester, then released.
    let (s, a) = requester.send(
        "POST",
        "/api/v1/allocations",
        &format!(
            r#"{{"required_resources": {{"cpu_cores": 2, "memory_mb": 1024}}, "node_id": "{owner_id}", "timeout_secs": 60}}"#
        ),
    );
    assert_eq!(s, 201, "{a}");
    assert_eq!(a["node_id"], owner_id.as_str());
    let id = a["allocation_id"]
        .as_str()
        .expect("allocation id")
        .to_owned();
    // While it is held, the owner's gauges show it used.
    eventually(
        "the owner shows 2 cores used",
        Duration::from_secs(10),
        || {
            let t = owner.scrape();
            has(&t, "lanswarm_capacity_used{dimension=\"cpu_cores\"}", 2.0)?;
            has(&t, "lanswarm_capacity_free{dimension=\"cpu_cores\"}", 2.0)?;
            has(&t, "lanswarm_leases", 1.0)
        },
    );
    let (s, r) = requester.send("DELETE", &format!("/api/v1/allocations/{id}"), "");
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["owner_confirmed"], true, "{r}");

    // A reservation on the owner that waits for an event: counted as
    // confirmed, then waiting in its window; once the event is posted on
    // the requester (its holder), active, and granted from a reservation.
    let (s, r) = requester.send(
        "POST",
        "/api/v1/reservations",
        &format!(
            r#"{{"required_resources": {{"cpu_cores": 1}}, "node_id": "{owner_id}", "start_in_secs": 1, "duration_secs": 60, "when_event": "metrics-go"}}"#
        ),
    );
    assert_eq!(s, 201, "{r}");
    eventually(
        "the owner counts a waiting reservation",
        Duration::from_secs(10),
        || {
            has(
                &owner.scrape(),
                "lanswarm_reservations{status=\"waiting\"}",
                1.0,
            )
        },
    );
    let (s, posted) = requester.send(
        "POST",
        "/api/v1/reservations/events",
        r#"{"name": "metrics-go"}"#,
    );
    assert_eq!(s, 200, "{posted}");
    eventually(
        "the owner counts it active",
        Duration::from_secs(10),
        || {
            let t = owner.scrape();
            has(&t, "lanswarm_reservations{status=\"active\"}", 1.0)?;
            has(&t, "lanswarm_reservations{status=\"waiting\"}", 0.0)?;
            has(&t, "lanswarm_grants_total{source=\"reservation\"}", 1.0)
        },
    );
    let rid = r["reservation_id"].as_str().expect("reservation id");
    let (s, c) = requester.send("DELETE", &format!("/api/v1/reservations/{rid}"), "");
    assert_eq!(s, 200, "{c}");

    // A request no node can ever serve: denied, with its reason.
    let (s, denied) = requester.send(
        "POST",
        "/api/v1/allocations",
        r#"{"required_resources": {"cpu_cores": 1000}}"#,
    );
    assert!(s >= 400, "{s} {denied}");
    let reason = denied["error"]["code"]
        .as_str()
        .expect("an error code")
        .to_owned();
    assert_eq!(reason, "unsatisfiable", "{denied}");

    // A health-check round: one /lanswarm/health/1 round trip.
    let (s, checks) = requester.send("POST", "/api/v1/health-checks", "{}");
    assert_eq!(s, 200, "{checks}");

    // The requester: what it asked for, and how each ended.
    let t = requester.scrape();
    assert_eq!(
        value(&t, "lanswarm_allocations_total{outcome=\"granted\"}"),
        1.0
    );
    assert_eq!(
        value(&t, "lanswarm_allocations_total{outcome=\"denied\"}"),
        1.0
    );
    assert_eq!(
        value(&t, "lanswarm_allocations_total{outcome=\"failed\"}"),
        0.0
    );
    assert_eq!(
        value(
            &t,
            "lanswarm_allocation_latency_seconds_count{outcome=\"granted\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            &format!("lanswarm_allocation_denials_total{{reason=\"{reason}\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            "lanswarm_allocation_denials_total{reason=\"insufficient_capacity\"}"
        ),
        0.0
    );
    // It granted nothing itself.
    assert_eq!(value(&t, "lanswarm_grants_total{source=\"request\"}"), 0.0);
    assert!(
        value(
            &t,
            "lanswarm_health_rtt_seconds_count{probe=\"health_check\"}"
        ) >= 1.0
    );

    // The owner: one grant and one reservation, both given back, its
    // capacity as configured.
    let t = eventually("the owner's lease is back", Duration::from_secs(10), || {
        let t = owner.scrape();
        has(&t, "lanswarm_leases", 0.0)?;
        Ok(t)
    })
    .0;
    assert_eq!(value(&t, "lanswarm_grants_total{source=\"request\"}"), 1.0);
    assert_eq!(value(&t, "lanswarm_releases_total"), 2.0);
    assert_eq!(value(&t, "lanswarm_reservations{status=\"active\"}"), 0.0);
    assert_eq!(value(&t, "lanswarm_expiries_total"), 0.0);
    assert_eq!(value(&t, "lanswarm_preemptions_total"), 0.0);
    assert_eq!(value(&t, "lanswarm_queue_depth"), 0.0);
    assert_eq!(value(&t, "lanswarm_contention_severity"), 0.0);
    // Nobody asked the owner for the impossible request.
    assert_eq!(
        value(&t, "lanswarm_denials_total{reason=\"unsatisfiable\"}"),
        0.0
    );
    for (dim, lent) in [
        ("cpu_cores", 4.0),
        ("memory_mb", 8192.0),
        ("disk_mb", 10240.0),
        ("gpus", 1.0),
        ("gpu_memory_mb", 24576.0),
    ] {
        let l = format!("{{dimension=\"{dim}\"}}");
        assert_eq!(
            value(&t, &format!("lanswarm_capacity_lent{l}")),
            lent,
            "{dim}"
        );
        assert_eq!(
            value(&t, &format!("lanswarm_capacity_free{l}")),
            lent,
            "{dim}"
        );
        assert_eq!(
            value(&t, &format!("lanswarm_capacity_used{l}")),
            0.0,
            "{dim}"
        );
    }
    let gpu_bytes = 24576.0 * 1024.0 * 1024.0;
    assert_eq!(
        value(&t, "lanswarm_gpu_memory_lent_bytes{gpu=\"0\"}"),
        gpu_bytes
    );
    assert_eq!(
        value(&t, "lanswarm_gpu_memory_free_bytes{gpu=\"0\"}"),
        gpu_bytes
    );
    assert_eq!(value(&t, "lanswarm_gpu_memory_used_bytes{gpu=\"0\"}"), 0.0);

    for (name, d) in [("owner", &owner), ("requester", &requester)] {
        // Gossip both ways (once the gossipsub mesh formed), pings
        // measured, and libp2p's own families counting too.
        let (t, _) = eventually(
            &format!("{name} counts gossip, pings and libp2p events"),
            Duration::from_secs(30),
            || {
                let t = d.scrape();
                for series in [
                    "lanswarm_gossip_messages_total{topic=\"lanswarm/capacity/2\",direction=\"in\"}",
                    "lanswarm_gossip_messages_total{topic=\"lanswarm/capacity/2\",direction=\"out\"}",
                    "lanswarm_health_rtt_seconds_count{probe=\"ping\"}",
                    "libp2p_gossipsub_messages_total",
                    "libp2p_identify_received_total",
                    "libp2p_ping_rtt_seconds_count",
                ] {
                    match sample(&t, series) {
                        Some(v) if v > 0.0 => {}
                        other => return Err(format!("{series} is {other:?}")),
                    }
                }
                if sum(&t, "libp2p_swarm_connections_established_total") < 1.0 {
                    return Err("no libp2p_swarm_connections_established_total".into());
                }
                Ok(t)
            },
        );
        assert!(
            t.contains("# TYPE libp2p_gossipsub_messages_total counter\n"),
            "{name}"
        );
        promtool_check(name, &t);
    }
}
