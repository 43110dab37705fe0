//! The command line: `lanswarm run` starts a node; every other subcommand
//! talks to a running node over its HTTP API (`--api`, env `LANSWARM_API`)
//! and prints a readable table, or JSON with `--json`.

mod client;
mod table;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde_json::Value;

pub use client::{Client, ClientError};

use crate::core::placement::{Strategy, StrategyConfig};
use crate::handle::{Allocation, AllocationRequest, Allocations, NodeInfo, ReleaseOutcome};
use crate::model::{Priority, ResourceRequirements};
use crate::units::{format_mb, parse_duration, parse_size_mb};

/// lanswarm: share CPU, memory, disk, GPUs and AI models between the
/// machines of a LAN, peer to peer, with no coordinator.
#[derive(Debug, Parser)]
#[command(name = "lanswarm", version, about, long_about = None)]
pub struct Cli {
    /// The node's HTTP API.
    #[arg(
        long,
        global = true,
        env = "LANSWARM_API",
        default_value = "http://127.0.0.1:7700"
    )]
    pub api: String,
    /// Bearer token for the API (needed when the node sets api.token).
    #[arg(long, global = true, env = "LANSWARM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node in the foreground until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Show this node: identity, addresses, lendable and free capacity.
    Status,
    /// List every known node with its free capacity, status and RTT.
    Nodes,
    /// Allocate resources on whichever node the strategy picks.
    Request(RequestArgs),
    /// Release an allocation (one this node holds, or one it granted).
    Release {
        /// The allocation id.
        allocation_id: String,
    },
    /// List allocations this node holds elsewhere and the ones it granted.
    Allocations,
    /// Show or set the balancing strategy.
    Strategy(StrategyArgs),
}

/// Options of `lanswarm run`. Each overrides the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Config file (TOML). Without it, embedded defaults are used.
    #[arg(long, short, env = "LANSWARM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory: the node's key and its lease store.
    #[arg(long, env = "LANSWARM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node name (default: the host name).
    #[arg(long, env = "LANSWARM_NAME")]
    pub name: Option<String>,
    /// libp2p listen address; repeat for several.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Peer to dial at start (for networks without multicast); repeat.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Turn mDNS discovery off.
    #[arg(long)]
    pub no_mdns: bool,
    /// HTTP API listen address (default 127.0.0.1:7700).
    #[arg(long, env = "LANSWARM_API_LISTEN", value_name = "ADDR")]
    pub api_listen: Option<String>,
    /// Log level or filter (default: info, or log.level in the config).
    #[arg(long, env = "LANSWARM_LOG")]
    pub log: Option<String>,
}

/// Options of `lanswarm request`.
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// CPU cores.
    #[arg(long, default_value_t = 0)]
    pub cpu: u32,
    /// Memory, e.g. 4GiB or 512MiB.
    #[arg(long, value_parser = size_arg)]
    pub memory: Option<u64>,
    /// Disk, e.g. 10GiB.
    #[arg(long, value_parser = size_arg)]
    pub disk: Option<u64>,
    /// Number of GPUs.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Memory needed on each GPU, e.g. 8GiB. Without it, whole GPUs.
    #[arg(long, value_parser = size_arg)]
    pub gpu_memory: Option<u64>,
    /// A model the node must serve; repeat for alternatives.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// A custom resource, NAME=AMOUNT; repeat.
    #[arg(long = "custom", value_parser = custom_arg)]
    pub custom: Vec<(String, u64)>,
    /// Strategy for this request (default: the node's current one).
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Only this node (id or name).
    #[arg(long)]
    pub node: Option<String>,
    /// Lease term, renewed automatically while this node runs, e.g. 5m.
    #[arg(long, value_parser = duration_arg)]
    pub lease: Option<u64>,
    /// Release automatically after this long, e.g. 2h.
    #[arg(long, value_parser = duration_arg)]
    pub duration: Option<u64>,
    /// Priority: low, normal, high, critical.
    #[arg(long, default_value = "normal", value_parser = priority_arg)]
    pub priority: Priority,
    /// Free-form task type recorded on the lease.
    #[arg(long, default_value = "")]
    pub task_type: String,
}

/// Options of `lanswarm strategy`.
#[derive(Debug, Clone, Args)]
pub struct StrategyArgs {
    /// New strategy; omit to show the current one.
    pub strategy: Option<Strategy>,
    /// A weight for the `weighted` strategy, NODE=WEIGHT (id or name); repeat.
    #[arg(long = "weight", value_parser = custom_arg)]
    pub weights: Vec<(String, u64)>,
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size_mb(s).map_err(|e| e.to_string())
}

fn duration_arg(s: &str) -> Result<u64, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 {
        return Err(format!("{s:?} is under one second"));
    }
    Ok(d.as_secs())
}

fn priority_arg(s: &str) -> Result<Priority, String> {
    serde_json::from_value(Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("{s:?} is not one of low, normal, high, critical"))
}

fn custom_arg(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=AMOUNT"))?;
    let v = v
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} in {s:?} is not a whole number"))?;
    Ok((k.trim().to_owned(), v))
}

impl RequestArgs {
    /// The API request these options describe.
    pub fn to_request(&self) -> AllocationRequest {
        AllocationRequest {
            required_resources: ResourceRequirements {
                cpu_cores: self.cpu,
                memory_mb: self.memory.unwrap_or(0),
                disk_mb: self.disk.unwrap_or(0),
                gpu_count: self.gpus,
                gpu_required: self.gpus > 0,
                gpu_memory_mb: self.gpu_memory.unwrap_or(0),
                preferred_models: self.models.clone(),
                custom: self.custom.iter().cloned().collect(),
            },
            task_type: self.task_type.clone(),
            priority: self.priority,
            timeout_secs: self.lease,
            duration_secs: self.duration,
            strategy: self.strategy,
            node_id: self.node.clone(),
            ..Default::default()
        }
    }
}

/// Run a client subcommand against the API and print the result.
pub async fn run_client(cli: &Cli) -> anyhow::Result<()> {
    let c = Client::new(&cli.api, cli.token.clone());
    let json = cli.json;
    match &cli.command {
        Command::Run(_) => bail!("`run` is not a client command"),
        Command::Status => {
            let n: NodeInfo = c.get("/api/v1/node").await?;
            out(json, &n, || table::status(&n))
        }
        Command::Nodes => {
            let ns: Vec<NodeInfo> = c.get("/api/v1/nodes").await?;
            out(json, &ns, || table::nodes(&ns))
        }
        Command::Request(args) => {
            let req = args.to_request();
            match c
                .call::<Allocation>(Method::POST, "/api/v1/allocations", Some(&req))
                .await
            {
                Ok(a) => out(json, &a, || table::allocation(&a)),
                Err(ClientError::Api { body, .. }) if json => {
                    println!("{}", serde_json::to_string_pretty(&body)?);
                    bail!("request refused")
                }
                Err(e @ ClientError::Api { .. }) => {
                    if let ClientError::Api { body, .. } = &e {
                        eprint!("{}", table::refusals(body));
                    }
                    Err(e.into())
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Release { allocation_id } => {
            let r: ReleaseOutcome = c
                .call(
                    Method::DELETE,
                    &format!("/api/v1/allocations/{allocation_id}"),
                    None::<&()>,
                )
                .await?;
            out(json, &r, || {
                if r.owner_confirmed {
                    format!("released {}\n", r.allocation_id)
                } else {
                    format!(
                        "released {} locally; the owner did not confirm, so it will expire at the end of its lease\n",
                        r.allocation_id
                    )
                }
            })
        }
        Command::Allocations => {
            let a: Allocations = c.get("/api/v1/allocations").await?;
            out(json, &a, || table::allocations(&a))
        }
        Command::Strategy(args) => {
            let cfg: StrategyConfig = match args.strategy {
                None => {
                    if !args.weights.is_empty() {
                        bail!("--weight needs a strategy, e.g. `lanswarm strategy weighted --weight gpu-box=3`");
                    }
                    c.get("/api/v1/strategy").await?
                }
                Some(s) => {
                    let weights = args
                        .weights
                        .iter()
                        .map(|(k, v)| {
                            u32::try_from(*v)
                                .map(|v| (k.clone(), v))
                                .with_context(|| format!("weight {v} for {k} is too large"))
                        })
                        .collect::<anyhow::Result<_>>()?;
                    let cfg = StrategyConfig {
                        strategy: s,
                        weights,
                    };
                    c.call(Method::PUT, "/api/v1/strategy", Some(&cfg)).await?
                }
            };
            out(json, &cfg, || {
                let mut s = format!("strategy: {}\n", cfg.strategy);
                for (k, v) in &cfg.weights {
                    s.push_str(&format!("  weight {k} = {v}\n"));
                }
                s
            })
        }
    }
}

fn out<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

/// `8GiB`-style size for tables.
fn size(mb: u64) -> String {
    format_mb(mb)
}
