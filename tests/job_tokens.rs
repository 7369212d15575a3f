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
use support::e2e::credvend_serve;
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

/// A job token minted with a session name is served its per-job credential (an
/// AssumeRole of its own) even while the mapping's own credential is cached and ready:
/// the endpoint answers a cache hit at once only for a configured token, and a job
/// token is never handed the mapping's credential.
#[tokio::test]
async fn a_session_named_job_token_is_not_served_the_mappings_cached_credential() {
    let (sts, d, acme, dir) = start().await;
    let own = get_with_token(d.addr, "/v1/credentials/acme-s3", &acme).await;
    assert_eq!(own.status, 200, "{}", own.body);
    let calls = sts.assume_role_calls().len();
    let again = get_with_token(d.addr, "/v1/credentials/acme-s3", &acme).await;
    assert_eq!(
        again.json()["AccessKeyId"],
        own.json()["AccessKeyId"],
        "the mapping's own credential is cached"
    );
    sts.assert_assume_role_calls(calls, "a cache hit calls no STS");

    let (token, _) = minted(
        &mint(
            &dir.socket(),
            r#"{"mapping": "acme-s3", "session_name": "sync-job-8812"}"#,
        )
        .await,
    );
    for path in ["/v1/credentials/acme-s3", "/v1/credentials"] {
        let job = get_with_token(d.addr, path, &token).await;
        assert_eq!(job.status, 200, "{path}: {}", job.body);
        assert_ne!(
            job.json()["AccessKeyId"],
            own.json()["AccessKeyId"],
            "{path}: the job token was served the mapping's own credential"
        );
    }
    let job_calls: Vec<_> = sts
        .assume_role_calls()
        .into_iter()
        .filter(|call| call.session_name.as_deref() == Some("sync-job-8812"))
        .collect();
    assert_eq!(
        job_calls.len(),
        1,
        "one AssumeRole with the job's RoleSessionName, then its entry is cached: {job_calls:?}"
    );
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

/// The socket is created mode 0660, group `socket_group`, and removed at shutdown.
#[tokio::test]
async fn the_socket_is_0660_of_its_group_and_removed_at_shutdown() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    // As root (CI) another group than the test's own, so the chown is seen to happen;
    // otherwise the test's own group (a user can only chown to its groups).
    let gid = if rustix::process::geteuid().is_root() {
        4242
    } else {
        rustix::process::getgid().as_raw()
    };
    let (_sts, d, _acme, dir) = start_acme_with_control(EXTERNAL_ID, |c| {
        c.control.socket_group = Some(credvend::config::SocketGroup {
            name: gid.to_string(),
            gid,
        });
    })
    .await;
    let metadata = std::fs::symlink_metadata(dir.socket()).expect("socket exists");
    assert!(metadata.file_type().is_socket());
    assert_eq!(
        metadata.permissions().mode() & 0o7777,
        0o660,
        "mode {:o}",
        metadata.permissions().mode()
    );
    assert_eq!(metadata.gid(), gid);
    assert!(
        !dir.path().join("control.sock.new").exists(),
        "the staging name is left behind"
    );
    d.stop().await;
    assert!(
        !dir.socket().exists(),
        "the socket file outlived the daemon"
    );
}

/// The value of the metric sample `series` (`name{labels}`), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A token minted with `ttl_seconds` is refused from the moment the daemon's clock
/// reaches its expiry (whether or not it was swept yet), with the wrong-token answer;
/// the sweeper removes and counts expired tokens that nobody presents.
#[tokio::test]
async fn a_token_expires_by_the_daemons_clock() {
    let (_sts, d, _acme, dir) = start().await;
    let socket = dir.socket();
    let (used, _) = minted(&mint(&socket, r#"{"mapping": "acme-s3", "ttl_seconds": 60}"#).await);
    let (unused, _) = minted(&mint(&socket, r#"{"mapping": "acme-s3", "ttl_seconds": 120}"#).await);
    let path = "/v1/credentials/acme-s3";
    assert_eq!(get_with_token(d.addr, path, &used).await.status, 200);

    d.clock.advance(Duration::from_secs(59));
    assert_eq!(
        get_with_token(d.addr, path, &used).await.status,
        200,
        "refused a second before its expiry"
    );
    d.clock.advance(Duration::from_secs(1));
    let wrong = format!("cvj_{}", "2".repeat(64));
    let refused = get_with_token(d.addr, path, &wrong).await;
    let expired = get_with_token(d.addr, path, &used).await;
    assert_json_error_shape(&expired, 403, "AccessDenied");
    assert_eq!(seen(&expired), seen(&refused));
    let metrics = d.daemon.metrics().clone();
    let expired_total = r#"credvend_job_tokens_expired_total{mapping="acme-s3"}"#;
    eventually("the expired token is swept and counted", || {
        sample(&metrics.render(), expired_total) == Some(1.0)
    })
    .await;
    assert_eq!(
        d.daemon.jobs().list().len(),
        1,
        "the 120 s token is still live"
    );

    // Nobody presents the second token: the sweeper alone ends it, at its expiry.
    d.clock.advance(Duration::from_secs(60));
    eventually("the unused token is swept at its expiry", || {
        sample(&metrics.render(), expired_total) == Some(2.0)
    })
    .await;
    let text = metrics.render();
    assert_eq!(sample(&text, "credvend_job_tokens"), Some(0.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"credvend_job_tokens_revoked_total{mapping="acme-s3"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        get_with_token(d.addr, path, &unused).await.status,
        403,
        "an expired, swept token"
    );
    d.stop().await;
}

/// The live-token gauge and the per-mapping counters; a mapping's job series appear
/// with its first mint.
#[tokio::test]
async fn minted_and_revoked_tokens_are_counted_by_mapping() {
    let (_sts, d, _acme, dir) = start().await;
    let socket = dir.socket();
    let metrics = d.daemon.metrics().clone();
    let before = metrics.render();
    assert_eq!(sample(&before, "credvend_job_tokens"), Some(0.0));
    assert!(
        !before.contains("credvend_job_tokens_minted_total{"),
        "job series before any mint:\n{before}"
    );
    let (_, first) = minted(&mint(&socket, r#"{"mapping": "acme-s3"}"#).await);
    minted(&mint(&socket, r#"{"mapping": "acme-s3"}"#).await);
    let text = metrics.render();
    assert_eq!(sample(&text, "credvend_job_tokens"), Some(2.0), "{text}");
    let minted_total = r#"credvend_job_tokens_minted_total{mapping="acme-s3"}"#;
    let revoked_total = r#"credvend_job_tokens_revoked_total{mapping="acme-s3"}"#;
    assert_eq!(sample(&text, minted_total), Some(2.0), "{text}");
    assert_eq!(sample(&text, revoked_total), Some(0.0), "{text}");
    let deleted = control_request(&socket, "DELETE", &format!("/v1/tokens/{first}"), None).await;
    assert_eq!(deleted.status, 204);
    let text = metrics.render();
    assert_eq!(sample(&text, "credvend_job_tokens"), Some(1.0), "{text}");
    assert_eq!(sample(&text, revoked_total), Some(1.0), "{text}");

    // `/status`: how many per mapping, nothing else about them.
    let status = support::http::request(d.admin, "GET", "/status", &[]).await;
    let status = status.json();
    assert_eq!(status["mappings"]["acme-s3"]["job_tokens"], 1, "{status}");
    assert_eq!(status["job_tokens"], 1, "{status}");
    d.stop().await;
}

/// Every bound and malformed request of the control socket, each with its status,
/// code and the field its message names.
#[tokio::test]
async fn the_control_socket_refuses_what_its_bounds_forbid() {
    let (_sts, d, _acme, dir) = start_acme_with_control(EXTERNAL_ID, |c| {
        c.control.max_ttl = Duration::from_secs(3600);
        c.control.max_tokens = 2;
    })
    .await;
    let socket = dir.socket();
    let refused = |r: &RawResponse, status: u16, code: &str, message: &str| {
        let body = assert_json_error_shape(r, status, code);
        let text = body["Message"].as_str().unwrap_or_default().to_owned();
        assert!(
            text.starts_with(message),
            "{status} {code}: message {text:?} should start with {message:?}"
        );
    };
    let cases: [(&str, u16, &str, &str); 12] = [
        (
            r#"{"mapping": "acme-s3", "ttl_seconds": 3601}"#,
            400,
            "InvalidRequest",
            "ttl_seconds: ",
        ),
        (
            r#"{"mapping": "acme-s3", "ttl_seconds": 0}"#,
            400,
            "InvalidRequest",
            "ttl_seconds: ",
        ),
        (
            r#"{"mapping": "acme-s3", "ttl_seconds": -5}"#,
            400,
            "InvalidRequest",
            "ttl_seconds: ",
        ),
        (
            r#"{"mapping": "acme-s3", "ttl_seconds": "1h"}"#,
            400,
            "InvalidRequest",
            "ttl_seconds: ",
        ),
        (
            r#"{"mapping": "acme-s3", "session_name": "job 8812!"}"#,
            400,
            "InvalidRequest",
            "session_name: ",
        ),
        (
            r#"{"mapping": "acme-s3", "session_name": "x"}"#,
            400,
            "InvalidRequest",
            "session_name: ",
        ),
        (
            r#"{"mapping": "acme-s3", "lease": "forever"}"#,
            400,
            "InvalidRequest",
            "lease: ",
        ),
        (
            r#"{"mapping": "acme-s3", "ttl": 60}"#,
            400,
            "InvalidRequest",
            "ttl: unknown field",
        ),
        (
            r#"{"ttl_seconds": 60}"#,
            400,
            "InvalidRequest",
            "mapping: required",
        ),
        (r#"["acme-s3"]"#, 400, "InvalidRequest", "body: "),
        (r#"{"mapping": "acme-s3""#, 400, "InvalidRequest", "body: "),
        (
            r#"{"mapping": "ghost-s3"}"#,
            404,
            "MappingNotFound",
            "no mapping named 'ghost-s3'",
        ),
    ];
    for (body, status, code, message) in cases {
        let r = mint(&socket, body).await;
        refused(&r, status, code, message);
    }

    // Over 4 KiB: with a declared length, and chunked (read up to the bound).
    let big = format!(r#"{{"mapping": "acme-s3", "pad": "{}"}}"#, "x".repeat(4096));
    refused(
        &mint(&socket, &big).await,
        413,
        "PayloadTooLarge",
        "request body longer",
    );
    let chunked = format!(
        "POST /v1/tokens HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    refused(
        &support::control::control_send_raw(&socket, chunked.as_bytes()).await,
        413,
        "PayloadTooLarge",
        "request body longer",
    );

    // A declared length over the bound is answered at once, without waiting for a
    // body that never comes.
    let declared = "POST /v1/tokens HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n";
    refused(
        &support::control::control_send_raw(&socket, declared.as_bytes()).await,
        413,
        "PayloadTooLarge",
        "request body longer",
    );

    // Unknown id, other methods and paths.
    refused(
        &control_request(&socket, "DELETE", "/v1/tokens/jt_0000000000000000", None).await,
        404,
        "TokenNotFound",
        "no live job token with id 'jt_0000000000000000'",
    );
    let put = control_request(&socket, "PUT", "/v1/tokens", None).await;
    refused(&put, 405, "MethodNotAllowed", "only GET, POST");
    assert_eq!(put.header("allow"), Some("GET, POST"));
    let get_one = control_request(&socket, "GET", "/v1/tokens/jt_0000000000000000", None).await;
    refused(&get_one, 405, "MethodNotAllowed", "only DELETE");
    assert_eq!(get_one.header("allow"), Some("DELETE"));
    refused(
        &control_request(&socket, "GET", "/v1/credentials/acme-s3", None).await,
        404,
        "NotFound",
        "not found",
    );
    assert!(
        d.daemon.jobs().list().is_empty(),
        "a refused request minted"
    );

    // max_tokens: the third live token is refused until one ends.
    let (_, first) = minted(
        &mint(
            &socket,
            r#"{"mapping": "acme-s3", "ttl_seconds": 3600, "session_name": "sync-job-8812"}"#,
        )
        .await,
    );
    minted(&mint(&socket, r#"{"mapping": "acme-s3"}"#).await);
    refused(
        &mint(&socket, r#"{"mapping": "acme-s3"}"#).await,
        429,
        "TooManyTokens",
        "2 job tokens are live",
    );
    let listed = control_request(&socket, "GET", "/v1/tokens", None)
        .await
        .json();
    let listed = listed["tokens"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["session_name"], "sync-job-8812", "{listed:?}");
    assert_eq!(
        control_request(&socket, "DELETE", &format!("/v1/tokens/{first}"), None)
            .await
            .status,
        204
    );
    minted(&mint(&socket, r#"{"mapping": "acme-s3"}"#).await);
    d.stop().await;
}

/// A reload that removes a mapping revokes its job tokens at once (the others stay),
/// and no new ones can be minted for it.
#[tokio::test]
async fn a_reload_removing_a_mapping_revokes_its_tokens() {
    let beta = support::daemon::mapping(
        "beta-s3",
        "beta-sync",
        None,
        &support::daemon::token("beta"),
    );
    let beta_for_config = beta.clone();
    let (sts, d, _acme, dir) = start_acme_with_control(EXTERNAL_ID, move |c| {
        c.mappings.insert("beta-s3".into(), beta_for_config);
    })
    .await;
    let socket = dir.socket();
    let (acme_job, _) = minted(&mint(&socket, r#"{"mapping": "acme-s3"}"#).await);
    let (_, beta_id) = minted(&mint(&socket, r#"{"mapping": "beta-s3"}"#).await);
    assert_eq!(
        get_with_token(d.addr, "/v1/credentials", &acme_job)
            .await
            .status,
        200
    );

    let without_acme = support::daemon::config(&sts.endpoint_url(), vec![beta]);
    d.daemon.apply_config(&without_acme);
    let remaining: Vec<String> = d
        .daemon
        .jobs()
        .list()
        .iter()
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(remaining, [beta_id], "only beta-s3's token is left");
    let r = get_with_token(d.addr, "/v1/credentials", &acme_job).await;
    assert_json_error_shape(&r, 403, "AccessDenied");
    refused_mapping(&mint(&socket, r#"{"mapping": "acme-s3"}"#).await);
    d.stop().await;
}

#[track_caller]
fn refused_mapping(r: &RawResponse) {
    assert_json_error_shape(r, 404, "MappingNotFound");
}

/// A stale socket file (no process behind it) is replaced; a socket a live process
/// answers on, and a regular file, are bind errors naming `control.socket`.
#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    use credvend::daemon::Listeners;
    let dir = SocketDir::new();
    let socket = dir.socket();
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    assert!(socket.exists(), "the stale socket file is there");
    let clock = credvend::clock::ManualClock::starting_now();
    let sts = support::fake_sts::FakeSts::start(std::sync::Arc::new(clock.clone())).await;
    let config = support::daemon::config(
        &sts.endpoint_url(),
        vec![support::daemon::mapping(
            "acme-s3",
            "vendor-sync",
            None,
            &support::daemon::token("acme"),
        )],
    );
    let d = support::control::start_with_control(config.clone(), clock, &socket).await;
    minted(&mint(&socket, r#"{"mapping": "acme-s3"}"#).await);

    // The daemon serves on it now: a second one must not take it over.
    let mut second = config.clone();
    second.control.socket = Some(socket.clone());
    let error = match Listeners::bind_all(&second.server, &second.control).await {
        Ok(_) => panic!("a second daemon bound the live socket"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("(control.socket)") && error.contains(&socket.display().to_string()),
        "{error}"
    );
    assert!(error.contains("another process is serving"), "{error}");
    minted(&mint(&socket, r#"{"mapping": "acme-s3"}"#).await);
    d.stop().await;

    let regular = dir.path().join("regular");
    std::fs::write(&regular, "keep me").unwrap();
    second.control.socket = Some(regular.clone());
    let error = match Listeners::bind_all(&second.server, &second.control).await {
        Ok(_) => panic!("bound over a regular file"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("(control.socket)") && error.contains("not a socket"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&regular).unwrap(), "keep me");
}

/// The daemon as a process (`credvend serve`, JSON logs at `trace`) with `[control]
/// socket` set: the audit line of a vend made with a job token names the token's id
/// and who minted it; the token (and its hash) appears in no log line, `/metrics`,
/// `/status` or `GET /v1/tokens`; SIGTERM removes the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_line_names_the_job_token_and_the_token_is_never_shown() {
    use std::sync::Arc;
    use std::time::Instant;
    const CONFIG_TOKEN: &str = "CANARYCONFIGTOKEN-0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let clock = credvend::clock::ManualClock::starting_now();
    let sts = support::fake_sts::FakeSts::start(Arc::new(clock)).await;
    sts.add_role(support::fake_sts::Role::new(
        "arn:aws:iam::111122223333:role/vendor-sync",
        support::fake_sts::TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    ));
    let dir = SocketDir::new();
    let socket = dir.socket();
    let listen = support::e2e::free_loopback_addr();
    let admin = support::e2e::free_loopback_addr();
    let config = dir.path().join("credvend.toml");
    support::e2e::write_private_file(
        &config,
        &format!(
            r#"
[server]
listen = ["{listen}"]
admin_listen = "{admin}"

[refresh]
cold_wait = "10s"

[control]
socket = "{socket}"
{sts_and_acme}
# A role the fake STS does not know: every AssumeRole is refused.
[mappings.ghost-s3]
role_arn = "arn:aws:iam::111122223333:role/ghost"
external_id = "{EXTERNAL_ID}"
token_sha256 = ["{ghost_hash}"]
"#,
            ghost_hash = credvend::secret::TokenHash::of_token(b"ghost-config-token").to_hex(),
            socket = socket.display(),
            sts_and_acme = support::config_file::sts_and_acme_toml(
                &sts.endpoint_url(),
                EXTERNAL_ID,
                CONFIG_TOKEN
            ),
        ),
    );
    let log_path = dir.path().join("stderr.log");
    let mut command = credvend_serve(&config, dir.path(), "trace", "vendor-base-secret");
    command.args(["--log-format", "json"]);
    let mut child = support::e2e::ChildGuard::spawn("credvend", command, &log_path);
    let log_so_far = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(admin).await.is_err() || !socket.exists() {
        if let Some(exit) = child.exit_status() {
            panic!("credvend exited ({exit}) before serving:\n{}", log_so_far());
        }
        assert!(
            Instant::now() < deadline,
            "not serving within 60 s:\n{}",
            log_so_far()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let answer = mint(&socket, r#"{"mapping": "acme-s3", "ttl_seconds": 600}"#).await;
    let (token, id) = minted(&answer);
    assert_eq!(
        answer.json()["credentials_uri"],
        format!("http://{listen}/v1/credentials/acme-s3")
    );
    let path = "/v1/credentials/acme-s3";
    let by_job = get_with_token(listen, path, &token).await;
    assert_eq!(by_job.status, 200, "{}", by_job.body);
    let by_config = get_with_token(listen, "/v1/credentials", CONFIG_TOKEN).await;
    assert_eq!(by_config.status, 200, "{}", by_config.body);
    // A job token that authorises a request STS then refuses: the refusal names it.
    let (ghost_token, ghost_id) = minted(
        &mint(
            &socket,
            r#"{"mapping": "ghost-s3", "session_name": "sync-job-1"}"#,
        )
        .await,
    );
    let ghost = get_with_token(listen, "/v1/credentials", &ghost_token).await;
    assert_json_error_shape(&ghost, 403, "AssumeRoleDenied");
    let listed = control_request(&socket, "GET", "/v1/tokens", None)
        .await
        .body;
    let metrics = support::http::request(admin, "GET", "/metrics", &[])
        .await
        .body;
    let status = support::http::request(admin, "GET", "/status", &[])
        .await
        .body;
    let deleted = control_request(&socket, "DELETE", &format!("/v1/tokens/{id}"), None).await;
    assert_eq!(deleted.status, 204);
    let after = get_with_token(listen, path, &token).await;
    assert_eq!(after.status, 403);

    let exit = tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(0),
        "SIGTERM: {}",
        log_so_far()
    );
    assert!(!socket.exists(), "the socket outlived the daemon");
    let log = log_so_far();

    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let audit: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "credvend::audit")
        .collect();
    assert_eq!(audit.len(), 4, "{log}");
    let (job_line, config_line, ghost_line, refused_line) =
        (audit[0], audit[1], audit[2], audit[3]);
    assert_eq!(
        ghost_line["message"], "Credential request refused",
        "{ghost_line}"
    );
    assert_eq!(ghost_line["code"], "AssumeRoleDenied", "{ghost_line}");
    assert_eq!(ghost_line["mapping"], "ghost-s3", "{ghost_line}");
    assert_eq!(
        ghost_line["job_token_id"],
        ghost_id.as_str(),
        "{ghost_line}"
    );
    assert_eq!(
        ghost_line["minted_by_pid"],
        std::process::id(),
        "{ghost_line}"
    );
    assert_eq!(job_line["message"], "Credentials served", "{job_line}");
    assert_eq!(job_line["job_token_id"], id.as_str(), "{job_line}");
    assert_eq!(
        job_line["minted_by_uid"],
        rustix::process::getuid().as_raw(),
        "{job_line}"
    );
    assert_eq!(job_line["minted_by_pid"], std::process::id(), "{job_line}");
    for line in [config_line, refused_line] {
        for field in ["job_token_id", "minted_by_uid", "minted_by_pid"] {
            assert!(line.get(field).is_none(), "{field} on {line}");
        }
    }
    assert_eq!(refused_line["status"], 403, "{refused_line}");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "Job token minted" && l["id"] == id.as_str()),
        "{log}"
    );

    for token in [&token, &ghost_token] {
        let hash = credvend::secret::TokenHash::of_token(token.as_bytes()).to_hex();
        for (what, text) in [
            ("the log", log.as_str()),
            ("/metrics", metrics.as_str()),
            ("/status", status.as_str()),
            ("GET /v1/tokens", listed.as_str()),
        ] {
            assert!(
                !text.contains(token.as_str()),
                "a job token leaked into {what}"
            );
            assert!(
                !text.contains(&token[4..]),
                "a job token's digits leaked into {what}"
            );
            assert!(
                !text.contains(&hash),
                "a job token's hash leaked into {what}"
            );
        }
    }
    assert!(
        listed.contains(&id),
        "GET /v1/tokens lists the id: {listed}"
    );
}
