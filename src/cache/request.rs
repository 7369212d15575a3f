//! The request path and single flight: [`CredentialCache::get`] and
//! [`Inner::start_or_join`], which every caller (requests, prefetch, the scheduler) goes
//! through to join the mapping's fetch in flight or start one.

use std::sync::Arc;

use tokio::sync::watch;

use super::budget::Priority;
use super::lifecycle::{self, Servable};
use super::table::{MappingSpec, Table};
use super::{CredentialCache, FetchOutcome, Inner, MappingTable, Source, VendError, Vended};
use crate::config::EnforcementMode;
use crate::creds::{AssumeError, FailureReason};
use crate::model::{FetchError, Probe};
use crate::verify::{self, CachedDecision};

/// The reason of a 503 answered from a mapping's retry backoff.
pub(super) const BACKING_OFF: &str = "STS unavailable, retrying after a backoff";

/// The reason of a 503 after a transient failure (`backing_off`: answered from the
/// retry backoff, with no STS call). A failure of credvend's own identity says so, in
/// the words of [`FailureReason::base_identity_problem`], so that whoever reads the
/// worker's error knows the fix is on the vendor's side; nothing else about it (the
/// details are in the daemon's log).
pub(super) fn transient_reason(error: Option<&FetchError>, backing_off: bool) -> &'static str {
    match (error.and_then(FetchError::reason), backing_off) {
        (Some(FailureReason::NoBaseCredentials), false) => {
            "credvend has no AWS credentials of its own to call STS with (see its log)"
        }
        (Some(FailureReason::NoBaseCredentials), true) => {
            "credvend has no AWS credentials of its own to call STS with, retrying after a backoff (see its log)"
        }
        (Some(FailureReason::ExpiredBaseCredentials), false) => {
            "STS rejected credvend's own AWS credentials (expired or invalid; see its log)"
        }
        (Some(FailureReason::ExpiredBaseCredentials), true) => {
            "STS rejected credvend's own AWS credentials (expired or invalid), retrying after a backoff (see its log)"
        }
        (_, false) => "STS unavailable",
        (_, true) => BACKING_OFF,
    }
}

impl CredentialCache {
    /// Credentials for mapping `name`, from cache when possible. Waits at most
    /// `cold_wait` for STS.
    pub async fn get(&self, name: &str) -> Result<Vended, VendError> {
        self.get_in(&self.mapping_table(), name).await
    }

    /// [`CredentialCache::get`] for mapping `name` as `mappings` (a generation the
    /// request was authorised against, now applied or not) defines it: its role is what
    /// is served, fetched if need be. A fetch for a generation no longer applied serves
    /// its request but is not cached.
    pub async fn get_in(&self, mappings: &MappingTable, name: &str) -> Result<Vended, VendError> {
        self.get_in_at(mappings, name, std::time::Instant::now())
            .await
    }

    /// The credential of mapping `name` (in `mappings`, the request's generation) if it
    /// can be served at once as it is: the fast path of [`CredentialCache::get_in_at`]
    /// (`Inner::cached`), without a future. `None` means "ask `get_in_at`" (a miss,
    /// a credential to refresh or to check first, or no such mapping).
    pub fn cached_at(
        &self,
        mappings: &MappingTable,
        name: &str,
        arrived: std::time::Instant,
    ) -> Option<Vended> {
        let inner = &self.inner;
        let now = inner.now_at(arrived);
        let table = &mappings.0;
        let spec = table.by_name.get(name)?;
        spec.touch(now.wall);
        inner.cached(spec, table, now)
    }

    /// [`CredentialCache::get_in`] for a request that arrived at `arrived` (the
    /// server's one reading of the OS's monotonic clock, which the cache's clock
    /// reuses: [`crate::clock::Clock::monotonic_at`]).
    pub async fn get_in_at(
        &self,
        mappings: &MappingTable,
        name: &str,
        arrived: std::time::Instant,
    ) -> Result<Vended, VendError> {
        let inner = &self.inner;
        let now = inner.now_at(arrived);
        let table = &mappings.0;
        let spec = table.by_name.get(name).ok_or(VendError::UnknownMapping)?;
        spec.touch(now.wall);
        if let Some(vended) = inner.cached(spec, table, now) {
            return Ok(vended);
        }
        self.get_slow(spec.clone(), table.clone(), now).await
    }

    /// The request path past the fast path ([`Inner::cached`]) for `spec` of the
    /// request's generation `table` (a mapping's own entry or a per-job one): under the
    /// slots lock, the enforcement verdict, the negative cache and the retry backoff;
    /// then join or start the fetch and wait at most `cold_wait`.
    pub(super) async fn get_slow(
        &self,
        spec: Arc<MappingSpec>,
        table: Arc<Table>,
        now: lifecycle::Now,
    ) -> Result<Vended, VendError> {
        let inner = &self.inner;
        let min_remaining = table.refresh.min_remaining;

        let mut fallback = None;
        {
            let mut slots = inner.lock_slots();
            // A per-job entry's enforcement check is its mapping's (the same role and
            // External ID): when it last concluded is recorded in the mapping's slot.
            let owner = spec
                .job_of
                .as_ref()
                .and_then(|key| slots.get(key))
                .map(|s| (s.enforcement_checked_at(), unsafe_probe(s)));
            let slot = slots.entry(spec.key.clone()).or_default();
            let (checked_at, owner_probe) = match owner {
                Some((checked_at, probe)) => (checked_at, Some(probe)),
                None => (slot.enforcement_checked_at(), None),
            };
            // The enforcement verdict against this generation's mode, every request:
            // whether the mode changed since the credential was fetched does not matter.
            match spec.cached_decision() {
                CachedDecision::Serve => {
                    if let Some(entry) = spec.held.load_full() {
                        let degraded = slot.failures().degraded;
                        match lifecycle::servability(&entry, now, degraded, min_remaining) {
                            Servable::Yes(source) => return Ok(Vended { entry, source }),
                            Servable::Stale => fallback = Some(entry),
                            Servable::No => {}
                        }
                    }
                }
                // Refused without an STS call until a recheck is due; then the fetch
                // below rechecks (within the negative cache's backoff).
                CachedDecision::Refuse
                    if !verify::check_due(checked_at, now.wall, table.recheck_interval) =>
                {
                    let probe = match (&slot.failures().last_error, owner_probe) {
                        (Some((FetchError::UnsafeTrustPolicy(probe), _)), _) => *probe,
                        (_, Some(probe)) => probe,
                        _ => unsafe_probe(slot),
                    };
                    return Err(VendError::UnsafeTrustPolicy(probe));
                }
                // A credential fetched under `off` or `warn` is not served under
                // `require` before the role is checked: the fetch below checks first.
                CachedDecision::Refuse | CachedDecision::CheckFirst => {}
            }
            let failures = slot.failures();
            if let (true, Some(until), Some((error, _))) =
                (failures.failed, failures.negative_until, &failures.last_error)
                && now.wall < until
                // A refusal for the trust policy is re-decided against the mode above;
                // under `off` or `warn` it no longer holds, so the fetch goes ahead.
                && !(matches!(error, FetchError::UnsafeTrustPolicy(_))
                    && spec.enforcement != EnforcementMode::Require)
            {
                return Err(error.clone().into());
            }
            // Backing off after a transient failure: no STS call before the retry is
            // due (a fetch already in flight, the retry itself, is joined below).
            if slot.inflight.is_none()
                && let Some(until) = failures.retry_at
                && until > now.wall
            {
                if let Some(entry) = fallback.filter(|e| e.is_alive(now)) {
                    return Ok(Vended {
                        entry,
                        source: Source::Degraded,
                    });
                }
                return Err(VendError::Unavailable {
                    retry_after_secs: seconds_left(until, now.wall),
                    reason: transient_reason(failures.last_error.as_ref().map(|(e, _)| e), true),
                });
            }
        }

        let rx = Inner::start_or_join(inner, &spec, Caller::Request);
        let waited = tokio::time::timeout(table.refresh.cold_wait, wait_outcome(rx)).await;
        let degraded_fallback = |reason: &'static str| {
            let now = inner.now();
            match fallback.as_ref().filter(|e| e.is_alive(now)) {
                Some(entry) => Ok(Vended {
                    entry: entry.clone(),
                    source: Source::Degraded,
                }),
                None => Err(VendError::Unavailable {
                    retry_after_secs: inner.retry_after_secs(&spec.key, now),
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
            Ok(Err(transient)) => degraded_fallback(transient_reason(Some(&transient), false)),
            Err(_elapsed) => degraded_fallback("STS slower than cold_wait"),
        }
    }
}

/// The probe a refusal names: the one the last check's refusal named, if kept.
fn unsafe_probe(slot: &super::Slot) -> Probe {
    match &slot.failures().last_error {
        Some((FetchError::UnsafeTrustPolicy(probe), _)) => *probe,
        _ => Probe::WithoutExternalId,
    }
}

/// `Retry-After` for a retry due at `until`: the whole seconds left, rounded up, at
/// least 1.
fn seconds_left(until: std::time::SystemTime, now: std::time::SystemTime) -> u64 {
    let left = until.duration_since(now).unwrap_or_default();
    (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1)
}

impl Inner {
    /// The fast path, no lock: a live credential of `spec` with at least
    /// `min_remaining` left (in the request's generation `table`) is served as it is
    /// (`lifecycle::servability` answers `Yes(Cache)` there whatever the slot's flags
    /// say), if the enforcement verdict allows it under this generation's mode. The
    /// liveness test matters only when `min_remaining` is configured inside the expiry
    /// margin.
    #[inline]
    pub(super) fn cached(
        &self,
        spec: &MappingSpec,
        table: &Table,
        now: lifecycle::Now,
    ) -> Option<Vended> {
        if let Some(entry) = spec.held.load_full()
            && let left = entry.remaining(now)
            && lifecycle::is_alive(left)
            && left >= table.refresh.min_remaining
            && spec.cached_decision() == CachedDecision::Serve
        {
            return Some(Vended {
                entry,
                source: Source::Cache,
            });
        }
        None
    }

    /// `Retry-After` for a 503 about `key`: the time left of its retry backoff, or 1 s
    /// when it is not backing off (the fetch is still running).
    fn retry_after_secs(&self, key: &super::MappingKey, now: lifecycle::Now) -> u64 {
        let retry_at = self
            .lock_slots()
            .get(key)
            .and_then(|slot| slot.failures().retry_at);
        retry_at.map_or(1, |until| seconds_left(until, now.wall))
    }

    /// Joins the mapping's in-flight fetch or starts one. A fetch that finished between
    /// the caller's own cache check and this call is seen here, under the slots lock
    /// that `publish` holds while it stores a credential: instead of calling STS a
    /// second time, a request gets that credential if it is servable as is, and a
    /// prefetch gets whatever credential is there (the mapping is warm; refreshing it
    /// is the scheduler's job). A refresh always fetches.
    pub(super) fn start_or_join(
        self: &Arc<Self>,
        spec: &Arc<MappingSpec>,
        caller: Caller,
    ) -> watch::Receiver<Option<FetchOutcome>> {
        let mut slots = self.lock_slots();
        // A per-job entry starts from the MaxSessionDuration its mapping learned.
        let owner_cap = spec
            .job_of
            .as_ref()
            .and_then(|key| slots.get(key))
            .and_then(|slot| slot.failures().duration_cap);
        let slot = slots.entry(spec.key.clone()).or_default();
        if let Some(rx) = &slot.inflight {
            return rx.as_ref().clone();
        }
        if caller != Caller::Refresh
            && let Some(entry) = spec.held.load_full()
        {
            let usable = caller == Caller::Prefetch
                || spec.cached_decision() == CachedDecision::Serve && {
                    let min_remaining = self.current_table().refresh.min_remaining;
                    matches!(
                        lifecycle::servability(
                            &entry,
                            self.now(),
                            slot.failures().degraded,
                            min_remaining
                        ),
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
        slot.inflight = Some(Box::new(rx.clone()));
        let duration_cap = slot.failures().duration_cap.or(owner_cap);
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
}

/// Who wants a fetch: decides its STS priority and what a credential already in the
/// store means (see [`Inner::start_or_join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller {
    /// A request is waiting for it.
    Request,
    /// Warming a `prefetch` mapping that had no credential.
    Prefetch,
    /// The scheduler: a refresh or retry is due.
    Refresh,
}

impl Caller {
    pub(super) fn priority(self) -> Priority {
        match self {
            Caller::Request => Priority::Cold,
            Caller::Prefetch | Caller::Refresh => Priority::Background,
        }
    }
}

pub(super) async fn wait_outcome(mut rx: watch::Receiver<Option<FetchOutcome>>) -> FetchOutcome {
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
