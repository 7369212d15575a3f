//! Fault behaviour against the fake STS (see src/cache/mod.rs for the lifecycle). Each
//! test asserts exactly which faults fired, in order (`faults_fired`), against which
//! role or call, and what clients saw.
//!
//! Wall time is a [`ManualClock`]; real time only passes where a fault needs it
//! (latency, hang, the STS budget), with margins meant for a loaded machine. A slow STS
//! whose slowness a test relies on is held at the fake (`hold_assume_role`), not a
//! latency that must outlast the test's own work. After every clock step, background
//! work is awaited with `settled`, which waits until the refresh or retry the step made
//! due has run and landed, and returns the state it reached.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use credvend::clock::{Clock, ManualClock};
use credvend::config::Mapping;
use credvend::model::{MappingState, MappingStatus};

use support::daemon::{self, TestDaemon, config, eventually, mapping, role_arn, settled, token};
use support::fake_sts::{FakeSts, Fault, Role, StsCall, TrustRule};
use support::http::{RawResponse, get_with_token, spawn_gets};

const EXTERNAL_ID: &str = "Xk3-acme-external-id-0123456789";
const MIN: Duration = Duration::from_secs(60);

/// Cold misses in these tests are meant to be answered by what STS answers, not by
/// `cold_wait` running out first: a wait far beyond what a loaded machine needs for a
/// round trip to the in-process fake (the default, 800 ms, would be the margin).
const COLD_WAIT: Duration = Duration::from_secs(10);

/// Fake STS and daemon sharing a manual clock, with [`COLD_WAIT`].
async fn start(mappings: Vec<Mapping>) -> (FakeSts, TestDaemon) {
    daemon::start_with_sts_and(mappings, |c| c.refresh.cold_wait = COLD_WAIT).await
}

fn acme_role() -> Role {
    Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    )
}

/// Mapping `acme-s3` (see [`acme`]) on `role`, usually [`acme_role`], with
/// [`COLD_WAIT`]. Returns the fake STS, the daemon and the mapping's token.
async fn start_acme_on(role: Role) -> (FakeSts, TestDaemon, String) {
    let token = token("acme");
    let (sts, d) = start(vec![acme(&token)]).await;
    sts.add_role(role);
    (sts, d, token)
}

/// The credential path of mapping `acme-s3`.
const ACME_PATH: &str = "/v1/credentials/acme-s3";

/// `GET` [`ACME_PATH`] from `d` with `token`.
async fn get_acme(d: &TestDaemon, token: &str) -> RawResponse {
    get_with_token(d.addr, ACME_PATH, token).await
}

fn acme(token: &str) -> Mapping {
    mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), token)
}

fn expiration(r: &RawResponse) -> SystemTime {
    let value = r.json()["Expiration"].as_str().unwrap().to_string();
    humantime::parse_rfc3339(&value).unwrap_or_else(|e| panic!("bad Expiration {value:?}: {e}"))
}

fn key(r: &RawResponse) -> String {
    r.json()["AccessKeyId"].as_str().unwrap().to_string()
}

fn status_of(d: &TestDaemon, name: &str) -> MappingStatus {
    d.daemon
        .cache
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .expect("mapping in status")
}

/// Waits until `name` is settled at the current clock reading (see
/// `support::daemon::settled`) and returns the state it reached.
#[track_caller]
fn settle<'a>(d: &'a TestDaemon, name: &'a str) -> impl Future<Output = MappingState> + 'a {
    let settled = settled(d, name);
    async move { settled.await.state }
}

fn assert_unavailable(r: &RawResponse) {
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["code"], "CredentialsUnavailable");
    assert_eq!(r.json()["Code"], "CredentialsUnavailable");
    assert!(r.header("retry-after").is_some(), "503 without Retry-After");
}

/// The code of the last error recorded for `name`.
fn last_error_code(d: &TestDaemon, name: &str) -> String {
    status_of(d, name)
        .last_error
        .expect("an error recorded")
        .0
        .code()
        .to_owned()
}

/// Slack for when a call reaches the fake after the budget let it go: on a loaded
/// machine a stalled runtime delivers calls granted a while apart back to back.
const DELIVERY_SLACK: Duration = Duration::from_secs(1);

/// The STS budget is a token bucket with a burst of `rate` and one token every
/// `1/rate` s, so any stretch of `t` seconds grants at most `rate + rate * t` calls.
/// Checked where STS sees it (arrival times at the fake), with [`DELIVERY_SLACK`]
/// added to every stretch: an unpaced storm (every call at once) or a budget twice too
/// generous both fail it.
fn assert_within_budget(calls: &[StsCall], rate: u32) {
    let rate = f64::from(rate);
    let mut times: Vec<Instant> = calls.iter().map(|c| c.received_at.unwrap()).collect();
    times.sort();
    for i in 0..times.len() {
        for j in i..times.len() {
            let span = times[j].duration_since(times[i]) + DELIVERY_SLACK;
            let allowed = rate + rate * span.as_secs_f64();
            let count = j - i + 1;
            assert!(
                count as f64 <= allowed,
                "{count} STS calls within {:.2} s (budget {rate}/s allows {allowed:.1} with \
                 {DELIVERY_SLACK:?} of slack)",
                times[j].duration_since(times[i]).as_secs_f64()
            );
        }
    }
}

#[tokio::test]
async fn throttling_storm_stays_within_the_sts_budget_and_cold_misses_go_first() {
    const RATE: u32 = 4;
    let names: Vec<String> = (0..16).map(|i| format!("m{i:02}")).collect();
    let tokens: Vec<String> = names.iter().map(|n| token(n)).collect();
    let late_token = token("late");
    let mut mappings: Vec<Mapping> = names
        .iter()
        .zip(&tokens)
        .map(|(name, token)| mapping(name, "shared", None, token))
        .collect();
    mappings.push(mapping("late", "shared", None, &late_token));
    let (sts, d) = daemon::start_with_sts_and(mappings, |c| {
        c.sts.max_requests_per_second = RATE;
        // Room for a cold miss to wait out a token or two behind the storm, on a
        // loaded machine.
        c.refresh.cold_wait = Duration::from_secs(20);
    })
    .await;
    sts.add_role(Role::new(
        role_arn("shared"),
        TrustRule::NoExternalIdRequired,
    ));
    sts.set_persistent_fault(Some(Fault::Throttling));

    // Phase 1: every mapping is asked for at once while STS throttles everything.
    let addr = d.addr;
    let requests: Vec<_> = names
        .iter()
        .zip(&tokens)
        .map(|(name, token)| {
            let (path, token) = (format!("/v1/credentials/{name}"), token.clone());
            tokio::spawn(async move { get_with_token(addr, &path, &token).await })
        })
        .collect();
    for request in requests {
        assert_unavailable(&request.await.unwrap());
    }
    // Each request waited for its own (throttled) answer.
    let calls = sts.assume_role_calls();
    assert_eq!(sts.faults_fired(), vec![Fault::Throttling; names.len()]);
    let mut throttled: Vec<&str> = calls
        .iter()
        .map(|c| c.session_name.as_deref().unwrap())
        .collect();
    throttled.sort();
    let expected: Vec<String> = names.iter().map(|n| format!("credvend-{n}")).collect();
    assert_eq!(throttled, expected, "one throttled call per mapping");
    assert_within_budget(&calls, RATE);
    for name in &names {
        assert_eq!(settle(&d, name).await, MappingState::Empty);
        assert_eq!(last_error_code(&d, name), "Throttling");
    }

    // Phase 2: STS recovers; the retries (backoff after one failure: 1 s) all fall due
    // together and queue on the budget in the background.
    sts.set_persistent_fault(None);
    d.clock.advance(Duration::from_secs(2));
    eventually("background retries under way", || {
        sts.assume_role_calls().len() >= names.len() + 2
    })
    .await;
    // A cold miss arriving now overtakes the background retries still queued.
    let before_late = sts.assume_role_calls().len();
    let late = get_with_token(d.addr, "/v1/credentials/late", &late_token).await;
    assert_eq!(late.status, 200, "{}", late.body);
    for name in &names {
        assert_eq!(settle(&d, name).await, MappingState::Fresh, "{name}");
    }
    let calls = sts.assume_role_calls();
    assert_eq!(
        calls.len(),
        2 * names.len() + 1,
        "one retry per mapping, no more"
    );
    assert_eq!(sts.faults_fired(), vec![Fault::Throttling; names.len()]);
    let late_at = calls
        .iter()
        .position(|c| c.session_name.as_deref() == Some("credvend-late"))
        .unwrap();
    // Queued background retries had to wait for it; only retries whose tokens were
    // already granted when it asked (the budget's burst, a second of refill) go first.
    let overtaken_by = late_at.saturating_sub(before_late);
    assert!(
        before_late < 2 * names.len() && overtaken_by <= RATE as usize,
        "the cold miss asked when {} of {} retries had reached STS and waited behind {} \
         more",
        before_late - names.len(),
        names.len(),
        overtaken_by
    );
    assert_within_budget(&calls, RATE);

    // Fetched at the same instant, the mappings' next refreshes are spread by jitter
    // rather than falling due together.
    let due: Vec<SystemTime> = d
        .daemon
        .cache
        .status()
        .iter()
        .map(|s| s.next_refresh.expect("refresh scheduled"))
        .collect();
    let earliest = due.iter().min().unwrap();
    let latest = due.iter().max().unwrap();
    assert!(
        latest.duration_since(*earliest).unwrap() >= MIN,
        "refreshes bunched within {:?}",
        latest.duration_since(*earliest).unwrap()
    );
    let mut distinct = due.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        due.len(),
        "two refreshes due at the same instant"
    );
    d.stop().await;
}

#[tokio::test]
async fn five_xx_flaps_never_reach_clients_that_have_a_credential() {
    let (sts, d, token) = start_acme_on(acme_role()).await;

    // Cold: a 5xx is a 503 with Retry-After; requests inside the retry backoff (1 s
    // after a first failure) get the same without an STS call; after it, served.
    sts.push_fault(Fault::ServiceUnavailable);
    let r = get_acme(&d, &token).await;
    assert_unavailable(&r);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(sts.faults_fired(), vec![Fault::ServiceUnavailable]);
    assert_unavailable(&get_acme(&d, &token).await);
    assert_eq!(
        sts.assume_role_calls().len(),
        1,
        "a call inside the backoff"
    );
    d.clock.advance(Duration::from_secs(1));
    let first = get_acme(&d, &token).await;
    assert_eq!(first.status, 200, "{}", first.body);

    let flaps = [
        Fault::InternalError,
        Fault::ServiceUnavailable,
        Fault::InternalError,
    ];
    for fault in &flaps {
        sts.push_fault(fault.clone());
    }
    let mut expected = vec![Fault::ServiceUnavailable];
    // Refresh due: it fails, and so does each retry (at most one backoff cap apart).
    d.clock.advance(26 * MIN);
    for fault in &flaps {
        assert_eq!(settle(&d, "acme-s3").await, MappingState::Degraded);
        expected.push(fault.clone());
        assert_eq!(sts.faults_fired(), expected, "one attempt per clock step");
        let r = get_acme(&d, &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(key(&r), key(&first));
        d.clock.advance(MIN);
    }
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Fresh);
    let r = get_acme(&d, &token).await;
    assert_eq!(r.status, 200);
    assert_ne!(key(&r), key(&first));
    assert_eq!(sts.faults_fired(), expected);
    sts.assert_no_pending_faults();
    // The cold failure and success, three failed refreshes, the successful one.
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 6);
    assert_eq!(calls[5].fault, None);
    assert_eq!(calls[5].issued_access_key_id, Some(key(&r)));
    d.stop().await;
}

#[tokio::test]
async fn latency_spikes_below_the_call_timeout_are_invisible_to_cached_clients() {
    let token = token("acme");
    // Generous call timeout and cold wait: nothing here may time out, however slow the
    // machine; the refresh is held at the fake for as long as the test needs.
    let (sts, d) = daemon::start_with_sts_and(vec![acme(&token)], |c| {
        c.sts.call_timeout = Duration::from_secs(60);
        c.refresh.cold_wait = Duration::from_secs(30);
    })
    .await;
    sts.add_role(acme_role());

    // A cold miss waits out a spike shorter than cold_wait and is served fresh.
    let spike = Duration::from_millis(500);
    sts.push_fault(Fault::Latency(spike));
    let started = Instant::now();
    let first = get_acme(&d, &token).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(started.elapsed() >= spike, "the spike was not waited out");
    assert_eq!(sts.faults_fired(), vec![Fault::Latency(spike)]);

    // A refresh stuck at STS: requests are answered from cache meanwhile, without
    // joining it or calling STS themselves.
    let hold = sts.hold_assume_role();
    d.clock.advance(26 * MIN);
    hold.wait_held(1).await;
    assert_eq!(status_of(&d, "acme-s3").state, MappingState::Refreshing);
    let clients = spawn_gets(d.addr, ACME_PATH, &token, 20);
    // STS stays held however long this takes: a client that waited on the refresh
    // would never be answered (the bound is for a loaded machine, not a timing claim).
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        let mut answered = Vec::new();
        for client in clients {
            answered.push(client.await.unwrap());
        }
        answered
    })
    .await
    .expect("cached clients waited on the refresh held at STS");
    for r in &answered {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(key(r), key(&first));
    }
    // Every client was answered while the refresh was still held at STS.
    assert_eq!(hold.held(), 1, "the refresh is the only call at STS");
    assert_eq!(status_of(&d, "acme-s3").state, MappingState::Refreshing);
    assert_eq!(
        sts.assume_role_calls().len(),
        1,
        "no call answered meanwhile"
    );
    hold.release();
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Fresh);
    let refreshed = get_acme(&d, &token).await;
    assert_ne!(key(&refreshed), key(&first));
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 2);
    assert!(calls[1].held, "the refresh was the held call");
    assert_eq!(calls[1].issued_access_key_id, Some(key(&refreshed)));
    assert_eq!(sts.faults_fired(), vec![Fault::Latency(spike)]);
    d.stop().await;
}

#[tokio::test]
async fn an_sts_hang_times_out_at_call_timeout_then_serves_degraded() {
    let acme_token = token("acme");
    let beta_token = token("beta");
    let (sts, d) = daemon::start_with_sts_and(
        vec![
            acme(&acme_token),
            mapping("beta-s3", "beta", None, &beta_token),
        ],
        |c| c.sts.call_timeout = Duration::from_secs(1),
    )
    .await;
    sts.add_role(acme_role());
    sts.add_role(Role::new(role_arn("beta"), TrustRule::NoExternalIdRequired));
    let acme_arn = role_arn("vendor-sync");
    let beta_arn = role_arn("beta");
    let first = get_with_token(d.addr, ACME_PATH, &acme_token).await;
    assert_eq!(first.status, 200);

    sts.set_persistent_fault(Some(Fault::Hang));
    d.clock.advance(26 * MIN);
    // The call is abandoned at call_timeout, not held forever.
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Degraded);
    assert_eq!(sts.faults_fired_for(&acme_arn), vec![Fault::Hang]);
    assert_eq!(last_error_code(&d, "acme-s3"), "Timeout");
    // Degraded serving goes on below min_remaining (40 min in, 20 left); the retry the
    // step made due hangs and times out too.
    d.clock.advance(15 * MIN);
    let r = get_with_token(d.addr, ACME_PATH, &acme_token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(key(&r), key(&first));
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Degraded);
    assert_eq!(sts.faults_fired_for(&acme_arn), vec![Fault::Hang; 2]);

    // Cold: 503 after cold_wait, and the fetch itself ends at call_timeout.
    assert_unavailable(&get_with_token(d.addr, "/v1/credentials/beta-s3", &beta_token).await);
    assert_eq!(settle(&d, "beta-s3").await, MappingState::Empty);
    assert_eq!(last_error_code(&d, "beta-s3"), "Timeout");
    assert_eq!(sts.faults_fired_for(&beta_arn), vec![Fault::Hang]);
    assert_eq!(sts.faults_fired(), vec![Fault::Hang; 3]);
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 4);
    assert!(calls[1..].iter().all(|c| c.status.is_none()), "{calls:?}");

    // STS comes back: the next retries succeed.
    sts.set_persistent_fault(None);
    d.clock.advance(MIN);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Fresh);
    assert_eq!(settle(&d, "beta-s3").await, MappingState::Fresh);
    assert_ne!(
        key(&get_with_token(d.addr, ACME_PATH, &acme_token).await),
        key(&first)
    );
    assert_eq!(sts.faults_fired(), vec![Fault::Hang; 3]);
    assert_eq!(sts.assume_role_calls().len(), 6);
    d.stop().await;
}

#[tokio::test]
async fn malformed_xml_is_a_transient_failure_not_a_denial() {
    let (sts, d, token) = start_acme_on(acme_role()).await;

    sts.push_fault(Fault::MalformedXml);
    assert_unavailable(&get_acme(&d, &token).await);
    assert_eq!(sts.faults_fired(), vec![Fault::MalformedXml]);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Empty);
    assert_eq!(last_error_code(&d, "acme-s3"), "MalformedResponse");
    // After the retry backoff (1 s after a first failure), served.
    d.clock.advance(Duration::from_secs(1));
    let first = get_acme(&d, &token).await;
    assert_eq!(first.status, 200, "{}", first.body);

    // On refresh: the credential is kept and served; the retry succeeds.
    sts.push_fault(Fault::MalformedXml);
    d.clock.advance(26 * MIN);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Degraded);
    assert_eq!(sts.faults_fired(), vec![Fault::MalformedXml; 2]);
    assert_eq!(last_error_code(&d, "acme-s3"), "MalformedResponse");
    assert_eq!(key(&get_acme(&d, &token).await), key(&first));
    d.clock.advance(MIN);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Fresh);
    assert_eq!(sts.faults_fired(), vec![Fault::MalformedXml; 2]);
    let calls = sts.assume_role_calls();
    let faults: Vec<Option<Fault>> = calls.iter().map(|c| c.fault.clone()).collect();
    assert_eq!(
        faults,
        vec![
            Some(Fault::MalformedXml),
            None,
            Some(Fault::MalformedXml),
            None
        ],
        "cold failure, cold success, failed refresh, successful retry"
    );
    d.stop().await;
}

#[tokio::test]
async fn expired_base_token_is_re_resolved_once_then_succeeds() {
    let (sts, d, token) = start_acme_on(acme_role()).await;

    sts.push_fault(Fault::ExpiredToken);
    let r = get_acme(&d, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sts.faults_fired(), vec![Fault::ExpiredToken]);
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 2, "one failed call, one retry, nothing more");
    assert_eq!(calls[0].fault, Some(Fault::ExpiredToken));
    assert_eq!(calls[1].fault, None);
    assert_eq!(
        calls[1].issued_access_key_id.as_deref(),
        Some(key(&r).as_str())
    );

    // Still expired after re-resolving: one retry only, then a transient 503 (the base
    // identity is ours to fix, not the customer's: no AssumeRoleDenied, no eviction).
    sts.push_fault(Fault::ExpiredToken);
    sts.push_fault(Fault::ExpiredToken);
    d.clock.advance(26 * MIN);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Degraded);
    assert_eq!(sts.faults_fired(), vec![Fault::ExpiredToken; 3]);
    sts.assert_no_pending_faults();
    assert_eq!(sts.assume_role_calls().len(), 4);
    assert_eq!(last_error_code(&d, "acme-s3"), "ExpiredToken");
    let again = get_acme(&d, &token).await;
    assert_eq!(again.status, 200);
    assert_eq!(key(&again), key(&r));
    d.stop().await;
}

/// Counts one more failed attempt and checks it is the only new call at STS, and a
/// ServiceUnavailable like every one before it.
#[track_caller]
fn one_more_failure(sts: &FakeSts, failed: &mut usize) {
    *failed += 1;
    assert_eq!(
        sts.faults_fired(),
        vec![Fault::ServiceUnavailable; *failed],
        "expected exactly {failed} failed attempts by now"
    );
    assert_eq!(sts.assume_role_calls().len(), 1 + *failed);
}

#[tokio::test]
async fn an_outage_across_expiry_serves_until_the_margin_then_503_then_recovers() {
    let (sts, d, token) = start_acme_on(acme_role()).await;
    let first = get_acme(&d, &token).await;
    let expiry = expiration(&first);

    sts.set_persistent_fault(Some(Fault::ServiceUnavailable));
    // Every clock step below makes exactly one attempt due (the refresh, then retries
    // at most a backoff cap, one minute, apart), and each fails.
    let mut failed = 0;
    // Minute by minute from the refresh point to 60 s before expiry: served, degraded.
    d.clock.advance(25 * MIN);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Degraded);
    one_more_failure(&sts, &mut failed);
    while expiry.duration_since(d.clock.now()).unwrap() > 2 * MIN {
        d.clock.advance(MIN);
        assert_eq!(settle(&d, "acme-s3").await, MappingState::Degraded);
        one_more_failure(&sts, &mut failed);
        let r = get_acme(&d, &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(key(&r), key(&first));
        assert!(expiration(&r).duration_since(d.clock.now()).unwrap() > MIN);
    }
    // Exactly 60 s before expiry, and after: never served. The retry due at this step
    // fails and drops the credential; the request is answered 503 from the retry
    // backoff, without an STS call of its own.
    d.clock.advance(MIN);
    assert_eq!(expiry.duration_since(d.clock.now()).unwrap(), MIN);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Empty);
    one_more_failure(&sts, &mut failed);
    assert_unavailable(&get_acme(&d, &token).await);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Empty);
    assert_eq!(
        sts.assume_role_calls().len(),
        1 + failed,
        "a call inside the backoff"
    );
    d.clock.advance(2 * MIN);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Empty);
    one_more_failure(&sts, &mut failed);
    assert_unavailable(&get_acme(&d, &token).await);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Empty);
    assert_eq!(
        sts.assume_role_calls().len(),
        1 + failed,
        "a call inside the backoff"
    );

    // STS returns: within one backoff cap of clock, a retry fills the cache unasked.
    sts.set_persistent_fault(None);
    let calls = sts.assume_role_calls().len();
    d.clock.advance(MIN);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Fresh);
    assert_eq!(sts.assume_role_calls().len(), calls + 1);
    let r = get_acme(&d, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(key(&r), key(&first));
    assert!(expiration(&r).duration_since(d.clock.now()).unwrap() >= 20 * MIN);
    assert_eq!(sts.faults_fired(), vec![Fault::ServiceUnavailable; failed]);
    d.stop().await;
}

#[tokio::test]
async fn a_short_credential_is_served_and_refreshed_at_half_life_without_a_loop() {
    let (sts, d, token) = start_acme_on(acme_role().lifetime(10 * MIN)).await;

    let first = get_acme(&d, &token).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        expiration(&first).duration_since(d.clock.now()).unwrap(),
        10 * MIN
    );
    // Half-life: not before 5 minutes.
    d.clock.advance(4 * MIN);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Fresh);
    assert_eq!(
        sts.assume_role_calls().len(),
        1,
        "refreshed before half its life"
    );
    assert_eq!(key(&get_acme(&d, &token).await), key(&first));

    // Half an hour in one-minute steps: a refresh every five minutes (at minutes 5, 10,
    // ..., 30), every served credential comfortably inside its life.
    for minute in 5..=30 {
        d.clock.advance(MIN);
        assert_eq!(settle(&d, "acme-s3").await, MappingState::Fresh);
        assert_eq!(
            sts.assume_role_calls().len(),
            1 + minute / 5,
            "STS calls by minute {minute}"
        );
        let r = get_acme(&d, &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(expiration(&r).duration_since(d.clock.now()).unwrap() >= 4 * MIN);
    }
    assert_eq!(sts.faults_fired(), vec![]);
    d.stop().await;
}

#[tokio::test]
async fn a_clock_jump_past_expiry_never_serves_the_expired_credential() {
    let (sts, d, token) = start_acme_on(acme_role()).await;
    let first = get_acme(&d, &token).await;

    d.clock.advance(2 * 60 * MIN);
    let r = get_acme(&d, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(key(&r), key(&first));
    assert!(expiration(&r).duration_since(d.clock.now()).unwrap() >= 20 * MIN);
    assert_eq!(settle(&d, "acme-s3").await, MappingState::Fresh);
    // The overdue refresh and the request shared one fetch.
    assert_eq!(sts.assume_role_calls().len(), 2);
    d.stop().await;
}

/// The host clock steps back two hours while STS keeps true time. Credentials must
/// still stop being served at their *real* expiry: the instant STS meant, reached after
/// the lifetime STS granted has really elapsed, whatever the host clock reads.
#[tokio::test]
async fn a_clock_step_back_never_serves_past_the_real_expiry_and_recovers() {
    let acme_token = token("acme");
    let beta_token = token("beta");
    let truth = ManualClock::starting_now();
    let host = ManualClock::new(truth.now());
    let sts = FakeSts::start(Arc::new(truth.clone())).await;
    sts.add_role(acme_role());
    sts.add_role(Role::new(role_arn("beta"), TrustRule::NoExternalIdRequired));
    let mut config = config(
        &sts.endpoint_url(),
        vec![
            acme(&acme_token),
            mapping("beta-s3", "beta", None, &beta_token),
        ],
    );
    config.refresh.cold_wait = COLD_WAIT;
    let d = TestDaemon::start(config, host.clone()).await;
    let acme_path = "/v1/credentials/acme-s3";
    let beta_path = "/v1/credentials/beta-s3";
    let both = |by: Duration| {
        truth.advance(by);
        host.advance(by);
    };

    let a = get_with_token(d.addr, acme_path, &acme_token).await;
    let a_expiry = expiration(&a);

    host.rewind(2 * 60 * MIN);
    // Held across the step: still really valid, still served, no STS storm.
    for _ in 0..5 {
        let r = get_with_token(d.addr, acme_path, &acme_token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(key(&r), key(&a));
    }
    assert_eq!(sts.assume_role_calls().len(), 1);

    // Fetched while the host clock is behind: STS's Expiration reads three hours away
    // on the host clock, but the credential lives one hour (what was asked for).
    let asked_at = host.now();
    let b = get_with_token(d.addr, beta_path, &beta_token).await;
    assert_eq!(b.status, 200, "{}", b.body);
    assert!(
        expiration(&b) <= asked_at + 60 * MIN,
        "served an Expiration {:?} past the real one",
        expiration(&b).duration_since(asked_at + 60 * MIN)
    );

    // An hour of real time later both credentials have really expired (at a_expiry and
    // about asked_at + 1 h); neither may be served, though the host clock says a_expiry
    // is two hours away.
    both(61 * MIN);
    assert!(truth.now() > a_expiry);
    for (path, token, old) in [(acme_path, &acme_token, &a), (beta_path, &beta_token, &b)] {
        let r = get_with_token(d.addr, path, token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_ne!(key(&r), key(old), "served a really expired credential");
    }

    // Before the correction: the first fetch of each, and one fetch of each after the
    // real expiry.
    for name in ["acme-s3", "beta-s3"] {
        assert_eq!(settle(&d, name).await, MappingState::Fresh);
    }
    let calls_before = sts.assume_role_calls().len();
    assert_eq!(calls_before, 4);

    // The host clock is corrected (two hours forward): both credentials now look
    // expired by the wall clock and their refreshes are overdue; each is refreshed once
    // and everything carries on, no loop.
    host.set(truth.now());
    for name in ["acme-s3", "beta-s3"] {
        assert_eq!(settle(&d, name).await, MappingState::Fresh);
    }
    assert_eq!(sts.assume_role_calls().len(), calls_before + 2);
    for (path, token) in [(acme_path, &acme_token), (beta_path, &beta_token)] {
        let r = get_with_token(d.addr, path, token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(expiration(&r).duration_since(host.now()).unwrap() >= 20 * MIN);
    }
    // Served from the refreshed credentials: no call for the requests.
    assert_eq!(sts.assume_role_calls().len(), calls_before + 2);
    assert_eq!(sts.faults_fired(), vec![]);
    d.stop().await;
}
