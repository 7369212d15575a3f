//! Job tokens end to end: the control socket (`[control] socket`) mints, lists and
//! revokes them; the credential endpoint accepts them like a configured token of their
//! mapping until they are revoked or expire. docs/design.md, Job tokens.

mod support;

use std::time::Duration;

use serde_json::Value;

use support::control::{
    ControlConnection, SocketDir, control_request, mint, start_acme_with_control,
};
use support::daemon::{TestDaemon, eventually};
use support::http::{RawResponse, assert_json_error_shape, get_with_token};

const EXTERNAL_ID: &str = "Xk3-acme-external-id-0123456789";

/// What a client sees of a response, without the `Date` header (the only part that
/// depends on when it was sent).
fn seen(r: &RawResponse) -> (u16, Vec<(String, String)>, String) {
    let headers = r
        .headers
        .iter()
        .filter(|(name, _)| name != "date")
        .cloned()
        .collect();
    (r.status, headers, r.body.clone())
}

/// The token and id of a 201 answer.
#[track_caller]
fn minted(r: &RawResponse) -> (String, String) {
    assert_eq!(r.status, 201, "{}", r.body);
    let body = r.json();
    let token = body["token"].as_str().expect("token").to_owned();
    let id = body["id"].as_str().expect("id").to_owned();
    (token, id)
}

async fn start() -> (support::fake_sts::FakeSts, TestDaemon, String, SocketDir) {
    start_acme_with_control(EXTERNAL_ID, |_| {}).await
}

/// Mint → the token fetches credentials on both routes → DELETE → the token gets the
/// very answer a wrong token gets.
#[tokio::test]
async fn a_minted_token_fetches_credentials_until_it_is_revoked() {
    let (_sts, d, _acme, dir) = start().await;
    let socket = dir.socket();
    let answer = mint(&socket, r#"{"mapping": "acme-s3", "ttl_seconds": 600}"#).await;
    let (token, id) = minted(&answer);
    let body = answer.json();
    assert!(
        token.starts_with("cvj_") && token.len() == 68,
        "token shape: {token:?}"
    );
    assert!(id.starts_with("jt_") && id.len() == 19, "id shape: {id:?}");
    assert_eq!(body["mapping"], "acme-s3");
    assert_eq!(
        body["credentials_uri"],
        format!("http://{}/v1/credentials/acme-s3", d.addr)
    );
    assert_eq!(body["lease"], Value::Null);
    assert_eq!(body["session_name"], Value::Null);
    let expected_expiry = credvend::protocol::format_expiration(
        credvend::clock::Clock::now(&d.clock) + Duration::from_secs(600),
    );
    assert_eq!(body["expires_at"], expected_expiry.as_str());

    for path in ["/v1/credentials/acme-s3", "/v1/credentials"] {
        let r = get_with_token(d.addr, path, &token).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.json()["AccessKeyId"].is_string(), "{path}: {}", r.body);
    }

    let listed = control_request(&socket, "GET", "/v1/tokens", None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let tokens = listed.json()["tokens"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(tokens.len(), 1, "{}", listed.body);
    assert_eq!(tokens[0]["id"], id.as_str());
    assert_eq!(
        tokens[0]["minted_by"]["uid"],
        rustix::process::getuid().as_raw()
    );
    assert_eq!(tokens[0]["minted_by"]["pid"], std::process::id());

    let deleted = control_request(&socket, "DELETE", &format!("/v1/tokens/{id}"), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert_eq!(deleted.body, "");

    let wrong = format!("cvj_{}", "0".repeat(64));
    for path in ["/v1/credentials/acme-s3", "/v1/credentials"] {
        let revoked = get_with_token(d.addr, path, &token).await;
        let refused = get_with_token(d.addr, path, &wrong).await;
        assert_json_error_shape(&revoked, 403, "AccessDenied");
        assert_eq!(
            seen(&revoked),
            seen(&refused),
            "{path}: a revoked job token must be answered exactly like a wrong token"
        );
    }
    d.stop().await;
}

/// A token minted with `"lease": "connection"` dies when the connection that minted it
/// closes, and not before: the connection may sit idle longer than
/// `server.header_read_timeout`, which closes idle connections without a lease.
#[tokio::test]
async fn a_lease_token_lives_as_long_as_its_idle_connection() {
    let (_sts, d, _acme, dir) = start_acme_with_control(EXTERNAL_ID, |c| {
        c.server.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let socket = dir.socket();
    let mut lease = ControlConnection::open(&socket).await;
    let answer = lease
        .send(
            "POST",
            "/v1/tokens",
            Some(r#"{"mapping": "acme-s3", "lease": "connection"}"#),
        )
        .await;
    let (token, _id) = minted(&answer);
    assert_eq!(answer.json()["expires_at"], Value::Null, "{}", answer.body);
    assert_eq!(answer.json()["lease"], "connection");

    // A connection without a lease is closed once idle for header_read_timeout.
    let mut idle = ControlConnection::open(&socket).await;
    let listed = idle.send("GET", "/v1/tokens", None).await;
    assert_eq!(listed.status, 200);
    assert!(
        idle.closed_by_server(Duration::from_secs(30)).await,
        "an idle control connection without a lease stays open"
    );

    // The lease connection has now been idle longer than that (6x the timeout by the
    // time this returns); it is still open and the token still works.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !lease.closed_by_server(Duration::from_millis(50)).await,
        "the server closed an idle connection holding a lease"
    );
    let r = get_with_token(d.addr, "/v1/credentials/acme-s3", &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let again = lease.send("GET", "/v1/tokens", None).await;
    assert_eq!(
        again.status, 200,
        "the lease connection still serves requests"
    );

    drop(lease);
    let wrong = format!("cvj_{}", "1".repeat(64));
    let refused = get_with_token(d.addr, "/v1/credentials/acme-s3", &wrong).await;
    let mut last = None;
    eventually(
        "the lease token is revoked once its connection closed",
        || {
            let jobs = d.daemon.jobs().list();
            last = Some(jobs.len());
            jobs.is_empty()
        },
    )
    .await;
    let revoked = get_with_token(d.addr, "/v1/credentials/acme-s3", &token).await;
    assert_eq!(seen(&revoked), seen(&refused));
    d.stop().await;
}

/// The socket is created mode 0660 and removed at shutdown.
#[tokio::test]
async fn the_socket_is_0660_and_removed_at_shutdown() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let (_sts, d, _acme, dir) = start().await;
    let metadata = std::fs::symlink_metadata(dir.socket()).expect("socket exists");
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o660);
    d.stop().await;
    assert!(
        !dir.socket().exists(),
        "the socket file outlived the daemon"
    );
}
