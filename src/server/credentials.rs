//! The credential endpoint: `GET /v1/credentials/{mapping}` and `GET /v1/credentials`.
//!
//! Checks run cheapest and most hostile first: framing (URI length, no body), proxy
//! headers, `Host`, method, path, token (a configured one, else a live job token of the
//! mapping: [`super::jobs`]); only an authorised request reaches the cache. The query string is ignored
//! (the JS SDK rewrites it). Every response is logged once on the `credvend::audit`
//! target: mapping, client address, status, source, AccessKeyId and expiry — never the
//! secret key, session token, auth token or External ID.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;

use hyper::body::Incoming;
use hyper::header::{self, HeaderName};
use hyper::{Method, Request, Response};

use super::ConnInfo;
use super::access::{AccessTable, AuthFailure};
use super::jobs::{JobGrant, JobTokens};
use super::wire::{self, Body};
use crate::cache::{CredentialCache, MappingTable, VendError, Vended};
use crate::events::{CredentialsRefused, CredentialsServed};
use crate::metrics::{Metrics, route};
use crate::protocol::{ApiError, DeniedCause};
use crate::secret::TokenHash;

/// Headers that mean a proxy forwarded the request (a proxy adds at least one of them;
/// an SDK talking to credvend directly never sends any).
const PROXY_HEADERS: [HeaderName; 6] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("via"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
];

const PREFIX: &str = "/v1/credentials";

/// Longest mapping name a path may carry (config allows 64); longer is not a mapping.
const MAX_MAPPING_LEN: usize = 64;

/// What a credential request is checked and served against: one config generation's
/// access rules and mapping table. A reload swaps both in one store, and a request loads
/// them once, so it is authorised and served by the same generation: a token the
/// generation knows gets that generation's role, never the next one's, and a mapping
/// it was authorised for is found (docs/design.md, Reload).
pub struct Generation {
    pub access: AccessTable,
    pub mappings: MappingTable,
}

/// Shared state of the credential listeners.
#[derive(Clone)]
pub struct CredentialEndpoint {
    /// Swapped whole on reload; lock-free to read on every request.
    pub generation: Arc<ArcSwap<Generation>>,
    pub cache: CredentialCache,
    /// Request, served and auth-failure metrics.
    pub metrics: Arc<Metrics>,
    /// Job tokens (minted on the control socket), looked up only after the configured
    /// tokens did not match.
    pub jobs: JobTokens,
}

/// The answer to one request, as [`CredentialEndpoint::handle`] returns it: ready at
/// once for a cache hit and for every refusal (decided without waiting), a boxed future
/// only when the cache has to wait (a miss, a per-job entry). So a hit creates, moves
/// and drops no future state beyond the response itself (docs/performance.md, "The
/// cache hit's own cost").
pub enum Handled {
    /// The response, taken by the first poll.
    Ready(Option<Response<Body>>),
    /// Waiting for the cache.
    Waiting(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Future for Handled {
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        match self.get_mut() {
            Handled::Ready(response) => {
                Poll::Ready(response.take().expect("Handled polled after it completed"))
            }
            Handled::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

impl CredentialEndpoint {
    /// Checks and answers one request. Everything up to the cache is decided at once
    /// (`CredentialEndpoint::check`); a credential the cache holds ready is served
    /// without waiting, anything else waits in a boxed future.
    pub fn handle(&self, request: Request<Incoming>, conn: ConnInfo) -> Handled {
        let started = Instant::now();
        let generation = self.generation.load_full();
        let mut job = None;
        let (mapping, result) = match self.check(&generation, &request, conn, &mut job) {
            Err((mapping, error)) => (mapping, Err(error)),
            // A configured token: the mapping's own entry, if it is ready as it is.
            Ok(mapping)
                if job.is_none()
                    && let Some(vended) =
                        self.cache.cached_at(&generation.mappings, mapping, started) =>
            {
                let response = self.served(mapping, conn, &vended, None, started);
                (Some(mapping), Ok(response))
            }
            Ok(mapping) => {
                let endpoint = self.clone();
                let mapping = mapping.to_owned();
                return Handled::Waiting(Box::pin(async move {
                    let result = endpoint
                        .vend(&generation, &mapping, job.as_ref(), conn, started)
                        .await;
                    endpoint.finish(Some(&mapping), result, conn, job.as_ref(), started)
                }));
            }
        };
        Handled::Ready(Some(self.finish(
            mapping,
            result,
            conn,
            job.as_ref(),
            started,
        )))
    }

    /// The response for `result`: a refusal is audited and turned into its error
    /// response; either way the request is counted with its duration.
    fn finish(
        &self,
        mapping: Option<&str>,
        result: Result<Response<Body>, ApiError>,
        conn: ConnInfo,
        job: Option<&JobGrant>,
        started: Instant,
    ) -> Response<Body> {
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                CredentialsRefused {
                    mapping,
                    client: conn.peer,
                    error: &error,
                    job: job.map(JobGrant::audit),
                }
                .emit(&self.metrics);
                error.into_response()
            }
        };
        let code = response.status().as_u16();
        let route = if matches!(code, 400 | 404 | 405 | 414) {
            route::OTHER
        } else {
            route::CREDENTIALS
        };
        self.metrics.http_request(route, code, started.elapsed());
        response
    }

    /// Every check before the cache, cheapest and most hostile first: the mapping the
    /// request is authorised for, or the refusal with the mapping name it named (for
    /// the audit line). The name comes back borrowed (from the request or the access
    /// table): no allocation with a configured token. A job token that authorised the
    /// request is left in `job`.
    fn check<'a>(
        &self,
        generation: &'a Generation,
        request: &'a Request<Incoming>,
        conn: ConnInfo,
        job: &mut Option<JobGrant>,
    ) -> Result<&'a str, (Option<&'a str>, ApiError)> {
        let access = &generation.access;
        if let Some(error) = super::framing_error(request) {
            return Err((None, error));
        }
        let headers = request.headers();
        // One pass over the request's few names: cheaper than hashing all six.
        if headers.keys().any(|name| PROXY_HEADERS.contains(name)) {
            return Err((None, ApiError::ProxiedRequest));
        }
        if !access.hosts().allows_request(request, conn.local) {
            return Err((None, ApiError::InvalidHost));
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err((None, ApiError::MethodNotAllowed));
        }
        let requested = match parse_path(request.uri().path()) {
            Some(requested) => requested,
            None => return Err((None, ApiError::NotFound)),
        };
        let token = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        let authorized = match access.authorize(requested, token) {
            // Not a configured token: perhaps a live job token of the mapping. Expired,
            // revoked and unknown job tokens fall through to the same refusal as a
            // wrong token.
            Err(AuthFailure::Denied) => match token.and_then(|token| {
                let grant = self
                    .jobs
                    .authorize(requested, &TokenHash::of_token(token))?;
                let name = access.mapping_name(grant.mapping())?;
                Some((grant, name))
            }) {
                Some((grant, name)) => {
                    *job = Some(grant);
                    Ok(name)
                }
                None => Err(AuthFailure::Denied),
            },
            other => other,
        };
        match authorized {
            Ok(mapping) => Ok(mapping),
            Err(AuthFailure::MissingToken) => Err((requested, ApiError::MissingToken)),
            Err(failure @ (AuthFailure::Denied | AuthFailure::UnknownMapping)) => {
                let cause = if failure == AuthFailure::UnknownMapping {
                    DeniedCause::UnknownMapping
                } else {
                    DeniedCause::InvalidToken
                };
                Err((
                    requested,
                    ApiError::AccessDenied {
                        mapping: requested.map(str::to_string),
                        cause,
                    },
                ))
            }
        }
    }

    /// Audits a credential served for `mapping` and builds its response.
    fn served(
        &self,
        mapping: &str,
        conn: ConnInfo,
        vended: &Vended,
        job: Option<&JobGrant>,
        arrived: Instant,
    ) -> Response<Body> {
        let entry = &vended.entry;
        CredentialsServed {
            mapping,
            client: conn.peer,
            source: vended.source,
            access_key_id: entry.access_key_id(),
            expiration: entry.expiration,
            job: job.map(JobGrant::audit),
            arrived,
        }
        .emit(&self.metrics);
        // The body was encoded once when the credential arrived.
        wire::shared_credentials_response(&entry.body)
    }

    /// The credential of `mapping` for a request authorised by a configured token
    /// (`job` is `None`) or by a job token, waiting for the cache if need be: the
    /// response, or the refusal.
    async fn vend(
        &self,
        generation: &Generation,
        mapping: &str,
        job: Option<&JobGrant>,
        conn: ConnInfo,
        arrived: Instant,
    ) -> Result<Response<Body>, ApiError> {
        let vended = match job.and_then(JobGrant::session_name) {
            // The per-job entry, assumed with the token's RoleSessionName.
            Some(session) => {
                self.cache
                    .get_job_in(&generation.mappings, mapping, session)
                    .await
            }
            None => {
                self.cache
                    .get_in_at(&generation.mappings, mapping, arrived)
                    .await
            }
        };
        match vended {
            Ok(vended) => Ok(self.served(mapping, conn, &vended, job, arrived)),
            // Removed by a reload between the token check and the cache lookup.
            Err(VendError::UnknownMapping) => Err(ApiError::AccessDenied {
                mapping: Some(mapping.to_string()),
                cause: DeniedCause::UnknownMapping,
            }),
            Err(VendError::Denied(error)) => Err(ApiError::AssumeRoleDenied {
                mapping: mapping.to_string(),
                code: error.code,
            }),
            Err(VendError::UnsafeTrustPolicy(_)) => Err(ApiError::TrustPolicyUnsafe {
                mapping: mapping.to_string(),
            }),
            Err(VendError::Unavailable {
                retry_after_secs,
                reason,
            }) => Err(ApiError::Unavailable {
                mapping: Some(mapping.to_string()),
                retry_after_secs,
                reason,
            }),
        }
    }
}

/// `Some(None)` for `/v1/credentials`, `Some(Some(name))` for `/v1/credentials/name`,
/// `None` for anything else.
fn parse_path(path: &str) -> Option<Option<&str>> {
    let rest = path.strip_prefix(PREFIX)?;
    if rest.is_empty() || rest == "/" {
        return Some(None);
    }
    let name = rest.strip_prefix('/')?;
    let name = name.strip_suffix('/').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_MAPPING_LEN || name.contains('/') {
        return None;
    }
    Some(Some(name))
}

#[cfg(test)]
mod tests {
    use super::parse_path;

    #[test]
    fn paths() {
        assert_eq!(parse_path("/v1/credentials"), Some(None));
        assert_eq!(parse_path("/v1/credentials/"), Some(None));
        assert_eq!(parse_path("/v1/credentials/acme-s3"), Some(Some("acme-s3")));
        assert_eq!(
            parse_path("/v1/credentials/acme-s3/"),
            Some(Some("acme-s3"))
        );
        assert_eq!(parse_path("/v1/credentials/a/b"), None);
        assert_eq!(parse_path("/v1/credentialsX"), None);
        assert_eq!(parse_path("/"), None);
        assert_eq!(
            parse_path(&format!("/v1/credentials/{}", "a".repeat(65))),
            None
        );
    }
}
