//! The real STS client: [`StsAssumer`], the production [`RoleAssumer`].
//!
//! Inputs: [`StsSettings`] (from `[sts]` in the config) and the vendor's base identity,
//! resolved from the standard AWS credential chain (environment, profile, web identity,
//! ECS/EKS container credentials, instance profile) or, in tests, a static provider.
//!
//! Wire: `sts:AssumeRole` and `sts:GetCallerIdentity` over the STS Query API
//! (form-encoded POST, XML answers), signed with SigV4 by aws-sdk-sts.
//!
//! Decisions made here, and why:
//! - **SDK retries are disabled.** The cache owns retry, backoff, degraded serving and
//!   the global STS budget; SDK retries underneath would multiply calls invisibly and
//!   stretch the latency bound. One `assume_role` is one STS call, except for the single
//!   documented base-identity retry below.
//! - **Every call is bounded by `call_timeout`**, both through the SDK's operation and
//!   attempt timeouts and by an outer [`tokio::time::timeout`], so neither a hung STS nor
//!   a hung credential provider (IMDS, container endpoint) can hold a caller past it.
//! - **Failures are classified where they enter** ([`classify`]): the rest of credvend
//!   sees an [`AssumeError`] with a [`FailureReason`], never an SDK type.
//! - **One client per region**, created lazily and cached; they share the base
//!   identity cache, so the base (or chained vendor-role) credentials are resolved once
//!   and reused until they near expiry. Each region's client has its own endpoint
//!   override (`[sts.endpoint_urls]`); the primary's (also the deprecated
//!   `endpoint_url`) applies to mappings' own regions as well, as it always has; a
//!   fallback region without one uses AWS's regional endpoint.
//! - **Regional failover** ([`super::regions`]): a network error, timeout, 5xx,
//!   throttling or `RegionDisabledException` sends the call on at once to the next
//!   region of its plan, skipping regions whose circuit breaker is open; terminal
//!   answers (`AccessDenied`, validation errors) never go elsewhere. The caller's
//!   [`AttemptHooks`] charge each failover attempt to the STS budget.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::SdkConfig;
use aws_config::identity::IdentityCache;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sts::config::{Region, SharedIdentityCache};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleOutput;
use aws_sdk_sts::types::{PolicyDescriptorType, Tag};
#[cfg(any(test, feature = "test-util"))]
use aws_smithy_async::rt::sleep::{SharedAsyncSleep, TokioSleep};
#[cfg(any(test, feature = "test-util"))]
use aws_smithy_async::time::{SharedTimeSource, SystemTimeSource};

use super::regions::{self, RegionHealth, Regions};
use super::source_role::SourceRoleAcrossRegions;
use super::{
    AssumeError, AssumeRoleInput, Attempt, AttemptHooks, Credentials, FailureReason, NoHooks,
    RoleAssumer,
};
use crate::secret::{ExternalId, SecretValue};

/// Session name used when chaining through the vendor's `source_role_arn`. It shows up
/// in the customer's CloudTrail as part of the vendor principal.
pub const SOURCE_ROLE_SESSION_NAME: &str = "credvend";

/// Longest STS error message kept in an [`AssumeError`]: bounds log lines and `/status`.
const MAX_MESSAGE_LEN: usize = 512;

/// What [`StsAssumer`] needs from the `[sts]` configuration section.
#[derive(Debug, Clone)]
pub struct StsSettings {
    /// Region of the default client (GetCallerIdentity, the source-role assumption and
    /// every mapping without its own `region`).
    pub default_region: String,
    /// STS endpoint override of the primary region (VPC endpoint, FIPS, tests); it
    /// applies to mappings' own regions too, but not to the fallback regions.
    pub endpoint_url: Option<String>,
    /// Regions tried after the primary (or a mapping's own region), in order.
    pub fallback_regions: Vec<String>,
    /// Endpoint overrides of fallback regions, by region.
    pub endpoint_urls: BTreeMap<String, String>,
    /// Vendor service role assumed with the base identity first (role chaining).
    pub source_role_arn: Option<String>,
    /// Bound on one STS call, including resolving the base identity.
    pub call_timeout: Duration,
}

impl From<&crate::config::StsConfig> for StsSettings {
    fn from(config: &crate::config::StsConfig) -> Self {
        Self {
            default_region: config.region.to_string(),
            endpoint_url: config.endpoint_url.clone(),
            fallback_regions: config
                .fallback_regions
                .iter()
                .map(ToString::to_string)
                .collect(),
            endpoint_urls: config.endpoint_urls.clone(),
            source_role_arn: config.source_role_arn.as_ref().map(ToString::to_string),
            call_timeout: config.call_timeout,
        }
    }
}

/// Who the base (or chained) identity is, from `sts:GetCallerIdentity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// 12-digit AWS account ID.
    pub account: String,
    /// `arn:aws:iam::ACCOUNT:user/NAME` or `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
    pub arn: String,
}

/// The production [`RoleAssumer`], backed by aws-sdk-sts.
///
/// **Base identity errors.** When STS rejects the *caller's* credentials
/// ([`FailureReason::ExpiredBaseCredentials`]: `ExpiredToken`, `InvalidClientTokenId`,
/// a signature that does not match the key, …), the base credentials are stale: an
/// instance-profile or container credential rotated, an operator replaced the keys, or
/// the chained vendor-role session ended early. The SDK's identity cache would keep
/// handing out the stale credential until its own notion of expiry, so the assumer drops
/// every client and the identity cache they share, builds new ones (which re-resolve the
/// base identity from the chain and, with `source_role_arn`, re-assume the vendor role),
/// and retries the call **once**. A second failure is returned to the caller. Concurrent
/// calls that fail on the same stale identity rebuild only once.
///
/// Each attempt is bounded by `call_timeout`, so one `assume_role` takes at most twice
/// that.
pub struct StsAssumer {
    settings: StsSettings,
    /// Shared SDK configuration: base credentials provider (already wrapped in the
    /// source-role provider when chaining), HTTP client, retry and timeout settings.
    sdk_config: SdkConfig,
    clients: Mutex<ClientSet>,
    /// The failover order and each region's circuit breaker.
    regions: Regions,
}

/// The current generation of clients. Replaced wholesale on a base-identity error.
struct ClientSet {
    /// Bumped on every rebuild, so a caller only rebuilds the generation it saw fail.
    generation: u64,
    /// Caches the base (or chained) identity for every client of this generation.
    identity_cache: SharedIdentityCache,
    /// One client per region, created on first use.
    by_region: HashMap<String, aws_sdk_sts::Client>,
}

impl ClientSet {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            identity_cache: IdentityCache::lazy().build(),
            by_region: HashMap::new(),
        }
    }
}

/// Failure to set up the STS client (before any call is made).
#[derive(Debug, thiserror::Error)]
pub enum StsSetupError {
    #[error("sts: region must not be empty")]
    EmptyRegion,
    #[error("sts: call_timeout must be greater than zero")]
    ZeroCallTimeout,
}

impl std::fmt::Debug for StsAssumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsAssumer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl StsAssumer {
    /// Production constructor: base credentials from the aws-config default chain.
    ///
    /// Reads the environment and shared config files (for the credential chain only;
    /// region, endpoint, retries and timeouts come from `settings`). Resolving the
    /// credentials themselves is lazy: a missing base identity surfaces on the first call
    /// as [`FailureReason::NoBaseCredentials`], not here.
    pub async fn from_env(settings: StsSettings) -> Result<Self, StsSetupError> {
        validate(&settings)?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.default_region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeout_config(settings.call_timeout));
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let base = loader.load().await;
        Ok(Self::from_base_config(settings, base).await)
    }

    /// Test constructor: base credentials from `provider`, nothing read from the
    /// environment.
    #[cfg(any(test, feature = "test-util"))]
    pub async fn with_credentials_provider(
        settings: StsSettings,
        provider: SharedCredentialsProvider,
    ) -> Result<Self, StsSetupError> {
        validate(&settings)?;
        // A hand-built SdkConfig has no runtime defaults; the source-role provider
        // needs a clock and a sleep (the STS clients would default them themselves).
        let mut builder = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .time_source(SharedTimeSource::new(SystemTimeSource::new()))
            .sleep_impl(SharedAsyncSleep::new(TokioSleep::new()))
            .region(Region::new(settings.default_region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeout_config(settings.call_timeout))
            .credentials_provider(provider);
        if let Some(url) = &settings.endpoint_url {
            builder = builder.endpoint_url(url.clone());
        }
        Ok(Self::from_base_config(settings, builder.build()).await)
    }

    async fn from_base_config(settings: StsSettings, base: SdkConfig) -> Self {
        let regions = Regions::new(&settings.default_region, &settings.fallback_regions);
        let sdk_config = match &settings.source_role_arn {
            None => base,
            Some(source_role) => {
                // The vendor role is assumed across the regions like any STS call
                // (`super::source_role`). Its providers' own STS clients skip the
                // identity cache, so every vendor role assumption re-reads the base
                // identity; our per-generation cache sits on top and holds the chained
                // credentials.
                let chained = SourceRoleAcrossRegions::new(
                    source_role,
                    SOURCE_ROLE_SESSION_NAME,
                    &base,
                    regions.clone(),
                    |region| endpoint_for(&settings, region),
                )
                .await;
                base.into_builder()
                    .credentials_provider(SharedCredentialsProvider::new(chained))
                    .build()
            }
        };
        Self {
            regions,
            settings,
            sdk_config,
            clients: Mutex::new(ClientSet::new(0)),
        }
    }

    /// Each region's health ([`super::regions`]).
    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    /// Who the base identity (after chaining through `source_role_arn`, if set) is.
    ///
    /// Used by `credvend policy trust` to name the vendor account in a trust policy, and
    /// by the daemon's check of its own identity. Fails over across the configured
    /// regions like an AssumeRole (the same loop, `across_regions`): a dead primary must
    /// not read as "no identity" while a fallback answers.
    pub async fn get_caller_identity(&self) -> Result<CallerIdentity, AssumeError> {
        let plan = self.regions.plan(&self.settings.default_region);
        self.across_regions(&plan, &NoHooks, |ticket| self.caller_identity_in(ticket))
            .await
    }

    /// One GetCallerIdentity in the ticket's region, recorded on its breaker.
    async fn caller_identity_in(
        &self,
        ticket: regions::Ticket,
    ) -> Result<CallerIdentity, AssumeError> {
        let region = ticket.region().to_owned();
        let result = self
            .call_with_base_identity_retry(&region, |client| async move {
                client.get_caller_identity().send().await
            })
            .await
            .map_err(|err| kept(err, None));
        ticket.record(result.as_ref().map(|_| ()).map_err(|e| e.reason));
        let output = result?;
        match (output.account, output.arn) {
            (Some(account), Some(arn)) => Ok(CallerIdentity { account, arn }),
            _ => Err(local_error(
                FailureReason::Other,
                "MalformedResponse",
                "GetCallerIdentity response lacks Account or Arn",
            )),
        }
    }

    /// One AssumeRole, failing over across the regions of `input.region`'s plan
    /// ([`Regions::plan`], [`StsAssumer::across_regions`]).
    async fn assume(
        &self,
        input: &AssumeRoleInput,
        hooks: &dyn AttemptHooks,
    ) -> Result<Credentials, AssumeError> {
        let request = AssumeRoleRequest::from_input(input)?;
        let plan = self.regions.plan(&input.region);
        self.across_regions(&plan, hooks, |ticket| {
            self.attempt(&request, input, ticket, hooks)
        })
        .await
    }

    /// `call` in the regions of `plan` in turn: each attempt in one region, the next
    /// region at once on a failure that [`regions::fails_over`], open breakers skipped,
    /// and the first region of the plan as the last resort when all are. `hooks` is
    /// told before each attempt after the first.
    async fn across_regions<T, F, Fut>(
        &self,
        plan: &[String],
        hooks: &dyn AttemptHooks,
        call: F,
    ) -> Result<T, AssumeError>
    where
        F: Fn(regions::Ticket) -> Fut,
        Fut: Future<Output = Result<T, AssumeError>>,
    {
        let mut admitted = false;
        let mut last_error = None;
        for region in plan {
            let Some(ticket) = self.regions.admit(region) else {
                tracing::debug!(region = %region, "STS region skipped: its breaker is open");
                continue;
            };
            if admitted {
                hooks.before_failover(region).await;
            }
            admitted = true;
            match call(ticket).await {
                Ok(found) => return Ok(found),
                Err(error) if regions::fails_over(error.reason) => {
                    tracing::warn!(
                        region = %region,
                        reason = %error.reason,
                        code = %error.code,
                        "STS call failed in this region; trying the next region"
                    );
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        if !admitted {
            // Every region is skipped: one attempt at the first, as with a single region.
            return call(self.regions.force(&plan[0])).await;
        }
        Err(last_error.expect("a region was tried"))
    }

    /// One attempt in the ticket's region, recorded on its breaker and reported.
    async fn attempt(
        &self,
        request: &AssumeRoleRequest,
        input: &AssumeRoleInput,
        ticket: regions::Ticket,
        hooks: &dyn AttemptHooks,
    ) -> Result<Credentials, AssumeError> {
        let region = ticket.region().to_owned();
        let started = std::time::Instant::now();
        let result = self
            .call_with_base_identity_retry(&region, |client| {
                let request = request.clone();
                async move { request.send(&client).await }
            })
            .await;
        let result = match result {
            Ok(output) => credentials_from_output(output),
            Err(err) => Err(kept(err, input.external_id.as_ref())),
        };
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.reason);
        ticket.record(outcome);
        hooks.attempt_finished(&Attempt {
            region: &region,
            outcome,
            duration: started.elapsed(),
        });
        result
    }

    /// Runs `call` against the client for `region`; on a base-identity error, rebuilds
    /// the clients and runs it once more (see the type docs).
    async fn call_with_base_identity_retry<T, E, F, Fut>(
        &self,
        region: &str,
        call: F,
    ) -> Result<T, AssumeError>
    where
        F: Fn(aws_sdk_sts::Client) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (generation, client) = self.client(region);
        let first = self.bounded(call(client)).await;
        match first {
            Err(err) if err.rejected_base_identity => {
                tracing::warn!(
                    region,
                    code = %err.error.code,
                    "STS rejected the base credentials; re-resolving them and retrying once."
                );
                self.invalidate(generation);
                let (_, client) = self.client(region);
                self.bounded(call(client)).await.map_err(|e| e.error)
            }
            other => other.map_err(|e| e.error),
        }
    }

    /// One STS call, bounded by `call_timeout` and classified.
    async fn bounded<T, E>(
        &self,
        call: impl Future<Output = Result<T, SdkError<E>>>,
    ) -> Result<T, ClassifiedCall>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        // The SDK's operation timeout normally fires first; this is the backstop that
        // makes the bound hold whatever the SDK does.
        match tokio::time::timeout(self.settings.call_timeout, call).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(err)) => {
                let error = classify(&err);
                Err(ClassifiedCall {
                    rejected_base_identity: matches!(err, SdkError::ServiceError(_))
                        && error.reason == FailureReason::ExpiredBaseCredentials,
                    error,
                })
            }
            Err(_elapsed) => Err(ClassifiedCall {
                rejected_base_identity: false,
                error: timeout_error(self.settings.call_timeout),
            }),
        }
    }

    fn lock_clients(&self) -> MutexGuard<'_, ClientSet> {
        // The guarded data stays consistent even if a holder panicked (every mutation is
        // a single insert or a wholesale replace), so poisoning carries no information.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client for `region` in the current generation, creating it if needed.
    fn client(&self, region: &str) -> (u64, aws_sdk_sts::Client) {
        let mut set = self.lock_clients();
        let identity_cache = set.identity_cache.clone();
        let generation = set.generation;
        let client = set
            .by_region
            .entry(region.to_owned())
            .or_insert_with(|| {
                let mut config = aws_sdk_sts::config::Builder::from(&self.sdk_config)
                    .region(Region::new(region.to_owned()))
                    .identity_cache(identity_cache);
                config.set_endpoint_url(endpoint_for(&self.settings, region));
                aws_sdk_sts::Client::from_conf(config.build())
            })
            .clone();
        (generation, client)
    }

    /// Drops every client and the identity cache, unless another caller already did so
    /// since `seen_generation` was handed out.
    fn invalidate(&self, seen_generation: u64) {
        let mut set = self.lock_clients();
        if set.generation == seen_generation {
            *set = ClientSet::new(seen_generation + 1);
        }
    }
}

impl RoleAssumer for StsAssumer {
    fn assume_role<'a>(
        &'a self,
        input: &'a AssumeRoleInput,
    ) -> Pin<Box<dyn Future<Output = Result<Credentials, AssumeError>> + Send + 'a>> {
        Box::pin(self.assume(input, &NoHooks))
    }

    fn assume_role_with<'a>(
        &'a self,
        input: &'a AssumeRoleInput,
        hooks: &'a dyn AttemptHooks,
    ) -> Pin<Box<dyn Future<Output = Result<Credentials, AssumeError>> + Send + 'a>> {
        Box::pin(self.assume(input, hooks))
    }

    fn region_health(&self) -> Vec<RegionHealth> {
        self.regions.health()
    }

    fn use_clock(&self, clock: std::sync::Arc<dyn crate::clock::Clock>) {
        self.regions.use_clock(clock);
    }
}

/// A classified failure plus whether it warrants the base-identity retry.
struct ClassifiedCall {
    error: AssumeError,
    /// Only an answer from STS itself says the base identity is stale; a credential
    /// provider that fails to produce one is not helped by asking it again at once.
    rejected_base_identity: bool,
}

/// The SDK request for one [`AssumeRoleInput`], built once and cloned per attempt so the
/// External ID is copied out of its secret wrapper only here.
#[derive(Clone)]
struct AssumeRoleRequest {
    role_arn: String,
    session_name: String,
    external_id: Option<String>,
    duration_seconds: i32,
    policy: Option<String>,
    policy_arns: Vec<PolicyDescriptorType>,
    tags: Vec<Tag>,
    source_identity: Option<String>,
}

impl AssumeRoleRequest {
    fn from_input(input: &AssumeRoleInput) -> Result<Self, AssumeError> {
        let tags = input
            .tags
            .iter()
            .map(|(key, value)| Tag::builder().key(key).value(value).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                local_error(FailureReason::InvalidRequest, "InvalidTag", &e.to_string())
            })?;
        Ok(Self {
            role_arn: input.role_arn.to_string(),
            session_name: input.session_name.to_string(),
            external_id: input.external_id.as_ref().map(|id| id.expose().to_owned()),
            // Out-of-range durations are STS's to reject (config validation already did).
            duration_seconds: i32::try_from(input.duration.as_secs()).unwrap_or(i32::MAX),
            policy: input.session_policy.clone(),
            policy_arns: input
                .policy_arns
                .iter()
                .map(|arn| PolicyDescriptorType::builder().arn(&**arn).build())
                .collect(),
            tags,
            source_identity: input.source_identity.as_ref().map(ToString::to_string),
        })
    }

    async fn send(
        self,
        client: &aws_sdk_sts::Client,
    ) -> Result<AssumeRoleOutput, SdkError<aws_sdk_sts::operation::assume_role::AssumeRoleError>>
    {
        // Empty lists are sent as "absent", not as empty members.
        let policy_arns = (!self.policy_arns.is_empty()).then_some(self.policy_arns);
        let tags = (!self.tags.is_empty()).then_some(self.tags);
        client
            .assume_role()
            .role_arn(self.role_arn)
            .role_session_name(self.session_name)
            .set_external_id(self.external_id)
            .duration_seconds(self.duration_seconds)
            .set_policy(self.policy)
            .set_policy_arns(policy_arns)
            .set_tags(tags)
            .set_source_identity(self.source_identity)
            .send()
            .await
    }
}

/// The endpoint URL of `region`'s STS client (`None`: AWS's regional endpoint): its
/// `[sts.endpoint_urls]` entry; for a fallback without one, AWS's (the primary's
/// override is not that region's endpoint); otherwise (the primary, a mapping's own
/// region) the primary's override, as `endpoint_url` always was.
fn endpoint_for(settings: &StsSettings, region: &str) -> Option<String> {
    match settings.endpoint_urls.get(region) {
        Some(url) => Some(url.clone()),
        None if settings.fallback_regions.iter().any(|r| r == region) => None,
        None => settings.endpoint_url.clone(),
    }
}

fn validate(settings: &StsSettings) -> Result<(), StsSetupError> {
    if settings.default_region.is_empty() {
        return Err(StsSetupError::EmptyRegion);
    }
    if settings.call_timeout.is_zero() {
        return Err(StsSetupError::ZeroCallTimeout);
    }
    Ok(())
}

fn timeout_config(call_timeout: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(call_timeout)
        .read_timeout(call_timeout)
        .operation_attempt_timeout(call_timeout)
        .operation_timeout(call_timeout)
        .build()
}

fn credentials_from_output(output: AssumeRoleOutput) -> Result<Credentials, AssumeError> {
    let malformed = |what: &str| {
        local_error(
            FailureReason::Other,
            "MalformedResponse",
            &format!("AssumeRole response lacks {what}"),
        )
    };
    let creds = output.credentials.ok_or_else(|| malformed("Credentials"))?;
    let user = output
        .assumed_role_user
        .ok_or_else(|| malformed("AssumedRoleUser"))?;
    let expiration = SystemTime::try_from(creds.expiration)
        .map_err(|_| malformed("a representable Expiration"))?;
    Ok(Credentials {
        access_key_id: creds.access_key_id,
        // Moved, not copied: the only copy of each secret now lives in a zeroizing type.
        secret_access_key: SecretValue::new(creds.secret_access_key),
        session_token: SecretValue::new(creds.session_token),
        expiration,
        assumed_role_arn: user.arn,
    })
}

/// Classifies any STS SDK failure (AssumeRole, GetCallerIdentity, …).
///
/// The SDK side is kept thin: service errors go to [`classify_service_error`] (a pure
/// function of code, message and HTTP status); transport failures are sorted by kind.
pub fn classify<E>(err: &SdkError<E>) -> AssumeError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => classify_service_error(
            ctx.err().code(),
            ctx.err().message(),
            ctx.raw().status().as_u16(),
        ),
        SdkError::TimeoutError(_) => local_error(
            FailureReason::Timeout,
            "Timeout",
            "STS call exceeded the call timeout",
        ),
        SdkError::DispatchFailure(failure) => {
            if failure.is_timeout() {
                local_error(
                    FailureReason::Timeout,
                    "Timeout",
                    "STS connection timed out",
                )
            } else if let Some(cred_err) = find_in_chain::<CredentialsError>(err) {
                // The SDK reports a base identity it could not resolve (no credentials in
                // the chain, the vendor role refused) as a dispatch failure; it is neither
                // the network nor the customer.
                local_error(
                    FailureReason::NoBaseCredentials,
                    "BaseCredentialsUnavailable",
                    &error_chain(cred_err),
                )
            } else {
                local_error(FailureReason::Network, "NetworkError", &error_chain(err))
            }
        }
        SdkError::ResponseError(response) => local_error(
            FailureReason::Other,
            "MalformedResponse",
            &format!(
                "unparseable STS response (HTTP {})",
                response.raw().status().as_u16()
            ),
        ),
        // The request could not even be built (bad input or endpoint): the same input
        // will fail the same way, so it is terminal like a validation error.
        SdkError::ConstructionFailure(_) => local_error(
            FailureReason::InvalidRequest,
            "InvalidRequest",
            &error_chain(err),
        ),
        _ => local_error(FailureReason::Other, "Unknown", &error_chain(err)),
    }
}

/// Classifies an error answer from STS by its AWS error code, falling back on the HTTP
/// status for codes we do not know (or bodies we could not parse).
///
/// Base-credential codes deserve care: they are the *caller's* identity being refused,
/// not the customer's role, so they are transient (`ExpiredBaseCredentials`) and trigger
/// a re-resolve of the base identity. `SignatureDoesNotMatch` is one of them (a rotated
/// secret key that no longer matches its key ID) *unless* the message says "Signature
/// expired": that is clock skew on this host, which new credentials would not fix.
pub fn classify_service_error(
    code: Option<&str>,
    message: Option<&str>,
    status: u16,
) -> AssumeError {
    let message = message.unwrap_or_default();
    let reason = match code.unwrap_or_default() {
        "AccessDenied" | "AccessDeniedException" | "NoSuchEntity" | "NoSuchEntityException" => {
            FailureReason::AccessDenied
        }
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "RequestThrottled" => FailureReason::Throttled,
        "SignatureDoesNotMatch" if message.starts_with("Signature expired") => FailureReason::Other,
        "ExpiredToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "SignatureDoesNotMatch" => FailureReason::ExpiredBaseCredentials,
        "RegionDisabledException" | "RegionDisabled" => FailureReason::RegionDisabled,
        "ValidationError"
        | "ValidationException"
        | "MalformedPolicyDocument"
        | "MalformedPolicyDocumentException"
        | "PackedPolicyTooLarge"
        | "PackedPolicyTooLargeException"
        | "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "MissingParameter" => FailureReason::InvalidRequest,
        "InternalFailure"
        | "InternalError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException" => FailureReason::ServerError,
        _ if status >= 500 => FailureReason::ServerError,
        _ if status == 429 => FailureReason::Throttled,
        // Unknown 4xx: transient by default, so an unfamiliar answer never evicts a
        // credential that is still valid.
        _ => FailureReason::Other,
    };
    AssumeError {
        reason,
        code: code.unwrap_or("Unknown").to_owned(),
        // Whole: the External ID is scrubbed before the message is cut (`kept`).
        message: message.to_owned(),
        // Real AWS says "The requested DurationSeconds exceeds the MaxSessionDuration set
        // for this role." or, when chaining, "… exceeds the 1 hour session limit for roles
        // assumed by role chaining."; a retry at 3600 s fixes both.
        duration_too_long: reason == FailureReason::InvalidRequest
            && message.contains("DurationSeconds exceeds"),
    }
}

fn timeout_error(call_timeout: Duration) -> AssumeError {
    local_error(
        FailureReason::Timeout,
        "Timeout",
        &format!(
            "STS call exceeded the call timeout of {}",
            humantime::format_duration(call_timeout)
        ),
    )
}

fn local_error(reason: FailureReason, code: &str, message: &str) -> AssumeError {
    AssumeError {
        reason,
        code: code.to_owned(),
        message: truncate(message),
        duration_too_long: false,
    }
}

/// An error as it leaves this client: the External ID scrubbed from the whole message,
/// then the message cut to [`MAX_MESSAGE_LEN`]. In that order: a cut through an echoed
/// External ID would leave a prefix of it that neither the exact match nor the `Value
/// '…' at 'externalId'` pattern recognises (the pattern's closing half cut away).
fn kept(mut err: AssumeError, external_id: Option<&ExternalId>) -> AssumeError {
    if let Some(external_id) = external_id {
        err.message = scrub_external_id(&err.message, external_id.expose());
    }
    err.message = truncate(&err.message);
    err
}

fn truncate(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_LEN) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message.to_owned(),
    }
}

/// STS validation errors echo parameter values ("Value 'x' at 'externalId' failed to
/// satisfy constraint …"), so the External ID must be scrubbed from any message we keep.
pub(crate) fn scrub_external_id(message: &str, external_id: &str) -> String {
    let mut scrubbed = if external_id.is_empty() {
        message.to_owned()
    } else {
        message.replace(external_id, "<external id>")
    };
    // The echoed value may be transformed or cut short; drop whatever sits in the quotes.
    const MARKER: &str = "' at 'externalId'";
    while let Some(marker) = scrubbed.find(MARKER) {
        let Some(open) = scrubbed[..marker].rfind("Value '") else {
            break;
        };
        scrubbed.replace_range(open..marker + MARKER.len(), "Value at 'ExternalId'");
    }
    scrubbed
}

/// The first error of type `T` in `err`'s source chain.
fn find_in_chain<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// `outer: inner: innermost`, the way `DisplayErrorContext` prints, on one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        parts.push(e.to_string());
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(code: &str, status: u16) -> FailureReason {
        classify_service_error(Some(code), Some("m"), status).reason
    }

    #[test]
    fn aws_codes_map_to_reasons() {
        use FailureReason::*;
        let cases = [
            ("AccessDenied", 403, AccessDenied),
            ("NoSuchEntity", 404, AccessDenied),
            ("Throttling", 400, Throttled),
            ("ThrottlingException", 400, Throttled),
            ("RequestLimitExceeded", 400, Throttled),
            ("TooManyRequestsException", 429, Throttled),
            ("ExpiredToken", 400, ExpiredBaseCredentials),
            ("ExpiredTokenException", 400, ExpiredBaseCredentials),
            ("InvalidClientTokenId", 403, ExpiredBaseCredentials),
            ("UnrecognizedClientException", 400, ExpiredBaseCredentials),
            ("SignatureDoesNotMatch", 403, ExpiredBaseCredentials),
            ("RegionDisabledException", 403, RegionDisabled),
            ("ValidationError", 400, InvalidRequest),
            ("MalformedPolicyDocument", 400, InvalidRequest),
            ("MalformedPolicyDocumentException", 400, InvalidRequest),
            ("PackedPolicyTooLarge", 400, InvalidRequest),
            ("InvalidParameterValue", 400, InvalidRequest),
            ("InternalFailure", 500, ServerError),
            ("ServiceUnavailable", 503, ServerError),
            ("SomethingNew", 502, ServerError),
            ("SomethingNew", 429, Throttled),
            ("SomethingNew", 400, Other),
        ];
        for (code, status, expected) in cases {
            assert_eq!(reason(code, status), expected, "{code} / {status}");
        }
    }

    #[test]
    fn clock_skew_is_not_a_base_credential_problem() {
        let err = classify_service_error(
            Some("SignatureDoesNotMatch"),
            Some("Signature expired: 20260101T000000Z is now earlier than 20260101T000500Z"),
            403,
        );
        assert_eq!(err.reason, FailureReason::Other);
    }

    #[test]
    fn unparseable_error_body_falls_back_on_status() {
        let err = classify_service_error(None, None, 503);
        assert_eq!(err.reason, FailureReason::ServerError);
        assert_eq!(err.code, "Unknown");
        assert_eq!(
            classify_service_error(None, None, 418).reason,
            FailureReason::Other
        );
    }

    #[test]
    fn duration_over_role_maximum_is_flagged() {
        let max = classify_service_error(
            Some("ValidationError"),
            Some("The requested DurationSeconds exceeds the MaxSessionDuration set for this role."),
            400,
        );
        assert_eq!(max.reason, FailureReason::InvalidRequest);
        assert!(max.duration_too_long);
        let chained = classify_service_error(
            Some("ValidationError"),
            Some(
                "The requested DurationSeconds exceeds the 1 hour session limit for roles \
                 assumed by role chaining.",
            ),
            400,
        );
        assert!(chained.duration_too_long);
        let other = classify_service_error(Some("ValidationError"), Some("bad ARN"), 400);
        assert!(!other.duration_too_long);
        let denied =
            classify_service_error(Some("AccessDenied"), Some("DurationSeconds exceeds"), 403);
        assert!(
            !denied.duration_too_long,
            "only validation errors carry the flag"
        );
    }

    #[test]
    fn messages_are_bounded() {
        let long = "x".repeat(10 * MAX_MESSAGE_LEN);
        let err = kept(
            classify_service_error(Some("AccessDenied"), Some(&long), 403),
            None,
        );
        assert!(err.message.chars().count() <= MAX_MESSAGE_LEN + 1);
    }

    /// An echoed External ID that the cut at [`MAX_MESSAGE_LEN`] goes through: scrubbed
    /// whole first, so no part of it is left before the cut.
    #[test]
    fn an_external_id_across_the_cut_is_scrubbed_whole() {
        let canary = format!("CANARY{}", "k".repeat(100));
        let lead = "1 validation error detected: ".len() + "Value '".len();
        // Long enough that the ID starts 20 characters before the cut.
        let padding = "p".repeat(MAX_MESSAGE_LEN - 20 - lead);
        let message = format!(
            "1 validation error detected: {padding}Value '{canary}' at 'externalId' failed to \
             satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@:/-]*"
        );
        assert!(message.find("CANARY").unwrap() < MAX_MESSAGE_LEN);
        assert!(message.find("CANARY").unwrap() + canary.len() > MAX_MESSAGE_LEN);
        let err = kept(
            classify_service_error(Some("ValidationError"), Some(&message), 400),
            Some(&ExternalId::new(canary.clone())),
        );
        assert!(!err.message.contains("CANARY"), "{}", err.message);
        assert!(!err.message.contains("kkkk"), "{}", err.message);
        assert!(err.message.chars().count() <= MAX_MESSAGE_LEN + 1);
    }

    #[test]
    fn external_id_is_scrubbed_from_messages() {
        let canary = "CANARY-ext-id-1234";
        let echoed = format!(
            "1 validation error detected: Value '{canary}' at 'externalId' failed to satisfy \
             constraint: Member must have length less than or equal to 1224"
        );
        let scrubbed = scrub_external_id(&echoed, canary);
        assert!(!scrubbed.contains("CANARY"), "{scrubbed}");
        assert!(
            scrubbed.contains("failed to satisfy constraint"),
            "{scrubbed}"
        );

        // Even a transformed echo (here: cut short) does not survive.
        let cut = "Value 'CANARY-ext' at 'externalId' failed";
        let scrubbed = scrub_external_id(cut, canary);
        assert!(!scrubbed.contains("CANARY"), "{scrubbed}");

        let plain = "User: arn:aws:iam::1:user/v is not authorized";
        assert_eq!(scrub_external_id(plain, canary), plain);
    }

    #[tokio::test]
    async fn settings_that_cannot_work_are_refused_up_front() {
        let provider = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "AKID", "secret", None, None, "test",
        ));
        let good = StsSettings {
            default_region: "us-east-1".to_owned(),
            endpoint_url: None,
            fallback_regions: Vec::new(),
            endpoint_urls: BTreeMap::new(),
            source_role_arn: None,
            call_timeout: Duration::from_secs(5),
        };
        let zero = StsSettings {
            call_timeout: Duration::ZERO,
            ..good.clone()
        };
        let no_region = StsSettings {
            default_region: String::new(),
            ..good.clone()
        };
        assert!(matches!(
            StsAssumer::with_credentials_provider(zero, provider.clone()).await,
            Err(StsSetupError::ZeroCallTimeout)
        ));
        assert!(matches!(
            StsAssumer::with_credentials_provider(no_region, provider.clone()).await,
            Err(StsSetupError::EmptyRegion)
        ));
        let assumer = StsAssumer::with_credentials_provider(good, provider)
            .await
            .unwrap();
        let shown = format!("{assumer:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn error_display_names_reason_and_code() {
        let err = classify_service_error(Some("Throttling"), Some("Rate exceeded"), 400);
        assert_eq!(err.to_string(), "throttled: Throttling: Rate exceeded");
    }
}
