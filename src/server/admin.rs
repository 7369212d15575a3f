//! The admin listener: `/healthz` (liveness), `/readyz` (readiness), `/metrics`
//! (Prometheus text format 0.0.4, see [`crate::metrics`]) and `/status` (JSON, see
//! [`super::status`]). Nothing on this listener vends credentials or reveals a secret,
//! but `/status` names mappings, key IDs and which roles are unsafe, so a request must
//! name this listener in its `Host` ([`HostAllowList`]: loopback names, the admin
//! listen address, the connected address, `server.admin_allowed_hosts`), as on the
//! credential listener: a web page cannot read it through DNS rebinding. A foreign `Host`
//! gets 403 `InvalidHost` and counts as `credvend_auth_failures_total{reason="invalid_host"}`.
//!
//! Every admin request is counted in `credvend_http_requests_total` under a fixed
//! `route` label (`metrics`, `healthz`, `readyz`, `status`, `other`), never its path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::time::Instant;

use super::ConnInfo;
use super::access::HostAllowList;
use super::jobs::JobTokens;
use super::status::{BaseIdentityStatus, LastReload};
use super::wire::{self, Body};
use crate::cache::CredentialCache;
use crate::metrics::{self, Metrics, route};
use crate::protocol::ApiError;

#[derive(Clone)]
pub struct AdminEndpoint {
    pub cache: CredentialCache,
    /// Set once every credential listener is serving.
    pub listening: Arc<AtomicBool>,
    /// The daemon's metrics, rendered by `/metrics` and counting admin requests.
    pub metrics: Arc<Metrics>,
    /// Config generation currently applied (for `/status`).
    pub generation: Arc<AtomicU64>,
    /// When the daemon started (for `/status`).
    pub started_at: SystemTime,
    /// `Host` values this listener accepts; swapped whole on reload.
    pub hosts: Arc<ArcSwap<HostAllowList>>,
    /// The last reload that went ahead, if any (for `/status`).
    pub last_reload: Arc<Mutex<Option<LastReload>>>,
    /// What is known of credvend's own AWS identity (for `/readyz` and `/status`).
    pub base_identity: Arc<Mutex<BaseIdentityStatus>>,
    /// Live job tokens (`/status` shows how many per mapping; never ids or tokens).
    pub jobs: JobTokens,
}

impl AdminEndpoint {
    pub async fn handle(&self, request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let route = route_of(request.uri().path());
        let response = self.respond(&request, conn, route);
        self.metrics
            .http_request(route, response.status().as_u16(), started.elapsed());
        response
    }

    fn respond(
        &self,
        request: &Request<Incoming>,
        conn: ConnInfo,
        route: &'static str,
    ) -> Response<Body> {
        if let Some(error) = super::framing_error(request) {
            return error.into_response();
        }
        if !self.hosts.load().allows_request(request, conn.local) {
            self.metrics.auth_failure("invalid_host");
            return ApiError::InvalidHost.into_response();
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return ApiError::MethodNotAllowed.into_response();
        }
        if route == route::METRICS {
            return self.metrics_response();
        }
        match request.uri().path() {
            "/healthz" => {
                wire::json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
            }
            "/readyz" => {
                let listening = self.listening.load(Ordering::Acquire);
                let warm = self.cache.prefetch_settled();
                let no_identity = self
                    .base_identity
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .unready_reason();
                let (status, body) = if listening && warm && no_identity.is_none() {
                    (StatusCode::OK, "{\"status\":\"ready\"}")
                } else if let (true, Some(reason)) = (listening, no_identity) {
                    // Nothing can be vended: say why, not "starting".
                    let body = serde_json::json!({ "status": "unavailable", "reason": reason });
                    return wire::json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Bytes::from(body.to_string()),
                    );
                } else if !listening {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "{\"status\":\"starting\",\"reason\":\"listeners not bound yet\"}",
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "{\"status\":\"starting\",\"reason\":\"prefetch mappings not warm yet\"}",
                    )
                };
                wire::json_response(status, Bytes::from_static(body.as_bytes()))
            }
            "/status" => {
                let last_reload = self
                    .last_reload
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let mut document = super::status::document(
                    &self.cache.status(),
                    self.cache.now(),
                    self.generation.load(Ordering::SeqCst),
                    self.started_at,
                    last_reload.as_ref(),
                    &self
                        .base_identity
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                );
                super::status::add_job_tokens(&mut document, &self.jobs.count_by_mapping());
                super::status::add_sts_regions(&mut document, &self.cache.sts_regions());
                let body = serde_json::to_vec_pretty(&document).unwrap_or_default();
                wire::json_response(StatusCode::OK, Bytes::from(body))
            }
            _ => ApiError::NotFound.into_response(),
        }
    }

    /// `GET /metrics`: refreshes the gauges that mirror the cache, then renders.
    fn metrics_response(&self) -> Response<Body> {
        self.metrics
            .observe_cache(&self.cache.status(), self.cache.sts_rate_limited_total());
        self.metrics.sts_regions(&self.cache.sts_regions());
        for (priority, count) in self.cache.sts_calls_waiting() {
            self.metrics.sts_calls_waiting(priority.as_str(), count);
        }
        let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// The `route` label of an admin path: a fixed string, never the path itself.
fn route_of(path: &str) -> &'static str {
    match path {
        "/metrics" => route::METRICS,
        "/healthz" => route::HEALTHZ,
        "/readyz" => route::READYZ,
        "/status" => route::STATUS,
        _ => route::OTHER,
    }
}
