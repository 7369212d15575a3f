//! The physical-limit baseline of the benchmark harness (`scripts/bench.sh`): a bare
//! hyper 1 HTTP/1.1 server, same hyper, tokio runtime and connection settings as credvend
//! (`TCP_NODELAY`, header read timeout with a timer), answering every request with a
//! fixed JSON body and the headers credvend sends. No routing, no auth, no cache, no
//! metrics, no logging: whatever credvend costs beyond this is credvend's own.
//!
//! ```text
//! bare_hyper LISTEN_ADDR BODY_FILE
//! ```
//!
//! `BODY_FILE` holds the body to send (the harness writes a real credvend credential body
//! there, so both servers send identical bytes). Runs until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(body_file)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_hyper LISTEN_ADDR BODY_FILE");
        std::process::exit(64);
    };
    let listen: SocketAddr = listen.parse().expect("listen address");
    let body = Bytes::from(std::fs::read(&body_file).expect("read body file"));
    let listener = TcpListener::bind(listen).await.expect("bind");
    eprintln!(
        "bare_hyper listening on {}",
        listener.local_addr().expect("addr")
    );

    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .max_headers(32)
        .max_header_size(16 * 1024);
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let service = service_fn(move |_request| {
            let mut response = Response::new(Full::new(body.clone()));
            *response.status_mut() = StatusCode::OK;
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
