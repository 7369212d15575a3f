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
//!    endpoint_urls` pointing at moto and `[verify] external_id_enforcement = "off"`
//!    (moto cannot enforce External IDs the way AWS does; the check is described in
//!    docs/design.md, Credential lifecycle).
//! 3. A boto3 "worker" from the venv whose environment holds nothing AWS-related but
//!    `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN`
//!    (no keys, no profile files, no instance metadata), exactly as a launcher sets it.
//!
//! The venv is `<repo>/.venv` from `scripts/setup-python.sh` (`scripts/test.sh` runs
//! it), or `TEST_VENV` when set. A missing venv fails the test with
//! instructions rather than skipping it: a skipped e2e test looks exactly like a
//! passing one in CI.
//!
//! Every process is killed on drop, so a failing assertion leaks nothing; their logs
//! live in a temp directory that is kept (and named in the panic output) on failure.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use support::e2e::{
    ChildGuard, Moto, REGION, TempDir, Venv, base_env, free_loopback_addr, http_post_text,
    http_request, random_token, run_bounded, spawn_credvend, token_sha256_hex, write_private_file,
};

const MAPPING: &str = "e2e-s3";
const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/e2e-sync";
/// Default session name is `credvend-<mapping>` (docs/design.md, Configuration).
const SESSION_NAME: &str = "credvend-e2e-s3";
const ASSUMED_ROLE_ARN: &str = "arn:aws:sts::111122223333:assumed-role/e2e-sync/credvend-e2e-s3";
const EXTERNAL_ID: &str = "e2e-ExternalId-6Tq9wZ2vLk4pR8sN";

/// How long credvend may take to validate its config, bind and report ready.
const CREDVEND_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one boto3 worker run; a hang must fail, not stall the suite.
const WORKER_TIMEOUT: Duration = Duration::from_secs(60);
/// botocore tries the container endpoint 3 times and sleeps 1 s after each failure: a
/// refused token fails its credential lookup in a little over 3 s. A daemon that hangs
/// instead costs 3 × 2 s read timeouts + 3 s of sleeps, 9 s. The worker measures the
/// lookup itself, so neither interpreter start nor the boto3 import (seconds on a
/// loaded machine) counts.
const WRONG_TOKEN_MAX_LOOKUP: Duration = Duration::from_secs(7);
/// SIGTERM must end `serve` with status 0 within this bound.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// The worker: what a sync job's SDK does, and nothing else. Exit 3 with the SDK's
/// own error text on stderr when anything fails, followed by `credential lookup took
/// <seconds> s` once the credential lookup has run.
const WORKER_PY: &str = r#"
import json, sys, time
import boto3

lookup = None
try:
    session = boto3.Session()
    started = time.monotonic()
    try:
        credentials = session.get_credentials()
    finally:
        lookup = time.monotonic() - started
    method = credentials.method if credentials is not None else None
    sts = session.client("sts", endpoint_url=sys.argv[1], region_name=sys.argv[2])
    identity = sts.get_caller_identity()
except Exception as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    if lookup is not None:
        print(f"credential lookup took {lookup:.3f} s", file=sys.stderr)
    sys.exit(3)
print(json.dumps({"Arn": identity["Arn"], "Account": identity["Account"], "method": method}))
"#;

#[test]
fn boto3_worker_gets_the_mapped_role_through_credvend() {
    let venv = Venv::locate();
    let dir = TempDir::new("e2e-success");
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

    // The raw response, as every SDK parses it (docs/design.md, Wire contract).
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

    // SIGTERM ends `serve` cleanly.
    let mut credvend = credvend;
    let status = credvend.process.terminate(SHUTDOWN_TIMEOUT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "credvend serve must exit 0 on SIGTERM\n{}",
        credvend.process.describe()
    );

    // Secrets never reach the log (docs/design.md, Security model): the token, the
    // External ID and the credentials moto issued are canaries. Read after exit, when
    // every buffered line has been written.
    let log = credvend.process.log();
    let access_key_id = call["access_key_id"].as_str().unwrap_or_default();
    assert!(
        !access_key_id.is_empty() && log.contains(access_key_id),
        "the audit line (with the AccessKeyId) is in the log being checked:\n{log}"
    );
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
}

#[test]
fn wrong_token_fails_the_worker_promptly_without_calling_sts() {
    let venv = Venv::locate();
    let dir = TempDir::new("e2e-wrong-token");
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
    let lookup = outcome
        .stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("credential lookup took ")?
                .strip_suffix(" s")
        })
        .and_then(|secs| secs.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| panic!("the worker did not time its credential lookup\n{context}"));
    assert!(
        lookup < WRONG_TOKEN_MAX_LOOKUP,
        "a refused token must fail promptly (botocore: 3 tries, 1 s apart), not time out: \
         the lookup took {lookup:?}\n{context}"
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
    // Stopped first: on exit credvend writes out every buffered line.
    credvend.process.terminate(SHUTDOWN_TIMEOUT);
    let log = credvend.process.log();
    assert!(
        log.contains("Credential request refused"),
        "the refusals' audit lines are in the log being checked:\n{log}"
    );
    assert!(
        !log.contains(&wrong_token) && !log.contains(&token),
        "credvend's log contains a token"
    );
}

/// `credvend verify --bucket` against moto's S3: the five permission checks run for
/// real with the assumed credentials. moto's STS lets AssumeRole through without an
/// External ID, so the enforcement line must say NOT ENFORCED and the exit status is 1
/// — which is also what a customer with that trust policy would see.
#[test]
fn verify_exercises_the_five_s3_permissions_and_flags_moto_trust() {
    let venv = Venv::locate();
    let dir = TempDir::new("e2e-verify");
    let moto = Moto::start(&venv, &dir);
    let config = write_config(
        &dir,
        &moto,
        &token_sha256_hex(&random_token()),
        free_loopback_addr(),
        free_loopback_addr(),
    );
    let bucket = "credvend-e2e-verify";
    moto.create_bucket(&venv, &dir, bucket);

    let verify = |bucket: &str| {
        verify_command(&dir, &moto, &config, MAPPING, bucket)
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

/// What every moto IAM setup below starts with: a boto3 client `iam` on moto (argv[1])
/// and `trust`, a trust policy for account 123456789012 with External ID `ext-123456`.
const IAM_SETUP_PREAMBLE_PY: &str = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1",
          aws_access_key_id="testing", aws_secret_access_key="testing")
iam = boto3.client("iam", **kw)
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole",
    "Condition": {"StringEquals": {"sts:ExternalId": "ext-123456"}}}]}
"#;

/// What every moto IAM setup below ends with: bucket `bkt`.
const IAM_SETUP_BUCKET_PY: &str = r#"
boto3.client("s3", **kw).create_bucket(Bucket="bkt")
"#;

/// Sets up moto's IAM for the enforced-permissions test: two roles on bucket `bkt`,
/// one with all five S3 permissions, one without `s3:PutObject`.
const IAM_SETUP_PY: &str = r#"
five = ["s3:GetObject", "s3:ListBucket", "s3:PutObject", "s3:DeleteObject", "s3:GetBucketLocation"]
for role, actions in [("full", five), ("noput", [a for a in five if a != "s3:PutObject"])]:
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName=role, PolicyName="sync", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions,
         "Resource": ["arn:aws:s3:::bkt", "arn:aws:s3:::bkt/*"]}]}))
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
    let dir = TempDir::new("e2e-verify-iam");
    let moto = Moto::start(&venv, &dir);
    run_moto_iam_setup(&venv, &dir, IAM_SETUP_PY, &[&moto.url()]);
    let config = write_iam_verify_config(&dir, &moto, &["full", "noput"]);
    let verify = |mapping: &str| {
        moto_reset_auth(&moto, "3");
        let out = verify_command(&dir, &moto, &config, mapping, "bkt")
            .output()
            .expect("run credvend verify");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let s3_lines = s3_check_lines(&text);
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
    assert_no_probe_objects_left(&venv, &dir, &moto);
}

/// Sets up moto's IAM for the `--prefix` test: role `sync` whose permissions policy is
/// argv[2] (what `credvend policy permissions --prefix` printed), and bucket `bkt`.
const PREFIX_SETUP_PY: &str = r#"
iam.create_role(RoleName="sync", AssumeRolePolicyDocument=json.dumps(trust))
iam.put_role_policy(RoleName="sync", PolicyName="sync", PolicyDocument=sys.argv[2])
"#;

/// `credvend verify --bucket --prefix` against moto with IAM enforcement on (see the
/// test above), the role holding exactly what `credvend policy permissions --bucket bkt
/// --prefix sync/` prints. The probe lists and writes under the prefix, so verifying
/// that prefix passes all five S3 checks; another prefix, or none, fails exactly the
/// three object permissions, each fix naming the prefixed resource and the `--prefix`
/// command that grants it. moto ignores the policy's `s3:prefix` condition on
/// ListBucket (it evaluates only StringEquals), so ListBucket passes for any prefix
/// here; that the listing asked for the prefix is read from moto's request log. A
/// prefix `policy permissions` refuses is refused by `verify` too, before any AWS call.
#[test]
fn verify_prefix_probes_under_the_prefix_its_policy_grants() {
    let venv = Venv::locate();
    let dir = TempDir::new("e2e-verify-prefix");
    let moto = Moto::start(&venv, &dir);
    let policy = Command::new(env!("CARGO_BIN_EXE_credvend"))
        .args([
            "policy",
            "permissions",
            "--bucket",
            "bkt",
            "--prefix",
            "sync/",
        ])
        .env_clear()
        .envs(base_env(dir.path()))
        .output()
        .expect("run credvend policy permissions");
    assert!(
        policy.status.success(),
        "{}",
        String::from_utf8_lossy(&policy.stderr)
    );
    let policy = String::from_utf8_lossy(&policy.stdout).to_string();
    run_moto_iam_setup(&venv, &dir, PREFIX_SETUP_PY, &[&moto.url(), &policy]);
    let config = write_iam_verify_config(&dir, &moto, &["sync"]);
    let run = |prefix: Option<&str>| {
        moto_reset_auth(&moto, "3");
        let mut command = verify_command(&dir, &moto, &config, "sync", "bkt");
        if let Some(prefix) = prefix {
            command.args(["--prefix", prefix]);
        }
        command.output().expect("run credvend verify")
    };
    let s3_lines = |out: &std::process::Output| -> (String, Vec<String>) {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines = s3_check_lines(&text);
        assert_eq!(
            lines.len(),
            5,
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (text, lines)
    };
    let line = |lines: &[String], action: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(action))
            .unwrap_or_else(|| panic!("no {action} line in {lines:#?}"))
            .clone()
    };
    const OBJECT_ACTIONS: [&str; 3] = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"];

    // The granted prefix, written as the customer might (trailing slash or not).
    for granted in ["sync/", "sync"] {
        let (text, lines) = s3_lines(&run(Some(granted)));
        assert!(lines.iter().all(|l| l.starts_with("ok")), "{text}");
        assert!(
            line(&lines, "s3:ListBucket").contains("listed s3://bkt/sync/"),
            "{text}"
        );
        assert!(
            line(&lines, "s3:PutObject").contains("wrote s3://bkt/sync/.credvend-verify/"),
            "{text}"
        );
    }
    let requests = moto.process.log();
    assert!(
        requests.lines().any(|l| l.contains("GET /bkt")
            && l.contains("list-type=2")
            && (l.contains("prefix=sync/") || l.contains("prefix=sync%2F"))),
        "no ListObjectsV2 with prefix sync/ in moto's log:\n{}",
        moto.process.describe()
    );

    // A prefix the policy does not grant, and none at all (the bucket's top level).
    for (prefix, resource, command) in [
        (
            Some("other"),
            "arn:aws:s3:::bkt/other/*",
            "credvend policy permissions --bucket bkt --prefix other`",
        ),
        (
            None,
            "arn:aws:s3:::bkt/*",
            "credvend policy permissions --bucket bkt`",
        ),
    ] {
        let out = run(prefix);
        let (text, lines) = s3_lines(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        for action in ["s3:GetBucketLocation", "s3:ListBucket"] {
            assert!(line(&lines, action).starts_with("ok"), "{action}:\n{text}");
        }
        for action in OBJECT_ACTIONS {
            let failed = line(&lines, action);
            assert!(
                failed.starts_with("FAIL") && failed.contains("AccessDenied"),
                "{action} under {prefix:?}:\n{text}"
            );
            assert!(
                failed.contains(&format!("add \"{action}\" on \"{resource}\""))
                    && failed.contains(command),
                "{action}'s fix under {prefix:?}:\n{text}"
            );
        }
    }

    // What `policy permissions --prefix` refuses, `verify --prefix` refuses too.
    let out = run(Some("/sync"));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/sync"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    // The passing runs deleted their probe objects; the failing ones wrote none.
    assert_no_probe_objects_left(&venv, &dir, &moto);
}

// --- the processes ------------------------------------------------------------------

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
        let process = spawn_credvend(dir, "credvend", &config_path, admin, CREDVEND_READY_TIMEOUT);
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

{moto_sections}
[mappings.{MAPPING}]
role_arn = "{ROLE_ARN}"
external_id = "{EXTERNAL_ID}"
token_sha256 = ["{token_sha256}"]
"#,
        moto_sections = moto.credvend_config_sections(),
    );
    let config_path = dir.path().join("credvend.toml");
    write_private_file(&config_path, &config);
    config_path
}

/// A finished worker run ([`run_worker`] fails the test if the worker hangs).
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
    let mut command = Command::new(venv.python());
    command
        .args(["-c", WORKER_PY, &moto.url(), REGION])
        .env_clear()
        .envs(base_env(dir.path()))
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", credentials_uri)
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", token);
    let outcome = run_bounded(
        command,
        dir.path(),
        &format!("worker-{run}"),
        WORKER_TIMEOUT,
    );
    let Some(status) = outcome.status else {
        panic!(
            "boto3 worker still running after {WORKER_TIMEOUT:?}; stderr so far: {}",
            outcome.stderr
        );
    };
    WorkerOutcome {
        status,
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        elapsed: outcome.elapsed,
    }
}

// --- helpers ------------------------------------------------------------------------

/// `credvend verify <mapping> --config <config> --bucket <bucket>` against moto's S3,
/// with static test base credentials and nothing else from the environment. The
/// caller may add arguments (`--prefix`) before running it.
fn verify_command(
    dir: &TempDir,
    moto: &Moto,
    config: &Path,
    mapping: &str,
    bucket: &str,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_credvend"));
    command
        .args(["verify", mapping, "--config"])
        .arg(config)
        .args(["--bucket", bucket, "--s3-endpoint-url", &moto.url()])
        .env_clear()
        .envs(base_env(dir.path()))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    command
}

/// The `s3:*` check lines of `verify`'s output, in order.
fn s3_check_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|c| c.starts_with("s3:"))
        })
        .map(str::to_string)
        .collect()
}

/// Runs `roles_py` (roles and policies) between [`IAM_SETUP_PREAMBLE_PY`] and
/// [`IAM_SETUP_BUCKET_PY`] in the venv; fails the test with the script's stderr if it
/// fails.
fn run_moto_iam_setup(venv: &Venv, dir: &TempDir, roles_py: &str, args: &[&str]) {
    let script = format!("{IAM_SETUP_PREAMBLE_PY}{roles_py}{IAM_SETUP_BUCKET_PY}");
    let setup = venv.run_python(dir.path(), &script, args);
    assert!(
        setup.status.success(),
        "moto IAM setup: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
}

/// Writes `verify.toml` for the moto IAM tests: STS on moto, External ID enforcement
/// `warn`, and a mapping per role of [`IAM_SETUP_PREAMBLE_PY`]'s account, named like
/// the role (External ID `ext-123456`, a fresh random token each). Returns its path.
fn write_iam_verify_config(dir: &TempDir, moto: &Moto, roles: &[&str]) -> PathBuf {
    let mut config = format!(
        r#"
[sts]
endpoint_urls = {{ us-east-1 = "{url}" }}

[verify]
external_id_enforcement = "warn"
"#,
        url = moto.url(),
    );
    for role in roles {
        config.push_str(&format!(
            r#"
[mappings.{role}]
role_arn = "arn:aws:iam::123456789012:role/{role}"
external_id = "ext-123456"
token_sha256 = ["{hash}"]
"#,
            hash = token_sha256_hex(&random_token()),
        ));
    }
    let path = dir.path().join("verify.toml");
    write_private_file(&path, &config);
    path
}

/// Lets moto serve `count` more requests before it enforces IAM (`"inf"`: never).
fn moto_reset_auth(moto: &Moto, count: &str) {
    let reset = http_post_text(moto.addr, "/moto-api/reset-auth", count)
        .unwrap_or_else(|e| panic!("reset-auth: {e}"));
    assert_eq!(reset.status, 200, "reset-auth: {}", reset.body);
}

/// Bucket `bkt` holds no objects: `verify` deleted the probe objects it wrote (listed
/// with IAM enforcement off).
fn assert_no_probe_objects_left(venv: &Venv, dir: &TempDir, moto: &Moto) {
    moto_reset_auth(moto, "inf");
    let listing = venv.run_python(
        dir.path(),
        "import boto3,sys; print(boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').list_objects_v2(Bucket='bkt').get('KeyCount'))",
        &[&moto.url()],
    );
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout).trim(),
        "0",
        "probe objects left: {}",
        String::from_utf8_lossy(&listing.stderr)
    );
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
