//! The ECS container-credentials wire format as HTTP responses
//! (docs/design.md, Wire contract). What the bodies and error codes are lives in
//! [`crate::protocol`]; this module puts them on the wire.
//!
//! Success: status 200, `Content-Type: application/json`, `Cache-Control: no-store`,
//! a `Content-Length`, never compressed, and the credential body of
//! [`CredentialBody`], encoded once per credential when STS answers (by the cache);
//! every request then sends a reference-counted view of it
//! ([`shared_credentials_response`]): no per-request serialisation or allocation of the
//! body.
//!
//! Errors carry both key casings, `{"code":C,"message":M,"Code":C,"Message":M}` (Java and
//! Go read the lower-case pair, JS the capitalised one), and the status of
//! [`ApiError::status`]. 429 is never used on the credential endpoint (the Rust and Java
//! SDKs treat it as fatal); only the control socket answers it (`TooManyTokens`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::protocol::{ApiError, CredentialBody};

/// The response body type of every credvend endpoint.
pub type Body = Full<Bytes>;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(rename = "Code")]
    code_upper: &'a str,
    #[serde(rename = "Message")]
    message_upper: &'a str,
}

/// The 200 response for an already-encoded credential body (the request path).
pub fn shared_credentials_response(body: &CredentialBody) -> Response<Body> {
    json_response(StatusCode::OK, body.bytes())
}

/// The headers every credvend response carries, built once: a response gets a copy
/// (two static values, no hashing) instead of inserting them one by one
/// (docs/performance.md, "The cache hit's own cost").
static JSON_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
    headers.insert(header::CACHE_CONTROL, NO_STORE);
    headers
});

/// A JSON response with the headers every credvend response carries.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = JSON_HEADERS.clone();
    response
}

/// How an [`ApiError`] goes out: its status, the error body in both key casings and the
/// headers its variant needs (`Retry-After`, `Allow`, `Connection: close`). The error
/// itself (status, code, message) is defined in [`crate::protocol`].
impl ApiError {
    pub fn into_response(self) -> Response<Body> {
        let message = self.message();
        let code = self.code();
        let body = ErrorBody {
            code,
            message: &message,
            code_upper: code,
            message_upper: &message,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = json_response(self.status(), Bytes::from(bytes));
        let headers = response.headers_mut();
        match &self {
            ApiError::Unavailable {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ApiError::MethodNotAllowedOn { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::BodyNotAllowed | ApiError::PayloadTooLarge => {
                // The body is left unread, so the connection cannot carry another
                // request: say so instead of letting hyper discover it.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::Credentials;
    use crate::secret::SecretValue;
    use http_body_util::BodyExt;
    use std::time::{Duration, SystemTime};

    async fn body_string(response: Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn credentials_body_is_byte_exact() {
        let creds = Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: SecretValue::new("sek/ret+key"),
            session_token: SecretValue::new("tok\"en"),
            expiration: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_829_025),
            assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/sync/credvend-acme".into(),
        };
        let body =
            CredentialBody::encode(&creds, "arn:aws:iam::111122223333:role/sync").expect("encodes");
        let response = shared_credentials_response(&body);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(
            body_string(response).await,
            r#"{"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"sek/ret+key","Token":"tok\"en","Expiration":"2026-11-28T01:23:45Z","AccountId":"111122223333","RoleArn":"arn:aws:iam::111122223333:role/sync"}"#
        );
    }

    #[tokio::test]
    async fn error_bodies_carry_both_casings_and_headers() {
        let response = ApiError::Unavailable {
            mapping: Some("acme-s3".into()),
            retry_after_secs: 1,
            reason: "STS slower than cold_wait",
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_str(&body_string(response).await).unwrap();
        assert_eq!(body["code"], "CredentialsUnavailable");
        assert_eq!(body["Code"], "CredentialsUnavailable");
        assert_eq!(body["message"], body["Message"]);
        assert!(body["message"].as_str().unwrap().contains("acme-s3"));

        let response = ApiError::MethodNotAllowed.into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["allow"], "GET, HEAD");
    }
}
