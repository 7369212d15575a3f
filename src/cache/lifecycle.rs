//! Pure lifecycle decisions: is a cached credential servable, when is its refresh due,
//! how long to back off. No I/O, no locks, no clock reads: callers pass `now`, so every
//! rule here is unit-tested with plain values.

use std::time::{Duration, SystemTime};

use crate::creds::Credentials;
use crate::model::Source;
use crate::protocol::CredentialBody;

/// A credential is never served with less than this left
/// (docs/design.md, Credential lifecycle): SDKs need time to use it, and clocks on the
/// worker's side may be a little ahead of ours.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// STS may hand back a credential a little shorter than asked (its clock vs ours); only a
/// shortfall beyond this counts as "shorter than expected".
pub const SHORT_TOLERANCE: Duration = Duration::from_secs(60);

/// Transient-failure retry backoff bounds (exponential, full jitter).
pub const TRANSIENT_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const TRANSIENT_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Negative-cache bounds after a terminal failure (doubling, no jitter needed: requests,
/// not a timer, drive the retry).
pub const TERMINAL_BACKOFF_MIN: Duration = Duration::from_secs(30);
pub const TERMINAL_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// One reading of the injected clock: wall time (expiry, scheduling) and monotonic
/// time (how long a credential has really been held; see [`Entry::remaining`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall: SystemTime,
    pub monotonic: Duration,
}

/// A cached credential and what we knew when it arrived. 72 bytes, 88 with its `Arc`
/// (one per warm mapping; a test pins it): the AccessKeyId is read from the body, and
/// the two durations are kept as nanoseconds.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `Expiration` as STS returned it.
    pub expiration: SystemTime,
    /// The only copy of the secret key and session token credvend keeps: the 200
    /// response body for these credentials, encoded once when they arrived and
    /// shared by every response that serves them (no per-request serialisation).
    pub body: CredentialBody,
    /// [`Now::monotonic`] when STS answered, in nanoseconds (584 years of it).
    received_monotonic: u64,
    /// Time left on the credential, by our wall clock, when it arrived (the most it can
    /// ever have left), in nanoseconds (STS's are at most 12 h).
    lifetime: u64,
    /// STS handed back less than we asked for (see [`is_short`]). Such a credential is
    /// served below `min_remaining` (there is nothing better to serve, and refetching it
    /// on every request would be a tight loop) and refreshed at half its life.
    pub short_lived: bool,
}

impl Entry {
    /// A credential that arrived at `now`.
    /// The secrets live on only in `body` (zeroized when the last response using it is
    /// gone); `creds` is dropped, and zeroized, by the caller.
    pub fn new(creds: &Credentials, body: CredentialBody, now: Now, short_lived: bool) -> Self {
        Self {
            lifetime: nanos(remaining(creds.expiration, now.wall)),
            expiration: creds.expiration,
            body,
            received_monotonic: nanos(now.monotonic),
            short_lived,
        }
    }

    /// `ASIA…`, for the audit line and `/status` (not a secret), read from the body.
    pub fn access_key_id(&self) -> &str {
        self.body.access_key_id()
    }

    /// Time left at `now`: the lesser of what `Expiration` says by the wall clock and
    /// the lifetime it arrived with minus the monotonic time held since. They agree
    /// while the wall clock runs true; after a step back the second still counts down,
    /// so a credential is never served past its real expiry. (A step forward makes the
    /// first one smaller: credentials are refetched early, never served late.)
    pub fn remaining(&self, now: Now) -> Duration {
        let held = now
            .monotonic
            .saturating_sub(Duration::from_nanos(self.received_monotonic));
        let lifetime = Duration::from_nanos(self.lifetime);
        remaining(self.expiration, now.wall).min(lifetime.saturating_sub(held))
    }

    /// Whether this credential may still be served at all at `now` (more than
    /// [`EXPIRY_MARGIN`] left; see [`is_alive`]). Every "is there a usable credential"
    /// decision in the cache asks this.
    pub fn is_alive(&self, now: Now) -> bool {
        is_alive(self.remaining(now))
    }
}

/// `d` in nanoseconds, saturating (at 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether a credential with `left` to live may still be served: more than
/// [`EXPIRY_MARGIN`]. The one rule behind [`Entry::is_alive`], also applied to a
/// credential as STS returns it, before it is an [`Entry`].
pub fn is_alive(left: Duration) -> bool {
    left > EXPIRY_MARGIN
}

/// What the request path may do with a cached entry right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servable {
    /// Serve it without touching STS.
    Yes(Source),
    /// Still valid beyond the margin but under `min_remaining` in the healthy state (an
    /// idle mapping whose refreshes stopped): fetch a new one, and fall back to this one
    /// if STS cannot answer in time.
    Stale,
    /// Expired or inside the expiry margin: never serve it.
    No,
}

/// Time left on `expiration` at `now` (zero once past).
pub fn remaining(expiration: SystemTime, now: SystemTime) -> Duration {
    expiration.duration_since(now).unwrap_or(Duration::ZERO)
}

/// Decides whether `entry` can be served at `now`.
pub fn servability(entry: &Entry, now: Now, degraded: bool, min_remaining: Duration) -> Servable {
    if !entry.is_alive(now) {
        return Servable::No;
    }
    if entry.remaining(now) >= min_remaining {
        Servable::Yes(Source::Cache)
    } else if degraded {
        Servable::Yes(Source::Degraded)
    } else if entry.short_lived {
        Servable::Yes(Source::Cache)
    } else {
        Servable::Stale
    }
}

/// Whether a credential expiring at `expiration`, received at `now`, is shorter than the
/// `requested` session duration by more than [`SHORT_TOLERANCE`].
pub fn is_short(expiration: SystemTime, now: SystemTime, requested: Duration) -> bool {
    remaining(expiration, now) + SHORT_TOLERANCE < requested
}

/// When to refresh a credential received at `now`.
///
/// Normally `refresh_before` before expiry, minus jitter (up to a tenth of
/// `refresh_before`, at most 5 min, scaled by `jitter_unit` in `[0, 1)`) so that
/// mappings fetched together do not refresh together. Jitter only moves refreshes
/// earlier: the healthy-state `min_remaining` floor stays intact. A short-lived credential
/// is refreshed at half its remaining life at the earliest, which rules out a tight loop
/// however short STS makes it.
pub fn refresh_at(
    now: SystemTime,
    expiration: SystemTime,
    refresh_before: Duration,
    short_lived: bool,
    jitter_unit: f64,
) -> SystemTime {
    let life = remaining(expiration, now);
    let jitter_span = (refresh_before / 10).min(Duration::from_secs(300));
    let jitter = jitter_span.mul_f64(jitter_unit.clamp(0.0, 1.0));
    let planned = expiration
        .checked_sub(refresh_before + jitter)
        .unwrap_or(now);
    let floor = if short_lived {
        now + life / 2
    } else {
        // Never schedule into the past or the immediate present.
        now + Duration::from_secs(1).min(life / 2)
    };
    planned.max(floor)
}

/// Transient-failure retry delay after `failures` consecutive failures (≥ 1):
/// exponential from [`TRANSIENT_BACKOFF_MIN`] to [`TRANSIENT_BACKOFF_MAX`], with full
/// jitter inside `[MIN, cap]` from `jitter_unit` in `[0, 1)`.
pub fn transient_backoff(failures: u32, jitter_unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let cap = (TRANSIENT_BACKOFF_MIN * 2u32.pow(exp)).min(TRANSIENT_BACKOFF_MAX);
    let span = cap - TRANSIENT_BACKOFF_MIN;
    TRANSIENT_BACKOFF_MIN + span.mul_f64(jitter_unit.clamp(0.0, 1.0))
}

/// Negative-cache period after `failures` consecutive terminal failures (≥ 1).
pub fn terminal_backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (TERMINAL_BACKOFF_MIN * 2u32.pow(exp)).min(TERMINAL_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretValue;

    /// One per warm mapping: 72 bytes, 88 with its `Arc`'s counts (jemalloc's 96-byte
    /// class), and the AccessKeyId it shows is the one in its body.
    #[test]
    fn an_entry_is_72_bytes_and_shows_its_bodys_access_key_id() {
        assert!(
            std::mem::size_of::<Entry>() <= 72,
            "{} bytes",
            std::mem::size_of::<Entry>()
        );
        let e = entry(Duration::from_secs(3600), false);
        assert_eq!(e.access_key_id(), "ASIATEST");
    }

    const MIN: Duration = Duration::from_secs(60);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn entry(expires_in: Duration, short_lived: bool) -> Entry {
        let creds = Credentials {
            access_key_id: "ASIATEST".into(),
            secret_access_key: SecretValue::new("s"),
            session_token: SecretValue::new("t"),
            expiration: t0() + expires_in,
            assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/r/s".into(),
        };
        let body =
            CredentialBody::encode(&creds, "arn:aws:iam::111122223333:role/r").expect("encodes");
        Entry::new(&creds, body, at(Duration::ZERO), short_lived)
    }

    /// `by` after t0 on both clocks (time passing, no step).
    fn at(by: Duration) -> Now {
        Now {
            wall: t0() + by,
            monotonic: by,
        }
    }

    #[test]
    fn a_wall_clock_step_back_does_not_extend_a_credential() {
        let e = entry(60 * MIN, false);
        // 50 minutes really pass, but the wall clock was stepped back two hours.
        let stepped = Now {
            wall: t0() + 50 * MIN - 120 * MIN,
            monotonic: 50 * MIN,
        };
        assert_eq!(e.remaining(stepped), 10 * MIN);
        assert_eq!(servability(&e, stepped, false, 20 * MIN), Servable::Stale);
        let later = Now {
            wall: stepped.wall + 9 * MIN,
            monotonic: 59 * MIN,
        };
        assert_eq!(servability(&e, later, true, 20 * MIN), Servable::No);
        // A step forward shortens it: refetched early, never served late.
        let forward = Now {
            wall: t0() + 2 * 60 * MIN,
            monotonic: MIN,
        };
        assert_eq!(e.remaining(forward), Duration::ZERO);
    }

    #[test]
    fn a_credential_is_alive_only_with_more_than_the_expiry_margin_left() {
        assert!(is_alive(EXPIRY_MARGIN + Duration::from_secs(1)));
        assert!(!is_alive(EXPIRY_MARGIN));
        assert!(!is_alive(Duration::ZERO));
        let e = entry(60 * MIN, false);
        assert!(e.is_alive(at(Duration::ZERO)));
        assert!(e.is_alive(at(59 * MIN - Duration::from_secs(1))));
        assert!(!e.is_alive(at(59 * MIN)));
        assert!(!e.is_alive(at(2 * 60 * MIN)));
        // By the monotonic clock too: a wall clock stepped back does not revive it.
        let stepped = Now {
            wall: t0(),
            monotonic: 59 * MIN,
        };
        assert!(!e.is_alive(stepped));
    }

    #[test]
    fn healthy_credentials_are_served_only_above_min_remaining() {
        let min_remaining = 20 * MIN;
        let e = entry(60 * MIN, false);
        assert_eq!(
            servability(&e, at(Duration::ZERO), false, min_remaining),
            Servable::Yes(Source::Cache)
        );
        assert_eq!(
            servability(&e, at(40 * MIN), false, min_remaining),
            Servable::Yes(Source::Cache)
        );
        assert_eq!(
            servability(
                &e,
                at(40 * MIN + Duration::from_secs(1)),
                false,
                min_remaining
            ),
            Servable::Stale
        );
    }

    #[test]
    fn degraded_serves_until_the_expiry_margin_and_never_after() {
        let min_remaining = 20 * MIN;
        let e = entry(60 * MIN, false);
        let just_before_margin = at(59 * MIN - Duration::from_secs(1));
        assert_eq!(
            servability(&e, just_before_margin, true, min_remaining),
            Servable::Yes(Source::Degraded)
        );
        assert_eq!(
            servability(&e, at(59 * MIN), true, min_remaining),
            Servable::No
        );
        assert_eq!(
            servability(&e, at(61 * MIN), true, min_remaining),
            Servable::No
        );
    }

    #[test]
    fn short_lived_credentials_are_served_below_min_remaining() {
        let e = entry(10 * MIN, true);
        assert_eq!(
            servability(&e, at(Duration::ZERO), false, 20 * MIN),
            Servable::Yes(Source::Cache)
        );
        assert_eq!(servability(&e, at(9 * MIN), false, 20 * MIN), Servable::No);
    }

    #[test]
    fn shortness_allows_for_clock_skew() {
        assert!(!is_short(t0() + 60 * MIN, t0(), 60 * MIN));
        assert!(!is_short(
            t0() + 59 * MIN + Duration::from_secs(30),
            t0(),
            60 * MIN
        ));
        assert!(is_short(t0() + 15 * MIN, t0(), 60 * MIN));
    }

    #[test]
    fn refresh_is_due_refresh_before_expiry_minus_bounded_jitter() {
        let exp = t0() + 60 * MIN;
        assert_eq!(refresh_at(t0(), exp, 35 * MIN, false, 0.0), t0() + 25 * MIN);
        let latest_jitter = refresh_at(t0(), exp, 35 * MIN, false, 0.999_999);
        assert!(latest_jitter < t0() + 25 * MIN);
        assert!(latest_jitter >= t0() + 25 * MIN - Duration::from_secs(210));
        // The jittered refresh still leaves min_remaining (20 min) after refresh_before.
        assert!(latest_jitter > t0());
    }

    #[test]
    fn short_credentials_refresh_at_half_life_never_in_a_loop() {
        // 10 minutes of life with a 35-minute refresh window: planned time is in the past.
        let at = refresh_at(t0(), t0() + 10 * MIN, 35 * MIN, true, 0.5);
        assert_eq!(at, t0() + 5 * MIN);
        // Even a credential that is already inside its margin is not refreshed at once.
        let at = refresh_at(t0(), t0() + Duration::from_secs(30), 35 * MIN, true, 0.0);
        assert_eq!(at, t0() + Duration::from_secs(15));
    }

    #[test]
    fn transient_backoff_grows_to_a_minute_with_jitter() {
        assert_eq!(transient_backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(transient_backoff(1, 0.99), Duration::from_secs(1));
        assert!(transient_backoff(3, 0.99) <= Duration::from_secs(4));
        assert!(transient_backoff(3, 0.99) > Duration::from_secs(3));
        assert!(transient_backoff(30, 0.999) <= TRANSIENT_BACKOFF_MAX);
        assert!(transient_backoff(30, 0.999) > Duration::from_secs(59));
        assert_eq!(transient_backoff(30, 0.0), TRANSIENT_BACKOFF_MIN);
    }

    #[test]
    fn terminal_backoff_doubles_from_30s_to_10min() {
        assert_eq!(terminal_backoff(1), Duration::from_secs(30));
        assert_eq!(terminal_backoff(2), Duration::from_secs(60));
        assert_eq!(terminal_backoff(5), Duration::from_secs(480));
        assert_eq!(terminal_backoff(6), Duration::from_secs(600));
        assert_eq!(terminal_backoff(u32::MAX), Duration::from_secs(600));
    }
}
