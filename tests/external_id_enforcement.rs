//! External ID enforcement check (see src/verify/mod.rs) against the fake STS's trust
//! rules.

mod support;

use std::sync::Arc;
use std::time::Duration;

use credvend::clock::ManualClock;
use credvend::config::EnforcementMode as Mode;
use credvend::model::EnforcementStatus;
use credvend::model::MappingState;
use credvend::verify::PROBE_SESSION_NAME;
use support::daemon::{TestDaemon, config, mapping, role_arn, settled, token};
use support::fake_sts::{FakeSts, Fault, Role, TrustRule};
use support::http::{RawResponse, get_with_token};

const EXTERNAL_ID: &str = "acme-external-id-0123456789abcdef";
const PATH: &str = "/v1/credentials/acme-s3";

async fn start(rule: TrustRule, mode: Mode) -> (FakeSts, TestDaemon, String) {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    sts.add_role(Role::new(role_arn("vendor-sync"), rule));
    let token = token("acme");
    let mut m = mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &token);
    m.external_id_enforcement = mode;
    let mut config = config(&sts.endpoint_url(), vec![m]);
    // A first vend makes three STS calls in a row (two probes, the real call); the
    // request must get their answer, not run out of the default 800 ms cold wait on a
    // loaded machine.
    config.refresh.cold_wait = Duration::from_secs(10);
    let d = TestDaemon::start(config, clock).await;
    (sts, d, token)
}

/// The common case: a role whose trust policy requires [`EXTERNAL_ID`], and a mapping
/// that requires enforcement ([`Mode::Require`]).
async fn start_enforced_and_required() -> (FakeSts, TestDaemon, String) {
    start(
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
        Mode::Require,
    )
    .await
}

/// `GET` [`PATH`] with `token`, asserting the answer is 403 `TrustPolicyUnsafe`.
async fn get_refused_as_unsafe(d: &TestDaemon, token: &str) -> RawResponse {
    let r = get_with_token(d.addr, PATH, token).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["code"], "TrustPolicyUnsafe");
    r
}

fn status(d: &TestDaemon) -> credvend::model::MappingStatus {
    d.daemon.cache.status().remove(0)
}

#[tokio::test]
async fn a_role_that_enforces_its_external_id_vends_after_two_refused_probes() {
    let (sts, d, token) = start_enforced_and_required().await;
    let r = get_with_token(d.addr, PATH, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 3, "two probes, then the real call");
    assert_eq!(calls[0].external_id, None);
    assert_eq!(calls[0].error_code.as_deref(), Some("AccessDenied"));
    let wrong = calls[1]
        .external_id
        .as_deref()
        .expect("a wrong External ID");
    assert_ne!(wrong, EXTERNAL_ID);
    assert!(wrong.len() >= 32 && wrong.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(calls[1].error_code.as_deref(), Some("AccessDenied"));
    for probe in &calls[..2] {
        assert_eq!(probe.session_name.as_deref(), Some(PROBE_SESSION_NAME));
        assert_eq!(probe.duration_seconds, Some(900));
    }
    assert_eq!(calls[2].external_id.as_deref(), Some(EXTERNAL_ID));
    assert_eq!(
        sts.faults_fired(),
        vec![],
        "refused by trust, not by a fault"
    );
    assert_eq!(status(&d).enforcement, EnforcementStatus::Enforced);
    d.stop().await;
}

#[tokio::test]
async fn require_refuses_a_role_without_the_condition_and_never_serves_the_probe_credential() {
    let (sts, d, token) = start(TrustRule::NoExternalIdRequired, Mode::Require).await;
    let r = get_refused_as_unsafe(&d, &token).await;
    assert!(r.json()["message"].as_str().unwrap().contains("acme-s3"));
    let calls = sts.assume_role_calls();
    assert_eq!(
        calls.len(),
        1,
        "the first accepted probe settles it; no real call"
    );
    let probe_key = calls[0]
        .issued_access_key_id
        .clone()
        .expect("probe got credentials");
    assert!(!r.body.contains(&probe_key));
    assert_eq!(status(&d).enforcement, EnforcementStatus::NotEnforced);
    assert_eq!(status(&d).state, MappingState::Failed);

    // Negatively cached: asking again does not probe again at once.
    let r = get_with_token(d.addr, PATH, &token).await;
    assert_eq!(r.json()["code"], "TrustPolicyUnsafe");
    assert_eq!(sts.assume_role_calls().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn require_refuses_a_role_that_accepts_any_external_id() {
    let (sts, d, token) = start(TrustRule::AnyExternalId, Mode::Require).await;
    get_refused_as_unsafe(&d, &token).await;
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].error_code.as_deref(),
        Some("AccessDenied"),
        "no-ID probe refused"
    );
    assert_eq!(calls[1].status, Some(200), "wrong-ID probe accepted");
    d.stop().await;
}

#[tokio::test]
async fn warn_vends_but_flags_the_role() {
    let (sts, d, token) = start(TrustRule::NoExternalIdRequired, Mode::Warn).await;
    let r = get_with_token(d.addr, PATH, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 2, "one accepted probe, then the real call");
    assert_eq!(
        r.json()["AccessKeyId"].as_str(),
        calls[1].issued_access_key_id.as_deref(),
        "the real call's credential, not the probe's"
    );
    assert_eq!(status(&d).enforcement, EnforcementStatus::NotEnforced);
    d.stop().await;
}

#[tokio::test]
async fn off_skips_the_check() {
    let (sts, d, token) = start(TrustRule::NoExternalIdRequired, Mode::Off).await;
    assert_eq!(get_with_token(d.addr, PATH, &token).await.status, 200);
    assert_eq!(sts.assume_role_calls().len(), 1);
    assert_eq!(status(&d).enforcement, EnforcementStatus::Unknown);
    d.stop().await;
}

#[tokio::test]
async fn an_inconclusive_first_check_fails_closed_with_503_then_retries() {
    let (sts, d, token) = start_enforced_and_required().await;
    sts.push_fault(Fault::Throttling);
    let r = get_with_token(d.addr, PATH, &token).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["code"], "CredentialsUnavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(sts.faults_fired(), vec![Fault::Throttling]);
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 1, "no real call after an unknown check");
    assert_eq!(calls[0].fault, Some(Fault::Throttling));
    assert_eq!(
        calls[0].session_name.as_deref(),
        Some(PROBE_SESSION_NAME),
        "the throttled call was the first probe"
    );
    assert_eq!(calls[0].external_id, None);
    assert_eq!(status(&d).enforcement, EnforcementStatus::Unknown);

    // Inside the retry backoff (1 s after a first failure): 503 again, no STS call.
    let r = get_with_token(d.addr, PATH, &token).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(sts.assume_role_calls().len(), 1);

    d.clock.advance(Duration::from_secs(1));
    let r = get_with_token(d.addr, PATH, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status(&d).enforcement, EnforcementStatus::Enforced);
    // The whole check again (two refused probes), then the real call.
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[3].external_id.as_deref(), Some(EXTERNAL_ID));
    assert_eq!(sts.faults_fired(), vec![Fault::Throttling]);
    d.stop().await;
}

#[tokio::test]
async fn the_check_is_repeated_after_recheck_interval_and_catches_a_loosened_policy() {
    let (sts, d, token) = start_enforced_and_required().await;
    assert_eq!(get_with_token(d.addr, PATH, &token).await.status, 200);
    assert_eq!(sts.assume_role_calls().len(), 3);

    let probes = |sts: &FakeSts| {
        sts.assume_role_calls()
            .iter()
            .filter(|c| c.session_name.as_deref() == Some(PROBE_SESSION_NAME))
            .count()
    };
    // Refreshes within the day do not probe again: each half-hour step makes one
    // refresh due (served from cache meanwhile), and it is one plain call.
    for step in 1..=5 {
        d.clock.advance(Duration::from_secs(30 * 60));
        assert_eq!(get_with_token(d.addr, PATH, &token).await.status, 200);
        assert_eq!(settled(&d, "acme-s3").await.state, MappingState::Fresh);
        assert_eq!(
            sts.assume_role_calls().len(),
            3 + step,
            "calls by step {step}"
        );
        assert_eq!(probes(&sts), 2, "probes by step {step}");
    }

    // A transient failure during a recheck keeps the last conclusive result.
    d.clock.advance(Duration::from_secs(24 * 3600));
    sts.push_fault(Fault::Throttling);
    let r = get_with_token(d.addr, PATH, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(settled(&d, "acme-s3").await.state, MappingState::Fresh);
    assert_eq!(sts.faults_fired(), vec![Fault::Throttling]);
    let recheck = &sts.assume_role_calls()[8];
    assert_eq!(recheck.fault, Some(Fault::Throttling));
    assert_eq!(
        recheck.session_name.as_deref(),
        Some(PROBE_SESSION_NAME),
        "the throttled call was the recheck's probe"
    );
    assert_eq!(probes(&sts), 3);
    assert_eq!(status(&d).enforcement, EnforcementStatus::Enforced);

    // The customer drops the condition; the next conclusive recheck refuses the role
    // and drops its credentials.
    sts.add_role(Role::new(
        role_arn("vendor-sync"),
        TrustRule::NoExternalIdRequired,
    ));
    d.clock.advance(Duration::from_secs(25 * 3600));
    get_refused_as_unsafe(&d, &token).await;
    assert_eq!(settled(&d, "acme-s3").await.state, MappingState::Failed);
    assert_eq!(status(&d).enforcement, EnforcementStatus::NotEnforced);
    let calls = sts.assume_role_calls();
    assert_eq!(
        calls.len(),
        11,
        "one accepted probe settles it; no real call"
    );
    assert_eq!(calls[10].session_name.as_deref(), Some(PROBE_SESSION_NAME));
    assert_eq!(calls[10].status, Some(200));
    get_refused_as_unsafe(&d, &token).await;
    assert_eq!(sts.faults_fired(), vec![Fault::Throttling]);
    d.stop().await;
}
