//! The refresh queue: one ordered set of (due time, mapping key), drained by a single
//! background task (not a task per mapping: thousands of mappings cost one timer).
//!
//! Time is the injected [`Clock`]'s: the task sleeps with [`Clock::sleep_until`] on the
//! earliest deadline and is woken early whenever an earlier deadline is scheduled.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::MappingKey;
use crate::clock::Clock;

#[derive(Default)]
pub struct RefreshQueue {
    inner: Mutex<Queue>,
    /// Woken when the earliest deadline may have changed.
    changed: Notify,
}

/// Due times are kept as nanoseconds since the Unix epoch ([`Due`]): 8 bytes instead of
/// `SystemTime`'s 16 in both tables, which hold an entry per warm mapping.
#[derive(Default)]
struct Queue {
    by_time: BTreeSet<(Due, MappingKey)>,
    by_key: HashMap<MappingKey, Due>,
}

/// A due time: nanoseconds since the Unix epoch (a time before it counts as the epoch,
/// due at once; one past 2554 as then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due(u64);

impl Due {
    fn of(at: SystemTime) -> Self {
        let nanos = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        Due(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.0)
    }
}

impl RefreshQueue {
    /// Schedules (or reschedules) `key` at `at`; a key is in the queue at most once.
    pub fn schedule(&self, key: &MappingKey, at: SystemTime) {
        let at = Due::of(at);
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
        q.by_key.get(key).map(|due| due.time())
    }

    fn earliest(&self) -> Option<SystemTime> {
        let q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        q.by_time.first().map(|(due, _)| due.time())
    }

    /// Removes and returns every key due at `now`.
    fn pop_due(&self, now: SystemTime) -> Vec<MappingKey> {
        let now = Due::of(now);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A due time is kept in 8 bytes, so an entry of the by-time set is 16 with its key
    /// (one per warm mapping), and reads back to the nanosecond.
    #[test]
    fn a_due_time_is_8_bytes_and_reads_back_as_scheduled() {
        assert_eq!(std::mem::size_of::<(Due, MappingKey)>(), 16);
        let t = UNIX_EPOCH + Duration::new(1_800_000_000, 987_654_321);
        assert_eq!(Due::of(t).time(), t);
        assert!(Due::of(t) < Due::of(t + Duration::from_nanos(1)));
        assert_eq!(
            Due::of(UNIX_EPOCH - Duration::from_secs(1)).time(),
            UNIX_EPOCH
        );
    }
}
