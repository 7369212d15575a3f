//! One config generation's mapping table: a [`MappingSpec`] per mapping (the fixed
//! AssumeRole input and settings, plus the shared last-use record) by name and by key.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;

use super::{Entry, MappingKey};
use crate::config::{Config, EnforcementMode, Mapping, RefreshConfig};
use crate::creds::AssumeRoleInput;
use crate::model::EnforcementStatus;
use crate::verify;

/// Everything about one mapping that is fixed for a given config generation.
pub(super) struct MappingSpec {
    pub(super) key: MappingKey,
    pub(super) input: AssumeRoleInput,
    pub(super) prefetch: bool,
    pub(super) enforcement: EnforcementMode,
    /// Last request for this mapping (idle detection), nanoseconds since the Unix
    /// epoch, 0 for never. An atomic rather than a slot field so that a cache hit takes
    /// no lock; shared (same `Arc`) by every generation in which the mapping's key is
    /// unchanged, so a reload does not make busy mappings look idle.
    pub(super) last_used: Arc<AtomicU64>,
    /// The last conclusive External ID enforcement result for this key
    /// ([`MappingSpec::enforcement_status`]), shared like `last_used`: a request reads
    /// it without a lock to decide, against the mode of its own generation, whether a
    /// cached credential may be served ([`crate::verify::cached_decision`]), so a
    /// reload that changes only the mode re-decides at the next request.
    pub(super) verdict: Arc<AtomicU8>,
    /// For a per-job entry (`super::jobs`), the key of its mapping; `None` for a
    /// mapping's own entry.
    pub(super) job_of: Option<MappingKey>,
    /// The store: the credential cached for this key, if any. Set and cleared under the
    /// slots lock (a fetch's publication, a terminal failure, a reload or a job's drop
    /// that forgets the entry), shared like `last_used`, so every generation in which
    /// the key is unchanged serves it; a cache hit reads it with one pointer load. One
    /// credential per entry of the table or the job registry, which bound it.
    pub(super) held: Arc<ArcSwapOption<Entry>>,
}

impl MappingSpec {
    /// The key of the mapping this entry belongs to: its own, or a per-job entry's
    /// mapping's. The STS budget's fair share and the record of when the External ID
    /// check last concluded (in that key's slot) go by it, so a mapping's jobs share
    /// its budget share and its enforcement check.
    pub(super) fn owner_key(&self) -> &MappingKey {
        self.job_of.as_ref().unwrap_or(&self.key)
    }

    /// Records a request at `now`. Skips the store unless the clock moved by at least a
    /// millisecond, so a burst of hits on one mapping does not keep bouncing its cache
    /// line between cores (idle detection works in hours).
    pub(super) fn touch(&self, now: SystemTime) {
        let nanos = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .max(1);
        let last = self.last_used.load(Ordering::Relaxed);
        if nanos.abs_diff(last) >= 1_000_000 {
            self.last_used.store(nanos, Ordering::Relaxed);
        }
    }

    /// The last conclusive enforcement result (`Unknown` until one).
    pub(super) fn enforcement_status(&self) -> EnforcementStatus {
        match self.verdict.load(Ordering::Acquire) {
            1 => EnforcementStatus::Enforced,
            2 => EnforcementStatus::NotEnforced,
            _ => EnforcementStatus::Unknown,
        }
    }

    /// Whether a cached credential may be served under this generation's mode, given
    /// the last conclusive enforcement result ([`verify::cached_decision`]).
    pub(super) fn cached_decision(&self) -> verify::CachedDecision {
        verify::cached_decision(self.enforcement, self.enforcement_status())
    }

    /// Records a conclusive enforcement result.
    pub(super) fn set_enforcement_status(&self, status: EnforcementStatus) {
        let value = match status {
            EnforcementStatus::Unknown => 0,
            EnforcementStatus::Enforced => 1,
            EnforcementStatus::NotEnforced => 2,
        };
        self.verdict.store(value, Ordering::Release);
    }

    /// The last request for this mapping, if any.
    pub(super) fn last_used(&self) -> Option<SystemTime> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(UNIX_EPOCH + Duration::from_nanos(nanos)),
        }
    }
}

/// The mapping table of one config generation.
pub(super) struct Table {
    /// Looked up by every request (foldhash, randomly seeded; see `server::access`).
    pub(super) by_name: foldhash::HashMap<String, Arc<MappingSpec>>,
    pub(super) by_key: HashMap<MappingKey, Arc<MappingSpec>>,
    pub(super) refresh: RefreshConfig,
    /// `[verify] recheck_interval`.
    pub(super) recheck_interval: Duration,
}

/// The table for `config`. Mappings whose key is unchanged from `previous` keep sharing
/// its last-use record and enforcement result (a changed key starts `Unknown`).
pub(super) fn build_table(config: &Config, previous: Option<&Table>) -> Table {
    let mut by_name = foldhash::HashMap::default();
    let mut by_key = HashMap::new();
    for (name, mapping) in &config.mappings {
        let spec = mapping_spec(config, mapping, previous);
        by_name.insert(name.clone(), spec.clone());
        by_key.insert(spec.key.clone(), spec);
    }
    Table {
        by_name,
        by_key,
        refresh: config.refresh.clone(),
        recheck_interval: config.verify.recheck_interval,
    }
}

/// `previous` with `changes`' mappings (new or replaced) put in and the `removed` ones
/// taken out, the settings `changes`' (a reload that read only the files that changed,
/// docs/design.md, Reload). The other mappings keep their very `MappingSpec`.
pub(super) fn change_table(
    changes: &Config,
    removed: &BTreeSet<String>,
    previous: &Table,
) -> Table {
    let mut by_name = previous.by_name.clone();
    let mut by_key = previous.by_key.clone();
    let replaced = removed
        .iter()
        .map(String::as_str)
        .chain(changes.mappings.keys().map(String::as_str));
    for name in replaced {
        if let Some(old) = by_name.remove(name) {
            by_key.remove(&old.key);
        }
    }
    for (name, mapping) in &changes.mappings {
        let spec = mapping_spec(changes, mapping, Some(previous));
        by_name.insert(name.clone(), spec.clone());
        by_key.insert(spec.key.clone(), spec);
    }
    Table {
        by_name,
        by_key,
        refresh: changes.refresh.clone(),
        recheck_interval: changes.verify.recheck_interval,
    }
}

/// One mapping's spec; one whose key `previous` has keeps sharing its last-use record,
/// enforcement result and held credential.
fn mapping_spec(config: &Config, mapping: &Mapping, previous: Option<&Table>) -> Arc<MappingSpec> {
    let input = AssumeRoleInput::for_mapping(mapping);
    let key = MappingKey::new(&mapping.name, &input, config.sts.endpoint_url.as_deref());
    let before = previous.and_then(|table| table.by_key.get(&key));
    let last_used = before.map_or_else(
        || Arc::new(AtomicU64::new(0)),
        |spec| spec.last_used.clone(),
    );
    let verdict = before.map_or_else(|| Arc::new(AtomicU8::new(0)), |spec| spec.verdict.clone());
    let held = before.map_or_else(Default::default, |spec| spec.held.clone());
    Arc::new(MappingSpec {
        key,
        input,
        prefetch: mapping.prefetch,
        enforcement: mapping.external_id_enforcement,
        last_used,
        verdict,
        job_of: None,
        held,
    })
}
