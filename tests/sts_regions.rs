//! STS regional failover (docs/design.md, Regional failover; src/creds/regions.rs)
//! end to end: a whole daemon, the real STS client, and two in-process fake STS, one
//! per region: the primary `us-east-1` and the fallback `us-west-2`
//! (`[sts.endpoint_urls]`). Each test asserts which fault fired at which fake, and
//! which fake answered (its call records, the SigV4 signing region, the key it issued).
//!
//! Time is a [`ManualClock`] shared by the daemon (the breakers' cool-down) and both
//! fakes; no test waits on real time passing.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use credvend::aws_names::Region;
use credvend::clock::ManualClock;
use credvend::config::Mapping;
use credvend::creds::regions::{COOL_DOWN, FAILURE_THRESHOLD};
use credvend::model::MappingState;

use support::daemon::{TestDaemon, config, mapping, role_arn, settled, token};
use support::fake_sts::{FakeSts, Fault, Role, StsCall, TrustRule};
use support::http::{RawResponse, get_with_token, request};

const EXTERNAL_ID: &str = "Xk3-acme-external-id-0123456789";
const PRIMARY: &str = "us-east-1";
const FALLBACK: &str = "us-west-2";
const MIN: Duration = Duration::from_secs(60);

struct Setup {
    primary: FakeSts,
    fallback: FakeSts,
    d: TestDaemon,
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

/// Mappings `m0` … `m{n-1}` (token `token("m{i}")`) on one role, trusted at both fakes.
/// The primary's endpoint is `primary_url` when given (a dead port), else its fake's.
async fn start(n: usize, primary_url: Option<String>) -> Setup {
    let clock = ManualClock::starting_now();
    let primary = FakeSts::start(Arc::new(clock.clone())).await;
    let fallback = FakeSts::start(Arc::new(clock.clone())).await;
    for sts in [&primary, &fallback] {
        sts.add_role(Role::new(
            role_arn("vendor-sync"),
            TrustRule::RequireExternalId(EXTERNAL_ID.into()),
        ));
    }
    let mappings: Vec<Mapping> = names(n)
        .iter()
        .map(|name| mapping(name, "vendor-sync", Some(EXTERNAL_ID), &token(name)))
        .collect();
    let mut config = config(
        &primary_url.unwrap_or_else(|| primary.endpoint_url()),
        mappings,
    );
    config.refresh.cold_wait = Duration::from_secs(10);
    config.sts.fallback_regions = vec![Region::try_from(FALLBACK.to_owned()).unwrap()];
    config.sts.endpoint_urls = BTreeMap::from([(FALLBACK.to_owned(), fallback.endpoint_url())]);
    let d = TestDaemon::start(config, clock).await;
    Setup {
        primary,
        fallback,
        d,
    }
}

async fn get(d: &TestDaemon, name: &str) -> RawResponse {
    get_with_token(d.addr, &format!("/v1/credentials/{name}"), &token(name)).await
}

fn key(r: &RawResponse) -> String {
    r.json()["AccessKeyId"].as_str().unwrap().to_string()
}

fn calls(sts: &FakeSts) -> Vec<StsCall> {
    sts.assume_role_calls()
}

/// `/status` `sts_regions`, by region.
async fn regions(d: &TestDaemon) -> BTreeMap<String, serde_json::Value> {
    let r = request(d.admin, "GET", "/status", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["sts_regions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sts_regions in /status: {}", r.body))
        .iter()
        .map(|v| (v["region"].as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

/// The value of one sample of `/metrics`, e.g.
/// `credvend_sts_region_healthy{region="us-east-1"}`.
async fn metric(d: &TestDaemon, series: &str) -> Option<f64> {
    let text = request(d.admin, "GET", "/metrics", &[]).await.body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn duration_count(region: &str, result: &str) -> String {
    format!(
        "credvend_assume_role_duration_seconds_count{{region=\"{region}\",result=\"{result}\"}}"
    )
}

#[tokio::test]
async fn primary_down_vends_via_the_fallback_with_no_client_visible_error() {
    let Setup {
        primary,
        fallback,
        d,
    } = start(1, None).await;
    primary.set_persistent_fault(Some(Fault::ServiceUnavailable));

    let r = get(&d, "m0").await;
    assert_eq!(r.status, 200, "the client sees no error: {}", r.body);

    // The primary was asked once and its fault fired; the fallback answered.
    assert_eq!(primary.faults_fired(), vec![Fault::ServiceUnavailable]);
    let asked = calls(&primary);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].status, Some(503));
    assert_eq!(asked[0].signing_region.as_deref(), Some(PRIMARY));
    let answered = calls(&fallback);
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0].fault, None);
    assert_eq!(answered[0].signing_region.as_deref(), Some(FALLBACK));
    assert_eq!(answered[0].external_id.as_deref(), Some(EXTERNAL_ID));
    assert_eq!(answered[0].issued_access_key_id, Some(key(&r)));
    assert!(fallback.faults_fired().is_empty());

    // Counted by region, and the primary's failure shows in /status (still closed: one
    // failure is below the threshold).
    assert_eq!(
        metric(&d, &duration_count(PRIMARY, "error")).await,
        Some(1.0)
    );
    assert_eq!(
        metric(&d, &duration_count(FALLBACK, "success")).await,
        Some(1.0)
    );
    let health = regions(&d).await;
    assert_eq!(health[PRIMARY]["role"], "primary");
    assert_eq!(health[PRIMARY]["state"], "closed");
    assert_eq!(health[PRIMARY]["consecutive_failures"], 1);
    assert_eq!(health[PRIMARY]["last_error"], "server_error");
    assert_eq!(health[FALLBACK]["role"], "fallback");
    assert_eq!(health[FALLBACK]["consecutive_failures"], 0);
    d.stop().await;
}

#[tokio::test]
async fn an_unreachable_primary_is_a_network_error_and_fails_over() {
    // A port nothing listens on: connection refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let Setup {
        primary,
        fallback,
        d,
    } = start(1, Some(url)).await;

    let r = get(&d, "m0").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        calls(&primary).is_empty(),
        "the primary's fake is not in use"
    );
    let answered = calls(&fallback);
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0].issued_access_key_id, Some(key(&r)));
    assert_eq!(regions(&d).await[PRIMARY]["last_error"], "network");
    d.stop().await;
}

/// With `source_role_arn`, every customer call is signed with the vendor role's
/// session, which is itself an AssumeRole: it fails over like the customer calls, so a
/// dead primary strands neither (src/creds/source_role.rs).
#[tokio::test]
async fn with_a_source_role_a_dead_primary_fails_over_for_the_vendor_role_too() {
    const VENDOR_ROLE: &str = "arn:aws:iam::568237466542:role/vendor-sync-service";
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let clock = ManualClock::starting_now();
    let fallback = FakeSts::start(Arc::new(clock.clone())).await;
    fallback.add_role(Role::new(VENDOR_ROLE, TrustRule::NoExternalIdRequired));
    fallback.add_role(Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    ));
    let mut config = config(
        &url,
        vec![mapping(
            "m0",
            "vendor-sync",
            Some(EXTERNAL_ID),
            &token("m0"),
        )],
    );
    config.refresh.cold_wait = Duration::from_secs(10);
    config.sts.source_role_arn = Some(credvend::aws_names::RoleArn::parse(VENDOR_ROLE).unwrap());
    config.sts.fallback_regions = vec![Region::try_from(FALLBACK.to_owned()).unwrap()];
    config.sts.endpoint_urls = BTreeMap::from([(FALLBACK.to_owned(), fallback.endpoint_url())]);
    let d = TestDaemon::start(config, clock).await;

    let r = get(&d, "m0").await;
    assert_eq!(r.status, 200, "the client sees no error: {}", r.body);
    let answered = calls(&fallback);
    let roles: Vec<&str> = answered
        .iter()
        .map(|c| c.role_arn.as_deref().unwrap_or("-"))
        .collect();
    let customer_role = role_arn("vendor-sync");
    assert_eq!(roles, [VENDOR_ROLE, customer_role.as_str()], "{answered:?}");
    // The customer's role was assumed with the vendor session the fallback issued.
    assert_eq!(
        answered[1].access_key_id, answered[0].issued_access_key_id,
        "{answered:?}"
    );
    assert_eq!(answered[1].issued_access_key_id, Some(key(&r)));
    assert!(
        answered
            .iter()
            .all(|c| c.signing_region.as_deref() == Some(FALLBACK)),
        "{answered:?}"
    );
    assert_eq!(regions(&d).await[PRIMARY]["last_error"], "network");
    d.stop().await;
}

/// The daemon's check of its own identity (`sts:GetCallerIdentity`, also `policy trust`'s
/// default principal) fails over like an AssumeRole: a dead primary must not read as
/// "nothing can be vended" while the fallback answers.
#[tokio::test]
async fn a_dead_primary_does_not_hide_credvends_own_identity() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let clock = ManualClock::starting_now();
    let fallback = FakeSts::start(Arc::new(clock.clone())).await;
    let mut config = config(&url, vec![]);
    config.sts.fallback_regions = vec![Region::try_from(FALLBACK.to_owned()).unwrap()];
    config.sts.endpoint_urls = BTreeMap::from([(FALLBACK.to_owned(), fallback.endpoint_url())]);
    let d = TestDaemon::start(config.clone(), clock).await;
    let assumer = support::daemon::assumer(&config).await;

    d.daemon.check_base_identity(&assumer).await;
    let status = request(d.admin, "GET", "/status", &[]).await;
    let identity = &status.json()["base_identity"];
    assert_eq!(identity["state"], "ok", "{}", status.body);
    assert_eq!(
        identity["arn"],
        support::fake_sts::DEFAULT_BASE_IDENTITY_ARN
    );
    // The fallback answered, signed for its own region; the primary's failure is on
    // its breaker.
    let answered = fallback.calls();
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0].action, "GetCallerIdentity");
    assert_eq!(answered[0].signing_region.as_deref(), Some(FALLBACK));
    let primary = assumer
        .regions()
        .health()
        .into_iter()
        .find(|h| h.region == PRIMARY)
        .expect("the primary was tried");
    assert_eq!(primary.consecutive_failures, 1);
    assert_eq!(
        primary.last_error,
        Some(credvend::creds::FailureReason::Network)
    );
    d.stop().await;
}

#[tokio::test]
async fn a_failing_primary_is_skipped_then_used_again_after_the_cool_down() {
    let n = FAILURE_THRESHOLD as usize + 4;
    let Setup {
        primary,
        fallback,
        d,
    } = start(n, None).await;
    let m = names(n);
    primary.set_persistent_fault(Some(Fault::InternalError));
    assert_eq!(
        metric(
            &d,
            &format!("credvend_sts_region_healthy{{region=\"{PRIMARY}\"}}")
        )
        .await,
        Some(1.0)
    );

    // Each cold miss tries the primary first until its breaker opens.
    let threshold = FAILURE_THRESHOLD as usize;
    for name in &m[..threshold] {
        let r = get(&d, name).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
    }
    assert_eq!(
        primary.faults_fired(),
        vec![Fault::InternalError; threshold]
    );
    assert_eq!(calls(&fallback).len(), threshold);
    let health = regions(&d).await;
    assert_eq!(health[PRIMARY]["state"], "open");
    assert_eq!(health[PRIMARY]["consecutive_failures"], threshold);
    assert_eq!(health[PRIMARY]["last_error"], "server_error");
    assert_eq!(
        health[PRIMARY]["next_probe_in_seconds"],
        COOL_DOWN.as_secs()
    );
    assert_eq!(health[FALLBACK]["state"], "closed");
    assert_eq!(
        metric(
            &d,
            &format!("credvend_sts_region_healthy{{region=\"{PRIMARY}\"}}")
        )
        .await,
        Some(0.0)
    );

    // Open: the next call goes straight to the fallback, even once the primary is back.
    let r = get(&d, &m[threshold]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        calls(&primary).len(),
        threshold,
        "the open primary is skipped"
    );
    primary.set_persistent_fault(None);
    d.clock.advance(COOL_DOWN - Duration::from_secs(1));
    let r = get(&d, &m[threshold + 1]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(calls(&primary).len(), threshold, "still cooling down");
    assert_eq!(calls(&fallback).len(), threshold + 2);

    // Cool-down over: the next call probes the primary, which answers; it is used again.
    d.clock.advance(Duration::from_secs(1));
    assert_eq!(regions(&d).await[PRIMARY]["state"], "half_open");
    assert_eq!(
        metric(
            &d,
            &format!("credvend_sts_region_healthy{{region=\"{PRIMARY}\"}}")
        )
        .await,
        Some(0.0),
        "half-open is not healthy yet"
    );
    for name in &m[threshold + 2..] {
        let r = get(&d, name).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        let last = calls(&primary).pop().unwrap();
        assert_eq!(last.fault, None);
        assert_eq!(last.issued_access_key_id, Some(key(&r)), "{name}");
    }
    assert_eq!(calls(&primary).len(), threshold + 2);
    assert_eq!(
        calls(&fallback).len(),
        threshold + 2,
        "no new fallback call"
    );
    let health = regions(&d).await;
    assert_eq!(health[PRIMARY]["state"], "closed");
    assert_eq!(health[PRIMARY]["consecutive_failures"], 0);
    assert_eq!(
        metric(
            &d,
            &format!("credvend_sts_region_healthy{{region=\"{PRIMARY}\"}}")
        )
        .await,
        Some(1.0)
    );
    d.stop().await;
}

#[tokio::test]
async fn access_denied_on_the_primary_is_never_retried_in_the_fallback() {
    let Setup {
        primary,
        fallback,
        d,
    } = start(1, None).await;
    primary.set_persistent_fault(Some(Fault::AccessDenied));

    let r = get(&d, "m0").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["code"], "AssumeRoleDenied", "{}", r.body);
    assert_eq!(primary.faults_fired(), vec![Fault::AccessDenied]);
    assert!(
        calls(&fallback).is_empty(),
        "a terminal answer went elsewhere"
    );
    // The primary answered: that is not a failure of the region.
    let health = regions(&d).await;
    assert_eq!(health[PRIMARY]["state"], "closed");
    assert_eq!(health[PRIMARY]["consecutive_failures"], 0);
    d.stop().await;
}

#[tokio::test]
async fn both_regions_down_serves_the_cached_credential_then_the_documented_503() {
    let Setup {
        primary,
        fallback,
        d,
    } = start(2, None).await;
    let first = get(&d, "m0").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(calls(&primary).len(), 1);

    primary.set_persistent_fault(Some(Fault::ServiceUnavailable));
    fallback.set_persistent_fault(Some(Fault::ServiceUnavailable));

    // A cold miss: both regions tried once, then today's 503 with Retry-After.
    let r = get(&d, "m1").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["code"], "CredentialsUnavailable", "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(primary.faults_fired(), vec![Fault::ServiceUnavailable]);
    assert_eq!(fallback.faults_fired(), vec![Fault::ServiceUnavailable]);

    // The cached mapping's refresh, and the cold mapping's retry, fail in both regions:
    // m0 is degraded and still served its credential.
    d.clock.advance(26 * MIN);
    assert_eq!(settled(&d, "m0").await.state, MappingState::Degraded);
    assert_eq!(settled(&d, "m1").await.state, MappingState::Empty);
    let r = get(&d, "m0").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(key(&r), key(&first));
    // Each of the three fetches tried each region once; that opened both breakers.
    let three = vec![Fault::ServiceUnavailable; FAILURE_THRESHOLD as usize];
    assert_eq!(FAILURE_THRESHOLD, 3);
    assert_eq!(primary.faults_fired(), three);
    assert_eq!(fallback.faults_fired(), three);
    let health = regions(&d).await;
    assert_eq!(health[PRIMARY]["state"], "open");
    assert_eq!(health[FALLBACK]["state"], "open");
    d.stop().await;
}

#[tokio::test]
async fn with_every_region_open_a_call_still_tries_the_primary_once() {
    let Setup {
        primary,
        fallback,
        d,
    } = start(FAILURE_THRESHOLD as usize + 2, None).await;
    let m = names(FAILURE_THRESHOLD as usize + 2);
    primary.set_persistent_fault(Some(Fault::ServiceUnavailable));
    fallback.set_persistent_fault(Some(Fault::ServiceUnavailable));
    let threshold = FAILURE_THRESHOLD as usize;
    for name in &m[..threshold] {
        assert_eq!(get(&d, name).await.status, 503);
    }
    let health = regions(&d).await;
    assert_eq!(health[PRIMARY]["state"], "open");
    assert_eq!(health[FALLBACK]["state"], "open");
    assert_eq!(calls(&primary).len(), threshold);
    assert_eq!(calls(&fallback).len(), threshold);

    // Both skipped: the last resort is one call to the primary (none to the fallback),
    // and when it answers the primary is back at once.
    primary.set_persistent_fault(None);
    let r = get(&d, &m[threshold]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(calls(&primary).len(), threshold + 1);
    assert_eq!(calls(&fallback).len(), threshold);
    assert_eq!(
        calls(&primary).last().unwrap().issued_access_key_id,
        Some(key(&r))
    );
    assert_eq!(regions(&d).await[PRIMARY]["state"], "closed");
    let r = get(&d, &m[threshold + 1]).await;
    assert_eq!(r.status, 200);
    assert_eq!(calls(&primary).len(), threshold + 2);
    d.stop().await;
}

#[tokio::test]
async fn region_disabled_fails_over_without_counting_against_the_region() {
    let Setup {
        primary,
        fallback,
        d,
    } = start(1, None).await;
    primary.set_persistent_fault(Some(Fault::RegionDisabled));

    let r = get(&d, "m0").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(primary.faults_fired(), vec![Fault::RegionDisabled]);
    let answered = calls(&fallback);
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0].issued_access_key_id, Some(key(&r)));
    // One customer's account with the region disabled says nothing about the region
    // for the others.
    let health = regions(&d).await;
    assert_eq!(health[PRIMARY]["state"], "closed");
    assert_eq!(health[PRIMARY]["consecutive_failures"], 0);
    d.stop().await;
}

#[tokio::test]
async fn a_primary_that_hangs_times_out_and_the_fallback_answers_within_cold_wait() {
    let clock = ManualClock::starting_now();
    let primary = FakeSts::start(Arc::new(clock.clone())).await;
    let fallback = FakeSts::start(Arc::new(clock.clone())).await;
    for sts in [&primary, &fallback] {
        sts.add_role(Role::new(
            role_arn("vendor-sync"),
            TrustRule::RequireExternalId(EXTERNAL_ID.into()),
        ));
    }
    let mut config = config(
        &primary.endpoint_url(),
        vec![mapping(
            "m0",
            "vendor-sync",
            Some(EXTERNAL_ID),
            &token("m0"),
        )],
    );
    // Real time: the primary's call gives up after call_timeout, which leaves most of
    // cold_wait (10 s, the most allowed) for the fallback on a loaded machine.
    config.sts.call_timeout = Duration::from_secs(1);
    config.refresh.cold_wait = Duration::from_secs(10);
    config.sts.fallback_regions = vec![Region::try_from(FALLBACK.to_owned()).unwrap()];
    config.sts.endpoint_urls = BTreeMap::from([(FALLBACK.to_owned(), fallback.endpoint_url())]);
    let d = TestDaemon::start(config, clock).await;
    primary.set_persistent_fault(Some(Fault::Hang));

    let r = get(&d, "m0").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(primary.faults_fired(), vec![Fault::Hang]);
    let answered = calls(&fallback);
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0].issued_access_key_id, Some(key(&r)));
    assert_eq!(regions(&d).await[PRIMARY]["last_error"], "timeout");
    d.stop().await;
}
