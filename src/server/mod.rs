//! HTTP serving: the accept loop shared by the credential and admin listeners.
//!
//! [`serve`] takes a listener that is already bound and a shutdown future; it never
//! binds anything itself, which is what lets tests run it on `127.0.0.1:0`. Every
//! resource is bounded:
//! - connections: a semaphore permit is taken *before* `accept()`, so past
//!   `max_connections` new clients wait in the kernel backlog instead of costing memory.
//!   Listeners can share one set of permits ([`ConnectionSlots`], [`serve_sharing`]):
//!   the daemon's credential listeners do, the admin listener has its own;
//! - header read time: hyper's `header_read_timeout`, which only works when the builder
//!   has a timer, so one is always set; it also closes an idle keep-alive connection;
//! - write time: [`WriteDeadline`] closes a connection whose response has waited
//!   `write_timeout` for the client to take any of it (a client that pipelines requests
//!   and never reads), so such a client cannot keep its slot; hyper has no write timeout;
//! - header count and size: hyper answers 431 beyond them;
//! - URI length and request bodies: [`framing_error`], checked first by every handler
//!   (414 beyond [`MAX_URI_BYTES`]; 400 for any body, which is never read);
//! - shutdown: in-flight requests get `shutdown_grace` to finish, then the connection
//!   tasks still running are aborted, so a request stuck behind a hung STS cannot hold
//!   the process past the grace period.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as _, Incoming};
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

pub mod access;
pub mod admin;
pub mod control;
pub mod credentials;
pub mod jobs;
pub mod status;
pub mod wire;

use crate::protocol::ApiError;
use wire::Body;

use crate::protocol::MAX_URI_BYTES;

/// The framing checks every handler runs before anything else: a request target longer
/// than [`MAX_URI_BYTES`] (414), or a request carrying a body (400; credvend only
/// serves GET and HEAD, and the body is never read, so a client cannot make us buffer
/// anything). `None` when the request is acceptable so far.
pub fn framing_error(request: &Request<Incoming>) -> Option<ApiError> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Some(ApiError::UriTooLong);
    }
    // hyper knows the framing: `Content-Length: 0` (or none) is an empty body; any other
    // length, or `Transfer-Encoding`, is not.
    if !request.body().is_end_stream() || request.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return Some(ApiError::BodyNotAllowed);
    }
    None
}

/// Addresses of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client.
    pub peer: SocketAddr,
    /// The address the client connected to (for the `Host` check).
    pub local: SocketAddr,
}

/// Bounds of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// Maximum number of request headers (SDK requests carry fewer than 10).
    pub max_headers: usize,
    /// Maximum bytes of request line plus headers.
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    /// How long a response may wait for the client to take it ([`WriteDeadline`]).
    pub write_timeout: Duration,
}

impl Limits {
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        Self {
            max_connections: server.max_connections,
            header_read_timeout: server.header_read_timeout,
            max_headers: 32,
            max_header_bytes: 16 * 1024,
            shutdown_grace: server.shutdown_grace,
            write_timeout: server.write_timeout,
        }
    }
}

/// The HTTP/1 connection settings of every listener: the header timer, count and size
/// bounds of `limits`, and half-close. Public so that the fuzz harness
/// (`fuzz/checks/http_request.rs`) serves its connections exactly like the daemon.
pub fn connection_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        // A client may close its sending half once its request is out; hyper's default
        // then drops the request in flight and the client gets no answer at all.
        .half_close(true);
    builder
}

/// Connection slots: at most this many connections at once on the listeners that share
/// them (clones share the same slots).
#[derive(Debug, Clone)]
pub struct ConnectionSlots(Arc<Semaphore>);

impl ConnectionSlots {
    /// `max_connections` slots (at least one).
    pub fn new(max_connections: usize) -> Self {
        Self(Arc::new(Semaphore::new(max_connections.max(1))))
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then drains in-flight
/// requests for at most `limits.shutdown_grace`. The listener has `limits.max_connections`
/// connection slots of its own.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = ConnectionSlots::new(limits.max_connections);
    serve_sharing(listener, handler, limits, slots, shutdown).await;
}

/// [`serve`] with connection slots shared with other listeners: a connection on any of
/// them takes one of `slots` (`limits.max_connections` is not consulted).
pub async fn serve_sharing<H, F>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    slots: ConnectionSlots,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let permits = slots.0;
    let graceful = GracefulShutdown::new();
    // Every connection task, so that the ones still running when the grace period ends
    // can be aborted (dropping their sockets) rather than outliving `serve`.
    let mut connections = JoinSet::new();
    let builder = connection_builder(&limits);
    tokio::pin!(shutdown);

    loop {
        // Reap finished connection tasks, so the set holds no more than the connections
        // alive since the last accept.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // semaphore closed: never happens, we own it
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%error, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn_info = ConnInfo {
            peer,
            local: stream.local_addr().unwrap_or(peer),
        };
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let response = handler(request, conn_info);
            async move { Ok::<_, std::convert::Infallible>(response.await) }
        });
        let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
        let connection = graceful.watch(builder.serve_connection(io, service));
        connections.spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, client = %peer, "Connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    let in_flight = graceful.count();
    match tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => info!(
            listener = local.map(tracing::field::display),
            connections = in_flight,
            "Listener drained"
        ),
        Err(_) => warn!(
            listener = local.map(tracing::field::display),
            grace_ms = limits.shutdown_grace.as_millis() as u64,
            "Shutdown grace elapsed; dropping remaining connections"
        ),
    }
    // After a clean drain this only waits for tasks that are finishing; after the grace
    // period it drops every connection still open.
    connections.shutdown().await;
}

/// A connection's socket with a write deadline (like nginx's `send_timeout`): when a
/// write cannot go on because the client is not reading, the client must take some of
/// the waiting data within `timeout`, or the write fails with
/// [`io::ErrorKind::TimedOut`] and hyper closes the connection, freeing its
/// `max_connections` slot. The clock starts when a write has to wait and stops at the
/// next write that moves bytes (or flush that completes): a client that reads slowly
/// but steadily is not cut off, one that stopped reading is. Reads are untouched
/// (hyper's `header_read_timeout` bounds them, idle keep-alive included).
#[derive(Debug)]
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// The clock: allocated at the first wait, reset at later ones.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether the clock is running (a write is waiting).
    armed: bool,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: None,
            armed: false,
        }
    }

    /// The write in progress cannot go on: start the clock if it is not running, and
    /// fail once it has run out.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.armed {
            let at = Instant::now() + self.timeout;
            match &mut self.deadline {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        let expired = self
            .deadline
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if expired {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took none of the response within server.write_timeout",
            )))
        } else {
            Poll::Pending
        }
    }
}

impl<S> WriteDeadline<S> {
    /// The write or flush went through (or failed for its own reason): the client is
    /// taking data, so the clock stops.
    fn done<T>(&mut self, result: io::Result<T>) -> Poll<io::Result<T>> {
        self.armed = false;
        Poll::Ready(result)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => self.done(result),
            Poll::Pending => self.waiting(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => self.done(result),
            Poll::Pending => self.waiting(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(result) => self.done(result),
            Poll::Pending => self.waiting(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Ready(result) => self.done(result),
            Poll::Pending => self.waiting(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The drain line names the listener by its address (`listener=127.0.0.1:PORT`),
    /// not as a Rust `Option`.
    #[test]
    fn the_drain_line_names_the_listener_by_its_address() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (addr, lines) = crate::testing::json_logs(|| {
            runtime.block_on(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let limits = Limits {
                    max_connections: 4,
                    header_read_timeout: Duration::from_secs(5),
                    max_headers: 32,
                    max_header_bytes: 16 * 1024,
                    shutdown_grace: Duration::from_secs(5),
                    write_timeout: Duration::from_secs(5),
                };
                let handler = |_request: Request<Incoming>, _conn: ConnInfo| async {
                    Response::new(wire::Body::default())
                };
                serve(listener, handler, limits, std::future::ready(())).await;
                addr
            })
        });
        let drained: Vec<_> = lines
            .iter()
            .filter(|l| l["message"] == "Listener drained")
            .collect();
        assert_eq!(drained.len(), 1, "{lines:?}");
        assert_eq!(drained[0]["listener"], addr.to_string(), "{:?}", drained[0]);
    }

    /// The client end of a 64-byte pipe never reads: the write waits, then fails with
    /// `TimedOut` once the deadline has passed, not before.
    #[tokio::test]
    async fn a_write_the_client_never_takes_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let timeout = Duration::from_millis(200);
        let mut server = WriteDeadline::new(server, timeout);
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(30), server.write_all(&[7; 4096]))
            .await
            .expect("the write deadline ended the write within 30 s");
        let error = result.expect_err("a write nobody reads cannot succeed");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() >= timeout, "cut off before the deadline");
    }

    /// A client reading 64 bytes every 40 ms takes 4 s for the whole 6,400 bytes, twice
    /// the deadline: every read moves the write on and stops the clock, so the write
    /// completes. Each wait (40 ms) is 50x shorter than the deadline.
    #[tokio::test]
    async fn a_client_reading_steadily_is_not_cut_off() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = WriteDeadline::new(server, Duration::from_secs(2));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut chunk = [0u8; 64];
            loop {
                match client.read(&mut chunk).await.expect("read") {
                    0 => return total,
                    n => total += n,
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        server
            .write_all(&[7; 6400])
            .await
            .expect("a client that keeps reading is not cut off");
        server.flush().await.expect("flush");
        server.shutdown().await.expect("shutdown");
        assert_eq!(reader.await.expect("reader"), 6400);
    }
}
