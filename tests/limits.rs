//! Bounds on every resource (docs/design.md, Operations), end to end against real
//! listeners: header read time, header count and size, URI length, request bodies,
//! concurrent connections, hostile bytes, and the shutdown grace period.
//!
//! Ordering is asserted, not speed: "the normal request finished before any slow client
//! was cut off", "the stuck request ended because the daemon stopped, not because
//! `cold_wait` ran out".

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use credvend::model::MappingState;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use credvend::config::Config;
use support::daemon::{self, TestDaemon, eventually, mapping, role_arn, token};
use support::fake_sts::{FakeSts, Fault, Role, TrustRule};
use support::http::{RawResponse, get_with_token, request, spawn_gets};

const EXTERNAL_ID: &str = "Xk3-acme-external-id-0123456789";
const PATH: &str = "/v1/credentials/acme-s3";

/// `cold_wait` here: the most a config may set, so that a cold request is answered 200
/// however loaded the machine (no test here is about `cold_wait`).
const PATIENT_COLD_WAIT: Duration = Duration::from_secs(10);

fn acme_role() -> Role {
    Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    )
}

fn acme(token: &str) -> Vec<credvend::config::Mapping> {
    vec![mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), token)]
}

/// Mapping `acme-s3` for `token`, [`PATIENT_COLD_WAIT`], then `tweak`.
async fn start(token: &str, tweak: impl FnOnce(&mut Config)) -> (FakeSts, TestDaemon) {
    let (sts, d) = daemon::start_with_sts_and(acme(token), |c| {
        c.refresh.cold_wait = PATIENT_COLD_WAIT;
        tweak(c);
    })
    .await;
    sts.add_role(acme_role());
    (sts, d)
}

/// Sends one keep-alive `GET PATH` on `stream` and reads exactly its response; returns
/// the status. The connection stays open.
async fn round_trip(stream: &mut TcpStream, token: &str) -> u16 {
    let head = format!("GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write request");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .expect("response within 30 s")
            .expect("read response");
        assert!(n > 0, "connection closed after {answer:?}");
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
            if body.len() >= length {
                return status_of(&answer);
            }
        }
    }
}

/// Connections waiting in the kernel's accept queue of the listening socket at `addr`
/// (`rx_queue` of a LISTEN socket in `/proc/net/tcp`): connected, never accepted.
#[cfg(target_os = "linux")]
fn accept_queue(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else {
        panic!("{addr} is not IPv4")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[1] == local && f[3] == "0A")
        .and_then(|f| f[4].split_once(':').map(|(_, rx)| rx.to_string()))
        .and_then(|rx| usize::from_str_radix(&rx, 16).ok())
        .unwrap_or_else(|| panic!("no listening socket {local} in /proc/net/tcp"))
}

/// Writes `bytes` (ignoring write errors: the server may answer and close before it has
/// read everything) and returns whatever comes back before the connection ends.
async fn exchange(addr: SocketAddr, bytes: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&bytes).await;
        // Keep the write half open until the server closes: a FIN here could make the
        // server stop early for a reason other than the one under test.
        write
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    let read_all = async {
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("server answered or closed within 30 s");
    drop(writer.await);
    answer
}

fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {text:?}"))
}

/// The raw `answer` has HTTP status `status` (the whole answer is the failure message).
#[track_caller]
fn assert_answer_status(answer: &[u8], status: u16) {
    assert_eq!(
        status_of(answer),
        status,
        "{:?}",
        String::from_utf8_lossy(answer)
    );
}

#[track_caller]
fn assert_json_error(r: &RawResponse, status: u16, code: &str) {
    let body = support::http::assert_json_error_shape(r, status, code);
    assert_eq!(body.as_object().unwrap().len(), 4);
}

#[tokio::test]
async fn two_hundred_half_requests_do_not_delay_a_normal_one_and_are_cut_off() {
    let token = token("acme");
    // Long enough that 200 connects and one normal request fit inside it on a loaded
    // machine (tens of milliseconds on a quiet one); the slow clients are cut off when
    // it ends, which is also this test's running time.
    let header_read_timeout = Duration::from_secs(5);
    let (_sts, d) = start(&token, |c| {
        c.server.header_read_timeout = header_read_timeout;
    })
    .await;
    // Warm the cache so the normal request below measures the server, not STS.
    assert_eq!(get_with_token(d.addr, PATH, &token).await.status, 200);

    // 200 clients send half a request (request line and part of a header) and stop.
    let half = format!("GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthoriz");
    let mut slow = Vec::new();
    for _ in 0..200 {
        // hyper's timer starts once it accepts the connection, so no earlier than this.
        let sent = Instant::now();
        let mut stream = TcpStream::connect(d.addr).await.expect("connect");
        stream.write_all(half.as_bytes()).await.expect("write half");
        slow.push(tokio::spawn(async move {
            let mut answer = Vec::new();
            // Ends when the server closes the connection (EOF or reset).
            let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
                .await
                .expect("slow client cut off within 60 s");
            (sent, Instant::now(), answer)
        }));
    }
    let setup = slow.len();

    // A normal client is served while all 200 are still connected.
    let r = get_with_token(d.addr, PATH, &token).await;
    let served = Instant::now();
    assert_eq!(r.status, 200, "{}", r.body);
    let still_connected = slow.iter().filter(|task| !task.is_finished()).count();
    assert_eq!(
        still_connected, setup,
        "slow clients were cut off before the normal request was served"
    );

    for task in slow {
        let (sent, closed, answer) = task.await.unwrap();
        assert!(
            served < closed,
            "a slow client was cut off before the normal request was served"
        );
        // hyper's timer (not a read error, not the client) ended it: never before the
        // timeout, and with no response at all.
        assert!(closed.duration_since(sent) >= header_read_timeout);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    }
    d.stop().await;
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_at_the_header_read_timeout() {
    let token = token("acme");
    let (sts, d) = start(&token, |c| {
        c.server.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    // One byte every 50 ms: each byte is progress, but the whole head would take far
    // longer than the timeout. The timer covers the head, not the gap between bytes.
    let head = format!(
        "GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(200)
    );
    let mut stream = TcpStream::connect(d.addr).await.expect("connect");
    let mut sent_all = true;
    for byte in head.as_bytes() {
        if stream.write_all(&[*byte]).await.is_err() {
            sent_all = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !sent_all,
        "the server kept reading a {}-byte head for {} ms",
        head.len(),
        head.len() * 50
    );
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    assert_eq!(sts.assume_role_calls().len(), 0);
    d.stop().await;
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431_and_others_are_still_served() {
    let token = token("acme");
    let (sts, d) = start(&token, |_| {}).await;

    let big = format!(
        "GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200 * 1024)
    );
    let answer = exchange(d.addr, big.into_bytes()).await;
    assert_answer_status(&answer, 431);

    let mut many = format!("GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-Header-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let answer = exchange(d.addr, many.into_bytes()).await;
    assert_answer_status(&answer, 431);

    // Neither reached the handler (no STS call); a normal request still works.
    assert_eq!(sts.assume_role_calls().len(), 0);
    assert_eq!(get_with_token(d.addr, PATH, &token).await.status, 200);
    d.stop().await;
}

#[tokio::test]
async fn a_uri_over_the_limit_gets_414_json_on_both_listeners() {
    let token = token("acme");
    let (sts, d) = start(&token, |_| {}).await;

    let long = format!("{PATH}?{}", "q".repeat(credvend::protocol::MAX_URI_BYTES));
    let r = get_with_token(d.addr, &long, &token).await;
    assert_json_error(&r, 414, "UriTooLong");
    let r = request(
        d.admin,
        "GET",
        &format!("/healthz?{}", "q".repeat(4096)),
        &[],
    )
    .await;
    assert_json_error(&r, 414, "UriTooLong");
    sts.assert_assume_role_calls(0, "refused before the cache");

    // Just inside the limit is an ordinary request (the query string is ignored).
    let inside = format!(
        "{PATH}?{}",
        "q".repeat(credvend::protocol::MAX_URI_BYTES - PATH.len() - 1)
    );
    let r = get_with_token(d.addr, &inside, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    d.stop().await;
}

#[tokio::test]
async fn requests_with_a_body_are_refused_without_reading_it() {
    let token = token("acme");
    let (sts, d) = start(&token, |_| {}).await;
    let head = |extra: &str| {
        format!("GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n{extra}\r\n")
    };
    let parse = |answer: Vec<u8>| {
        let text = String::from_utf8_lossy(&answer).to_string();
        let (head, body) = text.split_once("\r\n\r\n").expect("a response");
        let headers: Vec<String> = head.lines().map(str::to_ascii_lowercase).collect();
        (status_of(&answer), headers, body.to_string())
    };

    for request in [
        head("Content-Length: 10\r\n") + "0123456789",
        // The body is promised but never sent: answering proves it was not waited for.
        head("Content-Length: 100000\r\n") + "only a little",
        head("Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n",
    ] {
        let (status, headers, body) = parse(exchange(d.addr, request.into_bytes()).await);
        assert_eq!(status, 400, "{body}");
        assert!(headers.contains(&"content-type: application/json".to_string()));
        assert!(headers.contains(&"connection: close".to_string()));
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(body["code"], "BodyNotAllowed");
        assert_eq!(body["Code"], "BodyNotAllowed");
    }
    sts.assert_assume_role_calls(0, "refused before the cache");

    // An explicit empty body is no body.
    let (status, _, body) = parse(
        exchange(
            d.addr,
            (head("Content-Length: 0\r\nConnection: close\r\n")).into_bytes(),
        )
        .await,
    );
    assert_eq!(status, 200, "{body}");
    d.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    let token = token("acme");
    let (_sts, d) = start(&token, |c| {
        c.server.max_connections = 2;
        // Long enough that the idle connection below is not cut off by it.
        c.server.header_read_timeout = Duration::from_secs(300);
    })
    .await;

    // Two connections take both slots: `idle` holds one, `probe` the other. The server
    // accepts in connection order, so a request answered on `probe` means both are in.
    let idle = TcpStream::connect(d.addr).await.expect("connect idle");
    let mut probe = TcpStream::connect(d.addr).await.expect("connect probe");
    assert_eq!(round_trip(&mut probe, &token).await, 200);

    // The third connects (the kernel backlog holds it) and sends a whole request.
    let mut third = TcpStream::connect(d.addr).await.expect("connect third");
    let raw = format!(
        "GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
    );
    third.write_all(raw.as_bytes()).await.expect("write third");
    let third = tokio::spawn(async move {
        let mut answer = Vec::new();
        third.read_to_end(&mut answer).await.expect("read third");
        answer
    });
    // Each round trip on `probe` takes the server through more turns of its event loop
    // after the third connection arrived: a server that accepted it would have served it
    // (a cache hit) well before ten of them are done. No timing involved.
    for _ in 0..10 {
        assert_eq!(round_trip(&mut probe, &token).await, 200);
    }
    assert!(!third.is_finished(), "served past max_connections");
    // Not accepted at all: it waits in the kernel, costing the daemon nothing.
    #[cfg(target_os = "linux")]
    assert_eq!(
        accept_queue(d.addr),
        1,
        "the third connection is not waiting in the accept queue"
    );

    // A slot frees up: the waiting connection is served.
    drop(idle);
    let answer = tokio::time::timeout(Duration::from_secs(30), third)
        .await
        .expect("waiting connection served once a slot freed")
        .unwrap();
    assert_answer_status(&answer, 200);
    #[cfg(target_os = "linux")]
    assert_eq!(accept_queue(d.addr), 0);

    // The connection that held the other slot all along still works.
    assert_eq!(round_trip(&mut probe, &token).await, 200);
    d.stop().await;
}

/// `max_connections` is one bound for all the credential listeners (the default listens
/// on two addresses), and the admin listener has slots of its own: with one slot, a
/// connection held on one credential address keeps a client of the other one waiting,
/// while `/healthz` still answers.
#[tokio::test]
async fn max_connections_bounds_the_credential_listeners_together_and_not_the_admin_one() {
    let token = token("acme");
    let clock = credvend::clock::ManualClock::starting_now();
    let sts = FakeSts::start(std::sync::Arc::new(clock.clone())).await;
    sts.add_role(acme_role());
    let mut config = daemon::config(&sts.endpoint_url(), acme(&token));
    config.refresh.cold_wait = PATIENT_COLD_WAIT;
    config.server.max_connections = 1;
    // Long enough that the held connection is not cut off by it.
    config.server.header_read_timeout = Duration::from_secs(300);
    config.server.listen = vec![
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.2:0".parse().unwrap(),
    ];
    let listeners = credvend::daemon::Listeners::bind(&config.server)
        .await
        .expect("bind");
    let addrs = listeners.credential_addrs();
    let d = TestDaemon::start_with_listeners(config, clock, listeners).await;

    // The only slot: taken by a connection on the first address (answered, so accepted).
    let mut held = TcpStream::connect(addrs[0]).await.expect("connect first");
    assert_eq!(round_trip(&mut held, &token).await, 200);

    // A whole request on the second address.
    let mut other = TcpStream::connect(addrs[1]).await.expect("connect second");
    let raw = format!(
        "GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
    );
    other.write_all(raw.as_bytes()).await.expect("write second");
    let other = tokio::spawn(async move {
        let mut answer = Vec::new();
        other.read_to_end(&mut answer).await.expect("read second");
        answer
    });
    // Round trips on `held` turn the (single-threaded) runtime many times: a second
    // listener with a slot of its own would have accepted and served `other` by then.
    for _ in 0..10 {
        assert_eq!(round_trip(&mut held, &token).await, 200);
    }
    assert!(
        !other.is_finished(),
        "the second address served a connection past the shared max_connections"
    );
    #[cfg(target_os = "linux")]
    assert_eq!(
        accept_queue(addrs[1]),
        1,
        "the second address's connection is not waiting in its accept queue"
    );

    // The admin listener is not bound by the credential listeners' slots.
    let health = request(d.admin, "GET", "/healthz", &[]).await;
    assert_eq!(health.status, 200, "{}", health.body);

    // The slot frees: the waiting connection is served.
    drop(held);
    let answer = tokio::time::timeout(Duration::from_secs(30), other)
        .await
        .expect("waiting connection served once the slot freed")
        .unwrap();
    assert_eq!(
        status_of(&answer),
        200,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    d.stop().await;
}

#[tokio::test]
async fn random_bytes_on_some_connections_do_not_disturb_other_clients() {
    let token = token("acme");
    let (sts, d) = start(&token, |_| {}).await;
    assert_eq!(get_with_token(d.addr, PATH, &token).await.status, 200);

    // Seeded: a failure reproduces.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x00c0_ffee);
    let mut hostile: Vec<Vec<u8>> = (0..24)
        .map(|i| {
            let len = 1 << (6 + i % 12); // 64 B .. 128 KiB
            (0..len).map(|_| rng.r#gen::<u8>()).collect()
        })
        .collect();
    hostile.push(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec());
    hostile.push(vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]);
    hostile.push(b"\0\0\0\0\r\n\r\n".to_vec());
    hostile.push(format!("{} / HTTP/1.1\r\n\r\n", "G".repeat(10_000)).into_bytes());
    hostile.push(b"GET /v1/credentials/acme-s3 HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n".to_vec());

    let addr = d.addr;
    let attackers: Vec<_> = hostile
        .into_iter()
        .map(|bytes| tokio::spawn(exchange(addr, bytes)))
        .collect();
    let clients = spawn_gets(addr, PATH, &token, 50);
    for client in clients {
        let r = client.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for attacker in attackers {
        let answer = attacker.await.expect("no panic");
        // Either nothing (connection dropped) or a 4xx; never a 2xx or 5xx.
        if !answer.is_empty() {
            let status = status_of(&answer);
            assert!((400..500).contains(&status), "{status}");
        }
    }
    assert_eq!(get_with_token(d.addr, PATH, &token).await.status, 200);
    sts.assert_assume_role_calls(1, "garbage never reached STS");
    d.stop().await;
}

#[tokio::test]
async fn shutdown_grace_bounds_a_request_stuck_on_a_hung_sts() {
    let token = token("acme");
    // The request would otherwise wait this long for STS, then answer 503: far longer
    // than this test can take, so only the grace period can end it.
    let cold_wait = Duration::from_secs(120);
    let (sts, mut d) = start(&token, |c| {
        c.server.shutdown_grace = Duration::from_millis(300);
        c.refresh.cold_wait = cold_wait;
        c.sts.call_timeout = Duration::from_secs(300);
    })
    .await;
    sts.set_persistent_fault(Some(Fault::Hang));

    let addr = d.addr;
    let request =
        format!("GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n");
    let started = Instant::now();
    let stuck = tokio::spawn(exchange(addr, request.into_bytes()));
    eventually("request waiting on the hung STS", || {
        sts.faults_fired().contains(&Fault::Hang)
            && d.daemon.cache.status()[0].state == MappingState::Fetching
    })
    .await;

    let stopped = d.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(60), stopped)
        .await
        .expect("the daemon stopped although a request was stuck")
        .expect("daemon task did not panic");
    let answer = stuck.await.unwrap();
    // The connection was dropped by the grace period, before cold_wait could end the
    // request with a 503: no response at all.
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    assert!(
        started.elapsed() < cold_wait,
        "the stuck request outlived the grace period"
    );
    assert!(TcpStream::connect(addr).await.is_err());
    drop(sts);
}

/// A client may close its sending half once its request is out (`shutdown(SHUT_WR)`,
/// as `nc -N` does): the answer must still arrive. The FIN is sent only once the
/// request is waiting on a slow STS, so the server reads the EOF while the handler is
/// still running (the connection is not allowed to drop the request then).
#[tokio::test]
async fn a_request_followed_by_a_half_close_is_still_answered() {
    let token = token("acme");
    let latency = Duration::from_secs(2);
    let (sts, d) = daemon::start_with_sts_and(acme(&token), |c| {
        c.refresh.cold_wait = Duration::from_secs(20);
    })
    .await;
    sts.add_role(acme_role().fault(Fault::Latency(latency)));

    let stream = TcpStream::connect(d.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let request =
        format!("GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n");
    write.write_all(request.as_bytes()).await.expect("write");
    // (The fake records a delayed call once it answers, so the fetch's state tells when
    // it is under way.)
    eventually("the request waiting on the slow STS", || {
        d.daemon.cache.status()[0].state == MappingState::Fetching
    })
    .await;
    write.shutdown().await.expect("half-close");

    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut answer))
        .await
        .expect("answered or closed within 30 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.contains("\"AccessKeyId\""),
        "a half-closed request got {answer:?} instead of its credentials"
    );
    assert_eq!(sts.faults_fired(), vec![Fault::Latency(latency)]);
    d.stop().await;
}

/// A client that pipelines requests and never reads the responses: once the server's
/// writes to it stall, `server.write_timeout` closes the connection, so the client
/// cannot keep its `max_connections` slot. With one slot, a second client waiting in the
/// backlog is served once the first is cut off; without the deadline it waits forever.
#[tokio::test]
async fn a_client_that_never_reads_its_responses_loses_its_slot_at_the_write_timeout() {
    let token = token("acme");
    let (_sts, d) = start(&token, |c| {
        c.server.max_connections = 1;
        c.server.write_timeout = Duration::from_secs(1);
        // Far longer than this test: no header timer can end the connections below.
        c.server.header_read_timeout = Duration::from_secs(300);
    })
    .await;

    // The hog, with a small receive buffer so that the server's writes stall sooner.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut hog = socket.connect(d.addr).await.expect("connect hog");
    // One round trip: the hog has been accepted and holds the only slot (and the cache is
    // warm, so every pipelined request below gets a whole credential response).
    assert_eq!(round_trip(&mut hog, &token).await, 200);
    let (mut hog_read, mut hog_write) = hog.into_split();
    let batch = format!("GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n")
        .repeat(100);
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        loop {
            match hog_write.write_all(batch.as_bytes()).await {
                Ok(()) => sent += 100,
                Err(error) => return (sent, error),
            }
        }
    });

    // The second client connects (the kernel backlog holds it) and sends a request.
    let mut second = TcpStream::connect(d.addr).await.expect("connect second");
    let request = format!(
        "GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
    );
    second
        .write_all(request.as_bytes())
        .await
        .expect("write second");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), second.read_to_end(&mut answer))
        .await
        .expect(
            "the second client was not served within 60 s: the client that never reads \
             kept the only slot",
        )
        .expect("read second");
    assert_eq!(
        status_of(&answer),
        200,
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // The server closed the hog's connection: its writes fail and its reads end.
    let (sent, error) = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the hog's writes fail once the server closed its connection")
        .unwrap();
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "the hog's writes ended with {error} after {sent} requests"
    );
    assert!(
        sent > 100,
        "the hog sent only {sent} requests: its connection ended before it could stall"
    );
    let drained = async {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = hog_read.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), drained)
        .await
        .expect("the hog's connection ends after the server closed it");
    d.stop().await;
}
