//! Fetching: one AssumeRole within the STS budget and the concurrency bound, with the
//! MaxSessionDuration fallback, the clock-skew clamp and the checks on what STS returned.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::budget::Priority;
use super::lifecycle;
use super::table::MappingSpec;
use super::{Entry, FetchOutcome, Inner};
use crate::creds::{AssumeError, AssumeRoleInput, Attempt, AttemptHooks, FailureReason};
use crate::events::{
    AssumeRoleFailed, AssumeRoleSucceeded, ExpirationClamped, SessionDurationCapped,
    ShortCredentialReceived,
};
use crate::model::FetchError;
use crate::protocol::CredentialBody;

/// STS's cap for role chaining and the usual role `MaxSessionDuration`.
const ONE_HOUR: Duration = Duration::from_secs(3600);

impl Inner {
    /// One AssumeRole for `spec`, within the STS budget, with the MaxSessionDuration
    /// fallback.
    pub(super) async fn fetch(
        &self,
        spec: &MappingSpec,
        priority: Priority,
        duration_cap: Option<Duration>,
    ) -> FetchOutcome {
        self.check_trust(spec, priority).await?;
        let mut input = spec.input.clone();
        if let Some(cap) = duration_cap {
            input.duration = input.duration.min(cap);
        }
        self.budget.acquire(priority, spec.owner_key()).await;
        // STS computes Expiration from its own clock when it answers, which is no
        // earlier than this: measuring the lifetime from here never makes a full-length
        // credential look short because the call itself took time. A failover attempt
        // moves it to when that attempt was sent (after its wait for the budget).
        let hooks = FetchHooks {
            inner: self,
            spec,
            priority,
            sent_at: std::sync::Mutex::new(self.clock.now()),
        };
        let mut result = self
            .assume_role_observed(spec, &input, priority, &hooks)
            .await;
        if let Err(error) = &result
            && error.duration_too_long
            && input.duration > ONE_HOUR
        {
            SessionDurationCapped {
                mapping: spec.key.name(),
                requested: input.duration,
            }
            .emit();
            if let Some(slot) = self.lock_slots().get_mut(&spec.key) {
                slot.failures_mut().duration_cap = Some(ONE_HOUR);
            }
            input.duration = ONE_HOUR;
            self.budget.acquire(priority, spec.owner_key()).await;
            hooks.mark_sent();
            result = self
                .assume_role_observed(spec, &input, priority, &hooks)
                .await;
        }
        let sent_at = hooks.sent_at();
        let mut creds = result.map_err(FetchError::Sts)?;
        // STS sets Expiration by its own clock. A credential cannot outlive the duration
        // we asked for, counted from when we asked: an Expiration further out than that
        // means our wall clock is behind STS's (stepped back, or never synced), and
        // trusting it would serve the credential past its real expiry by the size of
        // the error. Use the bound in our clock's frame instead, for every decision and
        // on the wire, which is the frame the SDKs on this host compare it against.
        let latest = sent_at + input.duration;
        if creds.expiration > latest + lifecycle::SHORT_TOLERANCE {
            ExpirationClamped {
                mapping: spec.key.name(),
                ahead: creds.expiration.duration_since(latest).unwrap_or_default(),
            }
            .emit();
            creds.expiration = latest;
        }
        let now = self.now();
        let left = lifecycle::remaining(creds.expiration, now.wall);
        if !lifecycle::is_alive(left) {
            // Our clock or STS's is badly off; serving this would hand out a credential
            // that is (nearly) expired. Treat as transient and retry with backoff.
            return Err(FetchError::Sts(AssumeError {
                reason: FailureReason::Other,
                code: "ExpiredOnArrival".into(),
                message: format!(
                    "STS returned a credential with {}s left; check the host clock",
                    left.as_secs()
                ),
                duration_too_long: false,
            }));
        }
        let short_lived = lifecycle::is_short(creds.expiration, sent_at, input.duration);
        // Encode the response body once, here, for every request that will serve it.
        let Some(body) = CredentialBody::encode(&creds, &spec.input.role_arn) else {
            return Err(FetchError::Sts(AssumeError {
                reason: FailureReason::Other,
                code: "EncodingFailed".into(),
                message: "the credential could not be encoded (its AccessKeyId is not all word characters)".into(),
                duration_too_long: false,
            }));
        };
        if short_lived {
            ShortCredentialReceived {
                mapping: spec.key.name(),
                requested: input.duration,
                received: left,
            }
            .emit();
        }
        Ok(Arc::new(Entry::new(&creds, body, now, short_lived)))
    }

    /// One of the [`MAX_CONCURRENT_STS_CALLS`](super::MAX_CONCURRENT_STS_CALLS) permits
    /// every AssumeRole (fetch or enforcement probe) holds while it runs. Callers queue
    /// FIFO, counted by priority while they wait (`credvend_sts_calls_waiting`).
    pub(super) async fn sts_permit(
        &self,
        priority: Priority,
    ) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let waiting = &self.permit_waiting[priority.index()];
        waiting.fetch_add(1, Ordering::Relaxed);
        // The semaphore is never closed; if it were, call without a permit.
        let permit = self.sts_calls.acquire().await.ok();
        waiting.fetch_sub(1, Ordering::Relaxed);
        permit
    }

    /// One AssumeRole under a concurrency permit, timed (the STS calls only, not the
    /// wait for the permit), with its success or failure event (log line + metrics). A
    /// failover to another region is part of it: `hooks` charge each further attempt to
    /// the budget and count each attempt by region. The enforcement probes do not come
    /// through here: their expected AccessDenied answers are not failures and must not
    /// page anyone.
    pub(super) async fn assume_role_observed(
        &self,
        spec: &MappingSpec,
        input: &AssumeRoleInput,
        priority: Priority,
        hooks: &FetchHooks<'_>,
    ) -> Result<crate::creds::Credentials, AssumeError> {
        let _permit = self.sts_permit(priority).await;
        let started = std::time::Instant::now();
        let result = self.assumer.assume_role_with(input, hooks).await;
        let duration = started.elapsed();
        let mapping = spec.key.name();
        match &result {
            Ok(creds) => AssumeRoleSucceeded {
                mapping,
                session_name: spec.job_of.is_some().then_some(&*input.session_name),
                duration,
                access_key_id: &creds.access_key_id,
                expiration: creds.expiration,
            }
            .emit(&self.metrics),
            Err(error) => AssumeRoleFailed {
                mapping,
                duration,
                error,
            }
            .emit(&self.metrics),
        }
        result
    }
}

/// A fetch's [`AttemptHooks`]: each failover attempt waits for a token of the global STS
/// budget like the first, and every attempt is counted by region
/// (`credvend_assume_role_duration_seconds`).
pub(super) struct FetchHooks<'a> {
    inner: &'a Inner,
    spec: &'a MappingSpec,
    priority: Priority,
    /// When the latest attempt was sent (the injected clock's wall time).
    sent_at: std::sync::Mutex<std::time::SystemTime>,
}

impl FetchHooks<'_> {
    fn mark_sent(&self) {
        *self.sent_at.lock().unwrap_or_else(|e| e.into_inner()) = self.inner.clock.now();
    }

    fn sent_at(&self) -> std::time::SystemTime {
        *self.sent_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AttemptHooks for FetchHooks<'_> {
    fn before_failover<'a>(
        &'a self,
        _region: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            self.inner
                .budget
                .acquire(self.priority, self.spec.owner_key())
                .await;
            self.mark_sent();
        })
    }

    fn attempt_finished(&self, attempt: &Attempt<'_>) {
        self.inner
            .metrics
            .sts_call(attempt.region, attempt.outcome, attempt.duration);
    }
}
