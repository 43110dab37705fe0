//! `lanswarm usage`: resource-seconds (and costs) per requester, group or
//! node; `lanswarm bottlenecks`: the dimensions that refuse the most
//! requests, per node and swarm-wide.

use anyhow::Context;
use clap::Args;

use super::client::Client;
use super::out;
use super::table::{render, short};
use crate::core::history::parse_time;
use crate::core::usage::{By, ResourceSeconds, UsageReport};
use crate::net::node::BottleneckReport;

/// Options of `lanswarm usage`.
#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// Only usage since then: a duration back from now (90s, 30m, 24h,
    /// 7d), an RFC 3339 time, or milliseconds since the Unix epoch.
    /// Usage is kept per hour, so the window starts on the hour.
    #[arg(long, value_parser = time_arg)]
    pub since: Option<String>,
    /// Only usage until then (same forms as --since).
    #[arg(long, value_parser = time_arg)]
    pub until: Option<String>,
    /// Group by `requester` (what each peer used here), `group` (the same,
    /// per group) or `node` (what this node used on each node).
    #[arg(long, value_parser = by_arg)]
    pub by: Option<String>,
}

fn time_arg(s: &str) -> Result<String, String> {
    parse_time("time", s, 0)
        .map(|_| s.trim().to_owned())
        .map_err(|e| e.message)
}

fn by_arg(s: &str) -> Result<String, String> {
    s.parse::<By>().map(|b| b.name().to_owned())
}

impl UsageArgs {
    /// The query string of `GET /api/v1/usage`, encoded.
    pub fn query_string(&self) -> anyhow::Result<String> {
        let mut params: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("since", &self.since),
            ("until", &self.until),
            ("by", &self.by),
        ] {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        let url = reqwest::Url::parse_with_params("http://node/api/v1/usage", &params)
            .context("building the usage query")?;
        Ok(match url.query() {
            Some(q) if !q.is_empty() => format!("{}?{q}", url.path()),
            _ => url.path().to_owned(),
        })
    }
}

/// Run `lanswarm usage`.
pub async fn run(c: &Client, json: bool, args: &UsageArgs) -> anyhow::Result<()> {
    let r: UsageReport = c.get(&args.query_string()?).await?;
    out(json, &r, || table(&r))
}

/// Run `lanswarm bottlenecks`.
pub async fn bottlenecks(c: &Client, json: bool) -> anyhow::Result<()> {
    let r: BottleneckReport = c.get("/api/v1/bottlenecks").await?;
    out(json, &r, || bottleneck_table(&r))
}

fn num(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn cells(s: &ResourceSeconds) -> Vec<String> {
    let mut custom: Vec<String> = s
        .custom_unit_seconds
        .iter()
        .map(|(k, v)| format!("{k}={}", num(*v)))
        .collect();
    if custom.is_empty() {
        custom.push("-".to_owned());
    }
    vec![
        num(s.cpu_core_seconds),
        num(s.memory_mib_seconds / 1024.0),
        num(s.disk_mib_seconds / 1024.0),
        num(s.gpu_seconds),
        num(s.gpu_memory_mib_seconds / 1024.0),
        custom.join(" "),
    ]
}

/// A usage report as text: totals, then one row per key.
pub fn table(r: &UsageReport) -> String {
    let cur = r.currency.as_deref().unwrap_or("");
    let cost = |c: Option<f64>| {
        c.map_or("-".to_owned(), |c| {
            format!("{c:.4} {cur}").trim().to_owned()
        })
    };
    let mut out = format!(
        "usage since {} until {}: lent {} core-s (cost {}), used {} core-s on owners\n",
        r.since.as_deref().unwrap_or("-"),
        r.until,
        num(r.lent.cpu_core_seconds),
        cost(r.lent_cost),
        num(r.used.cpu_core_seconds),
    );
    if r.rows.is_empty() {
        out.push_str("no usage in this window\n");
        return out;
    }
    let key = match r.by {
        By::Requester => "REQUESTER",
        By::Group => "GROUP",
        By::Node => "NODE",
    };
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            let k = match r.by {
                By::Group => row.key.clone(),
                _ => short(&row.key),
            };
            let mut v = vec![k];
            v.extend(cells(&row.seconds));
            v.push(cost(row.cost));
            v
        })
        .collect();
    out.push_str(&render(
        &[
            key,
            "CPU CORE-S",
            "MEM GIB-S",
            "DISK GIB-S",
            "GPU-S",
            "GPU MEM GIB-S",
            "CUSTOM UNIT-S",
            "COST",
        ],
        &rows,
    ));
    out
}

/// Bottlenecks as text.
pub fn bottleneck_table(r: &BottleneckReport) -> String {
    let n = r.swarm.first().map_or(0, |d| d.count);
    let mut out = match &r.bottleneck {
        Some(b) => format!(
            "swarm-wide bottleneck over the last {} min: {b} ({n} refusal{})\n",
            r.window_secs / 60,
            if n == 1 { "" } else { "s" }
        ),
        None => format!(
            "no requests refused for capacity in the last {} min\n",
            r.window_secs / 60
        ),
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    for n in &r.nodes {
        for d in &n.dimensions {
            rows.push(vec![
                n.name.clone(),
                short(&n.node_id.0),
                d.dimension.clone(),
                d.count.to_string(),
            ]);
        }
    }
    if !rows.is_empty() {
        out.push_str(&render(&["NODE", "ID", "DIMENSION", "REFUSALS"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(argv: &[&str]) -> Result<UsageArgs, clap::Error> {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: UsageArgs,
        }
        T::try_parse_from(std::iter::once("t").chain(argv.iter().copied())).map(|t| t.a)
    }

    #[test]
    fn options_become_an_encoded_query() {
        let a = args(&["--since", "24h", "--by", "group"]).unwrap();
        assert_eq!(
            a.query_string().unwrap(),
            "/api/v1/usage?since=24h&by=group"
        );
        assert_eq!(args(&[]).unwrap().query_string().unwrap(), "/api/v1/usage");
    }

    #[test]
    fn bad_options_are_refused_before_asking() {
        for bad in [
            &["--since", "abc"][..],
            &["--until", "-5m"],
            &["--by", "colour"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
