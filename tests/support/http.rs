//! A deliberately dumb HTTP/1.1 client over a raw TCP stream, so tests see exactly the
//! bytes credvend sends (status line, header casing, body) without a client library
//! normalising anything.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response plus the raw bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub raw: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Sends `METHOD path` with `headers` (a `Host` is added unless given) and
/// `Connection: close`, and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    send_raw(addr, &head).await
}

/// Sends `head` exactly as given (request line and headers, ending in a blank line:
/// nothing is added, not even a `Host`) and reads the whole response. The request should
/// carry `Connection: close`, or be HTTP/1.0, so that the server ends the connection.
pub async fn send_raw(addr: SocketAddr, head: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to credvend");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response within 30 s")
        .expect("read response");
    parse(raw)
}

/// [`send_raw`] for a head that is not UTF-8 (e.g. a header value with bytes >= 0x80).
pub async fn send_raw_bytes(addr: SocketAddr, head: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to credvend");
    stream.write_all(head).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response within 30 s")
        .expect("read response");
    parse(raw)
}

/// `GET path` with `Authorization: token`.
pub async fn get_with_token(addr: SocketAddr, path: &str, token: &str) -> RawResponse {
    request(addr, "GET", path, &[("Authorization", token)]).await
}

/// Starts `n` concurrent `GET path` with `Authorization: token`, each on its own
/// connection and task. The caller awaits the handles; answers come in any order.
pub fn spawn_gets(
    addr: SocketAddr,
    path: &str,
    token: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<RawResponse>> {
    (0..n)
        .map(|_| {
            let (path, token) = (path.to_owned(), token.to_owned());
            tokio::spawn(async move { get_with_token(addr, &path, &token).await })
        })
        .collect()
}

pub fn parse(raw: Vec<u8>) -> RawResponse {
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header terminator in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawResponse {
        status,
        headers,
        body: body.to_string(),
        raw,
    }
}

/// The checks every JSON error answer passes: `status`, `application/json`, `code` and
/// `Code` both `code`, `message` equal to `Message`. Returns the parsed body for the
/// caller's further checks.
#[track_caller]
pub fn assert_json_error_shape(r: &RawResponse, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["code"], code, "{}", r.body);
    assert_eq!(body["Code"], code);
    assert_eq!(body["message"], body["Message"]);
    body
}
