//! Helpers shared by the integration tests that drive the real `lanswarm`
//! binary: a minimal HTTP/1.1 client, a bounded process runner and a
//! polling wait. [`daemon`] runs one `lanswarm run` on loopback, [`vlan`]
//! builds the virtual LAN of network namespaces.
//!
//! Each test crate compiles this module on its own and uses part of it, so
//! unused items are allowed here.
#![allow(dead_code)]

pub mod daemon;
pub mod vlan;

use std::io::{self, Read};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test, built by cargo for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_lanswarm");

/// How long one HTTP exchange with a node may take. An allocation walks at
/// most 8 candidates, each with a 5 s request timeout, so keep this above.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variables of the CLI and `lanswarm run` that must not leak
/// from the developer's shell (or CI) into the nodes under test.
pub const LANSWARM_ENV: &[&str] = &[
    "LANSWARM_API",
    "LANSWARM_TOKEN",
    "LANSWARM_CONFIG",
    "LANSWARM_DATA_DIR",
    "LANSWARM_NAME",
    "LANSWARM_API_LISTEN",
    "LANSWARM_LOG",
];

/// Proxy settings that would send the CLI's requests for `127.0.0.1`
/// somewhere else.
pub const PROXY_ENV: &[&str] = &[
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

/// Remove [`LANSWARM_ENV`] and [`PROXY_ENV`] from a command's environment.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for v in LANSWARM_ENV.iter().chain(PROXY_ENV) {
        cmd.env_remove(v);
    }
    cmd.env("NO_PROXY", "*")
}

/// One HTTP/1.1 exchange on an already connected stream (`Connection:
/// close`), bounded by [`HTTP_TIMEOUT`]. Returns the status and the body
/// parsed as JSON (`Null` when the body is empty or not JSON). See
/// `lanswarm::sim::http`, shared with the `lanswarm-sim` simulator.
pub fn http_on(
    s: TcpStream,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> io::Result<(u16, Value)> {
    lanswarm::sim::http::exchange(s, host, method, path, body, token, HTTP_TIMEOUT)
}

/// Run a command to completion, killing it after `timeout`. Its stdout and
/// stderr are captured. Returns an error if it could not be started or ran
/// out of time.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drain the pipes on threads so a chatty child never blocks on a full
    // pipe while we wait for it.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// Poll `check` every 50 ms until it returns `Ok`, and return its value and
/// how long that took. After `timeout`, panic with `what` and the last
/// reason `check` gave for not being done.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return (v, start.elapsed()),
            Err(why) => {
                if start.elapsed() >= timeout {
                    panic!("timed out after {timeout:?} waiting until {what}; last state: {why}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
