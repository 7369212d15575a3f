//! The credential cache: per-mapping state, single flight, pre-refresh, STS budget.
//!
//! Inputs: the validated [`Config`] (mappings and `[refresh]`), a [`RoleAssumer`] (STS),
//! and a [`Clock`]. Output: [`CredentialCache::get_in`], which the HTTP layer calls once
//! per authorised request, with the [`MappingTable`] of the generation it authorised
//! against.
//!
//! How the pieces fit (docs/design.md, Credential lifecycle):
//! - **Store.** A credential lives in its entry's `MappingSpec` (`MappingSpec::held`, one
//!   cell per [`MappingKey`] — the mapping name plus a fingerprint of every AssumeRole
//!   input — shared by every generation in which the key is unchanged), so a reload that
//!   changes a mapping's inputs can never serve the old role's credentials. At most one
//!   credential per mapping and per registered per-job entry: the table and the job
//!   registry bound the store (docs/design.md, Credential lifecycle).
//! - **Single flight.** A fetch is a spawned task registered in the mapping's `Slot`;
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
//!   evict, answer `AssumeRoleDenied`, and are negatively cached with backoff, until a
//!   SIGHUP ([`CredentialCache::forget_failures`]).
//! - **Enforcement mode.** Not part of the key: whether a cached credential may be
//!   served is decided on every request from the last enforcement verdict and the mode
//!   of the request's generation ([`crate::verify::cached_decision`]), so a reload that
//!   changes only the mode takes effect at the next request without an STS call.
//! - **Hot path.** A cache hit takes no lock: the table is an [`ArcSwap`], the mapping's
//!   last use is an atomic in its `MappingSpec`, and a credential with at least
//!   `min_remaining` left is served straight from the `MappingSpec`'s store cell (set
//!   and cleared under the slots lock; one pointer read); whether the mapping is
//!   degraded does not matter above `min_remaining`. Only below that, or on a miss, does
//!   `get` take the slots lock.
//!
//! Files (each adds methods to [`CredentialCache`] or its shared state `Inner`):
//! - `mod.rs`: the public types, the shared state (`Inner`, `Slot`), construction,
//!   start-up and config reload.
//! - `key.rs`: [`MappingKey`] and the fingerprint of a mapping's AssumeRole inputs.
//! - `table.rs`: one config generation's mapping table (`Table`, `MappingSpec`).
//! - `request.rs`: the request path ([`CredentialCache::get`]) and single flight
//!   (`Inner::start_or_join`).
//! - `fetch.rs`: one fetch: the STS call within budget, the MaxSessionDuration fallback,
//!   the checks on what STS returned.
//! - `trust.rs`: running the External ID enforcement check before a mapping vends.
//! - `publish.rs`: storing a fetch's outcome, the slot's flags and backoff, scheduling
//!   the next refresh; the scheduler's refresh callback.
//! - `status.rs`: [`CredentialCache::status`] and readiness.
//! - `prefetch.rs`: warming `prefetch` mappings in bounded batches.
//! - `jobs.rs`: per-job entries ([`CredentialCache::get_job_in`]): a mapping's
//!   credential under a job's own RoleSessionName, an entry of its own through all of
//!   the above, registered beside the table.
//! - `lifecycle.rs`: the pure rules (servability, refresh time, backoff) and [`Entry`].
//! - `scheduler.rs`: the refresh queue. `budget.rs`: the STS rate budget.
//! - `tests.rs`: state-machine tests with a scripted STS and a manual clock.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::debug;

use crate::clock::Clock;
use crate::config::Config;
use crate::creds::{AssumeError, RoleAssumer};
use crate::events::MappingInputsChanged;
use crate::metrics::Metrics;
use crate::model::{EnforcementStatus, Probe};

pub mod budget;
mod fetch;
mod jobs;
mod key;
pub mod lifecycle;
mod prefetch;
mod publish;
mod request;
pub mod scheduler;
mod status;
mod table;
mod trust;

use crate::model::{FetchError, MappingState, MappingStatus, Source};
pub use budget::Priority;
use budget::StsBudget;
pub use key::MappingKey;
pub use lifecycle::Entry;
use lifecycle::Now;
use table::{MappingSpec, Table, build_table};

/// Most AssumeRole calls in flight at once. The STS budget limits calls per second, but
/// with a high `max_requests_per_second` a start-up prefetch of thousands of mappings
/// would otherwise open thousands of concurrent connections (measured: ~600 MiB RSS for
/// 10,000 mappings, and STS timeouts). Callers queue FIFO for a permit.
const MAX_CONCURRENT_STS_CALLS: usize = 64;

/// One config generation's mapping table, for requests that must look their mapping up
/// in the generation they were authorised against ([`CredentialCache::get_in`]): the
/// daemon swaps it together with the access rules (docs/design.md, Reload). Cheap to
/// clone.
#[derive(Clone)]
pub struct MappingTable(Arc<Table>);

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

/// What a fetch produced, as every caller joined to it sees it.
type FetchOutcome = Result<Arc<Entry>, FetchError>;

/// Mutable per-mapping state, always accessed under [`Inner::slots`]. What only a
/// failure sets is boxed apart ([`Failures`], made at the first failure): most mappings
/// never fail, and a slot is a bucket of the slots table for every mapping ever asked
/// for, so a healthy mapping's slot stays 32 bytes (pinned by a test): the fetch in
/// flight is boxed too (one more small allocation per fetch, which allocates its
/// channel anyway), and its two times are [`Stamp`]s.
#[derive(Default)]
struct Slot {
    /// The fetch in flight, if any; callers join it instead of starting another.
    inflight: Option<Box<watch::Receiver<Option<FetchOutcome>>>>,
    /// When the last successful fetch was published ([`Slot::last_success`]).
    last_success: Stamp,
    /// When the mapping's enforcement result (kept in its `MappingSpec`) was last
    /// established; a recheck is due `recheck_interval` later
    /// ([`Slot::enforcement_checked_at`]).
    enforcement_checked_at: Stamp,
    /// The failure state, from the first failure on (`None`: never failed, read as
    /// [`NO_FAILURES`]).
    failures: Option<Box<Failures>>,
}

/// A slot's failure state: its flags, backoff and last error. A success clears the
/// flags and backoff and keeps the last error (for `/status`) and the learned
/// MaxSessionDuration.
#[derive(Default)]
struct Failures {
    /// The last refresh failed transiently and the cached credential is being served
    /// past `min_remaining`.
    degraded: bool,
    /// The last fetch failed terminally.
    failed: bool,
    /// Consecutive transient failures since the last success (retry backoff exponent).
    transient_failures: u32,
    /// Consecutive terminal failures since the last success (negative-cache exponent).
    terminal_failures: u32,
    /// While set and in the future, requests are answered `AssumeRoleDenied` without
    /// calling STS.
    negative_until: Option<SystemTime>,
    /// After a transient failure: until then, a request that finds nothing servable is
    /// answered 503 `CredentialsUnavailable` (`Retry-After` = the time left) without
    /// calling STS; the scheduled retry, or the first request after it, fetches.
    retry_at: Option<SystemTime>,
    /// The role's MaxSessionDuration turned out shorter than our session duration.
    duration_cap: Option<Duration>,
    /// The last failed fetch and when it was published (kept after a success, for
    /// `/status`).
    last_error: Option<(FetchError, SystemTime)>,
}

/// The failure state of a slot that never failed.
static NO_FAILURES: Failures = Failures {
    degraded: false,
    failed: false,
    transient_failures: 0,
    terminal_failures: 0,
    negative_until: None,
    retry_at: None,
    duration_cap: None,
    last_error: None,
};

/// A time or none, in 8 bytes: nanoseconds since the Unix epoch, 0 for none. A time at
/// or before the epoch is kept as 1 ns after it (the clocks the cache reads are decades
/// past it), one past the year 2554 as then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stamp(u64);

impl Stamp {
    fn new(at: Option<SystemTime>) -> Self {
        Stamp(at.map_or(0, |at| {
            let nanos = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
        }))
    }

    fn get(self) -> Option<SystemTime> {
        (self.0 != 0).then(|| UNIX_EPOCH + Duration::from_nanos(self.0))
    }
}

impl Slot {
    /// When the last successful fetch was published.
    fn last_success(&self) -> Option<SystemTime> {
        self.last_success.get()
    }

    /// When the mapping's enforcement result was last established.
    fn enforcement_checked_at(&self) -> Option<SystemTime> {
        self.enforcement_checked_at.get()
    }

    /// The failure state, to read.
    fn failures(&self) -> &Failures {
        self.failures.as_deref().unwrap_or(&NO_FAILURES)
    }

    /// The failure state, to write: made (empty) if the slot never failed. Only a
    /// failure calls this; clearing goes through `failures.as_deref_mut()`, so a success
    /// makes nothing.
    fn failures_mut(&mut self) -> &mut Failures {
        self.failures.get_or_insert_with(Default::default)
    }
}

/// The cache's shared state, behind the [`CredentialCache`] handle.
struct Inner {
    /// Every time decision reads this (injected; a manual clock in tests).
    clock: Arc<dyn Clock>,
    /// Makes the STS calls (fetches and the enforcement probes).
    assumer: Arc<dyn RoleAssumer>,
    /// Current config generation; swapped whole on reload. Lock-free to read.
    table: ArcSwap<Table>,
    /// Per-mapping mutable state. Single flight registration and a fetch's publication
    /// both happen under this lock.
    slots: Mutex<HashMap<MappingKey, Slot>>,
    /// The registered per-job entries (`jobs.rs`). Taken after `slots` when both are
    /// needed, never before.
    jobs: std::sync::RwLock<jobs::Jobs>,
    /// When each mapping's next refresh or retry is due; drained by the task
    /// [`CredentialCache::start`] spawns.
    queue: scheduler::RefreshQueue,
    /// The STS calls-per-second budget (`sts.max_requests_per_second`), shared by
    /// fetches and enforcement probes, requests ahead of background work, fairly
    /// between mappings.
    budget: StsBudget,
    /// Bounds concurrent AssumeRole calls ([`MAX_CONCURRENT_STS_CALLS`]), fetches and
    /// enforcement probes alike.
    sts_calls: tokio::sync::Semaphore,
    /// STS calls waiting for a permit of `sts_calls`, by [`Priority`] (indexed like
    /// [`Priority::ALL`]).
    permit_waiting: [std::sync::atomic::AtomicUsize; 2],
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
        Self {
            inner: Arc::new(Inner {
                clock,
                assumer,
                table: ArcSwap::from_pointee(build_table(config, None)),
                slots: Mutex::new(HashMap::new()),
                jobs: Default::default(),
                queue: scheduler::RefreshQueue::default(),
                budget: StsBudget::new(config.sts.max_requests_per_second),
                sts_calls: tokio::sync::Semaphore::new(MAX_CONCURRENT_STS_CALLS),
                permit_waiting: Default::default(),
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

    /// Replaces the mapping table with `config`'s and returns it. Mappings whose
    /// fingerprint changed or that were removed lose their cached credentials and state,
    /// and their per-job entries; unchanged ones keep them. New `prefetch` mappings
    /// start fetching.
    pub fn apply_config(&self, config: &Config) -> MappingTable {
        let mut applied = None;
        self.apply_config_then(config, |table| applied = Some(table));
        applied.expect("apply_config_then publishes the table")
    }

    /// [`CredentialCache::apply_config`], handing the new table to `publish` as soon as
    /// the cache uses it and before the changed and removed mappings' credentials are
    /// dropped: the daemon swaps its serving generation there (docs/design.md, Reload).
    /// A request authorised by the generation before that swap is then still served
    /// its own cached credential, instead of a fetch of the old role that nothing
    /// keeps; dropping and prefetching a large table takes a while, and requests keep
    /// coming meanwhile.
    pub fn apply_config_then(&self, config: &Config, publish: impl FnOnce(MappingTable)) {
        let new = Arc::new(build_table(config, Some(&self.inner.table.load())));
        self.install_then(new, None, publish);
    }

    /// [`CredentialCache::apply_config_then`] for a reload that read only the files
    /// that changed (docs/design.md, Reload): `changes` holds the settings and the
    /// mappings of those files (new or replaced), `removed` the names gone. The other
    /// mappings keep their table entries as they are, and nothing is rebuilt or
    /// compared for them: the work is the changed mappings', not the table's.
    pub fn apply_changes_then(
        &self,
        changes: &Config,
        removed: &BTreeSet<String>,
        publish: impl FnOnce(MappingTable),
    ) {
        let old = self.inner.table.load_full();
        let new = Arc::new(table::change_table(changes, removed, &old));
        let replaced: Vec<&str> = removed
            .iter()
            .map(String::as_str)
            .chain(changes.mappings.keys().map(String::as_str))
            .collect();
        self.install_then(new, Some(&replaced), publish);
    }

    /// Swaps in `new`, hands it to `publish`, then drops what the mappings no longer in
    /// it held: every key of the old table, or (`only`) those of the names given.
    fn install_then(
        &self,
        new: Arc<Table>,
        only: Option<&[&str]>,
        publish: impl FnOnce(MappingTable),
    ) {
        let old = self.inner.table.swap(new.clone());
        publish(MappingTable(new.clone()));
        let mut slots = self.inner.lock_slots();
        let candidates: Box<dyn Iterator<Item = &Arc<MappingSpec>>> = match only {
            None => Box::new(old.by_key.values()),
            Some(names) => Box::new(names.iter().filter_map(|name| old.by_name.get(*name))),
        };
        for spec in candidates {
            let key = &spec.key;
            if !new.by_key.contains_key(key) {
                if new.by_name.contains_key(key.name()) {
                    MappingInputsChanged {
                        mapping: key.name(),
                    }
                    .emit(&self.inner.metrics);
                } else {
                    debug!(mapping = %key.name(), "Mapping removed; dropping its credentials");
                }
                self.inner.forget_entry(&mut slots, spec);
            }
        }
        self.inner.reload_jobs(&new, &mut slots);
        drop(slots);
        self.prefetch_all();
    }

    /// Forgets every mapping's negative cache and terminal backoff (what a SIGHUP asks
    /// for, docs/design.md, Reload): the next request for a mapping refused by STS or
    /// for its trust policy goes to STS again, and a role found not enforcing its
    /// External ID is probed again at that fetch (its last verdict stands until then,
    /// and if the probes are inconclusive). A customer who fixed their role is served
    /// at once instead of after a backoff of up to ten minutes; the transient retry
    /// backoff is short and stays. `prefetch` mappings without a credential start
    /// fetching.
    pub fn forget_failures(&self) {
        let table = self.inner.current_table();
        let mut slots = self.inner.lock_slots();
        for spec in table.by_key.values() {
            let Some(slot) = slots.get_mut(&spec.key) else {
                continue;
            };
            if let Some(failures) = slot.failures.as_deref_mut() {
                failures.negative_until = None;
                failures.terminal_failures = 0;
            }
            if spec.enforcement_status() == EnforcementStatus::NotEnforced {
                slot.enforcement_checked_at = Stamp::new(None);
            }
        }
        // Per-job entries: their enforcement check is their mapping's (above).
        for spec in self.inner.read_jobs().specs() {
            if let Some(failures) = slots
                .get_mut(&spec.key)
                .and_then(|slot| slot.failures.as_deref_mut())
            {
                failures.negative_until = None;
                failures.terminal_failures = 0;
            }
        }
        drop(slots);
        self.prefetch_all();
    }

    /// The mapping table now applied.
    pub fn mapping_table(&self) -> MappingTable {
        MappingTable(self.inner.current_table())
    }

    /// The cache's wall clock (the injected one).
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// Each STS region's health (docs/design.md, Regional failover).
    pub fn sts_regions(&self) -> Vec<crate::creds::regions::RegionHealth> {
        self.inner.assumer.region_health()
    }

    /// Acquisitions that had to wait on the STS budget so far.
    pub fn sts_rate_limited_total(&self) -> u64 {
        self.inner.budget.rate_limited_total()
    }

    /// STS calls (fetches and enforcement probes) waiting right now for a budget token
    /// or a concurrency permit, by priority.
    pub fn sts_calls_waiting(&self) -> [(Priority, usize); 2] {
        let budget = self.inner.budget.waiting();
        Priority::ALL.map(|priority| {
            let i = priority.index();
            let permits = self.inner.permit_waiting[i].load(std::sync::atomic::Ordering::Relaxed);
            (priority, budget[i] + permits)
        })
    }
}

impl Inner {
    /// Both clocks, read once.
    fn now(&self) -> Now {
        Now {
            wall: self.clock.now(),
            monotonic: self.clock.monotonic(),
        }
    }

    /// [`Inner::now`] with the monotonic clock as it read at `at`, the request's
    /// arrival ([`Clock::monotonic_at`]: no second read of the OS's clock).
    fn now_at(&self, at: std::time::Instant) -> Now {
        Now {
            wall: self.clock.now(),
            monotonic: self.clock.monotonic_at(at),
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
}

#[cfg(test)]
mod tests;
