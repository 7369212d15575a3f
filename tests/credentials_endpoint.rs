//! The credential endpoint end to end: real listeners, the real STS client, the fake
//! STS, a manual clock. Wire contract (DESIGN.md §2) and lifecycle (§3).

mod support;

use std::time::{Duration, SystemTime};

use credvend::cache::MappingState;
use credvend::clock::Clock;

use support::daemon::{self, eventually, mapping, role_arn, token};
use support::fake_sts::{Fault, Role, TrustRule};
use support::http::{get_with_token, request};

const EXTERNAL_ID: &str = "Xk3-acme-external-id-0123456789";

fn acme_role() -> Role {
    Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    )
}

fn parse_expiration(value: &str) -> SystemTime {
    humantime::parse_rfc3339(value).unwrap_or_else(|e| panic!("bad Expiration {value:?}: {e}"))
}

#[tokio::test]
async fn success_is_the_exact_ecs_json_with_the_external_id_sent() {
    let (sts, d, token) = daemon::start_acme(EXTERNAL_ID).await;

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
    let acme = token("acme");
    let beta = token("beta");
    let (sts, d) = daemon::start_with_sts(vec![
        mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &acme),
        mapping("beta-s3", "beta-sync", None, &beta),
    ])
    .await;
    sts.add_role(acme_role());
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

fn assert_error(r: &support::http::RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["code"], code, "{}", r.body);
    assert_eq!(body["Code"], code);
    assert_eq!(body["message"], body["Message"]);
    assert!(!body["message"].as_str().unwrap().is_empty());
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "exactly code, message, Code, Message");
}

#[tokio::test]
async fn errors_have_documented_statuses_codes_and_bodies() {
    let acme = token("acme");
    let beta = token("beta");
    let (sts, d) = daemon::start_with_sts(vec![
        mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &acme),
        mapping("beta-s3", "beta-sync", None, &beta),
    ])
    .await;
    sts.add_role(acme_role());
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

    for proxy in ["X-Forwarded-For", "Forwarded", "X-Real-IP"] {
        let r = request(
            d.addr,
            "GET",
            path,
            &[("Authorization", &acme), (proxy, "10.0.0.1")],
        )
        .await;
        assert_error(&r, 403, "ProxiedRequestRejected");
    }
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

    assert_eq!(
        sts.assume_role_calls().len(),
        1,
        "only the first 200 reached STS; nothing refused did"
    );
    d.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_cold_requests_make_one_assume_role() {
    let (sts, d, token) = daemon::start_acme(EXTERNAL_ID).await;
    // Slow STS widens the window in which every request is a miss.
    sts.push_fault(Fault::Latency(Duration::from_millis(300)));

    let mut tasks = Vec::new();
    for _ in 0..200 {
        let token = token.clone();
        let addr = d.addr;
        tasks.push(tokio::spawn(async move {
            get_with_token(addr, "/v1/credentials/acme-s3", &token).await
        }));
    }
    let mut keys = std::collections::HashSet::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        keys.insert(r.json()["AccessKeyId"].as_str().unwrap().to_string());
    }
    assert_eq!(sts.assume_role_calls().len(), 1);
    assert_eq!(
        sts.faults_fired(),
        vec![Fault::Latency(Duration::from_millis(300))]
    );
    assert_eq!(keys.len(), 1, "everyone got the same credential");
    d.stop().await;
}

#[tokio::test]
async fn refresh_happens_in_the_background_and_every_served_credential_has_min_remaining() {
    let (sts, d, token) = daemon::start_acme(EXTERNAL_ID).await;
    let path = "/v1/credentials/acme-s3";

    let first = get_with_token(d.addr, path, &token).await.json();
    let first_expiry = parse_expiration(first["Expiration"].as_str().unwrap());
    let mut last_key = first["AccessKeyId"].as_str().unwrap().to_string();
    let mut refreshes = 0;

    // Walk six hours in 2-minute steps, requesting at every step.
    for _ in 0..180 {
        d.clock.advance(Duration::from_secs(120));
        let calls_before = sts.assume_role_calls().len();
        let r = get_with_token(d.addr, path, &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let body = r.json();
        let left = parse_expiration(body["Expiration"].as_str().unwrap())
            .duration_since(d.clock.now())
            .unwrap_or_default();
        assert!(
            left >= Duration::from_secs(20 * 60),
            "served a credential with only {left:?} left"
        );
        let key = body["AccessKeyId"].as_str().unwrap().to_string();
        if key != last_key {
            refreshes += 1;
            last_key = key;
        }
        // Requests never wait on STS: any call in this step was the scheduler's.
        assert!(sts.assume_role_calls().len() <= calls_before + 1);
        // A refresh takes milliseconds against minutes of clock steps: let it land
        // before moving time again, as it would in real time.
        eventually("no fetch in flight", || {
            !matches!(
                d.daemon.cache.status()[0].state,
                MappingState::Refreshing | MappingState::Fetching
            )
        })
        .await;
    }
    // 6 h of 1 h sessions refreshed 35 min (+ up to 3.5 min jitter) early, observed on
    // a 2-minute grid: one every 22 to 26 minutes.
    assert!(
        (13..=17).contains(&refreshes),
        "{refreshes} refreshes in 6 h"
    );
    assert!(first_expiry < d.clock.now());
    d.stop().await;
}

#[tokio::test]
async fn refresh_is_ahead_of_time_and_requests_do_not_wait_for_it() {
    let (sts, d, token) = daemon::start_acme(EXTERNAL_ID).await;
    let path = "/v1/credentials/acme-s3";
    let first = get_with_token(d.addr, path, &token).await.json();

    // The refresh will be slow; requests during it must still be answered from cache.
    sts.push_fault(Fault::Latency(Duration::from_secs(3)));
    // 26 minutes in: past the refresh point (60 - 35 = 25 min, jitter only earlier).
    d.clock.advance(Duration::from_secs(26 * 60));
    eventually("background refresh in flight", || {
        d.daemon.cache.status()[0].state == MappingState::Refreshing
    })
    .await;
    let started = tokio::time::Instant::now();
    let during = get_with_token(d.addr, path, &token).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "request waited on the refresh"
    );
    assert_eq!(during.json()["AccessKeyId"], first["AccessKeyId"]);
    eventually("refresh published", || {
        d.daemon.cache.status()[0].access_key_id.as_deref() != first["AccessKeyId"].as_str()
    })
    .await;
    let after = get_with_token(d.addr, path, &token).await.json();
    assert_ne!(after["AccessKeyId"], first["AccessKeyId"]);
    assert_eq!(sts.assume_role_calls().len(), 2);
    assert_eq!(sts.faults_fired().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn sts_failing_keeps_serving_the_cached_credential_then_recovers() {
    let (sts, d, token) = daemon::start_acme(EXTERNAL_ID).await;
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
    let (sts, d, token) = daemon::start_acme(EXTERNAL_ID).await;
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
    let (sts, d, token) = daemon::start_acme(EXTERNAL_ID).await;
    sts.push_fault(Fault::Latency(Duration::from_millis(1500)));
    let path = "/v1/credentials/acme-s3";

    let r = get_with_token(d.addr, path, &token).await;
    assert_error(&r, 503, "CredentialsUnavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    eventually("fetch completed in the background", || {
        d.daemon.cache.status()[0].state == MappingState::Fresh
    })
    .await;
    let r = get_with_token(d.addr, path, &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(sts.assume_role_calls().len(), 1);
    assert_eq!(sts.faults_fired().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn shutdown_completes_requests_in_flight() {
    let (sts, mut d, token) = daemon::start_acme(EXTERNAL_ID).await;
    sts.push_fault(Fault::Latency(Duration::from_millis(500)));
    let addr = d.addr;
    let in_flight = tokio::spawn({
        let token = token.clone();
        async move { get_with_token(addr, "/v1/credentials/acme-s3", &token).await }
    });
    eventually("request waiting on STS", || {
        d.daemon.cache.status()[0].state == MappingState::Fetching
    })
    .await;
    let stopped = d.begin_shutdown();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("daemon stopped")
        .unwrap();
    // New connections are refused once stopped.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
