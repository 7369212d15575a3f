//! The admin listener's `/status`, `/readyz` and `/healthz`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use credvend::clock::ManualClock;
use credvend::config::Enforcement;
use support::daemon::{TestDaemon, config, eventually, mapping, role_arn, token};
use support::fake_sts::{FakeSts, Fault, Role, TrustRule};
use support::http::{get_with_token, request};

const EXTERNAL_ID: &str = "status-canary-external-id-4242";

#[tokio::test]
async fn status_reports_each_mapping_without_secrets() {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    sts.add_role(Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    ));
    sts.add_role(Role::new(
        role_arn("revoked"),
        TrustRule::RequireExternalId("x".into()),
    ));
    let good_token = token("good");
    let bad_token = token("bad");
    let mut good = mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &good_token);
    good.external_id_enforcement = Enforcement::Require;
    let bad = mapping("beta-s3", "revoked", Some(EXTERNAL_ID), &bad_token);
    let d = TestDaemon::start(config(&sts.endpoint_url(), vec![good, bad]), clock).await;

    let vended = get_with_token(d.addr, "/v1/credentials/acme-s3", &good_token).await;
    assert_eq!(vended.status, 200);
    let secret = vended.json()["SecretAccessKey"]
        .as_str()
        .unwrap()
        .to_string();
    let session = vended.json()["Token"].as_str().unwrap().to_string();
    let refused = get_with_token(d.addr, "/v1/credentials/beta-s3", &bad_token).await;
    assert_eq!(refused.json()["code"], "AssumeRoleDenied");

    let r = request(d.admin, "GET", "/status", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    for forbidden in [EXTERNAL_ID, &secret, &session, &good_token, &bad_token] {
        assert!(!r.body.contains(forbidden), "secret in /status: {}", r.body);
    }
    let status = r.json();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["config_generation"], 1);
    let acme = &status["mappings"]["acme-s3"];
    assert_eq!(acme["state"], "fresh");
    assert_eq!(acme["expires_at"], vended.json()["Expiration"]);
    assert_eq!(acme["seconds_remaining"], 3600);
    assert_eq!(acme["access_key_id"], vended.json()["AccessKeyId"]);
    assert!(acme["last_refresh"].is_string() && acme["next_refresh"].is_string());
    assert_eq!(acme["external_id_enforcement"]["mode"], "require");
    assert_eq!(acme["external_id_enforcement"]["result"], "enforced");
    assert!(acme["last_error"].is_null());
    let beta = &status["mappings"]["beta-s3"];
    assert_eq!(beta["state"], "failed");
    assert_eq!(beta["last_error"]["reason"], "access_denied");
    assert_eq!(beta["last_error"]["code"], "AccessDenied");
    assert!(beta["expires_at"].is_null());
    d.stop().await;
}

#[tokio::test]
async fn readyz_waits_for_prefetch_mappings_and_healthz_is_always_up() {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    sts.add_role(Role::new(role_arn("warm"), TrustRule::NoExternalIdRequired));
    // The prefetch fetch is slow: readiness must wait for it.
    sts.push_fault(Fault::Latency(Duration::from_millis(700)));
    let mut warm = mapping("warm", "warm", None, &token("warm"));
    warm.prefetch = true;
    let d = TestDaemon::start(config(&sts.endpoint_url(), vec![warm]), clock).await;

    let healthz = request(d.admin, "GET", "/healthz", &[]).await;
    assert_eq!(healthz.status, 200);
    eventually("listeners bound", || {
        d.daemon.cache.status()[0].state == credvend::cache::MappingState::Fetching
    })
    .await;
    let early = request(d.admin, "GET", "/readyz", &[]).await;
    assert_eq!(early.status, 503, "{}", early.body);
    assert!(early.body.contains("prefetch"));
    eventually("prefetched", || {
        d.daemon.cache.status()[0].state == credvend::cache::MappingState::Fresh
    })
    .await;
    let ready = request(d.admin, "GET", "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        sts.assume_role_calls().len(),
        1,
        "prefetch fetched without a request"
    );
    assert_eq!(sts.faults_fired().len(), 1);
    d.stop().await;
}
