//! `credvend credential-process` (the built binary) against a real daemon and the fake
//! STS: what it prints is the credential endpoint's answer in the `credential_process`
//! shape, and every failure is one stderr line without the token.
//! docs/compatibility.md, "credential_process".

mod support;

use std::path::PathBuf;
use std::process::Output;

use support::daemon::{TestDaemon, start_acme};
use support::http::get_with_token;

const EXTERNAL_ID: &str = "Xk3-acme-external-id-0123456789";

/// Environment variables for one run.
type Env = Vec<(String, String)>;

/// Runs `credvend credential-process ARGS` off the runtime (the daemon keeps serving).
async fn run(args: Vec<String>, env: Env) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_credvend"));
        command.arg("credential-process").args(&args);
        for (key, _) in std::env::vars() {
            if key.starts_with("CREDVEND_") {
                command.env_remove(key);
            }
        }
        command.envs(env);
        command.output().expect("run credvend")
    })
    .await
    .expect("join")
}

/// A token file in a directory of its own, removed on drop.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(label: &str, content: &str) -> TokenFile {
        let dir =
            std::env::temp_dir().join(format!("credvend-credproc-{}-{label}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("token");
        std::fs::write(&path, content).expect("write token");
        TokenFile(path)
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn url(d: &TestDaemon) -> String {
    format!("http://{}/v1/credentials/acme-s3", d.addr)
}

/// The single stderr line of a failed run, after checking the exit status, that stdout
/// is empty and that `secret` appears nowhere.
fn one_failure_line(output: &Output, secret: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        !output.status.success(),
        "expected a failure; stdout {stdout:?} stderr {stderr:?}"
    );
    assert_eq!(output.status.code(), Some(1), "stderr {stderr:?}");
    assert!(
        stdout.is_empty(),
        "nothing on stdout on failure: {stdout:?}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "exactly one line on stderr: {stderr:?}"
    );
    assert!(stderr.ends_with('\n'), "{stderr:?}");
    assert!(!stderr.contains(secret), "the token leaked: {stderr:?}");
    stderr.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_the_endpoints_credential_in_the_credential_process_shape() {
    let (sts, d, token) = start_acme(EXTERNAL_ID).await;
    let endpoint = get_with_token(d.addr, "/v1/credentials/acme-s3", &token).await;
    assert_eq!(endpoint.status, 200, "{}", endpoint.body);
    let endpoint = endpoint.json();

    // The documented form: a file with a trailing newline (trimmed).
    let file = TokenFile::new("ok", &format!("{token}\n"));
    let by_file = run(
        vec!["--url".into(), url(&d), "--token-file".into(), file.arg()],
        vec![],
    )
    .await;
    let by_env = run(
        vec![
            "--url".into(),
            url(&d),
            "--token-env".into(),
            "CP_TOKEN".into(),
        ],
        vec![("CP_TOKEN".into(), token.clone())],
    )
    .await;
    for (how, output) in [("--token-file", by_file), ("--token-env", by_env)] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{how}: {stderr}");
        assert!(stderr.is_empty(), "{how}: nothing on stderr: {stderr:?}");
        let printed: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("stdout is JSON");
        assert_eq!(
            printed,
            serde_json::json!({
                "Version": 1,
                "AccessKeyId": endpoint["AccessKeyId"],
                "SecretAccessKey": endpoint["SecretAccessKey"],
                "SessionToken": endpoint["Token"],
                "Expiration": endpoint["Expiration"],
                "AccountId": endpoint["AccountId"],
            }),
            "{how}"
        );
        assert!(
            printed["SessionToken"]
                .as_str()
                .is_some_and(|t| !t.is_empty()),
            "{how}: {printed}"
        );
    }
    // Served from the cache: the endpoint's answer came from one AssumeRole.
    assert_eq!(sts.assume_role_calls().len(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_one_line_with_the_daemons_message_and_no_token() {
    let (_sts, d, token) = start_acme(EXTERNAL_ID).await;
    let wrong = format!("{token}-but-not-quite");
    let file = TokenFile::new("wrong", &format!("{wrong}\n"));
    let output = run(
        vec!["--url".into(), url(&d), "--token-file".into(), file.arg()],
        vec![],
    )
    .await;
    let line = one_failure_line(&output, &token);
    assert!(
        !line.contains("not-quite"),
        "the wrong token leaked: {line}"
    );
    assert_eq!(
        line,
        "credvend: credvend refused: token is not valid for mapping 'acme-s3' (403 AccessDenied)",
        "the daemon's own refusal"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_is_down_is_one_line() {
    let (_sts, d, token) = start_acme(EXTERNAL_ID).await;
    let url = url(&d);
    d.stop().await;
    let output = run(
        vec![
            "--url".into(),
            url.clone(),
            "--token-env".into(),
            "CP_TOKEN".into(),
        ],
        vec![("CP_TOKEN".into(), token.clone())],
    )
    .await;
    let line = one_failure_line(&output, &token);
    assert!(
        line.starts_with(&format!("credvend: cannot reach credvend at {url}: "))
            && line.contains("refused"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_one_line() {
    let token = "cvt_never-shown-0123456789";
    let missing = std::env::temp_dir().join(format!(
        "credvend-credproc-{}-missing/token",
        std::process::id()
    ));
    let cases: Vec<(Vec<String>, Env, &str)> = vec![
        (
            vec![
                "--url".into(),
                "http://127.0.0.1:9/v1/credentials/acme-s3".into(),
                "--token-file".into(),
                missing.display().to_string(),
            ],
            vec![],
            "credvend: cannot read the token file ",
        ),
        (
            vec![
                "--url".into(),
                "http://192.0.2.1:8080/v1/credentials/acme-s3".into(),
                "--token-env".into(),
                "CP_TOKEN".into(),
            ],
            vec![("CP_TOKEN".into(), token.into())],
            "credvend: --url \"http://192.0.2.1:8080/v1/credentials/acme-s3\": 192.0.2.1 is not a loopback address",
        ),
        (
            vec![
                "--url".into(),
                "https://127.0.0.1:8080/v1/credentials/acme-s3".into(),
                "--token-env".into(),
                "CP_TOKEN".into(),
            ],
            vec![("CP_TOKEN".into(), token.into())],
            "credvend: --url \"https://127.0.0.1:8080/v1/credentials/acme-s3\": only http:// to a loopback address",
        ),
        (
            vec![
                "--url".into(),
                "http://127.0.0.1:9/v1/credentials/acme-s3".into(),
                "--token-env".into(),
                "CP_UNSET_TOKEN_VARIABLE".into(),
            ],
            vec![],
            "credvend: the variable CP_UNSET_TOKEN_VARIABLE is not set",
        ),
    ];
    for (args, env, expected) in cases {
        let output = run(args.clone(), env).await;
        let line = one_failure_line(&output, token);
        assert!(line.starts_with(expected), "{args:?}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_command_line_is_one_line_too() {
    for (args, expected) in [
        (
            vec!["--token-env".to_owned(), "CP_TOKEN".to_owned()],
            "credvend: error: the following required arguments were not provided: --url <URL>",
        ),
        (
            vec![
                "--url".to_owned(),
                "http://127.0.0.1:9/v1/credentials/acme-s3".to_owned(),
            ],
            "credvend: error: the following required arguments were not provided: --token-file <PATH>",
        ),
        (
            vec![
                "--url".to_owned(),
                "http://127.0.0.1:9/v1/credentials/acme-s3".to_owned(),
                "--token-env".to_owned(),
                "CP_TOKEN".to_owned(),
                "--token-file".to_owned(),
                "/dev/null".to_owned(),
            ],
            "credvend: error: the argument '--token-env <VAR>' cannot be used with '--token-file <PATH>'",
        ),
    ] {
        let output = run(args.clone(), vec![]).await;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr:?}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr:?}");
    }
}
