//! Per-job entries (docs/design.md, Per-job entries): a mapping's credential assumed with
//! a job's own RoleSessionName, so the customer's CloudTrail names the job.
//!
//! A per-job entry is a [`MappingSpec`] of its own (its key's fingerprint covers the
//! session name; its key's name is the mapping's, so metrics and logs count it under the
//! mapping), registered in [`Jobs`] rather than in the config generation's table, and
//! otherwise goes through everything a mapping does: single flight, the STS budget (the
//! mapping's fair share), the concurrency permits, backoff and the negative cache,
//! pre-refresh. It shares its mapping's External ID enforcement verdict (same role, same
//! External ID). It never shows in `/status` and changes no state gauge (those are per
//! mapping).
//!
//! It ends when the token store drops it ([`CredentialCache::drop_job`]), when a reload
//! changes or removes its mapping, or when its refresh comes due after `idle_timeout`
//! without a request (a token store that forgot to drop it cannot grow the registry
//! without bound). A fetch still in flight then lands in nothing (`Inner::publish`
//! finds the entry no longer registered).
//!
//! Lock order: the slots lock before the registry's, never the other way round.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use tracing::debug;

use super::table::{MappingSpec, Table};
use super::{CredentialCache, Inner, MappingKey, MappingTable, Slot, VendError, Vended};
use crate::aws_names::SessionName;

/// The registered per-job entries, by mapping and session name (looked up per request
/// without allocating) and by key (the scheduler's callback).
#[derive(Default)]
pub(super) struct Jobs {
    by_name: HashMap<Arc<str>, HashMap<SessionName, Arc<MappingSpec>>>,
    by_key: HashMap<MappingKey, Arc<MappingSpec>>,
}

impl Jobs {
    fn get(&self, name: &str, session: &SessionName) -> Option<&Arc<MappingSpec>> {
        self.by_name.get(name)?.get(session)
    }

    /// Registers `spec`, replacing the entry of its mapping and session name if any.
    fn insert(&mut self, spec: Arc<MappingSpec>) {
        let name = spec.key.shared_name().clone();
        let session = spec.input.session_name.clone();
        if let Some(old) = self
            .by_name
            .entry(name)
            .or_default()
            .insert(session, spec.clone())
            && old.key != spec.key
        {
            self.by_key.remove(&old.key);
        }
        self.by_key.insert(spec.key.clone(), spec);
    }

    /// Removes the entry of (`name`, `session`), returning it.
    fn remove(&mut self, name: &str, session: &SessionName) -> Option<Arc<MappingSpec>> {
        let sessions = self.by_name.get_mut(name)?;
        let spec = sessions.remove(session)?;
        if sessions.is_empty() {
            self.by_name.remove(name);
        }
        self.by_key.remove(&spec.key);
        Some(spec)
    }

    /// The registered entry of `key`.
    pub(super) fn by_key(&self, key: &MappingKey) -> Option<&Arc<MappingSpec>> {
        self.by_key.get(key)
    }

    /// Every registered entry (`CredentialCache::forget_failures`).
    pub(super) fn specs(&self) -> impl Iterator<Item = &Arc<MappingSpec>> {
        self.by_key.values()
    }

    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// The per-job entry of `mapping` for `session`, new (not registered).
fn job_spec(mapping: &MappingSpec, session: &SessionName) -> MappingSpec {
    let mut input = mapping.input.clone();
    input.session_name = session.clone();
    MappingSpec {
        key: mapping.key.for_job(session),
        input,
        prefetch: false,
        enforcement: mapping.enforcement,
        last_used: Arc::new(AtomicU64::new(0)),
        // Same role, same External ID: the mapping's verdict is the job's.
        verdict: mapping.verdict.clone(),
        job_of: Some(mapping.key.clone()),
        held: Default::default(),
    }
}

/// `spec`, rebuilt with the settings of `mapping` (same key: an unchanged mapping of a
/// new generation), keeping its last-use record.
fn rebuilt(spec: &MappingSpec, mapping: &MappingSpec) -> MappingSpec {
    MappingSpec {
        key: spec.key.clone(),
        input: spec.input.clone(),
        prefetch: false,
        enforcement: mapping.enforcement,
        last_used: spec.last_used.clone(),
        verdict: mapping.verdict.clone(),
        job_of: Some(mapping.key.clone()),
        held: spec.held.clone(),
    }
}

/// When an idle check is due for a per-job entry last used at `last_used`: just past
/// `idle_timeout` after it, when `Inner::on_refresh_due` finds it idle.
pub(super) fn idle_check_at(
    last_used: Option<SystemTime>,
    now: SystemTime,
    idle_timeout: Duration,
) -> SystemTime {
    last_used.unwrap_or(now) + idle_timeout + Duration::from_millis(1)
}

impl CredentialCache {
    /// Credentials of mapping `name` as `mappings` defines it, assumed with
    /// RoleSessionName `session` instead of the mapping's own: an entry of its own (own
    /// single flight, budget, backoff, pre-refresh), labelled with the mapping's name in
    /// metrics and logs. Waits at most `cold_wait` for STS, like
    /// [`CredentialCache::get_in`]. A generation no longer applied is served but its
    /// entry is not kept.
    pub async fn get_job_in(
        &self,
        mappings: &MappingTable,
        name: &str,
        session: &SessionName,
    ) -> Result<Vended, VendError> {
        let inner = &self.inner;
        let table = &mappings.0;
        let mapping = table.by_name.get(name).ok_or(VendError::UnknownMapping)?;
        let now = inner.now();
        let spec = inner.job_entry(mapping, session, now.wall, table);
        spec.touch(now.wall);
        if let Some(entry) = inner.cached(&spec, table, now) {
            return Ok(entry);
        }
        self.get_slow(spec, table.clone(), now).await
    }

    /// Drops the per-job entry of (`name`, `session`): credentials, slot, scheduled
    /// refresh. Called by the token store when the last live token with that pair ends.
    /// A fetch in flight for it lands in nothing. Unknown pairs are ignored.
    pub fn drop_job(&self, name: &str, session: &SessionName) {
        let inner = &self.inner;
        let mut slots = inner.lock_slots();
        let removed = inner.write_jobs().remove(name, session);
        if let Some(spec) = removed {
            inner.forget_entry(&mut slots, &spec);
            debug!(mapping = %name, session_name = %session, "Per-job entry dropped");
        }
    }

    /// How many per-job entries are registered now.
    pub fn job_entries(&self) -> usize {
        self.inner.read_jobs().len()
    }
}

impl Inner {
    pub(super) fn read_jobs(&self) -> RwLockReadGuard<'_, Jobs> {
        self.jobs.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_jobs(&self) -> RwLockWriteGuard<'_, Jobs> {
        self.jobs.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The registered entry of `mapping` (of the request's generation `table`) for
    /// `session`, registering it if there is none and `mapping` is the one applied now.
    /// Otherwise (a request of a generation a reload replaced) a fresh entry that is not
    /// registered: it serves its request, and its fetch is not kept.
    fn job_entry(
        &self,
        mapping: &MappingSpec,
        session: &SessionName,
        now: SystemTime,
        table: &Table,
    ) -> Arc<MappingSpec> {
        if let Some(spec) = self.read_jobs().get(mapping.key.name(), session)
            && spec.job_of.as_ref() == Some(&mapping.key)
        {
            return spec.clone();
        }
        let mut jobs = self.write_jobs();
        if let Some(spec) = jobs.get(mapping.key.name(), session) {
            if spec.job_of.as_ref() == Some(&mapping.key) {
                return spec.clone();
            }
            // Registered for other inputs of the mapping: a reload changed it and is
            // about to drop that entry, or this request's generation is the old one.
            return Arc::new(job_spec(mapping, session));
        }
        let spec = Arc::new(job_spec(mapping, session));
        // Checked under the registry's lock, which a reload takes after swapping the
        // table to drop the entries of changed mappings: an entry registered here for a
        // mapping the reload changes is dropped by it.
        if self.current_table().by_key.contains_key(&mapping.key) {
            jobs.insert(spec.clone());
            // Every registered entry has something scheduled, so an entry whose first
            // request never fetched (refused from the mapping's verdict) is still found
            // idle and dropped.
            self.queue.schedule(
                &spec.key,
                idle_check_at(Some(now), now, table.refresh.idle_timeout),
            );
            debug!(mapping = %mapping.key.name(), session_name = %session, "Per-job entry registered");
        }
        spec
    }

    /// Whether `spec` is what is applied now: a mapping of the current table, or a
    /// registered per-job entry. Publishing and the enforcement check keep nothing for
    /// an entry that is not. Call under the slots lock (`publish` does): a reload and
    /// `drop_job` change both under it.
    pub(super) fn is_current(&self, spec: &MappingSpec) -> bool {
        match &spec.job_of {
            None => self.current_table().by_key.contains_key(&spec.key),
            Some(_) => self.read_jobs().by_key(&spec.key).is_some(),
        }
    }

    /// The registered per-job entry of `key`, for the scheduler.
    pub(super) fn job_by_key(&self, key: &MappingKey) -> Option<Arc<MappingSpec>> {
        self.read_jobs().by_key(key).cloned()
    }

    /// Forgets `key`'s credential, slot and scheduled refresh (under the slots lock).
    pub(super) fn forget_entry(&self, slots: &mut HashMap<MappingKey, Slot>, spec: &MappingSpec) {
        let key = &spec.key;
        spec.held.store(None);
        self.queue.cancel(key);
        slots.remove(key);
    }

    /// Drops the per-job entry `spec`, found idle by the scheduler, unless a request
    /// used it since.
    pub(super) fn drop_idle_job(&self, spec: &MappingSpec, idle_timeout: Duration) {
        let mut slots = self.lock_slots();
        let now = self.clock.now();
        let last_used = spec.last_used();
        if last_used.is_some_and(|t| now.duration_since(t).unwrap_or_default() <= idle_timeout) {
            // Used since the scheduler took it off the queue: keep something scheduled,
            // unless the fetch of that request did.
            if self.queue.due_at(&spec.key).is_none() {
                self.queue
                    .schedule(&spec.key, idle_check_at(last_used, now, idle_timeout));
            }
            return;
        }
        let mut jobs = self.write_jobs();
        if jobs.by_key(&spec.key).is_none() {
            return;
        }
        jobs.remove(spec.key.name(), &spec.input.session_name);
        drop(jobs);
        self.forget_entry(&mut slots, spec);
        debug!(
            mapping = %spec.key.name(),
            session_name = %spec.input.session_name,
            "Per-job entry idle; dropped"
        );
    }

    /// After a reload to `new` (under the slots lock): drops the per-job entries of
    /// mappings removed or changed, and rebuilds the others with their mapping's
    /// settings in `new` (its enforcement mode).
    pub(super) fn reload_jobs(&self, new: &Table, slots: &mut HashMap<MappingKey, Slot>) {
        let mut jobs = self.write_jobs();
        let entries: Vec<Arc<MappingSpec>> = jobs.by_key.values().cloned().collect();
        for spec in entries {
            let mapping = new
                .by_name
                .get(spec.key.name())
                .filter(|m| Some(&m.key) == spec.job_of.as_ref());
            match mapping {
                Some(mapping) => jobs.insert(Arc::new(rebuilt(&spec, mapping))),
                None => {
                    jobs.remove(spec.key.name(), &spec.input.session_name);
                    self.forget_entry(slots, &spec);
                    debug!(
                        mapping = %spec.key.name(),
                        session_name = %spec.input.session_name,
                        "Mapping changed or removed; dropping its per-job entry"
                    );
                }
            }
        }
    }
}
