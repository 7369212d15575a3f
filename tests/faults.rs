//! Fault behaviour against the fake STS (DESIGN.md §3, issue 6 item 3). Each test
//! asserts that its fault actually fired (`faults_fired`) and what clients saw.
//!
//! Wall time is a [`ManualClock`]; real time only passes where a fault needs it
//! (latency, hang, the STS budget), and background work is awaited with `eventually`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use credvend::cache::{MappingState, MappingStatus};
use credvend::clock::{Clock, ManualClock};
use credvend::config::Mapping;

use support::daemon::{self, TestDaemon, config, eventually, mapping, role_arn, token};
use support::fake_sts::{FakeSts, Fault, Role, StsCall, TrustRule};
use support::http::{RawResponse, get_with_token};

const EXTERNAL_ID: &str = "Xk3-acme-external-id-0123456789";
const MIN: Duration = Duration::from_secs(60);

fn acme_role() -> Role {
    Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    )
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

/// Waits until no fetch is in flight for `name` (a refresh or retry the clock made due
/// has landed), as it would in real time between clock steps of minutes.
async fn settle(d: &TestDaemon, name: &str) {
    eventually("no fetch in flight", || {
        !matches!(
            status_of(d, name).state,
            MappingState::Fetching | MappingState::Refreshing
        )
    })
    .await;
}

fn assert_unavailable(r: &RawResponse) {
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["code"], "CredentialsUnavailable");
    assert_eq!(r.json()["Code"], "CredentialsUnavailable");
    assert!(r.header("retry-after").is_some(), "503 without Retry-After");
}

/// The STS budget is a token bucket with a burst of `rate` and one token every
/// `1/rate` s. Measured where STS sees it (arrival times at the fake): no sliding
/// one-second window holds more than a burst plus a second of refill, and the storm as a
/// whole averages no more than `rate` beyond the initial burst.
fn assert_within_budget(calls: &[StsCall], rate: u32) {
    let rate = rate as usize;
    let mut times: Vec<Instant> = calls.iter().map(|c| c.received_at.unwrap()).collect();
    times.sort();
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 2 * rate,
            "{in_window} STS calls within one second (budget {rate}/s)"
        );
    }
    let span = times.last().unwrap().duration_since(times[0]).as_secs_f64();
    // Rounding the span up by a second absorbs arrival jitter at both ends.
    let allowed = rate + (rate as f64 * (span + 1.0)) as usize;
    assert!(
        times.len() <= allowed,
        "{} calls in {span:.2} s (budget {rate}/s)",
        times.len()
    );
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
        // Room for a cold miss to wait out a token or two behind the storm.
        c.refresh.cold_wait = Duration::from_secs(3);
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
    eventually("one throttled call per mapping", || {
        sts.assume_role_calls().len() == names.len()
    })
    .await;
    assert_eq!(sts.faults_fired(), vec![Fault::Throttling; names.len()]);
    assert_within_budget(&sts.assume_role_calls(), RATE);
    for name in &names {
        settle(&d, name).await;
        assert_eq!(status_of(&d, name).state, MappingState::Empty);
    }

    // Phase 2: STS recovers; the retries (backoff after one failure: 1 s) all fall due
    // together and queue on the budget in the background.
    sts.set_persistent_fault(None);
    d.clock.advance(Duration::from_secs(2));
    eventually("background retries under way", || {
        sts.assume_role_calls().len() >= names.len() + 2
    })
    .await;
    // A cold miss arriving now overtakes the queued background retries.
    let late = get_with_token(d.addr, "/v1/credentials/late", &late_token).await;
    assert_eq!(late.status, 200, "{}", late.body);
    for name in &names {
        eventually("retry landed", || {
            status_of(&d, name).state == MappingState::Fresh
        })
        .await;
    }
    let calls = sts.assume_role_calls();
    assert_eq!(
        calls.len(),
        2 * names.len() + 1,
        "one retry per mapping, no more"
    );
    let late_at = calls
        .iter()
        .position(|c| c.session_name.as_deref() == Some("credvend-late"))
        .unwrap();
    let retries_after_late = calls.len() - 1 - late_at;
    assert!(
        retries_after_late >= names.len() / 2,
        "the cold miss waited behind {} of {} background retries",
        names.len() - retries_after_late,
        names.len()
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
    let token = token("acme");
    let (sts, d) = daemon::start_with_sts(vec![acme(&token)]).await;
    sts.add_role(acme_role());
    let path = "/v1/credentials/acme-s3";

    // Cold: a 5xx is a 503 with Retry-After, and the next request is served.
    sts.push_fault(Fault::ServiceUnavailable);
    assert_unavailable(&get_with_token(d.addr, path, &token).await);
    let first = get_with_token(d.addr, path, &token).await;
    assert_eq!(first.status, 200, "{}", first.body);

    let flaps = [
        Fault::InternalError,
        Fault::ServiceUnavailable,
        Fault::InternalError,
    ];
    for fault in &flaps {
        sts.push_fault(fault.clone());
    }
    // Refresh due: it fails, and so does each retry (at most one backoff cap apart).
    d.clock.advance(26 * MIN);
    for fired in 1..=flaps.len() {
        eventually("flap fired", || sts.faults_fired().len() == 1 + fired).await;
        settle(&d, "acme-s3").await;
        assert_eq!(status_of(&d, "acme-s3").state, MappingState::Degraded);
        let r = get_with_token(d.addr, path, &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(key(&r), key(&first));
        d.clock.advance(MIN);
    }
    eventually("recovered", || {
        status_of(&d, "acme-s3").state == MappingState::Fresh
    })
    .await;
    let r = get_with_token(d.addr, path, &token).await;
    assert_eq!(r.status, 200);
    assert_ne!(key(&r), key(&first));
    let mut expected = vec![Fault::ServiceUnavailable];
    expected.extend(flaps);
    assert_eq!(sts.faults_fired(), expected);
    // The cold failure and success, three failed refreshes, the successful one.
    assert_eq!(sts.assume_role_calls().len(), 6);
    d.stop().await;
}

#[tokio::test]
async fn latency_spikes_below_the_call_timeout_are_invisible_to_cached_clients() {
    let token = token("acme");
    let (sts, d) = daemon::start_with_sts(vec![acme(&token)]).await;
    sts.add_role(acme_role());
    let path = "/v1/credentials/acme-s3";

    // A cold miss waits out a spike shorter than cold_wait and is served fresh.
    sts.push_fault(Fault::Latency(Duration::from_millis(300)));
    let first = get_with_token(d.addr, path, &token).await;
    assert_eq!(first.status, 200, "{}", first.body);

    // A refresh stuck in a long spike: requests are answered from cache meanwhile.
    sts.push_fault(Fault::Latency(Duration::from_secs(2)));
    d.clock.advance(26 * MIN);
    eventually("slow refresh in flight", || {
        status_of(&d, "acme-s3").state == MappingState::Refreshing
    })
    .await;
    let addr = d.addr;
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let token = token.clone();
            tokio::spawn(async move { get_with_token(addr, path, &token).await })
        })
        .collect();
    for client in clients {
        let r = client.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(key(&r), key(&first));
    }
    // Every client was answered while the refresh was still waiting on STS.
    assert_eq!(status_of(&d, "acme-s3").state, MappingState::Refreshing);
    settle(&d, "acme-s3").await;
    assert_eq!(status_of(&d, "acme-s3").state, MappingState::Fresh);
    assert_ne!(
        key(&get_with_token(d.addr, path, &token).await),
        key(&first)
    );
    assert_eq!(
        sts.faults_fired(),
        vec![
            Fault::Latency(Duration::from_millis(300)),
            Fault::Latency(Duration::from_secs(2))
        ]
    );
    assert_eq!(sts.assume_role_calls().len(), 2);
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
    let path = "/v1/credentials/acme-s3";
    let first = get_with_token(d.addr, path, &acme_token).await;
    assert_eq!(first.status, 200);

    sts.set_persistent_fault(Some(Fault::Hang));
    d.clock.advance(26 * MIN);
    eventually("refresh hung", || sts.faults_fired().contains(&Fault::Hang)).await;
    // The call is abandoned at call_timeout, not held forever.
    settle(&d, "acme-s3").await;
    let status = status_of(&d, "acme-s3");
    assert_eq!(status.state, MappingState::Degraded);
    assert_eq!(
        status.last_error.expect("error recorded").0.code(),
        "Timeout"
    );
    // Degraded serving goes on below min_remaining (40 min in, 20 left).
    d.clock.advance(15 * MIN);
    let r = get_with_token(d.addr, path, &acme_token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(key(&r), key(&first));

    // Cold: 503 after cold_wait, and the fetch itself ends at call_timeout.
    assert_unavailable(&get_with_token(d.addr, "/v1/credentials/beta-s3", &beta_token).await);
    settle(&d, "beta-s3").await;
    let beta = status_of(&d, "beta-s3");
    assert_eq!(beta.state, MappingState::Empty);
    assert_eq!(beta.last_error.expect("error recorded").0.code(), "Timeout");

    // Let the retries in flight time out before STS comes back, so the next ones are
    // due exactly one backoff cap from now.
    settle(&d, "acme-s3").await;
    settle(&d, "beta-s3").await;
    sts.set_persistent_fault(None);
    d.clock.advance(MIN);
    eventually("recovered", || {
        status_of(&d, "acme-s3").state == MappingState::Fresh
    })
    .await;
    assert_ne!(
        key(&get_with_token(d.addr, path, &acme_token).await),
        key(&first)
    );
    d.stop().await;
}

#[tokio::test]
async fn malformed_xml_is_a_transient_failure_not_a_denial() {
    let token = token("acme");
    let (sts, d) = daemon::start_with_sts(vec![acme(&token)]).await;
    sts.add_role(acme_role());
    let path = "/v1/credentials/acme-s3";

    sts.push_fault(Fault::MalformedXml);
    assert_unavailable(&get_with_token(d.addr, path, &token).await);
    assert_ne!(status_of(&d, "acme-s3").state, MappingState::Failed);
    let first = get_with_token(d.addr, path, &token).await;
    assert_eq!(first.status, 200, "{}", first.body);

    // On refresh: the credential is kept and served; the retry succeeds.
    sts.push_fault(Fault::MalformedXml);
    d.clock.advance(26 * MIN);
    eventually("refresh got garbage", || sts.faults_fired().len() == 2).await;
    settle(&d, "acme-s3").await;
    assert_eq!(status_of(&d, "acme-s3").state, MappingState::Degraded);
    assert_eq!(
        key(&get_with_token(d.addr, path, &token).await),
        key(&first)
    );
    d.clock.advance(MIN);
    eventually("recovered", || {
        status_of(&d, "acme-s3").state == MappingState::Fresh
    })
    .await;
    assert_eq!(sts.faults_fired(), vec![Fault::MalformedXml; 2]);
    assert_eq!(sts.assume_role_calls().len(), 4);
    d.stop().await;
}

#[tokio::test]
async fn expired_base_token_is_re_resolved_once_then_succeeds() {
    let token = token("acme");
    let (sts, d) = daemon::start_with_sts(vec![acme(&token)]).await;
    sts.add_role(acme_role());
    let path = "/v1/credentials/acme-s3";

    sts.push_fault(Fault::ExpiredToken);
    let r = get_with_token(d.addr, path, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sts.faults_fired(), vec![Fault::ExpiredToken]);
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 2, "one failed call, one retry, nothing more");
    assert_eq!(
        calls[1].issued_access_key_id.as_deref(),
        Some(key(&r).as_str())
    );

    // Still expired after re-resolving: one retry only, then a transient 503 (the base
    // identity is ours to fix, not the customer's: no AssumeRoleDenied, no eviction).
    sts.push_fault(Fault::ExpiredToken);
    sts.push_fault(Fault::ExpiredToken);
    d.clock.advance(26 * MIN);
    eventually("both fired", || sts.faults_fired().len() == 3).await;
    settle(&d, "acme-s3").await;
    assert_eq!(sts.assume_role_calls().len(), 4);
    assert_eq!(status_of(&d, "acme-s3").state, MappingState::Degraded);
    let again = get_with_token(d.addr, path, &token).await;
    assert_eq!(again.status, 200);
    assert_eq!(key(&again), key(&r));
    d.stop().await;
}

#[tokio::test]
async fn an_outage_across_expiry_serves_until_the_margin_then_503_then_recovers() {
    let token = token("acme");
    let (sts, d) = daemon::start_with_sts(vec![acme(&token)]).await;
    sts.add_role(acme_role());
    let path = "/v1/credentials/acme-s3";
    let first = get_with_token(d.addr, path, &token).await;
    let expiry = expiration(&first);

    sts.set_persistent_fault(Some(Fault::ServiceUnavailable));
    // Minute by minute from the refresh point to 60 s before expiry: served, degraded.
    d.clock.advance(25 * MIN);
    while expiry.duration_since(d.clock.now()).unwrap() > 2 * MIN {
        d.clock.advance(MIN);
        settle(&d, "acme-s3").await;
        let r = get_with_token(d.addr, path, &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(key(&r), key(&first));
        assert!(expiration(&r).duration_since(d.clock.now()).unwrap() > MIN);
    }
    settle(&d, "acme-s3").await;
    assert_eq!(status_of(&d, "acme-s3").state, MappingState::Degraded);
    // Exactly 60 s before expiry, and after: never served.
    d.clock.advance(MIN);
    assert_eq!(expiry.duration_since(d.clock.now()).unwrap(), MIN);
    assert_unavailable(&get_with_token(d.addr, path, &token).await);
    d.clock.advance(2 * MIN);
    settle(&d, "acme-s3").await;
    assert_unavailable(&get_with_token(d.addr, path, &token).await);
    assert!(sts.faults_fired().len() >= 2);
    assert!(
        sts.faults_fired()
            .iter()
            .all(|f| *f == Fault::ServiceUnavailable)
    );
    settle(&d, "acme-s3").await;
    assert_eq!(status_of(&d, "acme-s3").state, MappingState::Empty);

    // STS returns: within one backoff cap of clock, a retry fills the cache unasked.
    sts.set_persistent_fault(None);
    d.clock.advance(MIN);
    eventually("recovered", || {
        status_of(&d, "acme-s3").state == MappingState::Fresh
    })
    .await;
    let r = get_with_token(d.addr, path, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(key(&r), key(&first));
    assert!(expiration(&r).duration_since(d.clock.now()).unwrap() >= 20 * MIN);
    d.stop().await;
}

#[tokio::test]
async fn a_short_credential_is_served_and_refreshed_at_half_life_without_a_loop() {
    let token = token("acme");
    let (sts, d) = daemon::start_with_sts(vec![acme(&token)]).await;
    sts.add_role(acme_role().lifetime(10 * MIN));
    let path = "/v1/credentials/acme-s3";

    let first = get_with_token(d.addr, path, &token).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        expiration(&first).duration_since(d.clock.now()).unwrap(),
        10 * MIN
    );
    // Half-life: not before 5 minutes.
    d.clock.advance(4 * MIN);
    settle(&d, "acme-s3").await;
    assert_eq!(sts.assume_role_calls().len(), 1);
    assert_eq!(
        key(&get_with_token(d.addr, path, &token).await),
        key(&first)
    );

    // Half an hour in one-minute steps: a refresh every five minutes, every served
    // credential comfortably inside its life.
    for _ in 0..26 {
        d.clock.advance(MIN);
        settle(&d, "acme-s3").await;
        let r = get_with_token(d.addr, path, &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(expiration(&r).duration_since(d.clock.now()).unwrap() >= 4 * MIN);
    }
    let calls = sts.assume_role_calls().len();
    assert!((6..=8).contains(&calls), "{calls} STS calls in 30 minutes");
    d.stop().await;
}

#[tokio::test]
async fn a_clock_jump_past_expiry_never_serves_the_expired_credential() {
    let token = token("acme");
    let (sts, d) = daemon::start_with_sts(vec![acme(&token)]).await;
    sts.add_role(acme_role());
    let path = "/v1/credentials/acme-s3";
    let first = get_with_token(d.addr, path, &token).await;

    d.clock.advance(2 * 60 * MIN);
    let r = get_with_token(d.addr, path, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(key(&r), key(&first));
    assert!(expiration(&r).duration_since(d.clock.now()).unwrap() >= 20 * MIN);
    settle(&d, "acme-s3").await;
    // The overdue refresh and the request shared one fetch.
    assert_eq!(sts.assume_role_calls().len(), 2);
    assert_eq!(status_of(&d, "acme-s3").state, MappingState::Fresh);
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
    let d = TestDaemon::start(
        config(
            &sts.endpoint_url(),
            vec![
                acme(&acme_token),
                mapping("beta-s3", "beta", None, &beta_token),
            ],
        ),
        host.clone(),
    )
    .await;
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

    // The host clock is corrected: everything carries on, no loop.
    let calls_before = sts.assume_role_calls().len();
    host.set(truth.now());
    for name in ["acme-s3", "beta-s3"] {
        settle(&d, name).await;
    }
    for (path, token) in [(acme_path, &acme_token), (beta_path, &beta_token)] {
        let r = get_with_token(d.addr, path, token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(expiration(&r).duration_since(host.now()).unwrap() >= 20 * MIN);
    }
    // One refresh per mapping for the forward step (a race may add one more), not a loop.
    assert!(sts.assume_role_calls().len() <= calls_before + 4);
    d.stop().await;
}
