//! `credvend credential-process`: the AWS `credential_process` helper, for tools that
//! only read `~/.aws/config` (docs/compatibility.md, "credential_process").
//!
//! It fetches from the daemon's credential endpoint exactly as an SDK's container
//! provider does (`GET` with the token as `Authorization`, over plain HTTP to a loopback
//! address only: the rule the SDKs apply to `AWS_CONTAINER_CREDENTIALS_FULL_URI`) and
//! prints the `credential_process` JSON: `Version` 1, `AccessKeyId`, `SecretAccessKey`,
//! `SessionToken`, `Expiration` (and `AccountId` when the daemon knows it).
//!
//! Any failure is one [`FetchError`] line for stderr: the daemon's own message for a
//! refusal, the cause for the rest. The token is never in it; an answer this client does
//! not understand is shown by its status only.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use zeroize::{Zeroize, Zeroizing};

use crate::secret::SecretValue;

/// How long one fetch may take, connect to last byte. The daemon answers from its cache
/// or after one STS call (which has its own, shorter timeout); a tool waiting on
/// `credential_process` must not hang when the daemon does.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read (a credential body is ~1.5 KB).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Why a fetch failed: one line for stderr, never holding the token.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `http://` to a loopback address, or not a URL.
    #[error("{0}")]
    Url(String),
    /// The token file or variable could not be read or is empty.
    #[error("{0}")]
    Token(String),
    /// Nothing answered at the address, or the connection broke.
    #[error("cannot reach credvend at {url}: {what}")]
    Unreachable { url: String, what: String },
    /// No complete answer within the timeout.
    #[error("credvend at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// The daemon refused with its error shape (`{"Code", "Message"}`).
    #[error("credvend refused: {message} ({status} {code})")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// Any other answer.
    #[error("unexpected answer from credvend at {url}: {what}")]
    Protocol { url: String, what: String },
}

/// Checks the URL the way the SDKs check `AWS_CONTAINER_CREDENTIALS_FULL_URI` for plain
/// HTTP: scheme `http`, host a loopback address (`127.0.0.0/8`, `::1`, or `localhost`,
/// which must resolve to loopback addresses only). Returns the parsed URI and the
/// addresses to try.
pub async fn check_url(url: &str) -> Result<(Uri, Vec<SocketAddr>), FetchError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| FetchError::Url(format!("--url {url:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(FetchError::Url(format!(
            "--url {url:?}: only http:// to a loopback address is allowed (the credential \
             endpoint listens on loopback; the SDKs refuse other plain-HTTP addresses too)"
        )));
    }
    let Some(host) = uri.host() else {
        return Err(FetchError::Url(format!("--url {url:?} has no host")));
    };
    let port = uri.port_u16().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) if bare.eq_ignore_ascii_case("localhost") => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| FetchError::Url(format!("--url {url:?}: resolving {bare}: {e}")))?
            .collect(),
        Err(_) => Vec::new(),
    };
    if addresses.is_empty() || !addresses.iter().all(|a| a.ip().is_loopback()) {
        return Err(FetchError::Url(format!(
            "--url {url:?}: {host} is not a loopback address; only http:// to 127.0.0.0/8, \
             [::1] or localhost is allowed"
        )));
    }
    Ok((uri, addresses))
}

/// Reads the token from a file: one line, its trailing newline (`\n` or `\r\n`)
/// trimmed, nothing else changed. An empty token is an error.
pub fn read_token_file(path: &Path) -> Result<SecretValue, FetchError> {
    let mut text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        FetchError::Token(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?);
    let trimmed = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if trimmed.is_empty() {
        return Err(FetchError::Token(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    let token = SecretValue::new(trimmed);
    text.zeroize();
    Ok(token)
}

/// Reads the token from an environment variable (taken as is).
pub fn read_token_env(name: &str) -> Result<SecretValue, FetchError> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(SecretValue::new(value)),
        Ok(_) => Err(FetchError::Token(format!("the variable {name} is empty"))),
        Err(std::env::VarError::NotPresent) => {
            Err(FetchError::Token(format!("the variable {name} is not set")))
        }
        Err(std::env::VarError::NotUnicode(_)) => Err(FetchError::Token(format!(
            "the variable {name} is not valid UTF-8"
        ))),
    }
}

/// The fields of the credential endpoint's `200` used here (its names: `Token` is the
/// session token). Zeroized on drop.
#[derive(Deserialize)]
struct EndpointCredential {
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: String,
    #[serde(rename = "Token")]
    token: String,
    #[serde(rename = "Expiration")]
    expiration: String,
    #[serde(rename = "AccountId", default)]
    account_id: Option<String>,
}

impl Drop for EndpointCredential {
    fn drop(&mut self) {
        self.secret_access_key.zeroize();
        self.token.zeroize();
    }
}

/// The `credential_process` output.
#[derive(Serialize)]
struct ProcessCredential<'a> {
    #[serde(rename = "Version")]
    version: u8,
    #[serde(rename = "AccessKeyId")]
    access_key_id: &'a str,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: &'a str,
    #[serde(rename = "SessionToken")]
    session_token: &'a str,
    #[serde(rename = "Expiration")]
    expiration: &'a str,
    #[serde(rename = "AccountId", skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
}

/// The credential endpoint's error body.
#[derive(Deserialize)]
struct ErrorWire {
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Message")]
    message: String,
}

/// Turns the credential endpoint's answer into the `credential_process` JSON (one line,
/// no trailing newline). A `200` without the credential fields is a protocol error that
/// does not repeat the body.
pub fn translate(
    url: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, FetchError> {
    let protocol = |what: String| FetchError::Protocol {
        url: url.to_owned(),
        what,
    };
    if status == StatusCode::OK {
        let credential: EndpointCredential = serde_json::from_slice(body).map_err(|e| {
            // serde_json's message names a line and column, never the input.
            protocol(format!("200 without the credential fields ({e})"))
        })?;
        let output = ProcessCredential {
            version: 1,
            access_key_id: &credential.access_key_id,
            secret_access_key: &credential.secret_access_key,
            session_token: &credential.token,
            expiration: &credential.expiration,
            account_id: credential.account_id.as_deref(),
        };
        let mut json = Zeroizing::new(Vec::with_capacity(body.len() + 64));
        serde_json::to_writer(&mut *json, &output).expect("strings serialize");
        return Ok(json);
    }
    if let Ok(error) = serde_json::from_slice::<ErrorWire>(body) {
        return Err(FetchError::Refused {
            status: status.as_u16(),
            code: one_line(&error.code),
            message: one_line(&error.message),
        });
    }
    Err(protocol(format!("HTTP {status}")))
}

/// Keeps a line a line: control characters become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Fetches the credential at `url` with `token` and returns the `credential_process`
/// JSON, all within `timeout`.
pub async fn fetch(
    url: &str,
    token: &SecretValue,
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, FetchError> {
    let (uri, addresses) = check_url(url).await?;
    let answer = tokio::time::timeout(timeout, exchange(url, &uri, &addresses, token))
        .await
        .map_err(|_| FetchError::Timeout {
            url: url.to_owned(),
            timeout,
        })??;
    let (status, body) = answer;
    let body = Zeroizing::new(Vec::from(body));
    translate(url, status, &body)
}

async fn exchange(
    url: &str,
    uri: &Uri,
    addresses: &[SocketAddr],
    token: &SecretValue,
) -> Result<(StatusCode, Bytes), FetchError> {
    let unreachable = |what: String| FetchError::Unreachable {
        url: url.to_owned(),
        what,
    };
    let mut last = None;
    let mut stream = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(stream) = stream else {
        let e = last.map_or_else(|| "no address".to_owned(), |e| e.to_string());
        return Err(unreachable(format!("{e} (is credvend running?)")));
    };
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or("", |a| a.as_str());
    let request = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::AUTHORIZATION, token.expose())
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|_| {
            // The error would name the header's value: say only which one.
            FetchError::Token("the token is not a valid HTTP header value".to_owned())
        })?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    drop(sender);
    driver.abort();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:8080/v1/credentials/acme";
    const BODY: &str = r#"{"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"sekrit","Token":"sess","Expiration":"2026-01-01T00:00:00Z","AccountId":"111122223333","RoleArn":"arn:aws:iam::111122223333:role/sync"}"#;

    #[test]
    fn a_credential_becomes_the_credential_process_json() {
        let json = translate(URL, StatusCode::OK, BODY.as_bytes()).expect("translates");
        let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({
                "Version": 1,
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "sekrit",
                "SessionToken": "sess",
                "Expiration": "2026-01-01T00:00:00Z",
                "AccountId": "111122223333",
            })
        );
    }

    #[test]
    fn without_an_account_id_the_field_is_left_out() {
        let body = BODY.replace(r#""AccountId":"111122223333","#, "");
        let json = translate(URL, StatusCode::OK, body.as_bytes()).expect("translates");
        let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        assert!(value.get("AccountId").is_none(), "{value}");
        assert_eq!(value["SessionToken"], "sess");
    }

    #[test]
    fn a_refusal_shows_the_daemons_message_on_one_line() {
        let body = br#"{"Code":"AccessDenied","Message":"the token is not\nvalid for acme"}"#;
        let error = translate(URL, StatusCode::FORBIDDEN, body).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "credvend refused: the token is not valid for acme (403 AccessDenied)"
        );
    }

    #[test]
    fn an_answer_not_understood_is_named_by_status_only() {
        let error = translate(URL, StatusCode::BAD_GATEWAY, b"<html>secret-ish</html>")
            .expect_err("not understood");
        let text = error.to_string();
        assert!(text.ends_with("HTTP 502 Bad Gateway"), "{text}");
        assert!(!text.contains("secret-ish"), "{text}");
        let error =
            translate(URL, StatusCode::OK, br#"{"AccessKeyId":"A"}"#).expect_err("incomplete 200");
        assert!(
            error
                .to_string()
                .contains("200 without the credential fields"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn only_http_to_loopback_is_allowed() {
        for url in [
            "https://127.0.0.1:8080/v1/credentials/acme",
            "http://10.0.0.1:8080/v1/credentials/acme",
            "http://169.254.170.2/v1/credentials/acme",
            "http://example.com/v1/credentials/acme",
            "not a url",
        ] {
            let error = check_url(url).await.expect_err(url);
            assert!(matches!(error, FetchError::Url(_)), "{url}: {error}");
            assert!(!error.to_string().contains('\n'), "{error}");
        }
        for url in [
            "http://127.0.0.1:8080/v1/credentials/acme",
            "http://127.1.2.3/v1/credentials/acme",
            "http://[::1]:8080/v1/credentials/acme",
            "http://localhost:8080/v1/credentials/acme",
        ] {
            let (_, addresses) = check_url(url)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(addresses.iter().all(|a| a.ip().is_loopback()), "{url}");
        }
    }

    #[test]
    fn the_token_file_loses_its_trailing_newline_only() {
        let dir = std::env::temp_dir().join(format!("credvend-cp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("token");
        for (content, expected) in [
            ("tok\n", "tok"),
            ("tok\r\n", "tok"),
            ("tok", "tok"),
            (" tok \n", " tok "),
        ] {
            std::fs::write(&path, content).expect("write");
            assert_eq!(read_token_file(&path).expect("reads").expose(), expected);
        }
        std::fs::write(&path, "\n").expect("write");
        let error = read_token_file(&path).expect_err("empty");
        assert!(error.to_string().contains("is empty"), "{error}");
        let error = read_token_file(&dir.join("missing")).expect_err("missing");
        assert!(
            error.to_string().starts_with("cannot read the token file"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[tokio::test]
    async fn a_silent_daemon_times_out() {
        // Accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/v1/credentials/acme",
            listener.local_addr().expect("addr")
        );
        let held = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        });
        let token = SecretValue::new("cvt_secret_token");
        let error = fetch(&url, &token, Duration::from_millis(300))
            .await
            .expect_err("times out");
        assert!(matches!(error, FetchError::Timeout { .. }), "{error}");
        assert!(!error.to_string().contains("cvt_secret_token"));
        held.abort();
    }
}
