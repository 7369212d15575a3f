//! STS regional failover: the order in which regions are tried and one circuit breaker
//! per region (docs/design.md, Regional failover).
//!
//! STS is regional: credentials from any enabled region's STS work everywhere, and the
//! request quotas are per region. `[sts] region` is the primary, `fallback_regions` the
//! others in order. A call for region `R` (a mapping's own `region`, or the primary)
//! tries `R` first, then the configured chain without `R` ([`Regions::plan`]).
//!
//! What an answer means ([`Verdict`], [`fails_over`]):
//!
//! | answer | next region at once? | the region's breaker |
//! |---|---|---|
//! | network error, timeout, 5xx | yes | a failure |
//! | `Throttling` (the per-region quota is spent) | yes | a failure |
//! | `RegionDisabledException` (one customer's account) | yes | unchanged |
//! | `AccessDenied`, validation errors (terminal) | no | a success: the region answered |
//! | success, `ExpiredToken` (base identity) | no | a success |
//! | no base credentials, unparseable answer | no | unchanged |
//!
//! `RegionDisabledException` is about the account whose role is assumed, not the region
//! as such, so one customer with a disabled region does not move everyone else away.
//!
//! **The breaker** ([`Breaker`]): *closed* (used) until [`FAILURE_THRESHOLD`]
//! consecutive failures; then *open* (skipped) for [`COOL_DOWN`]; then *half-open*: the
//! next call that plans it makes one probe call there while other calls keep skipping
//! it; the probe's success closes the breaker, its failure opens it for another
//! cool-down. Time is the daemon's injected [`Clock::monotonic`], so tests drive it with
//! a manual clock. A call whose every region is skipped still makes one attempt, at the
//! first region of its plan (the last resort): with every region down, credvend behaves
//! as with a single region (the cache backs off and serves what it still has), and a
//! region that recovers is found by the next call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::FailureReason;
use crate::clock::{Clock, SystemClock};

/// Consecutive failures that open a region's breaker.
pub const FAILURE_THRESHOLD: u32 = 3;
/// How long an open breaker skips its region before a probe call.
pub const COOL_DOWN: Duration = Duration::from_secs(30);

/// Whether a failure sends the call on to the next region at once.
pub fn fails_over(reason: FailureReason) -> bool {
    matches!(
        reason,
        FailureReason::Network
            | FailureReason::Timeout
            | FailureReason::ServerError
            | FailureReason::Throttled
            | FailureReason::RegionDisabled
    )
}

/// What one attempt's outcome says about its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The region answered.
    Up,
    /// The region failed (counts towards opening its breaker).
    Down(FailureReason),
    /// Says nothing about the region.
    Neutral,
}

impl Verdict {
    pub fn of(outcome: Result<(), FailureReason>) -> Verdict {
        match outcome {
            Ok(()) => Verdict::Up,
            Err(
                reason @ (FailureReason::Network
                | FailureReason::Timeout
                | FailureReason::ServerError
                | FailureReason::Throttled),
            ) => Verdict::Down(reason),
            Err(
                FailureReason::RegionDisabled
                | FailureReason::NoBaseCredentials
                | FailureReason::Other,
            ) => Verdict::Neutral,
            Err(
                FailureReason::AccessDenied
                | FailureReason::InvalidRequest
                | FailureReason::ExpiredBaseCredentials,
            ) => Verdict::Up,
        }
    }
}

/// A breaker's state, as `/status` and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// In use.
    Closed,
    /// Skipped until the cool-down ends.
    Open,
    /// Cool-down over: the next call probes it.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may use a region now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: use it.
    Use,
    /// Half-open: use it, as the one probe call.
    Probe,
    /// Open, or half-open with a probe in flight: skip it.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    /// Skipped until `until` ([`Clock::monotonic`]).
    Open {
        until: Duration,
    },
    HalfOpen {
        probing: bool,
    },
}

/// One region's circuit breaker: a pure state machine over monotonic time `now`.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    consecutive_failures: u32,
    last_error: Option<FailureReason>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: State::Closed,
            consecutive_failures: 0,
            last_error: None,
        }
    }
}

impl Breaker {
    /// Whether a call may use the region at `now`; a probe admission marks the probe
    /// as in flight.
    pub fn admit(&mut self, now: Duration) -> Admission {
        match self.state {
            State::Closed => Admission::Use,
            State::Open { until } if now < until => Admission::Skip,
            State::Open { .. } | State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                Admission::Probe
            }
            State::HalfOpen { probing: true } => Admission::Skip,
        }
    }

    /// The outcome of a call admitted (or forced as the last resort) at `now`.
    pub fn record(&mut self, verdict: Verdict, now: Duration) {
        match verdict {
            Verdict::Up => {
                self.state = State::Closed;
                self.consecutive_failures = 0;
            }
            Verdict::Down(reason) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(reason);
                let opens = match self.state {
                    State::Closed => self.consecutive_failures >= FAILURE_THRESHOLD,
                    // A failed probe or last-resort call: another cool-down.
                    State::Open { .. } | State::HalfOpen { .. } => true,
                };
                if opens {
                    self.state = State::Open {
                        until: now + COOL_DOWN,
                    };
                }
            }
            Verdict::Neutral => self.abandon(),
        }
    }

    /// A probe that ended without a verdict (cancelled, or an answer that says nothing
    /// about the region): the next call may probe again.
    pub fn abandon(&mut self) {
        if self.state == (State::HalfOpen { probing: true }) {
            self.state = State::HalfOpen { probing: false };
        }
    }

    pub fn state(&self, now: Duration) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When an open breaker lets a probe through, from `now`.
    pub fn next_probe_in(&self, now: Duration) -> Option<Duration> {
        match self.state {
            State::Open { until } => Some(until.saturating_sub(now)),
            _ => None,
        }
    }
}

/// One region's health, for `/status` and the metrics. No secret in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionHealth {
    pub region: String,
    /// Whether this is a configured region (primary or fallback) rather than only a
    /// mapping's own.
    pub role: RegionRole,
    pub state: BreakerState,
    pub consecutive_failures: u32,
    /// The reason of the latest failure that counted against the region.
    pub last_error: Option<FailureReason>,
    /// For an open breaker: how long until the next probe.
    pub next_probe_in: Option<Duration>,
}

/// Where a region comes from in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionRole {
    /// `[sts] region`.
    Primary,
    /// `[sts] fallback_regions`.
    Fallback,
    /// Only a mapping's own `region`.
    Mapping,
}

impl RegionRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionRole::Primary => "primary",
            RegionRole::Fallback => "fallback",
            RegionRole::Mapping => "mapping",
        }
    }
}

/// The regions of one STS client and their breakers; a clone shares the breakers.
#[derive(Clone)]
pub struct Regions {
    /// Primary first, then the fallbacks in order.
    chain: Vec<String>,
    state: Arc<Mutex<Shared>>,
}

struct Shared {
    clock: Arc<dyn Clock>,
    breakers: BTreeMap<String, Breaker>,
}

impl std::fmt::Debug for Regions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Regions")
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl Regions {
    /// `primary` then `fallbacks`, timed on the system clock until [`Regions::use_clock`].
    pub fn new(primary: &str, fallbacks: &[String]) -> Self {
        let mut chain = vec![primary.to_owned()];
        for region in fallbacks {
            if !chain.contains(region) {
                chain.push(region.clone());
            }
        }
        let breakers = chain
            .iter()
            .map(|r| (r.clone(), Breaker::default()))
            .collect();
        Self {
            chain,
            state: Arc::new(Mutex::new(Shared {
                clock: Arc::new(SystemClock),
                breakers,
            })),
        }
    }

    /// Times the cool-downs on `clock` (the daemon's) from now on.
    pub fn use_clock(&self, clock: Arc<dyn Clock>) {
        self.lock().clock = clock;
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Every mutation is a single assignment: a panicking holder leaves it consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Primary first, then the fallbacks.
    pub fn chain(&self) -> &[String] {
        &self.chain
    }

    /// The regions a call for `first` tries, in order: `first`, then the chain without it.
    pub fn plan(&self, first: &str) -> Vec<String> {
        std::iter::once(first.to_owned())
            .chain(self.chain.iter().filter(|r| *r != first).cloned())
            .collect()
    }

    /// Whether a call may use `region` now. The ticket records the outcome.
    pub fn admit(&self, region: &str) -> Option<Ticket> {
        let mut shared = self.lock();
        let now = shared.clock.monotonic();
        let admission = shared
            .breakers
            .entry(region.to_owned())
            .or_default()
            .admit(now);
        (admission != Admission::Skip).then(|| self.ticket(region))
    }

    /// A ticket for `region` whatever its breaker says (the last resort).
    pub fn force(&self, region: &str) -> Ticket {
        self.lock().breakers.entry(region.to_owned()).or_default();
        self.ticket(region)
    }

    fn ticket(&self, region: &str) -> Ticket {
        Ticket {
            region: region.to_owned(),
            state: self.state.clone(),
            recorded: false,
        }
    }

    /// Every region's health: the chain in order, then mappings' own regions by name.
    pub fn health(&self) -> Vec<RegionHealth> {
        let shared = self.lock();
        let now = shared.clock.monotonic();
        let role = |region: &str| match self.chain.iter().position(|r| r == region) {
            Some(0) => RegionRole::Primary,
            Some(_) => RegionRole::Fallback,
            None => RegionRole::Mapping,
        };
        let health = |region: &String, b: &Breaker| RegionHealth {
            region: region.clone(),
            role: role(region),
            state: b.state(now),
            consecutive_failures: b.consecutive_failures(),
            last_error: b.last_error,
            next_probe_in: b.next_probe_in(now),
        };
        let mut out: Vec<RegionHealth> = self
            .chain
            .iter()
            .filter_map(|r| shared.breakers.get(r).map(|b| health(r, b)))
            .collect();
        out.extend(
            shared
                .breakers
                .iter()
                .filter(|(r, _)| !self.chain.contains(r))
                .map(|(r, b)| health(r, b)),
        );
        out
    }
}

/// An admission to one region: [`Ticket::record`] the outcome; dropped unrecorded (the
/// call was cancelled), a probe is given up so the next call may probe.
pub struct Ticket {
    region: String,
    state: Arc<Mutex<Shared>>,
    recorded: bool,
}

impl Ticket {
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Records the attempt's outcome; returns the breaker's state after it.
    pub fn record(mut self, outcome: Result<(), FailureReason>) -> BreakerState {
        self.recorded = true;
        let mut shared = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = shared.clock.monotonic();
        let breaker = shared.breakers.entry(self.region.clone()).or_default();
        breaker.record(Verdict::of(outcome), now);
        breaker.state(now)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.recorded {
            let mut shared = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(breaker) = shared.breakers.get_mut(&self.region) {
                breaker.abandon();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use FailureReason::*;

    const T0: Duration = Duration::from_secs(1000);

    fn fail(b: &mut Breaker, reason: FailureReason, now: Duration) {
        b.record(Verdict::of(Err(reason)), now);
    }

    #[test]
    fn closed_breaker_opens_after_the_threshold_of_consecutive_failures() {
        let mut b = Breaker::default();
        for i in 1..FAILURE_THRESHOLD {
            assert_eq!(b.admit(T0), Admission::Use);
            fail(&mut b, Network, T0);
            assert_eq!(b.state(T0), BreakerState::Closed, "after {i} failures");
        }
        fail(&mut b, ServerError, T0);
        assert_eq!(b.state(T0), BreakerState::Open);
        assert_eq!(b.consecutive_failures(), FAILURE_THRESHOLD);
        assert_eq!(b.last_error, Some(ServerError));
        assert_eq!(b.next_probe_in(T0), Some(COOL_DOWN));
        assert_eq!(
            b.admit(T0 + COOL_DOWN - Duration::from_millis(1)),
            Admission::Skip
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::default();
        for _ in 1..FAILURE_THRESHOLD {
            fail(&mut b, Timeout, T0);
        }
        b.record(Verdict::Up, T0);
        fail(&mut b, Timeout, T0);
        assert_eq!(b.state(T0), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 1);
    }

    #[test]
    fn answers_from_the_region_count_as_up_and_others_as_nothing() {
        for reason in [AccessDenied, InvalidRequest, ExpiredBaseCredentials] {
            assert_eq!(Verdict::of(Err(reason)), Verdict::Up, "{reason}");
            assert!(
                !fails_over(reason),
                "{reason} is terminal or not the region's"
            );
        }
        for reason in [Network, Timeout, ServerError, Throttled] {
            assert_eq!(Verdict::of(Err(reason)), Verdict::Down(reason), "{reason}");
            assert!(fails_over(reason), "{reason}");
        }
        assert_eq!(Verdict::of(Err(RegionDisabled)), Verdict::Neutral);
        assert!(fails_over(RegionDisabled));
        for reason in [NoBaseCredentials, Other] {
            assert_eq!(Verdict::of(Err(reason)), Verdict::Neutral, "{reason}");
            assert!(!fails_over(reason), "{reason}");
        }
        // Terminal answers in between keep a failing region from opening: they came
        // from it.
        let mut b = Breaker::default();
        for _ in 0..10 {
            fail(&mut b, Network, T0);
            fail(&mut b, AccessDenied, T0);
        }
        assert_eq!(b.state(T0), BreakerState::Closed);
    }

    #[test]
    fn after_the_cool_down_one_probe_goes_through_and_its_answer_decides() {
        let mut b = Breaker::default();
        for _ in 0..FAILURE_THRESHOLD {
            fail(&mut b, Network, T0);
        }
        let later = T0 + COOL_DOWN;
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Probe);
        // While the probe is in flight, everyone else skips the region.
        assert_eq!(b.admit(later), Admission::Skip);
        // The probe fails: another full cool-down from then.
        fail(&mut b, Network, later);
        assert_eq!(b.state(later), BreakerState::Open);
        assert_eq!(b.next_probe_in(later), Some(COOL_DOWN));
        let again = later + COOL_DOWN;
        assert_eq!(b.admit(again), Admission::Probe);
        b.record(Verdict::Up, again);
        assert_eq!(b.state(again), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.admit(again), Admission::Use);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe() {
        let mut b = Breaker::default();
        for _ in 0..FAILURE_THRESHOLD {
            fail(&mut b, Network, T0);
        }
        let later = T0 + COOL_DOWN;
        assert_eq!(b.admit(later), Admission::Probe);
        b.record(Verdict::Neutral, later);
        assert_eq!(b.admit(later), Admission::Probe);
    }

    #[test]
    fn a_failing_last_resort_call_renews_the_cool_down() {
        let mut b = Breaker::default();
        for _ in 0..FAILURE_THRESHOLD {
            fail(&mut b, Network, T0);
        }
        let mid = T0 + COOL_DOWN / 2;
        fail(&mut b, Network, mid);
        assert_eq!(b.next_probe_in(mid), Some(COOL_DOWN));
    }

    #[test]
    fn plans_start_with_the_asked_region_then_the_chain() {
        let regions = Regions::new("us-east-1", &["us-west-2".into(), "eu-west-1".into()]);
        assert_eq!(
            regions.plan("us-east-1"),
            ["us-east-1", "us-west-2", "eu-west-1"]
        );
        assert_eq!(
            regions.plan("us-west-2"),
            ["us-west-2", "us-east-1", "eu-west-1"]
        );
        assert_eq!(
            regions.plan("ap-south-1"),
            ["ap-south-1", "us-east-1", "us-west-2", "eu-west-1"]
        );
    }

    #[test]
    fn tickets_drive_the_breakers_on_the_injected_clock() {
        let clock = ManualClock::starting_now();
        let regions = Regions::new("us-east-1", &["us-west-2".into()]);
        regions.use_clock(Arc::new(clock.clone()));
        for _ in 0..FAILURE_THRESHOLD {
            regions
                .admit("us-east-1")
                .expect("closed")
                .record(Err(Timeout));
        }
        assert!(regions.admit("us-east-1").is_none(), "open: skipped");
        let health = regions.health();
        assert_eq!(health[0].region, "us-east-1");
        assert_eq!(health[0].role, RegionRole::Primary);
        assert_eq!(health[0].state, BreakerState::Open);
        assert_eq!(health[0].last_error, Some(Timeout));
        assert_eq!(health[0].next_probe_in, Some(COOL_DOWN));
        assert_eq!(health[1].state, BreakerState::Closed);
        assert_eq!(health[1].role, RegionRole::Fallback);

        clock.advance(COOL_DOWN);
        let probe = regions.admit("us-east-1").expect("half-open: probe");
        assert!(regions.admit("us-east-1").is_none(), "one probe at a time");
        drop(probe);
        let probe = regions
            .admit("us-east-1")
            .expect("an abandoned probe is retried");
        assert_eq!(probe.record(Ok(())), BreakerState::Closed);
        assert_eq!(regions.health()[0].state, BreakerState::Closed);

        // A mapping's own region gets a breaker of its own, listed after the chain.
        regions.force("ap-south-1").record(Err(Network));
        let health = regions.health();
        assert_eq!(health[2].region, "ap-south-1");
        assert_eq!(health[2].role, RegionRole::Mapping);
        assert_eq!(health[2].consecutive_failures, 1);
    }
}
