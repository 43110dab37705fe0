//! `lanswarm run`: load the config, apply CLI overrides, set up logging,
//! the identity and the hardware probe, then run the node and its HTTP API
//! until SIGINT or SIGTERM, and shut down in order.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::config::Config;
use crate::core::ledger::LeaseLimits;
use crate::core::placement::{Strategy, StrategyConfig};
use crate::net::node::{self, NodeConfig};

/// How long shutdown waits for the node task before giving up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Load the config file (if any) and apply the flags of `lanswarm run`.
/// Precedence: flag (or its `LANSWARM_*` variable) > file > default.
pub fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(d) = &args.data_dir {
        cfg.data_dir = Some(d.clone());
    }
    if let Some(n) = &args.name {
        cfg.name = Some(n.clone());
    }
    if !args.listen.is_empty() {
        cfg.network.listen = args
            .listen
            .iter()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("--listen {a}: not a multiaddr"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    for b in &args.bootstrap {
        cfg.network.bootstrap.push(
            b.parse()
                .with_context(|| format!("--bootstrap {b}: not a multiaddr"))?,
        );
    }
    if args.no_mdns {
        cfg.network.mdns = false;
    }
    if let Some(a) = &args.api_listen {
        cfg.api.listen = a
            .parse()
            .with_context(|| format!("--api-listen {a}: not an address like 127.0.0.1:7700"))?;
    }
    if let Some(l) = &args.log {
        cfg.log.level = l.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Build the node's settings from a validated config.
pub fn node_config(cfg: &Config, keypair: libp2p::identity::Keypair) -> anyhow::Result<NodeConfig> {
    let data_dir = cfg.data_dir();
    let machine = crate::hw::probe::probe(&data_dir);
    let detected = if cfg.resources.detect_gpus {
        crate::hw::gpu::detect_gpus()
    } else {
        Vec::new()
    };
    let (capacity, gpus) = crate::hw::lendable(cfg, &machine, &detected);
    let strategy = Strategy::from_str(&cfg.strategy.default)
        .map_err(|e| anyhow::anyhow!("strategy.default: {e}"))?;
    Ok(NodeConfig {
        name: cfg.node_name(),
        keypair,
        listen: cfg.network.listen.clone(),
        bootstrap: cfg.network.bootstrap.clone(),
        mdns: cfg.network.mdns,
        mdns_ttl: cfg.network.mdns_ttl,
        announce_interval: cfg.network.announce_interval,
        forget_after: cfg.network.forget_after,
        degraded_rtt: cfg.network.degraded_rtt,
        degraded_cpu_pct: cfg.network.degraded_cpu.map(f32::from),
        announce_debounce: cfg.network.announce_debounce,
        capacity,
        gpus,
        machine_cpu_cores: cfg.resources.cpu_cores.unwrap_or(machine.cpu_cores),
        machine_memory_mb: cfg.resources.memory.unwrap_or(machine.memory_mb),
        models: cfg.models.served.clone(),
        location: cfg.location.to_location(),
        weight: cfg.lend.weight,
        labels: cfg.labels.clone(),
        access: cfg.access_policy(),
        roles: cfg.role_policy(),
        sched: cfg.scheduler.policy(),
        elastic: cfg.elastic.policy(),
        breaker: cfg.breaker.policy(),
        adaptive: cfg.throttle.policy(),
        limits: LeaseLimits {
            min_lease_ms: cfg.leases.min.as_millis() as u64,
            max_lease_ms: cfg.leases.max.as_millis() as u64,
            max_leases: cfg.leases.max_leases as usize,
        },
        default_lease: cfg.leases.default,
        strategy: StrategyConfig {
            strategy,
            weights: cfg.strategy.weights.clone(),
        },
        store_path: data_dir.join("state.redb"),
        api_addr: Some(cfg.api.listen.to_string()),
        max_tries: 8,
        // Read by `run` before anything else touches the data directory.
        swarm_key: None,
        tasks: task_settings(cfg),
        history: cfg.history.clone(),
        accounting: cfg.accounting.clone(),
    })
}

/// What the node offers to run, from `[tasks]` and `[models]`.
fn task_settings(cfg: &Config) -> crate::net::node::TaskSettings {
    use crate::core::tasks::TaskIsolation;
    use crate::exec::Isolation;
    let t = &cfg.tasks;
    crate::net::node::TaskSettings {
        templates: t.templates.clone(),
        isolation: match t.isolation {
            TaskIsolation::Auto => Isolation::Auto,
            TaskIsolation::Cgroup => Isolation::Cgroup,
            TaskIsolation::Rlimit => Isolation::Rlimit,
            TaskIsolation::None => Isolation::None,
        },
        cgroup_parent: t.cgroup_parent.clone(),
        max_running: t.max_running,
        keep_results: t.keep_results,
        model_server: cfg
            .models
            .server
            .as_ref()
            .map(|url| crate::net::node::ModelServerSettings {
                api: cfg.models.api,
                url: url.clone(),
                refresh: cfg.models.refresh,
                timeout: cfg.models.timeout,
            }),
    }
}

/// Load the swarm key named by `network.swarm_key`, if any. Errors name
/// the config, the key and the file.
pub fn load_swarm_key(cfg: &Config) -> anyhow::Result<Option<libp2p::pnet::PreSharedKey>> {
    let Some(path) = cfg.swarm_key_path() else {
        return Ok(None);
    };
    let key = crate::swarm_key::load(&path).with_context(|| {
        format!(
            "{}: network.swarm_key",
            cfg.origin.as_deref().unwrap_or("<defaults>")
        )
    })?;
    Ok(Some(key))
}

/// The API's authentication: `api.token` and the data directory's token
/// file. A node refuses to start on a non-loopback `api.listen` with no
/// token at all, and says how to make one.
pub fn api_auth(
    cfg: &Config,
    data_dir: &std::path::Path,
) -> anyhow::Result<crate::api::tokens::ApiAuth> {
    use crate::api::tokens::{ApiAuth, TOKEN_FILE};
    let file = data_dir.join(TOKEN_FILE);
    let loopback = cfg.api.listen.ip().is_loopback();
    let auth = ApiAuth::new(cfg.api.token.clone(), Some(file.clone()), loopback);
    if !loopback && cfg.api.token.is_none() {
        // Read the file itself, so a broken one is named rather than
        // counted as empty.
        let stored = crate::api::tokens::list(&file)
            .with_context(|| format!("api.listen ({}) needs a token", cfg.api.listen))?;
        if stored.is_empty() {
            anyhow::bail!(
                "{}: api.token: a token is required because api.listen ({}) is not a loopback address, \
                 and none is configured: set api.token, or make one with `lanswarm token create --role \
                 admin --data-dir {}` before starting, or listen on 127.0.0.1",
                cfg.origin.as_deref().unwrap_or("<defaults>"),
                cfg.api.listen,
                data_dir.display()
            );
        }
        info!(tokens = stored.len(), "API tokens from {}", file.display());
    }
    Ok(auth)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .or_else(|_| tracing_subscriber::EnvFilter::try_new("info"))
        .unwrap_or_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Run a node in the foreground until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args)?;
    init_logging(&cfg.log.level);
    let swarm_key = load_swarm_key(&cfg)?;
    let data_dir = cfg.data_dir();
    let (keypair, created) = crate::identity::load_or_create(&data_dir)?;
    info!(
        peer_id = %keypair.public().to_peer_id(),
        data_dir = %data_dir.display(),
        config = cfg.origin.as_deref().unwrap_or("<defaults>"),
        new_identity = created,
        "starting lanswarm {}",
        env!("CARGO_PKG_VERSION")
    );
    // Probing the hardware blocks (sysinfo samples CPU use for ~200 ms, NVML
    // may be slow to load): keep it off the async workers.
    let probe_cfg = cfg.clone();
    let ncfg = tokio::task::spawn_blocking(move || node_config(&probe_cfg, keypair))
        .await
        .context("probing the hardware")??;
    let ncfg = NodeConfig { swarm_key, ..ncfg };
    info!(
        cores = ncfg.capacity.cpu_cores,
        memory_mb = ncfg.capacity.memory_mb,
        disk_mb = ncfg.capacity.disk_mb,
        gpus = ncfg.capacity.gpus.len(),
        custom = ncfg.capacity.custom.len(),
        "lending"
    );
    let api_auth = api_auth(&cfg, &data_dir)?;
    let listener = crate::api::bind(cfg.api.listen).await?;
    let shutdown = CancellationToken::new();
    let (node, task) = node::start(ncfg, shutdown.clone())
        .await
        .context("starting the node")?;
    let work = crate::work::Work::start(
        node.clone(),
        &data_dir.join("work.redb"),
        crate::work::WorkConfig {
            max_running_jobs: cfg.tasks.max_running_jobs as usize,
        },
        shutdown.clone(),
    )
    .context("opening the task and job records")?;
    info!(api = %cfg.api.listen, "HTTP API listening");
    let api = tokio::spawn(crate::api::serve(
        listener,
        node.clone(),
        work,
        api_auth,
        shutdown.clone(),
    ));
    tokio::spawn(monitor_hardware(node.clone(), shutdown.clone()));
    let signal = tokio::select! {
        s = wait_for_signal() => Some(s?),
        _ = shutdown.cancelled() => None,
    };
    if let Some(s) = signal {
        info!(signal = s, "shutting down");
    }
    shutdown.cancel();
    match tokio::time::timeout(JOIN_TIMEOUT, async {
        let _ = api.await;
        let _ = task.await;
    })
    .await
    {
        Ok(()) => info!("bye"),
        Err(_) => warn!("shutdown took longer than {JOIN_TIMEOUT:?}; exiting anyway"),
    }
    Ok(())
}

/// How often CPU usage and GPU memory are read for the announcements.
const TELEMETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Read CPU usage and GPU state off the event loop (NVML calls can take
/// milliseconds) and hand the readings to the node.
async fn monitor_hardware(node: crate::Node, shutdown: CancellationToken) {
    let mut state = Some((
        crate::hw::probe::Sampler::new(),
        crate::hw::gpu::GpuMonitor::new(),
    ));
    let mut tick = tokio::time::interval(TELEMETRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some((mut sampler, mut gpus)) = state.take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || {
            let (cpu_usage_pct, memory_available_mb) = sampler.sample();
            let readings = gpus.refresh();
            (
                sampler,
                gpus,
                (cpu_usage_pct, memory_available_mb),
                readings,
            )
        })
        .await;
        match joined {
            Ok((sampler, gpus, (cpu_usage_pct, memory_available_mb), readings)) => {
                node.update_telemetry(crate::handle::Telemetry {
                    cpu_usage_pct,
                    gpus: readings,
                    memory_available_mb,
                });
                state = Some((sampler, gpus));
            }
            Err(e) => {
                warn!(error = %e, "hardware monitor failed; no more CPU/GPU readings");
                return;
            }
        }
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<&'static str> {
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok("Ctrl-C")
}
