//! Credentials and the STS seam.
//!
//! [`Credentials`] is what credvend vends; [`RoleAssumer`] is the seam through which the
//! cache obtains them (the real implementation is [`sts::StsAssumer`]; tests may supply
//! their own). Failures are classified where they enter ([`AssumeError`]), so the cache
//! and the HTTP layer decide on a reason, never on an SDK error type.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::aws_names::{PolicyArn, Region, RoleArn, SessionName, SourceIdentity};
use crate::config::Mapping;
use crate::secret::{ExternalId, SecretValue};

pub mod error;
pub mod regions;
mod source_role;
pub mod sts;

pub use error::{AssumeError, FailureReason};

/// Temporary credentials for one assumed role.
#[derive(Clone)]
pub struct Credentials {
    /// `ASIA…`: not a secret (it appears in CloudTrail and in our audit log).
    pub access_key_id: String,
    pub secret_access_key: SecretValue,
    pub session_token: SecretValue,
    pub expiration: SystemTime,
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` as STS returned it.
    pub assumed_role_arn: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field(
                "expiration",
                &humantime::format_rfc3339_seconds(self.expiration),
            )
            .field("assumed_role_arn", &self.assumed_role_arn)
            .finish()
    }
}

/// Everything that goes into one `sts:AssumeRole` call for a mapping. The names are
/// the validated [`crate::aws_names`] types, so none reaches STS malformed.
#[derive(Debug, Clone)]
pub struct AssumeRoleInput {
    pub role_arn: RoleArn,
    pub session_name: SessionName,
    /// `None` sends no ExternalId parameter at all (used by the enforcement probe).
    pub external_id: Option<ExternalId>,
    pub duration: Duration,
    pub session_policy: Option<String>,
    pub policy_arns: Vec<PolicyArn>,
    pub tags: BTreeMap<String, String>,
    pub source_identity: Option<SourceIdentity>,
    /// STS region for this call.
    pub region: Region,
}

impl AssumeRoleInput {
    /// The AssumeRole call a mapping makes (the cache's fetches, the enforcement
    /// probes' base and `credvend verify`).
    pub fn for_mapping(mapping: &Mapping) -> Self {
        AssumeRoleInput {
            role_arn: mapping.role_arn.clone(),
            session_name: mapping.session_name.clone(),
            external_id: mapping.external_id.clone(),
            duration: mapping.session_duration,
            session_policy: mapping.session_policy.clone(),
            policy_arns: mapping.policy_arns.clone(),
            tags: mapping.tags.clone(),
            source_identity: mapping.source_identity.clone(),
            region: mapping.region.clone(),
        }
    }
}

/// Obtains credentials for a role. Implementations classify every failure.
///
/// Implementations retry nothing on their own except what is documented on them (the
/// real one re-resolves base credentials once on `ExpiredToken`); retry policy lives in
/// the cache, which knows about backoff, budgets and degraded serving.
pub trait RoleAssumer: Send + Sync + 'static {
    fn assume_role<'a>(
        &'a self,
        input: &'a AssumeRoleInput,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Credentials, AssumeError>> + Send + 'a>,
    >;

    /// [`RoleAssumer::assume_role`] with the caller's hooks around each STS attempt: an
    /// implementation that fails over to other regions ([`regions`]) waits on
    /// [`AttemptHooks::before_failover`] before each attempt after the first (the cache
    /// charges it to the global STS budget), and reports every attempt, the first
    /// included, to [`AttemptHooks::attempt_finished`]. The default makes the one call
    /// of `assume_role` in `input.region` and reports it.
    fn assume_role_with<'a>(
        &'a self,
        input: &'a AssumeRoleInput,
        hooks: &'a dyn AttemptHooks,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Credentials, AssumeError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = self.assume_role(input).await;
            hooks.attempt_finished(&Attempt {
                region: &input.region,
                outcome: result.as_ref().map(|_| ()).map_err(|e| e.reason),
                duration: started.elapsed(),
            });
            result
        })
    }

    /// Each STS region's health (breaker state), for `/status` and the metrics; empty
    /// for an implementation without regions.
    fn region_health(&self) -> Vec<regions::RegionHealth> {
        Vec::new()
    }

    /// Times anything time-dependent (the region breakers' cool-downs) on `clock`, the
    /// daemon's. The default ignores it.
    fn use_clock(&self, clock: std::sync::Arc<dyn crate::clock::Clock>) {
        let _ = clock;
    }
}

/// One STS attempt of an [`RoleAssumer::assume_role_with`] call.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The region called.
    pub region: &'a str,
    pub outcome: Result<(), FailureReason>,
    /// The attempt alone (no wait for the budget).
    pub duration: Duration,
}

/// What the caller of [`RoleAssumer::assume_role_with`] does around each attempt.
pub trait AttemptHooks: Send + Sync {
    /// Before each attempt after the first (a failover to `region`).
    fn before_failover<'a>(
        &'a self,
        region: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

    /// After every attempt.
    fn attempt_finished(&self, attempt: &Attempt<'_>);
}

/// Hooks that do nothing: failover attempts are not charged to any budget (the
/// enforcement probes and `credvend verify`; docs/design.md, Regional failover).
pub struct NoHooks;

impl AttemptHooks for NoHooks {
    fn before_failover<'a>(
        &'a self,
        _region: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(std::future::ready(()))
    }

    fn attempt_finished(&self, _attempt: &Attempt<'_>) {}
}
