//! `lanswarm-sim`: the local multi-process simulation. It starts N real
//! `lanswarm run` processes on this machine, drives a seeded workload of
//! allocation requests against their HTTP APIs from C worker threads,
//! checks the invariants while it runs, and prints a short report.
//!
//! - `--mode loopback` (default, no privileges): nodes on `127.0.0.1`,
//!   mDNS off, every node bootstrapping from node 0.
//! - `--mode netns` (root): a virtual LAN of network namespaces, mDNS on
//!   and no bootstrap peers, as on a real LAN. No multicast ever leaves
//!   the namespaces this tool creates.
//!
//! See `simulations/README.md` for the options, the workload, the report
//! and example output. Exit status: 0 when every check passed, 1 when an
//! invariant failed or a node answered something unexpected, 2 when the
//! swarm did not converge, 3 when the nodes could not be started, 130
//! after Ctrl-C or SIGTERM.

#[path = "lanswarm-sim/cluster.rs"]
mod cluster;
#[path = "lanswarm-sim/report.rs"]
mod report;
#[path = "lanswarm-sim/workload.rs"]
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use cluster::{Cluster, ClusterOpts, Mode};
use report::{Denials, Invariants, Latency, NodeReport, Report};
use workload::Tally;

/// Set by SIGINT or SIGTERM: stop sending, check, tear down, exit 130.
static STOP: AtomicBool = AtomicBool::new(false);

/// Start N real lanswarm nodes on this machine, drive a seeded request
/// workload against them, check the invariants and print a report.
#[derive(Debug, Parser)]
#[command(name = "lanswarm-sim", version)]
struct Args {
    /// How the nodes find each other.
    #[arg(long, value_enum, default_value_t = Mode::Loopback)]
    mode: Mode,
    /// Number of nodes (node i has profile i mod 4: workstation, server,
    /// laptop, gpu-box).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=254))]
    nodes: u16,
    /// Number of allocation requests.
    #[arg(long, default_value_t = 500)]
    requests: usize,
    /// Worker threads sending requests at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Seed of the workload: request sizes, requesters, strategies.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long each grant is held before it is released, ms.
    #[arg(long, default_value_t = 50)]
    hold_ms: u64,
    /// The lanswarm binary [default: `lanswarm` next to this executable].
    #[arg(long, value_name = "PATH")]
    bin: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Keep the run directory (node configs, logs, data) afterwards.
    #[arg(long)]
    keep: bool,
    /// Give up if the swarm has not converged after this many seconds.
    #[arg(long, default_value_t = 30)]
    converge_timeout: u64,
    /// After the last request, wait at most this many seconds for every
    /// lease to be gone and every view to show all capacity free.
    #[arg(long, default_value_t = 10)]
    drain_timeout: u64,
    /// Give up on an allocation request after this long without an
    /// answer, ms (each read and write on the connection).
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    http_timeout_ms: u64,
    /// Pause between two invariant samples of all nodes, ms.
    #[arg(long, default_value_t = 20)]
    sample_ms: u64,
    /// Log filter of the nodes (their logs are in the run directory).
    #[arg(long, default_value = "info")]
    node_log: String,
    /// Print the workload the seed gives and exit, without starting nodes.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.dry_run {
        dry_run(&args);
        return ExitCode::SUCCESS;
    }
    watch_signals();
    match run(&args) {
        Ok(r) => {
            print!("{}", r.text());
            if let Some(path) = &args.json {
                let written = serde_json::to_string_pretty(&r)
                    .context("serialising the report")
                    .and_then(|j| {
                        std::fs::write(path, j + "\n")
                            .with_context(|| format!("writing {}", path.display()))
                    });
                if let Err(e) = written {
                    eprintln!("lanswarm-sim: {e:#}");
                    return ExitCode::from(3);
                }
            }
            ExitCode::from(if r.interrupted {
                130
            } else if !r.converged {
                2
            } else if r.passed {
                0
            } else {
                1
            })
        }
        Err(e) => {
            eprintln!("lanswarm-sim: {e:#}");
            ExitCode::from(if STOP.load(Ordering::Relaxed) { 130 } else { 3 })
        }
    }
}

/// On SIGINT or SIGTERM, set [`STOP`]: workers finish the request in hand
/// (releasing any grant), then the run is checked and torn down as usual.
fn watch_signals() {
    std::thread::spawn(|| {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                if STOP.swap(true, Ordering::Relaxed) {
                    eprintln!("lanswarm-sim: {name}: already stopping, tearing down the nodes");
                } else {
                    eprintln!("lanswarm-sim: {name}: stopping; checking and tearing down");
                }
            }
        });
    });
}

fn dry_run(args: &Args) {
    let jobs = workload::generate(args.seed, args.requests, args.nodes.into());
    println!(
        "workload {}: {} requests for {} nodes from seed {}",
        workload::digest(&jobs),
        jobs.len(),
        args.nodes,
        args.seed
    );
    for (k, j) in jobs.iter().enumerate() {
        println!(
            "{k:>5} n{} ({}) {:<12} {}",
            j.requester,
            workload::profile_of(j.requester),
            j.strategy,
            j.body
        );
    }
}

/// Send `jobs` from `args.concurrency` worker threads while a sampler
/// checks the owners' ledgers; returns when every job is answered (or
/// on Ctrl-C) and the sampler has swept once more.
fn drive(
    nodes: &[cluster::SimNode],
    jobs: &[workload::Job],
    args: &Args,
) -> (Tally, workload::Samples) {
    let next = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let hold = Duration::from_millis(args.hold_ms);
    let post_timeout = Duration::from_millis(args.http_timeout_ms);
    let sample_every = Duration::from_millis(args.sample_ms);
    let start = Instant::now();
    std::thread::scope(|s| {
        let sampler = s.spawn(|| workload::sampler(nodes, sample_every, &done));
        let workers: Vec<_> = (0..args.concurrency)
            .map(|_| s.spawn(|| workload::worker(nodes, jobs, &next, hold, post_timeout, &STOP)))
            .collect();
        let mut tally = Tally::default();
        for w in workers {
            tally.merge(w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        tally.elapsed = start.elapsed();
        done.store(true, Ordering::Relaxed);
        let samples = sampler
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (tally, samples)
    })
}

fn run(args: &Args) -> anyhow::Result<Report> {
    let started = Instant::now();
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("lanswarm"),
    };
    let bin = bin.canonicalize().unwrap_or(bin);
    let n = usize::from(args.nodes);
    let jobs = workload::generate(args.seed, args.requests, n);
    let mut report = Report {
        mode: args.mode.to_string(),
        nodes: n,
        requests: args.requests,
        concurrency: args.concurrency.into(),
        hold_ms: args.hold_ms,
        seed: args.seed,
        workload_digest: workload::digest(&jobs),
        lanswarm_bin: bin.display().to_string(),
        ..Default::default()
    };
    let opts = ClusterOpts {
        mode: args.mode,
        nodes: n,
        bin,
        keep: args.keep,
        log: args.node_log.clone(),
    };
    eprintln!(
        "lanswarm-sim: starting {n} nodes ({}) from {}",
        args.mode,
        opts.bin.display()
    );
    let mut cluster = Cluster::start(&opts, &STOP)?;
    report.nodes_up_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "lanswarm-sim: nodes up in {:.2} s, run directory {}",
        report.nodes_up_secs,
        cluster.dir.display()
    );
    match cluster.wait_converged(Duration::from_secs(args.converge_timeout), &STOP) {
        Ok(d) => {
            report.converged = true;
            report.converged_after_secs = Some(d.as_secs_f64());
        }
        Err(why) => report.not_converged_because = Some(why),
    }
    let (mut tally, mut samples) = (Tally::default(), workload::Samples::default());
    samples.peak = vec![Default::default(); n];
    let mut inv = Invariants::default();
    if report.converged && !STOP.load(Ordering::Relaxed) {
        eprintln!(
            "lanswarm-sim: converged in {:.2} s; sending {} requests from {} workers",
            report.converged_after_secs.unwrap_or_default(),
            jobs.len(),
            args.concurrency
        );
        let nodes = &cluster.nodes;
        (tally, samples) = drive(nodes, &jobs, args);
        report.workload_secs = tally.elapsed.as_secs_f64();
        let drain = Duration::from_secs(args.drain_timeout);
        match workload::wait_drained(nodes, drain) {
            Ok(after) => {
                inv.all_released = true;
                inv.released_after_secs = Some(after.as_secs_f64());
                match workload::wait_views_settled(nodes, drain) {
                    Ok(after) => {
                        inv.views_settled = true;
                        inv.views_settled_after_secs = Some(after.as_secs_f64());
                    }
                    Err(off) => inv.views_unsettled = off,
                }
            }
            Err(left) => inv.leaked_leases = left,
        }
        inv.penalties = workload::penalties(nodes);
    }
    inv.no_peer_penalised = inv.penalties.is_empty();
    for node in &mut cluster.nodes {
        if let Some(st) = node.exited() {
            inv.dead_nodes.push(format!(
                "{} exited ({st}); end of its log:\n{}",
                node.name,
                cluster::tail(&node.log_path(), 20)
            ));
        }
    }
    inv.nodes_alive = inv.dead_nodes.is_empty();
    inv.sample_sweeps = samples.sweeps;
    inv.samples = samples.reads;
    inv.failed_samples = samples.failed_reads;
    inv.overcommit_violations = samples.violations;
    inv.never_overcommitted = samples.violations == 0;
    inv.no_errors = tally.errors.is_empty();
    inv.examples = samples
        .violation_examples
        .iter()
        .chain(&tally.error_examples)
        .cloned()
        .collect();

    report.interrupted = STOP.load(Ordering::Relaxed);
    report.sent = tally.sent;
    report.requests_per_sec = if report.workload_secs > 0.0 {
        tally.sent as f64 / report.workload_secs
    } else {
        0.0
    };
    report.grants = tally.grants;
    report.late_binding_grants = tally.late_bound;
    report.late_binding_refusals = tally.late_refusals;
    report.remote_grants = tally.remote_grants;
    report.denials = Denials {
        total: tally.denial_codes.values().sum(),
        by_code: tally.denial_codes,
        refusal_reasons: tally.refusal_reasons,
        excluded_reasons: tally.excluded_reasons,
    };
    report.errors = tally.errors;
    report.releases = tally.releases;
    report.releases_unconfirmed = tally.releases_unconfirmed;
    report.by_strategy = tally
        .by_strategy
        .into_iter()
        .map(|(k, (g, d))| (k, [g, d]))
        .collect();
    report.grant_latency_ms = Latency::of(&tally.grant_ms);
    report.denial_latency_ms = Latency::of(&tally.denial_ms);
    report.release_latency_ms = Latency::of(&tally.release_ms);
    report.node_reports = cluster
        .nodes
        .iter()
        .zip(samples.peak)
        .map(|(node, peak)| NodeReport {
            name: node.name.clone(),
            profile: node.profile.to_owned(),
            id: node.id.clone(),
            lendable_cpu_cores: node.lendable.cpu_cores,
            lendable_memory_mb: node.lendable.memory_mb,
            lendable_disk_mb: node.lendable.disk_mb,
            lendable_gpus: node.lendable.gpus.len(),
            grants: tally.placement.get(&node.name).copied().unwrap_or(0),
            peak,
        })
        .collect();
    report.placement = tally.placement;
    let checks_held = inv.never_overcommitted
        && inv.all_released
        && inv.views_settled
        && inv.no_peer_penalised
        && inv.nodes_alive
        && inv.no_errors;
    report.invariants = inv;
    report.passed = report.converged && !report.interrupted && checks_held;
    if args.keep || (!report.passed && !report.interrupted) {
        // The nodes' logs explain a failure: keep them.
        cluster.keep();
        report.kept_dir = Some(cluster.dir.display().to_string());
    }
    cluster.teardown();
    report.wall_secs = started.elapsed().as_secs_f64();
    if report.sent == 0 && report.converged && !report.interrupted && args.requests > 0 {
        bail!("no request was sent");
    }
    Ok(report)
}
