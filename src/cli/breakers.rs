//! `lanswarm breakers` and `lanswarm throttle`: the circuit breakers on
//! this node's own requests, and the adaptive throttle of the rate limit
//! peers get here. Both only read (`GET /api/v1/breakers`,
//! `GET /api/v1/throttle`).

use super::client::Client;
use super::out;
use super::table::{render, short};
use crate::core::adaptive::AdaptiveStatus;
use crate::net::node::BreakerReport;

/// `lanswarm breakers`.
pub(super) async fn breakers(c: &Client, json: bool) -> anyhow::Result<()> {
    let r: BreakerReport = c.get("/api/v1/breakers").await?;
    let now = crate::net::node::now_ms();
    out(json, &r, || breakers_table(&r, now))
}

/// `lanswarm throttle`.
pub(super) async fn throttle(c: &Client, json: bool) -> anyhow::Result<()> {
    let s: AdaptiveStatus = c.get("/api/v1/throttle").await?;
    out(json, &s, || throttle_text(&s))
}

/// In `ms` from `now`, as "in 4.2s" (or "now").
fn from_now(at_ms: u64, now_ms: u64) -> String {
    let d = at_ms.saturating_sub(now_ms);
    if d == 0 {
        "now".to_owned()
    } else {
        format!("in {:.1}s", d as f64 / 1000.0)
    }
}

fn breakers_table(r: &BreakerReport, now_ms: u64) -> String {
    let p = &r.policy;
    let mut s = format!(
        "circuit breakers {}: open after {} consecutive failure(s), cool-down {} ms (up to {} ms)\n",
        if p.enabled { "on" } else { "off" },
        p.failures,
        p.cooldown_ms,
        p.max_cooldown_ms
    );
    if r.peers.is_empty() {
        s.push_str("no peer has failed a request\n");
        return s;
    }
    let rows: Vec<Vec<String>> = r
        .peers
        .iter()
        .map(|b| {
            let i = &b.info;
            vec![
                if b.node_name.is_empty() {
                    short(&i.node_id.0)
                } else {
                    b.node_name.clone()
                },
                short(&i.node_id.0),
                i.state.to_string(),
                i.failures.to_string(),
                i.retry_at_ms
                    .map(|t| from_now(t, now_ms))
                    .unwrap_or_else(|| "-".into()),
                format!("{}/{}", i.total_failures, i.total_successes),
                i.last_failure.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    s.push('\n');
    s.push_str(&render(
        &[
            "NAME",
            "ID",
            "STATE",
            "FAILURES",
            "RETRY",
            "FAILED/OK",
            "LAST FAILURE",
        ],
        &rows,
    ));
    s
}

fn throttle_text(s: &AdaptiveStatus) -> String {
    let pct = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}%"));
    format!(
        "adaptive throttling {}\nrate        {:.2}/s per peer (configured {:.2}/s)\npressure    {}\ncpu         {}\nmemory      {}\n",
        if s.enabled { "on" } else { "off" },
        s.effective_per_sec,
        s.configured_per_sec,
        if s.under_pressure { "yes" } else { "no" },
        pct(s.cpu_pct),
        pct(s.memory_pct),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::breaker::{BreakerInfo, BreakerPolicy, State};
    use crate::model::NodeId;

    #[test]
    fn table_shows_state_and_retry() {
        let r = BreakerReport {
            policy: BreakerPolicy::default(),
            peers: vec![crate::net::node::PeerBreaker {
                node_name: "bravo".into(),
                info: BreakerInfo {
                    node_id: NodeId::from("12D3KooWabcdefgh"),
                    state: State::Open,
                    failures: 3,
                    opens: 1,
                    opened_at_ms: Some(1_000),
                    retry_at_ms: Some(11_000),
                    trial_in_flight: false,
                    last_failure: Some("unreachable: Timeout".into()),
                    total_failures: 3,
                    total_successes: 0,
                },
            }],
        };
        let t = breakers_table(&r, 6_000);
        assert!(t.contains("bravo"), "{t}");
        assert!(t.contains("open"), "{t}");
        assert!(t.contains("in 5.0s"), "{t}");
        assert!(t.contains("unreachable: Timeout"), "{t}");
        let empty = BreakerReport { peers: vec![], ..r };
        assert!(breakers_table(&empty, 0).contains("no peer has failed"));
    }
}
