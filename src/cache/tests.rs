//! Lifecycle state machine tests: the real cache with a scripted assumer and a manual
//! clock, no HTTP.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::creds::Credentials;
use crate::secret::SecretValue;
use crate::testing::{config, mapping};

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
    fn assume_role<'a>(
        &'a self,
        input: &'a AssumeRoleInput,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Credentials, AssumeError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(input.clone());
                calls.len()
            };
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
                Step::Issue(life) => Ok(Credentials {
                    access_key_id: format!("ASIASCRIPTED{n:08}"),
                    secret_access_key: SecretValue::new("secret"),
                    session_token: SecretValue::new("token"),
                    expiration: self.clock.now() + life,
                    assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/r/s".into(),
                }),
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

async fn settle(cache: &CredentialCache, name: &str) {
    for _ in 0..2000 {
        if !matches!(
            state(cache, name),
            MappingState::Fetching | MappingState::Refreshing
        ) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{name} never settled");
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
        tick().await;
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
        tick().await;
        settle(&cache, "m").await;
        let v = cache.get("m").await.unwrap();
        assert!(lifecycle::remaining(v.entry.expiration, clock.now()) > EXPIRY_MARGIN);
    }
    let calls = assumer.calls();
    assert!((11..=14).contains(&calls), "{calls} calls in an hour");
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
    tick().await;
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

#[tokio::test]
async fn transient_failure_without_a_credential_is_unavailable_not_denied() {
    let clock = ManualClock::starting_now();
    let assumer = Scripted::new(
        &clock,
        vec![Step::Fail(FailureReason::Throttled, "Throttling")],
    );
    let cache = cache_for(&clock, assumer.clone(), vec![mapping("m", "r", None, "t")]);
    assert!(matches!(
        cache.get("m").await,
        Err(VendError::Unavailable {
            retry_after_secs: 1,
            ..
        })
    ));
    // Not negatively cached: the next request tries again.
    assert_eq!(cache.get("m").await.unwrap().source, Source::Fresh);
    assert_eq!(assumer.calls(), 2);
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
    let keep_before = cache.get("keep").await.unwrap().entry.access_key_id.clone();
    let change_before = cache
        .get("change")
        .await
        .unwrap()
        .entry
        .access_key_id
        .clone();
    cache.get("gone").await.unwrap();
    assert_eq!(assumer.calls(), 3);

    let mut changed = change.clone();
    changed.external_id = Some(crate::secret::ExternalId::new("external-id-new"));
    cache.apply_config(&config("http://127.0.0.1:9", vec![keep, changed]));

    let keep_after = cache.get("keep").await.unwrap();
    assert_eq!(keep_after.entry.access_key_id, keep_before);
    assert_eq!(keep_after.source, Source::Cache);
    let change_after = cache.get("change").await.unwrap();
    assert_ne!(change_after.entry.access_key_id, change_before);
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
        outcome.unwrap().access_key_id,
        served.entry.access_key_id,
        "the prefetch got the published credential"
    );
    assert_eq!(assumer.calls(), 1, "no second AssumeRole");

    let refreshed = wait_outcome(Inner::start_or_join(&cache.inner, &spec, Caller::Refresh)).await;
    assert_ne!(refreshed.unwrap().access_key_id, served.entry.access_key_id);
    assert_eq!(assumer.calls(), 2, "a due refresh does call STS");
}
