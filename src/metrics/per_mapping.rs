//! The families labelled by `mapping`, kept compactly and rendered straight to text, and
//! their fleet totals (the same counts without the `mapping` label).
//!
//! The `prometheus` crate keeps every series as its own object: a `Vec` of label pairs
//! (owned strings), a descriptor reference and the value, about 500 bytes each. A
//! mapping has up to 23 series here (2 results, 10 failure reasons, 3 sources, 6 states, expiry,
//! enforcement), so with the crate's vectors 10,000 mappings cost ~110 MB of metric
//! bookkeeping alone, and every scrape built 220,000 protobuf objects before encoding
//! them. Here a mapping is one [`Series`] of atomics (about 200 bytes), looked up
//! without a lock, and a scrape writes the text directly. The output is the same text
//! exposition format 0.0.4 the crate's `TextEncoder` writes (labels in name order, one
//! `# HELP`/`# TYPE` pair per family); `promtool check metrics` lints it in
//! tests/metrics_endpoint.rs.
//!
//! Which mappings a scrape writes is the caller's rule (`metrics::mapping_shown`); every
//! mapping, shown or not, keeps counting, and the fleet totals count every event of every
//! registered mapping. The counter totals are atomics of their own rather than sums at
//! scrape time, so a reload that removes a mapping never makes a fleet counter go down.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::creds::FailureReason;
use crate::model::{MappingState, Source};

/// `credvend_credentials_expiry_timestamp_seconds` has no series for this mapping.
const NO_EXPIRY: i64 = i64::MIN;

/// Counters that stay at zero for most mappings (failure reasons, job tokens): no room
/// until the first increment, then `N` atomics of their own. A warm mapping's series
/// is then 128 bytes instead of 224 (docs/performance.md, "Memory and start-up at
/// 100,000 mappings").
#[derive(Debug, Default)]
struct Rare<const N: usize>(OnceLock<Box<[AtomicU64; N]>>);

/// What [`Rare::get`] reads before the first increment.
static ZEROS: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
const _: () = assert!(FailureReason::ALL.len() <= ZEROS.len());

impl<const N: usize> Rare<N> {
    const fn new() -> Self {
        Self(OnceLock::new())
    }

    /// The `N` counters (zeros until the first increment).
    fn get(&self) -> &[AtomicU64] {
        self.0.get().map_or(&ZEROS[..N], |counters| &counters[..])
    }

    /// Adds `n` to counter `i`.
    fn add(&self, i: usize, n: u64) {
        if n > 0 {
            let counters = self
                .0
                .get_or_init(|| Box::new([const { AtomicU64::new(0) }; N]));
            counters[i].fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The counters kept per mapping, and once more for the fleet totals.
#[derive(Debug, Default)]
pub struct Counters {
    /// `credvend_assume_role_total`: `[success, error]`.
    assume_role: [AtomicU64; 2],
    /// `credvend_assume_role_failures_total`, indexed like [`FailureReason::ALL`].
    failures: Rare<{ FailureReason::ALL.len() }>,
    /// `credvend_credentials_served_total`, indexed like [`SOURCES`].
    served: [AtomicU64; SOURCES.len()],
}

/// One counter family: its name, help, the name of its second label and that label's
/// values (in output order, indexing the family's counters), and where its counters are.
/// The fleet family is the same name with `credvend_` replaced by `credvend_fleet_`.
struct CounterFamily {
    name: &'static str,
    fleet_name: &'static str,
    help: &'static str,
    fleet_help: &'static str,
    label: &'static str,
    values: fn(usize) -> &'static str,
    counters: fn(&Counters) -> &[AtomicU64],
}

const RESULTS: [&str; 2] = ["success", "error"];

/// The per-mapping counter families, in output order. A new `mapping`-labelled counter
/// is a field of [`Counters`] and a row here: it is then shown by the same rule and
/// totalled the same way.
const COUNTER_FAMILIES: [CounterFamily; 3] = [
    CounterFamily {
        name: "credvend_assume_role_total",
        fleet_name: "credvend_fleet_assume_role_total",
        help: "AssumeRole calls for a customer role, by mapping and result (success|error).",
        fleet_help: "AssumeRole calls for customer roles, all mappings together, by result (success|error).",
        label: "result",
        values: |i| RESULTS[i],
        counters: |c| &c.assume_role,
    },
    CounterFamily {
        name: "credvend_assume_role_failures_total",
        fleet_name: "credvend_fleet_assume_role_failures_total",
        help: "Failed AssumeRole calls, by mapping and classified reason; access_denied covers a wrong External ID, a missing role and a revoked trust alike.",
        fleet_help: "Failed AssumeRole calls, all mappings together, by classified reason.",
        label: "reason",
        values: |i| FailureReason::ALL[i].as_str(),
        counters: |c| c.failures.get(),
    },
    CounterFamily {
        name: "credvend_credentials_served_total",
        fleet_name: "credvend_fleet_credentials_served_total",
        help: "Credentials served to workers, by mapping and source (cache|fresh|degraded).",
        fleet_help: "Credentials served to workers, all mappings together, by source (cache|fresh|degraded).",
        label: "source",
        values: |i| SOURCES[i].as_str(),
        counters: |c| &c.served,
    },
];

/// Every per-mapping value of one mapping.
#[derive(Debug)]
pub struct Series {
    counters: Counters,
    /// `credvend_credentials_expiry_timestamp_seconds`, or [`NO_EXPIRY`].
    expiry: AtomicI64,
    /// `credvend_mapping_state`: index into [`MappingState::ALL`].
    state: AtomicU8,
    /// `credvend_external_id_enforced`: 1, 0 or -1.
    enforced: AtomicI64,
    /// When a credential was last served ([`Stamp`]).
    last_served: AtomicU64,
    /// When an AssumeRole call last failed ([`Stamp`]).
    last_failure: AtomicU64,
    /// `credvend_job_tokens_{minted,revoked,expired}_total`, indexed like [`JOB_TOKENS`].
    job_tokens: Rare<3>,
}

/// The job token counters, in [`Series::job_tokens`] order: what happened, the family
/// name, its help, the fleet family's name and help.
const JOB_TOKENS: [(&str, &str, &str, &str); 3] = [
    (
        "credvend_job_tokens_minted_total",
        "Job tokens minted on the control socket, by mapping.",
        "credvend_fleet_job_tokens_minted_total",
        "Job tokens minted on the control socket, all mappings together.",
    ),
    (
        "credvend_job_tokens_revoked_total",
        "Job tokens revoked before they expired (DELETE, lease connection closed, mapping removed by a reload), by mapping.",
        "credvend_fleet_job_tokens_revoked_total",
        "Job tokens revoked before they expired, all mappings together.",
    ),
    (
        "credvend_job_tokens_expired_total",
        "Job tokens whose ttl_seconds ran out, by mapping.",
        "credvend_fleet_job_tokens_expired_total",
        "Job tokens whose ttl_seconds ran out, all mappings together.",
    ),
];

/// What happened to a job token, indexing [`JOB_TOKENS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobTokenEvent {
    Minted = 0,
    Revoked = 1,
    Expired = 2,
}

/// A reading of the clock that never steps (`Clock::monotonic`), in milliseconds plus
/// one, so that 0 can mean "never".
struct Stamp;

impl Stamp {
    fn encode(at: Duration) -> u64 {
        u64::try_from(at.as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn decode(stamp: u64) -> Option<Duration> {
        stamp.checked_sub(1).map(Duration::from_millis)
    }

    /// Records `at` in `slot`, skipping the write when the slot already holds it (a
    /// busy mapping's cache hits then only read the shared line).
    fn record(slot: &AtomicU64, at: Duration) {
        let stamp = Self::encode(at);
        if slot.load(Ordering::Relaxed) != stamp {
            slot.store(stamp, Ordering::Relaxed);
        }
    }
}

/// Values of the `source` label, in output order.
pub const SOURCES: [Source; 3] = [Source::Cache, Source::Fresh, Source::Degraded];

/// What the shown-or-not rule looks at for one mapping (`metrics::mapping_shown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// `Clock::monotonic` reading of the last credential served, if any.
    pub last_served: Option<Duration>,
    /// `Clock::monotonic` reading of the last failed AssumeRole call, if any.
    pub last_failure: Option<Duration>,
    /// The mapping's lifecycle state.
    pub state: MappingState,
    /// The External ID enforcement verdict: `Some(false)` is an unsafe trust policy.
    pub enforced: Option<bool>,
}

/// The values of every mapping that nothing has happened to yet ([`Series::new`]): what
/// a scrape and [`PerMapping::with`] see for a mapping without series state of its own.
static IDLE: Series = Series::new();

impl Series {
    /// A newly registered mapping: counters at 0, state `empty`, enforcement unknown,
    /// no expiry, never served, never failed.
    const fn new() -> Self {
        Self {
            counters: Counters {
                assume_role: [const { AtomicU64::new(0) }; 2],
                failures: Rare::new(),
                served: [const { AtomicU64::new(0) }; SOURCES.len()],
            },
            expiry: AtomicI64::new(NO_EXPIRY),
            // `MappingState::ALL[0]` (`indexes_cover_every_label_value` pins it).
            state: AtomicU8::new(0),
            enforced: AtomicI64::new(-1),
            last_served: AtomicU64::new(0),
            last_failure: AtomicU64::new(0),
            job_tokens: Rare::new(),
        }
    }

    /// Whether every value is still [`Series::new`]'s: such a mapping needs no state.
    fn is_idle(&self) -> bool {
        let zero = |counters: &[AtomicU64]| counters.iter().all(|c| c.load(Ordering::Relaxed) == 0);
        zero(&self.counters.assume_role)
            && zero(self.counters.failures.get())
            && zero(&self.counters.served)
            && zero(self.job_tokens.get())
            && self.expiry.load(Ordering::Relaxed) == NO_EXPIRY
            && self.state.load(Ordering::Relaxed) == 0
            && self.enforced.load(Ordering::Relaxed) == -1
            && self.last_served.load(Ordering::Relaxed) == 0
            && self.last_failure.load(Ordering::Relaxed) == 0
    }

    /// Adds what happened to `scratch` (a [`Series::new`] that one event was recorded
    /// in) to this series, which another event created meanwhile: counts add up, the
    /// later stamp wins, a gauge the event set is set.
    fn absorb(&self, scratch: &Series) {
        let add = |into: &[AtomicU64], from: &[AtomicU64]| {
            for (into, from) in into.iter().zip(from) {
                into.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        };
        add(&self.counters.assume_role, &scratch.counters.assume_role);
        let add_rare = |into: &Rare<{ FailureReason::ALL.len() }>, from: &[AtomicU64]| {
            for (i, from) in from.iter().enumerate() {
                into.add(i, from.load(Ordering::Relaxed));
            }
        };
        add_rare(&self.counters.failures, scratch.counters.failures.get());
        add(&self.counters.served, &scratch.counters.served);
        for (i, from) in scratch.job_tokens.get().iter().enumerate() {
            self.job_tokens.add(i, from.load(Ordering::Relaxed));
        }
        self.last_served.fetch_max(
            scratch.last_served.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.last_failure.fetch_max(
            scratch.last_failure.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let expiry = scratch.expiry.load(Ordering::Relaxed);
        if expiry != NO_EXPIRY {
            self.expiry.store(expiry, Ordering::Relaxed);
        }
        let state = scratch.state.load(Ordering::Relaxed);
        if state != 0 {
            self.state.store(state, Ordering::Relaxed);
        }
        let enforced = scratch.enforced.load(Ordering::Relaxed);
        if enforced != -1 {
            self.enforced.store(enforced, Ordering::Relaxed);
        }
    }

    pub fn set_expiry(&self, unix_secs: i64) {
        self.expiry.store(unix_secs, Ordering::Relaxed);
    }

    pub fn clear_expiry(&self) {
        self.expiry.store(NO_EXPIRY, Ordering::Relaxed);
    }

    pub fn set_state(&self, state: MappingState) {
        self.state.store(state_index(state), Ordering::Relaxed);
    }

    pub fn set_enforced(&self, value: i64) {
        self.enforced.store(value, Ordering::Relaxed);
    }

    fn state(&self) -> MappingState {
        MappingState::ALL
            .get(usize::from(self.state.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(MappingState::Empty)
    }

    /// What the shown-or-not rule needs of this mapping, as of now.
    pub fn activity(&self) -> Activity {
        Activity {
            last_served: Stamp::decode(self.last_served.load(Ordering::Relaxed)),
            last_failure: Stamp::decode(self.last_failure.load(Ordering::Relaxed)),
            state: self.state(),
            enforced: match self.enforced.load(Ordering::Relaxed) {
                1 => Some(true),
                0 => Some(false),
                _ => None,
            },
        }
    }
}

impl Counters {
    fn assume_role(&self, outcome: Result<(), FailureReason>) {
        let result = usize::from(outcome.is_err());
        self.assume_role[result].fetch_add(1, Ordering::Relaxed);
        if let Err(reason) = outcome {
            self.failures.add(reason_index(reason), 1);
        }
    }

    fn served(&self, source: Source) {
        self.served[source_index(source)].fetch_add(1, Ordering::Relaxed);
    }
}

fn state_index(state: MappingState) -> u8 {
    MappingState::ALL
        .iter()
        .position(|s| *s == state)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0)
}

fn reason_index(reason: FailureReason) -> usize {
    FailureReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(FailureReason::ALL.len() - 1)
}

fn source_index(source: Source) -> usize {
    SOURCES.iter().position(|s| *s == source).unwrap_or(0)
}

/// Values of the `result` label of `credvend_fleet_external_id_enforced`, indexed by
/// `1 - credvend_external_id_enforced` (1 enforced, 0 not enforced, -1 unknown).
const ENFORCEMENT_RESULTS: [&str; 3] = ["enforced", "not_enforced", "unknown"];

/// The per-mapping series of every configured mapping, and the fleet totals. Reads are
/// lock-free; the set changes only on (re)load, by whole-map replacement.
///
/// A mapping gets its [`Series`] at the first event that leaves a value other than
/// [`Series::new`]'s (a credential served, an AssumeRole call, a state other than
/// `empty`, ...); until then it is a name and an empty slot (~70 bytes instead of
/// ~230), and reads as [`IDLE`]. At 100,000 mappings of which few are in use, that is
/// most of them (docs/performance.md, "Memory and start-up at 100,000 mappings").
#[derive(Debug, Default)]
pub struct PerMapping {
    /// By mapping name, looked up by every credential served (foldhash, randomly
    /// seeded; the names come from the config).
    series: ArcSwap<foldhash::HashMap<Arc<str>, OnceLock<Arc<Series>>>>,
    /// Held while a slot is filled and while [`PerMapping::sync`] copies the filled
    /// slots into the next map, so no series created meanwhile is left behind.
    slots: Mutex<()>,
    /// Every counted event of every registered mapping, shown or not.
    totals: Counters,
    /// The job token counters of every registered mapping, shown or not.
    job_token_totals: [AtomicU64; 3],
}

impl PerMapping {
    /// Runs `f` on `mapping`'s series, if the mapping is registered. Events for a
    /// mapping that a reload has just removed find nothing and are dropped, so a late
    /// fetch result cannot bring a removed mapping's series back.
    ///
    /// A mapping without a series yet: `f` runs on a new one, which is kept only if `f`
    /// changed something (so the scrape's refresh of every mapping's state, which sets
    /// an idle mapping's values to what they are, creates nothing).
    pub fn with(&self, mapping: &str, f: impl FnOnce(&Series)) {
        let map = self.series.load();
        let Some(slot) = map.get(mapping) else {
            return;
        };
        if let Some(series) = slot.get() {
            f(series);
            return;
        }
        let scratch = Series::new();
        f(&scratch);
        if scratch.is_idle() {
            return;
        }
        drop(map);
        let _slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // The current map: a reload may have replaced the one read above.
        let map = self.series.load();
        let Some(slot) = map.get(mapping) else {
            return;
        };
        match slot.get() {
            Some(series) => series.absorb(&scratch),
            None => {
                let _ = slot.set(Arc::new(scratch));
            }
        }
    }

    /// One AssumeRole call for `mapping` finished at `now` (`Clock::monotonic`).
    pub fn assume_role(&self, mapping: &str, outcome: Result<(), FailureReason>, now: Duration) {
        self.with(mapping, |s| {
            s.counters.assume_role(outcome);
            self.totals.assume_role(outcome);
            if outcome.is_err() {
                Stamp::record(&s.last_failure, now);
            }
        });
    }

    /// A credential for `mapping` was served from `source` at `now` (`Clock::monotonic`).
    pub fn served(&self, mapping: &str, source: Source, now: Duration) {
        self.with(mapping, |s| {
            s.counters.served(source);
            self.totals.served(source);
            Stamp::record(&s.last_served, now);
        });
    }

    /// A job token of `mapping` was minted, revoked or expired. A mint is use of the
    /// mapping (it shows for `active_window`, like a credential served at `now`); the
    /// end of a token, which the daemon notices by itself, is not.
    pub fn job_token(&self, mapping: &str, event: JobTokenEvent, now: Duration) {
        self.with(mapping, |s| {
            s.job_tokens.add(event as usize, 1);
            self.job_token_totals[event as usize].fetch_add(1, Ordering::Relaxed);
            if event == JobTokenEvent::Minted {
                Stamp::record(&s.last_served, now);
            }
        });
    }

    /// Makes the set exactly `names`: existing mappings keep their values, new ones
    /// start at zero, missing ones are dropped. Callers serialise writers.
    pub fn sync<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> usize {
        let _slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.series.load();
        let next: foldhash::HashMap<Arc<str>, OnceLock<Arc<Series>>> = names
            .into_iter()
            .map(|name| match current.get_key_value(name) {
                Some((key, slot)) => (key.clone(), slot.clone()),
                None => (Arc::from(name), OnceLock::new()),
            })
            .collect();
        let len = next.len();
        self.series.store(Arc::new(next));
        len
    }

    /// [`PerMapping::sync`] by difference: `added` names (new ones start idle, present
    /// ones keep their state) and `removed` ones. Callers serialise writers.
    pub fn update<'a>(
        &self,
        added: impl IntoIterator<Item = &'a str>,
        removed: &std::collections::BTreeSet<String>,
    ) -> usize {
        let _slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut next: foldhash::HashMap<Arc<str>, OnceLock<Arc<Series>>> =
            (**self.series.load()).clone();
        for name in removed {
            next.remove(name.as_str());
        }
        for name in added {
            if !next.contains_key(name) {
                next.insert(Arc::from(name), OnceLock::new());
            }
        }
        let len = next.len();
        self.series.store(Arc::new(next));
        len
    }

    /// Appends, in text format 0.0.4, the six `mapping`-labelled families for the
    /// mappings `shown` picks, then the fleet families, which cover every mapping.
    /// Families without a series are left out, as the crate's encoder does.
    pub fn render(&self, out: &mut String, shown: impl Fn(&Series) -> bool) {
        let map = self.series.load();
        let mut states = [0i64; MappingState::ALL.len()];
        let mut enforcement = [0i64; ENFORCEMENT_RESULTS.len()];
        let mut mappings: Vec<(&str, &Series)> = Vec::new();
        let mut earliest_expiry: Option<i64> = None;
        for (name, slot) in map.iter() {
            let series = slot.get().map_or(&IDLE, |series| series.as_ref());
            let expiry = series.expiry.load(Ordering::Relaxed);
            if expiry != NO_EXPIRY {
                earliest_expiry = Some(earliest_expiry.map_or(expiry, |e| e.min(expiry)));
            }
            states[usize::from(series.state.load(Ordering::Relaxed)).min(states.len() - 1)] += 1;
            let enforced = series.enforced.load(Ordering::Relaxed).clamp(-1, 1);
            enforcement[usize::try_from(1 - enforced).unwrap_or(2)] += 1;
            if shown(series) {
                mappings.push((name.as_ref(), series));
            }
        }
        mappings.sort_unstable_by_key(|(name, _)| *name);
        // ~22 lines of ~70 bytes per mapping.
        out.reserve(mappings.len() * 22 * 72 + 4096);

        for f in &COUNTER_FAMILIES {
            if mappings.is_empty() {
                break;
            }
            family(out, f.name, f.help, "counter");
            for (name, s) in &mappings {
                for (i, counter) in (f.counters)(&s.counters).iter().enumerate() {
                    sample(
                        out,
                        f.name,
                        name,
                        Some((f.label, (f.values)(i))),
                        load(counter),
                    );
                }
            }
        }

        let with_expiry: Vec<(&str, i64)> = mappings
            .iter()
            .map(|(name, s)| (*name, s.expiry.load(Ordering::Relaxed)))
            .filter(|(_, secs)| *secs != NO_EXPIRY)
            .collect();
        if !with_expiry.is_empty() {
            family(
                out,
                "credvend_credentials_expiry_timestamp_seconds",
                "Unix time at which the credential credvend holds for a mapping expires.",
                "gauge",
            );
            for (name, secs) in with_expiry {
                sample(
                    out,
                    "credvend_credentials_expiry_timestamp_seconds",
                    name,
                    None,
                    secs,
                );
            }
        }

        if !mappings.is_empty() {
            family(
                out,
                "credvend_mapping_state",
                "1 for the mapping's current lifecycle state, 0 for the others (empty|fetching|fresh|refreshing|degraded|failed).",
                "gauge",
            );
            for (name, s) in &mappings {
                let current = usize::from(s.state.load(Ordering::Relaxed));
                for (i, state) in MappingState::ALL.iter().enumerate() {
                    sample(
                        out,
                        "credvend_mapping_state",
                        name,
                        Some(("state", state.as_str())),
                        i64::from(i == current),
                    );
                }
            }

            family(
                out,
                "credvend_external_id_enforced",
                "Whether the customer role's trust policy enforces the External ID: 1 enforced, 0 not enforced (unsafe), -1 unknown or not checked.",
                "gauge",
            );
            for (name, s) in &mappings {
                sample(
                    out,
                    "credvend_external_id_enforced",
                    name,
                    None,
                    s.enforced.load(Ordering::Relaxed),
                );
            }
        }

        // Job token counters only for shown mappings that have had a job token: with
        // 10,000 mappings in use and no control socket they would be 30,000 lines of
        // zeros. A mapping's three series appear together at its first mint (revoked
        // and expired at 0, so their first increase is a visible step).
        let with_jobs: Vec<&(&str, &Series)> = mappings
            .iter()
            .filter(|(_, s)| {
                s.job_tokens.get()[JobTokenEvent::Minted as usize].load(Ordering::Relaxed) > 0
            })
            .collect();
        if !with_jobs.is_empty() {
            for (i, (name, help, _, _)) in JOB_TOKENS.iter().enumerate() {
                family(out, name, help, "counter");
                for (mapping, s) in &with_jobs {
                    sample(out, name, mapping, None, load(&s.job_tokens.get()[i]));
                }
            }
        }

        for f in &COUNTER_FAMILIES {
            family(out, f.fleet_name, f.fleet_help, "counter");
            for (i, counter) in (f.counters)(&self.totals).iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{}{{{}=\"{}\"}} {}",
                    f.fleet_name,
                    f.label,
                    (f.values)(i),
                    load(counter)
                );
            }
        }
        for (i, (_, _, fleet_name, fleet_help)) in JOB_TOKENS.iter().enumerate() {
            family(out, fleet_name, fleet_help, "counter");
            let _ = writeln!(out, "{fleet_name} {}", load(&self.job_token_totals[i]));
        }
        if let Some(earliest) = earliest_expiry {
            family(
                out,
                "credvend_fleet_credentials_expiry_timestamp_seconds",
                "Unix time at which the first of the credentials credvend keeps fresh expires, all mappings together (the earliest credvend_credentials_expiry_timestamp_seconds).",
                "gauge",
            );
            let _ = writeln!(
                out,
                "credvend_fleet_credentials_expiry_timestamp_seconds {earliest}"
            );
        }
        family(
            out,
            "credvend_fleet_mapping_state",
            "Mappings in each lifecycle state (empty|fetching|fresh|refreshing|degraded|failed), all mappings together.",
            "gauge",
        );
        for (state, count) in MappingState::ALL.iter().zip(states) {
            let _ = writeln!(
                out,
                "credvend_fleet_mapping_state{{state=\"{}\"}} {count}",
                state.as_str()
            );
        }
        family(
            out,
            "credvend_fleet_external_id_enforced",
            "Mappings by External ID enforcement result (enforced|not_enforced|unknown), all mappings together.",
            "gauge",
        );
        for (result, count) in ENFORCEMENT_RESULTS.iter().zip(enforcement) {
            let _ = writeln!(
                out,
                "credvend_fleet_external_id_enforced{{result=\"{result}\"}} {count}"
            );
        }
    }
}

fn load(counter: &AtomicU64) -> i64 {
    i64::try_from(counter.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

/// `# HELP` and `# TYPE` lines. Help texts are constants of this file without
/// backslashes or newlines, so they need no escaping.
fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line: `name{mapping="…"[,label="…"]} value`. `mapping` sorts before every
/// other label name used here, matching the crate's label order.
fn sample(out: &mut String, name: &str, mapping: &str, label: Option<(&str, &str)>, value: i64) {
    out.push_str(name);
    out.push_str("{mapping=\"");
    escape_label_value(out, mapping);
    out.push('"');
    if let Some((label, label_value)) = label {
        out.push(',');
        out.push_str(label);
        out.push_str("=\"");
        escape_label_value(out, label_value);
        out.push('"');
    }
    let _ = writeln!(out, "}} {value}");
}

/// Label values escape `\`, `"` and newline (text format 0.0.4). Mapping names are
/// validated to a plain charset today; escaping anyway keeps the output parseable if
/// that rule ever loosens.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl PerMapping {
        /// `mapping`'s series, if it has one of its own.
        fn get(&self, mapping: &str) -> Option<Arc<Series>> {
            self.series.load().get(mapping)?.get().cloned()
        }

        fn registered(&self, mapping: &str) -> bool {
            self.series.load().contains_key(mapping)
        }

        /// How many mappings have a series of their own.
        fn with_state(&self) -> usize {
            let map = self.series.load();
            map.values().filter(|slot| slot.get().is_some()).count()
        }
    }

    fn rendered(p: &PerMapping, shown: impl Fn(&Series) -> bool) -> String {
        let mut out = String::new();
        p.render(&mut out, shown);
        out
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", "a\"b\\c\nd", None, 1);
        assert_eq!(out, "m{mapping=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn sync_keeps_existing_values_and_drops_removed_mappings() {
        let p = PerMapping::default();
        p.sync(["a", "b"]);
        p.served("a", Source::Cache, Duration::ZERO);
        let a = p.get("a").unwrap();
        p.sync(["a", "c"]);
        assert!(Arc::ptr_eq(&a, &p.get("a").unwrap()));
        assert!(!p.registered("b"));
        assert_eq!(load(&p.get("a").unwrap().counters.served[0]), 1);
        assert!(p.registered("c"));
        assert!(
            p.get("c").is_none(),
            "nothing happened to c: no series of its own"
        );
    }

    #[test]
    fn an_idle_mapping_holds_no_series_until_something_happens_to_it() {
        let p = PerMapping::default();
        p.sync(["busy", "failing", "idle", "minted"]);
        // What a scrape's refresh writes for every mapping (Metrics::observe_cache):
        // an idle mapping's values as they are.
        for name in ["busy", "failing", "idle", "minted"] {
            p.with(name, |s| {
                s.set_state(MappingState::Empty);
                s.set_enforced(-1);
                s.clear_expiry();
            });
        }
        assert_eq!(p.with_state(), 0, "refreshing idle values creates nothing");
        p.served("busy", Source::Fresh, Duration::from_secs(5));
        p.assume_role(
            "failing",
            Err(FailureReason::AccessDenied),
            Duration::from_secs(6),
        );
        p.job_token("minted", JobTokenEvent::Minted, Duration::from_secs(7));
        p.with("idle", |s| s.set_state(MappingState::Empty));
        assert_eq!(p.with_state(), 3);
        assert!(p.get("idle").is_none());
        let busy = p.get("busy").expect("served: a series");
        assert_eq!(load(&busy.counters.served[source_index(Source::Fresh)]), 1);
        assert_eq!(busy.activity().last_served, Some(Duration::from_secs(5)));
        let failing = p.get("failing").expect("failed: a series");
        assert_eq!(
            failing.activity().last_failure,
            Some(Duration::from_secs(6))
        );
        // The fleet totals count the event that created the series.
        assert_eq!(load(&p.totals.served[source_index(Source::Fresh)]), 1);
        assert_eq!(load(&p.totals.assume_role[1]), 1);
        // A gauge set to something else than the idle value creates one too.
        p.with("idle", |s| s.set_state(MappingState::Failed));
        assert_eq!(
            p.get("idle")
                .expect("failed state: a series")
                .activity()
                .state,
            MappingState::Failed
        );
    }

    #[test]
    fn a_mapping_without_a_series_renders_as_idle_and_counts_in_the_fleet_gauges() {
        let lazy = PerMapping::default();
        lazy.sync(["a", "b"]);
        lazy.served("a", Source::Cache, Duration::from_secs(1));
        // The same values, every mapping with a series of its own.
        let eager = PerMapping::default();
        eager.sync(["a", "b"]);
        eager.served("a", Source::Cache, Duration::from_secs(1));
        {
            let map = eager.series.load();
            let _ = map["b"].set(Arc::new(Series::new()));
        }
        assert_eq!(eager.with_state(), 2);
        assert_eq!(lazy.with_state(), 1);
        let rules: [fn(&Series) -> bool; 2] = [|_| true, |s| !s.is_idle()];
        for shown in rules {
            assert_eq!(rendered(&lazy, shown), rendered(&eager, shown));
        }
        let all = rendered(&lazy, |_| true);
        assert!(
            all.contains("credvend_mapping_state{mapping=\"b\",state=\"empty\"} 1"),
            "{all}"
        );
        assert!(
            all.contains("credvend_fleet_mapping_state{state=\"empty\"} 2"),
            "{all}"
        );
    }

    #[test]
    fn an_event_racing_the_series_creation_is_added_to_it() {
        let p = PerMapping::default();
        p.sync(["a"]);
        // Another event created the series between this one's look and its lock:
        // the scratch values are added, not lost and not overwriting.
        p.served("a", Source::Cache, Duration::from_secs(3));
        let scratch = Series::new();
        scratch.counters.served(Source::Cache);
        Stamp::record(&scratch.last_served, Duration::from_secs(2));
        scratch.set_state(MappingState::Fresh);
        p.get("a").unwrap().absorb(&scratch);
        let a = p.get("a").unwrap();
        assert_eq!(load(&a.counters.served[source_index(Source::Cache)]), 2);
        assert_eq!(a.activity().last_served, Some(Duration::from_secs(3)));
        assert_eq!(a.activity().state, MappingState::Fresh);
        assert_eq!(
            a.activity().enforced,
            None,
            "not set by the event: unchanged"
        );
    }

    /// What a mapping in use costs in metric state: its `Series` in one `Arc` fits
    /// jemalloc's 128-byte class (the rare counters are made at their first increment).
    #[test]
    fn a_series_without_failures_or_job_tokens_fits_128_bytes_with_its_arc() {
        assert!(
            std::mem::size_of::<Series>() + 2 * std::mem::size_of::<usize>() <= 128,
            "{} bytes",
            std::mem::size_of::<Series>()
        );
        let p = PerMapping::default();
        p.sync(["a"]);
        p.served("a", Source::Cache, Duration::from_secs(1));
        let a = p.get("a").unwrap();
        assert!(a.counters.failures.0.get().is_none());
        assert!(a.job_tokens.0.get().is_none());
        // A failure makes its counters, which then count like the others.
        p.assume_role("a", Err(FailureReason::Throttled), Duration::from_secs(2));
        p.assume_role("a", Err(FailureReason::Throttled), Duration::from_secs(3));
        let throttled = reason_index(FailureReason::Throttled);
        assert_eq!(load(&a.counters.failures.get()[throttled]), 2);
        assert_eq!(load(&p.totals.failures.get()[throttled]), 2);
        assert_eq!(a.counters.failures.get().len(), FailureReason::ALL.len());
    }

    #[test]
    fn indexes_cover_every_label_value() {
        for (i, r) in FailureReason::ALL.iter().enumerate() {
            assert_eq!(reason_index(*r), i);
        }
        for (i, s) in MappingState::ALL.iter().enumerate() {
            assert_eq!(usize::from(state_index(*s)), i);
        }
        // `Series::new` and `Series::is_idle` take index 0 for `empty`.
        assert_eq!(state_index(MappingState::Empty), 0);
        for (i, s) in SOURCES.iter().enumerate() {
            assert_eq!(source_index(*s), i);
        }
    }
}
