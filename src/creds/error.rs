//! Classification of AssumeRole failures
//! (docs/design.md, Credential lifecycle and Telemetry). (Implemented by the STS-layer
//! work.)

use std::fmt;

/// Metric `reason` label of `credvend_assume_role_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// AccessDenied, NoSuchEntity-ish, wrong/missing External ID, revoked trust.
    AccessDenied,
    /// Throttling / rate exceeded.
    Throttled,
    /// STS rejected the base credentials: expired or invalid (ExpiredToken,
    /// InvalidClientTokenId, SignatureDoesNotMatch).
    ExpiredBaseCredentials,
    /// No base credentials: the credential chain (environment, profile, web identity,
    /// container, instance profile) produced none, or the vendor role of
    /// `source_role_arn` could not be assumed with them. STS was never asked
    /// (code `BaseCredentialsUnavailable`).
    NoBaseCredentials,
    /// RegionDisabledException.
    RegionDisabled,
    /// ValidationError, MalformedPolicyDocument, PackedPolicyTooLarge, bad ARN …
    InvalidRequest,
    /// 5xx from STS (InternalFailure, ServiceUnavailable …).
    ServerError,
    /// The call exceeded the STS call timeout.
    Timeout,
    /// Connect/IO/DNS/TLS failure.
    Network,
    /// Anything else (unparseable response …).
    Other,
}

impl FailureReason {
    pub const ALL: [FailureReason; 10] = [
        FailureReason::AccessDenied,
        FailureReason::Throttled,
        FailureReason::ExpiredBaseCredentials,
        FailureReason::NoBaseCredentials,
        FailureReason::RegionDisabled,
        FailureReason::InvalidRequest,
        FailureReason::ServerError,
        FailureReason::Timeout,
        FailureReason::Network,
        FailureReason::Other,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::AccessDenied => "access_denied",
            FailureReason::Throttled => "throttled",
            FailureReason::ExpiredBaseCredentials => "expired_base_credentials",
            FailureReason::NoBaseCredentials => "no_base_credentials",
            FailureReason::RegionDisabled => "region_disabled",
            FailureReason::InvalidRequest => "invalid_request",
            FailureReason::ServerError => "server_error",
            FailureReason::Timeout => "timeout",
            FailureReason::Network => "network",
            FailureReason::Other => "other",
        }
    }

    /// Terminal failures are the customer's (or the config's) doing: retrying soon will
    /// not help, the cached credential must be dropped, and the mapping is negatively
    /// cached with backoff. Everything else is transient.
    pub fn is_terminal(self) -> bool {
        match self {
            FailureReason::AccessDenied
            | FailureReason::RegionDisabled
            | FailureReason::InvalidRequest => true,
            FailureReason::Throttled
            | FailureReason::ExpiredBaseCredentials
            | FailureReason::NoBaseCredentials
            | FailureReason::ServerError
            | FailureReason::Timeout
            | FailureReason::Network
            | FailureReason::Other => false,
        }
    }
}

impl FailureReason {
    /// What a failure of credvend's *own* identity means, in words an operator (and a
    /// worker's log) can act on; `None` for every other reason. The same words for the
    /// daemon's 503, its start-up check, `/status`, `/readyz` and the CLI.
    pub fn base_identity_problem(self) -> Option<&'static str> {
        match self {
            FailureReason::NoBaseCredentials => {
                Some("credvend has no AWS credentials of its own to call STS with")
            }
            FailureReason::ExpiredBaseCredentials => {
                Some("STS rejected credvend's own AWS credentials (expired or invalid)")
            }
            _ => None,
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified AssumeRole failure. Carries no secret: `message` is STS's message with
/// nothing of ours in it (STS messages name the role ARN, which is not a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {code}: {message}")]
pub struct AssumeError {
    pub reason: FailureReason,
    /// The AWS error code (`AccessDenied`, `Throttling`, …) or a local one (`Timeout`,
    /// `NetworkError`, `MalformedResponse`).
    pub code: String,
    pub message: String,
    /// STS rejected DurationSeconds as longer than the role's MaxSessionDuration; the
    /// cache retries once at 3600 s.
    pub duration_too_long: bool,
}
