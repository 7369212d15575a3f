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

use std::time::Duration;

use crate::creds::{AssumeError, AssumeRoleInput, FailureReason, RoleAssumer};
use crate::policy;
use crate::secret::ExternalId;

/// Session name of probe calls, visible in the customer's CloudTrail.
pub const PROBE_SESSION_NAME: &str = "credvend-external-id-check";

/// The shortest session STS allows.
const PROBE_DURATION: Duration = Duration::from_secs(900);

pub use crate::model::{Enforcement, Probe, Verdict};

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
    let input = crate::cache::assume_role_input(mapping);
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
                FailureReason::ExpiredBaseCredentials => {
                    "credvend's own AWS credentials are missing or expired".into()
                }
                _ => "see the AWS error code".into(),
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
