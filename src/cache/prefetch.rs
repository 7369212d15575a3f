//! Prefetch: warming every `prefetch` mapping without a credential, a bounded batch at a
//! time.

use super::request::{Caller, wait_outcome};
use super::{CredentialCache, Inner, MAX_CONCURRENT_STS_CALLS};

impl CredentialCache {
    /// Starts a fetch for every `prefetch` mapping without a credential, at most
    /// [`MAX_CONCURRENT_STS_CALLS`] at a time: the STS calls are capped at that anyway,
    /// and starting all 10,000 fetch tasks of a large config at once only held ~18 MB
    /// of waiting futures whose freed memory stayed resident. The first batch starts
    /// before this returns; a task feeds in the rest as fetches finish.
    pub(super) fn prefetch_all(&self) {
        let inner = &self.inner;
        let table = inner.current_table();
        let mut pending = table
            .by_name
            .values()
            .filter(|s| s.prefetch && s.held.load().is_none())
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
