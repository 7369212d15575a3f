//! The credential endpoint's `Host` check over real HTTP (DNS-rebinding defence, see
//! src/server/access.rs): which `Host` values the listener accepts and which it refuses
//! with 403 `InvalidHost`, and the absolute-URI request target standing in for a missing
//! `Host`. Accepted requests must come back 200 with credentials; refused ones must not
//! reach STS.

mod support;

use std::sync::Arc;

use credvend::clock::ManualClock;
use credvend::daemon::Listeners;
use support::daemon::{TestDaemon, config, mapping, role_arn, token};
use support::fake_sts::{FakeSts, Role, TrustRule};
use support::http::{RawResponse, request, send_raw, send_raw_bytes};
use tokio::net::TcpListener;

const PATH: &str = "/v1/credentials/acme-s3";

/// The fake STS with role `vendor-sync` (no External ID condition) and a config with
/// mapping `acme-s3` on it; the caller adjusts the config.
async fn sts_and_config(allowed_hosts: &[&str]) -> (FakeSts, credvend::config::Config, String) {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock)).await;
    sts.add_role(Role::new(
        role_arn("vendor-sync"),
        TrustRule::NoExternalIdRequired,
    ));
    let token = token("acme");
    let mut config = config(
        &sts.endpoint_url(),
        vec![mapping("acme-s3", "vendor-sync", None, &token)],
    );
    // As validated config holds them: lower case (the loader lowers them), and a
    // trailing dot is allowed.
    config.server.allowed_hosts = allowed_hosts.iter().map(|h| h.to_string()).collect();
    (sts, config, token)
}

async fn get_with_host(addr: std::net::SocketAddr, host: &str, token: &str) -> RawResponse {
    request(
        addr,
        "GET",
        PATH,
        &[("Host", host), ("Authorization", token)],
    )
    .await
}

#[track_caller]
fn assert_served(r: &RawResponse, what: &str) {
    assert_eq!(r.status, 200, "{what} must be accepted: {}", r.body);
    assert!(
        r.json()["AccessKeyId"]
            .as_str()
            .is_some_and(|k| k.starts_with("ASIAFAKE")),
        "{what}: no credentials in {}",
        r.body
    );
}

#[track_caller]
fn assert_invalid_host(r: &RawResponse, what: &str) {
    // A wrongly accepted request carries credentials: keep them out of the message.
    let shown = if r.status == 200 {
        "(credentials)"
    } else {
        r.body.as_str()
    };
    assert_eq!(
        (r.status, r.header("content-type")),
        (403, Some("application/json")),
        "{what} must be refused: {shown}"
    );
    let body = r.json();
    assert_eq!(
        (body["code"].as_str(), body["Code"].as_str()),
        (Some("InvalidHost"), Some("InvalidHost")),
        "{what}: {}",
        r.body
    );
    assert_eq!(
        body["message"], "Host header is not an address of this endpoint",
        "{what}"
    );
    assert_eq!(body["Message"], body["message"]);
}

/// `credvend_auth_failures_total{reason="invalid_host"}` as rendered by the daemon.
fn invalid_host_refusals(d: &TestDaemon) -> f64 {
    let text = d.daemon.metrics().render();
    text.lines()
        .find(|l| l.starts_with("credvend_auth_failures_total{reason=\"invalid_host\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no invalid_host auth-failure series in:\n{text}"))
}

#[tokio::test]
async fn configured_allowed_hosts_are_accepted_and_other_hosts_refused() {
    let (sts, config, token) = sts_and_config(&["credvend.internal"]).await;
    let d = TestDaemon::start(config, ManualClock::starting_now()).await;

    assert_served(
        &get_with_host(d.addr, "credvend.internal", &token).await,
        "a configured allowed host",
    );
    assert_served(
        &get_with_host(d.addr, "credvend.internal:8901", &token).await,
        "a configured allowed host with a port",
    );
    let calls = sts.assume_role_calls().len();
    let refused = [
        "evil.example.com",
        "evil.example.com:8901",
        // Look-alikes of the allowed host: neither a subdomain nor a suffix matches.
        "sub.credvend.internal",
        "credvend.internal.evil.example.com",
        "credvend.internalx",
        // A port that is not numeric is not a port: the whole value is the host.
        "credvend.internal:http",
        "localhost:http",
        // An IP address that is neither loopback, a listen address nor connected to.
        "10.0.0.1",
        "",
    ];
    for host in refused {
        assert_invalid_host(
            &get_with_host(d.addr, host, &token).await,
            &format!("Host {host:?}"),
        );
    }
    assert_eq!(
        invalid_host_refusals(&d),
        refused.len() as f64,
        "each refusal counted as invalid_host"
    );
    sts.assert_assume_role_calls(calls, "refused requests never reach STS");
    d.stop().await;
}

#[tokio::test]
async fn host_matching_ignores_case_a_trailing_dot_and_the_port() {
    // One entry with a trailing dot, one without: both match requests with and without.
    let (_sts, config, token) =
        sts_and_config(&["credvend.internal", "sidecar.example.com."]).await;
    let d = TestDaemon::start(config, ManualClock::starting_now()).await;
    let port = d.addr.port();

    let accepted = [
        "LOCALHOST".to_string(),
        format!("LocalHost:{port}"),
        "localhost.".to_string(),
        format!("localhost.:{port}"),
        "CREDVEND.INTERNAL".to_string(),
        "Credvend.Internal.".to_string(),
        "credvend.internal.:80".to_string(),
        "sidecar.example.com".to_string(),
        "SIDECAR.EXAMPLE.COM.".to_string(),
        format!("Sidecar.Example.Com:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "[::1]".to_string(),
        "::1".to_string(),
    ];
    for host in &accepted {
        assert_served(
            &get_with_host(d.addr, host, &token).await,
            &format!("Host {host:?}"),
        );
    }
    // Case and dots are the only leniency: the name itself must match.
    for host in [
        "LOCALHOST.EVIL.EXAMPLE",
        "SIDECAR.EXAMPLE.COM.EVIL",
        ".localhost",
    ] {
        assert_invalid_host(
            &get_with_host(d.addr, host, &token).await,
            &format!("Host {host:?}"),
        );
    }
    d.stop().await;
}

/// A `Host` equal to the address the client connected to is accepted even when it is no
/// listen address and not configured (a listener on 0.0.0.0 reached at the pod IP). Here
/// the credential listener is bound on 127.0.0.2 while the config says 127.0.0.1, so
/// 127.0.0.2 is known only as the connected address.
#[tokio::test]
async fn a_host_equal_to_the_connected_address_is_accepted() {
    let (sts, config, token) = sts_and_config(&[]).await;
    assert_eq!(
        config.server.listen,
        vec!["127.0.0.1:0".parse().unwrap()],
        "the config must not name 127.0.0.2"
    );
    let listeners = Listeners {
        credentials: vec![
            TcpListener::bind("127.0.0.2:0")
                .await
                .expect("bind 127.0.0.2 (Linux routes all of 127.0.0.0/8 to lo)"),
        ],
        admin: TcpListener::bind("127.0.0.1:0").await.expect("bind admin"),
        control: None,
    };
    let d = TestDaemon::start_with_listeners(config, ManualClock::starting_now(), listeners).await;
    assert_eq!(d.addr.ip().to_string(), "127.0.0.2");

    for host in [format!("127.0.0.2:{}", d.addr.port()), "127.0.0.2".into()] {
        assert_served(
            &get_with_host(d.addr, &host, &token).await,
            &format!("Host {host:?} (the connected address)"),
        );
    }
    let calls = sts.assume_role_calls().len();
    for host in ["127.0.0.3", "127.0.0.3:8901", "0.0.0.0"] {
        assert_invalid_host(
            &get_with_host(d.addr, host, &token).await,
            &format!("Host {host:?} (another address)"),
        );
    }
    assert_eq!(sts.assume_role_calls().len(), calls);
    // The static names still work on this listener.
    assert_served(
        &get_with_host(d.addr, "localhost", &token).await,
        "Host \"localhost\"",
    );
    d.stop().await;
}

/// Without a `Host` header, the authority of an absolute-URI request target
/// (`GET http://127.0.0.1:PORT/v1/credentials HTTP/1.1`) is checked in its place, with
/// the same rules; with neither, the request is refused.
#[tokio::test]
async fn an_absolute_uri_request_target_stands_in_for_a_missing_host() {
    let (sts, config, token) = sts_and_config(&["credvend.internal"]).await;
    let d = TestDaemon::start(config, ManualClock::starting_now()).await;
    let port = d.addr.port();
    let get = |target: String| {
        let token = token.clone();
        async move {
            send_raw(
                d.addr,
                &format!(
                    "GET {target} HTTP/1.1\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
                ),
            )
            .await
        }
    };

    for target in [
        format!("http://127.0.0.1:{port}/v1/credentials"),
        format!("http://127.0.0.1:{port}{PATH}"),
        format!("http://LOCALHOST.:{port}{PATH}"),
        format!("http://credvend.internal{PATH}"),
        format!("http://[::1]:{port}{PATH}"),
    ] {
        assert_served(&get(target.clone()).await, &format!("target {target}"));
    }
    let calls = sts.assume_role_calls().len();
    for target in [
        format!("http://evil.example.com:{port}{PATH}"),
        format!("http://evil.example.com{PATH}"),
        format!("http://10.0.0.1:{port}{PATH}"),
        // Origin form and no Host: nothing names the endpoint.
        PATH.to_string(),
    ] {
        assert_invalid_host(&get(target.clone()).await, &format!("target {target}"));
    }
    let http10 = send_raw(
        d.addr,
        &format!("GET {PATH} HTTP/1.0\r\nAuthorization: {token}\r\n\r\n"),
    )
    .await;
    assert_invalid_host(&http10, "HTTP/1.0 without Host");
    sts.assert_assume_role_calls(calls, "refused requests never reach STS");
    d.stop().await;
}

/// A `Host` header that is present but not UTF-8 is refused; it is never replaced by the
/// authority of an absolute-form target (which alone would be accepted). Non-ASCII UTF-8
/// is read as is and, being no name of ours, refused too.
#[tokio::test]
async fn a_host_that_is_not_utf8_is_refused_not_replaced_by_the_target() {
    let (sts, config, token) = sts_and_config(&[]).await;
    let d = TestDaemon::start(config, ManualClock::starting_now()).await;
    let target = format!("http://127.0.0.1:{}{PATH}", d.addr.port());
    let head = |host: &[u8]| {
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: ").into_bytes();
        head.extend_from_slice(host);
        head.extend_from_slice(
            format!("\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        head
    };
    // The target alone is accepted: only the Host below can make the difference.
    assert_served(
        &send_raw(
            d.addr,
            &format!(
                "GET {target} HTTP/1.1\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await,
        "the absolute target without a Host",
    );
    let calls = sts.assume_role_calls().len();
    let before = invalid_host_refusals(&d);
    let hosts: [&[u8]; 4] = [
        b"127.0.0.1\xff",
        b"\xc3\x28",
        b"localhost\x80:8901",
        "b\u{fc}cher.example".as_bytes(),
    ];
    for host in hosts {
        assert_invalid_host(
            &send_raw_bytes(d.addr, &head(host)).await,
            &format!("Host {}", host.escape_ascii()),
        );
    }
    assert_eq!(invalid_host_refusals(&d) - before, hosts.len() as f64);
    assert_eq!(sts.assume_role_calls().len(), calls);
    d.stop().await;
}
