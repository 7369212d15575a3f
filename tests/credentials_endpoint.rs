//! The credential endpoint end to end: real listeners, the real STS client, the fake
//! STS, a manual clock. docs/design.md, Wire contract and Credential lifecycle.

mod support;

use std::time::{Duration, SystemTime};

use credvend::clock::Clock;
use credvend::config::Config;
use credvend::model::MappingState;

use support::daemon::{self, TestDaemon, eventually, mapping, role_arn, token};
use support::fake_sts::{FakeSts, Fault, Role, TrustRule};
use support::http::{RawResponse, get_with_token, request, spawn_gets};

const EXTERNAL_ID: &str = "Xk3-acme-external-id-0123456789";

/// `cold_wait` of every test here that is not about `cold_wait`: the most a config may
/// set. A cold request then waits for STS as long as a loaded machine needs, so a 503
/// only ever means what a test made it mean.
const PATIENT_COLD_WAIT: Duration = Duration::from_secs(10);

/// `sts.call_timeout` of the tests that hold AssumeRole calls at the fake STS: a held
/// call ends when the test releases it, never because the SDK gave up first.
const HELD_CALL_TIMEOUT: Duration = Duration::from_secs(300);

fn acme_role() -> Role {
    Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    )
}

/// Mapping `acme-s3` → role `vendor-sync` (External ID required), with
/// [`PATIENT_COLD_WAIT`] and then `tweak` applied to the config.
async fn start_acme_and(tweak: impl FnOnce(&mut Config)) -> (FakeSts, TestDaemon, String) {
    let token = token("acme");
    let (sts, d) = daemon::start_with_sts_and(
        vec![mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &token)],
        |c| {
            c.refresh.cold_wait = PATIENT_COLD_WAIT;
            tweak(c);
        },
    )
    .await;
    sts.add_role(acme_role());
    (sts, d, token)
}

async fn start_acme() -> (FakeSts, TestDaemon, String) {
    start_acme_and(|_| {}).await
}

/// [`start_acme`] plus mapping `beta-s3` → role `beta-sync` (no External ID), whose
/// role the fake STS does not know until the test adds it. Returns the two tokens.
async fn start_acme_and_beta() -> (FakeSts, TestDaemon, String, String) {
    let acme = token("acme");
    let beta = token("beta");
    let (sts, d) = daemon::start_with_sts_and(
        vec![
            mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &acme),
            mapping("beta-s3", "beta-sync", None, &beta),
        ],
        |c| c.refresh.cold_wait = PATIENT_COLD_WAIT,
    )
    .await;
    sts.add_role(acme_role());
    (sts, d, acme, beta)
}

/// `credvend_credentials_served_total{mapping="acme-s3",source=…}` right now: how many
/// requests were answered from `source` (`cache`, `fresh` or `degraded`).
fn served_from(d: &TestDaemon, source: &str) -> u64 {
    let text = d.daemon.metrics().render();
    let labels = [
        r#"mapping="acme-s3""#.to_string(),
        format!(r#"source="{source}""#),
    ];
    text.lines()
        .filter(|l| l.starts_with("credvend_credentials_served_total{"))
        .find(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no served_total series for source {source} in:\n{text}"))
}

/// `n` concurrent `GET /v1/credentials/acme-s3`, answered in any order.
async fn concurrent_requests(d: &TestDaemon, token: &str, n: usize) -> Vec<RawResponse> {
    let tasks = spawn_gets(d.addr, "/v1/credentials/acme-s3", token, n);
    let mut responses = Vec::with_capacity(n);
    for task in tasks {
        responses.push(task.await.expect("request task"));
    }
    responses
}

fn parse_expiration(value: &str) -> SystemTime {
    humantime::parse_rfc3339(value).unwrap_or_else(|e| panic!("bad Expiration {value:?}: {e}"))
}

#[tokio::test]
async fn success_is_the_exact_ecs_json_with_the_external_id_sent() {
    let (sts, d, token) = start_acme().await;

    let r = get_with_token(d.addr, "/v1/credentials/acme-s3", &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.raw.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.header("content-encoding"), None);

    let body = r.json();
    let object = body.as_object().expect("one JSON object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut expected = vec![
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "Expiration",
        "AccountId",
        "RoleArn",
    ];
    expected.sort();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "exact key set, no Code");
    assert!(
        object.values().all(|v| v.is_string()),
        "all values are strings"
    );
    assert!(body["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert_eq!(body["AccountId"], "111122223333");
    assert_eq!(body["RoleArn"], role_arn("vendor-sync"));

    let expiration = body["Expiration"].as_str().unwrap();
    assert_eq!(expiration.len(), 20, "YYYY-MM-DDTHH:MM:SSZ: {expiration}");
    assert!(expiration.ends_with('Z') && !expiration.contains('.'));
    let left = parse_expiration(expiration)
        .duration_since(d.clock.now())
        .unwrap();
    assert!(left >= Duration::from_secs(20 * 60), "only {left:?} left");

    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].external_id.as_deref(), Some(EXTERNAL_ID));
    assert_eq!(
        calls[0].role_arn.as_deref(),
        Some(role_arn("vendor-sync").as_str())
    );
    assert_eq!(calls[0].session_name.as_deref(), Some("credvend-acme-s3"));
    assert_eq!(calls[0].duration_seconds, Some(3600));
    assert_eq!(
        calls[0].issued_access_key_id.as_deref(),
        body["AccessKeyId"].as_str()
    );

    // Second request: from cache, same credential, no STS call.
    let again = get_with_token(d.addr, "/v1/credentials/acme-s3", &token).await;
    assert_eq!(again.json()["AccessKeyId"], body["AccessKeyId"]);
    assert_eq!(sts.assume_role_calls().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn mapping_is_resolved_from_the_token_and_query_strings_are_ignored() {
    let (sts, d, acme, beta) = start_acme_and_beta().await;
    sts.add_role(Role::new(
        role_arn("beta-sync"),
        TrustRule::NoExternalIdRequired,
    ));

    let r = get_with_token(d.addr, "/v1/credentials?x=1", &beta).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["RoleArn"], role_arn("beta-sync"));
    let r = get_with_token(d.addr, "/v1/credentials/acme-s3?param=abc", &acme).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["RoleArn"], role_arn("vendor-sync"));
    let beta_call = sts
        .assume_role_calls()
        .into_iter()
        .find(|c| c.role_arn.as_deref() == Some(role_arn("beta-sync").as_str()))
        .unwrap();
    assert_eq!(
        beta_call.external_id, None,
        "no ExternalId parameter at all"
    );

    // HEAD: same status and headers, no body.
    let head = request(
        d.addr,
        "HEAD",
        "/v1/credentials/acme-s3",
        &[("Authorization", &acme)],
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert!(head.body.is_empty());
    d.stop().await;
}

#[track_caller]
fn assert_error(r: &support::http::RawResponse, status: u16, code: &str) {
    let body = support::http::assert_json_error_shape(r, status, code);
    assert!(!body["message"].as_str().unwrap().is_empty());
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "exactly code, message, Code, Message");
}

#[tokio::test]
async fn errors_have_documented_statuses_codes_and_bodies() {
    let (sts, d, acme, beta) = start_acme_and_beta().await;
    let path = "/v1/credentials/acme-s3";

    assert_error(
        &request(d.addr, "GET", path, &[]).await,
        401,
        "Unauthorized",
    );
    // Another mapping's token, a wrong token, an unknown mapping: indistinguishable.
    let wrong_mapping = get_with_token(d.addr, path, &beta).await;
    assert_error(&wrong_mapping, 403, "AccessDenied");
    let wrong_token = get_with_token(d.addr, path, "nope").await;
    assert_error(&wrong_token, 403, "AccessDenied");
    assert_eq!(wrong_mapping.body, wrong_token.body);
    let unknown = get_with_token(d.addr, "/v1/credentials/ghost", &acme).await;
    assert_error(&unknown, 403, "AccessDenied");
    assert_eq!(
        unknown.body.replace("ghost", "X"),
        wrong_token.body.replace("acme-s3", "X")
    );
    // A token is compared verbatim: no Bearer prefix, no trimming.
    assert_error(
        &get_with_token(d.addr, path, &format!("Bearer {acme}")).await,
        403,
        "AccessDenied",
    );
    assert_error(
        &get_with_token(d.addr, "/v1/credentials", "nope").await,
        403,
        "AccessDenied",
    );

    // Any header a proxy adds means a proxy forwarded the request (SSRF), with a valid
    // token and Host; counted as `proxied_request`.
    let proxied = [
        ("X-Forwarded-For", "10.0.0.1"),
        ("Forwarded", "for=10.0.0.1"),
        ("X-Real-IP", "10.0.0.1"),
        ("Via", "1.1 squid"),
        ("X-Forwarded-Host", "127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
    ];
    for (proxy, value) in proxied {
        let r = request(
            d.addr,
            "GET",
            path,
            &[("Authorization", &acme), (proxy, value)],
        )
        .await;
        assert_eq!(r.status, 403, "{proxy} was not refused");
        assert_error(&r, 403, "ProxiedRequestRejected");
    }
    let metrics = d.daemon.metrics().render();
    assert!(
        metrics.contains(&format!(
            "credvend_auth_failures_total{{reason=\"proxied_request\"}} {}\n",
            proxied.len()
        )),
        "each proxied request counted as proxied_request:\n{metrics}"
    );
    let r = request(
        d.addr,
        "GET",
        path,
        &[("Authorization", &acme), ("Host", "evil.example.com")],
    )
    .await;
    assert_error(&r, 403, "InvalidHost");
    for host in ["localhost", "localhost:8901", "127.0.0.1"] {
        let r = request(
            d.addr,
            "GET",
            path,
            &[("Authorization", &acme), ("Host", host)],
        )
        .await;
        assert_eq!(r.status, 200, "Host {host}: {}", r.body);
    }

    assert_error(
        &get_with_token(d.addr, "/latest/meta-data", &acme).await,
        404,
        "NotFound",
    );
    let r = request(d.addr, "POST", path, &[("Authorization", &acme)]).await;
    assert_error(&r, 405, "MethodNotAllowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    sts.assert_assume_role_calls(1, "only the first 200 reached STS; nothing refused did");
    d.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_cold_requests_make_one_assume_role() {
    let (sts, d, token) = start_acme_and(|c| {
        c.refresh.cold_wait = Duration::from_secs(1);
        c.sts.call_timeout = HELD_CALL_TIMEOUT;
    })
    .await;
    // STS holds the fetch until every request has given up on it: all 200 are cold
    // misses, concurrent with the one fetch in flight, however slow the machine is.
    let hold = sts.hold_assume_role();
    for r in concurrent_requests(&d, &token, 200).await {
        assert_error(&r, 503, "CredentialsUnavailable");
    }
    assert_eq!(
        hold.held(),
        1,
        "200 concurrent cold misses reached STS as one AssumeRole"
    );
    assert!(sts.assume_role_calls().is_empty(), "nothing answered yet");

    // The fetch outlived the requests that gave up on it; its credential is everyone's.
    hold.release();
    eventually("the held fetch published", || {
        d.daemon.cache.status()[0].state == MappingState::Fresh
    })
    .await;
    let mut keys = std::collections::HashSet::new();
    for r in concurrent_requests(&d, &token, 200).await {
        assert_eq!(r.status, 200, "{}", r.body);
        keys.insert(r.json()["AccessKeyId"].as_str().unwrap().to_string());
    }
    assert_eq!(keys.len(), 1, "everyone got the same credential");
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].issued_access_key_id.as_ref(), keys.iter().next());
    assert_eq!(sts.faults_fired(), vec![]);
    d.stop().await;
}

#[tokio::test]
async fn refresh_happens_in_the_background_and_every_served_credential_has_min_remaining() {
    let (sts, d, token) = start_acme_and(|c| c.sts.call_timeout = HELD_CALL_TIMEOUT).await;
    let path = "/v1/credentials/acme-s3";

    let first = get_with_token(d.addr, path, &token).await.json();
    let first_expiry = parse_expiration(first["Expiration"].as_str().unwrap());
    let mut last_key = first["AccessKeyId"].as_str().unwrap().to_string();
    let mut refreshes = 0;

    // Walk six hours in 2-minute steps, requesting at every step. STS is held during
    // each request: a request that waited on STS would wait out `cold_wait` and not be
    // served from the cache.
    for step in 1..=180 {
        let due_at = d.daemon.cache.status()[0]
            .next_refresh
            .expect("a fresh credential has its refresh scheduled");
        let hold = sts.hold_assume_role();
        d.clock.advance(Duration::from_secs(120));
        let due = due_at <= d.clock.now();
        if due {
            eventually("the due refresh reached STS", || hold.held() == 1).await;
        }
        let calls_before = sts.assume_role_calls().len();
        let from_cache = served_from(&d, "cache");

        let r = get_with_token(d.addr, path, &token).await;
        assert_eq!(r.status, 200, "step {step}: {}", r.body);
        let body = r.json();
        let left = parse_expiration(body["Expiration"].as_str().unwrap())
            .duration_since(d.clock.now())
            .unwrap_or_default();
        assert!(
            left >= Duration::from_secs(20 * 60),
            "step {step}: served a credential with only {left:?} left"
        );
        assert_eq!(
            body["AccessKeyId"].as_str(),
            Some(last_key.as_str()),
            "step {step}: the cached credential, while any refresh is still held at STS"
        );
        assert_eq!(
            served_from(&d, "cache"),
            from_cache + 1,
            "step {step}: the request was not answered from the cache"
        );
        // The only STS call of a step is the scheduler's, and only when it was due.
        assert_eq!(sts.assume_role_calls().len(), calls_before);
        assert_eq!(
            hold.held(),
            usize::from(due),
            "step {step}: refresh due: {due}"
        );

        hold.release();
        if due {
            eventually("the refresh published", || {
                let status = &d.daemon.cache.status()[0];
                status.state == MappingState::Fresh
                    && status.access_key_id.as_deref() != Some(last_key.as_str())
            })
            .await;
            refreshes += 1;
            last_key = d.daemon.cache.status()[0].access_key_id.clone().unwrap();
        }
    }
    // 6 h of 1 h sessions refreshed 35 min (+ up to 3.5 min jitter) early, observed on
    // a 2-minute grid: one every 22 to 26 minutes.
    assert!(
        (13..=17).contains(&refreshes),
        "{refreshes} refreshes in 6 h"
    );
    assert_eq!(sts.assume_role_calls().len(), 1 + refreshes);
    assert!(first_expiry < d.clock.now());
    d.stop().await;
}

#[tokio::test]
async fn refresh_is_ahead_of_time_and_requests_do_not_wait_for_it() {
    let (sts, d, token) = start_acme_and(|c| c.sts.call_timeout = HELD_CALL_TIMEOUT).await;
    let path = "/v1/credentials/acme-s3";
    let first = get_with_token(d.addr, path, &token).await.json();

    // The refresh is held at STS until the request below has been answered.
    let hold = sts.hold_assume_role();
    // 26 minutes in: past the refresh point (60 - 35 = 25 min, jitter only earlier).
    d.clock.advance(Duration::from_secs(26 * 60));
    eventually("background refresh held at STS", || {
        hold.held() == 1 && d.daemon.cache.status()[0].state == MappingState::Refreshing
    })
    .await;
    let from_cache = served_from(&d, "cache");
    let during = get_with_token(d.addr, path, &token).await;
    assert_eq!(during.status, 200, "{}", during.body);
    assert_eq!(during.json()["AccessKeyId"], first["AccessKeyId"]);
    assert_eq!(
        served_from(&d, "cache"),
        from_cache + 1,
        "the request waited on the refresh instead of being answered from the cache"
    );
    assert_eq!(hold.held(), 1, "the refresh is still held");

    hold.release();
    eventually("refresh published", || {
        d.daemon.cache.status()[0].access_key_id.as_deref() != first["AccessKeyId"].as_str()
    })
    .await;
    let after = get_with_token(d.addr, path, &token).await.json();
    assert_ne!(after["AccessKeyId"], first["AccessKeyId"]);
    assert_eq!(sts.assume_role_calls().len(), 2);
    assert_eq!(sts.faults_fired(), vec![]);
    d.stop().await;
}

#[tokio::test]
async fn sts_failing_keeps_serving_the_cached_credential_then_recovers() {
    let (sts, d, token) = start_acme().await;
    let path = "/v1/credentials/acme-s3";
    let first = get_with_token(d.addr, path, &token).await.json();

    sts.set_persistent_fault(Some(Fault::InternalError));
    d.clock.advance(Duration::from_secs(26 * 60));
    eventually("refresh attempted and failed", || {
        sts.faults_fired().contains(&Fault::InternalError)
    })
    .await;
    eventually("degraded", || {
        d.daemon.cache.status()[0].state == MappingState::Degraded
    })
    .await;
    // Past min_remaining (40 min in, 20 left) the credential is still served, degraded.
    d.clock.advance(Duration::from_secs(15 * 60));
    let r = get_with_token(d.addr, path, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["AccessKeyId"], first["AccessKeyId"]);

    sts.set_persistent_fault(None);
    // The next retry is at most one backoff cap (60 s) away.
    d.clock.advance(Duration::from_secs(61));
    eventually("recovered", || {
        d.daemon.cache.status()[0].state == MappingState::Fresh
    })
    .await;
    let r = get_with_token(d.addr, path, &token).await.json();
    assert_ne!(r["AccessKeyId"], first["AccessKeyId"]);
    d.stop().await;
}

#[tokio::test]
async fn access_denied_evicts_and_answers_assume_role_denied() {
    let (sts, d, token) = start_acme().await;
    let path = "/v1/credentials/acme-s3";
    assert_eq!(get_with_token(d.addr, path, &token).await.status, 200);

    // The customer revokes trust: the next refresh is denied.
    sts.set_role_fault(&role_arn("vendor-sync"), Some(Fault::AccessDenied));
    d.clock.advance(Duration::from_secs(26 * 60));
    eventually("refresh denied", || {
        sts.faults_fired().contains(&Fault::AccessDenied)
    })
    .await;
    eventually("failed state", || {
        d.daemon.cache.status()[0].state == MappingState::Failed
    })
    .await;
    let r = get_with_token(d.addr, path, &token).await;
    assert_error(&r, 403, "AssumeRoleDenied");
    assert!(r.json()["message"].as_str().unwrap().contains("acme-s3"));
    // Negatively cached: the request did not call STS again.
    assert_eq!(sts.assume_role_calls().len(), 2);
    d.stop().await;
}

#[tokio::test]
async fn cold_miss_slower_than_cold_wait_is_503_then_served_from_cache() {
    let (sts, d, token) = start_acme_and(|c| {
        c.refresh.cold_wait = Duration::from_millis(800);
        c.sts.call_timeout = HELD_CALL_TIMEOUT;
    })
    .await;
    let path = "/v1/credentials/acme-s3";
    // STS answers only once the request has given up: slower than cold_wait by
    // construction.
    let hold = sts.hold_assume_role();

    let r = get_with_token(d.addr, path, &token).await;
    assert_error(&r, 503, "CredentialsUnavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(hold.held(), 1, "the request gave up, the fetch did not");
    hold.release();
    eventually("fetch completed in the background", || {
        d.daemon.cache.status()[0].state == MappingState::Fresh
    })
    .await;
    let r = get_with_token(d.addr, path, &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(sts.assume_role_calls().len(), 1);
    assert_eq!(sts.faults_fired(), vec![]);
    d.stop().await;
}

#[tokio::test]
async fn shutdown_completes_requests_in_flight() {
    let (sts, mut d, token) = start_acme_and(|c| {
        c.sts.call_timeout = HELD_CALL_TIMEOUT;
        // The grace period is not what this test is about: longer than it can take.
        c.server.shutdown_grace = Duration::from_secs(120);
    })
    .await;
    let hold = sts.hold_assume_role();
    let addr = d.addr;
    let in_flight = tokio::spawn({
        let token = token.clone();
        async move { get_with_token(addr, "/v1/credentials/acme-s3", &token).await }
    });
    eventually("request waiting on STS", || {
        hold.held() == 1 && d.daemon.cache.status()[0].state == MappingState::Fetching
    })
    .await;
    let stopped = d.begin_shutdown();
    // STS answers only once the daemon has stopped listening: the request is in flight
    // across the shutdown.
    eventually("the listener closed", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    hold.release();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::timeout(Duration::from_secs(30), stopped)
        .await
        .expect("daemon stopped")
        .unwrap();
    // New connections are refused once stopped.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
