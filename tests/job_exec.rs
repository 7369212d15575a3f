//! `credvend exec` and `credvend token issue|list|revoke`, the built binary against a
//! real daemon (in-process, with the fake STS and a control socket in a temporary
//! directory): the job runs as the mapped role, its environment holds the job token and
//! not what the SDKs would prefer, its status and signals pass through, and its token
//! dies with it however it ends (docs/jobs.md).
//!
//! The job's outcomes are read from files it writes (its token, its pid) and from the
//! daemon (the credential endpoint's answer to that token, `GET /v1/tokens`), never from
//! timing: a wait polls for a file or a state with a bound for a loaded machine.

mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use credvend::control_client::{Connection, TokenInfo};
use credvend::exec::{REMOVED_VARS, TOKEN_VAR, URI_VAR};
use support::config_file::{loopback_server_toml, sts_and_acme_toml};
use support::control::{SocketDir, start_acme_with_control};
use support::daemon::TestDaemon;
use support::e2e::{Venv, base_env, write_private_file};
use support::fake_sts::FakeSts;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_credvend");
const MAPPING: &str = "acme-s3";
const EXTERNAL_ID: &str = "acme-external-id-0001";
/// Bound for anything a process must do (start Python, import boto3, exit): a loaded
/// 2-core machine, not a timing assertion.
const PROCESS_BOUND: Duration = Duration::from_secs(120);

/// A daemon serving `acme-s3` (role `vendor-sync`) with a control socket, the fake STS
/// behind it, and the socket's private directory, where the jobs run and write.
struct Fixture {
    sts: FakeSts,
    daemon: TestDaemon,
    socket: PathBuf,
    dir: SocketDir,
}

async fn start() -> Fixture {
    let (sts, daemon, _config_token, dir) = start_acme_with_control(EXTERNAL_ID, |_| {}).await;
    Fixture {
        sts,
        daemon,
        socket: dir.socket(),
        dir,
    }
}

impl Fixture {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `credvend exec --socket S ARGS… acme-s3 -- CMD…` with a clean environment (no AWS
    /// configuration files, STS at the fake) and stdout/stderr captured.
    fn exec(&self, args: &[&str], cmd: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("exec")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .arg(MAPPING)
            .arg("--")
            .args(cmd)
            .current_dir(self.dir.path())
            .env_clear()
            .envs(base_env(self.dir.path()))
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_STS", self.sts.endpoint_url())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// `credvend token ARGS…` (with `--socket` after ARGS' first word).
    async fn token_command(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        command
            .arg("token")
            .arg(args[0])
            .arg("--socket")
            .arg(&self.socket)
            .args(&args[1..])
            .env_clear()
            .envs(base_env(self.dir.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        finish(command.spawn().expect("spawn credvend token")).await
    }

    /// The status the credential endpoint answers `token` with.
    async fn credential_status(&self, token: &str) -> u16 {
        support::http::request(
            self.daemon.addr,
            "GET",
            &format!("/v1/credentials/{MAPPING}"),
            &[("Authorization", token)],
        )
        .await
        .status
    }

    /// `GET /v1/tokens`, through the library's client.
    async fn live_tokens(&self) -> Vec<TokenInfo> {
        let mut connection = Connection::open(&self.socket).await.expect("connect");
        let listing = connection.list().await.expect("GET /v1/tokens");
        connection.close().await;
        listing.tokens
    }

    /// The token the job wrote to `token` (see [`SAVE_TOKEN`]).
    async fn job_token(&self) -> String {
        let path = self.file("token");
        wait_for("the job to write its token", || path.exists()).await;
        std::fs::read_to_string(&path).expect("read the token file")
    }

    /// The job's token is refused and the daemon lists no token: it was revoked.
    async fn assert_token_dead(&self, token: &str, why: &str) {
        assert_eq!(
            self.credential_status(token).await,
            403,
            "{why}: the job's token still opens the credential endpoint"
        );
        let live = self.live_tokens().await;
        assert!(live.is_empty(), "{why}: tokens still live: {live:?}");
    }
}

/// Shell that waits until the test creates `./done`, or until exec, its parent, is
/// gone (a test that failed early dropped and killed exec: its job must not loop on).
const WAIT_FOR_DONE: &str = "while [ ! -e done ] && kill -0 $PPID 2>/dev/null; do sleep 0.05; done";

/// Shell that writes the job's token to `./token` (atomically, no newline).
const SAVE_TOKEN: &str =
    r#"printf %s "$AWS_CONTAINER_AUTHORIZATION_TOKEN" > token.tmp && mv token.tmp token"#;

async fn finish(child: Child) -> Output {
    tokio::time::timeout(PROCESS_BOUND, child.wait_with_output())
        .await
        .expect("the process ends in time")
        .expect("wait for the process")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// Polls `condition` every 20 ms until it holds; panics after [`PROCESS_BOUND`].
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PROCESS_BOUND;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn code(status: ExitStatus) -> Option<i32> {
    status.code()
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id().expect("running") as i32).unwrap();
    rustix::process::kill_process(pid, signal).expect("signal credvend exec");
}

/// The real boto3 client, in the job: saves its token (for the test to try afterwards),
/// then asks STS who it is.
const WHOAMI_PY: &str = r#"
import os, boto3
with open("token.tmp", "w") as f:
    f.write(os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"])
os.rename("token.tmp", "token")
print(boto3.client("sts").get_caller_identity()["Arn"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_boto3_as_the_mapped_role_and_the_token_dies_with_the_job() {
    let venv = Venv::locate();
    let f = start().await;
    let python = venv.python();
    let output = finish(
        f.exec(&[], &[python.to_str().unwrap(), "-c", WHOAMI_PY])
            .spawn()
            .expect("spawn exec"),
    )
    .await;
    assert_eq!(code(output.status), Some(0), "{}", describe(&output));
    let role = format!(
        "arn:aws:sts::{}:assumed-role/vendor-sync/",
        support::daemon::ACCOUNT
    );
    assert!(
        text(&output.stdout).starts_with(&role),
        "boto3 did not act as the mapped role ({role}…): {}",
        describe(&output)
    );
    let token = f.job_token().await;
    assert!(token.starts_with("cvj_"), "the job's token: {token:?}");
    assert!(
        !text(&output.stderr).contains(&token),
        "the token on stderr: {}",
        describe(&output)
    );
    f.sts
        .assert_assume_role_calls(1, "the job shares the mapping's credential");
    f.assert_token_dead(&token, "after the job exited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_environment_has_uri_and_token_and_none_of_what_the_sdks_prefer() {
    let f = start().await;
    let mut command = f.exec(&[], &["/usr/bin/env"]);
    for name in REMOVED_VARS {
        command.env(name, "CANARY-from-the-orchestrator");
    }
    command
        .env(URI_VAR, "http://169.254.170.2/stale")
        .env(TOKEN_VAR, "stale-token")
        .env("JOB_SETTING", "kept");
    let output = finish(command.spawn().expect("spawn exec")).await;
    assert_eq!(code(output.status), Some(0), "{}", describe(&output));
    let env: std::collections::BTreeMap<String, String> = text(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for name in REMOVED_VARS {
        assert!(
            !env.contains_key(name),
            "{name} reached the job: {}",
            describe(&output)
        );
    }
    assert_eq!(
        env.get(URI_VAR).map(String::as_str),
        Some(format!("http://{}/v1/credentials/{MAPPING}", f.daemon.addr).as_str()),
        "the credentials URI is the daemon's first listener"
    );
    let token = env.get(TOKEN_VAR).expect("the job token is set");
    assert!(token.starts_with("cvj_") && token.len() == 68, "{token:?}");
    assert_eq!(env.get("JOB_SETTING").map(String::as_str), Some("kept"));
    assert_eq!(
        env.get("AWS_ENDPOINT_URL_STS"),
        Some(&f.sts.endpoint_url()),
        "other AWS_* variables pass through"
    );
    f.assert_token_dead(token, "after env exited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_exit_status_is_execs_and_the_token_dies() {
    let f = start().await;
    let script = format!("{SAVE_TOKEN} && exit 3");
    let output = finish(f.exec(&[], &["/bin/sh", "-c", &script]).spawn().unwrap()).await;
    assert_eq!(code(output.status), Some(3), "{}", describe(&output));
    assert!(
        output.stderr.is_empty(),
        "a job's own failure adds nothing on stderr: {}",
        describe(&output)
    );
    let token = f.job_token().await;
    f.assert_token_dead(&token, "after exit 3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_by_a_signal_gives_128_plus_n_and_the_token_dies() {
    let f = start().await;
    // SIGUSR1 (10), which exec does not forward: the job is killed by its own hand.
    let script = format!("{SAVE_TOKEN} && kill -USR1 $$");
    let output = finish(f.exec(&[], &["/bin/sh", "-c", &script]).spawn().unwrap()).await;
    assert_eq!(code(output.status), Some(128 + 10), "{}", describe(&output));
    let token = f.job_token().await;
    f.assert_token_dead(&token, "after the job died of SIGUSR1")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_sigterm_and_sighup_sent_to_exec_reach_the_job() {
    let f = start().await;
    for (sig, name, exit) in [
        (rustix::process::Signal::TERM, "TERM", 21),
        (rustix::process::Signal::INT, "INT", 22),
        (rustix::process::Signal::HUP, "HUP", 23),
    ] {
        let _ = std::fs::remove_file(f.file("token"));
        // The trap is set before the token file appears: once it is there, the job
        // handles the signal.
        let script = format!(
            "trap 'echo got-{name}; exit {exit}' {name}; {SAVE_TOKEN}; \
             {WAIT_FOR_DONE}"
        );
        let child = f.exec(&[], &["/bin/sh", "-c", &script]).spawn().unwrap();
        let token = f.job_token().await;
        assert_eq!(
            f.credential_status(&token).await,
            200,
            "the job's token works while it runs"
        );
        signal(&child, sig);
        let output = tokio::time::timeout(PROCESS_BOUND, child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "SIG{name} sent to exec did not end the job within {PROCESS_BOUND:?}: \
                     not forwarded?"
                )
            })
            .expect("wait for exec");
        assert_eq!(
            code(output.status),
            Some(exit),
            "SIG{name} to exec: the job's trap did not run, or exec did not wait for it: {}",
            describe(&output)
        );
        assert_eq!(text(&output.stdout).trim(), format!("got-{name}"));
        f.assert_token_dead(&token, &format!("after SIG{name}"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_exec_revokes_the_token_through_its_lease() {
    let f = start().await;
    let script = format!("echo $$ > job.pid; {SAVE_TOKEN}; exec sleep 600");
    let mut child = f.exec(&[], &["/bin/sh", "-c", &script]).spawn().unwrap();
    let token = f.job_token().await;
    let job_pid: i32 = std::fs::read_to_string(f.file("job.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The job outlives exec; it must not outlive the test.
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(pid) = rustix::process::Pid::from_raw(self.0) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    let _job = KillOnDrop(job_pid);
    assert_eq!(f.credential_status(&token).await, 200, "the token works");
    let live = f.live_tokens().await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].lease.as_deref(), Some("connection"), "{live:?}");
    assert_eq!(live[0].expires_at, None, "no TTL unless --ttl: {live:?}");

    signal(&child, rustix::process::Signal::KILL);
    let status = tokio::time::timeout(PROCESS_BOUND, child.wait())
        .await
        .expect("exec dies")
        .unwrap();
    assert_eq!(status.code(), None, "exec was SIGKILLed: {status}");
    // The daemon notices the closed connection on its own schedule: poll the state.
    let deadline = tokio::time::Instant::now() + PROCESS_BOUND;
    while f.credential_status(&token).await != 403 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token of a SIGKILLed exec still works"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.assert_token_dead(&token, "after exec was SIGKILLed")
        .await;
    assert!(
        Path::new(&format!("/proc/{job_pid}")).exists(),
        "the job itself keeps running (it is not exec's to kill)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ttl_the_token_lives_past_max_ttl_while_the_job_runs() {
    let f = start().await;
    let script = format!("{SAVE_TOKEN}; {WAIT_FOR_DONE}; exit 0");
    let child = f.exec(&[], &["/bin/sh", "-c", &script]).spawn().unwrap();
    let token = f.job_token().await;
    // 13 hours on the daemon's clock: past the default max_ttl (12 h) and every
    // credential's lifetime.
    f.daemon.clock.advance(Duration::from_secs(13 * 3600));
    assert_eq!(
        f.credential_status(&token).await,
        200,
        "a job token without --ttl expired while its job ran"
    );
    std::fs::write(f.file("done"), "").unwrap();
    let output = finish(child).await;
    assert_eq!(code(output.status), Some(0), "{}", describe(&output));
    f.assert_token_dead(&token, "after the job").await;
}

/// The decision: `--ttl` caps the job's token even while the job runs. exec neither
/// renews the token nor stops the job; the job loses its credentials at the TTL and its
/// status still passes through, without a warning about the token already gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ttl_the_token_expires_while_the_job_runs_and_the_job_goes_on() {
    let f = start().await;
    let script = format!("{SAVE_TOKEN}; {WAIT_FOR_DONE}; exit 4");
    let child = f
        .exec(&["--ttl", "60s"], &["/bin/sh", "-c", &script])
        .spawn()
        .unwrap();
    let token = f.job_token().await;
    assert_eq!(f.credential_status(&token).await, 200);
    let live = f.live_tokens().await;
    assert!(
        live.len() == 1 && live[0].expires_at.is_some(),
        "--ttl gives the token an expiry: {live:?}"
    );
    f.daemon.clock.advance(Duration::from_secs(61));
    assert_eq!(
        f.credential_status(&token).await,
        403,
        "the token outlived its --ttl"
    );
    std::fs::write(f.file("done"), "").unwrap();
    let output = finish(child).await;
    assert_eq!(code(output.status), Some(4), "{}", describe(&output));
    assert!(
        output.stderr.is_empty(),
        "the token's expiry is not exec's failure: {}",
        describe(&output)
    );
    f.assert_token_dead(&token, "after the job").await;
}

/// The daemon stops while the job runs: the job's token died with it. exec says so on
/// stderr, lets the job finish, and still exits with its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_stops_under_a_running_job_is_a_warning_and_the_job_goes_on() {
    let Fixture {
        sts: _sts,
        daemon,
        socket,
        dir,
    } = start().await;
    let f_file = |name: &str| dir.path().join(name);
    let script = format!("{SAVE_TOKEN}; {WAIT_FOR_DONE}; exit 6");
    let mut command = Command::new(BIN);
    command
        .arg("exec")
        .arg("--socket")
        .arg(&socket)
        .args([MAPPING, "--", "/bin/sh", "-c", &script])
        .current_dir(dir.path())
        .env_clear()
        .envs(base_env(dir.path()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().unwrap();
    let token_file = f_file("token");
    wait_for("the job to write its token", || token_file.exists()).await;
    daemon.stop().await;
    std::fs::write(f_file("done"), "").unwrap();
    let output = finish(child).await;
    assert_eq!(code(output.status), Some(6), "{}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("credvend: warning: the daemon closed the control connection")
            && stderr.contains("while the command ran")
            && stderr.lines().count() == 1,
        "{}",
        describe(&output)
    );
    assert!(!stderr.contains("cvj_"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_failures_are_one_line_and_a_distinct_status() {
    let f = start().await;
    let cases: [(&[&str], &str, i32, &str); 3] = [
        (&["/bin/true"], "nope", 65, "nope"),
        (&["/nonexistent/job"], MAPPING, 127, "/nonexistent/job"),
        (&["./not-executable"], MAPPING, 126, "not-executable"),
    ];
    std::fs::write(f.file("not-executable"), "#!/bin/sh\n").unwrap();
    for (cmd, mapping, expected, names) in cases {
        let mut command = Command::new(BIN);
        command
            .arg("exec")
            .arg("--socket")
            .arg(&f.socket)
            .arg(mapping)
            .arg("--")
            .args(cmd)
            .current_dir(f.dir.path())
            .env_clear()
            .envs(base_env(f.dir.path()))
            .kill_on_drop(true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = finish(command.spawn().unwrap()).await;
        let stderr = text(&output.stderr);
        assert_eq!(
            code(output.status),
            Some(expected),
            "{cmd:?}: {}",
            describe(&output)
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("credvend: ") && stderr.contains(names),
            "{stderr}"
        );
        assert!(!stderr.contains("cvj_"), "a token on stderr: {stderr}");
        assert!(
            f.live_tokens().await.is_empty(),
            "{cmd:?}: a token outlived the failed exec"
        );
    }
    let missing = f.dir.path().join("no-such.sock");
    let output = Command::new(BIN)
        .args([
            OsStr::new("exec"),
            OsStr::new("--socket"),
            missing.as_os_str(),
        ])
        .args([MAPPING, "--", "/bin/true"])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(code(output.status), Some(69), "{}", describe(&output));
    assert!(
        text(&output.stderr).contains("no-such.sock"),
        "{}",
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_issue_list_and_revoke_round_trip() {
    let f = start().await;
    let issued = f.token_command(&["issue", "--ttl", "1h", MAPPING]).await;
    assert_eq!(code(issued.status), Some(0), "{}", describe(&issued));
    let answer: serde_json::Value =
        serde_json::from_slice(&issued.stdout).expect("token issue prints the JSON answer");
    let id = answer["id"].as_str().expect("id").to_owned();
    let token = answer["token"].as_str().expect("token").to_owned();
    assert_eq!(answer["mapping"], MAPPING);
    assert!(answer["expires_at"].is_string(), "{answer}");
    assert_eq!(
        answer["credentials_uri"],
        format!("http://{}/v1/credentials/{MAPPING}", f.daemon.addr)
    );
    assert_eq!(f.credential_status(&token).await, 200);

    let table = f.token_command(&["list"]).await;
    assert_eq!(code(table.status), Some(0), "{}", describe(&table));
    let table = text(&table.stdout);
    let row = table
        .lines()
        .find(|line| line.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in the table:\n{table}"));
    assert!(row.contains(MAPPING), "{row}");
    let json = f.token_command(&["list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(listed["tokens"][0]["id"], id.as_str(), "{listed}");
    for output in [&table.as_bytes().to_vec(), &json.stdout] {
        assert!(
            !text(output).contains(&token),
            "token list shows the token value"
        );
    }

    let revoked = f.token_command(&["revoke", &id]).await;
    assert_eq!(code(revoked.status), Some(0), "{}", describe(&revoked));
    f.assert_token_dead(&token, "after token revoke").await;

    let again = f.token_command(&["revoke", &id]).await;
    assert_eq!(code(again.status), Some(65), "{}", describe(&again));
    assert!(
        text(&again.stderr).contains("TokenNotFound"),
        "{}",
        describe(&again)
    );
    let unknown = f.token_command(&["issue", "no-such-mapping"]).await;
    assert_eq!(code(unknown.status), Some(65), "{}", describe(&unknown));
    assert!(
        text(&unknown.stderr).contains("MappingNotFound"),
        "{}",
        describe(&unknown)
    );
}

/// A stand-in for the control socket that records each request with the number of the
/// connection it came on: mints answer 201 with a fixed token, deletes 204. With the
/// real daemon, exec's exit closes the lease and revokes the token anyway; only here
/// can a test see that exec deletes it itself.
struct StubSocket {
    dir: SocketDir,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A request the stub received: connection number, method, path, body.
type Seen = (usize, String, String, String);

const STUB_ID: &str = "jt_00112233445566ff";

impl StubSocket {
    /// `hold_mints`: a mint is recorded and never answered.
    fn start(hold_mints: bool) -> StubSocket {
        let dir = SocketDir::new();
        let listener = tokio::net::UnixListener::bind(dir.socket()).expect("bind the stub");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let method = request.method().to_string();
                            let path = request.uri().path().to_owned();
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            record.lock().unwrap().push((
                                conn,
                                method.clone(),
                                path,
                                String::from_utf8_lossy(&body).into_owned(),
                            ));
                            if hold_mints && method == "POST" {
                                std::future::pending::<()>().await;
                            }
                            let (status, body) = if method == "POST" {
                                (
                                    201,
                                    format!(
                                        r#"{{"id":"{STUB_ID}","token":"cvj_stub","mapping":"acme-s3","expires_at":null,"session_name":null,"lease":"connection","credentials_uri":"http://127.0.0.1:9/v1/credentials/acme-s3"}}"#
                                    ),
                                )
                            } else {
                                (204, String::new())
                            };
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StubSocket { dir, seen }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_mints_with_a_lease_and_no_ttl_and_deletes_on_that_connection_before_it_exits() {
    let stub = StubSocket::start(false);
    let output = Command::new(BIN)
        .arg("exec")
        .arg("--socket")
        .arg(stub.dir.socket())
        .args([MAPPING, "--", "/bin/sh", "-c", "exit 5"])
        .env_clear()
        .envs(base_env(stub.dir.path()))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert_eq!(code(output.status), Some(5), "{}", describe(&output));
    let seen = stub.seen.lock().unwrap().clone();
    let requests: Vec<(usize, &str, &str)> = seen
        .iter()
        .map(|(conn, method, path, _)| (*conn, method.as_str(), path.as_str()))
        .collect();
    assert_eq!(
        requests,
        [
            (0, "POST", "/v1/tokens"),
            (0, "DELETE", format!("/v1/tokens/{STUB_ID}").as_str()),
        ],
        "exec must revoke its token itself, on the connection that holds the lease"
    );
    let body: serde_json::Value = serde_json::from_str(&seen[0].3).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"mapping": MAPPING, "lease": "connection"}),
        "a lease and no TTL unless --ttl"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_socket_the_configs_control_socket_is_used() {
    let f = start().await;
    let base =
        loopback_server_toml(1, 2) + &sts_and_acme_toml("http://127.0.0.1:3", EXTERNAL_ID, "t");
    let with_control = f.file("with-control.toml");
    write_private_file(
        &with_control,
        &format!("{base}\n[control]\nsocket = \"{}\"\n", f.socket.display()),
    );
    let without_control = f.file("without-control.toml");
    write_private_file(&without_control, &base);
    let list = |config: &Path| {
        let mut command = Command::new(BIN);
        command
            .args(["token", "list", "--json", "--config"])
            .arg(config)
            .env_clear()
            .envs(base_env(f.dir.path()))
            .kill_on_drop(true);
        command.output()
    };
    let listed = list(&with_control).await.unwrap();
    assert_eq!(code(listed.status), Some(0), "{}", describe(&listed));
    let answer: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(answer["tokens"].is_array(), "{answer}");
    let refused = list(&without_control).await.unwrap();
    assert_eq!(code(refused.status), Some(64), "{}", describe(&refused));
    assert!(
        text(&refused.stderr).contains("has no [control] socket"),
        "{}",
        describe(&refused)
    );
}

/// `exec --session-name`: the job's credentials are assumed with that RoleSessionName
/// (an AssumeRole of its own), boto3 acts as that session, and the per-job entry ends
/// with the job's token: the next job with the same name is assumed afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_session_name_reaches_sts_and_boto3_acts_as_that_session() {
    let venv = Venv::locate();
    let f = start().await;
    let python = venv.python();
    let job_sessions = || {
        f.sts
            .assume_role_calls()
            .into_iter()
            .filter(|call| call.session_name.as_deref() == Some("sync-job-8812"))
            .count()
    };
    for run in 1..=2 {
        let _ = std::fs::remove_file(f.file("token"));
        let output = finish(
            f.exec(
                &["--session-name", "sync-job-8812"],
                &[python.to_str().unwrap(), "-c", WHOAMI_PY],
            )
            .spawn()
            .expect("spawn exec"),
        )
        .await;
        assert_eq!(code(output.status), Some(0), "{}", describe(&output));
        assert_eq!(
            text(&output.stdout).trim(),
            format!(
                "arn:aws:sts::{}:assumed-role/vendor-sync/sync-job-8812",
                support::daemon::ACCOUNT
            ),
            "run {run}: boto3 did not act as the job's session: {}",
            describe(&output)
        );
        assert_eq!(
            job_sessions(),
            run,
            "run {run}: one AssumeRole with the job's RoleSessionName per job (the entry \
             is dropped when the job's token ends): {:?}",
            f.sts.assume_role_calls()
        );
        let token = f.job_token().await;
        f.assert_token_dead(&token, "after the job exited").await;
    }
}

/// A signal while the token is being minted: exec ends with 128+n, says why, and never
/// starts the command (the token, if the daemon minted one, dies with the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_before_the_command_started_ends_exec_without_running_it() {
    let stub = StubSocket::start(true);
    let marker = stub.dir.path().join("ran");
    let child = Command::new(BIN)
        .arg("exec")
        .arg("--socket")
        .arg(stub.dir.socket())
        .args([MAPPING, "--", "/bin/sh", "-c", "touch ran"])
        .current_dir(stub.dir.path())
        .env_clear()
        .envs(base_env(stub.dir.path()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("exec's mint to reach the stub", || {
        !stub.seen.lock().unwrap().is_empty()
    })
    .await;
    signal(&child, rustix::process::Signal::TERM);
    let output = finish(child).await;
    assert_eq!(code(output.status), Some(128 + 15), "{}", describe(&output));
    assert_eq!(
        text(&output.stderr).trim(),
        "credvend: SIGTERM before the command started; it was not run"
    );
    assert!(!marker.exists(), "the command ran");
}
