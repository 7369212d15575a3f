//! The admin listener: `/healthz` (liveness), `/readyz` (readiness). Metrics and
//! `/status` are served here as well once they exist; nothing on this listener vends
//! credentials or reveals a secret.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::ConnInfo;
use super::wire::{self, ApiError, Body};
use crate::cache::CredentialCache;

#[derive(Clone)]
pub struct AdminEndpoint {
    pub cache: CredentialCache,
    /// Set once every credential listener is serving.
    pub listening: Arc<AtomicBool>,
}

impl AdminEndpoint {
    pub async fn handle(&self, request: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return ApiError::MethodNotAllowed.into_response();
        }
        match request.uri().path() {
            "/healthz" => {
                wire::json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
            }
            "/readyz" => {
                let listening = self.listening.load(Ordering::Acquire);
                let warm = self.cache.prefetch_settled();
                let (status, body) = if listening && warm {
                    (StatusCode::OK, "{\"status\":\"ready\"}")
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
            _ => ApiError::NotFound.into_response(),
        }
    }
}
