//! API tokens: bearer tokens for the HTTP API, each with a role
//! (`read-only` or `admin`), kept hashed in the data directory.
//!
//! # Where they live
//!
//! Tokens are kept in [`TOKEN_FILE`] (`api-tokens.json`) in the node's
//! data directory, as SHA-256 hashes of their secrets: the secret is
//! printed once, when the token is made, and never stored. The file is
//! written whole (a temporary file, then a rename), mode 0600.
//!
//! A file rather than the redb store, so that the first token can be made
//! before a node is reachable: `lanswarm token create --data-dir DIR`
//! writes the file offline (no node has to run, and a running one may hold
//! its store open). A running node looks at the file's modification time
//! and length on every request and reloads it when either changed, so a
//! token made or revoked offline works, or stops working, at once. The
//! same file is what `POST/GET/DELETE /api/v1/tokens` change.
//!
//! The config's `api.token` keeps working: it is an admin token that lives
//! in the config instead.
//!
//! # When a token is needed
//!
//! - With `api.token` set, or `api.listen` on an address that is not
//!   loopback, every request but `/healthz` needs `Authorization: Bearer`.
//! - Otherwise (loopback, no `api.token`) a request without one is served
//!   as the local admin, as before; a request that presents one must
//!   present a valid one.
//!
//! A missing, malformed, unknown or revoked token is 401 `unauthorized`.
//! A `read-only` token may only `GET` (and `HEAD`); anything else is 403
//! `forbidden`. If the file cannot be read or parsed, no stored token is
//! accepted (the config's still is) until it is fixed: failing closed, so
//! that a broken file never resurrects a revoked token.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The token file in the data directory.
pub const TOKEN_FILE: &str = "api-tokens.json";
/// Most tokens kept.
pub const MAX_TOKENS: usize = 256;
/// Longest token name.
pub const MAX_NAME: usize = 64;
/// Prefix of every secret, so a leaked one is recognisable.
pub const SECRET_PREFIX: &str = "lsw_";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenRole {
    /// `GET` only: nothing that changes state.
    ReadOnly,
    /// Everything, including making and revoking tokens.
    Admin,
}

impl TokenRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::ReadOnly => "read-only",
            TokenRole::Admin => "admin",
        }
    }
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TokenRole {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        match s {
            "read-only" => Ok(TokenRole::ReadOnly),
            "admin" => Ok(TokenRole::Admin),
            other => Err(TokenError::BadRole(other.to_owned())),
        }
    }
}

/// A token as shown to users: never its secret or hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: TokenRole,
    pub created_at_ms: u64,
}

/// A token just made: its secret, shown this once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewToken {
    pub token: TokenInfo,
    pub secret: String,
}

/// One stored token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    #[serde(flatten)]
    info: TokenInfo,
    /// SHA-256 of the secret, lowercase hex.
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<Stored>,
}

/// Errors of the token file and its changes.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown token role {0:?}; expected read-only or admin")]
    BadRole(String),
    #[error("token name {0:?}: use 1 to 64 letters, digits, '.', '-' or '_'")]
    BadName(String),
    #[error("a token named {0:?} already exists; revoke it or pick another name")]
    NameTaken(String),
    #[error("no token with id or name {0:?}")]
    Unknown(String),
    #[error("{MAX_TOKENS} tokens already exist; revoke some first")]
    Full,
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

impl TokenError {
    fn file(path: &Path, message: impl fmt::Display) -> Self {
        TokenError::File {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}

fn sha256_hex(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn read_file(path: &Path) -> Result<Vec<Stored>, TokenError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TokenError::file(path, e)),
    };
    let f: TokenFile = serde_json::from_str(&text)
        .map_err(|e| TokenError::file(path, format!("not a token file: {e}")))?;
    if f.tokens.len() > MAX_TOKENS {
        return Err(TokenError::file(path, "too many tokens"));
    }
    Ok(f.tokens)
}

fn write_file(path: &Path, tokens: &[Stored]) -> Result<(), TokenError> {
    let text = serde_json::to_vec_pretty(&TokenFile {
        tokens: tokens.to_vec(),
    })
    .map_err(|e| TokenError::file(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TokenError::file(dir, e))?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| TokenError::file(&tmp, e))?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(|e| TokenError::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TokenError::file(path, e))
}

/// The tokens in the file at `path` (none if there is no file).
pub fn list(path: &Path) -> Result<Vec<TokenInfo>, TokenError> {
    Ok(read_file(path)?.into_iter().map(|s| s.info).collect())
}

/// Make a token with `role` (and `name`, unique), store its hash at
/// `path`, and return it with its secret.
pub fn create(path: &Path, role: TokenRole, name: Option<&str>) -> Result<NewToken, TokenError> {
    let name = name.map(str::trim);
    if let Some(n) = name {
        if !valid_name(n) {
            return Err(TokenError::BadName(n.to_owned()));
        }
    }
    let mut tokens = read_file(path)?;
    if tokens.len() >= MAX_TOKENS {
        return Err(TokenError::Full);
    }
    if let Some(n) = name {
        if tokens.iter().any(|t| t.info.name.as_deref() == Some(n)) {
            return Err(TokenError::NameTaken(n.to_owned()));
        }
    }
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    let secret = format!("{SECRET_PREFIX}{}", hex(&rand::random::<[u8; 32]>()));
    let id = format!("tok-{}", hex(&rand::random::<[u8; 6]>()));
    let created_at_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let info = TokenInfo {
        id,
        name: name.map(str::to_owned),
        role,
        created_at_ms,
    };
    tokens.push(Stored {
        info: info.clone(),
        sha256: sha256_hex(&secret),
    });
    write_file(path, &tokens)?;
    Ok(NewToken {
        token: info,
        secret,
    })
}

/// Revoke the token whose id or name is `key`; it stops working at once.
pub fn revoke(path: &Path, key: &str) -> Result<TokenInfo, TokenError> {
    let key = key.trim();
    let mut tokens = read_file(path)?;
    let Some(i) = tokens
        .iter()
        .position(|t| t.info.id == key || t.info.name.as_deref() == Some(key))
    else {
        return Err(TokenError::Unknown(key.to_owned()));
    };
    let gone = tokens.remove(i);
    write_file(path, &tokens)?;
    Ok(gone.info)
}

/// The result of checking a request's `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Served with this role.
    Allowed(TokenRole),
    /// 401: the message says why.
    Unauthorized(&'static str),
}

/// What the file looked like when last read.
#[derive(Default)]
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    /// `None`: the file is broken, accept no stored token.
    hashes: Option<Vec<(String, TokenRole)>>,
}

/// The API's authentication: the config's token, the token file, and
/// whether a token is required.
pub struct ApiAuth {
    config_token: Option<String>,
    file: Option<PathBuf>,
    required: bool,
    loaded: Mutex<Loaded>,
}

impl ApiAuth {
    /// Tokens from `config_token` (admin) and the file at `file`. A token
    /// is required when `config_token` is set or `loopback_only` is false.
    pub fn new(config_token: Option<String>, file: Option<PathBuf>, loopback_only: bool) -> Self {
        let required = config_token.is_some() || !loopback_only;
        let auth = ApiAuth {
            config_token,
            file,
            required,
            loaded: Mutex::new(Loaded::default()),
        };
        auth.refresh();
        auth
    }

    /// No token at all, none required (tests, a loopback node).
    pub fn open() -> Self {
        ApiAuth::new(None, None, true)
    }

    /// Whether every request needs a token.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The token file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reload the file if it changed since it was last read.
    fn refresh(&self) {
        let Some(path) = &self.file else { return };
        let stamp = std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let Ok(mut loaded) = self.loaded.lock() else {
            return;
        };
        if loaded.hashes.is_some() && loaded.stamp == stamp {
            return;
        }
        loaded.stamp = stamp;
        loaded.hashes = match read_file(path) {
            Ok(tokens) => Some(
                tokens
                    .into_iter()
                    .map(|t| (t.sha256, t.info.role))
                    .collect(),
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the API token file; no stored token is accepted until it is fixed");
                None
            }
        };
    }

    /// How many stored tokens there are now.
    pub fn stored_count(&self) -> usize {
        self.refresh();
        self.loaded
            .lock()
            .ok()
            .and_then(|l| l.hashes.as_ref().map(Vec::len))
            .unwrap_or(0)
    }

    /// Check the value of an `Authorization` header (`None`: absent).
    pub fn check(&self, header: Option<&[u8]>) -> Check {
        let Some(header) = header else {
            return if self.required {
                Check::Unauthorized("this API needs `Authorization: Bearer <token>`")
            } else {
                Check::Allowed(TokenRole::Admin)
            };
        };
        let Some(presented) = std::str::from_utf8(header)
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Check::Unauthorized(
                "malformed Authorization header; expected `Authorization: Bearer <token>`",
            );
        };
        if let Some(t) = &self.config_token {
            if constant_time_eq(presented.as_bytes(), t.as_bytes()) {
                return Check::Allowed(TokenRole::Admin);
            }
        }
        self.refresh();
        let hash = sha256_hex(presented);
        let Ok(loaded) = self.loaded.lock() else {
            return Check::Unauthorized("unknown or revoked token");
        };
        let mut found = None;
        for (stored, role) in loaded.hashes.iter().flatten() {
            // Look at every entry, so the time taken does not say which.
            if constant_time_eq(stored.as_bytes(), hash.as_bytes()) && found.is_none() {
                found = Some(*role);
            }
        }
        match found {
            Some(role) => Check::Allowed(role),
            None => Check::Unauthorized("unknown or revoked token"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(s: &str) -> Vec<u8> {
        format!("Bearer {s}").into_bytes()
    }

    #[test]
    fn create_list_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        assert!(list(&path).unwrap().is_empty());
        let a = create(&path, TokenRole::Admin, Some("ops")).unwrap();
        let r = create(&path, TokenRole::ReadOnly, None).unwrap();
        assert!(a.secret.starts_with(SECRET_PREFIX));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&a.secret), "secrets are stored hashed");
        assert!(text.contains(&sha256_hex(&a.secret)));
        let all = list(&path).unwrap();
        assert_eq!(all, vec![a.token.clone(), r.token.clone()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(revoke(&path, "ops").unwrap(), a.token);
        assert_eq!(revoke(&path, &r.token.id).unwrap(), r.token);
        assert!(list(&path).unwrap().is_empty());
    }

    #[test]
    fn bad_changes_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        create(&path, TokenRole::Admin, Some("ops")).unwrap();
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            create(&path, TokenRole::Admin, Some("ops")),
            Err(TokenError::NameTaken(_))
        ));
        assert!(matches!(
            create(&path, TokenRole::Admin, Some("a b")),
            Err(TokenError::BadName(_))
        ));
        assert!(matches!(revoke(&path, "nope"), Err(TokenError::Unknown(_))));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let e = "root".parse::<TokenRole>().unwrap_err().to_string();
        assert!(e.contains("read-only or admin"), "{e}");
    }

    #[test]
    fn auth_accepts_stored_and_config_tokens_and_sees_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let auth = ApiAuth::new(Some("cfg-secret".into()), Some(path.clone()), false);
        assert!(auth.required());
        assert_eq!(
            auth.check(Some(&bearer("cfg-secret"))),
            Check::Allowed(TokenRole::Admin)
        );
        let r = create(&path, TokenRole::ReadOnly, Some("ro")).unwrap();
        assert_eq!(
            auth.check(Some(&bearer(&r.secret))),
            Check::Allowed(TokenRole::ReadOnly)
        );
        assert_eq!(auth.stored_count(), 1);
        revoke(&path, "ro").unwrap();
        assert!(matches!(
            auth.check(Some(&bearer(&r.secret))),
            Check::Unauthorized(_)
        ));
        assert!(matches!(auth.check(None), Check::Unauthorized(_)));
        assert!(matches!(
            auth.check(Some(b"Basic abc")),
            Check::Unauthorized(_)
        ));
        assert!(matches!(
            auth.check(Some(b"Bearer ")),
            Check::Unauthorized(_)
        ));
        assert!(matches!(
            auth.check(Some(&[0xff, 0xfe])),
            Check::Unauthorized(_)
        ));
    }

    #[test]
    fn a_broken_file_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let r = create(&path, TokenRole::Admin, None).unwrap();
        let auth = ApiAuth::new(None, Some(path.clone()), false);
        assert_eq!(
            auth.check(Some(&bearer(&r.secret))),
            Check::Allowed(TokenRole::Admin)
        );
        std::fs::write(&path, b"{ not json, and longer than before").unwrap();
        assert!(matches!(
            auth.check(Some(&bearer(&r.secret))),
            Check::Unauthorized(_)
        ));
        assert!(matches!(list(&path), Err(TokenError::File { .. })));
    }

    #[test]
    fn loopback_without_config_token_is_open_but_checks_presented_tokens() {
        let auth = ApiAuth::new(None, None, true);
        assert!(!auth.required());
        assert_eq!(auth.check(None), Check::Allowed(TokenRole::Admin));
        assert!(matches!(
            auth.check(Some(&bearer("lsw_nope"))),
            Check::Unauthorized(_)
        ));
    }
}
