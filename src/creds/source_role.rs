//! The vendor's `source_role_arn`, assumed across the STS regions (docs/design.md,
//! Regional failover).
//!
//! With `[sts] source_role_arn`, every customer AssumeRole is signed with the vendor
//! role's session, which credvend assumes first from the base identity. That call is
//! an STS call like any other, and a primary region that is down must not strand it: a
//! vendor session that expires while the primary is down would otherwise fail every
//! customer call in every region. [`SourceRoleAcrossRegions`] is the credentials
//! provider of the STS clients: one aws-config `AssumeRoleProvider` per region of the
//! chain (each with that region's endpoint), tried in the chain's order with the same
//! breakers and the same failover rules as the customer calls
//! ([`super::regions::fails_over`]), the first region as the last resort when every
//! breaker is open.

use aws_config::SdkConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{self, ProvideCredentials, future};
use aws_sdk_sts::config::Region;
use aws_sdk_sts::error::SdkError;
use aws_sdk_sts::operation::assume_role::AssumeRoleError;

use super::FailureReason;
use super::regions::{self, Regions, Ticket};

/// The credentials provider behind the STS clients when `source_role_arn` is set.
#[derive(Debug)]
pub(super) struct SourceRoleAcrossRegions {
    regions: Regions,
    /// One provider per region of `regions.chain()`, in that order.
    by_region: Vec<(String, AssumeRoleProvider)>,
}

impl SourceRoleAcrossRegions {
    /// `endpoint_for(region)` is the URL a region's STS client uses (`None`: AWS's
    /// regional endpoint), as for the customer calls.
    pub(super) async fn new(
        source_role: &str,
        session_name: &str,
        base: &SdkConfig,
        regions: Regions,
        endpoint_for: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let mut by_region = Vec::new();
        for region in regions.chain() {
            let mut config = base
                .clone()
                .into_builder()
                .region(Region::new(region.clone()));
            config.set_endpoint_url(endpoint_for(region));
            let provider = AssumeRoleProvider::builder(source_role.to_owned())
                .session_name(session_name)
                .configure(&config.build())
                .build()
                .await;
            by_region.push((region.clone(), provider));
        }
        Self { regions, by_region }
    }

    async fn credentials(&self) -> provider::Result {
        let plan = self.regions.plan(&self.regions.chain()[0]);
        let mut last_error = None;
        for region in &plan {
            let Some(ticket) = self.regions.admit(region) else {
                continue;
            };
            match self.attempt(region, ticket).await {
                Ok(credentials) => return Ok(credentials),
                Err((error, reason)) if regions::fails_over(reason) => {
                    tracing::warn!(
                        region = %region,
                        reason = %reason,
                        "Assuming the vendor's source role failed in this region; trying the next region"
                    );
                    last_error = Some(error);
                }
                Err((error, _)) => return Err(error),
            }
        }
        match last_error {
            Some(error) => Err(error),
            // Every region is skipped: one attempt at the first, as with a single region.
            None => {
                let ticket = self.regions.force(&plan[0]);
                self.attempt(&plan[0], ticket).await.map_err(|(e, _)| e)
            }
        }
    }

    async fn attempt(
        &self,
        region: &str,
        ticket: Ticket,
    ) -> Result<Credentials, (CredentialsError, FailureReason)> {
        let (_, provider) = self
            .by_region
            .iter()
            .find(|(r, _)| r == region)
            .expect("a provider for every region of the chain");
        let result = provider.provide_credentials().await.map_err(|error| {
            let reason = reason_of(&error);
            (error, reason)
        });
        ticket.record(result.as_ref().map(|_| ()).map_err(|(_, reason)| *reason));
        result
    }
}

impl ProvideCredentials for SourceRoleAcrossRegions {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.credentials())
    }
}

/// What a failed vendor-role assumption says, in the customer calls' terms: the STS
/// answer classified as theirs are ([`super::sts::classify`]); the provider's own
/// timeout a timeout; a base identity it could not load says nothing about the region;
/// a region disabled for the vendor's account moves on.
fn reason_of(error: &CredentialsError) -> FailureReason {
    match error {
        CredentialsError::ProviderTimedOut(_) => FailureReason::Timeout,
        CredentialsError::CredentialsNotLoaded(_) => FailureReason::NoBaseCredentials,
        // aws-config reports a RegionDisabledException (and a malformed policy) as
        // invalid configuration, with the STS error as its source.
        _ => match find_sdk_error(error) {
            Some(sdk_error) => super::sts::classify(sdk_error).reason,
            None => FailureReason::Other,
        },
    }
}

fn find_sdk_error(error: &CredentialsError) -> Option<&SdkError<AssumeRoleError>> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<SdkError<AssumeRoleError>>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}
