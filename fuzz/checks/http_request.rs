//! Raw bytes as one HTTP/1 connection into the real credential endpoint.
//!
//! The fuzz input is everything a client sends on one connection (pipelined requests,
//! garbage, half a request). It is written into an in-memory duplex stream served by
//! hyper's HTTP/1 connection with the daemon's settings (`server::connection_builder`:
//! header timer, 32 headers, 16 KiB of head, half-close allowed) and
//! `CredentialEndpoint::handle` behind it, then the client half is closed. The cache is
//! real; its `RoleAssumer` hands out fixed credentials in-process, so no
//! network is involved.
//!
//! Checked on every input:
//! - nothing panics, and the connection finishes once the client half is closed (a
//!   hang past 10 s of tokio time is a failure);
//! - every response the handler produced is on the wire, in order, well-formed: a valid
//!   status line, a `Content-Length` that matches the body, `Content-Type:
//!   application/json` and `Cache-Control: no-store`, a JSON object body of the
//!   documented shape (6 string fields for 200, `code/message/Code/Message` otherwise),
//!   `Retry-After` on 503, only the statuses the endpoint documents (401, 403, 404,
//!   405 and 503, 400 for a request with a body, 414 for an over-long target; see
//!   `ApiError` in src/protocol.rs), never 429;
//! - after them, at most one response that hyper wrote itself for a request it could
//!   not parse (4xx/5xx), then nothing;
//! - the External ID never appears in the output, and error bodies carry no credential.
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/http_request.rs`) and the seed replay
//! in the main crate's tests (`tests/fuzz_seeds.rs`), so a committed seed is checked in
//! CI exactly as the fuzzer checks it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use credvend::cache::CredentialCache;
use credvend::clock::SystemClock;
use credvend::creds::{AssumeError, AssumeRoleInput, Credentials, RoleAssumer};
use credvend::metrics::Metrics;
use credvend::secret::SecretValue;
use credvend::server::access::AccessTable;
use credvend::server::credentials::{CredentialEndpoint, Generation};
use credvend::server::jobs::JobTokens;
use credvend::server::{ConnInfo, Limits};

/// Tokens of the two mappings. Short and printable so the fuzzer can find them from the
/// seed corpus and the dictionary.
const TOKEN_ACME: &str = "tok-acme";
const TOKEN_BETA: &str = "tok-beta";
/// Must never appear in anything sent to a client.
const EXTERNAL_ID: &str = "FuzzExternalIdCanary0123456789";

/// Hands out fixed credentials valid for an hour; never touches the network.
struct FixedAssumer;

impl RoleAssumer for FixedAssumer {
    fn assume_role<'a>(
        &'a self,
        input: &'a AssumeRoleInput,
    ) -> Pin<Box<dyn Future<Output = Result<Credentials, AssumeError>> + Send + 'a>> {
        Box::pin(async move {
            let role = input.role_arn.rsplit('/').next().unwrap_or_default();
            Ok(Credentials {
                access_key_id: "ASIAFUZZ000000000001".to_owned(),
                secret_access_key: SecretValue::new("fuzzSecretAccessKey"),
                session_token: SecretValue::new("fuzzSessionToken"),
                expiration: SystemTime::now() + Duration::from_secs(3600),
                assumed_role_arn: format!(
                    "arn:aws:sts::111122223333:assumed-role/{role}/{}",
                    input.session_name
                ),
            })
        })
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    endpoint: CredentialEndpoint,
    limits: Limits,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let mut config = credvend::testing::config(
            "http://127.0.0.1:9",
            vec![
                credvend::testing::mapping("acme-s3", "acme", Some(EXTERNAL_ID), TOKEN_ACME),
                credvend::testing::mapping("beta", "beta", None, TOKEN_BETA),
            ],
        );
        config.server.allowed_hosts = vec!["credvend.internal".to_owned()];
        let metrics = Arc::new(Metrics::new());
        let cache = CredentialCache::new(
            &config,
            Arc::new(FixedAssumer),
            Arc::new(SystemClock),
            metrics.clone(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime");
        // Warm both mappings so every run serves from cache (deterministic: no
        // first-run "fresh" path depending on corpus order).
        runtime.block_on(async {
            for name in ["acme-s3", "beta"] {
                cache
                    .get(name)
                    .await
                    .expect("fixed assumer always succeeds");
            }
        });
        // No job tokens are minted: every token the fuzzer sends is a configured one
        // or wrong.
        let jobs = JobTokens::new(
            &config.control,
            config.mappings.keys().map(String::as_str),
            Arc::new(SystemClock),
            metrics.clone(),
            cache.clone(),
        );
        Harness {
            runtime,
            endpoint: CredentialEndpoint {
                generation: Arc::new(ArcSwap::from_pointee(Generation {
                    access: AccessTable::new(&config),
                    mappings: cache.mapping_table(),
                })),
                cache,
                metrics,
                jobs,
            },
            limits: Limits::from_config(&config.server),
        }
    })
}

/// What the handler answered, in order.
struct Answered {
    head: bool,
    status: u16,
    headers: hyper::HeaderMap,
    body: bytes::Bytes,
}

/// Serves `data` as one connection and checks what came back; panics on a violation.
/// Returns the statuses the handler answered, in order (each checked on the wire).
pub fn check(data: &[u8]) -> Vec<u16> {
    let harness = harness();
    let answered: Arc<Mutex<Vec<Answered>>> = Arc::default();
    let output = harness.runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            serve(harness, data, answered.clone()),
        )
        .await
        .expect("connection did not finish after the client closed its half")
    });
    let answered = std::mem::take(&mut *answered.lock().unwrap());
    check_output(data, &output, &answered);
    answered.iter().map(|a| a.status).collect()
}

async fn serve(harness: &Harness, data: &[u8], answered: Arc<Mutex<Vec<Answered>>>) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let conn = ConnInfo {
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        local: SocketAddr::from(([127, 0, 0, 1], 8901)),
    };
    let endpoint = harness.endpoint.clone();
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let endpoint = endpoint.clone();
        let answered = answered.clone();
        async move {
            let head = request.method() == hyper::Method::HEAD;
            let response = endpoint.handle(request, conn).await;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("Full never fails").to_bytes();
            answered.lock().unwrap().push(Answered {
                head,
                status: parts.status.as_u16(),
                headers: parts.headers.clone(),
                body: body.clone(),
            });
            Ok::<_, std::convert::Infallible>(hyper::Response::from_parts(
                parts,
                http_body_util::Full::new(body),
            ))
        }
    });
    // The connection settings of `server::serve`.
    let connection = credvend::server::connection_builder(&harness.limits)
        .serve_connection(TokioIo::new(server), service);

    let data = data.to_vec();
    let client_side = async move {
        // The server may stop reading early (parse error, Connection: close): a failed
        // write is then expected, not an error.
        let _ = client.write_all(&data).await;
        let _ = client.shutdown().await;
        let mut output = Vec::new();
        let _ = client.read_to_end(&mut output).await;
        output
    };
    let (_, output) = tokio::join!(connection, client_side);
    output
}

fn check_output(input: &[u8], output: &[u8], answered: &[Answered]) {
    // Error messages echo the requested mapping name, so only a secret the client did
    // not send itself counts as a leak. Tokens are always in the input (Authorization),
    // so they are covered by the rule that error bodies carry no credential secret.
    if !contains(input, EXTERNAL_ID.as_bytes()) {
        assert!(
            !contains(output, EXTERNAL_ID.as_bytes()),
            "the External ID leaked into the response bytes"
        );
    }

    let mut rest = output;
    for (i, expected) in answered.iter().enumerate() {
        check_handler_response(expected);
        let (status, content_length, head_len) = parse_head(rest)
            .unwrap_or_else(|| panic!("response {i} is not a well-formed HTTP/1.1 head"));
        assert_eq!(status, expected.status, "response {i}: status on the wire");
        let content_length = content_length
            .unwrap_or_else(|| panic!("response {i} ({status}) has no Content-Length"));
        assert_eq!(
            content_length,
            expected.body.len(),
            "response {i}: Content-Length vs body"
        );
        let body_len = if expected.head { 0 } else { content_length };
        assert!(
            rest.len() >= head_len + body_len,
            "response {i}: truncated body"
        );
        assert_eq!(
            &rest[head_len..head_len + body_len],
            &expected.body[..body_len]
        );
        rest = &rest[head_len + body_len..];
    }
    if rest.is_empty() {
        return;
    }
    // At most one more response: hyper's own answer to a request it could not parse.
    let (status, content_length, head_len) =
        parse_head(rest).expect("trailing bytes are not a well-formed HTTP/1.1 response");
    assert!(
        (400..600).contains(&status),
        "hyper's own response has status {status}"
    );
    let body_len = content_length.unwrap_or(0);
    assert_eq!(
        rest.len(),
        head_len + body_len,
        "bytes after hyper's error response"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Status, Content-Length and head length of the response at the start of `bytes`.
fn parse_head(bytes: &[u8]) -> Option<(u16, Option<usize>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    // hyper answers an HTTP/1.0 request in HTTP/1.0, anything else in HTTP/1.1.
    if !matches!(response.version, Some(0 | 1)) {
        return None;
    }
    let status = response.code?;
    let mut content_length = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            assert!(content_length.is_none(), "two Content-Length headers");
            let value = std::str::from_utf8(header.value).ok()?;
            content_length = Some(value.trim().parse().ok()?);
        }
        assert!(
            !header.name.eq_ignore_ascii_case("content-encoding"),
            "responses are never compressed"
        );
    }
    Some((status, content_length, head_len))
}

/// The wire contract (docs/design.md, Wire contract) for one response of the credential
/// endpoint.
fn check_handler_response(r: &Answered) {
    let header = |name: &str| {
        r.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    };
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("cache-control"), Some("no-store"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("response body is JSON");
    let object = body.as_object().expect("response body is a JSON object");
    assert!(
        object.values().all(serde_json::Value::is_string),
        "every value is a string: {body}"
    );
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    match r.status {
        200 => {
            let mut keys = keys;
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "AccessKeyId",
                    "AccountId",
                    "Expiration",
                    "RoleArn",
                    "SecretAccessKey",
                    "Token"
                ]
            );
            let expiration = object["Expiration"].as_str().unwrap_or_default();
            assert_eq!(expiration.len(), 20, "Expiration {expiration}");
            assert!(expiration.ends_with('Z'), "Expiration {expiration}");
        }
        400 | 401 | 403 | 404 | 405 | 414 | 503 => {
            let text = String::from_utf8_lossy(&r.body);
            assert!(
                !text.contains("fuzzSecretAccessKey") && !text.contains("fuzzSessionToken"),
                "an error body carries a credential secret"
            );
            let mut keys = keys;
            keys.sort_unstable();
            assert_eq!(keys, ["Code", "Message", "code", "message"]);
            assert_eq!(object["code"], object["Code"]);
            assert_eq!(object["message"], object["Message"]);
            let code = object["code"].as_str().unwrap_or_default();
            let expected: &[&str] = match r.status {
                400 => &["BodyNotAllowed"],
                401 => &["Unauthorized"],
                403 => &[
                    "AccessDenied",
                    "ProxiedRequestRejected",
                    "InvalidHost",
                    "AssumeRoleDenied",
                    "TrustPolicyUnsafe",
                ],
                404 => &["NotFound"],
                405 => &["MethodNotAllowed"],
                414 => &["UriTooLong"],
                _ => &["CredentialsUnavailable"],
            };
            assert!(
                expected.contains(&code),
                "status {} with code {code}",
                r.status
            );
            if r.status == 503 {
                assert!(header("retry-after").is_some(), "503 without Retry-After");
            }
        }
        other => panic!("status {other} is not in the wire contract"),
    }
}
