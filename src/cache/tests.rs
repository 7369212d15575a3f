//! Lifecycle state machine tests: the real cache with a scripted assumer and a manual
//! clock, no HTTP.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lifecycle::EXPIRY_MARGIN;
use super::request::{Caller, wait_outcome};
use super::*;
use crate::aws_names::SessionName;
use crate::clock::ManualClock;
use crate::config::{EnforcementMode, Mapping};
use crate::creds::{AssumeRoleInput, Credentials, FailureReason};
use crate::secret::SecretValue;
use crate::testing::{config, mapping};
use crate::verify;

const MIN: Duration = Duration::from_secs(60);

/// What the scripted STS does on one call.
#[derive(Clone)]
enum Step {
    /// Issue a credential living this long (from the clock at call time).
    Issue(Duration),
    Fail(FailureReason, &'static str),
    /// Reject DurationSeconds as over the role's maximum.
    TooLong,
}

/// Records one AssumeRole call of a test assumer; returns how many it has seen, this
/// one included (the number in the issued access key id).
fn record_call(calls: &Mutex<Vec<AssumeRoleInput>>, input: &AssumeRoleInput) -> usize {
    let mut calls = calls.lock().unwrap();
    calls.push(input.clone());
    calls.len()
}

/// What a test assumer issues: `access_key_id`, expiring at `expiration`, with
/// placeholder secrets and a fixed assumed-role ARN.
fn test_credentials(access_key_id: String, expiration: std::time::SystemTime) -> Credentials {
    Credentials {
        access_key_id,
        secret_access_key: SecretValue::new("secret"),
        session_token: SecretValue::new("token"),
        expiration,
        assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/r/s".into(),
    }
}

/// What [`RoleAssumer::assume_role`] returns, spelled once for the test assumers.
type AssumeFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Credentials, AssumeError>> + Send + 'a>,
>;

/// A RoleAssumer that follows a script, then keeps issuing 1 h credentials.
struct Scripted {
    clock: ManualClock,
    script: Mutex<VecDeque<Step>>,
    calls: Mutex<Vec<AssumeRoleInput>>,
}

impl Scripted {
    fn new(clock: &ManualClock, script: Vec<Step>) -> Arc<Self> {
        Arc::new(Self {
            clock: clock.clone(),
            script: Mutex::new(script.into()),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn durations(&self) -> Vec<u64> {
        let calls = self.calls.lock().unwrap();
        calls.iter().map(|c| c.duration.as_secs()).collect()
    }
}

impl RoleAssumer for Scripted {
    fn assume_role<'a>(&'a self, input: &'a AssumeRoleInput) -> AssumeFuture<'a> {
        Box::pin(async move {
            let n = record_call(&self.calls, input);
            let step = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Step::Issue(input.duration));
            let error = |reason, code: &str, too_long| AssumeError {
                reason,
                code: code.into(),
                message: "scripted".into(),
                duration_too_long: too_long,
            };
            match step {
                Step::Issue(life) => Ok(test_credentials(
                    format!("ASIASCRIPTED{n:08}"),
                    self.clock.now() + life,
                )),
                Step::Fail(reason, code) => Err(error(reason, code, false)),
                Step::TooLong => Err(error(
                    FailureReason::InvalidRequest,
                    "ValidationError",
                    true,
                )),
            }
        })
    }
}

fn cache_for(
    clock: &ManualClock,
    assumer: Arc<Scripted>,
    mappings: Vec<Mapping>,
) -> CredentialCache {
    let cfg = config("http://127.0.0.1:9", mappings);
    let cache = CredentialCache::new(
        &cfg,
        assumer,
        Arc::new(clock.clone()),
        Arc::new(crate::metrics::Metrics::new()),
    );
    cache.start();
    cache
}

fn state(cache: &CredentialCache, name: &str) -> MappingState {
    cache
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.state)
        .expect("mapping in status")
}

/// Waits until `name` has no fetch in flight, after first letting every task that can
/// run do so: without that, a refresh the scheduler is about to start (the clock just
/// moved) would not be in flight yet, and this would return before it even began.
/// On this single-threaded runtime the scheduler, woken by the clock move, is queued
/// ahead of the test task, and it marks the fetch in flight before it yields.
async fn settle(cache: &CredentialCache, name: &str) {
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while matches!(
        state(cache, name),
        MappingState::Fetching | MappingState::Refreshing
    ) {
        assert!(std::time::Instant::now() < deadline, "{name} never settled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Lets the scheduler task react to a clock move.
async fn tick() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn idle_mappings_stop_refreshing_but_prefetch_ones_do_not() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let mut warm = mapping("warm", "warm", None, "t1");
    warm.prefetch = true;
    let cache = cache_for(
        &clock,
        assumer.clone(),
        vec![mapping("idle", "idle", None, "t2"), warm],
    );
    settle(&cache, "warm").await;
    assert_eq!(assumer.calls(), 1, "prefetch fetched at start");
    assert!(cache.prefetch_settled());
    cache.get("idle").await.unwrap();
    assert_eq!(assumer.calls(), 2);

    // 7 hours in 10-minute steps with no request for "idle".
    for _ in 0..42 {
        clock.advance(10 * MIN);
        settle(&cache, "warm").await;
        settle(&cache, "idle").await;
    }
    let calls = assumer.calls.lock().unwrap().clone();
    let idle_calls = calls
        .iter()
        .filter(|c| c.session_name == "credvend-idle")
        .count();
    let warm_calls = calls
        .iter()
        .filter(|c| c.session_name == "credvend-warm")
        .count();
    // idle_timeout is 6 h: refreshed about every 25 min for 6 h, then no more.
    assert!(
        (12..=16).contains(&idle_calls),
        "idle refreshed {idle_calls} times"
    );
    assert!(
        warm_calls > idle_calls,
        "prefetch kept refreshing: {warm_calls}"
    );
    // The idle mapping's last credential has expired; a request fetches anew.
    assert_eq!(state(&cache, "idle"), MappingState::Empty);
    let before = assumer.calls();
    let vended = cache.get("idle").await.unwrap();
    assert_eq!(vended.source, Source::Fresh);
    assert_eq!(assumer.calls(), before + 1);
}

#[tokio::test]
async fn short_credentials_are_served_and_refreshed_at_half_life_without_a_loop() {
    let clock = ManualClock::starting_now();
    // STS keeps handing out 10-minute credentials for a 1-hour request.
    let assumer = Scripted::new(&clock, vec![Step::Issue(10 * MIN); 100]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    let first = cache.get("m").await.unwrap();
    assert!(first.entry.short_lived);
    // Served from cache although under min_remaining: no refetch per request.
    for _ in 0..50 {
        assert_eq!(cache.get("m").await.unwrap().source, Source::Cache);
    }
    assert_eq!(assumer.calls(), 1);
    // One hour in 1-minute steps: a refresh every ~5 minutes (half of 10), not more.
    for _ in 0..60 {
        clock.advance(MIN);
        settle(&cache, "m").await;
        let v = cache.get("m").await.unwrap();
        assert!(lifecycle::remaining(v.entry.expiration, clock.now()) > EXPIRY_MARGIN);
    }
    let calls = assumer.calls();
    assert!((11..=14).contains(&calls), "{calls} calls in an hour");
}

#[tokio::test]
async fn a_min_remaining_inside_the_expiry_margin_never_serves_a_dying_credential() {
    // `min_remaining` under the expiry margin is only a config warning. No scheduler
    // runs here (the cache is not started), as for a mapping whose refreshes stopped.
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let mut cfg = config("http://127.0.0.1:9", vec![mapping("m", "r", None, "t")]);
    cfg.refresh.min_remaining = Duration::from_secs(30);
    let cache = CredentialCache::new(
        &cfg,
        assumer.clone(),
        Arc::new(clock.clone()),
        Arc::new(crate::metrics::Metrics::new()),
    );
    let first = cache.get("m").await.unwrap();
    assert_eq!(first.source, Source::Fresh);
    // 45 s left: above min_remaining, inside the 60 s expiry margin.
    clock.advance(60 * MIN - Duration::from_secs(45));
    let next = cache.get("m").await.unwrap();
    assert_eq!(
        (next.source, assumer.calls()),
        (Source::Fresh, 2),
        "a credential with 45 s left was served from cache instead of refetched"
    );
    assert_ne!(next.entry.access_key_id(), first.entry.access_key_id());
}

#[tokio::test]
async fn duration_over_the_role_maximum_retries_once_at_one_hour_and_remembers() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![Step::TooLong]);
    let mut long = mapping("m", "r", None, "t");
    long.session_duration = Duration::from_secs(4 * 3600);
    let cache = cache_for(&clock, assumer.clone(), vec![long]);
    let v = cache.get("m").await.unwrap();
    assert_eq!(v.source, Source::Fresh);
    assert!(
        !v.entry.short_lived,
        "1 h is what we asked for the second time"
    );
    assert_eq!(assumer.durations(), vec![4 * 3600, 3600]);
    // The next refresh asks for 1 h straight away.
    clock.advance(30 * MIN);
    settle(&cache, "m").await;
    assert_eq!(assumer.durations(), vec![4 * 3600, 3600, 3600]);
}

#[tokio::test]
async fn terminal_failures_are_negatively_cached_with_doubling_backoff() {
    let clock = ManualClock::starting_now();
    let denied = Step::Fail(FailureReason::AccessDenied, "AccessDenied");
    let assumer = Scripted::new(&clock, vec![denied.clone(), denied.clone(), denied]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);

    assert!(matches!(cache.get("m").await, Err(VendError::Denied(_))));
    assert_eq!(state(&cache, "m"), MappingState::Failed);
    clock.advance(Duration::from_secs(29));
    assert!(matches!(cache.get("m").await, Err(VendError::Denied(_))));
    assert_eq!(assumer.calls(), 1, "inside 30 s: no STS call");
    clock.advance(Duration::from_secs(2));
    assert!(matches!(cache.get("m").await, Err(VendError::Denied(_))));
    assert_eq!(assumer.calls(), 2, "after 30 s: one retry");
    clock.advance(Duration::from_secs(59));
    assert!(matches!(cache.get("m").await, Err(VendError::Denied(_))));
    assert_eq!(assumer.calls(), 2, "backoff doubled to 60 s");
    clock.advance(Duration::from_secs(2));
    assert!(matches!(cache.get("m").await, Err(VendError::Denied(_))));
    assert_eq!(assumer.calls(), 3);
    // The customer fixes the trust policy; after the backoff the mapping recovers.
    clock.advance(Duration::from_secs(121));
    let v = cache.get("m").await.unwrap();
    assert_eq!(v.source, Source::Fresh);
    assert_eq!(state(&cache, "m"), MappingState::Fresh);
}

fn retry_at(cache: &CredentialCache, name: &str) -> Option<std::time::SystemTime> {
    cache
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .and_then(|s| s.retry_at)
}

/// `Retry-After` for `at`, seen from the cache's clock: the whole seconds left, rounded
/// up.
fn seconds_until(cache: &CredentialCache, at: std::time::SystemTime) -> u64 {
    let left = at.duration_since(cache.now()).unwrap();
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

#[tokio::test]
async fn transient_failure_without_a_credential_is_unavailable_not_denied() {
    let clock = ManualClock::starting_now();
    let throttled = Step::Fail(FailureReason::Throttled, "Throttling");
    let assumer = Scripted::new(&clock, vec![throttled.clone(), throttled]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    assert!(matches!(
        cache.get("m").await,
        Err(VendError::Unavailable {
            retry_after_secs: 1,
            ..
        })
    ));
    assert_eq!(assumer.calls(), 1);
    // Backing off (the first retry is due after exactly 1 s): requests are answered from
    // the backoff, with the time left, and make no STS call.
    assert_eq!(
        retry_at(&cache, "m"),
        Some(cache.now() + Duration::from_secs(1))
    );
    for _ in 0..50 {
        match cache.get("m").await {
            Err(VendError::Unavailable {
                retry_after_secs: 1,
                reason,
            }) => assert_eq!(reason, request::BACKING_OFF),
            other => panic!("expected a 503 from the backoff, got {other:?}"),
        }
    }
    clock.advance(Duration::from_millis(500));
    assert!(matches!(
        cache.get("m").await,
        Err(VendError::Unavailable {
            retry_after_secs: 1,
            ..
        })
    ));
    assert_eq!(assumer.calls(), 1, "no STS call inside the backoff");

    // The retry falls due (the mapping is in use, so the scheduler makes it) and fails
    // again: the backoff grows (1 to 2 s, jittered), and Retry-After is what is left.
    clock.advance(Duration::from_millis(600));
    tick().await;
    settle(&cache, "m").await;
    assert_eq!(assumer.calls(), 2, "one retry when the backoff ran out");
    let until = retry_at(&cache, "m").expect("backing off again");
    let left = seconds_until(&cache, until);
    assert!((1..=2).contains(&left), "{left}");
    match cache.get("m").await {
        Err(VendError::Unavailable {
            retry_after_secs, ..
        }) => assert_eq!(retry_after_secs, left),
        other => panic!("expected a 503 from the backoff, got {other:?}"),
    }
    assert_eq!(assumer.calls(), 2);

    // After it, STS answers again and the backoff is over.
    clock.advance(until.duration_since(cache.now()).unwrap());
    tick().await;
    settle(&cache, "m").await;
    assert!(cache.get("m").await.is_ok());
    assert_eq!(assumer.calls(), 3);
    assert_eq!(retry_at(&cache, "m"), None);
    assert_eq!(state(&cache, "m"), MappingState::Fresh);
}

#[tokio::test]
async fn a_credential_expired_on_arrival_is_never_served() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![Step::Issue(Duration::from_secs(30))]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    assert!(matches!(
        cache.get("m").await,
        Err(VendError::Unavailable { .. })
    ));
    let error = cache.status()[0].last_error.clone().unwrap().0;
    assert_eq!(error.code(), "ExpiredOnArrival");
}

#[tokio::test]
async fn reload_invalidates_only_changed_mappings() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let keep = mapping("keep", "keep", Some("external-id-keep"), "t1");
    let change = mapping("change", "change", Some("external-id-old"), "t2");
    let gone = mapping("gone", "gone", None, "t3");
    let cache = cache_for(
        &clock,
        assumer.clone(),
        vec![keep.clone(), change.clone(), gone],
    );
    let keep_before = cache
        .get("keep")
        .await
        .unwrap()
        .entry
        .access_key_id()
        .to_owned();
    let change_before = cache
        .get("change")
        .await
        .unwrap()
        .entry
        .access_key_id()
        .to_owned();
    cache.get("gone").await.unwrap();
    assert_eq!(assumer.calls(), 3);

    let mut changed = change.clone();
    changed.external_id = Some(crate::secret::ExternalId::new("external-id-new"));
    cache.apply_config(&config("http://127.0.0.1:9", vec![keep, changed]));

    let keep_after = cache.get("keep").await.unwrap();
    assert_eq!(keep_after.entry.access_key_id(), keep_before);
    assert_eq!(keep_after.source, Source::Cache);
    let change_after = cache.get("change").await.unwrap();
    assert_ne!(change_after.entry.access_key_id(), change_before);
    assert_eq!(change_after.source, Source::Fresh);
    let last = assumer.calls.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last.external_id.map(|e| e.expose().to_string()),
        Some("external-id-new".to_string())
    );
    assert!(matches!(
        cache.get("gone").await,
        Err(VendError::UnknownMapping)
    ));
    assert_eq!(assumer.calls(), 4);
}

/// A prefetch that reaches a mapping just after another fetch published its credential
/// (a request's cold fetch finishing while a reload's prefetch pass runs) takes that
/// credential instead of calling STS again. The refresh path still always fetches.
#[tokio::test]
async fn prefetch_takes_a_credential_published_meanwhile_instead_of_fetching_again() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let cache = cache_for(
        &clock,
        assumer.clone(),
        vec![mapping("m", "role-m", Some("external-id-m"), "t1")],
    );
    let served = cache.get("m").await.unwrap();
    assert_eq!(assumer.calls(), 1);

    // What the prefetch pass does once it has decided (before the fetch above finished)
    // that "m" needs warming.
    let spec = cache.inner.current_table().by_name["m"].clone();
    let outcome = wait_outcome(Inner::start_or_join(&cache.inner, &spec, Caller::Prefetch)).await;
    assert_eq!(
        outcome.unwrap().access_key_id(),
        served.entry.access_key_id(),
        "the prefetch got the published credential"
    );
    assert_eq!(assumer.calls(), 1, "no second AssumeRole");

    let refreshed = wait_outcome(Inner::start_or_join(&cache.inner, &spec, Caller::Refresh)).await;
    assert_ne!(
        refreshed.unwrap().access_key_id(),
        served.entry.access_key_id()
    );
    assert_eq!(assumer.calls(), 2, "a due refresh does call STS");
}

// --- fetches that outlive their mapping; the STS concurrency bound -------------------

/// A RoleAssumer that holds every call at a gate until the test lets it through, and
/// counts the calls inside it. Issues credentials for the duration asked; refuses the
/// External ID enforcement probes with AccessDenied (the role enforces its External ID).
struct Gated {
    clock: ManualClock,
    /// One permit per call allowed to finish; starts empty.
    gate: tokio::sync::Semaphore,
    calls: Mutex<Vec<AssumeRoleInput>>,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

impl Gated {
    fn new(clock: &ManualClock) -> Arc<Self> {
        Arc::new(Self {
            clock: clock.clone(),
            gate: tokio::sync::Semaphore::new(0),
            calls: Mutex::new(Vec::new()),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
        })
    }

    /// Lets `n` more calls finish.
    fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Lets every call, present and future, through.
    fn open(&self) {
        self.release(1_000_000);
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits (real time, generously: the machine may be loaded) until `done` holds.
    async fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting until {what}: {} calls, {} in flight",
                self.calls(),
                self.in_flight()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Gated {
    /// [`Gated::wait_until`], then a short sleep: on the single-threaded test runtime
    /// every task that can run does before the test resumes, so what the test asserts
    /// next is where the cache settled, not a moment on the way there.
    async fn wait_then_settle(&self, what: &str, done: impl Fn(&Self) -> bool) {
        self.wait_until(what, done).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Gated {
    /// [`Gated::wait_until`] exactly one call is inside AssumeRole.
    async fn wait_one_in_flight(&self, what: &str) {
        self.wait_until(what, |s| s.in_flight() == 1).await;
    }
}

/// `cache.get(name)` on a task of its own, so the test can act while it waits.
fn spawn_get(
    cache: &CredentialCache,
    name: &str,
) -> tokio::task::JoinHandle<Result<Vended, VendError>> {
    let cache = cache.clone();
    let name = name.to_owned();
    tokio::spawn(async move { cache.get(&name).await })
}

impl RoleAssumer for Gated {
    fn assume_role<'a>(&'a self, input: &'a AssumeRoleInput) -> AssumeFuture<'a> {
        Box::pin(async move {
            let n = record_call(&self.calls, input);
            let inside = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(inside, Ordering::SeqCst);
            self.gate
                .acquire()
                .await
                .expect("the gate is never closed")
                .forget();
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if input.session_name == verify::PROBE_SESSION_NAME {
                return Err(AssumeError {
                    reason: FailureReason::AccessDenied,
                    code: "AccessDenied".into(),
                    message: "gated: the role requires its External ID".into(),
                    duration_too_long: false,
                });
            }
            Ok(test_credentials(
                format!("ASIAGATED{n:08}"),
                self.clock.now() + input.duration,
            ))
        })
    }
}

/// Mapping `m` on role `role-<which>` (External ID `external-id-<which>`, token `t1`),
/// its External ID enforcement in warn mode.
fn warn_m(which: &str) -> Mapping {
    let external_id = format!("external-id-{which}");
    let mut m = mapping("m", &format!("role-{which}"), Some(&external_id), "t1");
    m.external_id_enforcement = EnforcementMode::Warn;
    m
}

/// A started cache for `mappings` (with a `cold_wait` no test here runs into), whose
/// metrics know the mappings, as the daemon sets them up.
fn gated_cache(
    clock: &ManualClock,
    sts: &Arc<Gated>,
    metrics: &Arc<crate::metrics::Metrics>,
    mappings: Vec<Mapping>,
) -> CredentialCache {
    let cfg = gated_config(mappings);
    metrics.sync_mappings(cfg.mappings.keys().map(String::as_str));
    let cache = CredentialCache::new(&cfg, sts.clone(), Arc::new(clock.clone()), metrics.clone());
    cache.start();
    cache
}

/// A manual clock, a gated STS, metrics, and a [`gated_cache`] for `mappings` on them.
fn gated_start(
    mappings: Vec<Mapping>,
) -> (
    ManualClock,
    Arc<Gated>,
    Arc<crate::metrics::Metrics>,
    CredentialCache,
) {
    let clock = ManualClock::starting_now();
    let sts = Gated::new(&clock);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let cache = gated_cache(&clock, &sts, &metrics, mappings);
    (clock, sts, metrics, cache)
}

/// A gated STS and a started cache of 200 mappings `<prefix>000` … `<prefix>199`, each
/// on the role of the same name, `prefetch` as given. Returns the names too.
fn two_hundred_gated_mappings(
    prefix: &str,
    prefetch: bool,
) -> (Arc<Gated>, CredentialCache, Vec<String>) {
    let clock = ManualClock::starting_now();
    let sts = Gated::new(&clock);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let names: Vec<String> = (0..200).map(|i| format!("{prefix}{i:03}")).collect();
    let mappings = names
        .iter()
        .map(|n| {
            let mut m = mapping(n, n, None, n);
            m.prefetch = prefetch;
            m
        })
        .collect();
    let cache = gated_cache(&clock, &sts, &metrics, mappings);
    (sts, cache, names)
}

fn gated_config(mappings: Vec<Mapping>) -> Config {
    let mut cfg = config("http://127.0.0.1:9", mappings);
    cfg.refresh.cold_wait = Duration::from_secs(600);
    cfg
}

/// A reload, in the daemon's order (src/daemon.rs): metrics first, then the cache.
fn reload(cache: &CredentialCache, metrics: &crate::metrics::Metrics, mappings: Vec<Mapping>) {
    let cfg = gated_config(mappings);
    metrics.sync_mappings(cfg.mappings.keys().map(String::as_str));
    cache.apply_config(&cfg);
}

fn key_of(cache: &CredentialCache, name: &str) -> MappingKey {
    cache.inner.current_table().by_name[name].key.clone()
}

/// The value of the per-mapping series `family{mapping="name"}`, if it is exported.
fn mapping_series(metrics: &crate::metrics::Metrics, family: &str, name: &str) -> Option<String> {
    let prefix = format!("{family}{{mapping=\"{name}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

/// Nothing of the mapping under `key` is left in the cache: no entry (mapping or
/// per-job) of that key, so no credential stored for it, no slot, no refresh scheduled.
/// (A credential is stored in its entry's `MappingSpec`: `assert_no_credential` checks
/// an entry the test kept.)
#[track_caller]
fn assert_forgotten(cache: &CredentialCache, key: &MappingKey) {
    assert!(
        !cache.inner.current_table().by_key.contains_key(key)
            && cache.inner.job_by_key(key).is_none(),
        "{key:?} is still an entry of the cache, which is no longer configured"
    );
    assert!(
        !cache.inner.lock_slots().contains_key(key),
        "{key:?} has a slot again after the reload dropped it"
    );
    assert_eq!(
        cache.inner.queue.due_at(key),
        None,
        "a refresh is scheduled for {key:?}, which is no longer configured"
    );
}

/// No credential is stored for `spec` (an entry the cache dropped): not even a
/// request of a generation that still has the entry can be served it.
#[track_caller]
fn assert_no_credential(spec: &MappingSpec) {
    assert!(
        spec.held.load().is_none(),
        "a credential is still stored for {:?}, which is no longer configured",
        spec.key
    );
}

/// A cold fetch still inside AssumeRole when a reload removes its mapping lands in
/// nothing: the request that was waiting for it finishes with the generation it started
/// in (src/daemon.rs), but the credential is not cached, the mapping's slot, refresh and
/// metric series do not come back, no later request is served, and nothing refreshes
/// the removed mapping as time passes.
#[tokio::test]
async fn a_fetch_landing_after_its_mapping_was_removed_is_dropped() {
    let clock = ManualClock::starting_now();
    let sts = Gated::new(&clock);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let other = mapping("other", "other", Some("external-id-other"), "t2");
    let cache = gated_cache(
        &clock,
        &sts,
        &metrics,
        vec![
            mapping("m", "role-m", Some("external-id-m"), "t1"),
            other.clone(),
        ],
    );
    let removed = key_of(&cache, "m");
    let removed_spec = cache.inner.current_table().by_name["m"].clone();
    let request = spawn_get(&cache, "m");
    sts.wait_one_in_flight("the fetch for m is inside AssumeRole")
        .await;
    assert_eq!(state(&cache, "m"), MappingState::Fetching);

    reload(&cache, &metrics, vec![other]);
    sts.open();
    let served = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the waiting request finished")
        .expect("the request task did not panic");
    assert_eq!(
        served
            .expect("the in-flight request gets its fetch's result")
            .source,
        Source::Fresh
    );

    assert!(matches!(
        cache.get("m").await,
        Err(VendError::UnknownMapping)
    ));
    assert_forgotten(&cache, &removed);
    assert!(cache.status().iter().all(|s| s.name != "m"));
    let text = metrics.render();
    assert!(
        !text.contains("mapping=\"m\""),
        "the removed mapping's series came back:\n{text}"
    );
    // Two hours pass in refresh-sized steps: the removed mapping is never fetched again.
    for _ in 0..12 {
        clock.advance(10 * MIN);
        tick().await;
    }
    assert_eq!(sts.calls(), 1, "STS was called for a removed mapping");
    assert_forgotten(&cache, &removed);
    assert_no_credential(&removed_spec);
}

/// The same, when the reload keeps the name but changes the role: the old fetch (here
/// still in its External ID enforcement check) cannot fill in for the new mapping, whose
/// first request fetches for the new role, and the old role's check result does not
/// show up as the new mapping's `credvend_external_id_enforced`.
#[tokio::test]
async fn a_fetch_landing_after_its_mapping_changed_leaves_the_new_mapping_alone() {
    let (_, sts, metrics, cache) = gated_start(vec![warn_m("old")]);
    let old_key = key_of(&cache, "m");
    let old_spec = cache.inner.current_table().by_name["m"].clone();
    let request = spawn_get(&cache, "m");
    sts.wait_one_in_flight("the first enforcement probe is inside AssumeRole")
        .await;
    assert_eq!(
        sts.calls.lock().unwrap()[0].session_name,
        verify::PROBE_SESSION_NAME
    );

    let new = warn_m("new");
    reload(&cache, &metrics, vec![new]);
    let new_key = key_of(&cache, "m");
    assert_ne!(new_key, old_key);
    sts.open();
    let served = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the waiting request finished")
        .expect("the request task did not panic")
        .expect("the in-flight request gets its fetch's result");
    let old_calls = sts.calls();
    assert_eq!(
        old_calls, 3,
        "two probes and the real call for the old role"
    );

    assert_forgotten(&cache, &old_key);
    assert_no_credential(&old_spec);
    let status = cache.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].state, MappingState::Empty);
    assert_eq!(status[0].enforcement, EnforcementStatus::Unknown);
    assert!(status[0].last_success.is_none());
    assert_eq!(
        mapping_series(&metrics, "credvend_external_id_enforced", "m").as_deref(),
        Some("-1"),
        "the new role has not been checked; the old role's verdict is not its own"
    );

    let vended = cache.get("m").await.expect("the new mapping vends");
    assert_eq!(vended.source, Source::Fresh);
    assert_ne!(vended.entry.access_key_id(), served.entry.access_key_id());
    let calls = sts.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), old_calls + 3, "probes and the real call again");
    assert!(
        calls[old_calls..]
            .iter()
            .all(|c| c.role_arn == crate::testing::role_arn("role-new")),
        "the new mapping's calls go to the new role"
    );
    assert_eq!(
        mapping_series(&metrics, "credvend_external_id_enforced", "m").as_deref(),
        Some("1")
    );
}

/// A request authorised against the generation before a reload (`get_in` with that
/// generation's table, as the credential endpoint does) is served that generation's role,
/// and leaves nothing behind: its credential is not cached, the slot it brought back
/// is dropped, and the old role's enforcement verdict is neither recorded nor shown as
/// the mapping's `credvend_external_id_enforced`.
#[tokio::test]
async fn a_request_of_the_generation_before_a_reload_gets_its_role_and_leaves_nothing() {
    let (_, sts, metrics, cache) = gated_start(vec![warn_m("old")]);
    let old_key = key_of(&cache, "m");
    let old_spec = cache.inner.current_table().by_name["m"].clone();
    let old_table = cache.mapping_table();
    let new = warn_m("new");
    reload(&cache, &metrics, vec![new]);

    let request = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_in(&old_table, "m").await }
    });
    sts.wait_one_in_flight("the old role's first probe is inside AssumeRole")
        .await;
    assert!(
        cache.inner.lock_slots().contains_key(&old_key),
        "the old generation's request registered its fetch in a slot of the old key"
    );
    sts.open();
    let served = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the request finished")
        .expect("the request task did not panic")
        .expect("the old generation's request is served");
    assert_eq!(served.source, Source::Fresh);
    let calls = sts.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "two probes and the real call");
    assert!(
        calls
            .iter()
            .all(|c| c.role_arn == crate::testing::role_arn("role-old")),
        "the request was served its own generation's role: {:?}",
        calls.iter().map(|c| &c.role_arn).collect::<Vec<_>>()
    );

    assert_forgotten(&cache, &old_key);
    assert_no_credential(&old_spec);
    let status = cache.status();
    assert_eq!(status[0].enforcement, EnforcementStatus::Unknown);
    assert_eq!(
        mapping_series(&metrics, "credvend_external_id_enforced", "m").as_deref(),
        Some("-1"),
        "the old role's verdict is not the new mapping's"
    );
    let vended = cache.get("m").await.expect("the new mapping vends");
    assert_ne!(vended.entry.access_key_id(), served.entry.access_key_id());
    assert!(
        sts.calls.lock().unwrap()[3..]
            .iter()
            .all(|c| c.role_arn == crate::testing::role_arn("role-new")),
        "the applied generation fetches the new role"
    );
}

/// Requests for 200 cold mappings at once: at most 64 AssumeRole calls are in flight
/// (the STS connection bound in src/cache/mod.rs), the bound is reached, each finished
/// call lets a waiting one in, and every request is served.
#[tokio::test]
async fn at_most_64_assume_role_calls_are_in_flight() {
    let (sts, cache, names) = two_hundred_gated_mappings("m", false);
    let requests: Vec<_> = names
        .iter()
        .map(|name| {
            let (cache, name) = (cache.clone(), name.clone());
            tokio::spawn(async move { cache.get(&name).await })
        })
        .collect();
    // All 200 fetches have had their chance to call STS.
    sts.wait_then_settle("64 calls are in flight", |s| s.in_flight() >= 64)
        .await;
    assert_eq!(sts.in_flight(), 64, "calls in flight");
    assert_eq!(sts.calls(), 64, "calls made");

    sts.release(10);
    sts.wait_then_settle("10 waiting fetches took the freed places", |s| {
        s.calls() >= 74
    })
    .await;
    assert_eq!(sts.in_flight(), 64, "calls in flight after 10 finished");
    assert_eq!(sts.calls(), 74);

    sts.open();
    for request in requests {
        let vended = tokio::time::timeout(Duration::from_secs(30), request)
            .await
            .expect("request finished")
            .expect("no panic")
            .expect("served");
        assert_eq!(vended.source, Source::Fresh);
    }
    assert_eq!(sts.calls(), 200, "one call per mapping");
    assert_eq!(sts.max_in_flight(), 64, "most calls ever in flight");
}

/// 200 `prefetch` mappings at start: the prefetch pass starts at most 64 fetches at a
/// time (the rest are not even started, so they hold no memory), feeds in one more as
/// each finishes, and in the end every mapping has been fetched exactly once.
#[tokio::test]
async fn prefetch_runs_at_most_64_fetches_at_a_time_and_fetches_every_mapping() {
    let (sts, cache, names) = two_hundred_gated_mappings("p", true);
    let fetching = |cache: &CredentialCache| {
        cache
            .status()
            .iter()
            .filter(|s| s.state == MappingState::Fetching)
            .count()
    };
    sts.wait_then_settle("64 prefetches are in flight", |s| s.in_flight() >= 64)
        .await;
    assert_eq!(sts.in_flight(), 64, "calls in flight");
    assert_eq!(fetching(&cache), 64, "prefetches started");
    assert!(!cache.prefetch_settled());

    sts.release(10);
    sts.wait_then_settle("10 more prefetches started", |s| s.calls() >= 74)
        .await;
    assert_eq!(sts.in_flight(), 64, "calls in flight after 10 finished");
    assert_eq!(fetching(&cache), 64, "prefetches running after 10 finished");

    sts.open();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cache.prefetch_settled() {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch never settled: {} calls",
            sts.calls()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut called: Vec<String> = sts
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.session_name.to_string())
        .collect();
    called.sort();
    let expected: Vec<String> = names.iter().map(|n| format!("credvend-{n}")).collect();
    assert_eq!(called, expected, "each mapping fetched exactly once");
    assert!(
        cache
            .status()
            .iter()
            .all(|s| s.state == MappingState::Fresh)
    );
    assert_eq!(sts.max_in_flight(), 64, "most calls ever in flight");
}

/// A reload that gives a mapping another role keeps its metric series (the name is
/// the same) but not what they say about the old role: at the next scrape
/// (`observe_cache`, as `GET /metrics` runs it) `credvend_external_id_enforced` is back
/// to unknown until the new role has been checked.
#[tokio::test]
async fn a_mapping_given_another_role_does_not_keep_the_old_roles_enforcement_gauge() {
    let clock = ManualClock::starting_now();
    let sts = Gated::new(&clock);
    sts.open();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let old = warn_m("old");
    let cache = gated_cache(&clock, &sts, &metrics, vec![old]);
    cache.get("m").await.expect("vends");
    let scrape = || {
        metrics.observe_cache(&cache.status(), cache.sts_rate_limited_total());
        mapping_series(&metrics, "credvend_external_id_enforced", "m")
    };
    assert_eq!(scrape().as_deref(), Some("1"), "the old role was checked");

    let new = warn_m("new");
    reload(&cache, &metrics, vec![new]);
    assert_eq!(cache.status()[0].enforcement, EnforcementStatus::Unknown);
    assert_eq!(
        scrape().as_deref(),
        Some("-1"),
        "the new role has not been checked"
    );
    cache.get("m").await.expect("vends");
    assert_eq!(scrape().as_deref(), Some("1"), "the new role was checked");
}

/// A started cache with `rate` STS calls per second, a `cold_wait` no test here runs
/// into, and `mappings`; plus its metrics.
fn limited_cache(
    clock: &ManualClock,
    assumer: Arc<Scripted>,
    rate: u32,
    mappings: Vec<Mapping>,
) -> (CredentialCache, Arc<crate::metrics::Metrics>) {
    let mut cfg = config("http://127.0.0.1:9", mappings);
    cfg.sts.max_requests_per_second = rate;
    cfg.refresh.cold_wait = Duration::from_secs(600);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    metrics.sync_mappings(cfg.mappings.keys().map(String::as_str));
    let cache = CredentialCache::new(&cfg, assumer, Arc::new(clock.clone()), metrics.clone());
    cache.start();
    (cache, metrics)
}

fn require(name: &str) -> Mapping {
    let mut m = mapping(name, name, Some("external-id-0123456789"), "t");
    m.external_id_enforcement = EnforcementMode::Require;
    m
}

/// Cold STS calls waiting for the budget or a permit.
fn cold_waiting(cache: &CredentialCache) -> usize {
    let [(Priority::Cold, cold), _] = cache.sts_calls_waiting() else {
        unreachable!("cold first")
    };
    cold
}

/// Takes every STS concurrency permit of `cache`, so no AssumeRole starts until the
/// returned permit is dropped.
async fn hold_every_sts_permit(cache: &CredentialCache) -> tokio::sync::SemaphorePermit<'_> {
    cache
        .inner
        .sts_calls
        .acquire_many(MAX_CONCURRENT_STS_CALLS as u32)
        .await
        .unwrap()
}

/// Waits until `get` is blocked before its first STS call (an STS call waiting) or has
/// made one, and returns the number of STS calls made by then.
async fn first_call_or_blocked(cache: &CredentialCache, assumer: &Scripted) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cold_waiting(cache) == 0 && assumer.calls() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never got going"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assumer.calls()
}

/// The enforcement probes wait for a concurrency permit like any AssumeRole: with all
/// of them held, the first probe does not reach STS.
#[tokio::test]
async fn enforcement_probes_wait_for_a_concurrency_permit() {
    let clock = ManualClock::starting_now();
    let denied = Step::Fail(FailureReason::AccessDenied, "AccessDenied");
    let assumer = Scripted::new(&clock, vec![denied.clone(), denied]);
    let (cache, _) = limited_cache(&clock, assumer.clone(), 1000, vec![require("m")]);
    let held = hold_every_sts_permit(&cache).await;
    let request = spawn_get(&cache, "m");
    assert_eq!(
        first_call_or_blocked(&cache, &assumer).await,
        0,
        "a probe reached STS while every permit was held"
    );
    assert_eq!(cold_waiting(&cache), 1);
    drop(held);
    let vended = request
        .await
        .unwrap()
        .expect("vends once the permits are free");
    assert_eq!(vended.source, Source::Fresh);
    let calls = assumer.calls.lock().unwrap().clone();
    let probes = calls
        .iter()
        .filter(|c| c.session_name == verify::PROBE_SESSION_NAME)
        .count();
    assert_eq!((probes, calls.len()), (2, 3), "two probes, then the fetch");
    assert_eq!(cold_waiting(&cache), 0);
}

/// The enforcement probes take tokens of the STS budget: with the budget spent, the
/// first probe waits for the next token.
#[tokio::test]
async fn enforcement_probes_wait_for_the_sts_budget() {
    let clock = ManualClock::starting_now();
    let denied = Step::Fail(FailureReason::AccessDenied, "AccessDenied");
    let assumer = Scripted::new(&clock, vec![denied.clone(), denied]);
    let (cache, _) = limited_cache(&clock, assumer.clone(), 1, vec![require("m")]);
    // Spend the only token of the burst.
    cache
        .inner
        .budget
        .acquire(Priority::Cold, &key_of(&cache, "m"))
        .await;
    let request = spawn_get(&cache, "m");
    assert_eq!(
        first_call_or_blocked(&cache, &assumer).await,
        0,
        "a probe reached STS with the budget spent"
    );
    assert_eq!(cache.inner.budget.waiting(), [1, 0]);
    // One token a second: the probes and the fetch each wait for theirs.
    let vended = request.await.unwrap().expect("vends once tokens refill");
    assert_eq!(vended.source, Source::Fresh);
    assert_eq!(assumer.calls(), 3);
    assert!(cache.sts_rate_limited_total() >= 3);
}

/// `credvend_assume_role_duration_seconds` measures the STS call, not the wait for a
/// concurrency permit before it.
#[tokio::test]
async fn the_assume_role_histogram_excludes_the_wait_for_a_permit() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let (cache, metrics) = limited_cache(
        &clock,
        assumer.clone(),
        1000,
        vec![mapping("m", "r", None, "t")],
    );
    let held = hold_every_sts_permit(&cache).await;
    let request = spawn_get(&cache, "m");
    assert_eq!(first_call_or_blocked(&cache, &assumer).await, 0);
    let hold = Duration::from_secs(2);
    let held_since = std::time::Instant::now();
    tokio::time::sleep(hold).await;
    drop(held);
    let held_for = held_since.elapsed();
    request.await.unwrap().expect("vends");
    let text = metrics.render();
    let series = |name: &str| -> f64 {
        let prefix = format!("{name}{{region=\"us-east-1\",result=\"success\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{name} missing"))
            .parse()
            .unwrap()
    };
    assert_eq!(series("credvend_assume_role_duration_seconds_count"), 1.0);
    let observed = series("credvend_assume_role_duration_seconds_sum");
    assert!(
        observed < hold.as_secs_f64(),
        "observed {observed:.3} s for an instant STS call that waited {held_for:?} for a permit"
    );
}

/// The scheduler takes a due retry off its queue while a request's fetch for the same
/// mapping is landing (a failure, which schedules the next retry): the stale retry
/// makes no second STS call. Simulated in order, without the scheduler task.
#[tokio::test]
async fn a_retry_overtaken_by_a_requests_fetch_makes_no_extra_call() {
    let clock = ManualClock::starting_now();
    let throttled = Step::Fail(FailureReason::Throttled, "Throttling");
    let assumer = Scripted::new(&clock, vec![throttled.clone(), throttled]);
    let cfg = config("http://127.0.0.1:9", vec![mapping("m", "r", None, "t")]);
    // Not started: the test plays the scheduler.
    let cache = CredentialCache::new(
        &cfg,
        assumer.clone(),
        Arc::new(clock.clone()),
        Arc::new(crate::metrics::Metrics::new()),
    );
    let key = key_of(&cache, "m");
    assert!(cache.get("m").await.is_err());
    clock.advance(Duration::from_secs(1));
    // The scheduler takes the due retry …
    assert!(
        cache
            .inner
            .queue
            .due_at(&key)
            .is_some_and(|at| at <= cache.now())
    );
    cache.inner.queue.cancel(&key);
    // … a request's fetch goes first and fails, scheduling the next retry …
    assert!(cache.get("m").await.is_err());
    assert_eq!(assumer.calls(), 2);
    assert!(
        cache
            .inner
            .queue
            .due_at(&key)
            .is_some_and(|at| at > cache.now())
    );
    // … and then the scheduler hands over the retry it took.
    Inner::on_refresh_due(&cache.inner, key);
    tick().await;
    assert_eq!(
        assumer.calls(),
        2,
        "a retry the request's fetch had already made"
    );
}

// --- per-job entries ------------------------------------------------------------------

fn session(name: &str) -> SessionName {
    SessionName::try_from(name.to_owned()).expect("a valid session name")
}

/// `get_job_in` in the generation applied now.
async fn get_job(cache: &CredentialCache, name: &str, job: &str) -> Result<Vended, VendError> {
    cache
        .get_job_in(&cache.mapping_table(), name, &session(job))
        .await
}

fn job_key(cache: &CredentialCache, name: &str, job: &str) -> MappingKey {
    key_of(cache, name).for_job(&session(job))
}

/// The RoleSessionNames of the AssumeRole calls recorded so far, in order.
fn session_names(calls: &Mutex<Vec<AssumeRoleInput>>) -> Vec<String> {
    let calls = calls.lock().unwrap();
    calls.iter().map(|c| c.session_name.to_string()).collect()
}

/// A job's credential is assumed with the job's RoleSessionName and the mapping's role
/// and External ID, cached as an entry of its own: a second request is a hit, a second
/// job is a second STS call, and the mapping's own entry is neither filled nor used.
#[tokio::test]
async fn a_job_entry_is_assumed_with_its_session_name_and_leaves_the_mapping_alone() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let cache = cache_for(
        &clock,
        assumer.clone(),
        vec![mapping("m", "role-m", Some("external-id-m"), "t1")],
    );

    let first = get_job(&cache, "m", "sync-job-1").await.unwrap();
    assert_eq!(first.source, Source::Fresh);
    let call = assumer.calls.lock().unwrap()[0].clone();
    assert_eq!(
        call.session_name, "sync-job-1",
        "the job's RoleSessionName reaches STS"
    );
    assert_eq!(call.role_arn, crate::testing::role_arn("role-m"));
    assert_eq!(
        call.external_id.map(|e| e.expose().to_string()).as_deref(),
        Some("external-id-m")
    );
    let again = get_job(&cache, "m", "sync-job-1").await.unwrap();
    assert_eq!(
        (again.source, again.entry.access_key_id(), assumer.calls()),
        (Source::Cache, first.entry.access_key_id(), 1),
        "the job's second request is a cache hit"
    );

    let second_job = get_job(&cache, "m", "sync-job-2").await.unwrap();
    assert_eq!(second_job.source, Source::Fresh);
    assert_ne!(
        second_job.entry.access_key_id(),
        first.entry.access_key_id()
    );
    assert_eq!(session_names(&assumer.calls), ["sync-job-1", "sync-job-2"]);
    assert_eq!(cache.job_entries(), 2);

    // The mapping's own entry: untouched by its jobs.
    assert!(
        cache.inner.current_table().by_name["m"]
            .held
            .load()
            .is_none()
    );
    assert!(!cache.inner.lock_slots().contains_key(&key_of(&cache, "m")));
    assert_eq!(cache.status().len(), 1, "jobs are not mappings in /status");
    assert_eq!(state(&cache, "m"), MappingState::Empty);
    let own = cache.get("m").await.unwrap();
    assert_eq!(own.source, Source::Fresh);
    assert_eq!(
        session_names(&assumer.calls),
        ["sync-job-1", "sync-job-2", "credvend-m"]
    );
    let job_again = get_job(&cache, "m", "sync-job-1").await.unwrap();
    assert_eq!(job_again.entry.access_key_id(), first.entry.access_key_id());
    assert_eq!(assumer.calls(), 3);
}

/// Concurrent requests of one job make one AssumeRole (the entry's own single flight)
/// and are all served its result; a job of an unknown mapping is `UnknownMapping`.
#[tokio::test]
async fn concurrent_requests_of_one_job_make_one_sts_call() {
    let (_clock, sts, _metrics, cache) =
        gated_start(vec![mapping("m", "role-m", Some("external-id-m"), "t1")]);
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { get_job(&cache, "m", "sync-job-1").await })
        })
        .collect();
    sts.wait_then_settle("the job's fetch is inside AssumeRole", |s| {
        s.in_flight() >= 1
    })
    .await;
    assert_eq!(sts.calls(), 1, "twenty requests of one job, one fetch");
    sts.open();
    let mut keys = std::collections::BTreeSet::new();
    for request in requests {
        let vended = tokio::time::timeout(Duration::from_secs(30), request)
            .await
            .expect("the request finished")
            .expect("the request task did not panic")
            .expect("the job is served");
        keys.insert(vended.entry.access_key_id().to_owned());
    }
    assert_eq!(
        keys.len(),
        1,
        "every request got the one fetch's credential"
    );
    assert_eq!(sts.calls(), 1);
    assert_eq!(sts.calls.lock().unwrap()[0].session_name, "sync-job-1");
    assert!(matches!(
        get_job(&cache, "nope", "sync-job-1").await,
        Err(VendError::UnknownMapping)
    ));
}

/// `drop_job` forgets the entry (credential, slot, scheduled refresh, registration);
/// the next request of that job assumes the role again. The other job and the mapping
/// keep theirs.
#[tokio::test]
async fn drop_job_forgets_the_entry_and_the_next_request_fetches_anew() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    let first = get_job(&cache, "m", "job-a").await.unwrap();
    let other = get_job(&cache, "m", "job-b").await.unwrap();
    cache.get("m").await.unwrap();
    let dropped = job_key(&cache, "m", "job-a");
    let dropped_spec = cache.inner.job_by_key(&dropped).expect("registered");
    assert!(
        cache.inner.queue.due_at(&dropped).is_some(),
        "a refresh was scheduled"
    );

    cache.drop_job("m", &session("job-a"));
    assert_forgotten(&cache, &dropped);
    assert_no_credential(&dropped_spec);
    assert_eq!(cache.job_entries(), 1);
    // Unknown pairs are ignored.
    cache.drop_job("m", &session("job-never"));
    cache.drop_job("nope", &session("job-b"));
    assert_eq!(cache.job_entries(), 1);

    let again = get_job(&cache, "m", "job-a").await.unwrap();
    assert_eq!(again.source, Source::Fresh);
    assert_ne!(again.entry.access_key_id(), first.entry.access_key_id());
    assert_eq!(assumer.calls(), 4);
    assert_eq!(assumer.calls.lock().unwrap()[3].session_name, "job-a");
    let b = get_job(&cache, "m", "job-b").await.unwrap();
    assert_eq!(
        (b.source, b.entry.access_key_id().to_owned()),
        (Source::Cache, other.entry.access_key_id().to_owned())
    );
    assert_eq!(cache.get("m").await.unwrap().source, Source::Cache);
    assert_eq!(assumer.calls(), 4);
}

/// A fetch still inside AssumeRole when its job is dropped serves the request waiting
/// for it and lands in nothing: no credential, slot, refresh or registration comes back
/// (also when a request racing the drop brought a slot back), and nothing fetches for
/// the job as time passes.
#[tokio::test]
async fn a_fetch_in_flight_for_a_dropped_job_does_not_bring_it_back() {
    let (clock, sts, _metrics, cache) = gated_start(vec![mapping("m", "r", None, "t")]);
    let key = job_key(&cache, "m", "job-a");
    let request = tokio::spawn({
        let cache = cache.clone();
        async move { get_job(&cache, "m", "job-a").await }
    });
    sts.wait_one_in_flight("the job's fetch is inside AssumeRole")
        .await;
    // A request of the job that looked its entry up just before the drop, and reaches
    // the slots lock after it: it brings a slot back and starts a fetch of its own.
    let looked_up = cache.inner.job_by_key(&key).expect("registered");
    cache.drop_job("m", &session("job-a"));
    assert_forgotten(&cache, &key);
    let late = wait_outcome(Inner::start_or_join(
        &cache.inner,
        &looked_up,
        Caller::Request,
    ));
    sts.open();
    let served = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the request finished")
        .expect("the request task did not panic")
        .expect("the waiting request gets its fetch's result");
    assert_eq!(served.source, Source::Fresh);
    tokio::time::timeout(Duration::from_secs(30), late)
        .await
        .expect("the late request's fetch finished")
        .expect("the late request gets its fetch's result");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_forgotten(&cache, &key);
    assert_eq!(cache.job_entries(), 0);
    for _ in 0..12 {
        clock.advance(10 * MIN);
        tick().await;
    }
    assert_eq!(sts.calls(), 2, "STS was called for a dropped job");
    assert_forgotten(&cache, &key);
    assert_no_credential(&looked_up);
}

/// A job entry is refreshed in the background before its credential expires, with the
/// job's session name, while it is in use; requests never wait for it.
#[tokio::test]
async fn a_job_entry_is_refreshed_before_it_expires() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    let first = get_job(&cache, "m", "job-a").await.unwrap();
    let due = cache
        .inner
        .queue
        .due_at(&job_key(&cache, "m", "job-a"))
        .expect("a refresh is scheduled");
    assert!(due < first.entry.expiration, "scheduled before expiry");

    // Three hours in 5-minute steps, the job requesting at each.
    for _ in 0..36 {
        clock.advance(5 * MIN);
        tick().await;
        let vended = get_job(&cache, "m", "job-a").await.unwrap();
        assert_eq!(
            vended.source,
            Source::Cache,
            "a request never waited for STS"
        );
        assert!(
            lifecycle::remaining(vended.entry.expiration, clock.now())
                >= Duration::from_secs(20 * 60)
        );
    }
    let names = session_names(&assumer.calls);
    assert!(
        (6..=9).contains(&names.len()),
        "refreshed about every 25 min: {} calls",
        names.len()
    );
    assert!(names.iter().all(|n| n == "job-a"), "{names:?}");
}

/// A reload drops the job entries of a mapping whose inputs changed (the next request
/// assumes the new inputs with the job's session name) or that was removed, and keeps
/// those of an unchanged mapping.
#[tokio::test]
async fn a_reload_drops_the_job_entries_of_changed_and_removed_mappings_only() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let keep = mapping("keep", "keep", Some("external-id-keep"), "t1");
    let change = mapping("change", "change", Some("external-id-old"), "t2");
    let gone = mapping("gone", "gone", None, "t3");
    let cache = cache_for(
        &clock,
        assumer.clone(),
        vec![keep.clone(), change.clone(), gone],
    );
    let kept = get_job(&cache, "keep", "job").await.unwrap();
    let changed_before = get_job(&cache, "change", "job").await.unwrap();
    get_job(&cache, "gone", "job").await.unwrap();
    let old_change = job_key(&cache, "change", "job");
    let old_gone = job_key(&cache, "gone", "job");
    let old_specs = [&old_change, &old_gone].map(|key| cache.inner.job_by_key(key).unwrap());
    assert_eq!((assumer.calls(), cache.job_entries()), (3, 3));

    let mut changed = change.clone();
    changed.external_id = Some(crate::secret::ExternalId::new("external-id-new"));
    cache.apply_config(&config("http://127.0.0.1:9", vec![keep, changed]));

    assert_forgotten(&cache, &old_change);
    assert_forgotten(&cache, &old_gone);
    for spec in &old_specs {
        assert_no_credential(spec);
    }
    assert_eq!(
        cache.job_entries(),
        1,
        "only the unchanged mapping's job is left"
    );
    let kept_after = get_job(&cache, "keep", "job").await.unwrap();
    assert_eq!(
        (
            kept_after.source,
            kept_after.entry.access_key_id().to_owned()
        ),
        (Source::Cache, kept.entry.access_key_id().to_owned())
    );
    assert!(
        cache
            .inner
            .queue
            .due_at(&job_key(&cache, "keep", "job"))
            .is_some()
    );
    let changed_after = get_job(&cache, "change", "job").await.unwrap();
    assert_eq!(changed_after.source, Source::Fresh);
    assert_ne!(
        changed_after.entry.access_key_id(),
        changed_before.entry.access_key_id()
    );
    let last = assumer.calls.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.session_name, "job");
    assert_eq!(
        last.external_id.map(|e| e.expose().to_string()).as_deref(),
        Some("external-id-new")
    );
    assert!(matches!(
        get_job(&cache, "gone", "job").await,
        Err(VendError::UnknownMapping)
    ));
    assert_eq!(assumer.calls(), 4);
}

/// A job entry is not a mapping: it is not in `/status`, and its fetches do not set the
/// mapping's `credvend_mapping_state` or expiry gauge (the mapping's own entry is what
/// they show), though its STS calls count in the mapping's `credvend_assume_role_total`.
#[tokio::test]
async fn a_job_entry_is_not_in_status_and_leaves_the_mappings_state_gauges_alone() {
    let (_clock, sts, metrics, cache) = gated_start(vec![mapping("m", "r", None, "t")]);
    sts.open();
    get_job(&cache, "m", "job-a").await.unwrap();
    let status = cache.status();
    assert_eq!(status.len(), 1);
    assert_eq!(
        (status[0].name.as_str(), status[0].state),
        ("m", MappingState::Empty)
    );
    assert_eq!(status[0].access_key_id, None);
    let text = metrics.render();
    assert!(
        text.contains("credvend_mapping_state{mapping=\"m\",state=\"empty\"} 1"),
        "a job's fetch changed the mapping's state gauge:\n{text}"
    );
    assert!(
        !text.contains("credvend_credentials_expiry_timestamp_seconds{mapping=\"m\"}"),
        "a job's credential set the mapping's expiry gauge:\n{text}"
    );
    assert!(text.contains("credvend_assume_role_total{mapping=\"m\",result=\"success\"} 1"));

    // The mapping's own fetch does set them.
    cache.get("m").await.unwrap();
    let text = metrics.render();
    assert!(text.contains("credvend_mapping_state{mapping=\"m\",state=\"fresh\"} 1"));
    assert!(text.contains("credvend_credentials_expiry_timestamp_seconds{mapping=\"m\"}"));
}

/// A job entry its token store never dropped stops refreshing once idle, like a
/// mapping, and is then dropped altogether: the registry does not grow without bound.
#[tokio::test]
async fn a_forgotten_job_entry_stops_refreshing_when_idle_and_is_dropped() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    get_job(&cache, "m", "job-a").await.unwrap();
    let key = job_key(&cache, "m", "job-a");
    let spec = cache.inner.job_by_key(&key).expect("registered");
    // 7 hours in 10-minute steps with no request.
    for _ in 0..42 {
        clock.advance(10 * MIN);
        tick().await;
    }
    let calls = assumer.calls();
    // idle_timeout is 6 h: refreshed about every 25 min for 6 h, then no more.
    assert!((12..=16).contains(&calls), "refreshed {calls} times");
    assert_eq!(
        cache.job_entries(),
        0,
        "the idle job entry is still registered"
    );
    assert_forgotten(&cache, &key);
    assert_no_credential(&spec);
    for _ in 0..6 {
        clock.advance(10 * MIN);
        tick().await;
    }
    assert_eq!(assumer.calls(), calls);
}

/// The same for a job whose role refused it (nothing to refresh, nothing scheduled by a
/// mapping's rules): its idle check drops it; requests meanwhile keep it.
#[tokio::test]
async fn a_refused_job_entry_is_dropped_when_idle() {
    let clock = ManualClock::starting_now();
    let denied = Step::Fail(FailureReason::AccessDenied, "AccessDenied");
    let assumer = Scripted::new(&clock, vec![denied.clone(), denied]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    assert!(matches!(
        get_job(&cache, "m", "job-a").await,
        Err(VendError::Denied(_))
    ));
    let key = job_key(&cache, "m", "job-a");
    // Used again after 5 h (past its negative cache: STS is asked once more).
    clock.advance(5 * 60 * MIN);
    tick().await;
    assert_eq!(cache.job_entries(), 1, "dropped while in use");
    assert!(matches!(
        get_job(&cache, "m", "job-a").await,
        Err(VendError::Denied(_))
    ));
    assert_eq!(assumer.calls(), 2);
    for _ in 0..35 {
        clock.advance(10 * MIN);
        tick().await;
        assert_eq!(cache.job_entries(), 1, "dropped before it was idle");
    }
    for _ in 0..3 {
        clock.advance(10 * MIN);
        tick().await;
    }
    assert_eq!(
        cache.job_entries(),
        0,
        "the idle refused job entry is still registered"
    );
    assert_forgotten(&cache, &key);
    assert_eq!(assumer.calls(), 2, "an idle check never calls STS");
}

/// A job shares its mapping's External ID enforcement result (the same role and
/// External ID): once the mapping's role was checked, a job's first fetch is one
/// AssumeRole, no probes; and a job checked first leaves the mapping nothing to check.
#[tokio::test]
async fn a_job_entry_shares_its_mappings_enforcement_check() {
    let (_clock, sts, metrics, cache) = gated_start(vec![warn_m("a")]);
    sts.open();
    cache.get("m").await.unwrap();
    assert_eq!(sts.calls(), 3, "two probes and the mapping's call");
    get_job(&cache, "m", "job-a").await.unwrap();
    assert_eq!(
        session_names(&sts.calls)[3..],
        ["job-a"],
        "the job's first fetch probed again"
    );

    let (_clock, sts, metrics2, cache) = gated_start(vec![warn_m("b")]);
    drop(metrics);
    sts.open();
    get_job(&cache, "m", "job-b").await.unwrap();
    assert_eq!(sts.calls(), 3, "two probes and the job's call");
    assert_eq!(cache.status()[0].enforcement, EnforcementStatus::Enforced);
    assert_eq!(
        mapping_series(&metrics2, "credvend_external_id_enforced", "m").as_deref(),
        Some("1")
    );
    cache.get("m").await.unwrap();
    assert_eq!(
        session_names(&sts.calls)[3..],
        ["credvend-m"],
        "the mapping probed again"
    );
}

/// A request authorised against the generation before a reload that changed its
/// mapping is served that generation's role under the job's session name, and leaves
/// no entry behind.
#[tokio::test]
async fn a_job_request_of_the_generation_before_a_reload_leaves_nothing() {
    let (_clock, sts, metrics, cache) = gated_start(vec![mapping("m", "role-old", None, "t")]);
    sts.open();
    let old_table = cache.mapping_table();
    let old_key = job_key(&cache, "m", "job-a");
    reload(&cache, &metrics, vec![mapping("m", "role-new", None, "t")]);
    let served = cache
        .get_job_in(&old_table, "m", &session("job-a"))
        .await
        .unwrap();
    assert_eq!(served.source, Source::Fresh);
    let call = sts.calls.lock().unwrap()[0].clone();
    assert_eq!(
        (call.role_arn.to_string(), call.session_name.to_string()),
        (crate::testing::role_arn("role-old"), "job-a".to_string())
    );
    assert_forgotten(&cache, &old_key);
    assert_eq!(cache.job_entries(), 0);
    let new = get_job(&cache, "m", "job-a").await.unwrap();
    assert_eq!(new.source, Source::Fresh);
    assert_eq!(
        sts.calls.lock().unwrap()[1].role_arn,
        crate::testing::role_arn("role-new")
    );
    assert_eq!(cache.job_entries(), 1);
}

/// The STS budget's fair share counts a job under its mapping: with the bucket empty, a
/// second job of a mapping whose job was just granted a token waits behind another
/// mapping that arrived later, as the mapping's own next fetch would. (Counted per job,
/// every job would be a mapping never granted, and a customer running many jobs would
/// take that many shares.)
#[tokio::test]
async fn the_sts_budget_counts_a_jobs_calls_under_its_mapping() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let (cache, _) = limited_cache(
        &clock,
        assumer.clone(),
        1,
        vec![mapping("a", "a", None, "t1"), mapping("b", "b", None, "t2")],
    );
    // The burst of one token goes to a's first job.
    get_job(&cache, "a", "job-1").await.unwrap();
    let second_job = tokio::spawn({
        let cache = cache.clone();
        async move { get_job(&cache, "a", "job-2").await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cold_waiting(&cache) < 1 {
        assert!(std::time::Instant::now() < deadline, "job-2 never waited");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let other_mapping = spawn_get(&cache, "b");
    while cold_waiting(&cache) < 2 {
        assert!(std::time::Instant::now() < deadline, "b never waited");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for request in [second_job, other_mapping] {
        tokio::time::timeout(Duration::from_secs(30), request)
            .await
            .expect("served within the budget")
            .expect("the request task did not panic")
            .expect("served");
    }
    assert_eq!(
        session_names(&assumer.calls),
        ["job-1", "credvend-b", "job-2"],
        "the mapping that was not granted a token went first"
    );
}

/// A reload that changes only the enforcement mode of a mapping keeps its job entries
/// (same key) and applies the new mode to them at the next request, as to the mapping:
/// a role found not enforcing its External ID is refused under `require` without an STS
/// call, and served again from the kept entry when the mode goes back to `warn`.
#[tokio::test]
async fn a_reload_that_changes_only_the_mode_applies_it_to_the_kept_job_entries() {
    let clock = ManualClock::starting_now();
    // Issues credentials to the probes too: the role does not enforce its External ID.
    let assumer = Scripted::new(&clock, vec![]);
    let warn = warn_m("a");
    let cache = cache_for(&clock, assumer.clone(), vec![warn.clone()]);
    let served = get_job(&cache, "m", "job-a").await.unwrap();
    assert_eq!(
        session_names(&assumer.calls),
        [verify::PROBE_SESSION_NAME, "job-a"],
        "the first probe got credentials, then the job's call"
    );
    assert_eq!(
        cache.status()[0].enforcement,
        EnforcementStatus::NotEnforced
    );

    let mut require = warn.clone();
    require.external_id_enforcement = EnforcementMode::Require;
    cache.apply_config(&config("http://127.0.0.1:9", vec![require]));
    assert_eq!(
        cache.job_entries(),
        1,
        "the mode is not an input: the entry is kept"
    );
    assert!(matches!(
        get_job(&cache, "m", "job-a").await,
        Err(VendError::UnsafeTrustPolicy(_))
    ));
    cache.apply_config(&config("http://127.0.0.1:9", vec![warn]));
    let again = get_job(&cache, "m", "job-a").await.unwrap();
    assert_eq!(
        (again.source, again.entry.access_key_id().to_owned()),
        (Source::Cache, served.entry.access_key_id().to_owned())
    );
    assert_eq!(assumer.calls(), 2);
}

/// A job the scheduler found idle but that a request used before it was dropped is kept,
/// with an idle check scheduled again (the scheduler had taken its entry off the queue):
/// it can still be found idle later.
#[tokio::test]
async fn a_job_used_again_as_it_is_found_idle_is_kept_with_an_idle_check() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    get_job(&cache, "m", "job-a").await.unwrap();
    let key = job_key(&cache, "m", "job-a");
    let spec = cache.inner.job_by_key(&key).expect("registered");
    // What the scheduler did: took the entry off the queue, found it idle; a request
    // touched it since.
    cache.inner.queue.cancel(&key);
    let idle_timeout = cache.inner.current_table().refresh.idle_timeout;
    cache.inner.drop_idle_job(&spec, idle_timeout);
    assert_eq!(cache.job_entries(), 1, "a job in use was dropped");
    assert_eq!(
        cache.inner.queue.due_at(&key),
        Some(spec.last_used().unwrap() + idle_timeout + Duration::from_millis(1)),
        "nothing is scheduled for the kept job"
    );
    assert!(spec.held.load().is_some());
}

/// A job refused by its role is negatively cached like a mapping, and a SIGHUP
/// (`forget_failures`) ends that too: the next request asks STS again.
#[tokio::test]
async fn forget_failures_ends_a_jobs_negative_cache() {
    let clock = ManualClock::starting_now();
    let denied = Step::Fail(FailureReason::AccessDenied, "AccessDenied");
    let assumer = Scripted::new(&clock, vec![denied]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    assert!(matches!(
        get_job(&cache, "m", "job-a").await,
        Err(VendError::Denied(_))
    ));
    assert!(matches!(
        get_job(&cache, "m", "job-a").await,
        Err(VendError::Denied(_))
    ));
    assert_eq!(assumer.calls(), 1, "inside its negative cache: no STS call");
    cache.forget_failures();
    let vended = get_job(&cache, "m", "job-a").await.unwrap();
    assert_eq!(
        (vended.source, assumer.calls()),
        (Source::Fresh, 2),
        "after a SIGHUP the refused job asks STS again"
    );
}

/// A refresh refused by the role (terminal) ends serving at once, although the cached
/// credential still has more than `min_remaining` left: the request path's lock-free
/// read of the store's cell (`MappingSpec::held`) is cleared by the refusal, so the next request is answered `AssumeRoleDenied`, not with the old credential.
#[tokio::test]
async fn a_refresh_refused_by_the_role_stops_serving_the_cached_credential_at_once() {
    let clock = ManualClock::starting_now();
    let denied = Step::Fail(FailureReason::AccessDenied, "AccessDenied");
    let assumer = Scripted::new(&clock, vec![Step::Issue(Duration::from_secs(3600)), denied]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);

    assert_eq!(cache.get("m").await.unwrap().source, Source::Fresh);
    assert_eq!(cache.get("m").await.unwrap().source, Source::Cache);
    // The refresh is due 35 min (+ up to 3.5 min of jitter) before the 1 h expiry.
    clock.advance(Duration::from_secs(26 * 60));
    tick().await;
    settle(&cache, "m").await;
    assert_eq!(assumer.calls(), 2, "the refresh ran");
    assert_eq!(state(&cache, "m"), MappingState::Failed);
    match cache.get("m").await {
        Err(VendError::Denied(error)) => assert_eq!(error.code, "AccessDenied"),
        Ok(vended) => panic!(
            "served the credential the role no longer grants ({:?}, {} left)",
            vended.source,
            humantime::format_duration(vended.entry.remaining(cache.inner.now()))
        ),
        Err(other) => panic!("expected AssumeRoleDenied, got {other:?}"),
    }
}

/// A credential a reload dropped (its mapping's role changed) is never served again,
/// not even to a request authorised against the generation before the reload: that
/// request is fetched its own role afresh, as the store no longer has the credential,
/// and the request path's lock-free read (`MappingSpec::held`) was cleared with it.
#[tokio::test]
async fn a_credential_dropped_by_a_reload_is_not_served_to_the_generation_before() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    let first = cache.get("m").await.expect("served");
    assert_eq!(first.source, Source::Fresh);
    let old_table = cache.mapping_table();
    cache.apply_config(&config(
        "http://127.0.0.1:9",
        vec![mapping("m", "r2", None, "t")],
    ));

    let served = cache.get_in(&old_table, "m").await.expect("served");
    assert_ne!(
        served.entry.access_key_id(),
        first.entry.access_key_id(),
        "the credential the reload dropped was served ({:?})",
        served.source
    );
    assert_eq!(served.source, Source::Fresh);
    assert_eq!(
        assumer.calls(),
        2,
        "fetched again for the old generation's request"
    );
}

/// A reload publishes its table (the daemon swaps its serving generation there) before it
/// drops the changed mapping's credential: a request authorised by the generation before,
/// arriving in between, is served that generation's cached credential without an STS
/// call. With the drop first, at 10,000 mappings such a request fetched the old role once
/// more (`scripts/bench.sh scale-warm`: 2 AssumeRole calls for a one-mapping reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_publishes_its_table_before_dropping_the_old_credentials() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(&clock, vec![]);
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    let first = cache.get("m").await.expect("served");
    let old_table = cache.mapping_table();
    let mut in_between = None;
    cache.apply_config_then(
        &config("http://127.0.0.1:9", vec![mapping("m", "r2", None, "t")]),
        |_new| {
            // A request of the generation before, while the daemon swaps generations.
            in_between = Some(tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(cache.get_in(&old_table, "m"))
            }));
        },
    );
    let served = in_between.expect("published").expect("served");
    assert_eq!(served.source, Source::Cache, "fetched instead of served");
    assert_eq!(served.entry.access_key_id(), first.entry.access_key_id());
    assert_eq!(assumer.calls(), 1, "an STS call for the generation before");
}

/// An assumer that fails over once, as the real one does on a 5xx: the first attempt in
/// the mapping's region fails, then (after [`crate::creds::AttemptHooks::before_failover`])
/// a second one in `us-west-2` succeeds.
struct FailsOverOnce {
    clock: ManualClock,
    /// Regions attempted, in order.
    attempts: Mutex<Vec<String>>,
    /// How long `before_failover` held the failover (real time).
    held: Mutex<Option<Duration>>,
}

impl RoleAssumer for FailsOverOnce {
    fn assume_role<'a>(&'a self, _input: &'a AssumeRoleInput) -> AssumeFuture<'a> {
        unreachable!("the cache fetches through assume_role_with")
    }

    fn assume_role_with<'a>(
        &'a self,
        input: &'a AssumeRoleInput,
        hooks: &'a dyn crate::creds::AttemptHooks,
    ) -> AssumeFuture<'a> {
        use crate::creds::Attempt;
        Box::pin(async move {
            self.attempts.lock().unwrap().push(input.region.to_string());
            hooks.attempt_finished(&Attempt {
                region: &input.region,
                outcome: Err(FailureReason::ServerError),
                duration: Duration::from_millis(5),
            });
            let started = std::time::Instant::now();
            hooks.before_failover("us-west-2").await;
            *self.held.lock().unwrap() = Some(started.elapsed());
            self.attempts.lock().unwrap().push("us-west-2".into());
            hooks.attempt_finished(&Attempt {
                region: "us-west-2",
                outcome: Ok(()),
                duration: Duration::from_millis(5),
            });
            Ok(test_credentials(
                "ASIAFAILEDOVER000001".into(),
                self.clock.now() + Duration::from_secs(3600),
            ))
        })
    }
}

/// A failover attempt waits for a token of the global STS budget like the first attempt
/// (docs/design.md, Regional failover), and each attempt is counted by region.
/// One token a second, the burst spent by the first attempt: the failover, which follows
/// it at once, waits for the next token (real time: a lower bound, which load only
/// lengthens).
#[tokio::test]
async fn each_failover_attempt_waits_for_a_token_of_the_sts_budget() {
    let clock = ManualClock::starting_now();
    let assumer = Arc::new(FailsOverOnce {
        clock: clock.clone(),
        attempts: Mutex::new(Vec::new()),
        held: Mutex::new(None),
    });
    let mut cfg = config("http://127.0.0.1:9", vec![mapping("m", "r", None, "t")]);
    cfg.sts.max_requests_per_second = 1;
    cfg.refresh.cold_wait = Duration::from_secs(600);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    metrics.sync_mappings(["m"]);
    let cache = CredentialCache::new(
        &cfg,
        assumer.clone(),
        Arc::new(clock.clone()),
        metrics.clone(),
    );
    cache.start();

    let vended = cache.get("m").await.expect("vends once a token refills");
    assert_eq!(vended.source, Source::Fresh);
    assert_eq!(
        *assumer.attempts.lock().unwrap(),
        ["us-east-1", "us-west-2"]
    );
    assert_eq!(
        cache.sts_rate_limited_total(),
        1,
        "the failover attempt had to wait for a token"
    );
    let held = assumer.held.lock().unwrap().expect("failed over");
    assert!(
        held >= Duration::from_millis(500),
        "the failover went ahead after {held:?} with the budget spent"
    );
    let text = metrics.render();
    for series in [
        r#"credvend_assume_role_duration_seconds_count{region="us-east-1",result="error"} 1"#,
        r#"credvend_assume_role_duration_seconds_count{region="us-west-2",result="success"} 1"#,
        r#"credvend_assume_role_total{mapping="m",result="success"} 1"#,
        r#"credvend_assume_role_total{mapping="m",result="error"} 0"#,
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
}

/// A mapping that never failed keeps no failure state in its slot: the slots table has
/// a bucket for every mapping ever asked for, and a slot is 32 bytes with the failure
/// state boxed apart, made at the first failure. A success after a failure clears its
/// flags and backoff and keeps its last error (for `/status`).
#[tokio::test]
async fn a_slot_keeps_failure_state_only_after_a_failure_and_is_32_bytes() {
    assert!(
        std::mem::size_of::<Slot>() <= 32,
        "a slot is {} bytes",
        std::mem::size_of::<Slot>()
    );
    let clock = ManualClock::starting_now();
    let throttled = Step::Fail(FailureReason::Throttled, "Throttling");
    let assumer = Scripted::new(&clock, vec![throttled]);
    let cache = cache_for(
        &clock,
        assumer.clone(),
        vec![mapping("m", "r", None, "t"), mapping("n", "r2", None, "t2")],
    );
    let failures_of = |name: &str| {
        let slots = cache.inner.lock_slots();
        slots[&key_of(&cache, name)].failures.as_deref().map(|f| {
            (
                f.degraded,
                f.failed,
                f.transient_failures,
                f.retry_at.is_some(),
                f.last_error.as_ref().map(|(e, _)| e.code().to_string()),
            )
        })
    };
    assert!(matches!(
        cache.get("m").await,
        Err(VendError::Unavailable { .. })
    ));
    assert_eq!(
        failures_of("m"),
        Some((false, false, 1, true, Some("Throttling".into())))
    );
    assert_eq!(cache.get("n").await.unwrap().source, Source::Fresh);
    let n_fetched_at = cache.now();
    assert_eq!(failures_of("n"), None, "a success made failure state");

    clock.advance(Duration::from_secs(2));
    tick().await;
    assert!(cache.get("m").await.is_ok());
    assert_eq!(assumer.calls(), 3);
    assert_eq!(
        failures_of("m"),
        Some((false, false, 0, false, Some("Throttling".into()))),
        "a success clears the flags and backoff, and keeps the last error"
    );
    let status = cache.status();
    assert!(status[0].last_error.is_some() && status[1].last_error.is_none());
    assert_eq!(
        status[1].last_success,
        Some(n_fetched_at),
        "the time kept in 8 bytes reads back as it was"
    );
}

/// A time kept in a slot's 8 bytes reads back to the nanosecond; none is none.
#[test]
fn a_stamp_keeps_a_time_to_the_nanosecond() {
    let t = std::time::UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789);
    assert_eq!(Stamp::new(Some(t)).get(), Some(t));
    assert_eq!(Stamp::new(None).get(), None);
    assert_eq!(
        Stamp::new(Some(std::time::UNIX_EPOCH)).get(),
        Some(std::time::UNIX_EPOCH + Duration::from_nanos(1)),
        "the epoch is not taken for none"
    );
}

/// A mapping key is one pointer (it is stored in the slots table, both refresh-queue
/// tables and the mapping table), and keys built apart for the same inputs are equal
/// and hash alike, as the same key of two generations must.
#[test]
fn a_mapping_key_is_one_pointer_and_equal_to_the_same_key_built_again() {
    use std::hash::BuildHasher;
    assert_eq!(std::mem::size_of::<MappingKey>(), 8);
    let cfg = config(
        "http://127.0.0.1:9",
        vec![mapping("m", "r", Some("external-id-m"), "t")],
    );
    let a = table::build_table(&cfg, None).by_name["m"].key.clone();
    let b = table::build_table(&cfg, None).by_name["m"].key.clone();
    assert!(!std::ptr::eq(a.name(), b.name()), "built apart");
    assert_eq!(a, b);
    let hasher = std::collections::hash_map::RandomState::new();
    assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
    let other = config(
        "http://127.0.0.1:9",
        vec![mapping("m", "r", Some("external-id-n"), "t")],
    );
    let c = table::build_table(&other, None).by_name["m"].key.clone();
    assert_ne!(a, c, "another External ID, another key");
    assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
}
