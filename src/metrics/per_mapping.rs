//! The families labelled by `mapping`, kept compactly and rendered straight to text.
//!
//! The `prometheus` crate keeps every series as its own object: a `Vec` of label pairs
//! (owned strings), a descriptor reference and the value, about 500 bytes each. A
//! mapping has 22 series here (2 results, 9 failure reasons, 3 sources, 6 states, expiry,
//! enforcement), so with the crate's vectors 10,000 mappings cost ~110 MB of metric
//! bookkeeping alone, and every scrape built 220,000 protobuf objects before encoding
//! them. Here a mapping is one [`Series`] of atomics (about 150 bytes), looked up
//! without a lock, and a scrape writes the text directly. The output is the same text
//! exposition format 0.0.4 the crate's `TextEncoder` writes (labels in name order, one
//! `# HELP`/`# TYPE` pair per family); `promtool check metrics` lints it in
//! tests/deploy_files.rs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::creds::FailureReason;
use crate::model::{MappingState, Source};

/// `credvend_credentials_expiry_timestamp_seconds` has no series for this mapping.
const NO_EXPIRY: i64 = i64::MIN;

/// Every per-mapping value of one mapping.
#[derive(Debug)]
pub struct Series {
    /// `credvend_assume_role_total`: `[success, error]`.
    assume_role: [AtomicU64; 2],
    /// `credvend_assume_role_failures_total`, indexed like [`FailureReason::ALL`].
    failures: [AtomicU64; FailureReason::ALL.len()],
    /// `credvend_credentials_served_total`, indexed like [`SOURCES`].
    served: [AtomicU64; SOURCES.len()],
    /// `credvend_credentials_expiry_timestamp_seconds`, or [`NO_EXPIRY`].
    expiry: AtomicI64,
    /// `credvend_mapping_state`: index into [`MappingState::ALL`].
    state: AtomicU8,
    /// `credvend_external_id_enforced`: 1, 0 or -1.
    enforced: AtomicI64,
    /// `credvend_job_tokens_{minted,revoked,expired}_total`, indexed like [`JOB_TOKENS`].
    job_tokens: [AtomicU64; 3],
}

/// The job token counters, in [`Series::job_tokens`] order: family name and help.
const JOB_TOKENS: [(&str, &str); 3] = [
    (
        "credvend_job_tokens_minted_total",
        "Job tokens minted on the control socket, by mapping.",
    ),
    (
        "credvend_job_tokens_revoked_total",
        "Job tokens revoked before they expired (DELETE, lease connection closed, mapping removed by a reload), by mapping.",
    ),
    (
        "credvend_job_tokens_expired_total",
        "Job tokens whose ttl_seconds ran out, by mapping.",
    ),
];

/// Values of the `source` label, in output order.
pub const SOURCES: [Source; 3] = [Source::Cache, Source::Fresh, Source::Degraded];

impl Series {
    /// A newly registered mapping: counters at 0, state `empty`, enforcement unknown,
    /// no expiry.
    fn new() -> Self {
        Self {
            assume_role: Default::default(),
            failures: Default::default(),
            served: Default::default(),
            expiry: AtomicI64::new(NO_EXPIRY),
            state: AtomicU8::new(state_index(MappingState::Empty)),
            enforced: AtomicI64::new(-1),
            job_tokens: Default::default(),
        }
    }

    /// A job token was minted (`0`), revoked (`1`) or expired (`2`).
    pub fn job_token(&self, index: usize) {
        if let Some(counter) = self.job_tokens.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn assume_role(&self, outcome: Result<(), FailureReason>) {
        let result = usize::from(outcome.is_err());
        self.assume_role[result].fetch_add(1, Ordering::Relaxed);
        if let Err(reason) = outcome {
            self.failures[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn served(&self, source: Source) {
        self.served[source_index(source)].fetch_add(1, Ordering::Relaxed);
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

/// The per-mapping series of every configured mapping. Reads are lock-free; the set
/// changes only on (re)load, by whole-map replacement.
#[derive(Debug, Default)]
pub struct PerMapping {
    series: ArcSwap<HashMap<Arc<str>, Arc<Series>>>,
}

impl PerMapping {
    /// Runs `f` on `mapping`'s series, if the mapping is registered. Events for a
    /// mapping that a reload has just removed find nothing and are dropped, so a late
    /// fetch result cannot bring a removed mapping's series back.
    pub fn with(&self, mapping: &str, f: impl FnOnce(&Series)) {
        if let Some(series) = self.series.load().get(mapping) {
            f(series);
        }
    }

    /// Makes the set exactly `names`: existing mappings keep their values, new ones
    /// start at zero, missing ones are dropped. Callers serialise writers.
    pub fn sync<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> usize {
        let current = self.series.load();
        let next: HashMap<Arc<str>, Arc<Series>> = names
            .into_iter()
            .map(|name| match current.get_key_value(name) {
                Some((key, series)) => (key.clone(), series.clone()),
                None => (Arc::from(name), Arc::new(Series::new())),
            })
            .collect();
        let len = next.len();
        self.series.store(Arc::new(next));
        len
    }

    /// Appends the six families in text format 0.0.4 to `out`. Families without a
    /// series are left out, as the crate's encoder does.
    pub fn render(&self, out: &mut String) {
        let map = self.series.load();
        let mut mappings: Vec<(&str, &Series)> =
            map.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        mappings.sort_unstable_by_key(|(name, _)| *name);
        if mappings.is_empty() {
            return;
        }
        // ~22 lines of ~70 bytes per mapping.
        out.reserve(mappings.len() * 22 * 72);

        family(
            out,
            "credvend_assume_role_total",
            "AssumeRole calls for a customer role, by mapping and result (success|error).",
            "counter",
        );
        for (name, s) in &mappings {
            for (i, result) in ["success", "error"].iter().enumerate() {
                sample(
                    out,
                    "credvend_assume_role_total",
                    name,
                    Some(("result", result)),
                    load(&s.assume_role[i]),
                );
            }
        }

        family(
            out,
            "credvend_assume_role_failures_total",
            "Failed AssumeRole calls, by mapping and classified reason; access_denied covers a wrong External ID, a missing role and a revoked trust alike.",
            "counter",
        );
        for (name, s) in &mappings {
            for (i, reason) in FailureReason::ALL.iter().enumerate() {
                sample(
                    out,
                    "credvend_assume_role_failures_total",
                    name,
                    Some(("reason", reason.as_str())),
                    load(&s.failures[i]),
                );
            }
        }

        family(
            out,
            "credvend_credentials_served_total",
            "Credentials served to workers, by mapping and source (cache|fresh|degraded).",
            "counter",
        );
        for (name, s) in &mappings {
            for (i, source) in SOURCES.iter().enumerate() {
                sample(
                    out,
                    "credvend_credentials_served_total",
                    name,
                    Some(("source", source.as_str())),
                    load(&s.served[i]),
                );
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

        // Job token counters only for mappings that have had a job token: with 10,000
        // mappings and no control socket they would be 30,000 lines of zeros. A
        // mapping's three series appear together at its first mint (revoked and expired
        // at 0, so their first increase is a visible step).
        let with_jobs: Vec<&(&str, &Series)> = mappings
            .iter()
            .filter(|(_, s)| s.job_tokens[0].load(Ordering::Relaxed) > 0)
            .collect();
        if !with_jobs.is_empty() {
            for (i, (name, help)) in JOB_TOKENS.iter().enumerate() {
                family(out, name, help, "counter");
                for (mapping, s) in &with_jobs {
                    sample(out, name, mapping, None, load(&s.job_tokens[i]));
                }
            }
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
        fn get(&self, mapping: &str) -> Option<Arc<Series>> {
            self.series.load().get(mapping).cloned()
        }
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
        p.with("a", |s| s.served(Source::Cache));
        let a = p.get("a").unwrap();
        p.sync(["a", "c"]);
        assert!(Arc::ptr_eq(&a, &p.get("a").unwrap()));
        assert!(p.get("b").is_none());
        assert_eq!(load(&p.get("a").unwrap().served[0]), 1);
        assert_eq!(load(&p.get("c").unwrap().served[0]), 0);
    }

    #[test]
    fn indexes_cover_every_label_value() {
        for (i, r) in FailureReason::ALL.iter().enumerate() {
            assert_eq!(reason_index(*r), i);
        }
        for (i, s) in MappingState::ALL.iter().enumerate() {
            assert_eq!(usize::from(state_index(*s)), i);
        }
        for (i, s) in SOURCES.iter().enumerate() {
            assert_eq!(source_index(*s), i);
        }
    }
}
