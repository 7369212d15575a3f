//! The ECS container-credentials wire format (docs/design.md, Wire contract), byte for
//! byte.
//!
//! Success: status 200, `Content-Type: application/json`, `Cache-Control: no-store`,
//! a `Content-Length`, never compressed, and one JSON object whose keys are cased exactly
//! as the SDKs read them:
//!
//! ```json
//! {"AccessKeyId":"ASIA…","SecretAccessKey":"…","Token":"…","Expiration":"2026-11-28T01:23:45Z","AccountId":"111122223333","RoleArn":"arn:aws:iam::111122223333:role/sync"}
//! ```
//!
//! The success body is built **once per credential**, when STS answers
//! ([`CredentialBody::encode`], called by the cache), and every request then sends a
//! reference-counted view of it ([`shared_credentials_response`]): no per-request
//! serialisation or allocation of the body. The buffer zeroizes itself when the last
//! reference to it drops (see [`CredentialBody`] for what that does and does not cover).
//!
//! `Expiration` is UTC with a capital `Z` and no fraction (JS and Rust reject offsets;
//! botocore, Go and Java fail without a zone). There is no `Code` field: the Rust SDK
//! treats any `Code` other than `Success` as an error.
//!
//! Errors carry both key casings, `{"code":C,"message":M,"Code":C,"Message":M}` (Java and
//! Go read the lower-case pair, JS the capitalised one), and the status of
//! [`ApiError::status`]. 429 is never used: the Rust and Java SDKs treat it as fatal.

use std::fmt;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::aws_names::AccountId;
use crate::creds::Credentials;

/// The response body type of every credvend endpoint.
pub type Body = Full<Bytes>;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

#[derive(Serialize)]
struct CredentialJson<'a> {
    #[serde(rename = "AccessKeyId")]
    access_key_id: &'a str,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: &'a str,
    #[serde(rename = "Token")]
    token: &'a str,
    #[serde(rename = "Expiration")]
    expiration: String,
    #[serde(rename = "AccountId", skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
    #[serde(rename = "RoleArn")]
    role_arn: &'a str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(rename = "Code")]
    code_upper: &'a str,
    #[serde(rename = "Message")]
    message_upper: &'a str,
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC.
pub fn format_expiration(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The encoded 200 body of one credential, shared by every response that serves it.
///
/// Secret hygiene, and the trade-off made for speed: the body necessarily contains the
/// secret key and session token in clear. It lives in one heap buffer owned by a
/// zeroizing wrapper; [`Bytes`] handed to hyper are reference-counted views of that same
/// buffer (`Bytes::from_owner`), so cloning one per request copies no secret, and the
/// buffer is overwritten with zeros when the cached entry *and* every in-flight response
/// have dropped it. What it does not cover, exactly as before this type existed: hyper
/// may copy a small body into its own write buffer, and the kernel's socket buffers hold
/// the bytes until sent; neither is zeroized. Compared with serialising per request
/// (which left one un-zeroized `Vec` per response on the heap), the shared body leaves
/// strictly fewer copies of the secret around. `Debug` is redacted.
#[derive(Clone)]
pub struct CredentialBody(Bytes);

/// Owner of the body buffer: zeroizes it on drop.
struct ZeroizingBuffer(Zeroizing<Vec<u8>>);

/// A writer that only counts bytes: the exact length of a body before it is written.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsRef<[u8]> for ZeroizingBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl CredentialBody {
    /// Encodes `creds` for the mapping whose IAM role is `role_arn`. `None` only if
    /// serialisation failed, which a struct of strings cannot.
    pub fn encode(creds: &Credentials, role_arn: &str) -> Option<CredentialBody> {
        let expiration = format_expiration(creds.expiration);
        // The account STS named in the assumed-role ARN, else the one of the mapping's
        // role (the config has checked that it has one).
        let account_id =
            AccountId::of_arn(&creds.assumed_role_arn).or_else(|| AccountId::of_arn(role_arn));
        let json = CredentialJson {
            access_key_id: &creds.access_key_id,
            secret_access_key: creds.secret_access_key.expose(),
            token: creds.session_token.expose(),
            expiration,
            account_id: account_id.as_ref().map(AccountId::as_str),
            role_arn,
        };
        // Measure first, then write into a buffer of exactly that size: the buffer is
        // never reallocated (a reallocation would free an un-zeroized copy of the
        // secrets) and holds no slack (10,000 cached credentials, one body each).
        let mut length = ByteCount(0);
        serde_json::to_writer(&mut length, &json).ok()?;
        let mut buffer = Zeroizing::new(Vec::with_capacity(length.0));
        serde_json::to_writer(&mut *buffer, &json).ok()?;
        debug_assert_eq!(buffer.len(), buffer.capacity());
        Some(CredentialBody(Bytes::from_owner(ZeroizingBuffer(buffer))))
    }

    /// The body, as a cheap reference-counted view.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl fmt::Debug for CredentialBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialBody(<redacted, {} bytes>)", self.0.len())
    }
}

/// The 200 response for an already-encoded credential body.
pub fn shared_credentials_response(body: &CredentialBody) -> Response<Body> {
    json_response(StatusCode::OK, body.bytes())
}

/// A JSON response with the headers every credvend response carries.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
    headers.insert(header::CACHE_CONTROL, NO_STORE);
    response
}

/// Every way a credential request can fail, with its documented status and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No `Authorization` header.
    MissingToken,
    /// Token not valid for this mapping, or no such mapping: indistinguishable on
    /// purpose, so a token cannot be used to discover mapping names.
    AccessDenied { mapping: Option<String> },
    /// `X-Forwarded-For`, `Forwarded` or `X-Real-IP` present: the request came through
    /// a proxy, which is how SSRF reaches a metadata-style endpoint.
    ProxiedRequest,
    /// `Host` is not one of ours (DNS rebinding).
    InvalidHost,
    /// The customer role refused the assumption.
    AssumeRoleDenied { mapping: String, code: String },
    /// The mapping's trust policy does not enforce its External ID.
    TrustPolicyUnsafe { mapping: String },
    /// Not a credentials path.
    NotFound,
    /// Not GET or HEAD.
    MethodNotAllowed,
    /// Request target longer than [`super::MAX_URI_BYTES`].
    UriTooLong,
    /// The request carries a body (`Content-Length` > 0 or `Transfer-Encoding`); GET and
    /// HEAD never need one, and it is never read.
    BodyNotAllowed,
    /// Nothing servable yet; retry after the given seconds.
    Unavailable {
        mapping: Option<String>,
        retry_after_secs: u64,
        reason: &'static str,
    },
}

impl ApiError {
    /// The HTTP status. Exhaustive on purpose: a new variant forces a decision.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingToken => StatusCode::UNAUTHORIZED,
            ApiError::AccessDenied { .. }
            | ApiError::ProxiedRequest
            | ApiError::InvalidHost
            | ApiError::AssumeRoleDenied { .. }
            | ApiError::TrustPolicyUnsafe { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::BodyNotAllowed => StatusCode::BAD_REQUEST,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `code` / `Code` value.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingToken => "Unauthorized",
            ApiError::AccessDenied { .. } => "AccessDenied",
            ApiError::ProxiedRequest => "ProxiedRequestRejected",
            ApiError::InvalidHost => "InvalidHost",
            ApiError::AssumeRoleDenied { .. } => "AssumeRoleDenied",
            ApiError::TrustPolicyUnsafe { .. } => "TrustPolicyUnsafe",
            ApiError::NotFound => "NotFound",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UriTooLong => "UriTooLong",
            ApiError::BodyNotAllowed => "BodyNotAllowed",
            ApiError::Unavailable { .. } => "CredentialsUnavailable",
        }
    }

    /// The `message` / `Message` value: names the mapping and the reason, never a secret
    /// and never internals.
    pub fn message(&self) -> String {
        match self {
            ApiError::MissingToken => {
                "missing Authorization header (set AWS_CONTAINER_AUTHORIZATION_TOKEN)".into()
            }
            ApiError::AccessDenied {
                mapping: Some(mapping),
            } => format!("token is not valid for mapping '{mapping}'"),
            ApiError::AccessDenied { mapping: None } => "token is not valid".into(),
            ApiError::ProxiedRequest => {
                "requests through a proxy (X-Forwarded-For, Forwarded, X-Real-IP) are refused"
                    .into()
            }
            ApiError::InvalidHost => "Host header is not an address of this endpoint".into(),
            ApiError::AssumeRoleDenied { mapping, code } => format!(
                "the role of mapping '{mapping}' refused the assumption ({code}); check its trust policy and External ID"
            ),
            ApiError::TrustPolicyUnsafe { mapping } => format!(
                "the role of mapping '{mapping}' can be assumed without its External ID; refusing to vend until its trust policy requires sts:ExternalId"
            ),
            ApiError::NotFound => "not found; use GET /v1/credentials/{mapping}".into(),
            ApiError::MethodNotAllowed => "only GET and HEAD are allowed".into(),
            ApiError::UriTooLong => {
                format!("request target longer than {} bytes", super::MAX_URI_BYTES)
            }
            ApiError::BodyNotAllowed => "requests must not carry a body".into(),
            ApiError::Unavailable {
                mapping: Some(mapping),
                reason,
                ..
            } => format!("credentials for mapping '{mapping}' are not available yet: {reason}"),
            ApiError::Unavailable {
                mapping: None,
                reason,
                ..
            } => format!("credentials are not available yet: {reason}"),
        }
    }

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
            ApiError::BodyNotAllowed => {
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

    #[test]
    fn shared_body_debug_is_redacted() {
        let creds = Credentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: SecretValue::new("CANARY-SECRET-KEY"),
            session_token: SecretValue::new("CANARY-SESSION-TOKEN"),
            expiration: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_829_025),
            assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/sync/s".into(),
        };
        let body =
            CredentialBody::encode(&creds, "arn:aws:iam::111122223333:role/sync").expect("encodes");
        let shown = format!("{body:?}");
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(shown.contains("redacted"));
        // The shared bytes are the full body.
        assert!(
            body.bytes()
                .starts_with(b"{\"AccessKeyId\":\"ASIAEXAMPLE\"")
        );
    }
}
