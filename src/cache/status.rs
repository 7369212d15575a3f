//! The status snapshot: a [`MappingStatus`] per configured mapping, and readiness.

use super::{CredentialCache, MappingState, MappingStatus, Slot};

impl CredentialCache {
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
                let entry = spec.held.load_full().filter(|e| e.is_alive(now));
                MappingStatus {
                    name: name.clone(),
                    state: state_of(slot, entry.is_some()),
                    expires_at: entry.as_ref().map(|e| e.expiration),
                    access_key_id: entry.as_ref().map(|e| e.access_key_id().to_owned()),
                    last_success: slot.and_then(|s| s.last_success()),
                    last_error: slot.and_then(|s| s.failures().last_error.clone()),
                    next_refresh: inner.queue.due_at(&spec.key),
                    retry_at: slot
                        .and_then(|s| s.failures().retry_at)
                        .filter(|at| *at > now.wall),
                    prefetch: spec.prefetch,
                    enforcement: spec.enforcement_status(),
                    enforcement_checked_at: slot.and_then(|s| s.enforcement_checked_at()),
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
}

fn state_of(slot: Option<&Slot>, has_entry: bool) -> MappingState {
    let Some(slot) = slot else {
        return MappingState::Empty;
    };
    match (has_entry, slot.inflight.is_some()) {
        (true, true) => MappingState::Refreshing,
        (true, false) if slot.failures().degraded => MappingState::Degraded,
        (true, false) => MappingState::Fresh,
        (false, _) if slot.failures().failed => MappingState::Failed,
        (false, true) => MappingState::Fetching,
        (false, false) => MappingState::Empty,
    }
}
