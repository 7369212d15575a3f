//! `GET /metrics` at scale (docs/metrics.md, "Which mappings have series"): with
//! `[metrics] per_mapping = "active"` (the default) only the mappings that matter now
//! have series with a `mapping` label, so the scrape stays small however many mappings
//! are configured; the `credvend_fleet_*` totals always cover every mapping.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use credvend::clock::ManualClock;
use credvend::config::{Config, Mapping, PerMappingSeries};
use support::daemon::{TestDaemon, config, mapping, role_arn};
use support::fake_sts::{FakeSts, Fault, Role, TrustRule};
use support::http::{get_with_token, request};

const EXTERNAL_ID: &str = "scale-external-id-0123456789";
const MIB: usize = 1024 * 1024;

/// A 64-character token unique to mapping `i`.
fn token_of(i: usize) -> String {
    format!("scale-{i:08}-{}", "0123456789abcdef".repeat(4))[..64].to_string()
}

fn name_of(i: usize) -> String {
    format!("customer-{i:06}")
}

/// `n` mappings `customer-000000`…: those in `denied` use the role `denied` (which
/// refuses every AssumeRole), the others `vendor-sync`.
fn mappings(n: usize, denied: &BTreeSet<usize>) -> Vec<Mapping> {
    (0..n)
        .map(|i| {
            let role = if denied.contains(&i) {
                "denied"
            } else {
                "vendor-sync"
            };
            mapping(&name_of(i), role, Some(EXTERNAL_ID), &token_of(i))
        })
        .collect()
}

/// A daemon with `mappings` against a fake STS where `vendor-sync` trusts us and
/// `denied` answers every AssumeRole with AccessDenied (a role fault, so the test can
/// see that it fired).
async fn start(mappings: Vec<Mapping>, tweak: impl FnOnce(&mut Config)) -> (FakeSts, TestDaemon) {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    sts.add_role(Role::new(
        role_arn("vendor-sync"),
        TrustRule::RequireExternalId(EXTERNAL_ID.into()),
    ));
    sts.add_role(
        Role::new(
            role_arn("denied"),
            TrustRule::RequireExternalId(EXTERNAL_ID.into()),
        )
        .fault(Fault::AccessDenied),
    );
    let mut config = config(&sts.endpoint_url(), mappings);
    tweak(&mut config);
    let d = TestDaemon::start(config, clock).await;
    (sts, d)
}

async fn scrape(d: &TestDaemon) -> String {
    let r = request(d.admin, "GET", "/metrics", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Every value of the `mapping` label in `text`.
fn mapping_labels(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.split("mapping=\"").nth(1)?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn series_count(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#')).count()
}

/// Size, series and render time of a scrape of `n` idle mappings under `per_mapping`.
/// Printed for the record (the render time is informational only).
async fn idle_scrape(n: usize, per_mapping: PerMappingSeries) -> String {
    let (_sts, d) = start(mappings(n, &BTreeSet::new()), |c| {
        c.metrics.per_mapping = per_mapping
    })
    .await;
    let _ = scrape(&d).await;
    let started = Instant::now();
    let text = scrape(&d).await;
    let took = started.elapsed();
    println!(
        "{n} idle mappings, per_mapping = {}: GET /metrics {} bytes, {} series, {took:?}",
        per_mapping.as_str(),
        text.len(),
        series_count(&text)
    );
    d.stop().await;
    text
}

#[tokio::test]
async fn metrics_of_100k_idle_mappings_fit_in_1_mib() {
    let text = idle_scrape(100_000, PerMappingSeries::Active).await;
    assert!(
        text.len() < MIB,
        "GET /metrics of 100,000 idle mappings is {} bytes, over 1 MiB",
        text.len()
    );
    // The mappings are there, counted in the fleet families; none has series of its own.
    assert_eq!(value(&text, "credvend_mappings"), Some(100_000.0));
    assert_eq!(
        value(&text, r#"credvend_fleet_mapping_state{state="empty"}"#),
        Some(100_000.0),
        "{text}"
    );
    assert_eq!(mapping_labels(&text), BTreeSet::new());
}

#[tokio::test]
async fn with_50_of_100k_mappings_failing_exactly_those_50_have_series() {
    let failing: BTreeSet<usize> = (0..50).map(|k| k * 1999 + 7).collect();
    let (sts, d) = start(mappings(100_000, &failing), |_| {}).await;
    for &i in &failing {
        let r = get_with_token(
            d.addr,
            &format!("/v1/credentials/{}", name_of(i)),
            &token_of(i),
        )
        .await;
        assert_eq!(r.status, 403, "{}: {}", name_of(i), r.body);
    }
    assert_eq!(
        sts.faults_fired_for(&role_arn("denied")),
        vec![Fault::AccessDenied; 50],
        "each failing mapping was denied by STS, once"
    );
    let text = scrape(&d).await;
    let expected: BTreeSet<String> = failing.iter().map(|&i| name_of(i)).collect();
    assert_eq!(mapping_labels(&text), expected);
    assert!(text.len() < MIB, "{} bytes", text.len());
    for name in &expected {
        assert_eq!(
            value(
                &text,
                &format!("credvend_mapping_state{{mapping=\"{name}\",state=\"failed\"}}")
            ),
            Some(1.0),
            "{name}"
        );
    }
    assert_eq!(
        value(
            &text,
            r#"credvend_fleet_assume_role_failures_total{reason="access_denied"}"#
        ),
        Some(50.0)
    );
    assert_eq!(
        value(&text, r#"credvend_fleet_mapping_state{state="failed"}"#),
        Some(50.0)
    );
    d.stop().await;
}

/// A mapping served within `active_window` has its series; the window passing takes
/// them away, while a failed mapping keeps its series however long ago it failed.
#[tokio::test]
async fn a_served_mapping_has_series_for_the_active_window_then_loses_them() {
    let window = Duration::from_secs(10 * 60);
    let (sts, d) = start(mappings(3, &BTreeSet::from([2])), |c| {
        c.metrics.active_window = window
    })
    .await;
    let (idle, served, failed) = (name_of(0), name_of(1), name_of(2));
    let r = get_with_token(d.addr, &format!("/v1/credentials/{served}"), &token_of(1)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get_with_token(d.addr, &format!("/v1/credentials/{failed}"), &token_of(2)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        sts.faults_fired_for(&role_arn("denied")),
        vec![Fault::AccessDenied]
    );
    let text = scrape(&d).await;
    assert_eq!(
        mapping_labels(&text),
        BTreeSet::from([served.clone(), failed.clone()])
    );
    assert_eq!(
        value(
            &text,
            &format!("credvend_credentials_served_total{{mapping=\"{served}\",source=\"fresh\"}}")
        ),
        Some(1.0),
        "{text}"
    );

    d.clock.advance(window - Duration::from_secs(1));
    let text = scrape(&d).await;
    assert_eq!(
        mapping_labels(&text),
        BTreeSet::from([served.clone(), failed.clone()]),
        "1 s before the window ends"
    );

    d.clock.advance(Duration::from_secs(1));
    let text = scrape(&d).await;
    assert_eq!(
        mapping_labels(&text),
        BTreeSet::from([failed.clone()]),
        "the window has passed: the served mapping goes, the failed one stays:\n{text}"
    );
    // No retry made the failure recent again: the failed state alone keeps it.
    assert_eq!(sts.faults_fired_for(&role_arn("denied")).len(), 1);
    assert_eq!(
        value(
            &text,
            r#"credvend_fleet_credentials_served_total{source="fresh"}"#
        ),
        Some(1.0)
    );

    // Served again (from the cache): back, with its running totals.
    let r = get_with_token(d.addr, &format!("/v1/credentials/{served}"), &token_of(1)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let text = scrape(&d).await;
    assert_eq!(
        mapping_labels(&text),
        BTreeSet::from([served.clone(), failed.clone()])
    );
    assert!(!text.contains(&idle));
    assert_eq!(
        value(
            &text,
            &format!("credvend_credentials_served_total{{mapping=\"{served}\",source=\"cache\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("credvend_credentials_served_total{{mapping=\"{served}\",source=\"fresh\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    d.stop().await;
}

#[tokio::test]
async fn per_mapping_none_writes_no_mapping_label_at_all() {
    let (sts, d) = start(mappings(4, &BTreeSet::from([0])), |c| {
        c.metrics.per_mapping = PerMappingSeries::None
    })
    .await;
    let r = get_with_token(
        d.addr,
        &format!("/v1/credentials/{}", name_of(0)),
        &token_of(0),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = get_with_token(
        d.addr,
        &format!("/v1/credentials/{}", name_of(1)),
        &token_of(1),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        sts.faults_fired_for(&role_arn("denied")),
        vec![Fault::AccessDenied]
    );
    let text = scrape(&d).await;
    assert!(!text.contains("mapping="), "{text}");
    for (series, expected) in [
        (r#"credvend_fleet_mapping_state{state="failed"}"#, 1.0),
        (r#"credvend_fleet_mapping_state{state="fresh"}"#, 1.0),
        (r#"credvend_fleet_mapping_state{state="empty"}"#, 2.0),
        (r#"credvend_fleet_assume_role_total{result="success"}"#, 1.0),
        (r#"credvend_fleet_assume_role_total{result="error"}"#, 1.0),
        (
            r#"credvend_fleet_assume_role_failures_total{reason="access_denied"}"#,
            1.0,
        ),
        (
            r#"credvend_fleet_credentials_served_total{source="fresh"}"#,
            1.0,
        ),
        (
            r#"credvend_fleet_external_id_enforced{result="unknown"}"#,
            4.0,
        ),
    ] {
        assert_eq!(value(&text, series), Some(expected), "{series} in:\n{text}");
    }
    d.stop().await;
}

/// Under `all`, every fleet total equals the sum of its per-mapping series, on a real
/// daemon's scrape (src/metrics/mod.rs checks the same over every label value).
#[tokio::test]
async fn under_all_the_fleet_totals_are_the_sums_of_the_per_mapping_series() {
    let (_sts, d) = start(mappings(6, &BTreeSet::from([0, 3])), |c| {
        c.metrics.per_mapping = PerMappingSeries::All
    })
    .await;
    for i in [0, 1, 1, 2, 3, 1, 2] {
        let _ = get_with_token(
            d.addr,
            &format!("/v1/credentials/{}", name_of(i)),
            &token_of(i),
        )
        .await;
    }
    let text = scrape(&d).await;
    assert_eq!(mapping_labels(&text).len(), 6, "every mapping under all");
    let sum = |family: &str, label: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{mapping=")) && l.contains(label))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    for (family, label, expected) in [
        ("assume_role_total", r#"result="success""#, 2.0),
        ("assume_role_total", r#"result="error""#, 2.0),
        (
            "assume_role_failures_total",
            r#"reason="access_denied""#,
            2.0,
        ),
        ("credentials_served_total", r#"source="fresh""#, 2.0),
        ("credentials_served_total", r#"source="cache""#, 3.0),
        ("mapping_state", r#"state="failed""#, 2.0),
        ("mapping_state", r#"state="empty""#, 2.0),
    ] {
        let fleet = value(&text, &format!("credvend_fleet_{family}{{{label}}}"));
        assert_eq!(fleet, Some(expected), "credvend_fleet_{family}{{{label}}}");
        assert_eq!(
            sum(&format!("credvend_{family}"), label),
            expected,
            "credvend_{family}{{{label}}}"
        );
    }
    d.stop().await;
}

/// `[metrics]` follows a reload: from the next scrape on, the new mode decides.
#[tokio::test]
async fn a_reload_applies_a_new_per_mapping_mode() {
    let (sts, d) = start(mappings(3, &BTreeSet::new()), |_| {}).await;
    assert_eq!(
        mapping_labels(&scrape(&d).await),
        BTreeSet::new(),
        "active: all idle"
    );
    let mut all = config(&sts.endpoint_url(), mappings(3, &BTreeSet::new()));
    all.metrics.per_mapping = PerMappingSeries::All;
    d.daemon.apply_config(&all);
    assert_eq!(
        mapping_labels(&scrape(&d).await).len(),
        3,
        "all: every mapping"
    );
    d.daemon
        .apply_config(&config(&sts.endpoint_url(), mappings(3, &BTreeSet::new())));
    assert_eq!(
        mapping_labels(&scrape(&d).await),
        BTreeSet::new(),
        "active again"
    );
    d.stop().await;
}
