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
//! | `credvend_assume_role_duration_seconds` | histogram, 5 ms … 10 s | `result`, `region` |
//! | `credvend_credentials_served_total` | counter | `mapping`, `source` ([`Source`]) |
//! | `credvend_credentials_expiry_timestamp_seconds` | gauge | `mapping` |
//! | `credvend_mapping_state` | gauge, one-hot | `mapping`, `state` ([`MappingState`]) |
//! | `credvend_external_id_enforced` | gauge, 1/0/-1 | `mapping` |
//! | `credvend_http_requests_total` | counter | `route`, `code` |
//! | `credvend_http_request_duration_seconds` | histogram, 50 µs … 1 s | `route` |
//! | `credvend_auth_failures_total` | counter | `reason` ([`AUTH_FAILURE_REASONS`]) |
//! | `credvend_sts_rate_limited_total` | counter | — |
//! | `credvend_sts_calls_waiting` | gauge | `priority` = `cold\|background` |
//! | `credvend_sts_region_healthy` | gauge, 1/0 | `region` |
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
//! Each counter family labelled by `mapping` has a fleet total beside it, the same counts
//! for all mappings together under `credvend_fleet_…` (`credvend_fleet_assume_role_total`,
//! `credvend_fleet_assume_role_failures_total`, `credvend_fleet_credentials_served_total`),
//! and the two `mapping`-labelled gauges have fleet counts (`credvend_fleet_mapping_state`
//! by `state`, `credvend_fleet_external_id_enforced` by `result` =
//! `enforced|not_enforced|unknown`). The fleet families always exist, whatever
//! `[metrics] per_mapping` says.
//!
//! **Series are bounded.** Which mappings have series of their own is one rule,
//! [`mapping_shown`]: under `per_mapping = "active"` (the default) a mapping that served a
//! credential or failed an AssumeRole call within `active_window`, or is failed,
//! degraded or unsafe right now; `"all"` shows every mapping and `"none"` none. A
//! mapping that is not shown keeps counting (its series come back with their running
//! totals when it is shown again), so `/metrics` at 100,000 idle mappings is the fixed
//! families alone, a few KB. The window runs on the injected clock's
//! [`Clock::monotonic`], so a wall-clock step does not hide or show anything.
//!
//! **Labels are bounded.** Every label value is either a fixed string from this crate
//! (`route`, `result`, `reason`, `source`, `state`: the typed methods take enums or
//! `&'static str`), a region name or a mapping name. Region names come from the
//! validated `[sts]` section (the primary and at most 8 fallbacks) and mappings' own
//! `region`, and label only the two fleet-wide STS families (the duration histogram counts
//! every STS attempt by `region` and `result`, so its `_count` is the STS call count per
//! region; the `mapping`-labelled families stay one count per fetch, without `region`,
//! so `per_mapping` sizes are unchanged). Mapping names come only from the validated
//! configuration (at most 64 characters each), never from a request path: a request for
//! an unknown mapping is counted under a `route`/`code`, not under its name. No label
//! value ever carries a token, an External ID or a key. A mapping removed by a reload
//! loses all of its series ([`Metrics::sync_mappings`]),
//! so stale series vanish instead of lingering until restart.
//!
//! Per-mapping counters are initialised to 0 for every known label value when a
//! mapping is registered. Under `per_mapping = "all"` the first failure is therefore a
//! visible `0 → 1` step for `increase()`; under `"active"` a mapping's series appear
//! with the failure already counted, which `increase()` cannot see, so the alert rules
//! read the fleet totals for that (config/alerts.yml).
//!
//! The six `mapping`-labelled families and the fleet families live in `per_mapping`
//! (compact atomics, text written directly) rather than in the crate's metric vectors,
//! which cost ~11 KB per mapping; everything else is a plain `prometheus` collector in
//! `Metrics::registry`.

mod per_mapping;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::clock::{Clock, SystemClock};
use crate::config::{MetricsConfig, PerMappingSeries};
use crate::creds::FailureReason;
use crate::creds::regions::{BreakerState, RegionHealth};
use crate::model::{MappingState, MappingStatus, Source};
pub use per_mapping::Activity;
use per_mapping::{JobTokenEvent, PerMapping};

/// Whether a mapping has series of its own (a `mapping` label) on `/metrics`: the one
/// rule every `mapping`-labelled family follows (docs/metrics.md, "Which mappings have
/// series"). `now` and the times in `activity` are [`Clock::monotonic`] readings.
///
/// Under [`PerMappingSeries::Active`] a mapping is shown while it matters: it served a
/// credential or had an AssumeRole call fail within `active_window` (less than that long
/// ago), or it is failed, degraded or unsafe (its role accepted an assumption without the
/// External ID) right now, however long ago that began. `All` shows every mapping,
/// `None` none.
pub fn mapping_shown(config: &MetricsConfig, now: Duration, activity: &Activity) -> bool {
    match config.per_mapping {
        PerMappingSeries::All => true,
        PerMappingSeries::None => false,
        PerMappingSeries::Active => {
            let recent = |at: Option<Duration>| {
                at.is_some_and(|at| now.saturating_sub(at) < config.active_window)
            };
            matches!(
                activity.state,
                MappingState::Failed | MappingState::Degraded
            ) || activity.enforced == Some(false)
                || recent(activity.last_served)
                || recent(activity.last_failure)
        }
    }
}

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

/// `at` in whole seconds since the Unix epoch (0 before it).
fn unix_secs(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Every metric family of credvend, in one registry of its own.
pub struct Metrics {
    registry: Registry,
    /// The `mapping`-labelled families.
    per_mapping: PerMapping,
    assume_role_duration_seconds: HistogramVec,
    http_requests_total: IntCounterVec,
    http_request_duration_seconds: HistogramVec,
    /// The series of a served credential, held so that a cache hit does not look them
    /// up by label (hash, lock, reference count) on every request: the duration of the
    /// `credentials` route (created with the family) and `credentials`/`200` (created
    /// by the first such request, so `/metrics` shows it only from then on, as before).
    credentials_duration: prometheus::Histogram,
    credentials_ok: std::sync::OnceLock<IntCounter>,
    auth_failures_total: IntCounterVec,
    sts_rate_limited_total: IntCounter,
    sts_calls_waiting: IntGaugeVec,
    sts_region_healthy: IntGaugeVec,
    mappings_backing_off: IntGauge,
    config_reloads_total: IntCounterVec,
    config_last_reload_successful: IntGauge,
    config_last_reload_timestamp_seconds: Gauge,
    mappings: IntGauge,
    job_tokens: IntGauge,
    /// Serialises changes to the set of mappings (reloads).
    mappings_writer: Mutex<()>,
    /// `[metrics]`: which mappings [`mapping_shown`] shows.
    config: ArcSwap<MetricsConfig>,
    /// Times activity for the `active_window` ([`Clock::monotonic`]).
    clock: Arc<dyn Clock>,
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
    /// Creates and registers every family, showing every mapping's series (as
    /// `per_mapping = "all"`) and timing activity on the system clock. Families without
    /// labels (and the fixed label sets of `result`, `route` and auth `reason`) are
    /// present from the first scrape.
    pub fn new() -> Self {
        Self::configured(
            MetricsConfig {
                per_mapping: PerMappingSeries::All,
                ..MetricsConfig::default()
            },
            Arc::new(SystemClock),
        )
    }

    /// As [`Metrics::new`], showing the mappings `config` asks for, with the
    /// `active_window` timed on `clock` (the daemon's).
    pub fn configured(config: MetricsConfig, clock: Arc<dyn Clock>) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let http_request_duration_seconds = histogram_vec(
            r,
            "credvend_http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            &["route"],
            HTTP_BUCKETS,
        );
        let metrics = Self {
            per_mapping: PerMapping::default(),
            assume_role_duration_seconds: histogram_vec(
                r,
                "credvend_assume_role_duration_seconds",
                "Duration of AssumeRole calls to STS, one per region attempt (a failover makes several), by result and region.",
                &["result", "region"],
                STS_BUCKETS,
            ),
            http_requests_total: counter_vec(
                r,
                "credvend_http_requests_total",
                "HTTP requests answered, by route and status code.",
                &["route", "code"],
            ),
            credentials_duration: http_request_duration_seconds
                .with_label_values(&[route::CREDENTIALS]),
            credentials_ok: std::sync::OnceLock::new(),
            http_request_duration_seconds,
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
            sts_region_healthy: gauge_vec(
                r,
                "credvend_sts_region_healthy",
                "1 while the STS region's circuit breaker is closed (the region is used), 0 while it is open or half-open (skipped after repeated failures, or waiting for its probe call; /status: sts_regions).",
                &["region"],
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
            config: ArcSwap::from_pointee(config),
            clock,
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
        let config = **self.config.load();
        let now = self.clock.monotonic();
        self.per_mapping.render(&mut text, |series| {
            mapping_shown(&config, now, &series.activity())
        });
        text
    }

    /// Applies a (re)loaded `[metrics]` section from the next scrape on.
    pub fn configure(&self, config: MetricsConfig) {
        self.config.store(Arc::new(config));
    }

    /// Whether `mapping` has series of its own on a scrape now ([`mapping_shown`]);
    /// false for a mapping that is not registered.
    pub fn shows(&self, mapping: &str) -> bool {
        let config = **self.config.load();
        let now = self.clock.monotonic();
        let mut shown = false;
        self.per_mapping.with(mapping, |series| {
            shown = mapping_shown(&config, now, &series.activity())
        });
        shown
    }

    /// One AssumeRole for `mapping` finished after `duration` (every region it tried:
    /// each attempt is timed by [`Metrics::sts_call`]).
    pub fn assume_role(
        &self,
        mapping: &str,
        outcome: Result<(), FailureReason>,
        duration: Duration,
    ) {
        let _ = duration;
        self.per_mapping
            .assume_role(mapping, outcome, self.clock.monotonic());
    }

    /// A job token for `mapping` was minted (a use of the mapping: it shows for
    /// `active_window`).
    pub fn job_token_minted(&self, mapping: &str) {
        self.per_mapping
            .job_token(mapping, JobTokenEvent::Minted, self.clock.monotonic());
    }

    /// A job token for `mapping` ended: expired, or revoked before that.
    pub fn job_token_ended(&self, mapping: &str, expired: bool) {
        let event = if expired {
            JobTokenEvent::Expired
        } else {
            JobTokenEvent::Revoked
        };
        self.per_mapping
            .job_token(mapping, event, self.clock.monotonic());
    }

    /// `live` job tokens exist now.
    pub fn job_tokens_live(&self, live: usize) {
        self.job_tokens.set(i64::try_from(live).unwrap_or(i64::MAX));
    }

    /// A credential for `mapping` was served from `source`.
    pub fn served(&self, mapping: &str, source: Source) {
        self.per_mapping
            .served(mapping, source, self.clock.monotonic());
    }

    /// [`Metrics::served`] for a request that arrived at `arrived`: its activity stamp
    /// is the clock as it read then ([`Clock::monotonic_at`], no second read).
    pub fn served_at(&self, mapping: &str, source: Source, arrived: std::time::Instant) {
        self.per_mapping
            .served(mapping, source, self.clock.monotonic_at(arrived));
    }

    /// The credential now held for `mapping` expires at `expiration`.
    pub fn expiry(&self, mapping: &str, expiration: SystemTime) {
        let secs = unix_secs(expiration);
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
        if route == route::CREDENTIALS && code == 200 {
            self.credentials_ok
                .get_or_init(|| {
                    self.http_requests_total
                        .with_label_values(&[route::CREDENTIALS, "200"])
                })
                .inc();
            self.credentials_duration.observe(duration.as_secs_f64());
            return;
        }
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

    /// One STS AssumeRole attempt in `region` (a configured region name) finished after
    /// `duration`.
    pub fn sts_call(&self, region: &str, outcome: Result<(), FailureReason>, duration: Duration) {
        let result = if outcome.is_ok() { SUCCESS } else { ERROR };
        self.assume_role_duration_seconds
            .with_label_values(&[result, region])
            .observe(duration.as_secs_f64());
    }

    /// Each STS region's health now: the `credvend_sts_region_healthy` gauge, and the
    /// duration histogram's series for every region from the first scrape on.
    pub fn sts_regions(&self, regions: &[RegionHealth]) {
        for health in regions {
            let region = health.region.as_str();
            self.sts_region_healthy
                .with_label_values(&[region])
                .set(i64::from(health.state == BreakerState::Closed));
            for result in [SUCCESS, ERROR] {
                self.assume_role_duration_seconds
                    .with_label_values(&[result, region]);
            }
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

    /// [`Metrics::sync_mappings`] for a reload that names only what changed: `added`
    /// mappings (present ones keep their series) and `removed` ones.
    pub fn change_mappings<'a>(
        &self,
        added: impl IntoIterator<Item = &'a str>,
        removed: &std::collections::BTreeSet<String>,
    ) {
        let _writer = self
            .mappings_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = self.per_mapping.update(added, removed);
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
            let enforcement = status.enforcement.gauge();
            let maintained = status.next_refresh.is_some()
                || matches!(
                    status.state,
                    MappingState::Fetching | MappingState::Refreshing | MappingState::Degraded
                );
            // One lookup per mapping: at 100,000 mappings this loop is most of a scrape.
            self.per_mapping.with(&status.name, |s| {
                s.set_state(status.state);
                s.set_enforced(enforcement);
                match (status.expires_at, maintained) {
                    (Some(expiration), true) => s.set_expiry(unix_secs(expiration)),
                    (None, true) => {}
                    (_, false) => s.clear_expiry(),
                }
            });
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
    use crate::creds::regions::RegionRole;

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

    /// A served credential's request counts in `credentials`/`200` and the route's
    /// duration, through the handles held for it, exactly as any other request counts
    /// in its own series: the `200` series appears only with the first such request,
    /// and other codes of the route keep their own series.
    #[test]
    fn a_served_credential_counts_like_any_other_request() {
        let m = Metrics::new();
        let ok = r#"credvend_http_requests_total{code="200",route="credentials"}"#;
        let unavailable = r#"credvend_http_requests_total{code="503",route="credentials"}"#;
        let durations = r#"credvend_http_request_duration_seconds_count{route="credentials"}"#;
        let text = m.render();
        assert_eq!(
            value(&text, ok),
            None,
            "no 200 series before a request:\n{text}"
        );
        assert_eq!(value(&text, durations), Some(0.0), "{text}");
        m.http_request(route::CREDENTIALS, 200, Duration::from_micros(80));
        m.http_request(route::CREDENTIALS, 200, Duration::from_micros(80));
        m.http_request(route::CREDENTIALS, 503, Duration::from_micros(80));
        m.http_request(route::METRICS, 200, Duration::from_micros(80));
        let text = m.render();
        assert_eq!(value(&text, ok), Some(2.0), "{text}");
        assert_eq!(value(&text, unavailable), Some(1.0), "{text}");
        assert_eq!(value(&text, durations), Some(3.0), "{text}");
        let metrics_ok = r#"credvend_http_requests_total{code="200",route="metrics"}"#;
        assert_eq!(value(&text, metrics_ok), Some(1.0), "{text}");
    }

    fn exercised() -> Metrics {
        let m = Metrics::new();
        m.sync_mappings(["acme-s3", "beta-s3"]);
        m.assume_role("acme-s3", Ok(()), Duration::from_millis(40));
        m.sts_call("us-east-1", Ok(()), Duration::from_millis(40));
        m.assume_role(
            "beta-s3",
            Err(FailureReason::AccessDenied),
            Duration::from_millis(30),
        );
        m.sts_call(
            "us-east-1",
            Err(FailureReason::AccessDenied),
            Duration::from_millis(30),
        );
        m.sts_regions(&[
            RegionHealth {
                region: "us-east-1".into(),
                role: RegionRole::Primary,
                state: BreakerState::Closed,
                consecutive_failures: 0,
                last_error: None,
                next_probe_in: None,
            },
            RegionHealth {
                region: "us-west-2".into(),
                role: RegionRole::Fallback,
                state: BreakerState::Open,
                consecutive_failures: 3,
                last_error: Some(FailureReason::Network),
                next_probe_in: Some(Duration::from_secs(30)),
            },
        ]);
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
                r#"_count{region="us-east-1",result="success"} 1"#,
            ),
            (
                "credvend_assume_role_duration_seconds",
                "histogram",
                r#"_count{region="us-west-2",result="error"} 0"#,
            ),
            (
                "credvend_sts_region_healthy",
                "gauge",
                r#"{region="us-east-1"} 1"#,
            ),
            (
                "credvend_sts_region_healthy",
                "gauge",
                r#"{region="us-west-2"} 0"#,
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
            r#"credvend_assume_role_duration_seconds_bucket{region="us-east-1",result="success",le="0.005"} 0"#,
            r#"credvend_assume_role_duration_seconds_bucket{region="us-east-1",result="success",le="0.05"} 1"#,
            r#"credvend_assume_role_duration_seconds_bucket{region="us-east-1",result="success",le="10"} 1"#,
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

    const HOUR: Duration = Duration::from_secs(3600);

    fn active(window: Duration) -> MetricsConfig {
        MetricsConfig {
            per_mapping: PerMappingSeries::Active,
            active_window: window,
        }
    }

    /// An idle mapping: never served, never failed, empty, not checked.
    const IDLE: Activity = Activity {
        last_served: None,
        last_failure: None,
        state: MappingState::Empty,
        enforced: None,
    };

    #[test]
    fn the_rule_shows_a_mapping_for_each_reason_it_matters_and_for_no_other() {
        let config = active(HOUR);
        let now = 10 * HOUR;
        let ago = |d: Duration| Some(now - d);
        let just_inside = HOUR - Duration::from_millis(1);
        let cases: Vec<(&str, Activity, bool)> = vec![
            ("idle", IDLE, false),
            (
                "served just now",
                Activity {
                    last_served: ago(Duration::ZERO),
                    ..IDLE
                },
                true,
            ),
            (
                "served within the window",
                Activity {
                    last_served: ago(just_inside),
                    ..IDLE
                },
                true,
            ),
            (
                "served a window ago",
                Activity {
                    last_served: ago(HOUR),
                    ..IDLE
                },
                false,
            ),
            (
                "failed within the window",
                Activity {
                    last_failure: ago(just_inside),
                    ..IDLE
                },
                true,
            ),
            (
                "failed a window ago",
                Activity {
                    last_failure: ago(HOUR),
                    ..IDLE
                },
                false,
            ),
            (
                "state failed, long ago",
                Activity {
                    state: MappingState::Failed,
                    last_failure: ago(5 * HOUR),
                    ..IDLE
                },
                true,
            ),
            (
                "state degraded",
                Activity {
                    state: MappingState::Degraded,
                    ..IDLE
                },
                true,
            ),
            (
                "unsafe trust policy",
                Activity {
                    enforced: Some(false),
                    ..IDLE
                },
                true,
            ),
            (
                "enforced trust policy",
                Activity {
                    enforced: Some(true),
                    ..IDLE
                },
                false,
            ),
            (
                "fresh but unused",
                Activity {
                    state: MappingState::Fresh,
                    last_served: ago(2 * HOUR),
                    ..IDLE
                },
                false,
            ),
            (
                "refreshing but unused",
                Activity {
                    state: MappingState::Refreshing,
                    ..IDLE
                },
                false,
            ),
            (
                "fetching but unused",
                Activity {
                    state: MappingState::Fetching,
                    ..IDLE
                },
                false,
            ),
        ];
        for (what, activity, shown) in &cases {
            assert_eq!(
                mapping_shown(&config, now, activity),
                *shown,
                "active: {what}: {activity:?}"
            );
        }
        let all = MetricsConfig {
            per_mapping: PerMappingSeries::All,
            ..config
        };
        let none = MetricsConfig {
            per_mapping: PerMappingSeries::None,
            ..config
        };
        for (what, activity, _) in &cases {
            assert!(mapping_shown(&all, now, activity), "all: {what}");
            assert!(!mapping_shown(&none, now, activity), "none: {what}");
        }
    }

    /// Sample lines of `text` whose family is `name` exactly, as (labels, value).
    fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix('{')?;
                let (labels, value) = rest.split_once("} ")?;
                Some((labels, value.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn a_served_mapping_is_shown_for_the_window_on_the_injected_clock() {
        let clock = crate::clock::ManualClock::starting_now();
        let m = Metrics::configured(active(HOUR), Arc::new(clock.clone()));
        m.sync_mappings(["busy", "idle"]);
        assert!(!m.render().contains("mapping="), "nothing served yet");
        m.served("busy", Source::Fresh);
        clock.advance(HOUR - Duration::from_secs(1));
        let text = m.render();
        assert!(m.shows("busy") && !m.shows("idle"));
        assert!(
            text.contains(r#"credvend_credentials_served_total{mapping="busy",source="fresh"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"mapping="idle""#), "{text}");
        clock.advance(Duration::from_secs(1));
        let text = m.render();
        assert!(!m.shows("busy"));
        assert!(!text.contains("mapping="), "the window has passed:\n{text}");
        // Its count goes on in the fleet total, and comes back with it.
        assert!(
            text.contains(r#"credvend_fleet_credentials_served_total{source="fresh"} 1"#),
            "{text}"
        );
        m.served("busy", Source::Cache);
        let text = m.render();
        assert!(
            text.contains(r#"credvend_credentials_served_total{mapping="busy",source="fresh"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"credvend_credentials_served_total{mapping="busy",source="cache"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_wall_clock_step_does_not_hide_a_mapping_in_use() {
        let clock = crate::clock::ManualClock::starting_now();
        let m = Metrics::configured(active(HOUR), Arc::new(clock.clone()));
        m.sync_mappings(["busy"]);
        m.served("busy", Source::Cache);
        clock.set(SystemTime::now() + 24 * HOUR);
        assert!(m.shows("busy"));
    }

    #[test]
    fn none_writes_no_mapping_label_even_for_a_failed_unsafe_mapping() {
        let m = Metrics::configured(
            MetricsConfig {
                per_mapping: PerMappingSeries::None,
                ..MetricsConfig::default()
            },
            Arc::new(SystemClock),
        );
        m.sync_mappings(["x", "y"]);
        m.assume_role("x", Err(FailureReason::AccessDenied), Duration::ZERO);
        m.set_state("x", MappingState::Failed);
        m.enforcement("y", Some(false));
        m.served("y", Source::Fresh);
        let text = m.render();
        assert!(!text.contains("mapping="), "{text}");
        assert!(
            text.contains(r#"credvend_fleet_mapping_state{state="failed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"credvend_fleet_external_id_enforced{result="not_enforced"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"credvend_fleet_assume_role_failures_total{reason="access_denied"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"credvend_fleet_credentials_served_total{source="fresh"} 1"#),
            "{text}"
        );
    }

    /// Drives `m` through a spread of events over `names`.
    fn drive(m: &Metrics, names: &[String]) {
        let reasons = FailureReason::ALL;
        let states = MappingState::ALL;
        for (i, name) in names.iter().enumerate() {
            for j in 0..(i % 7) {
                let outcome = if (i + j) % 3 == 0 {
                    Err(reasons[(i + j) % reasons.len()])
                } else {
                    Ok(())
                };
                m.assume_role(name, outcome, Duration::from_millis(5));
            }
            for j in 0..(i % 5) {
                m.served(name, SOURCES_FOR_TEST[(i * j) % 3]);
            }
            m.set_state(name, states[i % states.len()]);
            m.enforcement(name, [Some(true), Some(false), None][i % 3]);
            if i % 4 == 1 {
                let secs = 1_800_000_000 - 60 * i as u64;
                m.expiry(name, UNIX_EPOCH + Duration::from_secs(secs));
            }
        }
    }

    const SOURCES_FOR_TEST: [Source; 3] = [Source::Cache, Source::Fresh, Source::Degraded];

    #[test]
    fn under_all_each_fleet_total_is_the_sum_of_its_per_mapping_series() {
        let m = Metrics::new();
        let names: Vec<String> = (0..60).map(|i| format!("m{i:02}")).collect();
        m.sync_mappings(names.iter().map(String::as_str));
        drive(&m, &names);
        let text = m.render();
        let mut checked = 0;
        for (family, label) in [
            ("assume_role_total", "result"),
            ("assume_role_failures_total", "reason"),
            ("credentials_served_total", "source"),
            ("mapping_state", "state"),
        ] {
            let fleet = samples(&text, &format!("credvend_fleet_{family}"));
            assert!(!fleet.is_empty(), "no credvend_fleet_{family} in:\n{text}");
            assert!(
                fleet.iter().any(|(_, v)| *v > 0.0),
                "credvend_fleet_{family} all zero"
            );
            let per_mapping = samples(&text, &format!("credvend_{family}"));
            assert!(per_mapping.len() >= names.len(), "credvend_{family}");
            for (labels, total) in fleet {
                let wanted = labels.strip_prefix(&format!("{label}=")).unwrap();
                let sum: f64 = per_mapping
                    .iter()
                    .filter(|(l, _)| l.ends_with(&format!(",{label}={wanted}")))
                    .map(|(_, v)| v)
                    .sum();
                assert_eq!(sum, total, "credvend_fleet_{family}{{{labels}}}");
                checked += 1;
            }
        }
        let enforced = samples(&text, "credvend_external_id_enforced");
        for (result, gauge) in [("enforced", 1.0), ("not_enforced", 0.0), ("unknown", -1.0)] {
            let count = enforced.iter().filter(|(_, v)| *v == gauge).count() as f64;
            assert!(count > 0.0);
            let series = format!("credvend_fleet_external_id_enforced{{result=\"{result}\"}}");
            assert_eq!(value(&text, &series), Some(count), "{series}");
            checked += 1;
        }
        assert_eq!(
            checked,
            2 + FailureReason::ALL.len() + 3 + MappingState::ALL.len() + 3
        );
        let earliest = samples(&text, "credvend_credentials_expiry_timestamp_seconds")
            .into_iter()
            .map(|(_, v)| v)
            .reduce(f64::min);
        assert!(earliest.is_some());
        assert_eq!(
            value(&text, "credvend_fleet_credentials_expiry_timestamp_seconds"),
            earliest
        );
    }

    /// The job token counters: shown only for mappings that had a token (and only under
    /// the mapping rule), summed into unlabelled fleet totals that exist always.
    #[test]
    fn job_token_fleet_totals_are_the_sums_and_exist_before_any_mint() {
        let m = Metrics::new();
        m.sync_mappings(["a", "b", "c"]);
        let text = m.render();
        for event in ["minted", "revoked", "expired"] {
            let fleet = format!("credvend_fleet_job_tokens_{event}_total");
            assert_eq!(value(&text, &fleet), Some(0.0), "{fleet} before any mint");
            let family = format!("credvend_job_tokens_{event}_total");
            assert!(
                samples(&text, &family).is_empty(),
                "{family} before any mint"
            );
        }
        m.job_token_minted("a");
        m.job_token_minted("a");
        m.job_token_minted("b");
        m.job_token_ended("a", false);
        m.job_token_ended("b", true);
        let text = m.render();
        for (event, want) in [("minted", 3.0), ("revoked", 1.0), ("expired", 1.0)] {
            let per_mapping = samples(&text, &format!("credvend_job_tokens_{event}_total"));
            assert_eq!(per_mapping.len(), 2, "a and b have {event} series, c none");
            let sum: f64 = per_mapping.iter().map(|(_, v)| v).sum();
            let fleet = format!("credvend_fleet_job_tokens_{event}_total");
            assert_eq!(value(&text, &fleet), Some(want), "{fleet}");
            assert_eq!(sum, want, "credvend_job_tokens_{event}_total summed");
        }
    }

    #[test]
    fn a_reload_that_removes_a_mapping_never_lowers_a_fleet_counter() {
        let m = Metrics::new();
        m.sync_mappings(["a", "b"]);
        m.served("a", Source::Cache);
        m.served("b", Source::Cache);
        m.assume_role("b", Err(FailureReason::Throttled), Duration::ZERO);
        m.sync_mappings(["a"]);
        let text = m.render();
        assert_eq!(
            value(
                &text,
                r#"credvend_fleet_credentials_served_total{source="cache"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                r#"credvend_fleet_assume_role_failures_total{reason="throttled"}"#
            ),
            Some(1.0)
        );
        // A removed mapping's late events count nowhere.
        m.served("b", Source::Cache);
        let text = m.render();
        assert_eq!(
            value(
                &text,
                r#"credvend_fleet_credentials_served_total{source="cache"}"#
            ),
            Some(2.0)
        );
    }

    #[test]
    fn content_type_is_the_text_format() {
        assert!(CONTENT_TYPE.starts_with(prometheus::TEXT_FORMAT));
    }
}
