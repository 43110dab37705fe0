//! `lanswarm-des`: the discrete-event simulator of a whole swarm.
//!
//! ```text
//! lanswarm-des run SCENARIO.toml [--strategy S]... [--seed N] [--json FILE] [--plots DIR]
//! lanswarm-des compare SCENARIO.toml SCENARIO.toml... [--strategy S] [--seed N] [--plots DIR] [--name PREFIX]
//! lanswarm-des check SCENARIO.toml...
//! lanswarm-des elastic ELASTIC-SCENARIO.toml [--seed N] [--json FILE]
//! ```
//!
//! `run` prints the report and exits 1 if any invariant was violated;
//! `compare` runs several scenarios (one policy against another on the same
//! workload), prints each report, and plots them together; `check`
//! validates scenario files. See `simulations/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lanswarm::core::placement::Strategy;
use lanswarm::sim::des;

#[derive(Parser)]
#[command(
    name = "lanswarm-des",
    about = "Deterministic discrete-event simulation of a lanswarm swarm, against a centralized baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario: the centralized baseline and every strategy.
    Run {
        /// The scenario file (simulations/scenarios/*.toml).
        scenario: PathBuf,
        /// Run only this strategy (repeatable); default: the scenario's.
        #[arg(long = "strategy", value_name = "S")]
        strategies: Vec<Strategy>,
        /// Seed instead of the scenario's.
        #[arg(long)]
        seed: Option<u64>,
        /// Also write the report as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write PNG plots into this directory (needs `--features plots`).
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
        /// Runs at once; 0 = one per CPU.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Run several scenarios and plot one run of each together (fair
    /// share against FIFO, backfill on against off).
    Compare {
        /// The scenario files, two or more.
        #[arg(required = true, num_args = 2..)]
        scenarios: Vec<PathBuf>,
        /// Run and compare this strategy; default: each scenario's first.
        #[arg(long, value_name = "S")]
        strategy: Option<Strategy>,
        /// Seed instead of the scenarios'.
        #[arg(long)]
        seed: Option<u64>,
        /// Write PNG plots into this directory (needs `--features plots`).
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
        /// The plots' file names start with this.
        #[arg(long, value_name = "PREFIX", default_value = "compare")]
        name: String,
        /// Runs at once; 0 = one per CPU.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Elastic sharing, reactive against forecast, on owners with a daily
    /// peak of their own use (simulations/elastic/*.toml).
    Elastic {
        /// The elastic scenario file.
        scenario: PathBuf,
        /// Seed instead of the scenario's.
        #[arg(long)]
        seed: Option<u64>,
        /// Also write the report as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write a PNG plot into this directory (needs `--features plots`).
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
    },
    /// Validate scenario files, and print what each would simulate.
    Check {
        /// The scenario files.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lanswarm-des: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Elastic {
            scenario,
            seed,
            json,
            plots,
        } => {
            let sc = des::elastic::load(&scenario)?;
            #[cfg(not(feature = "plots"))]
            if plots.is_some() {
                anyhow::bail!("--plots needs a build with `--features plots`");
            }
            let report = des::elastic::run(&sc, seed);
            print!("{}", des::elastic::render(&report));
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, text + "\n")
                    .with_context(|| format!("writing the JSON report to {}", path.display()))?;
            }
            #[cfg(feature = "plots")]
            if let Some(dir) = plots {
                let file = des::elastic::plot(&report, &dir).map_err(anyhow::Error::msg)?;
                eprintln!("lanswarm-des: wrote {}", file.display());
            }
            Ok(if report.violations() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Compare {
            scenarios,
            strategy,
            seed,
            plots,
            name,
            threads,
        } => {
            let loaded = scenarios
                .iter()
                .map(|p| des::load(p))
                .collect::<Result<Vec<_>, _>>()?;
            #[cfg(not(feature = "plots"))]
            if plots.is_some() {
                anyhow::bail!("--plots needs a build with `--features plots`");
            }
            let opts = des::Options {
                strategies: strategy.map(|s| vec![s]),
                seed,
                threads,
            };
            let mut reports = Vec::with_capacity(loaded.len());
            for (i, sc) in loaded.iter().enumerate() {
                let report = des::run(sc, &opts);
                if i > 0 {
                    println!();
                }
                print!("{}", des::report::render(&report));
                reports.push(report);
            }
            #[cfg(feature = "plots")]
            if let Some(dir) = plots {
                let files =
                    des::plots::write_compare(&reports, strategy.map(|s| s.name()), &dir, &name)
                        .with_context(|| format!("writing plots to {}", dir.display()))?;
                for f in files {
                    eprintln!("lanswarm-des: wrote {}", f.display());
                }
            }
            #[cfg(not(feature = "plots"))]
            let _ = name;
            Ok(if reports.iter().all(|r| r.violations() == 0) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Check { scenarios } => {
            for path in scenarios {
                let sc = des::load(&path)?;
                let d = des::workload::draw(&sc);
                println!(
                    "{}: ok: {} nodes, {} jobs over {} s, {} crashes, strategies {}",
                    path.display(),
                    d.nodes.len(),
                    d.jobs.len(),
                    sc.duration_ms / 1000,
                    d.crashes.len(),
                    sc.strategies
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            scenario,
            strategies,
            seed,
            json,
            plots,
            threads,
        } => {
            let sc = des::load(&scenario)?;
            #[cfg(not(feature = "plots"))]
            if plots.is_some() {
                anyhow::bail!("--plots needs a build with `--features plots`");
            }
            let opts = des::Options {
                strategies: (!strategies.is_empty()).then_some(strategies),
                seed,
                threads,
            };
            let report = des::run(&sc, &opts);
            print!("{}", des::report::render(&report));
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, text + "\n")
                    .with_context(|| format!("writing the JSON report to {}", path.display()))?;
            }
            #[cfg(feature = "plots")]
            if let Some(dir) = plots {
                let files = des::plots::write_all(&report, &dir)
                    .with_context(|| format!("writing plots to {}", dir.display()))?;
                for f in files {
                    eprintln!("lanswarm-des: wrote {}", f.display());
                }
            }
            Ok(if report.violations() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
