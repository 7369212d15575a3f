//! The refresh queue: one ordered set of (due time, mapping key), drained by a single
//! background task (not a task per mapping: thousands of mappings cost one timer).
//!
//! Time is the injected [`Clock`]'s: the task sleeps with [`Clock::sleep_until`] on the
//! earliest deadline and is woken early whenever an earlier deadline is scheduled.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::Notify;

use super::MappingKey;
use crate::clock::Clock;

#[derive(Default)]
pub struct RefreshQueue {
    inner: Mutex<Queue>,
    /// Woken when the earliest deadline may have changed.
    changed: Notify,
}

#[derive(Default)]
struct Queue {
    by_time: BTreeSet<(SystemTime, MappingKey)>,
    by_key: HashMap<MappingKey, SystemTime>,
}

impl RefreshQueue {
    /// Schedules (or reschedules) `key` at `at`; a key is in the queue at most once.
    pub fn schedule(&self, key: &MappingKey, at: SystemTime) {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = q.by_key.insert(key.clone(), at) {
            q.by_time.remove(&(old, key.clone()));
        }
        q.by_time.insert((at, key.clone()));
        drop(q);
        self.changed.notify_one();
    }

    /// Removes `key` from the queue, if present.
    pub fn cancel(&self, key: &MappingKey) {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = q.by_key.remove(key) {
            q.by_time.remove(&(old, key.clone()));
        }
    }

    /// When `key` is due, if scheduled.
    pub fn due_at(&self, key: &MappingKey) -> Option<SystemTime> {
        let q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        q.by_key.get(key).copied()
    }

    fn earliest(&self) -> Option<SystemTime> {
        let q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        q.by_time.first().map(|(t, _)| *t)
    }

    /// Removes and returns every key due at `now`.
    fn pop_due(&self, now: SystemTime) -> Vec<MappingKey> {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        while let Some((t, _)) = q.by_time.first() {
            if *t > now {
                break;
            }
            if let Some((_, key)) = q.by_time.pop_first() {
                q.by_key.remove(&key);
                due.push(key);
            }
        }
        due
    }

    /// Runs forever: waits for the earliest deadline and hands due keys to `on_due`.
    pub async fn run(&self, clock: &dyn Clock, mut on_due: impl FnMut(MappingKey)) {
        loop {
            // Register interest before reading the queue so a schedule() racing with
            // the read still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.earliest() {
                None => changed.await,
                Some(at) => {
                    tokio::select! {
                        _ = clock.sleep_until(at) => {}
                        _ = &mut changed => {}
                    }
                }
            }
            for key in self.pop_due(clock.now()) {
                on_due(key);
            }
        }
    }
}
