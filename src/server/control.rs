//! The control socket (docs/design.md, Job tokens): HTTP/1.1 over a Unix socket,
//! `[control] socket`, on which job tokens are minted, listed and revoked.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/tokens` | 201 a new token (`{"mapping", "ttl_seconds"?, "session_name"?, "lease"?}`) |
//! | `GET /v1/tokens` | 200 the live tokens, without token values or hashes |
//! | `DELETE /v1/tokens/{id}` | 204, or 404 `TokenNotFound` |
//!
//! Access to the socket is the authority to mint: it is created mode 0660 (owner and
//! `[control] socket_group`), in a directory only credvend can write. The peer
//! credentials of each connection (`SO_PEERCRED`: uid, pid) are recorded on the tokens
//! it mints.
//!
//! Connections are served like the TCP listeners' ([`super::connection_builder`],
//! [`WriteDeadline`], a graceful drain at shutdown) with two differences:
//! - hyper's `header_read_timeout` is off, because it also closes an idle keep-alive
//!   connection, and a connection that holds a lease (`"lease": "connection"`) must
//!   stay open, idle, for as long as its job runs. [`IdleDeadline`] bounds the wait for
//!   a request instead (the same `server.header_read_timeout`, counted from the
//!   connection's start or its last response) on every connection that holds no lease;
//! - connection slots: `[control] max_tokens` (each lease holds one) plus
//!   [`EXTRA_CONNECTIONS`], separate from the credential listeners'.
//!
//! Errors have the credential endpoint's body shape ([`ApiError`]).

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::jobs::{ConnId, JobToken, JobTokens, MintError, MintRequest, Peer};
use super::wire::{self, Body};
use super::{ConnectionSlots, Limits, WriteDeadline};
use crate::aws_names::SessionName;
use crate::config::ControlConfig;
use crate::protocol::{ApiError, MAX_CONTROL_BODY_BYTES, MAX_URI_BYTES, format_expiration};

/// Connection slots beyond `[control] max_tokens`: room for requests that hold no lease
/// when every token is leased.
pub const EXTRA_CONNECTIONS: usize = 64;

/// The config key of the socket, for messages.
const KEY: &str = "control.socket";

/// The control socket could not be set up. Names the config key, like
/// `daemon::BindError`.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {path} ({KEY}): {reason}")]
pub struct ControlBindError {
    pub path: PathBuf,
    pub reason: String,
}

/// The bound control socket.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we created: removed at shutdown only if the
    /// path still names it.
    identity: (u64, u64),
}

impl ControlSocket {
    /// Binds `[control] socket`, if configured: a stale socket at the path is replaced
    /// (one that a live process still answers on is an error), the new socket gets mode
    /// 0660 and `socket_group` before it appears under its name (it is bound under a
    /// sibling name, set up, then renamed into place).
    pub fn bind(control: &ControlConfig) -> Result<Option<ControlSocket>, ControlBindError> {
        let Some(path) = &control.socket else {
            return Ok(None);
        };
        let fail = |reason: String| ControlBindError {
            path: path.clone(),
            reason,
        };
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(fail(
                        "another process is serving on this socket (is credvend already running?)"
                            .into(),
                    ));
                }
                // Stale: replaced by the rename below.
            }
            Ok(_) => {
                return Err(fail(
                    "the path exists and is not a socket; remove it or choose another path".into(),
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(fail(error.to_string())),
        }
        let mut staging = path.clone().into_os_string();
        staging.push(".new");
        let staging = PathBuf::from(staging);
        match std::fs::remove_file(&staging) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(fail(format!("{}: {error}", staging.display()))),
        }
        let listener = UnixListener::bind(&staging).map_err(|e| fail(e.to_string()))?;
        let set_up = || -> io::Result<()> {
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o660))?;
            if let Some(group) = &control.socket_group {
                rustix::fs::chown(&staging, None, Some(rustix::fs::Gid::from_raw(group.gid)))?;
            }
            std::fs::rename(&staging, path)
        };
        if let Err(error) = set_up() {
            let _ = std::fs::remove_file(&staging);
            return Err(fail(error.to_string()));
        }
        let metadata = std::fs::symlink_metadata(path).map_err(|e| fail(e.to_string()))?;
        Ok(Some(ControlSocket {
            listener,
            path: path.clone(),
            identity: (metadata.dev(), metadata.ino()),
        }))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if the path still names the one we created.
    fn remove(&self) {
        if let Ok(metadata) = std::fs::symlink_metadata(&self.path)
            && (metadata.dev(), metadata.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What one control connection's requests share.
#[derive(Debug, Clone)]
pub struct ControlConn {
    pub id: ConnId,
    pub peer: Peer,
    /// Set once the connection holds a lease: its idle deadline stops.
    leased: Arc<AtomicBool>,
}

/// The control endpoint's state.
#[derive(Clone)]
pub struct ControlEndpoint {
    pub jobs: JobTokens,
    /// `http://ADDR` of the first credential listener (IPv6 bracketed): the 201 answer's
    /// `credentials_uri` is this plus `/v1/credentials/{mapping}`.
    pub credentials_base: String,
}

/// The JSON keys of `POST /v1/tokens`.
const MINT_FIELDS: [&str; 4] = ["mapping", "ttl_seconds", "session_name", "lease"];

impl ControlEndpoint {
    pub async fn handle(&self, request: Request<Incoming>, conn: ControlConn) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        match self.route(request, &conn).await {
            Ok(response) => response,
            Err(error) => {
                debug!(
                    %method,
                    path = %path.chars().take(128).collect::<String>(),
                    status = error.status().as_u16(),
                    code = error.code(),
                    "Control request refused"
                );
                error.into_response()
            }
        }
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        conn: &ControlConn,
    ) -> Result<Response<Body>, ApiError> {
        let uri_len = request
            .uri()
            .path_and_query()
            .map_or(0, |pq| pq.as_str().len());
        if uri_len > MAX_URI_BYTES {
            return Err(ApiError::UriTooLong);
        }
        let path = request.uri().path();
        let path = path.strip_suffix('/').unwrap_or(path);
        if path == "/v1/tokens" {
            return match *request.method() {
                Method::POST => self.mint(request, conn).await,
                Method::GET => {
                    no_body(&request)?;
                    Ok(self.list())
                }
                _ => Err(ApiError::MethodNotAllowedOn { allow: "GET, POST" }),
            };
        }
        if let Some(id) = path.strip_prefix("/v1/tokens/")
            && !id.is_empty()
            && !id.contains('/')
        {
            if request.method() != Method::DELETE {
                return Err(ApiError::MethodNotAllowedOn { allow: "DELETE" });
            }
            no_body(&request)?;
            return if self.jobs.revoke(id) {
                let mut response = wire::json_response(StatusCode::NO_CONTENT, Bytes::new());
                response.headers_mut().remove(header::CONTENT_TYPE);
                Ok(response)
            } else {
                Err(ApiError::TokenNotFound {
                    id: id.chars().take(64).collect(),
                })
            };
        }
        Err(ApiError::ControlNotFound)
    }

    async fn mint(
        &self,
        request: Request<Incoming>,
        conn: &ControlConn,
    ) -> Result<Response<Body>, ApiError> {
        // A declared length over the bound is refused before anything is read.
        if request
            .body()
            .size_hint()
            .exact()
            .is_some_and(|len| len > MAX_CONTROL_BODY_BYTES as u64)
        {
            return Err(ApiError::PayloadTooLarge);
        }
        let body = Limited::new(request.into_body(), MAX_CONTROL_BODY_BYTES)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    ApiError::PayloadTooLarge
                } else {
                    invalid("body", &format!("cannot be read ({error})"))
                }
            })?
            .to_bytes();
        let request = self.parse_mint(&body, conn)?;
        let lease = request.lease.is_some();
        let minted = self
            .jobs
            .mint(request, conn.peer)
            .map_err(|error| match error {
                MintError::TtlOutOfRange { max } => ttl_error(max),
                MintError::UnknownMapping => ApiError::MappingNotFound {
                    mapping: mapping_of(&body),
                },
                MintError::TooMany { max } => ApiError::TooManyTokens { max },
            })?;
        if lease {
            conn.leased.store(true, Ordering::Release);
        }
        let info = &minted.info;
        let mut answer = token_json(info);
        answer.remove("created_at");
        answer.remove("minted_by");
        answer.insert("token".into(), Value::String(minted.token.to_string()));
        answer.insert(
            "credentials_uri".into(),
            Value::String(format!(
                "{}/v1/credentials/{}",
                self.credentials_base, info.mapping
            )),
        );
        let bytes = Zeroizing::new(serde_json::to_vec(&answer).unwrap_or_default());
        // The answer holds the token: its buffer is zeroized when hyper has sent it.
        if let Some(Value::String(token)) = answer.get_mut("token") {
            zeroize::Zeroize::zeroize(token);
        }
        Ok(wire::json_response(
            StatusCode::CREATED,
            Bytes::from_owner(ZeroizingBytes(bytes)),
        ))
    }

    fn parse_mint(&self, body: &[u8], conn: &ControlConn) -> Result<MintRequest, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| invalid("body", &format!("not valid JSON ({e})")))?;
        let Value::Object(fields) = value else {
            return Err(invalid("body", "must be a JSON object"));
        };
        if let Some(unknown) = fields.keys().find(|k| !MINT_FIELDS.contains(&k.as_str())) {
            return Err(invalid(
                &unknown.chars().take(64).collect::<String>(),
                &format!("unknown field; expected one of: {}", MINT_FIELDS.join(", ")),
            ));
        }
        let mapping = match fields.get("mapping") {
            Some(Value::String(mapping)) => mapping.clone(),
            None | Some(Value::Null) => return Err(invalid("mapping", "required")),
            Some(_) => return Err(invalid("mapping", "must be a string")),
        };
        let max_ttl = self.jobs.max_ttl();
        let ttl = match fields.get("ttl_seconds") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_u64() {
                Some(secs) if secs >= 1 && Duration::from_secs(secs) <= max_ttl => {
                    Some(Duration::from_secs(secs))
                }
                _ => return Err(ttl_error(max_ttl)),
            },
        };
        let session_name = match fields.get("session_name") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => {
                Some(SessionName::try_from(name.clone()).map_err(|e| invalid("session_name", &e))?)
            }
            Some(_) => return Err(invalid("session_name", "must be a string")),
        };
        let lease = match fields.get("lease") {
            None | Some(Value::Null) => None,
            Some(Value::String(lease)) if lease == "connection" => Some(conn.id),
            Some(_) => return Err(invalid("lease", "must be \"connection\"")),
        };
        Ok(MintRequest {
            mapping,
            ttl,
            session_name,
            lease,
        })
    }

    fn list(&self) -> Response<Body> {
        let tokens: Vec<Value> = self
            .jobs
            .list()
            .iter()
            .map(|token| Value::Object(token_json(token)))
            .collect();
        let body = serde_json::to_vec(&json!({ "tokens": tokens })).unwrap_or_default();
        wire::json_response(StatusCode::OK, Bytes::from(body))
    }
}

/// A token's listing: never its value or hash.
fn token_json(token: &JobToken) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("id".into(), Value::String(token.id.clone()));
    out.insert("mapping".into(), Value::String(token.mapping.clone()));
    out.insert(
        "expires_at".into(),
        token
            .expires_at
            .map_or(Value::Null, |at| Value::String(format_expiration(at))),
    );
    out.insert(
        "session_name".into(),
        token
            .session_name
            .as_ref()
            .map_or(Value::Null, |name| Value::String(name.to_string())),
    );
    out.insert(
        "lease".into(),
        if token.lease.is_some() {
            Value::String("connection".into())
        } else {
            Value::Null
        },
    );
    out.insert(
        "created_at".into(),
        Value::String(format_expiration(token.created_at)),
    );
    out.insert(
        "minted_by".into(),
        json!({ "uid": token.minted_by.uid, "pid": token.minted_by.pid }),
    );
    out
}

/// The mapping a body named (for the 404 message; the body parsed already).
fn mapping_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("mapping")?
                .as_str()
                .map(|s| s.chars().take(64).collect())
        })
        .unwrap_or_default()
}

fn invalid(field: &str, reason: &str) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("{field}: {reason}"),
    }
}

fn ttl_error(max: Duration) -> ApiError {
    invalid(
        "ttl_seconds",
        &format!(
            "must be a whole number of seconds from 1 to {} ([control] max_ttl)",
            max.as_secs()
        ),
    )
}

/// GET and DELETE carry no body.
fn no_body(request: &Request<Incoming>) -> Result<(), ApiError> {
    if !request.body().is_end_stream() || request.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return Err(ApiError::BodyNotAllowed);
    }
    Ok(())
}

/// A response body that is zeroized when hyper drops it.
struct ZeroizingBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Serves the control socket until `shutdown` completes, then drains its requests for
/// at most `limits.shutdown_grace` (an idle lease connection is closed at once) and
/// removes the socket file. Every connection's leases are revoked when it ends.
pub async fn serve(
    socket: ControlSocket,
    endpoint: ControlEndpoint,
    limits: Limits,
    max_tokens: usize,
    shutdown: impl Future<Output = ()>,
) {
    static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
    let slots = ConnectionSlots::new(max_tokens.saturating_add(EXTRA_CONNECTIONS));
    let permits = slots.0;
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut builder = super::connection_builder(&limits);
    // Idle keep-alive connections must survive (leases); IdleDeadline bounds the rest.
    builder.header_read_timeout(None);
    tokio::pin!(shutdown);
    info!(path = %socket.path.display(), "Serving the control socket");

    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "Accept failed on the control socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: cred.uid(),
                pid: cred.pid(),
            },
            Err(error) => {
                warn!(%error, "Cannot read the peer credentials of a control connection; closing it");
                continue;
            }
        };
        let conn = ControlConn {
            id: ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed)),
            peer,
            leased: Arc::new(AtomicBool::new(false)),
        };
        let lease_guard = LeaseGuard {
            jobs: endpoint.jobs.clone(),
            conn: conn.id,
            leased: conn.leased.clone(),
        };
        let endpoint = endpoint.clone();
        let service_conn = conn.clone();
        let service = service_fn(move |request| {
            let endpoint = endpoint.clone();
            let conn = service_conn.clone();
            async move { Ok::<_, std::convert::Infallible>(endpoint.handle(request, conn).await) }
        });
        let io = IdleDeadline::new(
            WriteDeadline::new(stream, limits.write_timeout),
            limits.header_read_timeout,
            conn.leased.clone(),
        );
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        connections.spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, uid = peer.uid, "Control connection ended with an error");
            }
            // Also on abort (shutdown grace over): the guard revokes in its `Drop`.
            drop(lease_guard);
            drop(permit);
        });
    }

    let in_flight = graceful.count();
    match tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => info!(connections = in_flight, "Control socket drained"),
        Err(_) => warn!(
            grace_ms = limits.shutdown_grace.as_millis() as u64,
            "Shutdown grace elapsed; dropping remaining control connections"
        ),
    }
    connections.shutdown().await;
    socket.remove();
}

/// Revokes the tokens leased by a connection when the connection ends (or its task is
/// aborted). A connection that never leased one costs no look through the store.
struct LeaseGuard {
    jobs: JobTokens,
    conn: ConnId,
    leased: Arc<AtomicBool>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.leased.load(Ordering::Acquire) {
            self.jobs.end_connection(self.conn);
        }
    }
}

/// A connection's socket with a deadline for the next request: unless the connection
/// holds a lease, a read that is still waiting `timeout` after the connection opened or
/// after its last response was written fails with [`io::ErrorKind::TimedOut`], and
/// hyper closes the connection. It replaces hyper's `header_read_timeout` on the
/// control socket, which cannot be switched off for one connection once it holds a
/// lease.
#[derive(Debug)]
pub struct IdleDeadline<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    leased: Arc<AtomicBool>,
}

impl<S> IdleDeadline<S> {
    pub fn new(inner: S, timeout: Duration, leased: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            leased,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => {
                if self.leased.load(Ordering::Acquire) {
                    return Poll::Pending;
                }
                if self.deadline.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within server.header_read_timeout on a control connection without a lease",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            // A response is going out: the wait for the next request starts over.
            let at = Instant::now() + self.timeout;
            self.deadline.as_mut().reset(at);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
