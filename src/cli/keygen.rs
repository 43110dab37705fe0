//! `lanswarm keygen`: write a new private-swarm key file (see
//! [`crate::swarm_key`]) and say how to use it. Local only: it talks to no
//! node.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::config::Config;
use crate::swarm_key;

/// Options of `lanswarm keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Where to write the key. Default: `swarm.key` in the node's data
    /// directory (from --data-dir, or the config's data_dir).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Replace an existing key file. Every node of the swarm then needs
    /// the new file before it can connect again.
    #[arg(long)]
    pub force: bool,
    /// Config file, to find the data directory when --out is not given.
    #[arg(long, short, env = "LANSWARM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory, where the key goes when --out is not given.
    #[arg(long, env = "LANSWARM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// What `keygen` did, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Written {
    path: String,
    fingerprint: String,
    config_line: String,
}

/// Write a new key and print where it went, its fingerprint and the config
/// line that uses it.
pub fn run(args: &KeygenArgs, json: bool) -> anyhow::Result<()> {
    let path = match &args.out {
        Some(p) => p.clone(),
        None => {
            let dir = match &args.data_dir {
                Some(d) => Config {
                    data_dir: Some(d.clone()),
                    ..Config::default()
                }
                .data_dir(),
                None => Config::load(args.config.as_deref())?.data_dir(),
            };
            crate::identity::ensure_data_dir(&dir)?;
            dir.join(swarm_key::KEY_FILE)
        }
    };
    let path = std::path::absolute(&path)
        .with_context(|| format!("{}: cannot make the path absolute", path.display()))?;
    let key = swarm_key::generate();
    swarm_key::write(&path, &key, args.force)?;
    let shown = path.display().to_string();
    let written = Written {
        config_line: format!("swarm_key = {}", toml::Value::String(shown.clone())),
        fingerprint: swarm_key::fingerprint(&key),
        path: shown,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&written)?);
    } else {
        println!("wrote a new swarm key to {} (mode 0600)", written.path);
        println!("fingerprint: {}", written.fingerprint);
        println!();
        println!("Copy the file to every node of the swarm, and add to the [network]");
        println!("section of each node's config:");
        println!();
        println!("    {}", written.config_line);
        println!();
        println!("A private swarm runs over TCP only: remove any QUIC listen or");
        println!("bootstrap addresses.");
    }
    Ok(())
}
