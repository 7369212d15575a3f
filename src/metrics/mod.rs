//! Prometheus metrics (docs/design.md, Telemetry), every family registered once, here.
//!
//! [`Metrics`] owns its own [`prometheus::Registry`] (not the process-global default),
//! so every daemon — and every test — has an independent set. It is served as Prometheus
//! text exposition format 0.0.4 by `GET /metrics` on the admin listener ([`CONTENT_TYPE`],
//! [`Metrics::render`]).
//!
//! Families and labels:
//!
//! | family | type | labels |
//! |---|---|---|
//! | `credvend_assume_role_total` | counter | `mapping`, `result` = `success\|error` |
//! | `credvend_assume_role_failures_total` | counter | `mapping`, `reason` ([`FailureReason`]) |
//! | `credvend_assume_role_duration_seconds` | histogram, 5 ms … 10 s | `result` |
//! | `credvend_credentials_served_total` | counter | `mapping`, `source` ([`Source`]) |
//! | `credvend_credentials_expiry_timestamp_seconds` | gauge | `mapping` |
//! | `credvend_mapping_state` | gauge, one-hot | `mapping`, `state` ([`MappingState`]) |
//! | `credvend_external_id_enforced` | gauge, 1/0/-1 | `mapping` |
//! | `credvend_http_requests_total` | counter | `route`, `code` |
//! | `credvend_http_request_duration_seconds` | histogram, 50 µs … 1 s | `route` |
//! | `credvend_auth_failures_total` | counter | `reason` ([`AUTH_FAILURE_REASONS`]) |
//! | `credvend_sts_rate_limited_total` | counter | — |
//! | `credvend_sts_calls_waiting` | gauge | `priority` = `cold\|background` |
//! | `credvend_mappings_backing_off` | gauge | — |
//! | `credvend_config_reloads_total` | counter | `result` = `success\|error` |
//! | `credvend_config_last_reload_successful` | gauge, 1/0 | — |
//! | `credvend_config_last_reload_timestamp_seconds` | gauge | — |
//! | `credvend_mappings` | gauge | — |
//! | `credvend_job_tokens` | gauge | — |
//! | `credvend_job_tokens_minted_total` | counter | `mapping` (from its first mint on) |
//! | `credvend_job_tokens_revoked_total` | counter | `mapping` (from its first mint on) |
//! | `credvend_job_tokens_expired_total` | counter | `mapping` (from its first mint on) |
//! | `credvend_build_info` | gauge, always 1 | `version` |
//! | `process_*` | Linux process collector | — |
//!
//! **Labels are bounded.** Every label value is either a fixed string from this crate
//! (`route`, `result`, `reason`, `source`, `state`: the typed methods take enums or
//! `&'static str`) or a mapping name, and mapping names come only from the validated
//! configuration (at most 64 characters each), never from a request path: a request for
//! an unknown mapping is counted under a `route`/`code`, not under its name. No label
//! value ever carries a token, an External ID or a key. A mapping removed by a reload
//! loses all of its series ([`Metrics::sync_mappings`]),
//! so stale series vanish instead of lingering until restart.
//!
//! Per-mapping counters are initialised to 0 for every known label value when a
//! mapping is registered, so the first failure is a visible `0 → 1` step for
//! `increase()` in alert rules rather than a series appearing at 1.
//!
//! The `mapping`-labelled families live in `per_mapping` (compact atomics, text
//! written directly) rather than in the crate's metric vectors, which cost ~11 KB per
//! mapping; everything else is a plain `prometheus` collector in `Metrics::registry`.

mod per_mapping;

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::creds::FailureReason;
use crate::model::{MappingState, MappingStatus, Source};
use per_mapping::PerMapping;

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Values of the `route` label of the HTTP families. Callers classify a request into
/// one of these; a path is never used as a label value.
pub mod route {
    /// `/v1/credentials` and `/v1/credentials/{mapping}`.
    pub const CREDENTIALS: &str = "credentials";
    /// `/metrics`.
    pub const METRICS: &str = "metrics";
    /// `/healthz`.
    pub const HEALTHZ: &str = "healthz";
    /// `/readyz`.
    pub const READYZ: &str = "readyz";
    /// `/status`.
    pub const STATUS: &str = "status";
    /// Anything else (404s, probes, scanners).
    pub const OTHER: &str = "other";
    /// Every route, in a fixed order.
    pub const ALL: [&str; 6] = [CREDENTIALS, METRICS, HEALTHZ, READYZ, STATUS, OTHER];
}

/// Values of the `reason` label of `credvend_auth_failures_total` (chosen per refusal in
/// `src/events.rs`): the first two are a missing and a wrong token; the last two are
/// requests refused before a token was looked at (proxied requests, foreign `Host`;
/// docs/design.md, Wire contract).
pub const AUTH_FAILURE_REASONS: [&str; 4] = [
    "missing_token",
    "invalid_token",
    "proxied_request",
    "invalid_host",
];

/// STS latency: a healthy regional call takes 20–200 ms; the call timeout is at most
/// 1 min, but anything past 10 s is already a failure in practice.
const STS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Request-path latency: a cache hit is tens of µs; a cold miss waits up to `cold_wait`
/// (800 ms by default), hence the top bucket.
const HTTP_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Values of the `priority` label of `credvend_sts_calls_waiting` (the cache's
/// `Priority::as_str`).
pub const STS_PRIORITIES: [&str; 2] = ["cold", "background"];

const SUCCESS: &str = "success";
const ERROR: &str = "error";

/// Every metric family of credvend, in one registry of its own.
pub struct Metrics {
    registry: Registry,
    /// The `mapping`-labelled families.
    per_mapping: PerMapping,
    assume_role_duration_seconds: HistogramVec,
    http_requests_total: IntCounterVec,
    http_request_duration_seconds: HistogramVec,
    auth_failures_total: IntCounterVec,
    sts_rate_limited_total: IntCounter,
    sts_calls_waiting: IntGaugeVec,
    mappings_backing_off: IntGauge,
    config_reloads_total: IntCounterVec,
    config_last_reload_successful: IntGauge,
    config_last_reload_timestamp_seconds: Gauge,
    mappings: IntGauge,
    job_tokens: IntGauge,
    /// Serialises changes to the set of mappings (reloads).
    mappings_writer: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("mappings", &self.mappings.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `collector` in `registry`. Names and label sets are constants of this
/// file, so a failure is a programming error that every test run would catch.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric families are registered once, with valid constant names");
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    register(registry, vec)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    register(registry, vec)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let vec = HistogramVec::new(opts, labels).expect("valid histogram");
    register(registry, vec)
}

impl Metrics {
    /// Creates and registers every family. Families without labels (and the fixed label
    /// sets of `result`, `route` and auth `reason`) are present from the first scrape.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let metrics = Self {
            per_mapping: PerMapping::default(),
            assume_role_duration_seconds: histogram_vec(
                r,
                "credvend_assume_role_duration_seconds",
                "Duration of AssumeRole calls to STS, by result.",
                &["result"],
                STS_BUCKETS,
            ),
            http_requests_total: counter_vec(
                r,
                "credvend_http_requests_total",
                "HTTP requests answered, by route and status code.",
                &["route", "code"],
            ),
            http_request_duration_seconds: histogram_vec(
                r,
                "credvend_http_request_duration_seconds",
                "Time to answer an HTTP request, by route.",
                &["route"],
                HTTP_BUCKETS,
            ),
            auth_failures_total: counter_vec(
                r,
                "credvend_auth_failures_total",
                "Credential requests refused before reaching the cache, by reason.",
                &["reason"],
            ),
            sts_rate_limited_total: register(
                r,
                IntCounter::new(
                    "credvend_sts_rate_limited_total",
                    "STS calls that had to wait for credvend's own STS budget (sts.max_requests_per_second).",
                )
                .expect("valid counter"),
            ),
            sts_calls_waiting: gauge_vec(
                r,
                "credvend_sts_calls_waiting",
                "STS calls (fetches and External ID probes) waiting for a token of the STS budget or a concurrency permit, by priority (cold: a request waits; background: refresh, retry, prefetch).",
                &["priority"],
            ),
            mappings_backing_off: register(
                r,
                IntGauge::new(
                    "credvend_mappings_backing_off",
                    "Mappings backing off after a transient STS failure: requests that find no servable credential are answered 503 without an STS call until the retry (/status: retry_at).",
                )
                .expect("valid gauge"),
            ),
            config_reloads_total: counter_vec(
                r,
                "credvend_config_reloads_total",
                "Configuration reloads, by result (success|error).",
                &["result"],
            ),
            config_last_reload_successful: register(
                r,
                IntGauge::new(
                    "credvend_config_last_reload_successful",
                    "1 if the last configuration load (start-up or reload) was applied, 0 if it was rejected.",
                )
                .expect("valid gauge"),
            ),
            config_last_reload_timestamp_seconds: register(
                r,
                Gauge::new(
                    "credvend_config_last_reload_timestamp_seconds",
                    "Unix time of the last configuration load (start-up or reload), applied or rejected.",
                )
                .expect("valid gauge"),
            ),
            mappings: register(
                r,
                IntGauge::new("credvend_mappings", "Mappings in the applied configuration.")
                    .expect("valid gauge"),
            ),
            job_tokens: register(
                r,
                IntGauge::new(
                    "credvend_job_tokens",
                    "Live job tokens (minted on the control socket, not yet revoked or expired).",
                )
                .expect("valid gauge"),
            ),
            mappings_writer: Mutex::new(()),
            registry,
        };

        let build_info = gauge_vec(
            &metrics.registry,
            "credvend_build_info",
            "Always 1; the version label carries the running build.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector is registered once");

        for result in [SUCCESS, ERROR] {
            metrics
                .assume_role_duration_seconds
                .with_label_values(&[result]);
            metrics.config_reloads_total.with_label_values(&[result]);
        }
        for priority in STS_PRIORITIES {
            metrics.sts_calls_waiting.with_label_values(&[priority]);
        }
        for reason in AUTH_FAILURE_REASONS {
            metrics.auth_failures_total.with_label_values(&[reason]);
        }
        for route in route::ALL {
            metrics
                .http_request_duration_seconds
                .with_label_values(&[route]);
        }
        metrics
    }

    /// Everything, in Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut text = TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| format!("# credvend: cannot encode metrics: {error}\n"));
        self.per_mapping.render(&mut text);
        text
    }

    /// One AssumeRole call for `mapping` finished after `duration`.
    pub fn assume_role(
        &self,
        mapping: &str,
        outcome: Result<(), FailureReason>,
        duration: Duration,
    ) {
        let result = if outcome.is_ok() { SUCCESS } else { ERROR };
        self.assume_role_duration_seconds
            .with_label_values(&[result])
            .observe(duration.as_secs_f64());
        self.per_mapping.with(mapping, |s| s.assume_role(outcome));
    }

    /// A job token for `mapping` was minted.
    pub fn job_token_minted(&self, mapping: &str) {
        self.per_mapping.with(mapping, |s| s.job_token(0));
    }

    /// A job token for `mapping` ended: expired, or revoked before that.
    pub fn job_token_ended(&self, mapping: &str, expired: bool) {
        self.per_mapping
            .with(mapping, |s| s.job_token(if expired { 2 } else { 1 }));
    }

    /// `live` job tokens exist now.
    pub fn job_tokens_live(&self, live: usize) {
        self.job_tokens.set(i64::try_from(live).unwrap_or(i64::MAX));
    }

    /// A credential for `mapping` was served from `source`.
    pub fn served(&self, mapping: &str, source: Source) {
        self.per_mapping.with(mapping, |s| s.served(source));
    }

    /// The credential now held for `mapping` expires at `expiration`.
    pub fn expiry(&self, mapping: &str, expiration: SystemTime) {
        let secs = expiration
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.per_mapping.with(mapping, |s| s.set_expiry(secs));
    }

    /// `mapping` no longer holds a credential credvend keeps fresh (idle, failed,
    /// removed): its expiry series goes away instead of aging into a false alert.
    pub fn clear_expiry(&self, mapping: &str) {
        self.per_mapping.with(mapping, |s| s.clear_expiry());
    }

    /// `mapping` is now in `state`: that state's series is 1, the others 0.
    pub fn set_state(&self, mapping: &str, state: MappingState) {
        self.per_mapping.with(mapping, |s| s.set_state(state));
    }

    /// Result of the External ID enforcement check
    /// (docs/design.md, Credential lifecycle): `Some(true)` the role refused both probes,
    /// `Some(false)` it accepted one (unsafe), `None` not checked (yet, or
    /// `external_id_enforcement = "off"`).
    pub fn enforcement(&self, mapping: &str, enforced: Option<bool>) {
        let value = match enforced {
            Some(true) => 1,
            Some(false) => 0,
            None => -1,
        };
        self.per_mapping.with(mapping, |s| s.set_enforced(value));
    }

    /// One HTTP request on `route` (one of [`route::ALL`]) answered with `code` after
    /// `duration`.
    pub fn http_request(&self, route: &'static str, code: u16, duration: Duration) {
        // The status's own text avoids formatting (and allocating) the label per request.
        let status = hyper::StatusCode::from_u16(code).ok();
        let code_text = match &status {
            Some(status) => status.as_str(),
            None => "other",
        };
        self.http_requests_total
            .with_label_values(&[route, code_text])
            .inc();
        self.http_request_duration_seconds
            .with_label_values(&[route])
            .observe(duration.as_secs_f64());
    }

    /// A credential request was refused for `reason` (one of [`AUTH_FAILURE_REASONS`]).
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures_total.with_label_values(&[reason]).inc();
    }

    /// Raises `credvend_sts_rate_limited_total` to `total` if it is behind (for a
    /// component that keeps its own running count, such as the STS budget). Never
    /// lowers it, so a scrape that finds the budget's count unchanged adds nothing.
    pub fn sts_rate_limited_catch_up(&self, total: u64) {
        let current = self.sts_rate_limited_total.get();
        if total > current {
            self.sts_rate_limited_total.inc_by(total - current);
        }
    }

    /// `count` STS calls of `priority` (one of [`STS_PRIORITIES`]) wait for the budget
    /// or a concurrency permit right now.
    pub fn sts_calls_waiting(&self, priority: &'static str, count: usize) {
        self.sts_calls_waiting
            .with_label_values(&[priority])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A configuration reload was applied (`ok`) or rejected.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads_total
            .with_label_values(&[if ok { SUCCESS } else { ERROR }])
            .inc();
    }

    /// The configuration loaded at `at` was applied (`ok`: at start-up, or a reload) or
    /// rejected: the last-reload gauges.
    pub fn config_last_reload(&self, ok: bool, at: SystemTime) {
        self.config_last_reload_successful.set(i64::from(ok));
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_last_reload_timestamp_seconds.set(secs);
    }

    /// Sets `credvend_mappings`.
    fn set_mappings(&self, count: usize) {
        self.mappings.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Makes the metric set follow the configured mappings: sets `credvend_mappings`,
    /// registers new mappings (counters at 0, state `empty`, enforcement unknown) and
    /// forgets removed ones. Mappings present before keep their series untouched.
    /// Events for a mapping that is not registered are dropped: call this before the
    /// cache starts working on a new configuration.
    pub fn sync_mappings<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let _writer = self
            .mappings_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = self.per_mapping.sync(names);
        self.set_mappings(count);
    }

    /// Refreshes the gauges that mirror the cache (state, expiry, External ID
    /// enforcement) from a snapshot and
    /// catches `credvend_sts_rate_limited_total` up with the STS budget's count. Called
    /// at scrape time, so those gauges are right even where no event updated them.
    ///
    /// The expiry series is kept while credvend maintains the mapping (a refresh is
    /// scheduled or in flight, or it is degraded) — if the credential lapses meanwhile,
    /// the last, now past, timestamp stays so the "no successful refresh" alert keeps
    /// firing — and removed for idle, empty and failed mappings.
    ///
    /// Enforcement follows the cache's record, which a reload that changes a mapping's
    /// role resets: the series, kept because the name is, must not go on showing the
    /// old role's verdict.
    pub fn observe_cache(&self, statuses: &[MappingStatus], sts_rate_limited_total: u64) {
        for status in statuses {
            self.set_state(&status.name, status.state);
            let enforcement = status.enforcement.gauge();
            self.per_mapping
                .with(&status.name, |s| s.set_enforced(enforcement));
            let maintained = status.next_refresh.is_some()
                || matches!(
                    status.state,
                    MappingState::Fetching | MappingState::Refreshing | MappingState::Degraded
                );
            match (status.expires_at, maintained) {
                (Some(expiration), true) => self.expiry(&status.name, expiration),
                (None, true) => {}
                (_, false) => self.clear_expiry(&status.name),
            }
        }
        self.sts_rate_limited_catch_up(sts_rate_limited_total);
        let backing_off = statuses.iter().filter(|s| s.retry_at.is_some()).count();
        self.mappings_backing_off
            .set(i64::try_from(backing_off).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `text` for family `name`: its `# TYPE` line and its samples.
    fn family<'a>(text: &'a str, name: &str) -> (Option<&'a str>, Vec<&'a str>) {
        let type_line = text
            .lines()
            .find(|l| l.starts_with(&format!("# TYPE {name} ")));
        let samples = text
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{name}{{"))
                    || l.starts_with(&format!("{name} "))
                    || l.starts_with(&format!("{name}_bucket{{"))
                    || l.starts_with(&format!("{name}_sum"))
                    || l.starts_with(&format!("{name}_count"))
            })
            .collect();
        (
            type_line.map(|l| l.rsplit(' ').next().unwrap_or("")),
            samples,
        )
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn exercised() -> Metrics {
        let m = Metrics::new();
        m.sync_mappings(["acme-s3", "beta-s3"]);
        m.assume_role("acme-s3", Ok(()), Duration::from_millis(40));
        m.assume_role(
            "beta-s3",
            Err(FailureReason::AccessDenied),
            Duration::from_millis(30),
        );
        m.served("acme-s3", Source::Fresh);
        m.expiry("acme-s3", UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        m.set_state("acme-s3", MappingState::Fresh);
        m.enforcement("acme-s3", Some(true));
        m.http_request(route::CREDENTIALS, 200, Duration::from_micros(80));
        m.auth_failure("invalid_token");
        m.sts_rate_limited_catch_up(1);
        m.config_reload(true);
        m
    }

    #[test]
    fn every_family_renders_with_its_name_type_and_labels() {
        let text = exercised().render();
        let expected = [
            (
                "credvend_assume_role_total",
                "counter",
                r#"{mapping="acme-s3",result="success"} 1"#,
            ),
            (
                "credvend_assume_role_failures_total",
                "counter",
                r#"{mapping="beta-s3",reason="access_denied"} 1"#,
            ),
            (
                "credvend_assume_role_duration_seconds",
                "histogram",
                r#"_count{result="success"} 1"#,
            ),
            (
                "credvend_credentials_served_total",
                "counter",
                r#"{mapping="acme-s3",source="fresh"} 1"#,
            ),
            (
                "credvend_credentials_expiry_timestamp_seconds",
                "gauge",
                r#"{mapping="acme-s3"} 1800000000"#,
            ),
            (
                "credvend_mapping_state",
                "gauge",
                r#"{mapping="acme-s3",state="fresh"} 1"#,
            ),
            (
                "credvend_external_id_enforced",
                "gauge",
                r#"{mapping="acme-s3"} 1"#,
            ),
            (
                "credvend_http_requests_total",
                "counter",
                r#"{code="200",route="credentials"} 1"#,
            ),
            (
                "credvend_http_request_duration_seconds",
                "histogram",
                r#"_count{route="credentials"} 1"#,
            ),
            (
                "credvend_auth_failures_total",
                "counter",
                r#"{reason="invalid_token"} 1"#,
            ),
            ("credvend_sts_rate_limited_total", "counter", " 1"),
            (
                "credvend_config_reloads_total",
                "counter",
                r#"{result="success"} 1"#,
            ),
            ("credvend_mappings", "gauge", " 2"),
            (
                "credvend_build_info",
                "gauge",
                &format!("{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
            ),
        ];
        for (name, kind, sample) in expected {
            let (type_line, samples) = family(&text, name);
            assert_eq!(type_line, Some(kind), "type of {name} in:\n{text}");
            let line = format!("{name}{sample}");
            assert!(
                samples.contains(&line.as_str()),
                "{line} missing from:\n{}",
                samples.join("\n")
            );
        }
        #[cfg(target_os = "linux")]
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_span_sts_and_request_latencies() {
        let text = exercised().render();
        for bucket in [
            r#"credvend_assume_role_duration_seconds_bucket{result="success",le="0.005"} 0"#,
            r#"credvend_assume_role_duration_seconds_bucket{result="success",le="0.05"} 1"#,
            r#"credvend_assume_role_duration_seconds_bucket{result="success",le="10"} 1"#,
            r#"credvend_http_request_duration_seconds_bucket{route="credentials",le="0.00005"} 0"#,
            r#"credvend_http_request_duration_seconds_bucket{route="credentials",le="0.0001"} 1"#,
            r#"credvend_http_request_duration_seconds_bucket{route="credentials",le="1"} 1"#,
        ] {
            assert!(text.contains(bucket), "{bucket} missing");
        }
    }

    #[test]
    fn mapping_state_is_one_hot() {
        let m = Metrics::new();
        m.sync_mappings(["acme-s3"]);
        m.set_state("acme-s3", MappingState::Fresh);
        m.set_state("acme-s3", MappingState::Degraded);
        let text = m.render();
        let mut hot = Vec::new();
        for state in MappingState::ALL {
            let series = format!(
                "credvend_mapping_state{{mapping=\"acme-s3\",state=\"{}\"}}",
                state.as_str()
            );
            let v = value(&text, &series).unwrap_or_else(|| panic!("{series} missing"));
            if v == 1.0 {
                hot.push(state);
            } else {
                assert_eq!(v, 0.0, "{series}");
            }
        }
        assert_eq!(hot, vec![MappingState::Degraded]);
    }

    #[test]
    fn registered_mappings_start_at_zero_so_the_first_failure_is_an_increase() {
        let m = Metrics::new();
        m.sync_mappings(["x"]);
        let text = m.render();
        for reason in FailureReason::ALL {
            let series = format!(
                "credvend_assume_role_failures_total{{mapping=\"x\",reason=\"{}\"}}",
                reason.as_str()
            );
            assert_eq!(value(&text, &series), Some(0.0), "{series}");
        }
        assert_eq!(
            value(
                &text,
                r#"credvend_mapping_state{mapping="x",state="empty"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"credvend_external_id_enforced{mapping="x"}"#),
            Some(-1.0)
        );
        m.assume_role("x", Err(FailureReason::AccessDenied), Duration::ZERO);
        let text = m.render();
        assert_eq!(
            value(
                &text,
                r#"credvend_assume_role_failures_total{mapping="x",reason="access_denied"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn a_reload_that_removes_a_mapping_drops_its_series_and_keeps_the_others() {
        let m = exercised();
        m.sync_mappings(["beta-s3", "gamma-s3"]);
        let text = m.render();
        assert!(!text.contains("acme-s3"), "{text}");
        assert_eq!(value(&text, "credvend_mappings"), Some(2.0));
        // beta's counts survive; gamma starts at zero.
        assert_eq!(
            value(
                &text,
                r#"credvend_assume_role_failures_total{mapping="beta-s3",reason="access_denied"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"credvend_assume_role_total{mapping="gamma-s3",result="error"}"#
            ),
            Some(0.0)
        );
    }

    #[test]
    fn rate_limited_catch_up_never_double_counts() {
        let m = Metrics::new();
        m.sts_rate_limited_catch_up(1);
        m.sts_rate_limited_catch_up(3);
        m.sts_rate_limited_catch_up(2);
        assert_eq!(
            value(&m.render(), "credvend_sts_rate_limited_total"),
            Some(3.0)
        );
    }

    #[test]
    fn observe_cache_mirrors_state_and_drops_expiry_of_unmaintained_mappings() {
        let m = Metrics::new();
        m.sync_mappings(["active", "idle", "lapsing"]);
        let expires = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let status = |name: &str, state, expires_at, next_refresh| MappingStatus {
            name: name.to_string(),
            state,
            expires_at,
            access_key_id: None,
            last_success: None,
            last_error: None,
            next_refresh,
            retry_at: None,
            prefetch: false,
            enforcement: crate::model::EnforcementStatus::Unknown,
            enforcement_checked_at: None,
            enforcement_mode: crate::config::EnforcementMode::Off,
        };
        m.observe_cache(
            &[
                status("active", MappingState::Fresh, Some(expires), Some(expires)),
                status("idle", MappingState::Fresh, Some(expires), None),
                status(
                    "lapsing",
                    MappingState::Degraded,
                    Some(expires),
                    Some(expires),
                ),
            ],
            0,
        );
        let text = m.render();
        assert!(text.contains(
            r#"credvend_credentials_expiry_timestamp_seconds{mapping="active"} 1800000000"#
        ));
        assert!(!text.contains(r#"credvend_credentials_expiry_timestamp_seconds{mapping="idle"}"#));
        // The degraded mapping's credential lapses: the last timestamp stays.
        m.observe_cache(&[status("lapsing", MappingState::Fetching, None, None)], 0);
        let text = m.render();
        assert!(text.contains(
            r#"credvend_credentials_expiry_timestamp_seconds{mapping="lapsing"} 1800000000"#
        ));
        assert_eq!(
            value(
                &text,
                r#"credvend_mapping_state{mapping="lapsing",state="fetching"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn content_type_is_the_text_format() {
        assert!(CONTENT_TYPE.starts_with(prometheus::TEXT_FORMAT));
    }
}
