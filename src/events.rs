//! Notable events, each one struct whose [`emit`](CredentialsServed::emit) writes the log
//! line *and* updates the metrics with the same labels, so logs and metrics never
//! disagree (the `internal_events` pattern of vector; docs/design.md, Telemetry).
//!
//! Log levels: INFO for lifecycle and operator actions (a reload
//! applied or rejected, the audit line of every credential response), WARN for degraded
//! serving and unsafe trust policies, ERROR for what needs a human (a customer role that
//! refuses us). Fields come first, then a capitalised sentence.
//!
//! What an event may carry is limited on purpose: mapping names (from config), client
//! addresses, AWS error codes, AccessKeyIds (not secrets) and expiry times. No event has
//! a field for a secret key, session token, auth token or External ID.
//!
//! Call sites: config reloads are emitted from `reload.rs`. The assume-role, served/refused
//! and state events are for the cache and the credential endpoint to call.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tracing::{debug, error, info, warn};

use crate::config::{Enforcement, Problem};
use crate::creds::AssumeError;
use crate::metrics::Metrics;
use crate::model::{MappingState, Source, Verdict};
use crate::protocol::ApiError;

/// STS issued credentials for `mapping`.
#[derive(Debug)]
pub struct AssumeRoleSucceeded<'a> {
    pub mapping: &'a str,
    /// Wall time of the STS call.
    pub duration: Duration,
    pub access_key_id: &'a str,
    pub expiration: SystemTime,
}

impl AssumeRoleSucceeded<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        debug!(
            mapping = %self.mapping,
            duration_ms = self.duration.as_millis() as u64,
            access_key_id = %self.access_key_id,
            expiration = %humantime::format_rfc3339_seconds(self.expiration),
            "AssumeRole succeeded"
        );
        metrics.assume_role(self.mapping, Ok(()), self.duration);
        metrics.expiry(self.mapping, self.expiration);
    }
}

/// STS refused or failed an AssumeRole for `mapping`.
#[derive(Debug)]
pub struct AssumeRoleFailed<'a> {
    pub mapping: &'a str,
    pub duration: Duration,
    pub error: &'a AssumeError,
}

impl AssumeRoleFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let reason = self.error.reason;
        if reason.is_terminal() {
            // The customer's role refused us: only a human (theirs or ours) fixes that.
            error!(
                mapping = %self.mapping,
                reason = reason.as_str(),
                code = %self.error.code,
                message = %self.error.message,
                "Customer role refused the assumption; check its trust policy and External ID"
            );
        } else {
            warn!(
                mapping = %self.mapping,
                reason = reason.as_str(),
                code = %self.error.code,
                duration_ms = self.duration.as_millis() as u64,
                message = %self.error.message,
                "AssumeRole failed; will retry"
            );
        }
        metrics.assume_role(self.mapping, Err(reason), self.duration);
    }
}

/// A mapping moved from one lifecycle state to another.
#[derive(Debug)]
pub struct MappingStateChanged<'a> {
    pub mapping: &'a str,
    pub from: MappingState,
    pub to: MappingState,
}

impl MappingStateChanged<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        match (self.from, self.to) {
            (from, MappingState::Degraded) if from != MappingState::Degraded => warn!(
                mapping = %self.mapping,
                "Refresh failing; serving the last credential until shortly before it expires"
            ),
            (MappingState::Degraded, MappingState::Fresh | MappingState::Refreshing) => info!(
                mapping = %self.mapping,
                "Refresh succeeded again; no longer degraded"
            ),
            (from, to) => debug!(
                mapping = %self.mapping,
                from = from.as_str(),
                to = to.as_str(),
                "Mapping state changed"
            ),
        }
        metrics.set_state(self.mapping, self.to);
    }
}

/// A conclusive result of the External ID enforcement check
/// (docs/design.md, Credential lifecycle).
#[derive(Debug)]
pub struct TrustPolicyChecked<'a> {
    pub mapping: &'a str,
    pub role_arn: &'a str,
    /// The mapping's `external_id_enforcement` mode.
    pub mode: Enforcement,
    pub verdict: Verdict,
}

impl TrustPolicyChecked<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        match self.verdict {
            Verdict::NotEnforced(probe) => warn!(
                mapping = %self.mapping,
                role_arn = %self.role_arn,
                accepted = probe.describe(),
                mode = self.mode.as_str(),
                "Role does not enforce its External ID; its trust policy must require sts:ExternalId"
            ),
            Verdict::Enforced => debug!(mapping = %self.mapping, "Role enforces its External ID"),
        }
        metrics.enforcement(self.mapping, Some(self.verdict == Verdict::Enforced));
    }
}

/// The audit line of a successful credential response.
#[derive(Debug)]
pub struct CredentialsServed<'a> {
    pub mapping: &'a str,
    pub client: SocketAddr,
    pub source: Source,
    pub access_key_id: &'a str,
    pub expiration: SystemTime,
}

impl CredentialsServed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        info!(
            target: "credvend::audit",
            mapping = %self.mapping,
            client = %self.client,
            status = 200u16,
            source = self.source.as_str(),
            access_key_id = %self.access_key_id,
            expiration = %humantime::format_rfc3339_seconds(self.expiration),
            "Credentials served"
        );
        metrics.served(self.mapping, self.source);
    }
}

/// The audit line of a refused credential request. `mapping` is what the request
/// named: it goes to the log (bounded to 64 characters by the path parser) but never
/// into a metric label.
#[derive(Debug)]
pub struct CredentialsRefused<'a> {
    pub mapping: Option<&'a str>,
    pub client: SocketAddr,
    pub error: &'a ApiError,
}

impl CredentialsRefused<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        info!(
            target: "credvend::audit",
            mapping = self.mapping.unwrap_or("-"),
            client = %self.client,
            status = self.error.status().as_u16(),
            code = self.error.code(),
            "Credential request refused"
        );
        if let Some(reason) = auth_failure_reason(self.error) {
            metrics.auth_failure(reason);
        }
    }
}

/// The `credvend_auth_failures_total` reason of a refusal, if it is one. Exhaustive,
/// so a new error variant forces a decision.
fn auth_failure_reason(error: &ApiError) -> Option<&'static str> {
    match error {
        ApiError::MissingToken => Some("missing_token"),
        ApiError::AccessDenied { .. } => Some("invalid_token"),
        ApiError::ProxiedRequest => Some("proxied_request"),
        ApiError::InvalidHost => Some("invalid_host"),
        ApiError::AssumeRoleDenied { .. }
        | ApiError::TrustPolicyUnsafe { .. }
        | ApiError::NotFound
        | ApiError::MethodNotAllowed
        | ApiError::UriTooLong
        | ApiError::BodyNotAllowed
        | ApiError::Unavailable { .. } => None,
    }
}

/// A reload (SIGHUP or file change) was validated and applied.
#[derive(Debug)]
pub struct ConfigReloadApplied<'a> {
    pub path: &'a Path,
    pub generation: u64,
    pub mappings: usize,
}

impl ConfigReloadApplied<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        info!(
            config = %self.path.display(),
            generation = self.generation,
            mappings = self.mappings,
            "Reload applied"
        );
        metrics.config_reload(true);
    }
}

/// A reload was rejected whole; the running configuration stays in force. One log line
/// per problem (file, key, reason), one count per reload.
#[derive(Debug)]
pub struct ConfigReloadRejected<'a> {
    pub path: &'a Path,
    pub problems: &'a [Problem],
}

impl ConfigReloadRejected<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        for problem in self.problems {
            error!(
                file = %problem.file,
                key = %problem.key,
                reason = %problem.reason,
                "Reload rejected; the running configuration stays in force"
            );
        }
        if self.problems.is_empty() {
            error!(
                config = %self.path.display(),
                "Reload rejected; the running configuration stays in force"
            );
        }
        metrics.config_reload(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::FailureReason;
    use crate::testing::CapturedOutput;

    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = CapturedOutput::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        captured
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON log line"))
            .collect()
    }

    fn sample(metrics: &Metrics, series: &str) -> Option<f64> {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn served_writes_one_audit_line_and_counts_the_same_mapping_and_source() {
        let metrics = Metrics::new();
        metrics.sync_mappings(["acme-s3"]);
        let lines = logged(|| {
            CredentialsServed {
                mapping: "acme-s3",
                client: "127.0.0.1:40000".parse().unwrap(),
                source: Source::Degraded,
                access_key_id: "ASIAEXAMPLE",
                expiration: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            }
            .emit(&metrics)
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["target"], "credvend::audit");
        assert_eq!(line["mapping"], "acme-s3");
        assert_eq!(line["source"], "degraded");
        assert_eq!(line["status"], 200);
        assert_eq!(line["access_key_id"], "ASIAEXAMPLE");
        assert_eq!(line["expiration"], "2027-01-15T08:00:00Z");
        assert_eq!(
            sample(
                &metrics,
                r#"credvend_credentials_served_total{mapping="acme-s3",source="degraded"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn refused_counts_auth_failures_but_never_labels_the_requested_name() {
        let metrics = Metrics::new();
        let requested = "no-such-mapping-from-the-path";
        let error = ApiError::AccessDenied {
            mapping: Some(requested.into()),
        };
        let lines = logged(|| {
            CredentialsRefused {
                mapping: Some(requested),
                client: "127.0.0.1:40000".parse().unwrap(),
                error: &error,
            }
            .emit(&metrics);
            CredentialsRefused {
                mapping: None,
                client: "127.0.0.1:40000".parse().unwrap(),
                error: &ApiError::NotFound,
            }
            .emit(&metrics);
        });
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["code"], "AccessDenied");
        assert_eq!(lines[0]["status"], 403);
        let text = metrics.render();
        assert!(!text.contains(requested), "{text}");
        assert_eq!(
            sample(
                &metrics,
                r#"credvend_auth_failures_total{reason="invalid_token"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn terminal_assume_failure_is_an_error_line_and_a_reason_count() {
        let metrics = Metrics::new();
        metrics.sync_mappings(["x"]);
        let error = AssumeError {
            reason: FailureReason::AccessDenied,
            code: "AccessDenied".into(),
            message: "not authorized to perform sts:AssumeRole".into(),
            duration_too_long: false,
        };
        let lines = logged(|| {
            AssumeRoleFailed {
                mapping: "x",
                duration: Duration::from_millis(20),
                error: &error,
            }
            .emit(&metrics)
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(lines[0]["reason"], "access_denied");
        assert_eq!(
            sample(
                &metrics,
                r#"credvend_assume_role_failures_total{mapping="x",reason="access_denied"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &metrics,
                r#"credvend_assume_role_total{mapping="x",result="error"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn entering_degraded_warns_and_sets_the_state() {
        let metrics = Metrics::new();
        metrics.sync_mappings(["x"]);
        let lines = logged(|| {
            MappingStateChanged {
                mapping: "x",
                from: MappingState::Refreshing,
                to: MappingState::Degraded,
            }
            .emit(&metrics)
        });
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(
            sample(
                &metrics,
                r#"credvend_mapping_state{mapping="x",state="degraded"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn rejected_reload_logs_each_problem_and_counts_once() {
        let metrics = Metrics::new();
        let problems = vec![
            Problem {
                file: "/etc/credvend/credvend.toml".into(),
                key: "mappings.a.role_arn".into(),
                reason: "not an IAM role ARN".into(),
            },
            Problem {
                file: "/etc/credvend/credvend.toml".into(),
                key: "mappings.b.role_arn".into(),
                reason: "not an IAM role ARN".into(),
            },
        ];
        let lines = logged(|| {
            ConfigReloadRejected {
                path: Path::new("/etc/credvend/credvend.toml"),
                problems: &problems,
            }
            .emit(&metrics)
        });
        assert_eq!(lines.len(), 2);
        assert_eq!(
            sample(&metrics, r#"credvend_config_reloads_total{result="error"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &metrics,
                r#"credvend_config_reloads_total{result="success"}"#
            ),
            Some(0.0)
        );
    }
}
