//! End to end: the real `credvend` binary between botocore and moto's STS.
//!
//! Each test starts, on 127.0.0.1 ports picked by binding port 0:
//!
//! 1. `moto_server` from the Python venv (the STS emulator). moto accepts every
//!    `AssumeRole` and records it in `GET /moto-api/data.json` under
//!    `sts.AssumedRole[]` (`role_arn`, `external_id`, `session_name`,
//!    `access_key_id`, `secret_access_key`, `session_token`, …). `GetCallerIdentity`
//!    signed with the returned credentials answers the assumed-role ARN.
//! 2. `credvend serve --config <temp file>` with dummy base credentials, `[sts]
//!    endpoint_url` pointing at moto and `[verify] external_id_enforcement = "off"`
//!    (moto cannot enforce External IDs the way AWS does, DESIGN.md §5).
//! 3. A boto3 "worker" from the venv whose environment holds nothing AWS-related but
//!    `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN`
//!    (no keys, no profile files, no instance metadata), exactly as a launcher sets it.
//!
//! The venv is `<repo>/.venv` from `scripts/setup-python.sh` (`scripts/test.sh` runs
//! it), or `CREDVEND_TEST_VENV` when set. Set that only for this test: credvend reads
//! every other `CREDVEND_*` variable as a config override, so exporting it to the
//! whole suite breaks the config tests. A missing venv fails the test with
//! instructions rather than skipping it: a skipped e2e test looks exactly like a
//! passing one in CI.
//!
//! Every process is killed on drop, so a failing assertion leaks nothing; their logs
//! live in a temp directory that is kept (and named in the panic output) on failure.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

const MAPPING: &str = "e2e-s3";
const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/e2e-sync";
/// Default session name is `credvend-<mapping>` (DESIGN.md §4).
const SESSION_NAME: &str = "credvend-e2e-s3";
const ASSUMED_ROLE_ARN: &str = "arn:aws:sts::111122223333:assumed-role/e2e-sync/credvend-e2e-s3";
const EXTERNAL_ID: &str = "e2e-ExternalId-6Tq9wZ2vLk4pR8sN";
const REGION: &str = "us-east-1";

/// How long moto (a Python process importing a lot) may take to answer.
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long credvend may take to validate its config, bind and report ready.
const CREDVEND_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one boto3 worker run; a hang must fail, not stall the suite.
const WORKER_TIMEOUT: Duration = Duration::from_secs(60);
/// botocore tries the container endpoint 3 times, 1 s apart: a refused token fails in
/// about 3 s. A daemon that hangs instead costs 3 × 2 s read timeouts + 3 s of sleeps.
const WRONG_TOKEN_MAX_ELAPSED: Duration = Duration::from_secs(8);
/// SIGTERM must end `serve` with status 0 within this bound.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// The worker: what a sync job's SDK does, and nothing else. Exit 3 with the SDK's
/// own error text on stderr when anything fails.
const WORKER_PY: &str = r#"
import json, sys
import boto3

try:
    session = boto3.Session()
    credentials = session.get_credentials()
    method = credentials.method if credentials is not None else None
    sts = session.client("sts", endpoint_url=sys.argv[1], region_name=sys.argv[2])
    identity = sts.get_caller_identity()
except Exception as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(3)
print(json.dumps({"Arn": identity["Arn"], "Account": identity["Account"], "method": method}))
"#;

#[test]
fn boto3_worker_gets_the_mapped_role_through_credvend() {
    let venv = Venv::locate();
    let dir = TempDir::new("success");
    let moto = Moto::start(&venv, &dir);
    let token = random_token();
    let credvend = Credvend::start(&dir, &moto, &token_sha256_hex(&token));
    let context = || {
        format!(
            "{}\n{}",
            credvend.process.describe(),
            moto.process.describe()
        )
    };

    // Two worker processes, each fetching credentials once: the second must be served
    // from credvend's cache, so moto sees one AssumeRole in total.
    for run in 1..=2 {
        let outcome = run_worker(&venv, &dir, &credvend.credentials_uri(), &token, &moto);
        assert!(
            outcome.status.success(),
            "worker run {run} failed ({}) after {:?}\nstderr: {}\n{}",
            outcome.status,
            outcome.elapsed,
            outcome.stderr,
            context()
        );
        let identity: serde_json::Value = serde_json::from_str(outcome.stdout.trim())
            .unwrap_or_else(|e| panic!("worker printed no JSON ({e}): {:?}", outcome.stdout));
        assert_eq!(
            identity["Arn"], ASSUMED_ROLE_ARN,
            "run {run}: GetCallerIdentity with the vended credentials"
        );
        assert_eq!(identity["Account"], "111122223333", "run {run}");
        assert_eq!(
            identity["method"], "container-role",
            "run {run}: botocore must have used the container credentials provider"
        );
    }

    // The raw response, as every SDK parses it (DESIGN.md §2).
    let response = http_request(
        credvend.listen,
        "GET",
        &format!("/v1/credentials/{MAPPING}"),
        &[("Authorization", token.as_str())],
    )
    .unwrap_or_else(|e| panic!("GET credentials: {e}\n{}", context()));
    assert_eq!(
        response.status,
        200,
        "body: {}\n{}",
        response.body,
        context()
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let body: serde_json::Value = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("credential body is not JSON ({e}): {}", response.body));
    for key in [
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "Expiration",
        "RoleArn",
    ] {
        assert!(
            body[key].is_string(),
            "{key} missing or not a string in {body}"
        );
    }
    assert!(
        body.get("Code").is_none(),
        "success body must carry no Code: {body}"
    );
    assert_eq!(body["RoleArn"], ROLE_ARN);
    let expiration = body["Expiration"].as_str().unwrap_or_default();
    assert!(
        is_aws_utc_timestamp(expiration),
        "Expiration must be YYYY-MM-DDTHH:MM:SSZ (moto sends fractional seconds; credvend \
         must reformat): {expiration:?}"
    );

    // What moto saw: exactly one AssumeRole, with the mapping's inputs.
    let assumed = moto.assumed_roles();
    assert_eq!(
        assumed.len(),
        1,
        "moto must receive exactly one AssumeRole: {assumed:#?}\n{}",
        context()
    );
    let call = &assumed[0];
    assert_eq!(call["role_arn"], ROLE_ARN);
    assert_eq!(call["external_id"], EXTERNAL_ID);
    assert_eq!(call["session_name"], SESSION_NAME);
    assert_eq!(
        body["AccessKeyId"], call["access_key_id"],
        "credvend must serve the credentials moto issued"
    );

    // Secrets never reach the log (DESIGN.md §6): the token, the External ID and the
    // credentials moto issued are canaries.
    let log = credvend.process.log();
    let canaries = [
        ("authorization token", token.as_str()),
        ("External ID", EXTERNAL_ID),
        (
            "secret access key",
            call["secret_access_key"].as_str().unwrap_or_default(),
        ),
        (
            "session token",
            call["session_token"].as_str().unwrap_or_default(),
        ),
    ];
    for (what, value) in canaries {
        assert!(!value.is_empty(), "moto record lacks the {what}: {call}");
        assert!(!log.contains(value), "credvend's log contains the {what}");
    }

    // SIGTERM ends `serve` cleanly.
    let mut credvend = credvend;
    let status = credvend.process.terminate(SHUTDOWN_TIMEOUT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "credvend serve must exit 0 on SIGTERM\n{}",
        credvend.process.describe()
    );
}

#[test]
fn wrong_token_fails_the_worker_promptly_without_calling_sts() {
    let venv = Venv::locate();
    let dir = TempDir::new("wrong-token");
    let moto = Moto::start(&venv, &dir);
    let token = random_token();
    let mut credvend = Credvend::start(&dir, &moto, &token_sha256_hex(&token));
    let wrong_token = random_token();

    let outcome = run_worker(
        &venv,
        &dir,
        &credvend.credentials_uri(),
        &wrong_token,
        &moto,
    );
    let context = format!(
        "worker exit {} after {:?}\nstdout: {}\nstderr: {}\n{}",
        outcome.status,
        outcome.elapsed,
        outcome.stdout,
        outcome.stderr,
        credvend.process.describe()
    );
    assert_eq!(
        outcome.status.code(),
        Some(3),
        "the worker must fail with an SDK error\n{context}"
    );
    for expected in ["container-role", "403", "AccessDenied"] {
        assert!(
            outcome.stderr.contains(expected),
            "worker error should mention {expected:?}\n{context}"
        );
    }
    assert!(
        outcome.elapsed < WRONG_TOKEN_MAX_ELAPSED,
        "a refused token must fail promptly (botocore: 3 tries, 1 s apart), not time out\n{context}"
    );
    assert!(
        credvend.process.exit_status().is_none(),
        "credvend must keep running\n{context}"
    );

    let assumed = moto.assumed_roles();
    assert!(
        assumed.is_empty(),
        "an unauthorised request must not reach STS: {assumed:#?}"
    );
    let log = credvend.process.log();
    assert!(
        !log.contains(&wrong_token) && !log.contains(&token),
        "credvend's log contains a token"
    );
}

// --- the processes ------------------------------------------------------------------

/// The Python venv holding moto and boto3.
/// `credvend verify --bucket` against moto's S3: the five permission checks run for
/// real with the assumed credentials. moto's STS lets AssumeRole through without an
/// External ID, so the enforcement line must say NOT ENFORCED and the exit status is 1
/// — which is also what a customer with that trust policy would see.
#[test]
fn verify_exercises_the_five_s3_permissions_and_flags_moto_trust() {
    let venv = Venv::locate();
    let dir = TempDir::new("verify");
    let moto = Moto::start(&venv, &dir);
    let config = write_config(
        &dir,
        &moto,
        &token_sha256_hex(&random_token()),
        free_loopback_addr(),
        free_loopback_addr(),
    );
    let bucket = "credvend-e2e-verify";
    let create = Command::new(venv.python())
        .args([
            "-c",
            "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket=sys.argv[2])",
            &moto.url(),
            bucket,
        ])
        .env_clear()
        .envs(base_env(&dir))
        .output()
        .expect("run python");
    assert!(
        create.status.success(),
        "create bucket: {}",
        String::from_utf8_lossy(&create.stderr)
    );

    let verify = |bucket: &str| {
        Command::new(env!("CARGO_BIN_EXE_credvend"))
            .args(["verify", MAPPING, "--config"])
            .arg(&config)
            .args(["--bucket", bucket, "--s3-endpoint-url", &moto.url()])
            .env_clear()
            .envs(base_env(&dir))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .output()
            .expect("run credvend verify")
    };
    let out = verify(bucket);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}\n{stderr}");
    let line = |check: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(check))
            .unwrap_or_else(|| panic!("no {check} line in:\n{text}\n{stderr}"))
            .to_string()
    };
    assert!(line("external-id").starts_with("FAIL") && text.contains("NOT ENFORCED"));
    assert!(line("sts:AssumeRole").starts_with("ok"), "{text}");
    for action in [
        "s3:GetBucketLocation",
        "s3:ListBucket",
        "s3:PutObject",
        "s3:GetObject",
        "s3:DeleteObject",
    ] {
        assert!(
            line(action).starts_with("ok"),
            "{action}:\n{text}\n{stderr}"
        );
    }
    assert!(!text.contains(EXTERNAL_ID) && !stderr.contains(EXTERNAL_ID));

    // A bucket that does not exist: each permission line carries the AWS error code.
    let out = verify("credvend-e2e-missing");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let list = text
        .lines()
        .find(|l| l.contains("s3:ListBucket"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        list.starts_with("FAIL") && list.contains("NoSuchBucket"),
        "{text}"
    );
    let get = text
        .lines()
        .find(|l| l.contains("s3:GetObject"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        get.starts_with("FAIL") && get.contains("NoSuchBucket"),
        "{text}"
    );
}

/// Sets up moto's IAM for the enforced-permissions test: two roles on bucket `bkt`,
/// one with all five S3 permissions, one without `s3:PutObject`.
const IAM_SETUP_PY: &str = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1",
          aws_access_key_id="testing", aws_secret_access_key="testing")
iam = boto3.client("iam", **kw)
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole",
    "Condition": {"StringEquals": {"sts:ExternalId": "ext-123456"}}}]}
five = ["s3:GetObject", "s3:ListBucket", "s3:PutObject", "s3:DeleteObject", "s3:GetBucketLocation"]
for role, actions in [("full", five), ("noput", [a for a in five if a != "s3:PutObject"])]:
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName=role, PolicyName="sync", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions,
         "Resource": ["arn:aws:s3:::bkt", "arn:aws:s3:::bkt/*"]}]}))
boto3.client("s3", **kw).create_bucket(Bucket="bkt")
"#;

/// `credvend verify --bucket` against moto with IAM enforcement on for S3: a role
/// whose policy lacks `s3:PutObject` is reported as exactly that one S3 failure, a
/// complete policy passes, and no probe object is left behind. moto enforces IAM after
/// `INITIAL_NO_AUTH_ACTION_COUNT` requests; it is set to 3 before each run so that the
/// two enforcement probes and the real AssumeRole go through (moto's STS cannot be
/// satisfied under enforcement) and every S3 call is judged by the role's policy.
#[test]
fn verify_names_exactly_the_missing_s3_permission_under_moto_iam() {
    let venv = Venv::locate();
    let dir = TempDir::new("verify-iam");
    let moto = Moto::start(&venv, &dir);
    let setup = Command::new(venv.python())
        .args(["-c", IAM_SETUP_PY, &moto.url()])
        .env_clear()
        .envs(base_env(&dir))
        .output()
        .expect("run python");
    assert!(
        setup.status.success(),
        "moto IAM setup: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let hash = token_sha256_hex(&random_token());
    let config = dir.path().join("verify.toml");
    write_private_file(
        &config,
        &format!(
            r#"
[sts]
endpoint_url = "{url}"

[verify]
external_id_enforcement = "warn"

[mappings.full]
role_arn = "arn:aws:iam::123456789012:role/full"
external_id = "ext-123456"
token_sha256 = ["{hash}"]

[mappings.noput]
role_arn = "arn:aws:iam::123456789012:role/noput"
external_id = "ext-123456"
token_sha256 = ["{hash2}"]
"#,
            url = moto.url(),
            hash2 = token_sha256_hex(&random_token()),
        ),
    );
    let verify = |mapping: &str| {
        let reset = http_request_with_body(moto.addr, "/moto-api/reset-auth", "3")
            .unwrap_or_else(|e| panic!("reset-auth: {e}"));
        assert_eq!(reset.status, 200, "reset-auth: {}", reset.body);
        let out = Command::new(env!("CARGO_BIN_EXE_credvend"))
            .args(["verify", mapping, "--config"])
            .arg(&config)
            .args(["--bucket", "bkt", "--s3-endpoint-url", &moto.url()])
            .env_clear()
            .envs(base_env(&dir))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .output()
            .expect("run credvend verify");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let s3_lines: Vec<String> = text
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|c| c.starts_with("s3:"))
            })
            .map(str::to_string)
            .collect();
        assert_eq!(s3_lines.len(), 5, "{text}");
        (out.status.code(), text, s3_lines)
    };

    let (_, text, lines) = verify("full");
    assert!(lines.iter().all(|l| l.starts_with("ok")), "{text}");

    let (code, text, lines) = verify("noput");
    assert_ne!(code, Some(0), "{text}");
    let failed: Vec<&String> = lines.iter().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 1, "exactly one S3 failure:\n{text}");
    assert!(failed[0].contains("s3:PutObject") && failed[0].contains("AccessDenied"));
    assert!(
        failed[0].contains(r#"add "s3:PutObject" on "arn:aws:s3:::bkt/*""#),
        "{text}"
    );

    // Nothing left behind in the bucket.
    let reset = http_request_with_body(moto.addr, "/moto-api/reset-auth", "inf").unwrap();
    assert_eq!(reset.status, 200);
    let listing = Command::new(venv.python())
        .args([
            "-c",
            "import boto3,sys; print(boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').list_objects_v2(Bucket='bkt').get('KeyCount'))",
            &moto.url(),
        ])
        .env_clear()
        .envs(base_env(&dir))
        .output()
        .expect("run python");
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout).trim(),
        "0",
        "probe objects left: {}",
        String::from_utf8_lossy(&listing.stderr)
    );
}

struct Venv {
    root: PathBuf,
}

impl Venv {
    fn locate() -> Venv {
        let root = std::env::var_os("CREDVEND_TEST_VENV")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
        let venv = Venv { root };
        let hint = "run scripts/setup-python.sh (scripts/test.sh does it for you) or set \
                    CREDVEND_TEST_VENV to a venv with the packages in \
                    scripts/python-requirements.txt";
        for tool in [venv.python(), venv.moto_server()] {
            assert!(
                tool.is_file(),
                "e2e test needs {} from the Python venv: {hint}",
                tool.display()
            );
        }
        let check = Command::new(venv.python())
            .args(["-c", "import boto3, moto"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", venv.python().display()));
        assert!(
            check.status.success(),
            "venv {} cannot import boto3 and moto: {}\n{hint}",
            venv.root.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        venv
    }

    fn python(&self) -> PathBuf {
        self.root.join("bin/python")
    }

    fn moto_server(&self) -> PathBuf {
        self.root.join("bin/moto_server")
    }
}

/// A moto server on a free loopback port.
struct Moto {
    process: ChildGuard,
    addr: SocketAddr,
}

impl Moto {
    fn start(venv: &Venv, dir: &TempDir) -> Moto {
        let addr = free_loopback_addr();
        let mut command = Command::new(venv.moto_server());
        command
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .env_clear()
            .envs(base_env(dir));
        let mut process = ChildGuard::spawn("moto", command, &dir.path().join("moto.log"));
        wait_until(MOTO_START_TIMEOUT, &mut process, "moto to answer", || {
            http_request(addr, "GET", "/moto-api/", &[]).is_ok_and(|r| r.status == 200)
        });
        Moto { process, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The AssumeRole calls moto served, oldest first.
    fn assumed_roles(&self) -> Vec<serde_json::Value> {
        let response = http_request(self.addr, "GET", "/moto-api/data.json", &[])
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

/// `credvend serve` with a config written for this test.
struct Credvend {
    process: ChildGuard,
    listen: SocketAddr,
}

impl Credvend {
    fn start(dir: &TempDir, moto: &Moto, token_sha256: &str) -> Credvend {
        let listen = free_loopback_addr();
        let admin = free_loopback_addr();
        let config_path = write_config(dir, moto, token_sha256, listen, admin);

        let mut command = Command::new(env!("CARGO_BIN_EXE_credvend"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env_clear()
            .envs(base_env(dir))
            // The vendor's base identity: moto accepts any key.
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env("RUST_BACKTRACE", "1");
        let mut process = ChildGuard::spawn("credvend", command, &dir.path().join("credvend.log"));
        wait_until(
            CREDVEND_READY_TIMEOUT,
            &mut process,
            "credvend /readyz to answer 200",
            || http_request(admin, "GET", "/readyz", &[]).is_ok_and(|r| r.status == 200),
        );
        assert!(
            TcpStream::connect_timeout(&listen, Duration::from_secs(2)).is_ok(),
            "credvend is ready but its credential listener {listen} refuses connections\n{}",
            process.describe()
        );
        Credvend { process, listen }
    }

    fn credentials_uri(&self) -> String {
        format!("http://{}/v1/credentials/{MAPPING}", self.listen)
    }
}

/// Writes the test's credvend config (mapping MAPPING → ROLE_ARN on moto) and returns
/// its path.
fn write_config(
    dir: &TempDir,
    moto: &Moto,
    token_sha256: &str,
    listen: SocketAddr,
    admin: SocketAddr,
) -> PathBuf {
    let config = format!(
        r#"# Written by tests/e2e_moto.rs
[server]
listen = ["{listen}"]
admin_listen = "{admin}"

[log]
level = "info,credvend=debug"
format = "plain"

[sts]
region = "{REGION}"
endpoint_url = "{moto_url}"

[verify]
# moto accepts AssumeRole without the External ID, so the enforcement probe would
# refuse every mapping (and its extra AssumeRole calls would muddle the count).
external_id_enforcement = "off"

[mappings.{MAPPING}]
role_arn = "{ROLE_ARN}"
external_id = "{EXTERNAL_ID}"
token_sha256 = ["{token_sha256}"]
"#,
        moto_url = moto.url(),
    );
    let config_path = dir.path().join("credvend.toml");
    write_private_file(&config_path, &config);
    config_path
}

struct WorkerOutcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the boto3 worker with only the container-credentials variables set.
fn run_worker(
    venv: &Venv,
    dir: &TempDir,
    credentials_uri: &str,
    token: &str,
    moto: &Moto,
) -> WorkerOutcome {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let stdout_path = dir.path().join(format!("worker-{run}.out"));
    let stderr_path = dir.path().join(format!("worker-{run}.err"));

    let mut command = Command::new(venv.python());
    command
        .args(["-c", WORKER_PY, &moto.url(), REGION])
        .env_clear()
        .envs(base_env(dir))
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", credentials_uri)
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(create_file(&stdout_path))
        .stderr(create_file(&stderr_path));
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the boto3 worker: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the boto3 worker") {
            break status;
        }
        if started.elapsed() > WORKER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "boto3 worker still running after {WORKER_TIMEOUT:?}; stderr so far: {}",
                read_lossy(&stderr_path)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    WorkerOutcome {
        status,
        stdout: read_lossy(&stdout_path),
        stderr: read_lossy(&stderr_path),
        elapsed: started.elapsed(),
    }
}

/// Environment every child starts from: nothing inherited but `PATH`, no AWS
/// configuration files, no instance metadata. (`env_clear` first removes every other
/// `AWS_*` and `CREDVEND_*` variable of the test's own environment.)
fn base_env(dir: &TempDir) -> Vec<(&'static str, OsString)> {
    vec![
        (
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        ),
        ("HOME", dir.path().as_os_str().to_owned()),
        ("LANG", "C.UTF-8".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
    ]
}

/// A child process whose stdout and stderr go to a log file; killed and reaped on
/// drop so that a failing assertion never leaves it running.
struct ChildGuard {
    name: &'static str,
    child: Child,
    log_path: PathBuf,
}

impl ChildGuard {
    fn spawn(name: &'static str, mut command: Command, log_path: &Path) -> ChildGuard {
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
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name))
    }

    fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// The last part of the log, for failure messages.
    fn describe(&self) -> String {
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
    fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
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

/// Polls `ready` until it holds; fails early, with the log, if the process exits.
fn wait_until(
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

// --- helpers ------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop unless the test failed.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "credvend-e2e-{label}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
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

/// A loopback address with a port that was free a moment ago.
fn free_loopback_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
}

/// 256 random bits, hex: the shape `credvend token new` prints.
fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// `token_sha256` of a token exactly as sent: no trimming, no newline.
fn token_sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `YYYY-MM-DDTHH:MM:SSZ` exactly.
fn is_aws_utc_timestamp(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == 20
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

fn create_file(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Writes a file readable by its owner only (credvend warns about anything wider).
fn write_private_file(path: &Path, contents: &str) {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    /// The value of a header (name case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client (one request per connection), so the test needs no HTTP
/// crate and sees the response exactly as sent.
fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    http_exchange(addr, method, path, headers, "")
}

/// `POST path` with a plain-text body (moto's admin API).
fn http_request_with_body(
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> std::io::Result<HttpResponse> {
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
