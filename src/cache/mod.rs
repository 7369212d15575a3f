//! The credential cache: per-mapping state, single flight, pre-refresh, STS budget.
//!
//! Inputs: the validated [`Config`] (mappings and `[refresh]`), a [`RoleAssumer`] (STS),
//! and a [`Clock`]. Output: [`CredentialCache::get`], which the HTTP layer calls once per
//! authorised request.
//!
//! How the pieces fit (docs/design.md, Credential lifecycle):
//! - **Store.** Credentials live in a bounded moka cache keyed by [`MappingKey`] — the
//!   mapping name plus a fingerprint of every AssumeRole input — so a reload that changes
//!   a mapping's inputs can never serve the old role's credentials. moka's own expiry is
//!   not used for decisions (its clock cannot be injected); it only bounds memory.
//! - **Single flight.** A fetch is a spawned task registered in the mapping's [`Slot`];
//!   every caller (requests, the scheduler) joins the registered fetch instead of
//!   starting another. Registration, the "is there already something servable" check and
//!   the fetch's publication happen under one lock, so N concurrent misses make exactly
//!   one STS call. Fetches are detached: a request that stops waiting after `cold_wait`
//!   does not cancel the fetch, whose result fills the cache for the next request.
//! - **Pre-refresh.** One [`scheduler::RefreshQueue`] task wakes each mapping
//!   `refresh_before` (minus jitter) ahead of expiry and fetches in the background, so the
//!   request path never waits on STS while a servable credential exists.
//! - **Failures.** Transient ones keep serving the last credential (degraded) until
//!   [`lifecycle::EXPIRY_MARGIN`] before expiry and retry with backoff; terminal ones
//!   evict, answer `AssumeRoleDenied`, and are negatively cached with backoff.
//! - **Hot path.** A cache hit takes no lock: the table is an [`ArcSwap`], the mapping's
//!   last use is an atomic in its [`MappingSpec`], and a credential with at least
//!   `min_remaining` left is served straight from the store (whether the mapping is
//!   degraded does not matter above `min_remaining`). Only below that, or on a miss, does
//!   `get` take the slots lock.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::config::{Config, Enforcement as EnforcementMode, RefreshConfig};
use crate::creds::{AssumeError, AssumeRoleInput, FailureReason, RoleAssumer};
use crate::events::{
    AssumeRoleFailed, AssumeRoleSucceeded, MappingStateChanged, TrustPolicyChecked,
};
use crate::metrics::Metrics;
use crate::model::{Enforcement, Probe};
use crate::protocol::CredentialBody;
use crate::verify;

pub mod budget;
pub mod lifecycle;
pub mod scheduler;

pub use crate::model::{FetchError, MappingState, MappingStatus, Source};
pub use budget::Priority;
use budget::StsBudget;
pub use lifecycle::Entry;
use lifecycle::{EXPIRY_MARGIN, Now, Servable};

/// Upper bound on cached credentials. One per configured mapping is needed; the bound
/// only matters if a config ever grows past it, in which case the least recently used
/// mappings are simply fetched again.
const STORE_CAPACITY: u64 = 100_000;

/// Longest a credential can live (STS maximum 12 h) plus a margin: entries older than
/// this are dead and moka may drop them, freeing memory held by idle mappings.
const STORE_TTL: Duration = Duration::from_secs(13 * 3600);

/// Most AssumeRole calls in flight at once. The STS budget limits calls per second, but
/// with a high `max_requests_per_second` a start-up prefetch of thousands of mappings
/// would otherwise open thousands of concurrent connections (measured: ~600 MiB RSS for
/// 10,000 mappings, and STS timeouts). Callers queue FIFO for a permit.
const MAX_CONCURRENT_STS_CALLS: usize = 64;

/// STS's cap for role chaining and the usual role `MaxSessionDuration`.
const ONE_HOUR: Duration = Duration::from_secs(3600);

/// Identity of a mapping's credentials: its name plus a fingerprint of every
/// AssumeRole input. Two configs produce the same key only if they would make the same
/// STS call.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingKey {
    name: Arc<str>,
    fingerprint: [u8; 16],
}

impl MappingKey {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for MappingKey {
    // The fingerprint covers the External ID; it is not shown anywhere.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappingKey({})", self.name)
    }
}

/// A served credential.
#[derive(Debug, Clone)]
pub struct Vended {
    pub entry: Arc<Entry>,
    pub source: Source,
}

/// Why [`CredentialCache::get`] could not serve.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VendError {
    /// No mapping of that name (the HTTP layer reports it like a bad token).
    #[error("no such mapping")]
    UnknownMapping,
    /// The customer role refused the assumption (terminal; negatively cached).
    #[error("role refused the assumption: {0}")]
    Denied(AssumeError),
    /// The role does not enforce its External ID and the mapping's mode is `require`.
    #[error("the role can be assumed {}", .0.describe())]
    UnsafeTrustPolicy(Probe),
    /// Nothing servable yet: STS slow, throttled or down. Retry after this many seconds.
    #[error("credentials not available yet ({reason})")]
    Unavailable {
        retry_after_secs: u64,
        reason: &'static str,
    },
}

impl From<FetchError> for VendError {
    fn from(error: FetchError) -> Self {
        match error {
            FetchError::Sts(error) => VendError::Denied(error),
            FetchError::UnsafeTrustPolicy(probe) => VendError::UnsafeTrustPolicy(probe),
        }
    }
}

type Outcome = Result<Arc<Entry>, FetchError>;

/// Everything about one mapping that is fixed for a given config generation.
struct MappingSpec {
    key: MappingKey,
    input: AssumeRoleInput,
    prefetch: bool,
    enforcement: EnforcementMode,
    /// Last request for this mapping (idle detection), nanoseconds since the Unix
    /// epoch, 0 for never. An atomic rather than a slot field so that a cache hit takes
    /// no lock; shared (same `Arc`) by every generation in which the mapping's key is
    /// unchanged, so a reload does not make busy mappings look idle.
    last_used: Arc<AtomicU64>,
}

impl MappingSpec {
    /// Records a request at `now`. Skips the store unless the clock moved by at least a
    /// millisecond, so a burst of hits on one mapping does not keep bouncing its cache
    /// line between cores (idle detection works in hours).
    fn touch(&self, now: SystemTime) {
        let nanos = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .max(1);
        let last = self.last_used.load(Ordering::Relaxed);
        if nanos.abs_diff(last) >= 1_000_000 {
            self.last_used.store(nanos, Ordering::Relaxed);
        }
    }

    /// The last request for this mapping, if any.
    fn last_used(&self) -> Option<SystemTime> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(UNIX_EPOCH + Duration::from_nanos(nanos)),
        }
    }
}

/// The mapping table of one config generation.
struct Table {
    by_name: HashMap<String, Arc<MappingSpec>>,
    by_key: HashMap<MappingKey, Arc<MappingSpec>>,
    refresh: RefreshConfig,
    /// `[verify] recheck_interval`.
    recheck_interval: Duration,
}

/// Mutable per-mapping state, always accessed under [`Inner::slots`].
#[derive(Default)]
struct Slot {
    /// The fetch in flight, if any; callers join it instead of starting another.
    inflight: Option<watch::Receiver<Option<Outcome>>>,
    /// The last refresh failed transiently and the cached credential is being served
    /// past `min_remaining`.
    degraded: bool,
    /// The last fetch failed terminally.
    failed: bool,
    transient_failures: u32,
    terminal_failures: u32,
    /// While set and in the future, requests are answered `AssumeRoleDenied` without
    /// calling STS.
    negative_until: Option<SystemTime>,
    /// The role's MaxSessionDuration turned out shorter than our session duration.
    duration_cap: Option<Duration>,
    last_error: Option<(FetchError, SystemTime)>,
    last_success: Option<SystemTime>,
    /// Last conclusive External ID enforcement result (`Unknown` until one).
    enforcement: Enforcement,
    /// When `enforcement` was last established; a recheck is due `recheck_interval`
    /// later.
    enforcement_checked_at: Option<SystemTime>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    assumer: Arc<dyn RoleAssumer>,
    /// Current config generation; swapped whole on reload. Lock-free to read.
    table: ArcSwap<Table>,
    store: moka::sync::Cache<MappingKey, Arc<Entry>>,
    slots: Mutex<HashMap<MappingKey, Slot>>,
    queue: scheduler::RefreshQueue,
    budget: StsBudget,
    /// Bounds concurrent AssumeRole calls ([`MAX_CONCURRENT_STS_CALLS`]).
    sts_calls: tokio::sync::Semaphore,
    /// Assume-role results, state changes, enforcement results.
    metrics: Arc<Metrics>,
}

/// The credential cache. Cheap to clone (shared state).
#[derive(Clone)]
pub struct CredentialCache {
    inner: Arc<Inner>,
}

impl CredentialCache {
    /// Builds the cache for `config`. Call [`CredentialCache::start`] inside a tokio
    /// runtime to run the refresh scheduler and prefetch.
    pub fn new(
        config: &Config,
        assumer: Arc<dyn RoleAssumer>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let store = moka::sync::Cache::builder()
            .max_capacity(STORE_CAPACITY)
            .time_to_live(STORE_TTL)
            .build();
        Self {
            inner: Arc::new(Inner {
                clock,
                assumer,
                table: ArcSwap::from_pointee(build_table(config, None)),
                store,
                slots: Mutex::new(HashMap::new()),
                queue: scheduler::RefreshQueue::default(),
                budget: StsBudget::new(config.sts.max_requests_per_second),
                sts_calls: tokio::sync::Semaphore::new(MAX_CONCURRENT_STS_CALLS),
                metrics,
            }),
        }
    }

    /// Spawns the refresh scheduler and starts prefetching `prefetch` mappings. The
    /// scheduler runs until the returned handle is aborted (daemon shutdown).
    pub fn start(&self) -> tokio::task::JoinHandle<()> {
        self.prefetch_all();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let clock = inner.clock.clone();
            inner
                .queue
                .run(clock.as_ref(), |key| Inner::on_refresh_due(&inner, key))
                .await;
        })
    }

    /// Replaces the mapping table with `config`'s. Mappings whose fingerprint changed or
    /// that were removed lose their cached credentials and state; unchanged ones keep
    /// them. New `prefetch` mappings start fetching.
    pub fn apply_config(&self, config: &Config) {
        let new = Arc::new(build_table(config, Some(&self.inner.table.load())));
        let old = self.inner.table.swap(new.clone());
        let mut slots = self.inner.lock_slots();
        for key in old.by_key.keys() {
            if !new.by_key.contains_key(key) {
                debug!(mapping = %key.name(), "Mapping removed or changed; dropping its credentials");
                self.inner.store.invalidate(key);
                self.inner.queue.cancel(key);
                slots.remove(key);
            }
        }
        drop(slots);
        self.prefetch_all();
    }

    /// Credentials for mapping `name`, from cache when possible. Waits at most
    /// `cold_wait` for STS.
    pub async fn get(&self, name: &str) -> Result<Vended, VendError> {
        let inner = &self.inner;
        let now = inner.now();
        // Fast path, no lock: a credential with at least `min_remaining` left is served
        // as it is (`lifecycle::servability` answers `Yes(Cache)` there whatever the
        // slot's flags say).
        let (spec, table) = {
            let table = inner.table.load();
            let spec = table.by_name.get(name).ok_or(VendError::UnknownMapping)?;
            spec.touch(now.wall);
            if let Some(entry) = inner.store.get(&spec.key)
                && entry.remaining(now) >= table.refresh.min_remaining
            {
                return Ok(Vended {
                    entry,
                    source: Source::Cache,
                });
            }
            (spec.clone(), arc_swap::Guard::into_inner(table))
        };
        let min_remaining = table.refresh.min_remaining;

        let mut fallback = None;
        {
            let mut slots = inner.lock_slots();
            let slot = slots.entry(spec.key.clone()).or_default();
            if let Some(entry) = inner.store.get(&spec.key) {
                match lifecycle::servability(&entry, now, slot.degraded, min_remaining) {
                    Servable::Yes(source) => return Ok(Vended { entry, source }),
                    Servable::Stale => fallback = Some(entry),
                    Servable::No => {}
                }
            }
            if let (true, Some(until), Some((error, _))) =
                (slot.failed, slot.negative_until, &slot.last_error)
                && now.wall < until
            {
                return Err(error.clone().into());
            }
        }

        let rx = Inner::start_or_join(inner, &spec, Caller::Request);
        let waited = tokio::time::timeout(table.refresh.cold_wait, wait_outcome(rx)).await;
        let degraded_fallback = |reason: &'static str| {
            let now = inner.now();
            match fallback
                .as_ref()
                .filter(|e| e.remaining(now) > EXPIRY_MARGIN)
            {
                Some(entry) => Ok(Vended {
                    entry: entry.clone(),
                    source: Source::Degraded,
                }),
                None => Err(VendError::Unavailable {
                    retry_after_secs: 1,
                    reason,
                }),
            }
        };
        match waited {
            Ok(Ok(entry)) => Ok(Vended {
                entry,
                source: Source::Fresh,
            }),
            Ok(Err(error)) if error.is_terminal() => Err(error.into()),
            Ok(Err(_transient)) => degraded_fallback("STS unavailable"),
            Err(_elapsed) => degraded_fallback("STS slower than cold_wait"),
        }
    }

    /// The cache's wall clock (the injected one).
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// A snapshot of every configured mapping.
    pub fn status(&self) -> Vec<MappingStatus> {
        let inner = &self.inner;
        let table = inner.current_table();
        let now = inner.now();
        let slots = inner.lock_slots();
        let mut out: Vec<MappingStatus> = table
            .by_name
            .iter()
            .map(|(name, spec)| {
                let slot = slots.get(&spec.key);
                let entry = inner
                    .store
                    .get(&spec.key)
                    .filter(|e| e.remaining(now) > EXPIRY_MARGIN);
                MappingStatus {
                    name: name.clone(),
                    state: state_of(slot, entry.is_some()),
                    expires_at: entry.as_ref().map(|e| e.expiration),
                    access_key_id: entry.as_ref().map(|e| e.access_key_id.clone()),
                    last_success: slot.and_then(|s| s.last_success),
                    last_error: slot.and_then(|s| s.last_error.clone()),
                    next_refresh: inner.queue.due_at(&spec.key),
                    prefetch: spec.prefetch,
                    enforcement: slot.map_or(Enforcement::Unknown, |s| s.enforcement),
                    enforcement_checked_at: slot.and_then(|s| s.enforcement_checked_at),
                    enforcement_mode: spec.enforcement,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// True once every `prefetch` mapping has either a credential or a terminal answer
    /// from STS. A customer who broke their own role must not keep the whole sidecar
    /// unready for every other customer.
    pub fn prefetch_settled(&self) -> bool {
        self.status().iter().filter(|s| s.prefetch).all(|s| {
            matches!(
                s.state,
                MappingState::Fresh
                    | MappingState::Refreshing
                    | MappingState::Degraded
                    | MappingState::Failed
            )
        })
    }

    /// Acquisitions that had to wait on the STS budget so far.
    pub fn sts_rate_limited_total(&self) -> u64 {
        self.inner.budget.rate_limited_total()
    }

    /// Starts a fetch for every `prefetch` mapping without a credential, at most
    /// [`MAX_CONCURRENT_STS_CALLS`] at a time: the STS calls are capped at that anyway,
    /// and starting all 10,000 fetch tasks of a large config at once only held ~18 MB
    /// of waiting futures whose freed memory stayed resident. The first batch starts
    /// before this returns; a task feeds in the rest as fetches finish.
    fn prefetch_all(&self) {
        let inner = &self.inner;
        let table = inner.current_table();
        let mut pending = table
            .by_name
            .values()
            .filter(|s| s.prefetch && !inner.store.contains_key(&s.key))
            .cloned()
            .collect::<Vec<_>>()
            .into_iter();
        let mut running = tokio::task::JoinSet::new();
        for spec in pending.by_ref().take(MAX_CONCURRENT_STS_CALLS) {
            running.spawn(wait_outcome(Inner::start_or_join(
                inner,
                &spec,
                Caller::Prefetch,
            )));
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            for spec in pending {
                running.join_next().await;
                // A reload may have replaced this generation meanwhile; its own
                // prefetch pass covers the new table.
                if !inner.current_table().by_key.contains_key(&spec.key) {
                    continue;
                }
                let rx = Inner::start_or_join(&inner, &spec, Caller::Prefetch);
                running.spawn(wait_outcome(rx));
            }
            while running.join_next().await.is_some() {}
        });
    }
}

fn state_of(slot: Option<&Slot>, has_entry: bool) -> MappingState {
    let Some(slot) = slot else {
        return MappingState::Empty;
    };
    match (has_entry, slot.inflight.is_some()) {
        (true, true) => MappingState::Refreshing,
        (true, false) if slot.degraded => MappingState::Degraded,
        (true, false) => MappingState::Fresh,
        (false, _) if slot.failed => MappingState::Failed,
        (false, true) => MappingState::Fetching,
        (false, false) => MappingState::Empty,
    }
}

async fn wait_outcome(mut rx: watch::Receiver<Option<Outcome>>) -> Outcome {
    match rx.wait_for(Option::is_some).await {
        Ok(value) => value.clone().unwrap_or_else(|| Err(lost_fetch())),
        Err(_) => Err(lost_fetch()),
    }
}

/// The fetch task vanished without publishing (it panicked). Transient by design.
fn lost_fetch() -> FetchError {
    FetchError::Sts(AssumeError {
        reason: FailureReason::Other,
        code: "FetchAborted".into(),
        message: "the credential fetch ended without a result".into(),
        duration_too_long: false,
    })
}

impl Inner {
    /// Both clocks, read once.
    fn now(&self) -> Now {
        Now {
            wall: self.clock.now(),
            monotonic: self.clock.monotonic(),
        }
    }

    fn current_table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<MappingKey, Slot>> {
        // A panic while holding the lock cannot leave a slot half-updated in a way that
        // matters more than refusing to serve at all, so recover from poisoning.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the mapping's in-flight fetch or starts one. A fetch that finished between
    /// the caller's own cache check and this call is seen here, under the slots lock
    /// that `publish` holds while it stores a credential: instead of calling STS a
    /// second time, a request gets that credential if it is servable as is, and a
    /// prefetch gets whatever credential is there (the mapping is warm; refreshing it
    /// is the scheduler's job). A refresh always fetches.
    fn start_or_join(
        self: &Arc<Self>,
        spec: &Arc<MappingSpec>,
        caller: Caller,
    ) -> watch::Receiver<Option<Outcome>> {
        let mut slots = self.lock_slots();
        let slot = slots.entry(spec.key.clone()).or_default();
        if let Some(rx) = &slot.inflight {
            return rx.clone();
        }
        if caller != Caller::Refresh
            && let Some(entry) = self.store.get(&spec.key)
        {
            let usable = caller == Caller::Prefetch || {
                let min_remaining = self.current_table().refresh.min_remaining;
                matches!(
                    lifecycle::servability(&entry, self.now(), slot.degraded, min_remaining),
                    Servable::Yes(_)
                )
            };
            if usable {
                let (_tx, rx) = watch::channel(Some(Ok(entry)));
                return rx;
            }
        }
        let priority = caller.priority();
        let (tx, rx) = watch::channel(None);
        slot.inflight = Some(rx.clone());
        let duration_cap = slot.duration_cap;
        drop(slots);

        let inner = self.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let outcome = inner.fetch(&spec, priority, duration_cap).await;
            inner.publish(&spec, &outcome);
            // Receivers may all be gone (requests timed out); the cache has the result.
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    /// One AssumeRole for `spec`, within the STS budget, with the MaxSessionDuration
    /// fallback.
    async fn fetch(
        &self,
        spec: &MappingSpec,
        priority: Priority,
        duration_cap: Option<Duration>,
    ) -> Outcome {
        self.check_trust(spec, priority).await?;
        let mut input = spec.input.clone();
        if let Some(cap) = duration_cap {
            input.duration = input.duration.min(cap);
        }
        self.budget.acquire(priority).await;
        // STS computes Expiration from its own clock when it answers, which is no
        // earlier than this: measuring the lifetime from here never makes a full-length
        // credential look short because the call itself took time.
        let sent_at = self.clock.now();
        let mut result = self.assume_role_observed(spec, &input).await;
        if let Err(error) = &result
            && error.duration_too_long
            && input.duration > ONE_HOUR
        {
            warn!(
                mapping = %spec.key.name(),
                requested_secs = input.duration.as_secs(),
                "Role's MaxSessionDuration is shorter than session_duration; retrying at 1h and keeping that cap until the mapping changes"
            );
            if let Some(slot) = self.lock_slots().get_mut(&spec.key) {
                slot.duration_cap = Some(ONE_HOUR);
            }
            input.duration = ONE_HOUR;
            self.budget.acquire(priority).await;
            result = self.assume_role_observed(spec, &input).await;
        }
        let mut creds = result.map_err(FetchError::Sts)?;
        // STS sets Expiration by its own clock. A credential cannot outlive the duration
        // we asked for, counted from when we asked: an Expiration further out than that
        // means our wall clock is behind STS's (stepped back, or never synced), and
        // trusting it would serve the credential past its real expiry by the size of
        // the error. Use the bound in our clock's frame instead, for every decision and
        // on the wire, which is the frame the SDKs on this host compare it against.
        let latest = sent_at + input.duration;
        if creds.expiration > latest + lifecycle::SHORT_TOLERANCE {
            warn!(
                mapping = %spec.key.name(),
                ahead_secs = creds.expiration.duration_since(latest).unwrap_or_default().as_secs(),
                "STS's Expiration is later than the session can last by this host's clock; the host clock is probably behind. Expiring the credential by the session duration instead"
            );
            creds.expiration = latest;
        }
        let now = self.now();
        let left = lifecycle::remaining(creds.expiration, now.wall);
        if left <= EXPIRY_MARGIN {
            // Our clock or STS's is badly off; serving this would hand out a credential
            // that is (nearly) expired. Treat as transient and retry with backoff.
            return Err(FetchError::Sts(AssumeError {
                reason: FailureReason::Other,
                code: "ExpiredOnArrival".into(),
                message: format!(
                    "STS returned a credential with {}s left; check the host clock",
                    left.as_secs()
                ),
                duration_too_long: false,
            }));
        }
        let short_lived = lifecycle::is_short(creds.expiration, sent_at, input.duration);
        // Encode the response body once, here, for every request that will serve it.
        let Some(body) = CredentialBody::encode(&creds, &spec.input.role_arn) else {
            return Err(FetchError::Sts(AssumeError {
                reason: FailureReason::Other,
                code: "EncodingFailed".into(),
                message: "the credential could not be encoded as JSON".into(),
                duration_too_long: false,
            }));
        };
        if short_lived {
            warn!(
                mapping = %spec.key.name(),
                requested_secs = input.duration.as_secs(),
                received_secs = left.as_secs(),
                "STS returned a credential shorter than requested; serving it and refreshing at half its life"
            );
        }
        Ok(Arc::new(Entry::new(&creds, body, now, short_lived)))
    }

    /// One AssumeRole, timed, with its success or failure event (log line + metrics).
    /// The enforcement probes do not come through here: their expected AccessDenied
    /// answers are not failures and must not page anyone.
    async fn assume_role_observed(
        &self,
        spec: &MappingSpec,
        input: &AssumeRoleInput,
    ) -> Result<crate::creds::Credentials, AssumeError> {
        let started = std::time::Instant::now();
        // The semaphore is never closed; if it were, call without a permit.
        let _permit = self.sts_calls.acquire().await.ok();
        let result = self.assumer.assume_role(input).await;
        let duration = started.elapsed();
        let mapping = spec.key.name();
        match &result {
            Ok(creds) => AssumeRoleSucceeded {
                mapping,
                duration,
                access_key_id: &creds.access_key_id,
                expiration: creds.expiration,
            }
            .emit(&self.metrics),
            Err(error) => AssumeRoleFailed {
                mapping,
                duration,
                error,
            }
            .emit(&self.metrics),
        }
        result
    }

    /// The External ID enforcement check (docs/design.md, Credential lifecycle), run
    /// before a mapping first vends and again once `recheck_interval` has passed since
    /// the last conclusive result: runs the probes when due, records and reports a
    /// conclusive verdict, and leaves what that means for the mapping to
    /// [`verify::trust_decision`]. `off` skips the check.
    async fn check_trust(&self, spec: &MappingSpec, priority: Priority) -> Result<(), FetchError> {
        if spec.enforcement == EnforcementMode::Off {
            return Ok(());
        }
        let now = self.clock.now();
        let recheck = self.current_table().recheck_interval;
        let (known, checked_at) = {
            let slots = self.lock_slots();
            slots
                .get(&spec.key)
                .map_or((Enforcement::Unknown, None), |s| {
                    (s.enforcement, s.enforcement_checked_at)
                })
        };
        let due = verify::check_due(checked_at, now, recheck);
        let name = spec.key.name();
        let this_round = if due {
            let result =
                verify::check_external_id_enforcement(self.assumer.as_ref(), &spec.input, || {
                    self.budget.acquire(priority)
                })
                .await;
            let concluded_at = self.clock.now();
            Some(match result {
                Ok(verdict) => {
                    // No slot: a reload removed or changed the mapping while the probes
                    // ran. The verdict is about a role no mapping uses any more, and a
                    // mapping now bearing the same name must not report it as its own.
                    let current = match self.lock_slots().get_mut(&spec.key) {
                        Some(slot) => {
                            slot.enforcement = verdict.into();
                            slot.enforcement_checked_at = Some(concluded_at);
                            true
                        }
                        None => false,
                    };
                    if current {
                        TrustPolicyChecked {
                            mapping: name,
                            role_arn: &spec.input.role_arn,
                            mode: spec.enforcement,
                            verdict,
                        }
                        .emit(&self.metrics);
                    }
                    Ok(verdict)
                }
                Err(error) => {
                    warn!(
                        mapping = %name,
                        code = %error.code,
                        previous = known.as_str(),
                        "External ID enforcement check inconclusive"
                    );
                    Err(error)
                }
            })
        } else {
            None
        };
        verify::trust_decision(spec.enforcement, known, this_round)
    }

    /// Records a fetch's outcome: cache, slot state, next refresh. Runs under the slots
    /// lock so that "publish, then clear in-flight" is atomic for joiners.
    fn publish(&self, spec: &MappingSpec, outcome: &Outcome) {
        let clock_now = self.now();
        let now = clock_now.wall;
        let table = self.current_table();
        let current = table.by_key.contains_key(&spec.key);
        let mut slots = self.lock_slots();
        let Some(slot) = slots.get_mut(&spec.key) else {
            // The mapping was removed or changed while the fetch ran.
            return;
        };
        slot.inflight = None;
        if !current {
            return;
        }
        let name = spec.key.name();
        let before = flag_state(slot, &self.store, &spec.key, clock_now);
        match outcome {
            Ok(entry) => {
                self.store.insert(spec.key.clone(), entry.clone());
                slot.degraded = false;
                slot.failed = false;
                slot.transient_failures = 0;
                slot.terminal_failures = 0;
                slot.negative_until = None;
                slot.last_success = Some(now);
                let at = lifecycle::refresh_at(
                    now,
                    entry.expiration,
                    table.refresh.refresh_before,
                    entry.short_lived,
                    rand::random::<f64>(),
                );
                self.queue.schedule(&spec.key, at);
                debug!(
                    mapping = %name,
                    access_key_id = %entry.access_key_id,
                    next_refresh = %humantime::format_rfc3339_seconds(at),
                    "Credential cached; refresh scheduled"
                );
            }
            Err(error) if error.is_terminal() => {
                self.store.invalidate(&spec.key);
                self.queue.cancel(&spec.key);
                slot.degraded = false;
                slot.failed = true;
                slot.terminal_failures = slot.terminal_failures.saturating_add(1);
                let backoff = lifecycle::terminal_backoff(slot.terminal_failures);
                slot.negative_until = Some(now + backoff);
                slot.last_error = Some((error.clone(), now));
                debug!(
                    mapping = %name,
                    code = %error.code(),
                    retry_after_secs = backoff.as_secs(),
                    "Dropped the mapping's credentials; negatively cached"
                );
            }
            Err(error) => {
                slot.transient_failures = slot.transient_failures.saturating_add(1);
                slot.last_error = Some((error.clone(), now));
                let backoff =
                    lifecycle::transient_backoff(slot.transient_failures, rand::random::<f64>());
                let valid = self
                    .store
                    .get(&spec.key)
                    .is_some_and(|e| e.remaining(clock_now) > EXPIRY_MARGIN);
                slot.degraded = valid;
                if !valid {
                    self.store.invalidate(&spec.key);
                }
                let in_use = spec.prefetch
                    || spec
                        .last_used()
                        .is_some_and(|t| !is_idle(t, now, table.refresh.idle_timeout));
                if valid || in_use {
                    self.queue.schedule(&spec.key, now + backoff);
                }
                debug!(
                    mapping = %name,
                    code = %error.code(),
                    serving_previous = valid,
                    retry_in_ms = backoff.as_millis() as u64,
                    "Retry scheduled"
                );
            }
        }
        let after = flag_state(slot, &self.store, &spec.key, clock_now);
        if after != before {
            MappingStateChanged {
                mapping: name,
                from: before,
                to: after,
            }
            .emit(&self.metrics);
        }
    }

    /// Scheduler callback: refresh `key` unless it is gone or idle.
    fn on_refresh_due(self: &Arc<Self>, key: MappingKey) {
        let table = self.current_table();
        let Some(spec) = table.by_key.get(&key).cloned() else {
            return;
        };
        let now = self.clock.now();
        let last_used = spec.last_used();
        let idle =
            !spec.prefetch && last_used.is_none_or(|t| is_idle(t, now, table.refresh.idle_timeout));
        if idle {
            debug!(mapping = %key.name(), "Mapping idle; not refreshing");
            return;
        }
        drop(Self::start_or_join(self, &spec, Caller::Refresh));
    }
}

/// Who wants a fetch: decides its STS priority and what a credential already in the
/// store means (see [`Inner::start_or_join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// A request is waiting for it.
    Request,
    /// Warming a `prefetch` mapping that had no credential.
    Prefetch,
    /// The scheduler: a refresh or retry is due.
    Refresh,
}

impl Caller {
    fn priority(self) -> Priority {
        match self {
            Caller::Request => Priority::Cold,
            Caller::Prefetch | Caller::Refresh => Priority::Background,
        }
    }
}

/// The state a slot is in once no fetch is in flight (for state-change events).
fn flag_state(
    slot: &Slot,
    store: &moka::sync::Cache<MappingKey, Arc<Entry>>,
    key: &MappingKey,
    now: Now,
) -> MappingState {
    let has_entry = store
        .get(key)
        .is_some_and(|e| e.remaining(now) > EXPIRY_MARGIN);
    match (has_entry, slot.degraded, slot.failed) {
        (true, true, _) => MappingState::Degraded,
        (true, false, _) => MappingState::Fresh,
        (false, _, true) => MappingState::Failed,
        (false, _, false) => MappingState::Empty,
    }
}

fn is_idle(last_used: SystemTime, now: SystemTime, idle_timeout: Duration) -> bool {
    now.duration_since(last_used).unwrap_or(Duration::ZERO) > idle_timeout
}

/// The table for `config`. Mappings whose key is unchanged from `previous` keep sharing
/// its last-use record.
fn build_table(config: &Config, previous: Option<&Table>) -> Table {
    let mut by_name = HashMap::new();
    let mut by_key = HashMap::new();
    for (name, mapping) in &config.mappings {
        let input = AssumeRoleInput::for_mapping(mapping);
        let key = MappingKey {
            name: Arc::from(name.as_str()),
            fingerprint: fingerprint(&input, config.sts.endpoint_url.as_deref()),
        };
        let last_used = previous
            .and_then(|table| table.by_key.get(&key))
            .map_or_else(
                || Arc::new(AtomicU64::new(0)),
                |spec| spec.last_used.clone(),
            );
        let spec = Arc::new(MappingSpec {
            key: key.clone(),
            input,
            prefetch: mapping.prefetch,
            enforcement: mapping.external_id_enforcement,
            last_used,
        });
        by_name.insert(name.clone(), spec.clone());
        by_key.insert(key, spec);
    }
    Table {
        by_name,
        by_key,
        refresh: config.refresh.clone(),
        recheck_interval: config.verify.recheck_interval,
    }
}

/// SHA-256 over every AssumeRole input, length-prefixed so no two different inputs
/// serialise alike.
fn fingerprint(input: &AssumeRoleInput, endpoint: Option<&str>) -> [u8; 16] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(input.role_arn.as_bytes());
    field(input.session_name.as_bytes());
    match &input.external_id {
        Some(id) => {
            field(b"1");
            field(id.expose().as_bytes());
        }
        None => field(b"0"),
    }
    field(&input.duration.as_secs().to_be_bytes());
    field(
        input
            .session_policy
            .as_deref()
            .unwrap_or("\0none")
            .as_bytes(),
    );
    for arn in &input.policy_arns {
        field(arn.as_bytes());
    }
    field(b"tags");
    for (k, v) in &input.tags {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    field(
        input
            .source_identity
            .as_deref()
            .unwrap_or("\0none")
            .as_bytes(),
    );
    field(input.region.as_bytes());
    field(endpoint.unwrap_or("\0default").as_bytes());
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}
#[cfg(test)]
mod tests;
