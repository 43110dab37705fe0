//! `lanswarm history`: the node's allocation history (audit log), newest
//! first, as a table or (`--json`) as the API's records.

use anyhow::Context;
use clap::Args;

use super::client::Client;
use super::out;
use super::table::{render, short};
use crate::core::history::{parse_time, HistoryKind, HistoryRecord};

/// Options of `lanswarm history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Only records since then: a duration back from now (90s, 30m, 24h,
    /// 7d), an RFC 3339 time, or milliseconds since the Unix epoch.
    #[arg(long, value_parser = time_arg)]
    pub since: Option<String>,
    /// Only records until then (same forms as --since).
    #[arg(long, value_parser = time_arg)]
    pub until: Option<String>,
    /// Only records of requests by this node (peer id).
    #[arg(long, value_name = "PEER_ID")]
    pub requester: Option<String>,
    /// Only records about this node's resources (peer id).
    #[arg(long, value_name = "PEER_ID")]
    pub node: Option<String>,
    /// Only these kinds, comma-separated: grant, denial, queued, release,
    /// expiry, preemption, lost, policy_change, group_change, pool_change,
    /// reservation.
    #[arg(long, value_name = "KIND[,KIND...]", value_parser = kinds_arg)]
    pub kind: Option<String>,
    /// Most records shown (1 to 10000; default 100).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: Option<u64>,
}

/// A time as `--since` takes it; checked here, resolved by the node.
fn time_arg(s: &str) -> Result<String, String> {
    parse_time("time", s, 0)
        .map(|_| s.trim().to_owned())
        .map_err(|e| e.message)
}

fn kinds_arg(s: &str) -> Result<String, String> {
    for k in s.split(',') {
        k.parse::<HistoryKind>()?;
    }
    Ok(s.to_owned())
}

impl HistoryArgs {
    /// The query string of `GET /api/v1/history`, encoded.
    pub fn query_string(&self) -> anyhow::Result<String> {
        let mut params: Vec<(&str, String)> = Vec::new();
        let pairs = [
            ("since", &self.since),
            ("until", &self.until),
            ("requester", &self.requester),
            ("node", &self.node),
            ("kind", &self.kind),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        if let Some(l) = self.limit {
            params.push(("limit", l.to_string()));
        }
        let url = reqwest::Url::parse_with_params("http://node/api/v1/history", &params)
            .context("building the history query")?;
        Ok(match url.query() {
            Some(q) if !q.is_empty() => format!("{}?{q}", url.path()),
            _ => url.path().to_owned(),
        })
    }
}

/// Run `lanswarm history`.
pub async fn run(c: &Client, json: bool, args: &HistoryArgs) -> anyhow::Result<()> {
    let records: Vec<HistoryRecord> = c.get(&args.query_string()?).await?;
    out(json, &records, || table(&records))
}

/// The history as a table, newest first.
pub fn table(records: &[HistoryRecord]) -> String {
    if records.is_empty() {
        return "no history records match\n".to_owned();
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let e = &r.event;
            let id = |n: &Option<crate::model::NodeId>| {
                n.as_ref().map_or("-".to_owned(), |n| short(&n.0))
            };
            vec![
                e.id.to_string(),
                r.at.replace('T', " ").trim_end_matches('Z').to_owned(),
                e.kind.name().to_owned(),
                e.outcome.name().to_owned(),
                e.role.name().to_owned(),
                id(&e.requester),
                id(&e.node),
                e.reason.clone().unwrap_or_else(|| "-".to_owned()),
                e.detail.clone(),
            ]
        })
        .collect();
    render(
        &[
            "ID",
            "AT (UTC)",
            "KIND",
            "OUTCOME",
            "ROLE",
            "REQUESTER",
            "NODE",
            "REASON",
            "DETAIL",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(argv: &[&str]) -> Result<HistoryArgs, clap::Error> {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: HistoryArgs,
        }
        T::try_parse_from(std::iter::once("t").chain(argv.iter().copied())).map(|t| t.a)
    }

    #[test]
    fn options_become_an_encoded_query() {
        let a = args(&[
            "--since",
            "2026-01-02T03:04:05+01:00",
            "--kind",
            "grant,denial",
            "--limit",
            "5",
        ])
        .unwrap();
        assert_eq!(
            a.query_string().unwrap(),
            "/api/v1/history?since=2026-01-02T03%3A04%3A05%2B01%3A00&kind=grant%2Cdenial&limit=5"
        );
        assert_eq!(
            args(&[]).unwrap().query_string().unwrap(),
            "/api/v1/history"
        );
    }

    #[test]
    fn bad_options_are_refused_before_asking() {
        for bad in [
            &["--since", "abc"][..],
            &["--since", "-5m"],
            &["--until", "5 parsecs"],
            &["--kind", "bogus"],
            &["--limit", "0"],
            &["--limit", "10001"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
