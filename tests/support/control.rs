//! The control socket from a test's side: a private directory for it, a daemon that
//! serves it, and a deliberately dumb HTTP/1.1 client over the Unix socket (one-shot
//! requests, and kept-open connections for leases).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credvend::clock::ManualClock;
use credvend::config::Config;
use credvend::daemon::Listeners;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::daemon::{TestDaemon, config, mapping, role_arn, token};
use super::fake_sts::{FakeSts, Role, TrustRule};
use super::http::{RawResponse, parse};

/// A directory for a control socket: mode 0700 whatever the umask (the daemon refuses a
/// directory others can write), removed on drop.
pub struct SocketDir(PathBuf);

impl SocketDir {
    pub fn new() -> SocketDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "credvend-ctl-{}-{}",
            std::process::id(),
            nanos % 1_000_000_000_000
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
        SocketDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `DIR/control.sock`.
    pub fn socket(&self) -> PathBuf {
        self.0.join("control.sock")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Starts `config` with its control socket at `socket`.
pub async fn start_with_control(
    mut config: Config,
    clock: ManualClock,
    socket: &Path,
) -> TestDaemon {
    config.control.socket = Some(socket.to_path_buf());
    let listeners = Listeners::bind_all(&config.server, &config.control)
        .await
        .expect("bind");
    TestDaemon::start_with_listeners(config, clock, listeners).await
}

/// Like `start_acme` (mapping `acme-s3` → role `vendor-sync` requiring `external_id`),
/// with a control socket in a fresh [`SocketDir`] and `tweak` applied to the config.
/// Returns the fake STS, the daemon, the mapping's configured token and the directory.
pub async fn start_acme_with_control(
    external_id: &str,
    tweak: impl FnOnce(&mut Config),
) -> (FakeSts, TestDaemon, String, SocketDir) {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(std::sync::Arc::new(clock.clone())).await;
    let acme_token = token("acme");
    let mut config = config(
        &sts.endpoint_url(),
        vec![mapping(
            "acme-s3",
            "vendor-sync",
            Some(external_id),
            &acme_token,
        )],
    );
    tweak(&mut config);
    sts.add_role(Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(external_id.into()),
    ));
    let dir = SocketDir::new();
    let daemon = start_with_control(config, clock, &dir.socket()).await;
    (sts, daemon, acme_token, dir)
}

/// The request bytes: `METHOD path`, `Host: localhost`, the body with its length.
fn request_bytes(method: &str, path: &str, body: Option<&str>, close: bool) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

/// One request on its own connection (`Connection: close`); the whole response.
pub async fn control_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> RawResponse {
    control_send_raw(socket, &request_bytes(method, path, body, true)).await
}

/// `bytes` exactly as given on a new connection; reads until the server closes.
pub async fn control_send_raw(socket: &Path, bytes: &[u8]) -> RawResponse {
    let mut stream = UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    stream.write_all(bytes).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response within 30 s")
        .expect("read response");
    parse(raw)
}

/// `POST /v1/tokens` with `body` on its own connection.
pub async fn mint(socket: &Path, body: &str) -> RawResponse {
    control_request(socket, "POST", "/v1/tokens", Some(body)).await
}

/// A control connection kept open between requests (a lease lives as long as it).
pub struct ControlConnection {
    stream: UnixStream,
}

impl ControlConnection {
    pub async fn open(socket: &Path) -> ControlConnection {
        let stream = UnixStream::connect(socket)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
        ControlConnection { stream }
    }

    /// Sends one keep-alive request and reads its response (headers, then
    /// `Content-Length` bytes).
    pub async fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> RawResponse {
        self.stream
            .write_all(&request_bytes(method, path, body, false))
            .await
            .expect("write request");
        tokio::time::timeout(Duration::from_secs(30), self.read_response())
            .await
            .expect("response within 30 s")
    }

    async fn read_response(&mut self) -> RawResponse {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length {
                    raw.truncate(end + 4 + length);
                    return parse(raw);
                }
            }
            let n = self.stream.read(&mut chunk).await.expect("read response");
            assert!(
                n > 0,
                "the server closed the connection mid-response: {raw:?}"
            );
            raw.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits (up to `within`) for the server to close the connection: `true` if it
    /// did.
    pub async fn closed_by_server(&mut self, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(within, self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
