//! The command line: `lanswarm run` starts a node; every other subcommand
//! talks to a running node over its HTTP API (`--api`, env `LANSWARM_API`)
//! and prints a readable table, or JSON with `--json`.

mod client;
mod keygen;
mod table;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::Value;

pub use client::{Client, ClientError};
pub use keygen::KeygenArgs;

use crate::core::access::AccessPolicy;
use crate::core::placement::{Strategy, StrategyConfig};
use crate::core::pools::PoolSelector;
use crate::handle::{
    AccessChange, Allocation, AllocationRequest, Allocations, GroupInfo, GroupMember, NewGroup,
    NewPool, NodeInfo, PoolInfo, ReleaseOutcome,
};
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
    /// Write a new private-swarm key (local; talks to no node). Nodes whose
    /// config names it (network.swarm_key) only connect to each other.
    Keygen(KeygenArgs),
    /// Swarm groups: create, join, leave, invite, list, members.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Show or change who may use this node's resources.
    #[command(subcommand)]
    Access(AccessCommand),
    /// Resource pools: named sets of nodes, by peer id or label.
    #[command(subcommand)]
    Pools(PoolsCommand),
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
    /// Only the nodes of this resource pool (by name).
    #[arg(long)]
    pub pool: Option<String>,
    /// Only the members of this swarm group (by id or name).
    #[arg(long)]
    pub group: Option<String>,
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

/// `lanswarm groups ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum GroupsCommand {
    /// Create a group; this node becomes its first member.
    Create {
        /// Group name, 1 to 64 characters.
        name: String,
        /// Most members the group may have (1 to 10000).
        #[arg(long, value_parser = max_members_arg)]
        max_members: u32,
        /// Anyone may join (default: only invited nodes).
        #[arg(long)]
        open: bool,
    },
    /// Join a group, by id or name (a closed group needs an invitation).
    Join {
        /// Group id or name.
        group: String,
    },
    /// Leave a group.
    Leave {
        /// Group id or name.
        group: String,
    },
    /// Invite a node into a group this node is a member of.
    Invite {
        /// Group id or name.
        group: String,
        /// The invited node's peer id.
        peer_id: String,
    },
    /// List every group this node knows.
    List,
    /// List the members of a group.
    Members {
        /// Group id or name.
        group: String,
    },
}

/// `lanswarm access ...`. Every change prints the resulting policy.
#[derive(Debug, Clone, Subcommand)]
pub enum AccessCommand {
    /// Show the access policy.
    Show,
    /// Serve other nodes at all.
    Remote {
        /// `on` or `off`.
        state: Switch,
    },
    /// Serve only nodes that share a group with this one (plus the allow list).
    GroupOnly {
        /// `on` or `off`.
        state: Switch,
    },
    /// Add nodes to the allow list (a non-empty allow list means "only these").
    Allow {
        /// Peer ids.
        #[arg(required = true, value_name = "PEER_ID")]
        peers: Vec<String>,
    },
    /// Remove nodes from the allow list.
    Unallow {
        /// Peer ids.
        #[arg(required = true, value_name = "PEER_ID")]
        peers: Vec<String>,
    },
    /// Add nodes to the deny list (never served).
    Deny {
        /// Peer ids.
        #[arg(required = true, value_name = "PEER_ID")]
        peers: Vec<String>,
    },
    /// Remove nodes from the deny list.
    Undeny {
        /// Peer ids.
        #[arg(required = true, value_name = "PEER_ID")]
        peers: Vec<String>,
    },
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// `lanswarm pools ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum PoolsCommand {
    /// Create (or redefine) a pool: the nodes listed, plus every node whose
    /// labels include all the labels given.
    Create {
        /// Pool name.
        name: String,
        /// A member node, by peer id; repeat.
        #[arg(long = "node", value_name = "PEER_ID")]
        nodes: Vec<String>,
        /// A label the members must carry, KEY=VALUE; repeat.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label_arg)]
        labels: Vec<(String, String)>,
    },
    /// List every pool with its aggregate capacity.
    List,
    /// Show one pool: selector, members and capacity.
    Show {
        /// Pool name.
        name: String,
    },
    /// Delete a pool, swarm-wide.
    Delete {
        /// Pool name.
        name: String,
    },
}

fn max_members_arg(s: &str) -> Result<u32, String> {
    let max = crate::core::groups::MAX_MEMBERS;
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a whole number from 1 to {max}")),
    }
}

fn label_arg(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key; write KEY=VALUE"));
    }
    Ok((k.to_owned(), v.trim().to_owned()))
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
            pool: self.pool.clone(),
            group: self.group.clone(),
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
        Command::Keygen(args) => keygen::run(args, json),
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
        Command::Groups(cmd) => groups_client(&c, json, cmd).await,
        Command::Access(cmd) => access_client(&c, json, cmd).await,
        Command::Pools(cmd) => pools_client(&c, json, cmd).await,
    }
}

/// Percent-encode one URL path segment (a group or pool name may hold
/// spaces, slashes or other reserved characters).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn groups_client(c: &Client, json: bool, cmd: &GroupsCommand) -> anyhow::Result<()> {
    let path = |g: &str, action: &str| format!("/api/v1/groups/{}/{action}", seg(g));
    let g: GroupInfo = match cmd {
        GroupsCommand::List => {
            let gs: Vec<GroupInfo> = c.get("/api/v1/groups").await?;
            return out(json, &gs, || table::groups(&gs));
        }
        GroupsCommand::Members { group } => {
            let ms: Vec<GroupMember> = c.get(&path(group, "members")).await?;
            return out(json, &ms, || table::members(&ms));
        }
        GroupsCommand::Create {
            name,
            max_members,
            open,
        } => {
            let new = NewGroup {
                name: name.clone(),
                max_members: *max_members,
                open: *open,
            };
            c.call(Method::POST, "/api/v1/groups", Some(&new)).await?
        }
        GroupsCommand::Join { group } => {
            c.call(Method::POST, &path(group, "join"), None::<&()>)
                .await?
        }
        GroupsCommand::Leave { group } => {
            c.call(Method::POST, &path(group, "leave"), None::<&()>)
                .await?
        }
        GroupsCommand::Invite { group, peer_id } => {
            let body = serde_json::json!({ "node": peer_id });
            c.call(Method::POST, &path(group, "invite"), Some(&body))
                .await?
        }
    };
    out(json, &g, || table::group(&g))
}

async fn access_client(c: &Client, json: bool, cmd: &AccessCommand) -> anyhow::Result<()> {
    let change = match cmd {
        AccessCommand::Show => None,
        AccessCommand::Remote { state } => Some(AccessChange {
            allow_remote: Some(*state == Switch::On),
            ..Default::default()
        }),
        AccessCommand::GroupOnly { state } => Some(AccessChange {
            group_peers_only: Some(*state == Switch::On),
            ..Default::default()
        }),
        AccessCommand::Allow { peers } => Some(AccessChange {
            allow_add: peers.clone(),
            ..Default::default()
        }),
        AccessCommand::Unallow { peers } => Some(AccessChange {
            allow_remove: peers.clone(),
            ..Default::default()
        }),
        AccessCommand::Deny { peers } => Some(AccessChange {
            deny_add: peers.clone(),
            ..Default::default()
        }),
        AccessCommand::Undeny { peers } => Some(AccessChange {
            deny_remove: peers.clone(),
            ..Default::default()
        }),
    };
    let p: AccessPolicy = match change {
        None => c.get("/api/v1/access").await?,
        Some(ch) => c.call(Method::PATCH, "/api/v1/access", Some(&ch)).await?,
    };
    out(json, &p, || table::access(&p))
}

async fn pools_client(c: &Client, json: bool, cmd: &PoolsCommand) -> anyhow::Result<()> {
    match cmd {
        PoolsCommand::List => {
            let ps: Vec<PoolInfo> = c.get("/api/v1/pools").await?;
            out(json, &ps, || table::pools(&ps))
        }
        PoolsCommand::Show { name } => {
            let p: PoolInfo = c.get(&format!("/api/v1/pools/{}", seg(name))).await?;
            out(json, &p, || table::pool(&p))
        }
        PoolsCommand::Create {
            name,
            nodes,
            labels,
        } => {
            let new = NewPool {
                name: name.clone(),
                selector: PoolSelector {
                    nodes: nodes.iter().map(|n| n.as_str().into()).collect(),
                    labels: labels.iter().cloned().collect(),
                },
            };
            let p: PoolInfo = c.call(Method::POST, "/api/v1/pools", Some(&new)).await?;
            out(json, &p, || table::pool(&p))
        }
        PoolsCommand::Delete { name } => {
            c.call::<()>(
                Method::DELETE,
                &format!("/api/v1/pools/{}", seg(name)),
                None::<&()>,
            )
            .await?;
            out(json, &serde_json::json!({ "deleted": name }), || {
                format!("deleted pool {name}\n")
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
