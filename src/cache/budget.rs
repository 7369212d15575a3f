//! The global STS budget: one token bucket (`sts.max_requests_per_second`) shared by
//! every mapping, so a fleet-wide event (a reload, a restart with many `prefetch`
//! mappings, a throttling storm) cannot turn into an STS storm of our own.
//!
//! Priority: a request waiting on a cold miss has a worker blocked behind it, a
//! background refresh does not. Background acquisitions therefore wait while any cold
//! acquisition is waiting, and only then take a token.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

/// Who is asking for an STS call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A request is waiting for this fetch.
    Cold,
    /// Scheduled refresh, retry or prefetch.
    Background,
}

pub struct StsBudget {
    limiter: DefaultDirectRateLimiter,
    /// Cold acquisitions currently waiting for a token; background ones yield to them.
    cold_waiting: AtomicUsize,
    /// Woken when the last waiting cold acquisition got its token.
    cold_done: Notify,
    /// Acquisitions that found the bucket empty and had to wait (metric
    /// `credvend_sts_rate_limited_total`).
    rate_limited: AtomicU64,
}

impl StsBudget {
    pub fn new(max_requests_per_second: u32) -> Self {
        let rate = NonZeroU32::new(max_requests_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            cold_waiting: AtomicUsize::new(0),
            cold_done: Notify::new(),
            rate_limited: AtomicU64::new(0),
        }
    }

    /// Number of acquisitions that had to wait for a token so far.
    pub fn rate_limited_total(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Waits for permission to make one STS call.
    pub async fn acquire(&self, priority: Priority) {
        match priority {
            Priority::Cold => {
                self.cold_waiting.fetch_add(1, Ordering::SeqCst);
                if self.limiter.check().is_err() {
                    self.rate_limited.fetch_add(1, Ordering::Relaxed);
                    self.limiter.until_ready().await;
                }
                if self.cold_waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
                    self.cold_done.notify_waiters();
                }
            }
            Priority::Background => {
                let mut counted = false;
                loop {
                    while self.cold_waiting.load(Ordering::SeqCst) > 0 {
                        // Bounded wait: a notification racing with the load above is
                        // caught on the next turn instead of being lost.
                        let _ = tokio::time::timeout(
                            Duration::from_millis(50),
                            self.cold_done.notified(),
                        )
                        .await;
                    }
                    match self.limiter.check() {
                        Ok(()) => return,
                        Err(not_until) => {
                            if !counted {
                                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                                counted = true;
                            }
                            let wait = not_until.wait_time_from(DefaultClock::default().now());
                            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn burst_is_free_then_calls_are_paced() {
        let budget = StsBudget::new(5);
        for _ in 0..5 {
            budget.acquire(Priority::Cold).await;
        }
        assert_eq!(budget.rate_limited_total(), 0);
        budget.acquire(Priority::Cold).await;
        assert_eq!(budget.rate_limited_total(), 1);
    }

    #[tokio::test]
    async fn cold_acquisitions_go_before_background_ones() {
        let budget = Arc::new(StsBudget::new(2));
        // Drain the burst so everyone has to wait.
        budget.acquire(Priority::Cold).await;
        budget.acquire(Priority::Cold).await;

        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let background = {
            let (budget, order) = (budget.clone(), order.clone());
            tokio::spawn(async move {
                budget.acquire(Priority::Background).await;
                order.lock().unwrap().push("background");
            })
        };
        // Let the background acquisition start waiting first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cold = {
            let (budget, order) = (budget.clone(), order.clone());
            tokio::spawn(async move {
                budget.acquire(Priority::Cold).await;
                order.lock().unwrap().push("cold");
            })
        };
        cold.await.unwrap();
        background.await.unwrap();
        assert_eq!(*order.lock().unwrap(), vec!["cold", "background"]);
        assert!(budget.rate_limited_total() >= 2);
    }
}
