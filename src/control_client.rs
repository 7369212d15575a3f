//! The client of the control socket: what `credvend exec` and `credvend token
//! issue|list|revoke` say to a running daemon (docs/jobs.md).
//!
//! HTTP/1.1 over the Unix socket, one connection per command, JSON in and out. A
//! refusal comes back in the credential endpoint's error shape (`{"Code", "Message"}`);
//! [`ClientError`] carries the daemon's message, never a token, and maps each failure
//! to an exit status ([`ClientError::exit_code`]).
//!
//! A [`Connection`] stays open as long as its owner holds it: `credvend exec` mints with
//! [`Lease::Connection`] and keeps the connection for the child's lifetime, so the
//! daemon revokes the token when the connection closes, however `exec` ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aws_names::SessionName;
use crate::secret::SecretValue;

/// The socket when neither `--socket` nor a configuration names one: where the systemd
/// unit and the image put it (`RuntimeDirectory=credvend`).
pub const DEFAULT_SOCKET: &str = "/run/credvend/control.sock";

/// The collection of job tokens on the control socket.
pub const TOKENS_PATH: &str = "/v1/tokens";

/// How long one exchange may take before the daemon counts as unavailable.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read (a listing of the daemon's 10,000 tokens is ~3 MB).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Exit status: the daemon refused the request (unknown mapping, bad TTL or name, unknown
/// id): EX_DATAERR.
pub const EXIT_REFUSED: u8 = 65;
/// Exit status: the control socket is missing or nothing answers on it: EX_UNAVAILABLE.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit status: the daemon holds `max_tokens` live tokens (429); retry later: EX_TEMPFAIL.
pub const EXIT_TEMPFAIL: u8 = 75;
/// Exit status: the daemon answered something this client does not understand:
/// EX_PROTOCOL.
pub const EXIT_PROTOCOL: u8 = 76;
/// Exit status: no permission to connect to the socket (access to it is the authority to
/// mint): EX_NOPERM.
pub const EXIT_NOPERM: u8 = 77;

/// `"lease"` of a mint request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lease {
    /// The token is revoked when the connection that minted it closes.
    Connection,
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MintRequest {
    pub mapping: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "session_name_text"
    )]
    pub session_name: Option<SessionName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

fn session_name_text<S: serde::Serializer>(
    name: &Option<SessionName>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    name.as_deref().serialize(serializer)
}

/// A `201` answer to a mint: the token and what a worker needs to use it.
pub struct Minted {
    /// `jt_…`: names the token in `GET /v1/tokens`, `DELETE` and audit lines.
    pub id: String,
    /// `cvj_…`: the worker's `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    pub token: SecretValue,
    /// The worker's `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub credentials_uri: String,
    /// The answer as the daemon sent it (JSON, with the token): what `token issue`
    /// prints.
    pub body: Bytes,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("id", &self.id)
            .field("token", &self.token)
            .field("credentials_uri", &self.credentials_uri)
            .finish_non_exhaustive()
    }
}

/// The fields of a 201 the client uses; the daemon may send more.
#[derive(Deserialize)]
struct MintedWire {
    id: String,
    token: String,
    credentials_uri: String,
}

/// One live token of `GET /v1/tokens` (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub mapping: String,
    pub expires_at: Option<String>,
    #[serde(default)]
    pub session_name: Option<String>,
    #[serde(default)]
    pub lease: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub minted_by: Option<MintedBy>,
}

/// The process that minted a token (the socket's peer credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct MintedBy {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// `GET /v1/tokens`: the parsed list and the answer as sent.
#[derive(Debug)]
pub struct Listing {
    pub tokens: Vec<TokenInfo>,
    pub body: Bytes,
}

#[derive(Deserialize)]
struct ListingWire {
    tokens: Vec<TokenInfo>,
}

/// The credential endpoint's error body.
#[derive(Deserialize)]
struct ErrorWire {
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Message")]
    message: String,
}

/// Why a control request failed. The text is one line for stderr; it never holds a
/// token (a refusal shows the daemon's message, an unexpected answer only its status).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed: no socket there, nothing listening, or no permission.
    #[error("cannot connect to the control socket {}: {}{}", path.display(), source, connect_hint(source))]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The connection broke, or no answer came within the exchange timeout.
    #[error("the control socket {} stopped answering: {what}", path.display())]
    Lost { path: PathBuf, what: String },
    /// The daemon refused the request with a 4xx in the error shape.
    #[error("credvend refused: {message} ({status} {code})")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// Any other answer: a 5xx, an unexpected status, a body that is not the promised
    /// JSON.
    #[error("unexpected answer from the control socket {}: {what}", path.display())]
    Protocol { path: PathBuf, what: String },
}

fn connect_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::NotFound => {
            " (is credvend running with [control] socket set? pass --socket or --config)"
        }
        std::io::ErrorKind::ConnectionRefused => {
            " (the socket file is stale: credvend is not running)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (access to the socket is the authority to mint: join its socket_group)"
        }
        _ => "",
    }
}

impl ClientError {
    /// The exit status a command ends with on this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                EXIT_NOPERM
            }
            ClientError::Connect { .. } | ClientError::Lost { .. } => EXIT_UNAVAILABLE,
            ClientError::Refused { status: 429, .. } => EXIT_TEMPFAIL,
            ClientError::Refused { .. } => EXIT_REFUSED,
            ClientError::Protocol { .. } => EXIT_PROTOCOL,
        }
    }
}

/// An open connection to the control socket.
pub struct Connection {
    path: PathBuf,
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
    /// Turns `true` when the driver ends (the connection closed).
    closed: watch::Receiver<bool>,
}

impl Connection {
    /// Connects to the socket at `path`.
    pub async fn open(path: &Path) -> Result<Connection, ClientError> {
        let connect = |source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = tokio::time::timeout(EXCHANGE_TIMEOUT, UnixStream::connect(path))
            .await
            .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect(std::io::Error::other(e)))?;
        // Drives the connection until either side closes it; its end is how a lease
        // holder learns the daemon went away ([`Connection::closed`]).
        let (closed_tx, closed) = watch::channel(false);
        let driver = tokio::spawn(async move {
            let _ = connection.await;
            let _ = closed_tx.send(true);
        });
        Ok(Connection {
            path: path.to_path_buf(),
            sender,
            driver,
            closed,
        })
    }

    /// Opens a connection to `path`, runs `exchange` on it and closes it: one command's
    /// requests (`token issue`, `list`, `revoke`).
    pub async fn one_shot<T>(
        path: &Path,
        exchange: impl AsyncFnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut connection = Connection::open(path).await?;
        let outcome = exchange(&mut connection).await;
        connection.close().await;
        outcome
    }

    /// `POST /v1/tokens`.
    pub async fn mint(&mut self, request: &MintRequest) -> Result<Minted, ClientError> {
        let body = serde_json::to_vec(request).expect("a mint request serializes");
        let answer = self
            .exchange(Method::POST, TOKENS_PATH, Some(body), StatusCode::CREATED)
            .await?;
        let wire: MintedWire = serde_json::from_slice(&answer)
            .map_err(|e| self.protocol(format!("201 without the token fields ({e})")))?;
        Ok(Minted {
            id: wire.id,
            token: SecretValue::new(wire.token),
            credentials_uri: wire.credentials_uri,
            body: answer,
        })
    }

    /// `GET /v1/tokens`.
    pub async fn list(&mut self) -> Result<Listing, ClientError> {
        let answer = self
            .exchange(Method::GET, TOKENS_PATH, None, StatusCode::OK)
            .await?;
        let wire: ListingWire = serde_json::from_slice(&answer)
            .map_err(|e| self.protocol(format!("200 without a token list ({e})")))?;
        Ok(Listing {
            tokens: wire.tokens,
            body: answer,
        })
    }

    /// `DELETE /v1/tokens/{id}`.
    pub async fn revoke(&mut self, id: &str) -> Result<(), ClientError> {
        if !is_token_id(id) {
            // Never put arbitrary text in the request line.
            return Err(ClientError::Refused {
                status: 404,
                code: "TokenNotFound".into(),
                message: format!("{id:?} is not a token id (jt_ and 16 hex digits)"),
            });
        }
        let path = format!("{TOKENS_PATH}/{id}");
        self.exchange(Method::DELETE, &path, None, StatusCode::NO_CONTENT)
            .await
            .map(drop)
    }

    /// Completes when the connection has closed (the daemon stopped or dropped it).
    pub async fn closed(&mut self) {
        let _ = self.closed.wait_for(|closed| *closed).await;
    }

    /// Closes the connection and waits (briefly) until the socket is shut.
    pub async fn close(self) {
        let Connection { sender, driver, .. } = self;
        drop(sender);
        let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    }

    fn protocol(&self, what: String) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            what,
        }
    }

    fn lost(&self, what: String) -> ClientError {
        ClientError::Lost {
            path: self.path.clone(),
            what,
        }
    }

    /// One request and its answer's body; any status but `expected` is an error.
    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        expected: StatusCode,
    ) -> Result<Bytes, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("a well-formed request");
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| self.lost(e.to_string()))?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| self.lost(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| self.lost(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        let (status, body) = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| self.lost(format!("no answer within {EXCHANGE_TIMEOUT:?}")))??;
        if status == expected {
            return Ok(body);
        }
        Err(self.refusal(status, &body))
    }

    /// The error for an answer with an unexpected status. Only a 4xx in the error shape
    /// shows the daemon's message; nothing else of a body is repeated (a body this
    /// client does not understand could hold anything).
    fn refusal(&self, status: StatusCode, body: &[u8]) -> ClientError {
        if status.is_client_error()
            && let Ok(error) = serde_json::from_slice::<ErrorWire>(body)
        {
            return ClientError::Refused {
                status: status.as_u16(),
                code: error.code,
                message: error.message,
            };
        }
        self.protocol(format!("HTTP {status}"))
    }
}

/// `jt_` and 16 lower-case hex digits.
pub fn is_token_id(id: &str) -> bool {
    id.strip_prefix("jt_").is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Parses a `--ttl`: a duration (`90m`, `2h`, `3600s`) of whole seconds, at least one.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as 90m or 2h: {e}"))?;
    if duration.subsec_nanos() != 0 {
        return Err(format!("{text:?} is not a whole number of seconds"));
    }
    match duration.as_secs() {
        0 => Err("a TTL of zero would end the token before it is used".to_owned()),
        seconds => Ok(seconds),
    }
}

/// `token list` for a terminal: one line per token, aligned columns.
pub fn render_table(tokens: &[TokenInfo]) -> String {
    let header = [
        "ID", "MAPPING", "EXPIRES", "SESSION", "LEASE", "CREATED", "UID", "PID",
    ];
    let dash = || "-".to_owned();
    let rows: Vec<[String; 8]> = tokens
        .iter()
        .map(|t| {
            [
                t.id.clone(),
                t.mapping.clone(),
                t.expires_at.clone().unwrap_or_else(|| "never".to_owned()),
                t.session_name.clone().unwrap_or_else(dash),
                t.lease.clone().unwrap_or_else(dash),
                t.created_at.clone().unwrap_or_else(dash),
                t.minted_by.map_or_else(dash, |m| m.uid.to_string()),
                t.minted_by
                    .and_then(|m| m.pid)
                    .map_or_else(dash, |p| p.to_string()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use hyper::Response;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::net::UnixListener;

    /// A stand-in for the daemon's control socket in a temporary directory: answers
    /// every request with `status` and `body`, and records what it was asked.
    struct Stub {
        dir: PathBuf,
        socket: PathBuf,
        seen: Arc<Mutex<Vec<(String, String, String)>>>,
    }

    impl Stub {
        fn start(status: u16, answer: &'static str) -> Stub {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "credvend-control-client-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).expect("temp dir");
            let socket = dir.join("control.sock");
            let listener = UnixListener::bind(&socket).expect("bind the stub socket");
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let record = record.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            let record = record.clone();
                            async move {
                                let method = request.method().to_string();
                                let path = request.uri().path().to_owned();
                                let body = request.into_body().collect().await.unwrap();
                                let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                                record.lock().unwrap().push((method, path, body));
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from_static(answer.as_bytes())))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Stub { dir, socket, seen }
        }

        fn seen(&self) -> Vec<(String, String, String)> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Drop for Stub {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const MINTED: &str = r#"{"id":"jt_0123456789abcdef","token":"cvj_CANARY","mapping":"acme-s3","expires_at":null,"session_name":null,"lease":"connection","credentials_uri":"http://127.0.0.1:8901/v1/credentials/acme-s3"}"#;

    fn lease_request() -> MintRequest {
        MintRequest {
            mapping: "acme-s3".into(),
            ttl_seconds: None,
            session_name: None,
            lease: Some(Lease::Connection),
        }
    }

    #[tokio::test]
    async fn mint_posts_the_request_and_reads_token_and_uri() {
        let stub = Stub::start(201, MINTED);
        let mut connection = Connection::open(&stub.socket).await.expect("connect");
        let request = MintRequest {
            ttl_seconds: Some(90),
            session_name: Some(SessionName::try_from("sync-job-1".to_owned()).unwrap()),
            ..lease_request()
        };
        let minted = connection.mint(&request).await.expect("minted");
        assert_eq!(minted.id, "jt_0123456789abcdef");
        assert_eq!(minted.token.expose(), "cvj_CANARY");
        assert_eq!(
            minted.credentials_uri,
            "http://127.0.0.1:8901/v1/credentials/acme-s3"
        );
        assert!(
            !format!("{minted:?}").contains("CANARY"),
            "the token leaked through Debug: {minted:?}"
        );
        let seen = stub.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let (method, path, body) = &seen[0];
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/v1/tokens"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"mapping": "acme-s3", "ttl_seconds": 90,
                "session_name": "sync-job-1", "lease": "connection"})
        );
    }

    #[test]
    fn a_request_without_options_sends_only_the_mapping() {
        let request = MintRequest {
            lease: None,
            ..lease_request()
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"mapping":"acme-s3"}"#
        );
    }

    #[tokio::test]
    async fn a_refusal_carries_the_daemons_message_and_exits_65() {
        let stub = Stub::start(
            404,
            r#"{"Code":"MappingNotFound","Message":"no mapping named nope"}"#,
        );
        let mut connection = Connection::open(&stub.socket).await.unwrap();
        let error = connection.mint(&lease_request()).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "credvend refused: no mapping named nope (404 MappingNotFound)"
        );
        assert_eq!(error.exit_code(), EXIT_REFUSED);
    }

    #[tokio::test]
    async fn too_many_tokens_is_a_temporary_failure() {
        let stub = Stub::start(
            429,
            r#"{"Code":"TooManyTokens","Message":"10000 live job tokens"}"#,
        );
        let mut connection = Connection::open(&stub.socket).await.unwrap();
        let error = connection.mint(&lease_request()).await.unwrap_err();
        assert_eq!(error.exit_code(), EXIT_TEMPFAIL, "{error}");
    }

    #[tokio::test]
    async fn a_server_error_repeats_no_body() {
        let stub = Stub::start(500, "internal CANARY detail");
        let mut connection = Connection::open(&stub.socket).await.unwrap();
        let error = connection.list().await.unwrap_err();
        let text = error.to_string();
        assert!(!text.contains("CANARY"), "{text}");
        assert!(text.contains("500"), "{text}");
        assert_eq!(error.exit_code(), EXIT_PROTOCOL);
    }

    #[tokio::test]
    async fn a_201_without_the_token_fields_is_a_protocol_error() {
        let stub = Stub::start(201, r#"{"id":"jt_0123456789abcdef"}"#);
        let mut connection = Connection::open(&stub.socket).await.unwrap();
        let error = connection.mint(&lease_request()).await.unwrap_err();
        assert_eq!(error.exit_code(), EXIT_PROTOCOL, "{error}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_unavailable_and_says_where() {
        let path = std::env::temp_dir().join("credvend-no-such-dir-4f1d/control.sock");
        let error = Connection::open(&path)
            .await
            .err()
            .expect("no socket there");
        let text = error.to_string();
        assert!(
            text.contains("credvend-no-such-dir-4f1d/control.sock"),
            "{text}"
        );
        assert!(text.contains("--socket"), "{text}");
        assert_eq!(error.exit_code(), EXIT_UNAVAILABLE);
    }

    #[tokio::test]
    async fn list_and_revoke_use_get_and_delete() {
        let stub = Stub::start(
            200,
            r#"{"tokens":[{"id":"jt_0123456789abcdef","mapping":"acme-s3","expires_at":null,"session_name":"j1","lease":"connection","created_at":"2026-11-30T21:00:00Z","minted_by":{"uid":1000,"pid":42}}]}"#,
        );
        let mut connection = Connection::open(&stub.socket).await.unwrap();
        let listing = connection.list().await.unwrap();
        assert_eq!(listing.tokens.len(), 1);
        assert_eq!(
            listing.tokens[0].minted_by,
            Some(MintedBy {
                uid: 1000,
                pid: Some(42)
            })
        );
        // The stub answers 200 where DELETE expects 204: an unexpected answer.
        let error = connection.revoke("jt_0123456789abcdef").await.unwrap_err();
        assert_eq!(error.exit_code(), EXIT_PROTOCOL);
        let seen: Vec<(String, String)> = stub
            .seen()
            .into_iter()
            .map(|(method, path, _)| (method, path))
            .collect();
        assert_eq!(
            seen,
            [
                ("GET".to_owned(), "/v1/tokens".to_owned()),
                (
                    "DELETE".to_owned(),
                    "/v1/tokens/jt_0123456789abcdef".to_owned()
                ),
            ]
        );
    }

    #[tokio::test]
    async fn revoke_refuses_what_is_not_a_token_id_without_asking() {
        let stub = Stub::start(204, "");
        let mut connection = Connection::open(&stub.socket).await.unwrap();
        for id in [
            "jt_0123",
            "../admin",
            "jt_0123456789ABCDEF",
            "cvj_0123456789abcdef",
        ] {
            let error = connection.revoke(id).await.unwrap_err();
            assert_eq!(error.exit_code(), EXIT_REFUSED, "{id}: {error}");
        }
        assert!(stub.seen().is_empty(), "{:?}", stub.seen());
    }

    #[test]
    fn ttl_is_whole_positive_seconds() {
        assert_eq!(parse_ttl("90m"), Ok(5400));
        assert_eq!(parse_ttl("3600s"), Ok(3600));
        assert_eq!(parse_ttl("1h 30m"), Ok(5400));
        for bad in ["0s", "1500ms", "soon", "-5m", ""] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_table_aligns_and_fills_blanks() {
        let tokens = vec![
            TokenInfo {
                id: "jt_0123456789abcdef".into(),
                mapping: "acme-s3".into(),
                expires_at: None,
                session_name: None,
                lease: Some("connection".into()),
                created_at: Some("2026-11-30T21:00:00Z".into()),
                minted_by: Some(MintedBy {
                    uid: 0,
                    pid: Some(7),
                }),
            },
            TokenInfo {
                id: "jt_fedcba9876543210".into(),
                mapping: "globex-archive".into(),
                expires_at: Some("2026-11-30T22:00:00Z".into()),
                session_name: Some("sync-job-8812".into()),
                lease: None,
                created_at: None,
                minted_by: None,
            },
        ];
        let table = render_table(&tokens);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0].starts_with("ID                   MAPPING         EXPIRES"),
            "{table}"
        );
        assert!(lines[1].contains("never"), "{table}");
        assert!(lines[1].ends_with(" 0    7"), "{table}");
        assert!(lines[2].contains("sync-job-8812"), "{table}");
        let column = lines[0].find("SESSION").unwrap();
        assert_eq!(&lines[2][column..column + 13], "sync-job-8812", "{table}");
    }
}
