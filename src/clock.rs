//! Wall-clock seam.
//!
//! Credential expiry is wall-clock time (`Expiration` is an absolute UTC instant chosen by
//! STS), so every lifecycle decision — is this credential still servable, when is its
//! refresh due, is this mapping idle — asks a [`Clock`] rather than the OS. Production uses
//! [`SystemClock`]; tests use `ManualClock` (compiled for tests and the `test-util`
//! feature only) and move time explicitly, which wakes any
//! task sleeping in [`Clock::sleep_until`]. Latency bounds (`cold_wait`, STS call timeout)
//! are not wall-clock decisions and use tokio's monotonic timer directly.
//!
//! The wall clock can step (NTP, VM resume, an operator), and a step back would make a
//! credential look younger than it is. [`Clock::monotonic`] is the clock that never
//! steps: the cache measures how long it has *held* a credential with it, so a credential
//! is never served past the lifetime it arrived with, whatever the wall clock reads.
//! `ManualClock::advance` moves both clocks (time passing); `ManualClock::rewind` and
//! `ManualClock::set` move only the wall clock (a step).

use std::future::Future;
use std::pin::Pin;
#[cfg(any(test, feature = "test-util"))]
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(any(test, feature = "test-util"))]
use tokio::sync::watch;

/// A boxed future returned by [`Clock::sleep_until`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Source of wall-clock time for lifecycle decisions.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
    /// Completes once [`Clock::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: SystemTime) -> Sleep;
    /// Time elapsed on a clock that never steps, from an arbitrary fixed origin. Only
    /// differences between two readings mean anything.
    fn monotonic(&self) -> Duration;
    /// [`Clock::monotonic`] as it read at `at`, a reading of the OS's monotonic clock
    /// taken a moment ago (a request's arrival): a clock that follows the OS answers
    /// without reading it again (the request path reads the time once,
    /// docs/performance.md, "The cache hit's own cost"). A clock of its own (a test's)
    /// answers [`Clock::monotonic`].
    fn monotonic_at(&self, at: std::time::Instant) -> Duration {
        let _ = at;
        self.monotonic()
    }
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// Longest single tokio sleep while waiting for a wall-clock deadline. The wall clock can
/// jump (NTP step, VM resume); re-reading it at least this often bounds how late a
/// deadline can fire after such a jump.
const MAX_SLEEP_SLICE: Duration = Duration::from_secs(15);

/// Origin of [`SystemClock::monotonic`]: the first reading in this process.
static MONOTONIC_ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic(&self) -> Duration {
        MONOTONIC_ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
    }

    fn monotonic_at(&self, at: std::time::Instant) -> Duration {
        at.saturating_duration_since(*MONOTONIC_ORIGIN.get_or_init(std::time::Instant::now))
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
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<SystemTime>>,
    /// Nanoseconds of [`Clock::monotonic`]; moved only by [`ManualClock::advance`].
    monotonic_nanos: Arc<std::sync::atomic::AtomicU64>,
}

#[cfg(any(test, feature = "test-util"))]
impl ManualClock {
    /// A clock frozen at `start`.
    pub fn new(start: SystemTime) -> Self {
        let (tx, _rx) = watch::channel(start);
        Self {
            now: Arc::new(tx),
            monotonic_nanos: Arc::default(),
        }
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

    /// Moves time forward by `by`: both the wall and the monotonic clock.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.monotonic_nanos
            .fetch_add(nanos, std::sync::atomic::Ordering::SeqCst);
        self.now.send_modify(|t| *t += by);
    }

    /// Steps the wall clock backward by `by` (e.g. NTP correction); monotonic time does
    /// not move.
    pub fn rewind(&self, by: Duration) {
        self.now.send_modify(|t| *t -= by);
    }

    /// Steps the wall clock to `to`; monotonic time does not move.
    pub fn set(&self, to: SystemTime) {
        self.now.send_replace(to);
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.borrow()
    }

    fn monotonic(&self) -> Duration {
        Duration::from_nanos(
            self.monotonic_nanos
                .load(std::sync::atomic::Ordering::SeqCst),
        )
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

    /// The OS clock's reading at an instant is the reading taken then, from the
    /// instant alone: an instant an hour ahead reads an hour later. A manual clock
    /// answers its own time whatever the instant.
    #[test]
    fn monotonic_at_an_instant_reads_that_instant() {
        let clock = SystemClock;
        let before = clock.monotonic();
        let at = std::time::Instant::now();
        let after = clock.monotonic();
        let read = clock.monotonic_at(at);
        assert!(
            before <= read && read <= after,
            "{read:?} not between {before:?} and {after:?}"
        );
        let hour = Duration::from_secs(3600);
        assert_eq!(clock.monotonic_at(at + hour) - read, hour);

        let manual = ManualClock::starting_now();
        manual.advance(hour);
        assert_eq!(manual.monotonic_at(at), manual.monotonic());
    }

    /// Polls `future` once, without waiting: `true` if it completed.
    fn completes_now(future: &mut Sleep) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        future.as_mut().poll(&mut cx).is_ready()
    }

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let clock = ManualClock::starting_now();
        let start = clock.now();
        // Polled by hand after each move, so "not yet" is a fact about the sleeper, not
        // about whether a spawned task happened to run before the assertion.
        let mut sleeper = clock.sleep_until(start + Duration::from_secs(60));
        assert!(!completes_now(&mut sleeper), "woke before time moved");
        clock.advance(Duration::from_secs(30));
        assert!(!completes_now(&mut sleeper), "woke before its deadline");
        clock.advance(Duration::from_secs(29));
        assert!(!completes_now(&mut sleeper), "woke a second early");
        clock.advance(Duration::from_secs(1));
        assert!(completes_now(&mut sleeper), "did not wake at its deadline");
        // A sleeper in another task is woken by the move, not only when polled.
        let waiter = tokio::spawn(clock.sleep_until(start + Duration::from_secs(120)));
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(60));
        tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("a sleeping task was not woken at its deadline")
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
