//! `lanswarm token` (API tokens) and `lanswarm roles` (what peers may do
//! here).
//!
//! Token commands work two ways. With `--data-dir` or `--config` they
//! change the token file in that data directory directly, with no node
//! running (how the first token is made before a node listens on a
//! non-loopback address; a running node picks the change up at once).
//! Without either, they go through the node's API (`/api/v1/tokens`),
//! which needs an admin token where a token is needed.

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::json;

use super::client::Client;
use super::out;
use crate::api::tokens::{self, NewToken, TokenInfo, TokenRole};
use crate::config::Config;
use crate::handle::{RolesChange, RolesInfo};

/// `lanswarm token ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print its secret (shown this once).
    Create {
        /// What the token may do: read-only (GET only) or admin.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A unique name, to revoke it by.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        local: LocalArgs,
    },
    /// List tokens (ids, names, roles; never secrets).
    List {
        #[command(flatten)]
        local: LocalArgs,
    },
    /// Revoke a token by id or name; it stops working at once.
    Revoke {
        /// The token's id or name.
        key: String,
        #[command(flatten)]
        local: LocalArgs,
    },
}

/// A token's role on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    ReadOnly,
    Admin,
}

impl From<RoleArg> for TokenRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::ReadOnly => TokenRole::ReadOnly,
            RoleArg::Admin => TokenRole::Admin,
        }
    }
}

/// Where to change tokens without a running node.
#[derive(Debug, Clone, Default, Args)]
pub struct LocalArgs {
    /// Change the token file in this data directory directly (no node
    /// needed).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Change the token file in this config's data directory directly.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl LocalArgs {
    /// The token file to change directly, if asked to.
    fn file(&self) -> anyhow::Result<Option<PathBuf>> {
        let dir = match (&self.data_dir, &self.config) {
            (Some(d), _) => Config {
                data_dir: Some(d.clone()),
                ..Config::default()
            }
            .data_dir(),
            (None, Some(c)) => Config::load(Some(c))?.data_dir(),
            (None, None) => return Ok(None),
        };
        Ok(Some(dir.join(tokens::TOKEN_FILE)))
    }
}

fn token_line(t: &TokenInfo) -> String {
    let created = chrono::DateTime::from_timestamp_millis(t.created_at_ms as i64)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    format!(
        "{:<18} {:<10} {:<20} {created}\n",
        t.id,
        t.role,
        t.name.as_deref().unwrap_or("-")
    )
}

/// Run `lanswarm token ...`.
pub async fn token_client(c: &Client, json: bool, cmd: &TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { role, name, local } => {
            let made: NewToken = match local.file()? {
                Some(path) => tokens::create(&path, (*role).into(), name.as_deref())
                    .with_context(|| format!("making a token in {}", path.display()))?,
                None => {
                    let body = json!({ "role": TokenRole::from(*role), "name": name });
                    c.call(Method::POST, "/api/v1/tokens", Some(&body)).await?
                }
            };
            out(json, &made, || {
                format!(
                    "made {} token {}{}\n\n    {}\n\nThis secret is shown once; send it as `Authorization: Bearer <secret>`\n(or LANSWARM_TOKEN / --token for the CLI).\n",
                    made.token.role,
                    made.token.id,
                    made.token
                        .name
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default(),
                    made.secret
                )
            })
        }
        TokenCommand::List { local } => {
            let list: Vec<TokenInfo> = match local.file()? {
                Some(path) => tokens::list(&path)?,
                None => c.get("/api/v1/tokens").await?,
            };
            out(json, &list, || {
                if list.is_empty() {
                    return "no tokens\n".to_owned();
                }
                let mut s = format!("{:<18} {:<10} {:<20} CREATED\n", "ID", "ROLE", "NAME");
                for t in &list {
                    s.push_str(&token_line(t));
                }
                s
            })
        }
        TokenCommand::Revoke { key, local } => {
            let gone: TokenInfo = match local.file()? {
                Some(path) => tokens::revoke(&path, key)?,
                None => {
                    let path = format!("/api/v1/tokens/{key}");
                    c.call(Method::DELETE, &path, None::<&()>).await?
                }
            };
            out(json, &gone, || {
                format!("revoked {}\n", token_line(&gone).trim_end())
            })
        }
    }
}

/// `lanswarm roles ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum RolesCommand {
    /// Every role, the default, and who has which.
    Show,
    /// Give a peer, or the members of a group, a role.
    #[command(group(ArgGroup::new("who").required(true).args(["peer", "group"])))]
    Assign {
        /// The role: none, viewer, user, operator, admin, or a custom one.
        role: String,
        /// A peer id.
        #[arg(long)]
        peer: Option<String>,
        /// A group id or name.
        #[arg(long)]
        group: Option<String>,
    },
    /// Remove a peer's or a group's role (the default applies again).
    #[command(group(ArgGroup::new("who").required(true).args(["peer", "group"])))]
    Unassign {
        #[arg(long)]
        peer: Option<String>,
        #[arg(long)]
        group: Option<String>,
    },
    /// Set the role of admitted peers with no assignment.
    Default {
        /// The role.
        role: String,
    },
}

fn roles_text(r: &RolesInfo) -> String {
    let mut s = String::from("ROLE         PERMISSIONS\n");
    for (name, perms) in &r.roles {
        let list: Vec<&str> = perms.iter().map(|p| p.as_str()).collect();
        s.push_str(&format!("{name:<12} {}\n", list.join(", ")));
    }
    s.push_str(&format!("\ndefault role: {}\n", r.policy.default_role));
    if !r.policy.peers.is_empty() {
        s.push_str("\npeers:\n");
        for (peer, role) in &r.policy.peers {
            s.push_str(&format!("  {peer}  {role}\n"));
        }
    }
    if !r.policy.groups.is_empty() {
        s.push_str("\ngroups:\n");
        for (g, role) in &r.policy.groups {
            s.push_str(&format!("  {g}  {role}\n"));
        }
    }
    s
}

/// Run `lanswarm roles ...`.
pub async fn roles_client(c: &Client, json: bool, cmd: &RolesCommand) -> anyhow::Result<()> {
    let mut change = RolesChange::default();
    match cmd {
        RolesCommand::Show => {
            let r: RolesInfo = c.get("/api/v1/roles").await?;
            return out(json, &r, || roles_text(&r));
        }
        RolesCommand::Assign { role, peer, group } => {
            if let Some(p) = peer {
                change.assign_peers.insert(p.clone(), role.clone());
            }
            if let Some(g) = group {
                change.assign_groups.insert(g.clone(), role.clone());
            }
        }
        RolesCommand::Unassign { peer, group } => {
            change.unassign_peers.extend(peer.iter().cloned());
            change.unassign_groups.extend(group.iter().cloned());
        }
        RolesCommand::Default { role } => change.default_role = Some(role.clone()),
    }
    let r: RolesInfo = c
        .call(Method::PATCH, "/api/v1/roles", Some(&change))
        .await?;
    out(json, &r, || roles_text(&r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lanswarm").chain(argv.iter().copied()))
    }

    #[test]
    fn token_and_roles_commands_parse() {
        let cli = parse(&["token", "create", "--role", "read-only", "--name", "g"]).unwrap();
        match cli.command {
            Command::Token(TokenCommand::Create { role, name, local }) => {
                assert_eq!(role, RoleArg::ReadOnly);
                assert_eq!(name.as_deref(), Some("g"));
                assert!(
                    local.file().unwrap().is_none(),
                    "no --data-dir: through the API"
                );
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["token", "revoke", "g", "--data-dir", "/tmp/x"]).unwrap();
        match cli.command {
            Command::Token(TokenCommand::Revoke { key, local }) => {
                assert_eq!(key, "g");
                assert_eq!(
                    local.file().unwrap(),
                    Some(PathBuf::from("/tmp/x").join(tokens::TOKEN_FILE))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["roles", "assign", "viewer", "--group", "lab"])
                .unwrap()
                .command,
            Command::Roles(RolesCommand::Assign { .. })
        ));
        for bad in [
            &["token", "create", "--role", "root"][..],
            &["token", "create"],
            &["roles", "assign", "viewer"],
            &["roles", "assign", "viewer", "--peer", "p", "--group", "g"],
            &["roles", "unassign"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
