//! Real processes for end-to-end tests: the project's Python venv, a moto server, child
//! processes that are killed on drop, temp directories kept on failure, and a minimal
//! blocking HTTP/1.1 client for readiness probes, moto's admin API and raw responses.
//!
//! Everything here is synchronous (std only): end-to-end tests drive external programs
//! and wait for them, so they need no runtime. Every wait has a bound, so a hung child
//! fails the test instead of stalling the suite.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// How long moto (a Python process importing a lot) may take to answer.
pub const MOTO_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The region every end-to-end test talks to moto in.
pub const REGION: &str = "us-east-1";

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python venv from `scripts/setup-python.sh`: moto, boto3, AWS CLI v1.
pub struct Venv {
    root: PathBuf,
}

impl Venv {
    /// `<repo>/.venv`, or `TEST_VENV` when set (not a `CREDVEND_*` name: credvend
    /// warns about those that are not config overrides).
    /// Panics with instructions when the venv or one of its tools is missing: a skipped
    /// end-to-end test looks exactly like a passing one in CI.
    pub fn locate() -> Venv {
        let root = std::env::var_os("TEST_VENV")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".venv"));
        let venv = Venv { root };
        let hint = "run scripts/setup-python.sh (scripts/test.sh does it for you) or set \
                    TEST_VENV to a venv with the packages in \
                    scripts/python-requirements.txt";
        for tool in [venv.python(), venv.bin("moto_server"), venv.bin("aws")] {
            assert!(
                tool.is_file(),
                "end-to-end test needs {} from the Python venv: {hint}",
                tool.display()
            );
        }
        let check = Command::new(venv.python())
            .args(["-c", "import boto3, botocore, moto, awscli"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", venv.python().display()));
        assert!(
            check.status.success(),
            "venv {} cannot import boto3, botocore, moto and awscli: {}\n{hint}",
            venv.root.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        venv
    }

    pub fn python(&self) -> PathBuf {
        self.bin("python")
    }

    /// A console script of the venv (`aws`, `moto_server`).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.root.join("bin").join(name)
    }

    /// checkov, from its own venv inside this one (`<venv>/checkov`, built by
    /// `scripts/setup-python.sh`; scripts/python-requirements-checkov.txt says why it is
    /// apart). Panics with instructions when it is missing.
    pub fn checkov(&self) -> PathBuf {
        let checkov = self.root.join("checkov").join("bin").join("checkov");
        assert!(
            checkov.is_file(),
            "this test needs {}: run scripts/setup-python.sh (scripts/test.sh does it for you)",
            checkov.display()
        );
        checkov
    }

    /// Runs `python -c script args…` from [`base_env`] (`HOME` = `home`), stdin closed,
    /// to completion.
    pub fn run_python(&self, home: &Path, script: &str, args: &[&str]) -> Output {
        Command::new(self.python())
            .arg("-c")
            .arg(script)
            .args(args)
            .env_clear()
            .envs(base_env(home))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.python().display()))
    }
}

/// Environment every child starts from: nothing inherited but `PATH`, no AWS
/// configuration files, no instance metadata. Use after `env_clear()`, which removes
/// every other `AWS_*` and `CREDVEND_*` variable of the test's own environment.
pub fn base_env(home: &Path) -> Vec<(&'static str, OsString)> {
    vec![
        (
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        ),
        ("HOME", home.as_os_str().to_owned()),
        ("LANG", "C.UTF-8".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
    ]
}

/// `credvend serve --config config` starting from [`base_env`] (`home` as `HOME`), with
/// `RUST_LOG=rust_log` and a static base identity whose secret key is `base_secret` (a
/// test looking for leaks searches the log for it). The caller adds arguments, chooses
/// stdout and stderr, and spawns.
pub fn credvend_serve(config: &Path, home: &Path, rust_log: &str, base_secret: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_credvend"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .env_clear()
        .envs(base_env(home))
        .env("RUST_LOG", rust_log)
        .env("AWS_ACCESS_KEY_ID", "AKIAVENDORBASE000000")
        .env("AWS_SECRET_ACCESS_KEY", base_secret);
    command
}

/// A moto server (STS, S3, …) on a free 127.0.0.1 port.
pub struct Moto {
    pub process: ChildGuard,
    pub addr: SocketAddr,
}

impl Moto {
    pub fn start(venv: &Venv, dir: &TempDir) -> Moto {
        let addr = free_loopback_addr();
        let mut command = Command::new(venv.bin("moto_server"));
        command
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .env_clear()
            .envs(base_env(dir.path()));
        let mut process = ChildGuard::spawn("moto", command, &dir.path().join("moto.log"));
        wait_until(MOTO_START_TIMEOUT, &mut process, "moto to answer", || {
            http_get(addr, "/moto-api/", &[]).is_ok_and(|r| r.status == 200)
        });
        Moto { process, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `[sts]` and `[verify]` sections of a credvend config that uses this moto.
    pub fn credvend_config_sections(&self) -> String {
        format!(
            r#"
[sts]
region = "{REGION}"
endpoint_urls = {{ {REGION} = "{url}" }}

[verify]
# moto lets AssumeRole through without the External ID, so the enforcement probe would
# refuse every mapping (docs/design.md, Credential lifecycle;
# tests/external_id_enforcement.rs covers the probe against the fake STS), and its extra
# AssumeRole calls would muddle the counts.
external_id_enforcement = "off"
"#,
            url = self.url()
        )
    }

    /// Creates an S3 bucket with static test credentials (moto accepts any key).
    pub fn create_bucket(&self, venv: &Venv, dir: &TempDir, bucket: &str) {
        let output = venv.run_python(
            dir.path(),
            "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], \
             region_name='us-east-1', aws_access_key_id='testing', \
             aws_secret_access_key='testing').create_bucket(Bucket=sys.argv[2])",
            &[&self.url(), bucket],
        );
        assert!(
            output.status.success(),
            "create bucket {bucket} on moto: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The AssumeRole calls moto served, oldest first.
    pub fn assumed_roles(&self) -> Vec<serde_json::Value> {
        let response = http_get(self.addr, "/moto-api/data.json", &[])
            .unwrap_or_else(|e| panic!("GET moto data.json: {e}"));
        assert_eq!(response.status, 200, "moto data.json: {}", response.body);
        let data: serde_json::Value = serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("moto data.json is not JSON: {e}"));
        match &data["sts"]["AssumedRole"] {
            serde_json::Value::Array(calls) => calls.clone(),
            // moto lists a model only once its backend exists, i.e. after a first call.
            serde_json::Value::Null => Vec::new(),
            other => panic!("unexpected sts.AssumedRole in moto data.json: {other}"),
        }
    }
}

/// A child process whose stdout and stderr go to a log file; killed and reaped on
/// drop so that a failing assertion never leaves it running.
pub struct ChildGuard {
    pub name: &'static str,
    child: Child,
    log_path: PathBuf,
}

impl ChildGuard {
    pub fn spawn(name: &'static str, mut command: Command, log_path: &Path) -> ChildGuard {
        let log = create_file(log_path);
        let log_for_stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("dup {}: {e}", log_path.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        ChildGuard {
            name,
            child,
            log_path: log_path.to_owned(),
        }
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name))
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// The last part of the log, for failure messages.
    pub fn describe(&self) -> String {
        const TAIL: usize = 6000;
        let log = self.log();
        let start = log.len().saturating_sub(TAIL);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        format!(
            "--- {} log ({}) ---\n{}\n--- end of {} log ---",
            self.name,
            self.log_path.display(),
            &log[start..],
            self.name
        )
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "could not send SIGTERM to {}", self.name);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Starts `credvend serve --config config` as the child `name` (its log is
/// `<dir>/<name>.log`) with a static base identity (moto accepts any key), and waits until
/// `/readyz` on `admin` answers 200: both listeners bound and every prefetch
/// mapping warm.
pub fn spawn_credvend(
    dir: &TempDir,
    name: &'static str,
    config: &Path,
    admin: SocketAddr,
    ready_timeout: Duration,
) -> ChildGuard {
    let mut command = Command::new(env!("CARGO_BIN_EXE_credvend"));
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_clear()
        .envs(base_env(dir.path()))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", REGION)
        .env("RUST_BACKTRACE", "1");
    let log = dir.path().join(format!("{name}.log"));
    let mut process = ChildGuard::spawn(name, command, &log);
    wait_until(
        ready_timeout,
        &mut process,
        "credvend /readyz to answer 200",
        || http_get(admin, "/readyz", &[]).is_ok_and(|r| r.status == 200),
    );
    process
}

/// Polls `ready` until it holds; fails early, with the log, if the process exits.
pub fn wait_until(
    timeout: Duration,
    process: &mut ChildGuard,
    what: &str,
    mut ready: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exit_status() {
            panic!(
                "{} exited ({status}) while waiting for {what}\n{}",
                process.name,
                process.describe()
            );
        }
        if ready() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                process.describe()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// What a finished (or killed) one-shot command left behind.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `None` when the command was killed for running past its timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Exit status, stdout and stderr, for failure messages.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(status) => status.to_string(),
            None => "killed: timed out".to_owned(),
        };
        format!(
            "{status} after {:.1?}\nstdout: {}\nstderr: {}",
            self.elapsed,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `command` to completion with stdin closed and stdout/stderr captured in
/// `<dir>/<label>.out` / `.err`; kills it after `timeout`.
pub fn run_bounded(mut command: Command, dir: &Path, label: &str, timeout: Duration) -> Outcome {
    let stdout_path = dir.join(format!("{label}.out"));
    let stderr_path = dir.join(format!("{label}.err"));
    command
        .stdin(Stdio::null())
        .stdout(create_file(&stdout_path))
        .stderr(create_file(&stderr_path));
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {label} ({command:?}): {e}"));
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for {label}: {e}"))
        {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: read_lossy(&stdout_path),
        stderr: read_lossy(&stderr_path),
        elapsed: started.elapsed(),
    }
}

/// A directory under the system temp dir, removed on drop unless the test failed.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("credvend-{label}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("e2e: keeping {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A 127.0.0.1 address with a port that was free a moment ago.
pub fn free_loopback_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
}

/// A port that was free on both 127.0.0.1 and [::1] a moment ago, so one daemon can
/// listen on `127.0.0.1:P` and `[::1]:P` (credvend's default shape).
pub fn free_dual_stack_port() -> u16 {
    for _ in 0..50 {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = v4.local_addr().expect("local addr").port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and [::1] after 50 tries (is IPv6 loopback up?)");
}

/// 256 random bits, hex: the shape `credvend token new` prints.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// `token_sha256` of a token exactly as sent: no trimming, no newline.
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn create_file(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Writes a file readable by its owner only (credvend warns about anything wider).
pub fn write_private_file(path: &Path, contents: &str) {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// A response from [`http_request`] (and [`http_get`], [`http_post_text`]).
pub struct HttpResponse {
    pub status: u16,
    /// Header names as sent, in order.
    pub headers: Vec<(String, String)>,
    /// The body, decoded when it came chunked.
    pub body: String,
}

impl HttpResponse {
    /// The value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path`: readiness probes and moto's JSON API.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    http_request(addr, "GET", path, headers)
}

/// A minimal blocking HTTP/1.1 client (one request per connection, `Connection: close`),
/// so tests need no HTTP crate and see the response as sent (a chunked body is decoded).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    http_exchange(addr, method, path, headers, "")
}

/// `POST path` with a plain-text body (moto's admin API, e.g. `/moto-api/reset-auth`).
pub fn http_post_text(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<HttpResponse> {
    let length = body.len().to_string();
    http_exchange(
        addr,
        "POST",
        path,
        &[("Content-Type", "text/plain"), ("Content-Length", &length)],
        body,
    )
}

fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    request_body: &str,
) -> std::io::Result<HttpResponse> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(request_body);
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;

    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let response = HttpResponse {
        status,
        headers,
        body: String::new(),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body).ok_or_else(|| invalid("bad chunked body"))?;
    }
    Ok(HttpResponse {
        body: String::from_utf8_lossy(&body).into_owned(),
        ..response
    })
}

/// Decodes a `Transfer-Encoding: chunked` body; `None` when it is malformed.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
