//! `GET /metrics` on the admin listener of a running daemon (see src/metrics/mod.rs):
//! the text format, the families present from the first scrape, the gauges that mirror
//! the cache, bounded labels, no secrets, and series that follow config reloads.

mod support;

use std::process::{Command, Stdio};

use support::daemon::{self, config, mapping, token};
use support::http::request;

const EXTERNAL_ID: &str = "canary-external-id-0123456789";

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `per_mapping = "all"`: every mapping has its series, busy or idle, as before
/// `[metrics]` existed. The tests here pin that output; tests/metrics_scale.rs pins
/// `active` (the default) and `none`.
fn all_series(mut config: credvend::config::Config) -> credvend::config::Config {
    config.metrics.per_mapping = credvend::config::PerMappingSeries::All;
    config
}

/// `daemon::start_acme` under `per_mapping = "all"`.
async fn start_acme_all() -> (support::fake_sts::FakeSts, daemon::TestDaemon, String) {
    let token = token("acme");
    let (sts, d) = daemon::start_with_sts_and(
        vec![mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &token)],
        |c| *c = all_series(c.clone()),
    )
    .await;
    sts.add_role(support::fake_sts::Role::new(
        daemon::role_arn("vendor-sync"),
        support::fake_sts::TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    ));
    (sts, d, token)
}

async fn scrape(admin: std::net::SocketAddr) -> String {
    let r = request(admin, "GET", "/metrics", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.body
}

#[tokio::test]
async fn metrics_are_served_in_text_format_with_build_info_and_mappings() {
    let (_sts, d, _token) = start_acme_all().await;

    let text = scrape(d.admin).await;
    assert_eq!(
        value(
            &text,
            &format!(
                "credvend_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "credvend_mappings"), Some(1.0), "{text}");
    assert_eq!(
        value(
            &text,
            r#"credvend_mapping_state{mapping="acme-s3",state="empty"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"credvend_assume_role_failures_total{mapping="acme-s3",reason="access_denied"}"#
        ),
        Some(0.0),
        "{text}"
    );
    for family in [
        "# TYPE credvend_assume_role_duration_seconds histogram",
        "# TYPE credvend_http_request_duration_seconds histogram",
        "# TYPE credvend_sts_rate_limited_total counter",
        "# TYPE credvend_config_reloads_total counter",
        "# TYPE credvend_external_id_enforced gauge",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    #[cfg(target_os = "linux")]
    assert!(text.contains("process_resident_memory_bytes"), "{text}");

    // The first scrape itself is counted on the next one, under a fixed route.
    let text = scrape(d.admin).await;
    assert_eq!(
        value(
            &text,
            r#"credvend_http_requests_total{code="200",route="metrics"}"#
        ),
        Some(1.0),
        "{text}"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_vend_shows_up_as_state_and_expiry_and_no_secret_reaches_metrics() {
    let (_sts, d, token) = daemon::start_acme(EXTERNAL_ID).await;

    let vend = request(
        d.addr,
        "GET",
        "/v1/credentials/acme-s3",
        &[("Authorization", &token)],
    )
    .await;
    assert_eq!(vend.status, 200, "{}", vend.body);
    let body = vend.json();
    let expiration = humantime::parse_rfc3339(body["Expiration"].as_str().unwrap()).unwrap();
    let expiration_secs = expiration
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;

    // Paths never become label values, whatever a client asks for.
    let probe = request(d.admin, "GET", "/no-such-admin-path-canary", &[]).await;
    assert_eq!(probe.status, 404);

    let text = scrape(d.admin).await;
    assert_eq!(
        value(
            &text,
            r#"credvend_mapping_state{mapping="acme-s3",state="fresh"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"credvend_credentials_expiry_timestamp_seconds{mapping="acme-s3"}"#
        ),
        Some(expiration_secs),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"credvend_http_requests_total{code="404",route="other"}"#
        ),
        Some(1.0),
        "{text}"
    );
    for secret in [
        token.as_str(),
        EXTERNAL_ID,
        body["SecretAccessKey"].as_str().unwrap(),
        body["Token"].as_str().unwrap(),
        "no-such-admin-path-canary",
    ] {
        assert!(!text.contains(secret), "{secret:?} leaked into /metrics");
    }
    d.stop().await;
}

#[tokio::test]
async fn a_reload_that_removes_a_mapping_removes_its_series() {
    let (a, b) = (token("a"), token("b"));
    let (sts, d) = daemon::start_with_sts_and(
        vec![
            mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &a),
            mapping("beta-s3", "vendor-sync", Some(EXTERNAL_ID), &b),
        ],
        |c| *c = all_series(c.clone()),
    )
    .await;
    let text = scrape(d.admin).await;
    assert!(text.contains(r#"mapping="beta-s3""#), "{text}");
    assert_eq!(value(&text, "credvend_mappings"), Some(2.0));

    d.daemon.apply_config(&all_series(config(
        &sts.endpoint_url(),
        vec![mapping("acme-s3", "vendor-sync", Some(EXTERNAL_ID), &a)],
    )));
    let text = scrape(d.admin).await;
    assert!(!text.contains("beta-s3"), "{text}");
    assert!(text.contains(r#"mapping="acme-s3""#), "{text}");
    assert_eq!(value(&text, "credvend_mappings"), Some(1.0));
    d.stop().await;
}

/// `promtool check metrics` lints names, types, HELP text and units, under
/// `per_mapping = "all"` so that the `mapping`-labelled families are in the output beside
/// the `credvend_fleet_*` ones. promtool comes
/// from the Debian package `prometheus`, which scripts/test.sh installs; its absence
/// fails the test.
#[tokio::test]
async fn promtool_check_metrics_is_clean() {
    assert!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool is not installed: run scripts/test.sh (installs the Debian package prometheus)"
    );
    let (_sts, d, _token) = start_acme_all().await;
    let text = scrape(d.admin).await;
    d.stop().await;

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Events bump their counters exactly once, with the mapping's label.
#[tokio::test]
async fn assume_role_results_served_sources_and_auth_failures_are_counted() {
    use support::fake_sts::Fault;
    use support::http::get_with_token;
    let (sts, d, token) = daemon::start_acme(EXTERNAL_ID).await;
    let path = "/v1/credentials/acme-s3";
    assert_eq!(get_with_token(d.addr, path, &token).await.status, 200);
    assert_eq!(get_with_token(d.addr, path, &token).await.status, 200);
    assert_eq!(get_with_token(d.addr, path, "wrong").await.status, 403);
    assert_eq!(request(d.addr, "GET", path, &[]).await.status, 401);
    let text = scrape(d.admin).await;
    let ok = r#"credvend_assume_role_total{mapping="acme-s3",result="success"}"#;
    assert_eq!(value(&text, ok), Some(1.0), "{text}");
    let fresh = r#"credvend_credentials_served_total{mapping="acme-s3",source="fresh"}"#;
    let cache = r#"credvend_credentials_served_total{mapping="acme-s3",source="cache"}"#;
    assert_eq!(value(&text, fresh), Some(1.0));
    assert_eq!(value(&text, cache), Some(1.0));
    let invalid = r#"credvend_auth_failures_total{reason="invalid_token"}"#;
    let missing = r#"credvend_auth_failures_total{reason="missing_token"}"#;
    assert_eq!(value(&text, invalid), Some(1.0), "{text}");
    assert_eq!(value(&text, missing), Some(1.0), "{text}");
    let requests_200 = r#"credvend_http_requests_total{code="200",route="credentials"}"#;
    assert_eq!(value(&text, requests_200), Some(2.0), "{text}");

    // One forced AccessDenied on the next refresh adds exactly one failure.
    sts.push_fault(Fault::AccessDenied);
    d.clock.advance(std::time::Duration::from_secs(26 * 60));
    assert_eq!(
        support::daemon::settled(&d, "acme-s3").await.state,
        credvend::model::MappingState::Failed
    );
    assert_eq!(sts.faults_fired(), vec![Fault::AccessDenied]);
    let calls = sts.assume_role_calls();
    assert_eq!(calls.len(), 2, "the vend, then the denied refresh");
    assert_eq!(calls[1].fault, Some(Fault::AccessDenied));
    let text = scrape(d.admin).await;
    let denied = r#"credvend_assume_role_failures_total{mapping="acme-s3",reason="access_denied"}"#;
    let error = r#"credvend_assume_role_total{mapping="acme-s3",result="error"}"#;
    assert_eq!(value(&text, denied), Some(1.0), "{text}");
    assert_eq!(value(&text, error), Some(1.0), "{text}");
    let throttled = r#"credvend_assume_role_failures_total{mapping="acme-s3",reason="throttled"}"#;
    assert_eq!(value(&text, throttled), Some(0.0));
    let state = r#"credvend_mapping_state{mapping="acme-s3",state="failed"}"#;
    assert_eq!(value(&text, state), Some(1.0), "{text}");
    d.stop().await;
}

/// `credvend_external_id_enforced` follows a reload that gives a mapping another role:
/// the old role's verdict is gone as soon as the reload is applied (-1, not checked,
/// until the new role is), the new role's verdict shows once it is checked, and a
/// request of the old generation still in its enforcement check when the reload lands
/// does not put the old role's verdict back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enforcement_gauge_follows_a_reload_that_changes_the_role() {
    use support::fake_sts::{Role, TrustRule};
    const GAUGE: &str = r#"credvend_external_id_enforced{mapping="m"}"#;
    let t = token("m");
    // `warn`: the unsafe role is still served, so every step has a 200 to wait for.
    let m = |role: &str| {
        let mut m = mapping("m", role, Some(EXTERNAL_ID), &t);
        m.external_id_enforcement = credvend::config::EnforcementMode::Warn;
        m
    };
    let (sts, d) =
        daemon::start_with_sts_and(vec![m("enforcing")], |c| *c = all_series(c.clone())).await;
    sts.add_role(Role::new(
        daemon::role_arn("enforcing"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    ));
    sts.add_role(Role::new(
        daemon::role_arn("open"),
        TrustRule::NoExternalIdRequired,
    ));
    let reload = |role: &str| {
        d.daemon
            .apply_config(&all_series(config(&sts.endpoint_url(), vec![m(role)])))
    };
    let get = || support::http::get_with_token(d.addr, "/v1/credentials/m", &t);
    // What the gauge holds now (what events set), and what `GET /metrics` shows (which
    // also brings it in line with the cache's record first). Both must follow a reload.
    let held = || value(&d.daemon.metrics().render(), GAUGE);
    let gauge = || async { value(&scrape(d.admin).await, GAUGE) };
    assert_eq!(
        gauge().await,
        Some(-1.0),
        "not checked before the first request"
    );
    assert_eq!(get().await.status, 200);
    assert_eq!(gauge().await, Some(1.0), "the enforcing role was checked");

    reload("open");
    assert_eq!(
        held(),
        Some(-1.0),
        "the reload itself forgets the old role's verdict"
    );
    assert_eq!(
        gauge().await,
        Some(-1.0),
        "the new role is not checked yet: the old role's verdict must not show"
    );
    assert_eq!(get().await.status, 200, "warn serves the unsafe role");
    assert_eq!(
        gauge().await,
        Some(0.0),
        "the open role was checked: unsafe"
    );

    // Back to the enforcing role while a request of the "open" generation is inside
    // its enforcement probes: the probes are held, the reload lands, they are released.
    // (Away and back first, so that the open role's verdict is forgotten and its next
    // request probes again.)
    reload("enforcing");
    reload("open");
    let calls_before = sts.assume_role_calls().len();
    let hold = sts.hold_assume_role();
    let old_request = {
        let (addr, t) = (d.addr, t.clone());
        tokio::spawn(
            async move { support::http::get_with_token(addr, "/v1/credentials/m", &t).await },
        )
    };
    hold.wait_held(1).await;
    reload("enforcing");
    hold.release();
    let old = old_request.await.expect("request task");
    assert_eq!(old.status, 200, "{}", old.body);
    let probed: Vec<_> = sts.assume_role_calls()[calls_before..]
        .iter()
        .map(|c| c.role_arn.clone().unwrap_or_default())
        .collect();
    assert!(
        probed.iter().all(|r| *r == daemon::role_arn("open")) && !probed.is_empty(),
        "the held request checked and fetched the open role: {probed:?}"
    );
    assert_eq!(
        held(),
        Some(-1.0),
        "the open role's verdict, concluded after the reload, is not the enforcing role's"
    );
    assert_eq!(gauge().await, Some(-1.0), "nor at a scrape");
    assert_eq!(get().await.status, 200);
    assert_eq!(
        gauge().await,
        Some(1.0),
        "the enforcing role was checked again"
    );
    d.stop().await;
}
