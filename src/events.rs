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
//! Call sites: config reloads are emitted from `reload.rs`. The assume-role, state,
//! enforcement-check and STS-answer events are the cache's; served/refused are the
//! credential endpoint's. An event with no metric (the `Log only` ones) has an `emit()`
//! that takes no [`Metrics`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tracing::field::display;
use tracing::{debug, error, info, warn};

use crate::config::{EnforcementMode, Problem};
use crate::creds::AssumeError;
use crate::metrics::Metrics;
use crate::model::{MappingState, Source, Verdict};
use crate::protocol::ApiError;

/// STS issued credentials for `mapping`.
#[derive(Debug)]
pub struct AssumeRoleSucceeded<'a> {
    pub mapping: &'a str,
    /// For a per-job entry of the mapping (docs/design.md, Per-job entries), its
    /// RoleSessionName: logged, and the mapping's expiry gauge is left alone (it shows
    /// the mapping's own credential). `None` for the mapping's own entry.
    pub session_name: Option<&'a str>,
    /// Wall time of the STS call.
    pub duration: Duration,
    pub access_key_id: &'a str,
    pub expiration: SystemTime,
}

impl AssumeRoleSucceeded<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let expiration = humantime::format_rfc3339_seconds(self.expiration);
        let duration_ms = self.duration.as_millis() as u64;
        metrics.assume_role(self.mapping, Ok(()), self.duration);
        match self.session_name {
            None => {
                debug!(
                    mapping = %self.mapping,
                    duration_ms,
                    access_key_id = %self.access_key_id,
                    expiration = %expiration,
                    "AssumeRole succeeded"
                );
                metrics.expiry(self.mapping, self.expiration);
            }
            Some(session_name) => debug!(
                mapping = %self.mapping,
                session_name = %session_name,
                duration_ms,
                access_key_id = %self.access_key_id,
                expiration = %expiration,
                "AssumeRole succeeded for a per-job entry"
            ),
        }
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
    pub mode: EnforcementMode,
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
                "Role does not enforce its External ID; its trust policy must require sts:ExternalId (an STS emulator such as moto never enforces it: against one, and only there, set external_id_enforcement = \"warn\")"
            ),
            Verdict::Enforced => debug!(mapping = %self.mapping, "Role enforces its External ID"),
        }
        metrics.enforcement(self.mapping, Some(self.verdict == Verdict::Enforced));
    }
}

/// The role's MaxSessionDuration is shorter than the mapping's session duration: the
/// fetch retries at one hour and keeps that cap until the mapping changes. Log only.
#[derive(Debug)]
pub struct SessionDurationCapped<'a> {
    pub mapping: &'a str,
    /// The session duration STS rejected.
    pub requested: Duration,
}

impl SessionDurationCapped<'_> {
    pub fn emit(&self) {
        warn!(
            mapping = %self.mapping,
            requested_secs = self.requested.as_secs(),
            "Role's MaxSessionDuration is shorter than session_duration; retrying at 1h and keeping that cap until the mapping changes"
        );
    }
}

/// STS's `Expiration` lies further out than the requested session could last by this
/// host's clock (the host clock is behind); the credential expires by the session
/// duration instead. Log only.
#[derive(Debug)]
pub struct ExpirationClamped<'a> {
    pub mapping: &'a str,
    /// How far STS's `Expiration` was past the latest possible one.
    pub ahead: Duration,
}

impl ExpirationClamped<'_> {
    pub fn emit(&self) {
        warn!(
            mapping = %self.mapping,
            ahead_secs = self.ahead.as_secs(),
            "STS's Expiration is later than the session can last by this host's clock; the host clock is probably behind. Expiring the credential by the session duration instead"
        );
    }
}

/// STS returned a credential shorter than requested; it is served and refreshed at half
/// its life. Log only.
#[derive(Debug)]
pub struct ShortCredentialReceived<'a> {
    pub mapping: &'a str,
    pub requested: Duration,
    /// Time left on the credential when it arrived.
    pub received: Duration,
}

impl ShortCredentialReceived<'_> {
    pub fn emit(&self) {
        warn!(
            mapping = %self.mapping,
            requested_secs = self.requested.as_secs(),
            received_secs = self.received.as_secs(),
            "STS returned a credential shorter than requested; serving it and refreshing at half its life"
        );
    }
}

/// A reload gave a mapping other AssumeRole inputs (role, External ID, ...) under the
/// same name: its credential and slot are dropped, and the enforcement result, which was
/// about the old inputs, is unknown again until the new role is checked.
#[derive(Debug)]
pub struct MappingInputsChanged<'a> {
    pub mapping: &'a str,
}

impl MappingInputsChanged<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        debug!(
            mapping = %self.mapping,
            "Mapping's AssumeRole inputs changed; dropping its credentials and enforcement result"
        );
        metrics.enforcement(self.mapping, None);
    }
}

/// The External ID enforcement check could not conclude: a probe got an STS error other
/// than AccessDenied (`verify::trust_decision` decides what that means for the
/// mapping). Log only.
#[derive(Debug)]
pub struct TrustCheckInconclusive<'a> {
    pub mapping: &'a str,
    /// The AWS error code the inconclusive probe got.
    pub code: &'a str,
    /// The last conclusive result.
    pub previous: crate::model::EnforcementStatus,
}

impl TrustCheckInconclusive<'_> {
    pub fn emit(&self) {
        warn!(
            mapping = %self.mapping,
            code = %self.code,
            previous = self.previous.as_str(),
            "External ID enforcement check inconclusive"
        );
    }
}

/// Which job token a credential request was authorised by, for its audit line: the
/// token's id and who minted it (the peer credentials of the control socket
/// connection). Never the token.
#[derive(Debug, Clone, Copy)]
pub struct JobAudit<'a> {
    pub id: &'a str,
    pub minted_by_uid: u32,
    /// `None` when the kernel did not report the minting process.
    pub minted_by_pid: Option<i32>,
}

/// The audit line of a successful credential response.
#[derive(Debug)]
pub struct CredentialsServed<'a> {
    pub mapping: &'a str,
    pub client: SocketAddr,
    pub source: Source,
    pub access_key_id: &'a str,
    pub expiration: SystemTime,
    /// The job token the request was authorised by (`None`: a configured token).
    pub job: Option<JobAudit<'a>>,
    /// When the request arrived: the mapping's activity stamp, without another read
    /// of the clock.
    pub arrived: std::time::Instant,
}

impl CredentialsServed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        info!(
            target: "credvend::audit",
            mapping = %self.mapping,
            client = %self.client,
            status = 200u16,
            source = %self.source.as_str(),
            access_key_id = %self.access_key_id,
            expiration = %humantime::format_rfc3339_seconds(self.expiration),
            job_token_id = self.job.map(|job| display(job.id)),
            minted_by_uid = self.job.map(|job| job.minted_by_uid),
            minted_by_pid = self.job.and_then(|job| job.minted_by_pid),
            "Credentials served"
        );
        metrics.served_at(self.mapping, self.source, self.arrived);
    }
}

/// The audit line of a refused credential request. `mapping` is what the request
/// named: it goes to the log (bounded to 64 characters by the path parser) but never
/// into a metric label. An `AccessDenied` line also has `cause`: `invalid_token` or
/// `unknown_mapping` (the client gets the same answer for both; the operator should
/// not have to guess).
#[derive(Debug)]
pub struct CredentialsRefused<'a> {
    pub mapping: Option<&'a str>,
    pub client: SocketAddr,
    pub error: &'a ApiError,
    /// The job token that authorised the request, when one did and the refusal came
    /// after (STS refused, nothing servable yet). A token that authorised nothing is
    /// never named: expired, revoked and wrong tokens look the same here too.
    pub job: Option<JobAudit<'a>>,
}

impl CredentialsRefused<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        // `mapping` and `cause` are written with `%` like every field of the served
        // line: the plain format then prints them bare (`mapping=acme-s3`) on both.
        let cause = match self.error {
            ApiError::AccessDenied { cause, .. } => Some(display(cause.as_str())),
            _ => None,
        };
        info!(
            target: "credvend::audit",
            mapping = %self.mapping.unwrap_or("-"),
            client = %self.client,
            status = self.error.status().as_u16(),
            code = %self.error.code(),
            cause,
            job_token_id = self.job.map(|job| display(job.id)),
            minted_by_uid = self.job.map(|job| job.minted_by_uid),
            minted_by_pid = self.job.and_then(|job| job.minted_by_pid),
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
        | ApiError::Unavailable { .. }
        | ApiError::ControlNotFound
        | ApiError::MethodNotAllowedOn { .. }
        | ApiError::InvalidRequest { .. }
        | ApiError::PayloadTooLarge
        | ApiError::MappingNotFound { .. }
        | ApiError::TokenNotFound { .. }
        | ApiError::TooManyTokens { .. } => None,
    }
}

/// A job token was minted on the control socket. The line carries the id, never the
/// token.
#[derive(Debug)]
pub struct JobTokenMinted<'a> {
    pub id: &'a str,
    pub mapping: &'a str,
    pub session_name: Option<&'a str>,
    /// `None`: no expiry (a lease token without `ttl_seconds`).
    pub expires_at: Option<SystemTime>,
    /// Revoked when the minting connection closes.
    pub lease: bool,
    pub minted_by_uid: u32,
    pub minted_by_pid: Option<i32>,
}

impl JobTokenMinted<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        info!(
            id = %self.id,
            mapping = %self.mapping,
            session_name = self.session_name.map(display),
            expires_at = self
                .expires_at
                .map(|at| display(humantime::format_rfc3339_seconds(at))),
            lease = self.lease.then_some("connection"),
            minted_by_uid = self.minted_by_uid,
            minted_by_pid = self.minted_by_pid,
            "Job token minted"
        );
        metrics.job_token_minted(self.mapping);
    }
}

/// How a job token ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobTokenEnd {
    /// `DELETE /v1/tokens/{id}`.
    Deleted,
    /// The control socket connection that minted it with `"lease": "connection"` closed.
    LeaseClosed,
    /// A reload removed its mapping.
    MappingRemoved,
    /// Its `ttl_seconds` ran out.
    Expired,
}

impl JobTokenEnd {
    /// The log line's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobTokenEnd::Deleted => "deleted",
            JobTokenEnd::LeaseClosed => "lease_closed",
            JobTokenEnd::MappingRemoved => "mapping_removed",
            JobTokenEnd::Expired => "expired",
        }
    }
}

/// A job token ended: revoked (deleted, lease closed, mapping removed) or expired.
#[derive(Debug)]
pub struct JobTokenEnded<'a> {
    pub id: &'a str,
    pub mapping: &'a str,
    pub end: JobTokenEnd,
}

impl JobTokenEnded<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let expired = self.end == JobTokenEnd::Expired;
        info!(
            id = %self.id,
            mapping = %self.mapping,
            reason = self.end.as_str(),
            "{}",
            if expired { "Job token expired" } else { "Job token revoked" }
        );
        metrics.job_token_ended(self.mapping, expired);
    }
}

/// A reload (SIGHUP or file change) was validated and applied.
#[derive(Debug)]
pub struct ConfigReloadApplied<'a> {
    pub path: &'a Path,
    pub generation: u64,
    pub mappings: usize,
    /// When (the daemon's clock), for `credvend_config_last_reload_timestamp_seconds`.
    pub at: SystemTime,
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
        metrics.config_last_reload(true, self.at);
    }
}

/// A reload was rejected whole; the running configuration stays in force. One log line
/// per problem (file, key, reason), one count per reload.
#[derive(Debug)]
pub struct ConfigReloadRejected<'a> {
    pub path: &'a Path,
    pub problems: &'a [Problem],
    /// When (the daemon's clock), for `credvend_config_last_reload_timestamp_seconds`.
    pub at: SystemTime,
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
        metrics.config_last_reload(false, self.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::FailureReason;

    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        crate::testing::json_logs(f).1
    }

    fn sample(metrics: &Metrics, series: &str) -> Option<f64> {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Against moto every role looks unsafe; the warning says so and names the fix
    /// (docs/configuration.md, "Trying credvend against moto").
    #[test]
    fn an_unsafe_role_warns_with_the_sts_emulator_hint() {
        let metrics = Metrics::new();
        metrics.sync_mappings(["acme-s3"]);
        let lines = logged(|| {
            TrustPolicyChecked {
                mapping: "acme-s3",
                role_arn: "arn:aws:iam::111122223333:role/acme-sync",
                mode: EnforcementMode::Require,
                verdict: Verdict::NotEnforced(crate::model::Probe::WithoutExternalId),
            }
            .emit(&metrics)
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["level"], "WARN");
        let message = lines[0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("must require sts:ExternalId")
                && message.contains("moto")
                && message.contains(r#"external_id_enforcement = "warn""#),
            "the warning should name the trust policy fix and the STS-emulator case: {message}"
        );
        assert_eq!(
            sample(
                &metrics,
                r#"credvend_external_id_enforced{mapping="acme-s3"}"#
            ),
            Some(0.0)
        );
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
                job: None,
                arrived: std::time::Instant::now(),
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
            cause: crate::protocol::DeniedCause::UnknownMapping,
        };
        let lines = logged(|| {
            CredentialsRefused {
                mapping: Some(requested),
                client: "127.0.0.1:40000".parse().unwrap(),
                error: &error,
                job: None,
            }
            .emit(&metrics);
            CredentialsRefused {
                mapping: None,
                client: "127.0.0.1:40000".parse().unwrap(),
                error: &ApiError::NotFound,
                job: None,
            }
            .emit(&metrics);
        });
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["code"], "AccessDenied");
        assert_eq!(lines[0]["status"], 403);
        assert_eq!(lines[0]["cause"], "unknown_mapping");
        assert!(lines[1].get("cause").is_none(), "{:?}", lines[1]);
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

    /// The audit lines as an operator reads them (the plain format): every text field
    /// bare on both lines, so `grep mapping=acme-s3` finds the served and the refused.
    #[test]
    fn served_and_refused_lines_format_their_fields_alike_in_plain_text() {
        let metrics = Metrics::new();
        metrics.sync_mappings(["acme-s3"]);
        let captured = crate::testing::CapturedOutput::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let denied = ApiError::AccessDenied {
            mapping: Some("acme-s3".into()),
            cause: crate::protocol::DeniedCause::InvalidToken,
        };
        tracing::subscriber::with_default(subscriber, || {
            CredentialsServed {
                mapping: "acme-s3",
                client: "127.0.0.1:40000".parse().unwrap(),
                source: Source::Cache,
                access_key_id: "ASIAEXAMPLE",
                expiration: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                job: None,
                arrived: std::time::Instant::now(),
            }
            .emit(&metrics);
            CredentialsRefused {
                mapping: Some("acme-s3"),
                client: "127.0.0.1:40000".parse().unwrap(),
                error: &denied,
                job: None,
            }
            .emit(&metrics);
        });
        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            assert!(line.contains(" mapping=acme-s3 "), "{line}");
            assert!(!line.contains('"'), "a quoted field: {line}");
        }
        assert!(lines[0].contains(" source=cache "), "{}", lines[0]);
        assert!(lines[1].contains(" code=AccessDenied "), "{}", lines[1]);
        assert!(lines[1].contains(" cause=invalid_token"), "{}", lines[1]);
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
    fn changed_inputs_make_the_enforcement_result_unknown_again() {
        let metrics = Metrics::new();
        metrics.sync_mappings(["x"]);
        let enforced = || sample(&metrics, r#"credvend_external_id_enforced{mapping="x"}"#);
        metrics.enforcement("x", Some(false));
        assert_eq!(enforced(), Some(0.0));
        let lines = logged(|| MappingInputsChanged { mapping: "x" }.emit(&metrics));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["level"], "DEBUG");
        assert_eq!(lines[0]["mapping"], "x");
        assert_eq!(enforced(), Some(-1.0), "the old inputs' verdict is gone");
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
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
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
        assert_eq!(
            sample(&metrics, "credvend_config_last_reload_successful"),
            Some(0.0)
        );
        assert_eq!(
            sample(&metrics, "credvend_config_last_reload_timestamp_seconds"),
            Some(1_800_000_000.0)
        );
    }

    #[test]
    fn the_cache_warnings_about_sts_answers_write_one_warn_line_each_with_their_fields() {
        let lines = logged(|| {
            SessionDurationCapped {
                mapping: "m1",
                requested: Duration::from_secs(4 * 3600),
            }
            .emit();
            ExpirationClamped {
                mapping: "m2",
                ahead: Duration::from_secs(300),
            }
            .emit();
            ShortCredentialReceived {
                mapping: "m3",
                requested: Duration::from_secs(3600),
                received: Duration::from_secs(600),
            }
            .emit();
            TrustCheckInconclusive {
                mapping: "m4",
                code: "Throttling",
                previous: crate::model::EnforcementStatus::Enforced,
            }
            .emit();
        });
        let seen: Vec<_> = lines
            .iter()
            .map(|l| (l["level"].as_str(), l["mapping"].as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("WARN"), Some("m1")),
                (Some("WARN"), Some("m2")),
                (Some("WARN"), Some("m3")),
                (Some("WARN"), Some("m4")),
            ]
        );
        assert_eq!(lines[0]["requested_secs"], 14400);
        assert!(
            lines[0]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Role's MaxSessionDuration is shorter"))
        );
        assert_eq!(lines[1]["ahead_secs"], 300);
        assert!(
            lines[1]["message"]
                .as_str()
                .is_some_and(|m| m.contains("host clock is probably behind"))
        );
        assert_eq!(
            (&lines[2]["requested_secs"], &lines[2]["received_secs"]),
            (&serde_json::json!(3600), &serde_json::json!(600))
        );
        assert_eq!(
            (lines[3]["code"].as_str(), lines[3]["previous"].as_str()),
            (
                Some("Throttling"),
                Some(crate::model::EnforcementStatus::Enforced.as_str())
            )
        );
        assert_eq!(
            lines[3]["message"],
            "External ID enforcement check inconclusive"
        );
    }
}
