//! Wall-clock seam.
//!
//! Credential expiry is wall-clock time (`Expiration` is an absolute UTC instant chosen by
//! STS), so every lifecycle decision — is this credential still servable, when is its
//! refresh due, is this mapping idle — asks a [`Clock`] rather than the OS. Production uses
//! [`SystemClock`]; tests use [`ManualClock`] and move time explicitly, which wakes any
//! task sleeping in [`Clock::sleep_until`]. Latency bounds (`cold_wait`, STS call timeout)
//! are not wall-clock decisions and use tokio's monotonic timer directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// A boxed future returned by [`Clock::sleep_until`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Source of wall-clock time for lifecycle decisions.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
    /// Completes once [`Clock::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: SystemTime) -> Sleep;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// Longest single tokio sleep while waiting for a wall-clock deadline. The wall clock can
/// jump (NTP step, VM resume); re-reading it at least this often bounds how late a
/// deadline can fire after such a jump.
const MAX_SLEEP_SLICE: Duration = Duration::from_secs(15);

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, deadline: SystemTime) -> Sleep {
        Box::pin(async move {
            loop {
                let remaining = match deadline.duration_since(SystemTime::now()) {
                    Ok(d) if !d.is_zero() => d,
                    _ => return,
                };
                tokio::time::sleep(remaining.min(MAX_SLEEP_SLICE)).await;
            }
        })
    }
}

/// A clock that only moves when told to; for tests.
///
/// Cloning shares the same time. Moving time forward (or back) wakes every sleeper whose
/// deadline has been reached.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<SystemTime>>,
}

impl ManualClock {
    /// A clock frozen at `start`.
    pub fn new(start: SystemTime) -> Self {
        let (tx, _rx) = watch::channel(start);
        Self { now: Arc::new(tx) }
    }

    /// A clock frozen at the current system time, truncated to whole seconds so that
    /// expirations computed from it format without loss.
    pub fn starting_now() -> Self {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|t| *t += by);
    }

    /// Moves time backward by `by` (a wall-clock step back, e.g. NTP correction).
    pub fn rewind(&self, by: Duration) {
        self.now.send_modify(|t| *t -= by);
    }

    /// Sets the time.
    pub fn set(&self, to: SystemTime) {
        self.now.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: SystemTime) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as any ManualClock clone; if all are gone, time
            // can never reach the deadline, so pend forever like a real sleep would.
            if rx.wait_for(|now| *now >= deadline).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let clock = ManualClock::starting_now();
        let start = clock.now();
        let sleeper = tokio::spawn(clock.sleep_until(start + Duration::from_secs(60)));
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(30));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke before its deadline");
        clock.advance(Duration::from_secs(30));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper did not wake at its deadline")
            .unwrap();
    }

    #[tokio::test]
    async fn past_deadline_completes_at_once() {
        let clock = ManualClock::starting_now();
        let past = clock.now() - Duration::from_secs(1);
        tokio::time::timeout(Duration::from_secs(1), clock.sleep_until(past))
            .await
            .expect("a past deadline must complete immediately");
        tokio::time::timeout(Duration::from_secs(1), SystemClock.sleep_until(past))
            .await
            .expect("a past deadline must complete immediately");
    }
}
