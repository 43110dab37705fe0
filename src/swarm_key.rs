//! The private-swarm key: a 32-byte secret shared by every node of one
//! swarm, kept in a file in the format of IPFS and go-libp2p:
//!
//! ```text
//! /key/swarm/psk/1.0.0/
//! /base16/
//! <64 hexadecimal digits>
//! ```
//!
//! With a key, the node puts libp2p's pre-shared-key layer (pnet) under
//! Noise on every TCP connection, so a node without the same key cannot
//! complete a connection at all (see `docs/security.md`). pnet does not
//! cover QUIC, so such a node runs TCP only ([`crate::config`] enforces it,
//! and so does [`crate::net::node::start`]).
//!
//! `lanswarm keygen` writes a key with [`generate`] and [`write()`];
//! `lanswarm run` reads the file named by `network.swarm_key` with
//! [`load`]. The key itself is never logged or printed: only its
//! [`fingerprint`], which tells whether two nodes hold the same key.
//!
//! Permissions, on Unix: the file is a secret, so a file that every user of
//! the machine may read, or that users other than its owner may change, is
//! refused ([`SwarmKeyError::Permissions`]), since anyone could join the
//! swarm with it or swap it. A group-readable file is accepted with a
//! warning: a service group that shares the key is a legitimate set-up.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use libp2p::pnet::PreSharedKey;

/// File name of the key in the data directory, where `lanswarm keygen`
/// writes it by default.
pub const KEY_FILE: &str = "swarm.key";

/// First line of a key file: the key type.
pub const HEADER: &str = "/key/swarm/psk/1.0.0/";

/// Second line of a key file: the encoding. Only base16 is supported.
pub const ENCODING: &str = "/base16/";

/// Bytes in a key.
pub const KEY_BYTES: usize = 32;

/// Hexadecimal digits on the key line.
pub const KEY_HEX_DIGITS: usize = KEY_BYTES * 2;

/// Largest key file read. A real one is 88 bytes; anything much bigger is
/// the wrong file.
pub const MAX_FILE_SIZE: u64 = 4096;

/// Permission bits that make a key file unsafe: readable by every user
/// (`o+r`), or writable by anyone but its owner (`g+w`, `o+w`).
const UNSAFE_MODE: u32 = 0o020 | 0o004 | 0o002;

/// Permission bit of a group-readable file: accepted, with a warning.
const GROUP_READ: u32 = 0o040;

/// Why a key file could not be read, checked or written. Every variant
/// names the file.
#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyError {
    /// The file does not exist.
    #[error("{}: swarm key file not found (create one with `lanswarm keygen`)", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("{}: cannot read the swarm key file", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a swarm key.
    #[error("{}: not a swarm key: {problem}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: Malformed,
    },
    /// Other users may read or change the file.
    #[error(
        "{}: the swarm key file is {} (mode {:03o}); restrict it with `chmod 600 {}`",
        path.display(),
        unsafe_reason(*mode),
        mode & 0o777,
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// [`write()`] without `force` found a file already there.
    #[error("{}: already exists; pass --force to replace it (every node of the swarm then needs the new key)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be written.
    #[error("{}: cannot write the swarm key file", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with the text of a key file. The messages never quote
/// the file's content, which may be (part of) a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The file is empty.
    #[error("the file is empty")]
    Empty,
    /// The file is too big to be a key.
    #[error("the file has {0} bytes; a swarm key file has fewer than {MAX_FILE_SIZE}")]
    TooLarge(u64),
    /// The file is not UTF-8 text.
    #[error("the file is not text")]
    NotText,
    /// Line 1 is not [`HEADER`].
    #[error("line 1 must be \"{HEADER}\"")]
    Header,
    /// Line 2 is not [`ENCODING`].
    #[error("line 2 must be \"{ENCODING}\" (the only encoding supported)")]
    Encoding,
    /// There is no line 3.
    #[error("line 3, the key, is missing")]
    MissingKey,
    /// Line 3 has the wrong number of characters.
    #[error("line 3 must be {KEY_HEX_DIGITS} hexadecimal digits ({KEY_BYTES} bytes), it has {0} characters")]
    Length(usize),
    /// Line 3 has a character that is not a hexadecimal digit.
    #[error("line 3: character {0} is not a hexadecimal digit")]
    Hex(usize),
    /// Something other than blank lines follows the key.
    #[error("line {0}: unexpected text after the key")]
    Trailing(usize),
}

fn unsafe_reason(mode: u32) -> &'static str {
    if mode & 0o004 != 0 {
        "readable by every user"
    } else {
        "writable by other users"
    }
}

/// Parse the text of a key file. Lines may end in `\r\n` and carry
/// trailing spaces; blank lines after the key are ignored.
pub fn parse(text: &str) -> Result<PreSharedKey, Malformed> {
    if text.trim().is_empty() {
        return Err(Malformed::Empty);
    }
    let mut lines = text.lines().map(str::trim_end);
    if lines.next() != Some(HEADER) {
        return Err(Malformed::Header);
    }
    if lines.next() != Some(ENCODING) {
        return Err(Malformed::Encoding);
    }
    let hex = match lines.next() {
        Some(l) if !l.is_empty() => l,
        _ => return Err(Malformed::MissingKey),
    };
    let n = hex.chars().count();
    if n != KEY_HEX_DIGITS {
        return Err(Malformed::Length(n));
    }
    let mut key = [0u8; KEY_BYTES];
    for (i, c) in hex.chars().enumerate() {
        let digit = c.to_digit(16).ok_or(Malformed::Hex(i + 1))? as u8;
        key[i / 2] = (key[i / 2] << 4) | digit;
    }
    if let Some(extra) = lines.position(|l| !l.trim().is_empty()) {
        return Err(Malformed::Trailing(extra + 4));
    }
    Ok(PreSharedKey::new(key))
}

/// A new random key, from the thread-local CSPRNG (seeded by the OS).
pub fn generate() -> PreSharedKey {
    PreSharedKey::new(rand::random())
}

/// The key's fingerprint as hex: the go-libp2p fingerprint, safe to log
/// and to compare between machines.
pub fn fingerprint(key: &PreSharedKey) -> String {
    key.fingerprint().to_string()
}

/// The text of a key file holding `key`.
pub fn to_file_text(key: &PreSharedKey) -> String {
    key.to_key_file()
}

/// Whether permission bits are acceptable: `Err` for unsafe ones, `Ok(true)`
/// for a group-readable file (accepted with a warning), `Ok(false)` for a
/// private one.
fn check_mode(mode: u32) -> Result<bool, ()> {
    if mode & UNSAFE_MODE != 0 {
        Err(())
    } else {
        Ok(mode & GROUP_READ != 0)
    }
}

/// Read, check and parse the key file at `path`. Logs a warning when the
/// file is group-readable (see the module docs).
pub fn load(path: &Path) -> Result<PreSharedKey, SwarmKeyError> {
    let read_err = |source: std::io::Error| SwarmKeyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SwarmKeyError::Missing {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(std::io::Error::other("not a regular file")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        match check_mode(mode) {
            Err(()) => {
                return Err(SwarmKeyError::Permissions {
                    path: path.to_owned(),
                    mode,
                })
            }
            Ok(true) => tracing::warn!(
                path = %path.display(),
                mode = format!("{:03o}", mode & 0o777),
                "the swarm key file is readable by its group; everyone in that group can join the swarm"
            ),
            Ok(false) => {}
        }
    }
    let malformed = |problem| SwarmKeyError::Malformed {
        path: path.to_owned(),
        problem,
    };
    if meta.len() > MAX_FILE_SIZE {
        return Err(malformed(Malformed::TooLarge(meta.len())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(malformed(Malformed::TooLarge(bytes.len() as u64)));
    }
    let text = String::from_utf8(bytes).map_err(|_| malformed(Malformed::NotText))?;
    parse(&text).map_err(malformed)
}

/// Write `key` to `path`, readable by its owner only (mode 0600). Without
/// `force`, an existing file is never touched ([`SwarmKeyError::Exists`]);
/// with it, the file is replaced atomically. The parent directory must
/// exist.
pub fn write(path: &Path, key: &PreSharedKey, force: bool) -> Result<(), SwarmKeyError> {
    let write_err = |p: &Path| {
        let p = p.to_owned();
        move |source| SwarmKeyError::Write { path: p, source }
    };
    let text = to_file_text(key);
    if !force {
        let mut f = match create_private(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SwarmKeyError::Exists {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(write_err(path)(e)),
        };
        let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(path);
            return Err(write_err(path)(e));
        }
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(&tmp)(e)),
    }
    let written = create_private(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(&tmp)(e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        write_err(path)(e)
    })
}

/// Create a new file that only its owner may read and write.
fn create_private(path: &Path) -> std::io::Result<fs::File> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef";

    fn text(hex: &str) -> String {
        format!("{HEADER}\n{ENCODING}\n{hex}\n")
    }

    #[test]
    fn parses_the_standard_format() {
        let key = parse(&text(HEX)).unwrap();
        let again: PreSharedKey = text(HEX).parse().unwrap();
        assert_eq!(key, again, "same result as libp2p's own parser");
        // CRLF line ends, trailing spaces and blank lines after the key.
        let windows = format!("{HEADER}\r\n{ENCODING}  \r\n{HEX}\r\n\r\n\n");
        assert_eq!(parse(&windows).unwrap(), key);
        // No newline after the key.
        assert_eq!(parse(&format!("{HEADER}\n{ENCODING}\n{HEX}")).unwrap(), key);
    }

    #[test]
    fn generated_keys_round_trip_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(parse(&to_file_text(&a)).unwrap(), a);
        let fp = fingerprint(&a);
        assert_eq!(fp.len(), 32);
        assert_ne!(fp, fingerprint(&b));
        assert!(!to_file_text(&a).contains(&fp));
    }

    #[test]
    fn every_malformed_key_is_named() {
        let long = "a".repeat(66);
        let cases: Vec<(String, Malformed)> = vec![
            (String::new(), Malformed::Empty),
            ("\n\n  \n".into(), Malformed::Empty),
            (
                format!("/key/swarm/psk/2.0.0/\n{ENCODING}\n{HEX}\n"),
                Malformed::Header,
            ),
            (HEX.into(), Malformed::Header),
            (format!("{HEADER}\n/base64/\n{HEX}\n"), Malformed::Encoding),
            (format!("{HEADER}\n"), Malformed::Encoding),
            (format!("{HEADER}\n{ENCODING}\n"), Malformed::MissingKey),
            (
                format!("{HEADER}\n{ENCODING}\n\n{HEX}\n"),
                Malformed::MissingKey,
            ),
            (text(&HEX[..62]), Malformed::Length(62)),
            (text(&long), Malformed::Length(66)),
            (text(&format!("{}g", &HEX[..63])), Malformed::Hex(64)),
            (text(&format!("+f{}", &HEX[2..])), Malformed::Hex(1)),
            // Multi-byte characters: counted as characters, never sliced.
            (text(&format!("é{}", &HEX[1..])), Malformed::Hex(1)),
            (format!("{}\n\nextra\n", text(HEX)), Malformed::Trailing(6)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(&input), Err(want.clone()), "{input:?}");
            // The message never quotes the (possibly secret) content.
            assert!(!want.to_string().contains(&HEX[..16]));
        }
    }

    #[cfg(unix)]
    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let key = generate();
        write(&path, &key, false).unwrap();
        #[cfg(unix)]
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(load(&path).unwrap(), key);
    }

    #[test]
    fn write_refuses_to_overwrite_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let first = generate();
        write(&path, &first, false).unwrap();
        let e = write(&path, &generate(), false).unwrap_err();
        assert!(matches!(e, SwarmKeyError::Exists { .. }), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(load(&path).unwrap(), first, "the old key is untouched");

        #[cfg(unix)]
        chmod(&path, 0o644);
        let second = generate();
        write(&path, &second, true).unwrap();
        assert_eq!(load(&path).unwrap(), second);
        #[cfg(unix)]
        assert_eq!(mode_of(&path), 0o600, "a forced write is private too");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn write_into_a_missing_directory_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join(KEY_FILE);
        for force in [false, true] {
            let e = write(&path, &generate(), force).unwrap_err();
            assert!(matches!(e, SwarmKeyError::Write { .. }), "{e:?}");
            assert!(e.to_string().contains("absent"), "{e}");
        }
    }

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");

        let e = load(&path).unwrap_err();
        assert!(matches!(e, SwarmKeyError::Missing { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(&path.display().to_string()),
            "{e}"
        );
        assert!(e.to_string().contains("lanswarm keygen"), "{e}");

        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, SwarmKeyError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains(&dir.path().display().to_string()));

        let cases: Vec<(Vec<u8>, Malformed, &str)> = vec![
            (b"hello\n".to_vec(), Malformed::Header, "line 1 must be"),
            (
                text("zz").into_bytes(),
                Malformed::Length(2),
                "64 hexadecimal digits",
            ),
            (
                text(&format!("{}x", &HEX[..63])).into_bytes(),
                Malformed::Hex(64),
                "character 64 is not a hexadecimal digit",
            ),
            (vec![0xff, 0xfe, 0x00, 0x41], Malformed::NotText, "not text"),
            (Vec::new(), Malformed::Empty, "empty"),
            (
                vec![b'a'; MAX_FILE_SIZE as usize + 1],
                Malformed::TooLarge(MAX_FILE_SIZE + 1),
                "bytes",
            ),
        ];
        for (content, want, says) in cases {
            let _ = fs::remove_file(&path);
            fs::write(&path, &content).unwrap();
            #[cfg(unix)]
            chmod(&path, 0o600);
            let e = load(&path).unwrap_err();
            match &e {
                SwarmKeyError::Malformed { problem, .. } => assert_eq!(problem, &want),
                other => panic!("expected {want:?}, got {other:?}"),
            }
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("{}: not a swarm key: ", path.display())),
                "{shown}"
            );
            assert!(shown.contains(says), "{shown}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn unsafe_permissions_are_refused_and_group_read_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let key = generate();
        write(&path, &key, false).unwrap();
        for (mode, says) in [
            (0o644, "readable by every user"),
            (0o604, "readable by every user"),
            (0o620, "writable by other users"),
            (0o602, "writable by other users"),
        ] {
            chmod(&path, mode);
            let e = load(&path).unwrap_err();
            assert!(matches!(e, SwarmKeyError::Permissions { .. }), "{e:?}");
            let shown = e.to_string();
            assert!(shown.starts_with(&path.display().to_string()), "{shown}");
            assert!(shown.contains(says), "{mode:o}: {shown}");
            assert!(shown.contains(&format!("{mode:03o}")), "{shown}");
            assert!(shown.contains("chmod 600"), "{shown}");
        }
        for mode in [0o600, 0o640, 0o400, 0o440] {
            chmod(&path, mode);
            assert_eq!(load(&path).unwrap(), key, "mode {mode:o}");
        }
        assert_eq!(check_mode(0o100600), Ok(false));
        assert_eq!(check_mode(0o100640), Ok(true));
        assert_eq!(check_mode(0o100606), Err(()));
    }
}
