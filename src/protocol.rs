//! The ECS container-credentials wire vocabulary (docs/design.md, Wire contract), byte
//! for byte: the 200 body of a credential and every error a request can get, with its
//! status and code. A leaf: the cache encodes a body here once when STS answers, the
//! events count errors by code, and `server::wire` turns both into HTTP responses.
//!
//! The credential body is one JSON object whose keys are cased exactly as the SDKs
//! read them:
//!
//! ```json
//! {"AccessKeyId":"ASIA…","SecretAccessKey":"…","Token":"…","Expiration":"2026-11-28T01:23:45Z","AccountId":"111122223333","RoleArn":"arn:aws:iam::111122223333:role/sync"}
//! ```
//!
//! It is built **once per credential** ([`CredentialBody::encode`]) and zeroizes itself
//! when the last reference to it drops (see [`CredentialBody`] for what that does and
//! does not cover).
//!
//! `Expiration` is UTC with a capital `Z` and no fraction (JS and Rust reject offsets;
//! botocore, Go and Java fail without a zone). There is no `Code` field: the Rust SDK
//! treats any `Code` other than `Success` as an error.

use std::fmt;

use bytes::Bytes;
use hyper::StatusCode;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::aws_names::AccountId;
use crate::creds::Credentials;

/// Longest request target (path plus query) accepted. SDK requests are
/// `/v1/credentials/<mapping>` (≤ 80 bytes) plus, from the JS SDK, a short query string;
/// hyper's own limit is 64 KiB, far more than any client of ours needs.
pub const MAX_URI_BYTES: usize = 2048;

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

/// How every body starts, up to the AccessKeyId's value (the object's first member):
/// [`CredentialBody::access_key_id`] reads it back from there.
const ACCESS_KEY_ID_AT: &[u8] = b"{\"AccessKeyId\":\"";

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
    /// Encodes `creds` for the mapping whose IAM role is `role_arn`. `None` if the
    /// AccessKeyId is not all word characters (AWS's are: `[\w]+`; it is read back from
    /// the body, [`CredentialBody::access_key_id`], so it must stand there unescaped),
    /// or if serialisation failed, which a struct of strings cannot.
    pub fn encode(creds: &Credentials, role_arn: &str) -> Option<CredentialBody> {
        if !creds
            .access_key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return None;
        }
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

    /// The AccessKeyId (not a secret: the audit line and `/status` show it), read from
    /// the body: a cached credential keeps no second copy of it.
    pub fn access_key_id(&self) -> &str {
        let value = self.0.get(ACCESS_KEY_ID_AT.len()..).unwrap_or_default();
        let end = value.iter().position(|&b| b == b'"').unwrap_or(0);
        std::str::from_utf8(&value[..end]).unwrap_or_default()
    }
}

impl fmt::Debug for CredentialBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialBody(<redacted, {} bytes>)", self.0.len())
    }
}

/// Every way a credential request can fail, with its documented status and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No `Authorization` header.
    MissingToken,
    /// Token not valid for this mapping, or no such mapping: indistinguishable on
    /// purpose, so a token cannot be used to discover mapping names.
    AccessDenied {
        mapping: Option<String>,
        /// Why, for the audit line only: never on the wire.
        cause: DeniedCause,
    },
    /// `X-Forwarded-For`, `Forwarded`, `X-Real-IP`, `Via`, `X-Forwarded-Host` or
    /// `X-Forwarded-Proto` present: the request came through
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
    /// Request target longer than [`MAX_URI_BYTES`].
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
    /// Control socket: not one of its routes.
    ControlNotFound,
    /// Control socket: a method its route does not take (`allow` lists the ones it does).
    MethodNotAllowedOn { allow: &'static str },
    /// Control socket: a request body that is not a valid request; `message` names the
    /// field first (`ttl_seconds: …`).
    InvalidRequest { message: String },
    /// Control socket: a request body over [`MAX_CONTROL_BODY_BYTES`].
    PayloadTooLarge,
    /// Control socket: mint for a mapping the configuration does not have.
    MappingNotFound { mapping: String },
    /// Control socket: no live job token has this id.
    TokenNotFound { id: String },
    /// Control socket: `[control] max_tokens` job tokens are live.
    TooManyTokens { max: usize },
}

/// Largest request body the control socket reads (`POST /v1/tokens`).
pub const MAX_CONTROL_BODY_BYTES: usize = 4096;

/// Why a request got [`ApiError::AccessDenied`]. The wire answer is the same for every
/// cause (so a token cannot be used to discover mapping names); the audit line names it
/// so that the operator can tell a misspelt mapping from a wrong token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedCause {
    /// The token is not one of the mapping's (or, without a mapping in the path, not
    /// one of any mapping's).
    InvalidToken,
    /// The path names a mapping that does not exist.
    UnknownMapping,
}

impl DeniedCause {
    /// The audit line's `cause` value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeniedCause::InvalidToken => "invalid_token",
            DeniedCause::UnknownMapping => "unknown_mapping",
        }
    }
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
            ApiError::MethodNotAllowedOn { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ControlNotFound
            | ApiError::MappingNotFound { .. }
            | ApiError::TokenNotFound { .. } => StatusCode::NOT_FOUND,
            // Only on the control socket: its clients are credvend's own CLI and
            // orchestrators, not SDKs (which treat 429 as fatal).
            ApiError::TooManyTokens { .. } => StatusCode::TOO_MANY_REQUESTS,
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
            ApiError::ControlNotFound => "NotFound",
            ApiError::MethodNotAllowedOn { .. } => "MethodNotAllowed",
            ApiError::InvalidRequest { .. } => "InvalidRequest",
            ApiError::PayloadTooLarge => "PayloadTooLarge",
            ApiError::MappingNotFound { .. } => "MappingNotFound",
            ApiError::TokenNotFound { .. } => "TokenNotFound",
            ApiError::TooManyTokens { .. } => "TooManyTokens",
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
                ..
            } => format!("token is not valid for mapping '{mapping}'"),
            ApiError::AccessDenied { mapping: None, .. } => "token is not valid".into(),
            ApiError::ProxiedRequest => {
                "requests through a proxy (Forwarded, Via, X-Forwarded-For/-Host/-Proto, X-Real-IP) are refused"
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
                format!("request target longer than {} bytes", MAX_URI_BYTES)
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
            ApiError::ControlNotFound => {
                "not found; the control socket serves /v1/tokens and /v1/tokens/{id}".into()
            }
            ApiError::MethodNotAllowedOn { allow } => format!("only {allow} are allowed here"),
            ApiError::InvalidRequest { message } => message.clone(),
            ApiError::PayloadTooLarge => {
                format!("request body longer than {MAX_CONTROL_BODY_BYTES} bytes")
            }
            ApiError::MappingNotFound { mapping } => format!("no mapping named '{mapping}'"),
            ApiError::TokenNotFound { id } => format!("no live job token with id '{id}'"),
            ApiError::TooManyTokens { max } => format!(
                "{max} job tokens are live ([control] max_tokens); revoke some or raise the bound"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::secret::SecretValue;

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

    /// The AccessKeyId is read back from the body, so one that JSON would escape (or
    /// anything but word characters, which AWS's are) is refused rather than shown
    /// other than it is.
    #[test]
    fn the_access_key_id_is_read_back_from_the_body_and_must_be_word_characters() {
        let creds = |access_key_id: &str| Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: SecretValue::new("secret\"key"),
            session_token: SecretValue::new("token"),
            expiration: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_829_025),
            assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/sync/s".into(),
        };
        let role = "arn:aws:iam::111122223333:role/sync";
        for key in ["ASIAEXAMPLE", "ASIA_0123456789ABCDEF", ""] {
            let body = CredentialBody::encode(&creds(key), role).expect("encodes");
            assert_eq!(body.access_key_id(), key);
        }
        for key in ["ASIA\"X", "ASIA\\X", "ASIA X", "ASIAÉ", "ASIA\nX"] {
            assert!(
                CredentialBody::encode(&creds(key), role).is_none(),
                "{key:?} was encoded"
            );
        }
    }
}
