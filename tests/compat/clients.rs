//! How each client is installed, located, run and versioned.
//!
//! Every client process starts from an empty environment plus [`base_env`] (no keys,
//! no profile files, no instance metadata) and the case's container-credentials
//! variables; the STS/S3 endpoint (moto) and the region come as arguments or as the
//! client's own region variables. The Rust SDK runs in-process with the same variables
//! injected through `aws_config::ConfigLoader::env` (feature `test-util`), so the test
//! never touches its own process environment.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_sts::config::Region;
use aws_sdk_sts::error::DisplayErrorContext;
use aws_types::os_shim_internal::{Env, Fs};

use crate::support::e2e::{Outcome, Venv, base_env, read_lossy, repo_root, run_bounded};
use crate::{BUCKET, CALLS, Client, PROCESS_TIMEOUT, REGION};
const JS_DIR: &str = "tests/compat/js";
/// GOPATH root of the Go worker (`src/credvendcompat`).
const GO_PATH: &str = "tests/compat/go";
const GO_PACKAGE: &str = "credvendcompat";
/// Debian's GOPATH tree with the AWS SDK for Go v2 source (scripts/setup-go.sh).
const DEBIAN_GOCODE: &str = "/usr/share/gocode";
/// Go's build cache, in an ignored folder so reruns skip the ~20 s cold build.
const GO_CACHE: &str = ".tools/go-build-cache";

/// The installed clients.
pub struct Tools {
    pub venv: Venv,
    js_dir: PathBuf,
    /// The built Go worker, or why it could not be built (the Go cases then fail).
    go_client: Result<PathBuf, String>,
}

impl Tools {
    /// Finds every client; panics with instructions when one is missing, so a machine
    /// without a client fails the suite instead of skipping that client.
    pub fn locate() -> Tools {
        let venv = Venv::locate();
        let js_dir = repo_root().join(JS_DIR);
        for package in ["@aws-sdk/client-sts", "@aws-sdk/credential-providers"] {
            let manifest = js_dir
                .join("node_modules")
                .join(package)
                .join("package.json");
            assert!(
                manifest.is_file(),
                "the JS SDK client {package} is not installed ({} missing): run \
                 scripts/setup-node.sh (scripts/test.sh does it for you)",
                manifest.display()
            );
        }
        let node = Command::new("node").arg("--version").output();
        assert!(
            node.as_ref().is_ok_and(|o| o.status.success()),
            "node is required for the JS SDK cases: {node:?}; run scripts/setup-node.sh"
        );
        let go = Command::new("go").arg("version").output();
        assert!(
            go.as_ref().is_ok_and(|o| o.status.success()),
            "go is required for the Go SDK cases: {go:?}; run scripts/setup-go.sh \
             (scripts/test.sh does it for you)"
        );
        assert!(
            Path::new(DEBIAN_GOCODE)
                .join("src/github.com/aws/aws-sdk-go-v2/config")
                .is_dir(),
            "the AWS SDK for Go v2 source is missing from {DEBIAN_GOCODE}: run \
             scripts/setup-go.sh"
        );
        Tools {
            venv,
            js_dir,
            go_client: Err("not built yet".to_owned()),
        }
    }

    /// Builds the Go worker offline in GOPATH mode against Debian's SDK source.
    pub fn build_go_client(&self, dir: &Path) -> Result<PathBuf, String> {
        let root = repo_root();
        let binary = dir.join("credvendcompat-go");
        let mut command = Command::new("go");
        command
            .args(["build", "-o"])
            .arg(&binary)
            .arg(GO_PACKAGE)
            .current_dir(root.join(GO_PATH).join("src").join(GO_PACKAGE))
            .env_clear()
            .envs(base_env(dir))
            .env("GO111MODULE", "off")
            .env(
                "GOPATH",
                format!("{}:{DEBIAN_GOCODE}", root.join(GO_PATH).display()),
            )
            .env("GOCACHE", root.join(GO_CACHE))
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0");
        let outcome = run_bounded(command, dir, "go-build", Duration::from_secs(300));
        if outcome.success() && binary.is_file() {
            Ok(binary)
        } else {
            Err(format!(
                "building the Go client failed: {}",
                outcome.describe()
            ))
        }
    }

    pub fn with_go_client(self, go_client: Result<PathBuf, String>) -> Tools {
        Tools { go_client, ..self }
    }

    /// Runs `client` once with the container-credentials variables `env`. `full`: the
    /// whole workload (for the AWS CLI: get-caller-identity, a recursive upload of
    /// [`CALLS`] files and a download, three processes); otherwise one identity process.
    pub fn run(
        &self,
        client: Client,
        env: &[(&'static str, String)],
        dir: &Path,
        label: &str,
        moto: &crate::Moto,
        full: bool,
    ) -> ClientRun {
        let endpoint = moto.url();
        let calls = CALLS.to_string();
        let profile_env;
        let env = match client {
            Client::Boto3Process | Client::AwsCliProcess => {
                profile_env = credential_process_profile(env, dir, label);
                profile_env.as_slice()
            }
            _ => env,
        };
        let command = |program: &Path| {
            let mut command = Command::new(program);
            command
                .env_clear()
                .envs(base_env(dir))
                .env("AWS_REGION", REGION)
                .env("AWS_DEFAULT_REGION", REGION)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            command
        };
        let process = |label: String, command: Command, parse: Parse| {
            ProcessRun::from_outcome(
                label.clone(),
                run_bounded(command, dir, &label, PROCESS_TIMEOUT),
                parse,
            )
        };
        let runs = match client {
            Client::Boto3 | Client::Boto3Process => {
                let mut c = command(&self.venv.python());
                c.arg(repo_root().join("tests/compat/python/boto3_worker.py"))
                    .args([&endpoint, REGION, &calls, BUCKET])
                    .arg(format!("boto3/{}/{label}", dir_name(dir)));
                vec![process(format!("{label}-boto3"), c, Parse::WorkerJson)]
            }
            Client::AwsCli | Client::AwsCliProcess => {
                self.run_cli(dir, label, &endpoint, full, command, process)
            }
            Client::JsDefaultChain | Client::JsFromHttp | Client::JsFromContainerMetadata => {
                let provider = match client {
                    Client::JsDefaultChain => "default",
                    Client::JsFromHttp => "fromHttp",
                    _ => "fromContainerMetadata",
                };
                let mut c = command(Path::new("node"));
                c.arg(self.js_dir.join("worker.mjs"))
                    .args([provider, &endpoint, REGION, &calls]);
                vec![process(format!("{label}-node"), c, Parse::WorkerJson)]
            }
            Client::Go => match &self.go_client {
                Ok(binary) => {
                    let mut c = command(binary);
                    c.args([&endpoint, &calls]);
                    vec![process(format!("{label}-go"), c, Parse::WorkerJson)]
                }
                Err(error) => vec![ProcessRun::not_run(label, error)],
            },
            Client::Rust => vec![run_rust(label, env, &endpoint)],
        };
        ClientRun { processes: runs }
    }

    fn run_cli(
        &self,
        dir: &Path,
        label: &str,
        endpoint: &str,
        full: bool,
        command: impl Fn(&Path) -> Command,
        process: impl Fn(String, Command, Parse) -> ProcessRun,
    ) -> Vec<ProcessRun> {
        let aws = self.venv.bin("aws");
        let mut identity = command(&aws);
        identity.args([
            "sts",
            "get-caller-identity",
            "--output",
            "json",
            "--endpoint-url",
            endpoint,
        ]);
        let mut runs = vec![process(
            format!("{label}-aws-sts"),
            identity,
            Parse::CallerIdentityJson,
        )];
        if !full {
            return runs;
        }
        // CALLS PutObjects in one process: one credential request, or a refetch loop.
        let upload_dir = dir.join(format!("{label}-upload"));
        fs::create_dir_all(&upload_dir).expect("upload dir");
        for i in 0..CALLS {
            fs::write(
                upload_dir.join(format!("object-{i:02}.txt")),
                format!("credvend compat {label} {i}"),
            )
            .expect("write upload file");
        }
        let prefix = format!("s3://{BUCKET}/awscli/{}/{label}", dir_name(dir));
        let mut upload = command(&aws);
        upload
            .args(["s3", "cp", "--recursive", "--only-show-errors"])
            .arg(&upload_dir)
            .arg(format!("{prefix}/"))
            .args(["--endpoint-url", endpoint]);
        runs.push(process(
            format!("{label}-aws-s3-up"),
            upload,
            Parse::Nothing,
        ));
        let downloaded = dir.join(format!("{label}-downloaded.txt"));
        let mut download = command(&aws);
        download
            .args(["s3", "cp", "--only-show-errors"])
            .arg(format!("{prefix}/object-07.txt"))
            .arg(&downloaded)
            .args(["--endpoint-url", endpoint]);
        let mut run = process(format!("{label}-aws-s3-down"), download, Parse::Nothing);
        if run.succeeded {
            run.s3_round_trip =
                Some(read_lossy(&downloaded) == format!("credvend compat {label} 7"));
        }
        runs.push(run);
        runs
    }

    /// Client versions for the table, from the installed clients themselves.
    pub fn versions(&self) -> BTreeMap<Client, String> {
        let capture = |mut command: Command| {
            command
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned())
        };
        let mut python = Command::new(self.venv.python());
        python.args([
            "-c",
            "import boto3, botocore; print(f'boto3 {boto3.__version__}, botocore {botocore.__version__}')",
        ]);
        let mut aws = Command::new(self.venv.bin("aws"));
        aws.arg("--version").env_clear();
        // `aws-cli/1.46.3 Python/3.11.7 Linux/… botocore/1.43.62` (stdout or stderr).
        let aws_version = aws
            .output()
            .ok()
            .map(|o| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                let field = |prefix: &str| {
                    text.split_whitespace()
                        .find_map(|w| w.strip_prefix(prefix))
                        .unwrap_or("unknown")
                        .to_owned()
                };
                format!(
                    "awscli {} (botocore {})",
                    field("aws-cli/"),
                    field("botocore/")
                )
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let js = |package: &str| {
            let manifest = self
                .js_dir
                .join("node_modules")
                .join(package)
                .join("package.json");
            let version = serde_json::from_str::<serde_json::Value>(&read_lossy(&manifest))
                .ok()
                .and_then(|v| v["version"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned());
            format!("{package} {version}")
        };
        let mut node = Command::new("node");
        node.args(["-p", "process.versions.node.split('.')[0]"]);
        let node_major = capture(node);
        let mut dpkg = Command::new("dpkg-query");
        dpkg.args(["-W", "-f=${Version}", "golang-github-aws-aws-sdk-go-v2-dev"]);
        let mut go = Command::new("go");
        go.args(["env", "GOVERSION"]);
        let lock = read_lossy(&repo_root().join("Cargo.lock"));

        let mut versions = BTreeMap::new();
        let boto3 = capture(python);
        versions.insert(Client::Boto3Process, boto3.clone());
        versions.insert(Client::Boto3, boto3);
        versions.insert(Client::AwsCliProcess, aws_version.clone());
        versions.insert(Client::AwsCli, aws_version);
        versions.insert(
            Client::JsDefaultChain,
            format!("{}, Node {node_major}", js("@aws-sdk/client-sts")),
        );
        let providers = format!("{}, Node {node_major}", js("@aws-sdk/credential-providers"));
        versions.insert(Client::JsFromHttp, providers.clone());
        versions.insert(Client::JsFromContainerMetadata, providers);
        versions.insert(
            Client::Rust,
            format!(
                "aws-config {}, aws-sdk-sts {}",
                cargo_lock_version(&lock, "aws-config"),
                cargo_lock_version(&lock, "aws-sdk-sts")
            ),
        );
        versions.insert(
            Client::Go,
            format!(
                "aws-sdk-go-v2 (Debian {}), {}",
                capture(dpkg),
                capture(go).replace("go", "Go ")
            ),
        );
        versions
    }
}

/// The variable `--token-env` names in the `credential_process` cases (not a
/// `CREDVEND_*` name: credvend reads those as config overrides).
const PROCESS_TOKEN_VAR: &str = "WORKER_TOKEN";

/// Turns a case's container-credentials variables into what a `credential_process`
/// client gets instead: a profile in `<dir>/<label>.aws-config` whose
/// `credential_process` runs the built `credvend credential-process` with the same URL
/// and token (`--token-env` for `AWS_CONTAINER_AUTHORIZATION_TOKEN`, `--token-file` for
/// `..._TOKEN_FILE`), selected with `AWS_CONFIG_FILE` and `AWS_PROFILE`; no
/// `AWS_CONTAINER_*` variable is passed on.
fn credential_process_profile(
    env: &[(&'static str, String)],
    dir: &Path,
    label: &str,
) -> Vec<(&'static str, String)> {
    let value = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
    let url = value("AWS_CONTAINER_CREDENTIALS_FULL_URI").expect("a case has a FULL_URI");
    let mut out = Vec::new();
    let token_args = if let Some(token) = value("AWS_CONTAINER_AUTHORIZATION_TOKEN") {
        out.push((PROCESS_TOKEN_VAR, token));
        format!("--token-env {PROCESS_TOKEN_VAR}")
    } else {
        let file = value("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").expect("a token or a file");
        format!("--token-file {file}")
    };
    let config = dir.join(format!("{label}.aws-config"));
    fs::write(
        &config,
        format!(
            "[profile credvend]\ncredential_process = {} credential-process --url {url} {token_args}\n",
            env!("CARGO_BIN_EXE_credvend")
        ),
    )
    .expect("write the AWS config file");
    out.push(("AWS_CONFIG_FILE", config.display().to_string()));
    out.push(("AWS_PROFILE", "credvend".to_owned()));
    out
}

/// The version of `package` in Cargo.lock.
fn cargo_lock_version(lock: &str, package: &str) -> String {
    let needle = format!("name = \"{package}\"\nversion = \"");
    lock.split_once(&needle)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(version, _)| version.to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The temp dir's last component: keeps S3 keys unique per case.
fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// How to read a process's stdout.
#[derive(Clone, Copy)]
enum Parse {
    /// The workers' JSON line: `{"arns": [...], "s3_round_trip": bool?, ...}`.
    WorkerJson,
    /// `aws sts get-caller-identity --output json`.
    CallerIdentityJson,
    Nothing,
}

/// One client process (or the in-process Rust run).
#[derive(Debug)]
pub struct ProcessRun {
    label: String,
    pub succeeded: bool,
    /// Killed by a signal, timed out, panicked, or failed outside the SDK's own error
    /// path (Python traceback, Go panic): a crash, never acceptable.
    crash: Option<String>,
    exit: String,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    /// Identities the process acted as (GetCallerIdentity ARNs), if it reports them.
    arns: Option<Vec<String>>,
    pub s3_round_trip: Option<bool>,
}

impl ProcessRun {
    fn from_outcome(label: String, outcome: Outcome, parse: Parse) -> ProcessRun {
        let crash = match outcome.status {
            None => Some(format!("timed out after {PROCESS_TIMEOUT:?} (killed)")),
            Some(status) if status.code().is_none() => Some(format!("killed by {status}")),
            Some(_) if outcome.stderr.contains("Traceback (most recent call last)") => {
                Some("Python traceback (an error outside the SDK's error path)".to_owned())
            }
            Some(_) if outcome.stderr.contains("panic:") => Some("Go panic".to_owned()),
            Some(_) => None,
        };
        let (arns, s3_round_trip) = if outcome.success() {
            parse_stdout(parse, &outcome.stdout)
        } else {
            (None, None)
        };
        ProcessRun {
            label,
            succeeded: outcome.success(),
            crash,
            exit: outcome
                .status
                .map_or_else(|| "timed out".to_owned(), |s| s.to_string()),
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            elapsed: outcome.elapsed,
            arns,
            s3_round_trip,
        }
    }

    fn not_run(label: &str, why: &str) -> ProcessRun {
        ProcessRun {
            label: label.to_owned(),
            succeeded: false,
            crash: Some(format!("not run: {why}")),
            exit: "not run".to_owned(),
            stdout: String::new(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
            arns: None,
            s3_round_trip: None,
        }
    }
}

fn parse_stdout(parse: Parse, stdout: &str) -> (Option<Vec<String>>, Option<bool>) {
    let json = || serde_json::from_str::<serde_json::Value>(stdout.trim()).ok();
    let strings = |value: &serde_json::Value| {
        value.as_array().map(|items| {
            items
                .iter()
                .map(|i| i.as_str().unwrap_or("?").to_owned())
                .collect()
        })
    };
    match parse {
        Parse::WorkerJson => match json() {
            Some(value) => (strings(&value["arns"]), value["s3_round_trip"].as_bool()),
            None => (Some(vec![format!("<no JSON on stdout: {stdout:?}>")]), None),
        },
        Parse::CallerIdentityJson => match json() {
            Some(value) => (
                Some(vec![value["Arn"].as_str().unwrap_or("?").to_owned()]),
                None,
            ),
            None => (Some(vec![format!("<no JSON on stdout: {stdout:?}>")]), None),
        },
        Parse::Nothing => (None, None),
    }
}

/// The processes of one case, in order.
pub struct ClientRun {
    processes: Vec<ProcessRun>,
}

impl ClientRun {
    pub fn sequence(runs: Vec<ClientRun>) -> ClientRun {
        ClientRun {
            processes: runs.into_iter().flat_map(|r| r.processes).collect(),
        }
    }

    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    pub fn all_succeeded(&self) -> Result<(), String> {
        for p in &self.processes {
            if !p.succeeded {
                return Err(format!("{} failed: {}", p.label, p.exit));
            }
            if p.s3_round_trip == Some(false) {
                return Err(format!("{}: S3 object read back differs", p.label));
            }
        }
        Ok(())
    }

    /// With one ARN: every process that reports an identity acted as it (and at least
    /// one does). With several: process `i` acted as `expected[i]`.
    pub fn acted_as(&self, expected: &[String]) -> Result<(), String> {
        let reported: Vec<(&str, &Vec<String>)> = self
            .processes
            .iter()
            .filter_map(|p| p.arns.as_ref().map(|a| (p.label.as_str(), a)))
            .collect();
        let ok = match expected {
            [one] => {
                !reported.is_empty()
                    && reported
                        .iter()
                        .all(|(_, arns)| arns.as_slice() == std::slice::from_ref(one))
            }
            many => {
                reported.len() == many.len()
                    && reported
                        .iter()
                        .zip(many)
                        .all(|((_, arns), want)| arns.as_slice() == std::slice::from_ref(want))
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "expected the identity {expected:?} (in process order), got {reported:?}"
            ))
        }
    }

    /// Every process failed through the client's own error path, within `bound`, with
    /// `error_contains` (unless empty) in its error output.
    pub fn failed_promptly(&self, bound: Duration, error_contains: &str) -> Result<(), String> {
        for p in &self.processes {
            if p.succeeded {
                return Err(format!("{} succeeded but must fail", p.label));
            }
            if let Some(crash) = &p.crash {
                return Err(format!("{} crashed: {crash}", p.label));
            }
            if p.elapsed > bound {
                return Err(format!(
                    "{} took {:?} to fail (bound {bound:?}): a refused credential request \
                     must fail the client promptly",
                    p.label, p.elapsed
                ));
            }
            if p.stderr.trim().is_empty() {
                return Err(format!("{} failed without an error message", p.label));
            }
            if !p.stderr.contains(error_contains) {
                return Err(format!(
                    "{}'s error should contain {error_contains:?}",
                    p.label
                ));
            }
        }
        Ok(())
    }

    /// One line per run: each process's exit, time and first error line.
    pub fn summary(&self) -> String {
        self.processes
            .iter()
            .map(|p| {
                let error = p.stderr.lines().rev().find(|l| !l.trim().is_empty());
                format!(
                    "[{} {} {:.1?} {}]",
                    p.label,
                    p.exit,
                    p.elapsed,
                    error.unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Every process's exit, timing and output, for failure messages.
    pub fn describe(&self) -> String {
        self.processes
            .iter()
            .map(|p| {
                format!(
                    "--- {}: {} after {:.1?}{}\nstdout: {}\nstderr: {}",
                    p.label,
                    p.exit,
                    p.elapsed,
                    p.crash
                        .as_deref()
                        .map(|c| format!(" (crash: {c})"))
                        .unwrap_or_default(),
                    p.stdout.trim_end(),
                    p.stderr.trim_end()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The Rust SDK: a fresh `SdkConfig` (its own identity cache, like a new process) whose
/// environment is exactly the case's variables; its default chain reaches the ECS
/// provider (`aws_config::ecs::EcsCredentialsProvider`), configured from that
/// environment. Then [`CALLS`] GetCallerIdentity calls on one client.
fn run_rust(label: &str, env: &[(&'static str, String)], endpoint: &str) -> ProcessRun {
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            tokio::time::timeout(PROCESS_TIMEOUT, rust_worker(env, endpoint)).await
        })
    }));
    let elapsed = started.elapsed();
    let (succeeded, crash, exit, stdout, stderr, arns) = match result {
        Ok(Ok(Ok(arns))) => (
            true,
            None,
            "ok".to_owned(),
            format!("{arns:?}"),
            String::new(),
            Some(arns),
        ),
        Ok(Ok(Err(error))) => (false, None, "error".to_owned(), String::new(), error, None),
        Ok(Err(_)) => (
            false,
            Some(format!("timed out after {PROCESS_TIMEOUT:?}")),
            "timed out".to_owned(),
            String::new(),
            String::new(),
            None,
        ),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            (
                false,
                Some(format!("panicked: {message}")),
                "panicked".to_owned(),
                String::new(),
                message,
                None,
            )
        }
    };
    ProcessRun {
        label: format!("{label}-rust"),
        succeeded,
        crash,
        exit,
        stdout,
        stderr,
        elapsed,
        arns,
        s3_round_trip: None,
    }
}

async fn rust_worker(
    case_env: &[(&'static str, String)],
    endpoint: &str,
) -> Result<Vec<String>, String> {
    let home = std::env::temp_dir();
    let mut vars: Vec<(&str, &str)> = vec![
        ("HOME", home.to_str().unwrap_or("/nonexistent")),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("AWS_REGION", REGION),
    ];
    vars.extend(case_env.iter().map(|(k, v)| (*k, v.as_str())));
    let config = aws_config::defaults(BehaviorVersion::latest())
        .env(Env::from_slice(&vars))
        .fs(Fs::real())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .load()
        .await;
    let sts = aws_sdk_sts::Client::new(&config);
    let mut arns = BTreeSet::new();
    for _ in 0..CALLS {
        let identity = sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        arns.insert(identity.arn().unwrap_or("?").to_owned());
    }
    Ok(arns.into_iter().collect())
}
