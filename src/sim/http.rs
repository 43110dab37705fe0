//! A minimal blocking HTTP/1.1 client for a node's JSON API: one request
//! per connection (`Connection: close`), the answer parsed as JSON.
//!
//! The caller opens the [`TcpStream`], so the same code serves a node on
//! `127.0.0.1` and one inside a network namespace (see
//! [`netns::connect_in`](super::netns::connect_in)).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// One HTTP/1.1 exchange on an already connected stream. `host` is the
/// `Host` header, `token` an optional bearer token, and `timeout` bounds
/// each read and write. Returns the status and the body parsed as JSON
/// (`Null` when the body is empty or not JSON).
pub fn exchange(
    mut s: TcpStream,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, Value)> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, payload) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {head:?}")))?;
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_owned()
    };
    Ok((
        status,
        serde_json::from_str(&payload).unwrap_or_else(|_| ndjson(&payload)),
    ))
}

/// One exchange with `url` (`http://HOST:PORT/PATH`) over a fresh
/// connection from this network namespace, each read and write bounded by
/// 30 seconds.
pub fn request(method: &str, url: &str, body: Option<&str>) -> io::Result<(u16, Value)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::other(format!("not an http:// URL: {url}")))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let s = TcpStream::connect(host)?;
    exchange(s, host, method, path, body, None, Duration::from_secs(30))
}

/// A newline-delimited JSON body (a streamed answer) as an array of its
/// lines, or `Null` if it is not one.
fn ndjson(payload: &str) -> Value {
    let lines: Result<Vec<Value>, _> = payload
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect();
    match lines {
        Ok(v) if !v.is_empty() => Value::Array(v),
        _ => Value::Null,
    }
}

/// Decode a `Transfer-Encoding: chunked` body.
pub fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail.get(n + 2..).unwrap_or("");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_joins_chunks_and_stops_at_the_last() {
        assert_eq!(dechunk("3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n"), "{\"a\":1}");
        assert_eq!(dechunk("ff\r\nshort"), "");
    }
}
