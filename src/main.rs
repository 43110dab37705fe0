//! The `lanswarm` binary: parse the command line and hand over to the
//! library. `run` starts a node; every other subcommand is a client of a
//! running node's HTTP API.

use clap::Parser;
use lanswarm::cli::{run_client, Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match &cli.command {
            Command::Run(args) => lanswarm::daemon::run(args.clone()).await,
            _ => run_client(&cli).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
