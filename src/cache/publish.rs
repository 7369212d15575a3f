//! Publishing a fetch's outcome: store or evict the credential, update the slot's
//! flags and backoff, schedule the next refresh or retry, report state changes; and the
//! scheduler's callback that starts a due refresh.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::debug;

use super::lifecycle::{self, Now};
use super::request::Caller;
use super::table::MappingSpec;
use super::{FetchOutcome, Inner, MappingKey, MappingState, Slot, Stamp};
use crate::events::MappingStateChanged;

impl Inner {
    /// Records a fetch's outcome: cache, slot state, next refresh. Runs under the slots
    /// lock so that "publish, then clear in-flight" is atomic for joiners.
    pub(super) fn publish(&self, spec: &MappingSpec, outcome: &FetchOutcome) {
        let clock_now = self.now();
        let now = clock_now.wall;
        let table = self.current_table();
        let mut slots = self.lock_slots();
        // Under the slots lock, which a reload and `drop_job` hold while they drop.
        let current = self.is_current(spec);
        let Some(slot) = slots.get_mut(&spec.key) else {
            // The mapping was removed or changed while the fetch ran, or the per-job
            // entry was dropped.
            return;
        };
        slot.inflight = None;
        if !current {
            // A request of the generation before brought the slot back (see
            // `CredentialCache::get_in`); the reload had dropped it. Or a request
            // brought back the slot of a per-job entry dropped meanwhile.
            slots.remove(&spec.key);
            return;
        }
        let name = spec.key.name();
        let before = flag_state(slot, spec, clock_now);
        match outcome {
            Ok(entry) => {
                spec.held.store(Some(entry.clone()));
                if let Some(failures) = slot.failures.as_deref_mut() {
                    failures.degraded = false;
                    failures.failed = false;
                    failures.transient_failures = 0;
                    failures.terminal_failures = 0;
                    failures.negative_until = None;
                    failures.retry_at = None;
                }
                slot.last_success = Stamp::new(Some(now));
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
                    access_key_id = %entry.access_key_id(),
                    next_refresh = %humantime::format_rfc3339_seconds(at),
                    "Credential cached; refresh scheduled"
                );
            }
            Err(error) if error.is_terminal() => {
                spec.held.store(None);
                self.queue.cancel(&spec.key);
                let failures = slot.failures_mut();
                failures.degraded = false;
                failures.failed = true;
                failures.terminal_failures = failures.terminal_failures.saturating_add(1);
                let backoff = lifecycle::terminal_backoff(failures.terminal_failures);
                failures.negative_until = Some(now + backoff);
                failures.retry_at = None;
                failures.last_error = Some((error.clone(), now));
                debug!(
                    mapping = %name,
                    code = %error.code(),
                    retry_after_secs = backoff.as_secs(),
                    "Dropped the mapping's credentials; negatively cached"
                );
            }
            Err(error) => {
                let failures = slot.failures_mut();
                failures.transient_failures = failures.transient_failures.saturating_add(1);
                failures.last_error = Some((error.clone(), now));
                let backoff = lifecycle::transient_backoff(
                    failures.transient_failures,
                    rand::random::<f64>(),
                );
                // Requests that find nothing servable wait this out too (503 with the
                // time left), so a client retrying in a loop cannot turn one broken
                // mapping into a stream of STS calls.
                failures.retry_at = Some(now + backoff);
                let valid = spec
                    .held
                    .load()
                    .as_ref()
                    .is_some_and(|e| e.is_alive(clock_now));
                failures.degraded = valid;
                if !valid {
                    spec.held.store(None);
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
        let after = flag_state(slot, spec, clock_now);
        if spec.job_of.is_some() {
            // A per-job entry has no state of its own in `/status` or
            // `credvend_mapping_state` (both per mapping; the mapping's own entry is
            // what they show). Nothing scheduled (refused, or failing and unused): an
            // idle check, so an entry its token store forgot is dropped in the end.
            if self.queue.due_at(&spec.key).is_none() {
                let at =
                    super::jobs::idle_check_at(spec.last_used(), now, table.refresh.idle_timeout);
                self.queue.schedule(&spec.key, at);
            }
            return;
        }
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
    pub(super) fn on_refresh_due(self: &Arc<Self>, key: MappingKey) {
        let table = self.current_table();
        let Some(spec) = table
            .by_key
            .get(&key)
            .cloned()
            .or_else(|| self.job_by_key(&key))
        else {
            return;
        };
        let now = self.clock.now();
        let last_used = spec.last_used();
        let idle =
            !spec.prefetch && last_used.is_none_or(|t| is_idle(t, now, table.refresh.idle_timeout));
        if idle {
            if spec.job_of.is_some() {
                self.drop_idle_job(&spec, table.refresh.idle_timeout);
                return;
            }
            debug!(mapping = %key.name(), "Mapping idle; not refreshing");
            return;
        }
        // A per-job entry's idle check (it has no credential to keep fresh and no retry
        // due: refused, or never fetched) fetches nothing; the next check is due when it
        // would be idle.
        if spec.job_of.is_some() {
            // Under the slots lock, as `publish` schedules: a refresh a fetch that just
            // landed scheduled is not replaced.
            let slots = self.lock_slots();
            let retry_due = slots
                .get(&key)
                .is_some_and(|slot| slot.failures().retry_at.is_some());
            if !retry_due && spec.held.load().is_none() {
                if self.queue.due_at(&key).is_none() {
                    let at = super::jobs::idle_check_at(last_used, now, table.refresh.idle_timeout);
                    self.queue.schedule(&key, at);
                }
                return;
            }
        }
        // A fetch that landed after this was taken off the queue (a request's, racing
        // the scheduler) has done its work and scheduled what comes next, or put the
        // mapping in its negative cache: fetching again would cost one more STS call
        // than the schedule allows.
        let overtaken = self.queue.due_at(&key).is_some_and(|at| at > now)
            || self.lock_slots().get(&key).is_some_and(|slot| {
                let failures = slot.failures();
                failures.failed && failures.negative_until.is_some_and(|until| until > now)
            });
        if overtaken {
            debug!(mapping = %key.name(), "Refresh overtaken by a fetch that landed since");
            return;
        }
        drop(Self::start_or_join(self, &spec, Caller::Refresh));
    }
}

/// The state a slot is in once no fetch is in flight (for state-change events).
fn flag_state(slot: &Slot, spec: &MappingSpec, now: Now) -> MappingState {
    let has_entry = spec.held.load().as_ref().is_some_and(|e| e.is_alive(now));
    match (has_entry, slot.failures().degraded, slot.failures().failed) {
        (true, true, _) => MappingState::Degraded,
        (true, false, _) => MappingState::Fresh,
        (false, _, true) => MappingState::Failed,
        (false, _, false) => MappingState::Empty,
    }
}

fn is_idle(last_used: SystemTime, now: SystemTime, idle_timeout: Duration) -> bool {
    now.duration_since(last_used).unwrap_or(Duration::ZERO) > idle_timeout
}
