//! External ID enforcement check (DESIGN.md §5).
//!
//! A customer role whose trust policy forgets `Condition.StringEquals.sts:ExternalId`
//! can be assumed by anyone who can reach the vendor's principal — any other customer
//! of the vendor included (the confused-deputy problem). The check asks STS directly:
//! it calls AssumeRole for the mapping's role with **no** External ID and with a
//! **random wrong** one. Both must be refused with `AccessDenied`. Any credential a
//! probe happens to obtain is dropped on the spot: never cached, served or logged.
//!
//! Probes differ from the mapping's real call only in the External ID, a 900-second
//! duration (the minimum, so MaxSessionDuration cannot interfere) and a session name
//! that makes them recognisable in the customer's CloudTrail.

use std::time::Duration;

use crate::creds::{AssumeError, AssumeRoleInput, FailureReason, RoleAssumer};
use crate::policy;
use crate::secret::ExternalId;

/// Session name of probe calls, visible in the customer's CloudTrail.
pub const PROBE_SESSION_NAME: &str = "credvend-external-id-check";

/// The shortest session STS allows.
const PROBE_DURATION: Duration = Duration::from_secs(900);

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
pub enum Enforcement {
    #[default]
    Unknown,
    Enforced,
    NotEnforced,
}

impl Enforcement {
    /// Gauge value: 1 enforced, 0 not, -1 unknown.
    pub fn gauge(self) -> i64 {
        match self {
            Enforcement::Enforced => 1,
            Enforcement::NotEnforced => 0,
            Enforcement::Unknown => -1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Enforced => "enforced",
            Enforcement::NotEnforced => "not_enforced",
            Enforcement::Unknown => "unknown",
        }
    }
}

impl From<Verdict> for Enforcement {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Enforced => Enforcement::Enforced,
            Verdict::NotEnforced(_) => Enforcement::NotEnforced,
        }
    }
}

/// The probe inputs for a mapping's real AssumeRole input.
pub fn probe_inputs(input: &AssumeRoleInput) -> [(Probe, AssumeRoleInput); 2] {
    let probe = |external_id: Option<ExternalId>| AssumeRoleInput {
        external_id,
        duration: PROBE_DURATION,
        session_name: PROBE_SESSION_NAME.to_string(),
        ..input.clone()
    };
    [
        (Probe::WithoutExternalId, probe(None)),
        (
            Probe::WrongExternalId,
            probe(Some(ExternalId::new(policy::new_external_id()))),
        ),
    ]
}

/// Runs both probes through `assumer`. `before_call` runs before each STS call (the
/// daemon takes a token from its STS budget there).
///
/// Returns the verdict, or the STS error that made the check inconclusive: a transient
/// one (throttling, timeout …) means "unknown, try again later"; a terminal one other
/// than AccessDenied (region disabled, invalid request) means the real call would fail
/// the same way.
pub async fn check_external_id_enforcement<F, Fut>(
    assumer: &dyn RoleAssumer,
    input: &AssumeRoleInput,
    mut before_call: F,
) -> Result<Verdict, AssumeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for (probe, probe_input) in probe_inputs(input) {
        before_call().await;
        match assumer.assume_role(&probe_input).await {
            // Dropped here: a probe's credential is never used.
            Ok(_unused) => return Ok(Verdict::NotEnforced(probe)),
            Err(error) if error.reason == FailureReason::AccessDenied => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(Verdict::Enforced)
}
