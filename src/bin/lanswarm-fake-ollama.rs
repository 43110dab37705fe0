//! `lanswarm-fake-ollama`: a stand-in for Ollama, for tests that run
//! lanswarm nodes in network namespaces.
//!
//! Ollama cannot be installed on the test machines, so this serves
//! [`lanswarm::sim::fake_ollama`]: only the subset of Ollama's API (and of
//! the OpenAI-compatible one) that lanswarm uses, with deterministic
//! answers a test can predict. For example:
//!
//! ```text
//! lanswarm-fake-ollama --listen 127.0.0.1:11434 --name gpu-box \
//!     --models llama3:latest,phi3:latest --loaded llama3:latest --delay-ms 5
//! ```
//!
//! It prints `listening on ADDR` to stdout once bound, and runs until
//! SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use lanswarm::sim::fake_ollama::{self, FakeOllama};

/// Serve a fake Ollama with the given models until SIGTERM or SIGINT.
#[derive(Debug, Parser)]
#[command(name = "lanswarm-fake-ollama", version)]
struct Args {
    /// The address to listen on (port 0 picks a free port; the address is
    /// printed).
    #[arg(long, default_value = "127.0.0.1:11434")]
    listen: SocketAddr,
    /// A name put in every answer, so a test can tell which server
    /// answered.
    #[arg(long, default_value = "fake-ollama")]
    name: String,
    /// The models served, comma-separated, as Ollama names them
    /// (`llama3:latest`).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// The models reported as loaded in memory, comma-separated.
    #[arg(long, value_delimiter = ',')]
    loaded: Vec<String>,
    /// The pause between the pieces of a streamed answer, in ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let fake = FakeOllama {
        name: args.name,
        models: args.models,
        loaded: args.loaded,
        delay_ms: args.delay_ms,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}").context("writing to stdout")?;
    stdout.flush().context("flushing stdout")?;

    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        };
        tracing::info!(signal = which, "stopping");
        signals.cancel();
    });
    fake_ollama::serve(listener, fake, shutdown)
        .await
        .context("serving")
}
