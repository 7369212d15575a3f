//! External ID enforcement check (docs/design.md, Credential lifecycle).
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

use std::time::{Duration, SystemTime};

use crate::aws_names::SessionName;
use crate::config::EnforcementMode;
use crate::creds::{AssumeError, AssumeRoleInput, FailureReason, RoleAssumer};
use crate::model::FetchError;
use crate::policy;
use crate::secret::ExternalId;

/// Session name of probe calls, visible in the customer's CloudTrail.
pub const PROBE_SESSION_NAME: &str = "credvend-external-id-check";

/// The shortest session STS allows.
const PROBE_DURATION: Duration = Duration::from_secs(900);

use crate::model::{EnforcementStatus, Probe, Verdict};

/// The probe inputs for a mapping's real AssumeRole input.
pub fn probe_inputs(input: &AssumeRoleInput) -> [(Probe, AssumeRoleInput); 2] {
    let probe = |external_id: Option<ExternalId>| AssumeRoleInput {
        external_id,
        duration: PROBE_DURATION,
        session_name: SessionName::try_from(PROBE_SESSION_NAME.to_owned())
            .expect("the probe's session name is a valid one"),
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

/// Runs both probes through `assumer`. `before_call` runs before each STS call and what
/// it returns is held until that call has answered (the daemon waits for a token of its
/// STS budget there and holds one of its concurrency permits during the call).
///
/// Returns the verdict, or the STS error that made the check inconclusive: a transient
/// one (throttling, timeout …) means "unknown, try again later"; a terminal one other
/// than AccessDenied (region disabled, invalid request) means the real call would fail
/// the same way.
pub async fn check_external_id_enforcement<F, Fut, G>(
    assumer: &dyn RoleAssumer,
    input: &AssumeRoleInput,
    mut before_call: F,
) -> Result<Verdict, AssumeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = G>,
{
    for (probe, probe_input) in probe_inputs(input) {
        let held = before_call().await;
        let result = assumer.assume_role(&probe_input).await;
        drop(held);
        match result {
            // Dropped here: a probe's credential is never used.
            Ok(_unused) => return Ok(Verdict::NotEnforced(probe)),
            Err(error) if error.reason == FailureReason::AccessDenied => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(Verdict::Enforced)
}

/// Whether a mapping's check is due at `now`: it never reached a conclusive result, or
/// `recheck_interval` has passed since the last one (`checked_at`).
pub fn check_due(
    checked_at: Option<SystemTime>,
    now: SystemTime,
    recheck_interval: Duration,
) -> bool {
    checked_at.is_none_or(|at| now >= at + recheck_interval)
}

/// What the check means for a mapping in `mode` that may vend only if this is `Ok`.
/// `known` is the last conclusive result; `checked` is this round's outcome, `None`
/// when no check was due (the last conclusive result stands). Under `require`:
/// - a role that accepts a probe is refused ([`FetchError::UnsafeTrustPolicy`]);
/// - an inconclusive check (STS throttled, down) *before any conclusive result*
///   fails closed: the fetch fails transiently (503 `CredentialsUnavailable`) and is
///   retried with backoff, because vending for a role we could not check is exactly
///   the hole the check exists to close;
/// - an inconclusive *recheck* keeps the last conclusive result: a role that proved
///   safe yesterday keeps vending through an STS hiccup today;
/// - a terminal STS error other than AccessDenied fails the fetch with it.
///
/// `warn` vends either way (the cache logs at WARN); `off` vends without a check.
pub fn trust_decision(
    mode: EnforcementMode,
    known: EnforcementStatus,
    checked: Option<Result<Verdict, AssumeError>>,
) -> Result<(), FetchError> {
    let outcome = checked.unwrap_or(Ok(match known {
        EnforcementStatus::NotEnforced => Verdict::NotEnforced(Probe::WithoutExternalId),
        _ => Verdict::Enforced,
    }));
    match (mode, outcome) {
        (EnforcementMode::Off, _) | (_, Ok(Verdict::Enforced)) | (EnforcementMode::Warn, _) => {
            Ok(())
        }
        (_, Ok(Verdict::NotEnforced(probe))) => Err(FetchError::UnsafeTrustPolicy(probe)),
        (_, Err(error)) if error.reason.is_terminal() => Err(FetchError::Sts(error)),
        (_, Err(error)) => match known {
            EnforcementStatus::Enforced => Ok(()),
            EnforcementStatus::NotEnforced => {
                Err(FetchError::UnsafeTrustPolicy(Probe::WithoutExternalId))
            }
            EnforcementStatus::Unknown => Err(FetchError::Sts(error)),
        },
    }
}

/// What a mapping's last conclusive check (`known`) means, under its current `mode`,
/// for serving a credential already in the cache, decided on every request without an
/// STS call (the credential is the same whatever the mode; only whether it may be
/// served changes, so a reload that changes the mode takes effect at the next request):
/// - `off`, `warn`, or `require` with the role found enforcing: serve it;
/// - `require` with the role found not enforcing: refuse
///   ([`FetchError::UnsafeTrustPolicy`]) until a recheck says otherwise;
/// - `require` before any conclusive check (the credential was fetched under `off` or
///   `warn`): check first, through a fetch, as a mapping that never vended would.
pub fn cached_decision(mode: EnforcementMode, known: EnforcementStatus) -> CachedDecision {
    match (mode, known) {
        (EnforcementMode::Off | EnforcementMode::Warn, _)
        | (EnforcementMode::Require, EnforcementStatus::Enforced) => CachedDecision::Serve,
        (EnforcementMode::Require, EnforcementStatus::NotEnforced) => CachedDecision::Refuse,
        (EnforcementMode::Require, EnforcementStatus::Unknown) => CachedDecision::CheckFirst,
    }
}

/// See [`cached_decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachedDecision {
    /// The cached credential may be served.
    Serve,
    /// The role does not enforce its External ID and the mode is `require`.
    Refuse,
    /// No conclusive check yet under `require`: fetch (which checks) instead.
    CheckFirst,
}

pub mod s3;

/// One line of `credvend verify` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub check: String,
    pub passed: bool,
    pub detail: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = if self.passed { "ok" } else { "FAIL" };
        write!(f, "{status:<5}{:<22}{}", self.check, self.detail)
    }
}

/// `credvend verify MAPPING [--bucket NAME]`: the enforcement check, the real
/// assumption, and (with a bucket) the five S3 permissions. Every line says what was
/// tried, the AWS error code on failure, and what would fix it. Never prints a secret.
pub async fn verify_mapping(
    assumer: &dyn RoleAssumer,
    mapping: &crate::config::Mapping,
    bucket: Option<s3::S3Target>,
) -> Vec<Line> {
    let input = AssumeRoleInput::for_mapping(mapping);
    let mut lines = Vec::new();
    let trust_fix = "add \"Condition\": {\"StringEquals\": {\"sts:ExternalId\": \"<the mapping's External ID>\"}} to the role's trust policy (`credvend policy trust --external-id …` prints it)";
    match check_external_id_enforcement(assumer, &input, || async {}).await {
        Ok(Verdict::Enforced) => lines.push(Line {
            check: "external-id".into(),
            passed: true,
            detail: "enforced: AssumeRole without it and with a wrong one were both refused".into(),
        }),
        Ok(Verdict::NotEnforced(probe)) => lines.push(Line {
            check: "external-id".into(),
            passed: false,
            detail: format!(
                "NOT ENFORCED: the role can be assumed {}; fix: {trust_fix}",
                probe.describe()
            ),
        }),
        Err(error) => lines.push(Line {
            check: "external-id".into(),
            passed: false,
            detail: format!("inconclusive: {}: {}", error.code, error.message),
        }),
    }

    let creds = match assumer.assume_role(&input).await {
        Ok(creds) => {
            lines.push(Line {
                check: "sts:AssumeRole".into(),
                passed: true,
                detail: format!(
                    "{} until {}",
                    creds.assumed_role_arn,
                    humantime::format_rfc3339_seconds(creds.expiration)
                ),
            });
            Some(creds)
        }
        Err(error) => {
            let fix = match error.reason {
                FailureReason::AccessDenied => format!(
                    "the role's trust policy must allow the vendor principal to call sts:AssumeRole with the mapping's External ID (role {})",
                    mapping.role_arn
                ),
                reason => match reason.base_identity_problem() {
                    Some(problem) => format!(
                        "{problem}: give it credentials (environment, profile, instance or container role)"
                    ),
                    None => "see the AWS error code".into(),
                },
            };
            lines.push(Line {
                check: "sts:AssumeRole".into(),
                passed: false,
                detail: format!("{}: {}; fix: {fix}", error.code, error.message),
            });
            None
        }
    };

    if let Some(target) = bucket {
        match &creds {
            Some(creds) => {
                for check in s3::probe(&target, creds).await {
                    let passed = check.passed();
                    let detail = match check.result {
                        s3::CheckResult::Ok(detail) => detail,
                        s3::CheckResult::Failed { code, fix } => format!("{code}; fix: {fix}"),
                    };
                    lines.push(Line {
                        check: check.action.into(),
                        passed,
                        detail,
                    });
                }
            }
            None => lines.push(Line {
                check: "s3".into(),
                passed: false,
                detail: "skipped: no credentials to test the bucket with".into(),
            }),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn sts_error(reason: FailureReason) -> AssumeError {
        AssumeError {
            reason,
            code: reason.as_str().to_string(),
            message: "scripted".to_string(),
            duration_too_long: false,
        }
    }

    /// The decision, as a short word for readable assertions.
    fn decide(
        mode: EnforcementMode,
        known: EnforcementStatus,
        checked: Option<Result<Verdict, AssumeError>>,
    ) -> String {
        match trust_decision(mode, known, checked) {
            Ok(()) => "vend".to_string(),
            Err(FetchError::UnsafeTrustPolicy(probe)) => format!("unsafe {probe:?}"),
            Err(FetchError::Sts(error)) => format!("sts {}", error.reason.as_str()),
        }
    }

    #[test]
    fn require_vends_only_for_a_role_that_refused_both_probes() {
        use EnforcementMode::Require;
        let enforced = Some(Ok(Verdict::Enforced));
        let wrong = Some(Ok(Verdict::NotEnforced(Probe::WrongExternalId)));
        assert_eq!(
            decide(Require, EnforcementStatus::Unknown, enforced),
            "vend"
        );
        assert_eq!(
            decide(Require, EnforcementStatus::Enforced, wrong),
            "unsafe WrongExternalId"
        );
    }

    #[test]
    fn require_fails_closed_on_a_first_inconclusive_check_and_keeps_a_known_result_after() {
        use EnforcementMode::Require;
        let throttled = || Some(Err(sts_error(FailureReason::Throttled)));
        assert_eq!(
            decide(Require, EnforcementStatus::Unknown, throttled()),
            "sts throttled"
        );
        assert_eq!(
            decide(Require, EnforcementStatus::Enforced, throttled()),
            "vend"
        );
        assert_eq!(
            decide(Require, EnforcementStatus::NotEnforced, throttled()),
            "unsafe WithoutExternalId"
        );
    }

    #[test]
    fn a_terminal_sts_error_fails_the_fetch_even_after_a_safe_result() {
        let terminal = FailureReason::ALL
            .into_iter()
            .find(|r| r.is_terminal() && *r != FailureReason::AccessDenied)
            .expect("a terminal reason other than AccessDenied");
        assert_eq!(
            decide(
                EnforcementMode::Require,
                EnforcementStatus::Enforced,
                Some(Err(sts_error(terminal)))
            ),
            format!("sts {}", terminal.as_str())
        );
    }

    #[test]
    fn no_check_due_means_the_last_conclusive_result_stands() {
        use EnforcementMode::Require;
        assert_eq!(decide(Require, EnforcementStatus::Enforced, None), "vend");
        assert_eq!(
            decide(Require, EnforcementStatus::NotEnforced, None),
            "unsafe WithoutExternalId"
        );
    }

    #[test]
    fn warn_and_off_vend_whatever_the_check_says() {
        for mode in [EnforcementMode::Warn, EnforcementMode::Off] {
            let accepted = Some(Ok(Verdict::NotEnforced(Probe::WithoutExternalId)));
            let throttled = Some(Err(sts_error(FailureReason::Throttled)));
            assert_eq!(decide(mode, EnforcementStatus::Unknown, accepted), "vend");
            assert_eq!(decide(mode, EnforcementStatus::Unknown, throttled), "vend");
            assert_eq!(decide(mode, EnforcementStatus::NotEnforced, None), "vend");
        }
    }

    #[test]
    fn a_check_is_due_first_and_then_once_the_recheck_interval_has_passed() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let every = Duration::from_secs(3600);
        assert!(check_due(None, at, every));
        assert!(!check_due(
            Some(at),
            at + every - Duration::from_secs(1),
            every
        ));
        assert!(check_due(Some(at), at + every, every));
    }

    #[test]
    fn a_cached_credential_is_decided_against_the_current_mode_and_the_known_result() {
        use CachedDecision::{CheckFirst, Refuse, Serve};
        use EnforcementMode::{Off, Require, Warn};
        use EnforcementStatus::{Enforced, NotEnforced, Unknown};
        let table = [
            (Off, Unknown, Serve),
            (Off, NotEnforced, Serve),
            (Off, Enforced, Serve),
            (Warn, Unknown, Serve),
            (Warn, NotEnforced, Serve),
            (Warn, Enforced, Serve),
            (Require, Enforced, Serve),
            (Require, NotEnforced, Refuse),
            // Fetched under `off` or `warn` and never checked: check before serving.
            (Require, Unknown, CheckFirst),
        ];
        for (mode, known, expected) in table {
            assert_eq!(cached_decision(mode, known), expected, "{mode:?} {known:?}");
        }
    }
}
