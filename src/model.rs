//! The mapping vocabulary shared by the cache, the metrics, the events, the HTTP layer
//! and the enforcement check: a mapping's lifecycle state, where a served credential
//! came from, the `/status` view of one mapping, why a fetch failed, and the External ID
//! enforcement verdict. Types with small accessors only (label strings, gauge values,
//! error codes), no I/O and no decisions; a leaf below `verify`, `metrics`, `events`,
//! `cache` and `server`, so none of them has to reach into another for a word they
//! share.

use std::fmt;
use std::time::SystemTime;

use crate::config::EnforcementMode;
use crate::creds::{AssumeError, FailureReason};

/// Where a served credential came from (metric label `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Served from cache in the healthy state.
    Cache,
    /// Fetched from STS for this request (a cold miss).
    Fresh,
    /// Served from cache while refreshes are failing.
    Degraded,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Fresh => "fresh",
            Source::Degraded => "degraded",
        }
    }
}

/// Per-mapping state (docs/design.md, Credential lifecycle), reported in `/status` and
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingState {
    /// No credential and nothing in flight.
    Empty,
    /// First fetch in flight; nothing to serve yet.
    Fetching,
    /// A servable credential; no fetch in flight.
    Fresh,
    /// A servable credential while its replacement is being fetched.
    Refreshing,
    /// Refresh failing transiently; the last credential is served until
    /// `EXPIRY_MARGIN` (see src/cache/lifecycle.rs) before its expiry.
    Degraded,
    /// Terminal error (the role refused us); negatively cached with backoff.
    Failed,
}

impl MappingState {
    pub const ALL: [MappingState; 6] = [
        MappingState::Empty,
        MappingState::Fetching,
        MappingState::Fresh,
        MappingState::Refreshing,
        MappingState::Degraded,
        MappingState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MappingState::Empty => "empty",
            MappingState::Fetching => "fetching",
            MappingState::Fresh => "fresh",
            MappingState::Refreshing => "refreshing",
            MappingState::Degraded => "degraded",
            MappingState::Failed => "failed",
        }
    }
}

/// What the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Both probes were refused: the role requires the External ID.
    Enforced,
    /// The role accepted a probe; which one.
    NotEnforced(Probe),
}

/// The two probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    WithoutExternalId,
    WrongExternalId,
}

impl Probe {
    pub fn describe(self) -> &'static str {
        match self {
            Probe::WithoutExternalId => "without an External ID",
            Probe::WrongExternalId => "with a wrong External ID",
        }
    }
}

/// Enforcement state as reported in metrics (`credvend_external_id_enforced`) and
/// `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnforcementStatus {
    #[default]
    Unknown,
    Enforced,
    NotEnforced,
}

impl EnforcementStatus {
    /// Gauge value: 1 enforced, 0 not, -1 unknown.
    pub fn gauge(self) -> i64 {
        match self {
            EnforcementStatus::Enforced => 1,
            EnforcementStatus::NotEnforced => 0,
            EnforcementStatus::Unknown => -1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementStatus::Enforced => "enforced",
            EnforcementStatus::NotEnforced => "not_enforced",
            EnforcementStatus::Unknown => "unknown",
        }
    }
}

impl From<Verdict> for EnforcementStatus {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Enforced => EnforcementStatus::Enforced,
            Verdict::NotEnforced(_) => EnforcementStatus::NotEnforced,
        }
    }
}

/// Point-in-time view of one mapping, for `/status` and readiness.
#[derive(Debug, Clone)]
pub struct MappingStatus {
    pub name: String,
    pub state: MappingState,
    pub expires_at: Option<SystemTime>,
    pub access_key_id: Option<String>,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<(FetchError, SystemTime)>,
    pub next_refresh: Option<SystemTime>,
    /// Backing off after a transient failure: until then, a request that finds nothing
    /// servable is answered 503 without an STS call. `None` when not in a backoff.
    pub retry_at: Option<SystemTime>,
    pub prefetch: bool,
    /// External ID enforcement check result and when it was last conclusive.
    pub enforcement: EnforcementStatus,
    pub enforcement_checked_at: Option<SystemTime>,
    pub enforcement_mode: EnforcementMode,
}

/// Why a fetch produced no credential.
#[derive(Debug, Clone)]
pub enum FetchError {
    /// STS refused or failed (classified).
    Sts(AssumeError),
    /// The enforcement check found the role accepting a probe (`require` mode).
    UnsafeTrustPolicy(Probe),
}

impl FetchError {
    /// Terminal errors evict, answer 403 and are negatively cached.
    pub fn is_terminal(&self) -> bool {
        match self {
            FetchError::Sts(error) => error.reason.is_terminal(),
            FetchError::UnsafeTrustPolicy(_) => true,
        }
    }

    /// AWS error code, or `TrustPolicyUnsafe`.
    pub fn code(&self) -> &str {
        match self {
            FetchError::Sts(error) => &error.code,
            FetchError::UnsafeTrustPolicy(_) => "TrustPolicyUnsafe",
        }
    }

    /// The STS failure reason, if STS failed.
    pub fn reason(&self) -> Option<FailureReason> {
        match self {
            FetchError::Sts(error) => Some(error.reason),
            FetchError::UnsafeTrustPolicy(_) => None,
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Sts(error) => write!(f, "{error}"),
            FetchError::UnsafeTrustPolicy(probe) => write!(
                f,
                "TrustPolicyUnsafe: the role can be assumed {}",
                probe.describe()
            ),
        }
    }
}
