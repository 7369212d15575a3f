//! The global STS budget: one token bucket (`sts.max_requests_per_second`) shared by
//! every mapping, so a fleet-wide event (a reload, a restart with many `prefetch`
//! mappings, a throttling storm) cannot turn into an STS storm of our own, and shared
//! fairly, so one mapping cannot spend it for the others.
//!
//! Tokens are granted one at a time to the waiting acquisition that goes first by:
//! 1. **Priority.** A request waiting on a cold miss has a worker blocked behind it, a
//!    background refresh does not: cold acquisitions go first. But not always: while
//!    background work waits, at most [`COLD_GRANTS_PER_BACKGROUND`] cold grants in a row
//!    are made before one background grant, so scheduled refreshes keep a share of the
//!    budget however many cold misses keep arriving.
//! 2. **Fair share between mappings.** Within a priority, the mapping granted least
//!    recently (or never) goes first, then arrival order. Single flight gives a mapping
//!    at most one acquisition waiting at a time, so this is a round robin over mappings:
//!    a mapping that keeps coming back (a broken one, hammered) gets one token per round,
//!    and a mapping that has not had one overtakes it.
//!
//! The bucket holds at most `rate` tokens (the burst) and refills at `rate` per second,
//! on tokio's clock (real time; virtual in unit tests with paused time), not the
//! injected [`crate::clock::Clock`]. An acquisition that finds no token or others
//! waiting queues; a timer task, running only while someone waits, grants tokens as
//! they refill.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use super::MappingKey;

/// Who is asking for an STS call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A request is waiting for this fetch.
    Cold,
    /// Scheduled refresh, retry or prefetch.
    Background,
}

impl Priority {
    /// Both, in the order of their array index.
    pub const ALL: [Priority; 2] = [Priority::Cold, Priority::Background];

    /// The `priority` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Cold => "cold",
            Priority::Background => "background",
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Priority::Cold => 0,
            Priority::Background => 1,
        }
    }
}

/// While background acquisitions wait, at most this many cold grants in a row.
pub const COLD_GRANTS_PER_BACKGROUND: u32 = 3;

/// How many of the latest grants are remembered per mapping for the fair-share order;
/// a mapping granted longer ago counts as never granted (it goes first).
const REMEMBERED_GRANTS: u64 = 1024;

/// A waiting acquisition's place: (serial of its mapping's last grant, 0 for none;
/// arrival number).
type Place = (u64, u64);

pub struct StsBudget {
    state: Arc<Mutex<State>>,
    /// Acquisitions that found the bucket empty or others waiting and had to wait
    /// (metric `credvend_sts_rate_limited_total`).
    rate_limited: AtomicU64,
}

struct State {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
    /// Waiting acquisitions per [`Priority::index`], in grant order.
    waiting: [BTreeMap<Place, Waiter>; 2],
    /// Arrival numbers.
    arrivals: u64,
    /// Grants so far (the serial of the latest one).
    grants: u64,
    /// Serial of each mapping's latest grant (the last [`REMEMBERED_GRANTS`] only).
    last_grant: HashMap<MappingKey, u64>,
    /// Cold grants made in a row while background acquisitions waited.
    cold_streak: u32,
    /// The refill timer task is running.
    timer: bool,
}

struct Waiter {
    key: MappingKey,
    granted: oneshot::Sender<()>,
}

impl StsBudget {
    pub fn new(max_requests_per_second: u32) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::new(
                max_requests_per_second,
                Instant::now(),
            ))),
            rate_limited: AtomicU64::new(0),
        }
    }

    /// Number of acquisitions that had to wait for a token so far.
    pub fn rate_limited_total(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Acquisitions waiting for a token now, by priority (indexed like
    /// [`Priority::ALL`]).
    pub fn waiting(&self) -> [usize; 2] {
        let state = lock(&self.state);
        [state.waiting[0].len(), state.waiting[1].len()]
    }

    /// Waits for permission to make one STS call for mapping `key`.
    pub async fn acquire(&self, priority: Priority, key: &MappingKey) {
        let (place, granted) = {
            let mut state = lock(&self.state);
            state.refill(Instant::now());
            let nobody_waiting = state.waiting.iter().all(BTreeMap::is_empty);
            if nobody_waiting && state.tokens >= 1.0 {
                state.tokens -= 1.0;
                state.record_grant(priority, key);
                return;
            }
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            let (place, rx) = state.enqueue(priority, key);
            state.dispatch();
            if !state.timer && state.waiting.iter().any(|w| !w.is_empty()) {
                state.timer = true;
                tokio::spawn(run_timer(self.state.clone()));
            }
            (place, rx)
        };
        // Leaves the queue if this future is dropped before its grant.
        let mut guard = Queued {
            state: &self.state,
            priority,
            place,
            done: false,
        };
        // The sender is dropped unsent only with the budget itself.
        let _ = granted.await;
        guard.done = true;
    }
}

/// Removes a waiting acquisition whose future was dropped.
struct Queued<'a> {
    state: &'a Mutex<State>,
    priority: Priority,
    place: Place,
    done: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(self.state).waiting[self.priority.index()].remove(&self.place);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Grants tokens as they refill, while anyone waits.
async fn run_timer(state: Arc<Mutex<State>>) {
    loop {
        let wait = {
            let mut state = lock(&state);
            state.refill(Instant::now());
            state.dispatch();
            if state.waiting.iter().all(BTreeMap::is_empty) {
                state.timer = false;
                return;
            }
            Duration::from_secs_f64(((1.0 - state.tokens) / state.rate).max(0.0))
        };
        tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
    }
}

impl State {
    /// A full bucket at `now`.
    fn new(max_requests_per_second: u32, now: Instant) -> Self {
        let rate = f64::from(max_requests_per_second.max(1));
        State {
            rate,
            burst: rate,
            tokens: rate,
            refilled_at: now,
            waiting: [BTreeMap::new(), BTreeMap::new()],
            arrivals: 0,
            grants: 0,
            last_grant: HashMap::new(),
            cold_streak: 0,
            timer: false,
        }
    }

    /// Queues an acquisition; the receiver fires when it is granted a token.
    fn enqueue(&mut self, priority: Priority, key: &MappingKey) -> (Place, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        self.arrivals += 1;
        let last = self.last_grant.get(key).copied().unwrap_or(0);
        let place = (last, self.arrivals);
        self.waiting[priority.index()].insert(
            place,
            Waiter {
                key: key.clone(),
                granted: tx,
            },
        );
        (place, rx)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled_at = now;
    }

    /// Grants whole tokens to waiting acquisitions in order.
    fn dispatch(&mut self) {
        while self.tokens >= 1.0 {
            let Some(priority) = self.next_priority() else {
                return;
            };
            let Some((_, waiter)) = self.waiting[priority.index()].pop_first() else {
                return;
            };
            // A waiter whose future is gone takes no token.
            if waiter.granted.send(()).is_ok() {
                self.tokens -= 1.0;
                self.record_grant(priority, &waiter.key);
            }
        }
    }

    /// Which queue the next token goes to.
    fn next_priority(&self) -> Option<Priority> {
        let cold = !self.waiting[Priority::Cold.index()].is_empty();
        let background = !self.waiting[Priority::Background.index()].is_empty();
        match (cold, background) {
            (true, true) if self.cold_streak >= COLD_GRANTS_PER_BACKGROUND => {
                Some(Priority::Background)
            }
            (true, _) => Some(Priority::Cold),
            (false, true) => Some(Priority::Background),
            (false, false) => None,
        }
    }

    fn record_grant(&mut self, priority: Priority, key: &MappingKey) {
        self.grants += 1;
        let background_waiting = !self.waiting[Priority::Background.index()].is_empty();
        self.cold_streak = match priority {
            Priority::Cold if background_waiting => self.cold_streak + 1,
            _ => 0,
        };
        self.last_grant.insert(key.clone(), self.grants);
        if self.last_grant.len() as u64 > 2 * REMEMBERED_GRANTS {
            let oldest = self.grants.saturating_sub(REMEMBERED_GRANTS);
            self.last_grant.retain(|_, serial| *serial > oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The grant order is tested on [`State`] directly, with explicit instants: no
    //! timing, no runtime. One test runs [`StsBudget::acquire`] end to end.
    use super::*;
    use crate::creds::AssumeRoleInput;
    use crate::testing::mapping;

    fn key(name: &str) -> MappingKey {
        let input = AssumeRoleInput::for_mapping(&mapping(name, name, None, "t"));
        MappingKey::new(name, &input, None)
    }

    /// A bucket of `rate` per second with its burst spent at `t0`.
    fn drained(rate: u32, t0: Instant) -> State {
        let mut state = State::new(rate, t0);
        state.tokens = 0.0;
        state
    }

    /// Queued acquisitions by name; [`Grants::take`] reports which were granted since.
    struct Grants(Vec<(String, oneshot::Receiver<()>)>);

    impl Grants {
        fn queue(&mut self, state: &mut State, priority: Priority, name: &str) {
            let (_, rx) = state.enqueue(priority, &key(name));
            self.0.push((name.to_string(), rx));
        }

        fn take(&mut self) -> Vec<String> {
            let mut granted = Vec::new();
            self.0.retain_mut(|(name, rx)| match rx.try_recv() {
                Ok(()) => {
                    granted.push(name.clone());
                    false
                }
                Err(_) => true,
            });
            granted
        }
    }

    /// Advances `state` to `t0 + secs` and grants what has refilled.
    fn at(state: &mut State, t0: Instant, secs: f64) {
        state.refill(t0 + Duration::from_secs_f64(secs));
        state.dispatch();
    }

    #[test]
    fn tokens_refill_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut state = drained(5, t0);
        let mut grants = Grants(Vec::new());
        for i in 0..3 {
            grants.queue(&mut state, Priority::Cold, &format!("m{i}"));
        }
        at(&mut state, t0, 0.19);
        assert_eq!(grants.take(), Vec::<String>::new(), "no token before 1/5 s");
        at(&mut state, t0, 0.2);
        assert_eq!(grants.take(), vec!["m0"]);
        at(&mut state, t0, 0.6);
        assert_eq!(grants.take(), vec!["m1", "m2"]);
        // Idle for a minute: the bucket holds the burst, no more.
        at(&mut state, t0, 60.0);
        assert!((state.tokens - 5.0).abs() < 1e-9, "{}", state.tokens);
    }

    #[test]
    fn cold_acquisitions_go_before_background_ones() {
        let t0 = Instant::now();
        let mut state = drained(1, t0);
        let mut grants = Grants(Vec::new());
        grants.queue(&mut state, Priority::Background, "refresh");
        grants.queue(&mut state, Priority::Cold, "cold");
        at(&mut state, t0, 1.0);
        assert_eq!(grants.take(), vec!["cold"]);
        at(&mut state, t0, 2.0);
        assert_eq!(grants.take(), vec!["refresh"]);
    }

    /// A mapping that keeps coming back for tokens (a broken one, hammered) gets one per
    /// round: a mapping that has not had one goes first, even though it asked later.
    #[test]
    fn a_mapping_granted_recently_goes_behind_one_that_was_not() {
        let t0 = Instant::now();
        let mut state = drained(1, t0);
        let mut grants = Grants(Vec::new());
        grants.queue(&mut state, Priority::Cold, "broken");
        at(&mut state, t0, 1.0);
        assert_eq!(grants.take(), vec!["broken"]);
        // It fails and asks again at once; then a healthy mapping asks.
        grants.queue(&mut state, Priority::Cold, "broken");
        grants.queue(&mut state, Priority::Cold, "healthy");
        at(&mut state, t0, 2.0);
        assert_eq!(grants.take(), vec!["healthy"]);
        at(&mut state, t0, 3.0);
        assert_eq!(grants.take(), vec!["broken"]);
    }

    /// However many cold acquisitions keep arriving, background work waiting gets every
    /// (COLD_GRANTS_PER_BACKGROUND + 1)-th token.
    #[test]
    fn background_work_keeps_a_share_under_a_stream_of_cold_misses() {
        let t0 = Instant::now();
        let mut state = drained(1, t0);
        let mut grants = Grants(Vec::new());
        grants.queue(&mut state, Priority::Background, "refresh-1");
        grants.queue(&mut state, Priority::Background, "refresh-2");
        for i in 0..10 {
            grants.queue(&mut state, Priority::Cold, &format!("cold{i}"));
        }
        let mut order = Vec::new();
        for second in 1..=8 {
            at(&mut state, t0, f64::from(second));
            order.extend(grants.take());
        }
        assert_eq!(
            order,
            [
                "cold0",
                "cold1",
                "cold2",
                "refresh-1",
                "cold3",
                "cold4",
                "cold5",
                "refresh-2"
            ]
        );
        // With no background work waiting, cold misses take every token.
        for second in 9..=12 {
            at(&mut state, t0, f64::from(second));
        }
        assert_eq!(grants.take(), ["cold6", "cold7", "cold8", "cold9"]);
    }

    #[test]
    fn an_acquisition_whose_future_is_gone_takes_no_token() {
        let t0 = Instant::now();
        let mut state = drained(1, t0);
        let (_, gone) = state.enqueue(Priority::Cold, &key("gone"));
        drop(gone);
        let mut grants = Grants(Vec::new());
        grants.queue(&mut state, Priority::Cold, "next");
        at(&mut state, t0, 1.0);
        assert_eq!(grants.take(), vec!["next"]);
        assert!(state.waiting.iter().all(BTreeMap::is_empty));
    }

    /// Prefetch at scale: 10,000 background acquisitions fed in the way the prefetch
    /// pass feeds them (64 waiting, one more as each is granted) never get more than
    /// the rate in any second once the burst is spent, and a cold request arriving in
    /// the middle of it is granted the very next token: within one slot (1/rate).
    #[test]
    fn a_10k_prefetch_stays_inside_the_budget_and_a_cold_request_waits_one_slot_at_most() {
        const PREFETCH: usize = 10_000;
        const RATE: u32 = 100;
        const IN_FLIGHT: usize = 64;
        let slot = 1.0 / f64::from(RATE);
        let t0 = Instant::now();
        let mut state = State::new(RATE, t0);
        let mut grants = Grants(Vec::new());
        let mut fed = 0;
        let mut granted_at: Vec<f64> = Vec::new();
        let mut cold_asked = None;
        let mut cold_granted = None;
        // Time advances in tenths of a slot.
        let mut tick = 0u64;
        while granted_at.len() < PREFETCH {
            while fed < PREFETCH && grants.0.len() < IN_FLIGHT {
                grants.queue(&mut state, Priority::Background, &format!("p{fed:05}"));
                fed += 1;
            }
            let now = tick as f64 * slot / 10.0;
            if cold_asked.is_none() && granted_at.len() >= PREFETCH / 2 {
                // Half a slot after the last grant: the bucket is empty.
                grants.queue(&mut state, Priority::Cold, "cold");
                cold_asked = Some(now);
            }
            at(&mut state, t0, now);
            for name in grants.take() {
                if name == "cold" {
                    cold_granted = Some(now);
                } else {
                    granted_at.push(now);
                }
            }
            tick += 1;
            assert!(tick < 100 * PREFETCH as u64, "the prefetch never finished");
        }
        let (asked, granted) = (cold_asked.unwrap(), cold_granted.expect("cold granted"));
        assert!(
            granted - asked <= slot + 1e-9,
            "the cold request waited {:.4} s; one slot is {slot} s",
            granted - asked
        );
        // After the burst: no more than RATE grants in any one-second window.
        let after_burst = &granted_at[RATE as usize..];
        for (i, first) in after_burst.iter().enumerate() {
            let in_window = after_burst[i..]
                .iter()
                .take_while(|at| **at < first + 1.0 - 1e-9)
                .count();
            assert!(
                in_window <= RATE as usize,
                "{in_window} prefetch grants in the second from {first:.2} s; the budget is {RATE}"
            );
        }
        // And the prefetch used the budget: it finished one slot per grant after the
        // burst (the cold request took one).
        let last = *granted_at.last().unwrap();
        let fastest = (PREFETCH + 1 - RATE as usize) as f64 * slot;
        assert!(
            last <= fastest + slot,
            "the prefetch took {last:.2} s; the budget allows {fastest:.2} s"
        );
    }

    /// `acquire` end to end: the burst is free, the next call waits for the timer's
    /// grant, and is counted; a dropped acquisition leaves the queue.
    #[tokio::test]
    async fn acquire_takes_the_burst_then_waits_for_the_timer() {
        let budget = Arc::new(StsBudget::new(20));
        let k = key("m");
        for _ in 0..20 {
            budget.acquire(Priority::Cold, &k).await;
        }
        assert_eq!(budget.rate_limited_total(), 0);
        assert_eq!(budget.waiting(), [0, 0]);
        budget.acquire(Priority::Background, &k).await;
        assert_eq!(budget.rate_limited_total(), 1);

        // Drain whatever refilled, then queue one and drop it while it waits.
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                loop {
                    budget.acquire(Priority::Cold, &key("drop")).await;
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while budget.waiting() != [1, 0] {
            assert!(std::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(budget.waiting(), [0, 0]);
    }
}
