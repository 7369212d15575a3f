//! Conformance suite: the real AWS clients against the real `credvend` binary.
//!
//! credvend's promise is that a worker's SDK needs no code change
//! (docs/design.md, Wire contract). This test proves it with the clients themselves, each
//! in its own process (the Rust SDK in its own runtime with its own injected
//! environment):
//!
//! | client | how it runs | source of the pin |
//! |---|---|---|
//! | boto3/botocore | `tests/compat/python/boto3_worker.py` in `<repo>/.venv` | `scripts/python-requirements.txt` |
//! | AWS CLI v1 | `aws` from `<repo>/.venv` | `scripts/python-requirements.txt` |
//! | JS SDK v3, default chain, `fromHttp`, `fromContainerMetadata` | `node tests/compat/js/worker.mjs` | `tests/compat/js/package-lock.json` (`scripts/setup-node.sh`) |
//! | Rust aws-config | in-process: `aws_config::defaults(..).env(..)`, whose default chain reaches `EcsCredentialsProvider` | `Cargo.lock` |
//! | Go SDK v2 | `tests/compat/go/src/credvendcompat`, built in GOPATH mode from Debian's packages | `scripts/setup-go.sh` |
//! | boto3, AWS CLI through `credential_process` | as above, with a profile whose `credential_process` runs `credvend credential-process` (the built binary) and no `AWS_CONTAINER_*` variable | as above |
//!
//! One moto server (STS and S3) on 127.0.0.1 stands in for AWS; one `credvend serve`
//! listens on `127.0.0.1:P` and `[::1]:P`. Every case gets **its own mapping** (its own
//! token, role and session name), so credvend's audit log (`credvend::audit`, one line
//! per credential response) tells exactly how many credential requests that case made,
//! and the session name in the caller identity tells which mapping served it.
//!
//! Cases, for every client:
//!
//! - token from `AWS_CONTAINER_AUTHORIZATION_TOKEN` and from `..._TOKEN_FILE` (no
//!   trailing newline), each with the `FULL_URI` host `127.0.0.1`, `localhost` and
//!   `[::1]`: the client acts as the mapping's assumed role, and [`CALLS`] API calls in
//!   one process cost **exactly one** credential request (no refetch loop);
//! - a wrong token: the client fails with its own error, promptly, without crashing;
//!   credvend answered only 403s;
//! - token rotation: `FULL_URI` without a mapping (`/v1/credentials`, credvend picks the
//!   mapping from the token); process 1 runs with token A in the file, the file is
//!   rewritten with token B, process 2 must act as B's mapping. Two mappings make the
//!   token each process sent observable without logging tokens.
//!
//! Where a client knowingly deviates (documented SDK behaviour, not a credvend bug), the
//! case asserts that exact behaviour instead ([`Expect::ClientRefuses`]), so a client
//! upgrade that changes it fails here and `docs/compatibility.md` gets updated.
//!
//! The run renders the compatibility table and compares it with the block between
//! `<!-- compat-table:begin -->` and `<!-- compat-table:end -->` in
//! `docs/compatibility.md`: a stale committed table fails the test with a diff (run with
//! `UPDATE_COMPAT_TABLE=1` to rewrite that block, nothing else). It fails listing every case
//! that did not meet its expectation too. A client that is not installed fails the
//! test with instructions; nothing is ever skipped.

#[path = "../support/mod.rs"]
mod support;

mod clients;
mod table;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clients::{ClientRun, Tools};
use support::e2e::{
    ChildGuard, Moto, TempDir, free_dual_stack_port, free_loopback_addr, random_token,
    spawn_credvend, token_sha256_hex, write_private_file,
};

/// API calls each successful process makes on one client; all must share one fetch.
pub const CALLS: usize = 20;
pub use support::e2e::REGION;
pub const ACCOUNT: &str = "111122223333";
pub const BUCKET: &str = "credvend-compat";
/// Bound for one client process; a hang must fail the case, not stall the suite.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(90);
/// A refused token must fail the client within this (botocore: 3 tries 1 s apart; JS
/// default chain: fromHttp's 3 tries 1 s apart, then fromContainerMetadata).
const PROMPT_FAILURE: Duration = Duration::from_secs(15);
/// Upper bound for credential requests from one refused process: clients retry a
/// little, never in a loop.
const MAX_REFUSED_REQUESTS: usize = 8;
/// Client processes running at once. Two cores: client start-up (Python and Node
/// imports) is CPU-bound, the rest waits on the network.
const PARALLEL_CASES: usize = 4;
const CREDVEND_READY_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// The clients under test, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Client {
    Boto3,
    AwsCli,
    JsDefaultChain,
    JsFromHttp,
    JsFromContainerMetadata,
    Rust,
    Go,
    /// boto3 through a profile's `credential_process = credvend credential-process …`.
    Boto3Process,
    /// The AWS CLI through the same profile.
    AwsCliProcess,
}

impl Client {
    const ALL: [Client; 9] = [
        Client::Boto3,
        Client::AwsCli,
        Client::JsDefaultChain,
        Client::JsFromHttp,
        Client::JsFromContainerMetadata,
        Client::Rust,
        Client::Go,
        Client::Boto3Process,
        Client::AwsCliProcess,
    ];

    /// Short name used in mapping names and file names.
    fn slug(self) -> &'static str {
        match self {
            Client::Boto3 => "boto3",
            Client::AwsCli => "awscli",
            Client::JsDefaultChain => "js-default",
            Client::JsFromHttp => "js-fromhttp",
            Client::JsFromContainerMetadata => "js-fromcm",
            Client::Rust => "rust",
            Client::Go => "go",
            Client::Boto3Process => "boto3-process",
            Client::AwsCliProcess => "awscli-process",
        }
    }

    /// Whether this client version reads `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
    fn reads_token_file(self) -> bool {
        !matches!(self, Client::JsFromContainerMetadata | Client::Go)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TokenSource {
    Env,
    File,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    V4,
    Localhost,
    V6,
}

impl Host {
    const ALL: [Host; 3] = [Host::V4, Host::Localhost, Host::V6];

    pub fn uri_host(self) -> &'static str {
        match self {
            Host::V4 => "127.0.0.1",
            Host::Localhost => "localhost",
            Host::V6 => "[::1]",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Host::V4 => "v4",
            Host::Localhost => "localhost",
            Host::V6 => "v6",
        }
    }
}

/// What a case checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// Valid token from `source`, `FULL_URI` host `host`, [`CALLS`] calls per process.
    Works(TokenSource, Host),
    /// A token credvend does not know.
    WrongToken,
    /// Token file rewritten between two processes.
    Rotation,
}

/// What the client is expected to do in a case.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Every process succeeds as the mapping's role with one credential request each.
    Success,
    /// The client fails by itself, as documented for that SDK: its error contains
    /// `error_contains`, and credvend saw `statuses` (one entry per request; empty when
    /// the client refuses before sending anything).
    ClientRefuses {
        quirk: Quirk,
        error_contains: &'static str,
        statuses: RequestStatuses,
    },
}

/// The credential requests credvend should log for a refused case.
#[derive(Clone, Copy, Debug)]
pub enum RequestStatuses {
    None,
    /// At least one request, all answered with this status.
    All(u16),
}

/// Known, documented client behaviours that differ from docs/design.md, Wire contract
/// (footnotes in the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quirk {
    /// `fromContainerMetadata` accepts only the hosts `localhost` and `127.0.0.1`.
    JsContainerMetadataHosts,
    /// `fromContainerMetadata` reads only `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    JsContainerMetadataNoTokenFile,
    /// aws-sdk-go-v2 before config v1.25 reads only `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    GoNoTokenFile,
}

impl Quirk {
    fn footnote(self) -> &'static str {
        match self {
            Quirk::JsContainerMetadataHosts => {
                "`fromContainerMetadata` (`@smithy/credential-provider-imds`) accepts only \
                 the hosts `localhost` and `127.0.0.1` in `FULL_URI` and refuses `[::1]` \
                 before sending anything (\"is not a valid container metadata service \
                 hostname\"). The default chain and `fromHttp` accept `[::1]`."
            }
            Quirk::JsContainerMetadataNoTokenFile => {
                "`fromContainerMetadata` ignores `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` \
                 (documented): it sends no `Authorization` header and credvend answers \
                 401. Give it `AWS_CONTAINER_AUTHORIZATION_TOKEN`, or use the default \
                 chain or `fromHttp`, which read the file."
            }
            Quirk::GoNoTokenFile => {
                "The Go SDK packaged by Debian 12 (aws-sdk-go-v2 1.17.1, config 1.17.10) \
                 predates `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` support (added in \
                 config v1.25): it sends no `Authorization` header and credvend answers \
                 401. Use `AWS_CONTAINER_AUTHORIZATION_TOKEN` with it; current Go SDK \
                 releases read the file."
            }
        }
    }
}

/// What each client is expected to do for a `Works` check.
fn expectation(client: Client, source: TokenSource, host: Host) -> Expect {
    if client == Client::JsFromContainerMetadata && host == Host::V6 {
        return Expect::ClientRefuses {
            quirk: Quirk::JsContainerMetadataHosts,
            error_contains: "is not a valid container metadata service hostname",
            statuses: RequestStatuses::None,
        };
    }
    match (client, source) {
        (Client::JsFromContainerMetadata, TokenSource::File) => Expect::ClientRefuses {
            quirk: Quirk::JsContainerMetadataNoTokenFile,
            error_contains: "Error response received from instance metadata service",
            statuses: RequestStatuses::All(401),
        },
        (Client::Go, TokenSource::File) => Expect::ClientRefuses {
            quirk: Quirk::GoNoTokenFile,
            // credvend's 401 message, which this SDK passes through.
            error_contains: "Unauthorized: missing Authorization header",
            statuses: RequestStatuses::All(401),
        },
        _ => Expect::Success,
    }
}

/// What each client's own error says when credvend refuses its token (403
/// `AccessDenied`): proof that the client reached credvend and reported the refusal
/// its own way.
fn wrong_token_error(client: Client) -> &'static str {
    match client {
        // botocore's CredentialRetrievalError quotes the status and credvend's body.
        Client::Boto3 | Client::AwsCli => "Received non 200 response 403 from container metadata",
        // The chain's summary error; the 403 itself is only in its debug log.
        Client::JsDefaultChain => "Could not load credentials from any providers",
        Client::JsFromHttp => "Server responded with status: 403",
        Client::JsFromContainerMetadata => "Error response received from instance metadata service",
        Client::Rust => "Non-success status from HTTP credential provider: StatusCode(403)",
        // Reads credvend's lower-case code and message.
        Client::Go => "AccessDenied: token is not valid for mapping",
        // botocore's CredentialRetrievalError quotes credential-process's stderr line.
        Client::Boto3Process | Client::AwsCliProcess => {
            "custom-process: credvend: credvend refused: token is not valid for mapping"
        }
    }
}

/// One case: a client, a check and the mappings it uses.
pub struct Case {
    pub client: Client,
    pub check: Check,
    /// The mapping(s) whose tokens this case uses; two for [`Check::Rotation`].
    pub mappings: Vec<MappingSpec>,
}

/// A mapping of the suite's config.
#[derive(Clone)]
pub struct MappingSpec {
    pub name: String,
    pub role_name: String,
    pub token: String,
}

impl MappingSpec {
    fn new(client: Client, label: &str) -> MappingSpec {
        MappingSpec {
            name: format!("{}-{label}", client.slug()),
            role_name: format!("compat-{}", client.slug()),
            token: random_token(),
        }
    }

    fn role_arn(&self) -> String {
        format!("arn:aws:iam::{ACCOUNT}:role/{}", self.role_name)
    }

    /// The identity moto's GetCallerIdentity reports for credentials of this mapping
    /// (default session name `credvend-<mapping>`: docs/design.md, Configuration).
    pub fn assumed_role_arn(&self) -> String {
        format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/{}/credvend-{}",
            self.role_name, self.name
        )
    }
}

impl Check {
    /// Short name used in mapping names and directory names.
    fn slug(self) -> String {
        match self {
            Check::Works(TokenSource::Env, host) => format!("env-{}", host.slug()),
            Check::Works(TokenSource::File, host) => format!("file-{}", host.slug()),
            Check::WrongToken => "wrong-token".to_owned(),
            Check::Rotation => "rotation".to_owned(),
        }
    }
}

impl Case {
    fn label(&self) -> String {
        format!("{}-{}", self.client.slug(), self.check.slug())
    }

    fn expect(&self) -> Expect {
        match self.check {
            Check::Works(source, host) => expectation(self.client, source, host),
            Check::WrongToken | Check::Rotation => Expect::Success,
        }
    }
}

/// Every case of the suite.
fn plan() -> Vec<Case> {
    let mut cases = Vec::new();
    for client in Client::ALL {
        for source in [TokenSource::Env, TokenSource::File] {
            for host in Host::ALL {
                let check = Check::Works(source, host);
                cases.push(Case {
                    client,
                    check,
                    mappings: vec![MappingSpec::new(client, &check.slug())],
                });
            }
        }
        cases.push(Case {
            client,
            check: Check::WrongToken,
            mappings: vec![MappingSpec::new(client, &Check::WrongToken.slug())],
        });
        if client.reads_token_file() {
            cases.push(Case {
                client,
                check: Check::Rotation,
                mappings: vec![
                    MappingSpec::new(client, "rotation-a"),
                    MappingSpec::new(client, "rotation-b"),
                ],
            });
        }
    }
    cases
}

/// The outcome of a case against its expectation.
pub struct Verdict {
    pub client: Client,
    pub check: Check,
    pub expect: Expect,
    /// `Err(explanation)` when the case did not meet its expectation.
    pub result: Result<(), String>,
}

#[test]
fn real_clients_conform_to_the_wire_contract() {
    let started = Instant::now();
    let tools = Tools::locate();
    let dir = TempDir::new("compat");
    let cases = plan();

    // The Go client builds (about 20 s cold) while moto and credvend start.
    let (go_build, (moto, credvend)) = thread::scope(|scope| {
        let go = scope.spawn(|| tools.build_go_client(dir.path()));
        let moto = Moto::start(&tools.venv, &dir);
        moto.create_bucket(&tools.venv, &dir, BUCKET);
        let mappings: Vec<&MappingSpec> = cases.iter().flat_map(|c| &c.mappings).collect();
        let credvend = Credvend::start(&dir, &moto, "credvend", &mappings, "");
        (go.join().expect("go build thread"), (moto, credvend))
    });
    let tools = tools.with_go_client(go_build);
    println!("compat: setup took {:.1?}", started.elapsed());

    let runs = run_cases(&cases, &tools, &dir, &credvend, &moto);
    println!(
        "compat: {} cases done at {:.1?}",
        cases.len(),
        started.elapsed()
    );
    for (case, run) in cases.iter().zip(&runs) {
        println!("{}: {}", case.label(), run.summary());
    }
    // Stop credvend first: on exit it writes out every buffered log line, so the audit
    // log read next is complete (lines otherwise reach the file within 10 ms).
    let mut credvend = credvend;
    let shutdown = credvend.process.terminate(SHUTDOWN_TIMEOUT);
    let audit = AuditLog::parse(&credvend.process.log());
    let verdicts: Vec<Verdict> = cases
        .iter()
        .zip(&runs)
        .map(|(case, run)| judge(case, run, &audit))
        .collect();

    // Independent of the clients: credvend assumed each mapping's role exactly once
    // (prefetch) however many processes asked, so no client drove it to STS.
    let assumed = moto.assumed_roles();
    let mut per_session: BTreeMap<String, usize> = BTreeMap::new();
    for call in &assumed {
        *per_session
            .entry(call["session_name"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let repeated: Vec<_> = per_session.iter().filter(|(_, n)| **n != 1).collect();
    let control = refetch_loop_control(&tools, &dir, &moto);
    println!(
        "compat: refetch-loop control {control:?} at {:.1?}",
        started.elapsed()
    );

    let versions = tools.versions();
    let rendered = table::render(&verdicts, &versions);
    let table = table::check_committed(&rendered);

    let failures: Vec<&Verdict> = verdicts.iter().filter(|v| v.result.is_err()).collect();
    let mut report = String::new();
    for verdict in &failures {
        let _ = writeln!(
            report,
            "\n=== {:?} {:?} (expected {:?})\n{}",
            verdict.client,
            verdict.check,
            verdict.expect,
            verdict.result.as_ref().err().map_or("", String::as_str)
        );
    }
    assert!(
        failures.is_empty() && repeated.is_empty() && control.is_ok(),
        "{} of {} compatibility cases failed; sessions assumed more than once: \
         {repeated:?}; refetch-loop control: {control:?}{report}\n\n{}\n\n{}",
        failures.len(),
        verdicts.len(),
        credvend.process.describe(),
        table.as_ref().err().map_or("", String::as_str),
    );
    assert_eq!(
        per_session.len(),
        cases.iter().map(|c| c.mappings.len()).sum::<usize>(),
        "every mapping is prefetched once: {per_session:?}"
    );
    assert_eq!(
        shutdown.and_then(|s| s.code()),
        Some(0),
        "credvend serve must exit 0 on SIGTERM\n{}",
        credvend.process.describe()
    );
    // Every case met its expectation; the committed table must say so.
    if let Err(stale) = table {
        panic!("{stale}");
    }
}

/// Negative control for every "exactly one credential request" assertion: it must be able
/// to fail. A second credvend serves 15-minute sessions (a configuration credvend warns
/// about: docs/design.md, Credential lifecycle): botocore refreshes credentials with less
/// than 15 minutes left before every call, so one boto3 process making [`CALLS`] calls
/// must show up as at least [`CALLS`] credential requests in the audit log.
fn refetch_loop_control(tools: &Tools, dir: &TempDir, moto: &Moto) -> Result<(), String> {
    const SHORT_LIVED: &str = r#"
[refresh]
session_duration = "15m"
refresh_before = "10m"
min_remaining = "5m"
"#;
    let mapping = MappingSpec::new(Client::Boto3, "control-short-lived");
    let mut control = Credvend::start(dir, moto, "credvend-control", &[&mapping], SHORT_LIVED);
    let case_dir = dir.path().join("control-short-lived");
    std::fs::create_dir_all(&case_dir).expect("control dir");
    let env = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            control.uri(Host::V4, Some(&mapping.name)),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", mapping.token.clone()),
    ];
    let run = tools.run(Client::Boto3, &env, &case_dir, "run", moto, true);
    // Stopped first, so the log holds every line (see `main`).
    control.process.terminate(SHUTDOWN_TIMEOUT);
    let requests = AuditLog::parse(&control.process.log())
        .requests(&mapping.name)
        .to_vec();
    let checked = run
        .all_succeeded()
        .and_then(|()| run.acted_as(&[mapping.assumed_role_arn()]))
        .and_then(|()| {
            if requests.len() >= CALLS && requests.iter().all(|s| *s == 200) {
                println!(
                    "compat: control: one boto3 process with 15-minute credentials made {} \
                     credential requests",
                    requests.len()
                );
                Ok(())
            } else {
                Err(format!(
                    "with 15-minute credentials botocore should fetch before each of its \
                     {CALLS}+ calls, but credvend logged statuses {requests:?}: the audit \
                     count would not see a refetch loop"
                ))
            }
        });
    checked.map_err(|problem| format!("{problem}\n{}", run.describe()))
}

/// Runs every case, [`PARALLEL_CASES`] at a time; results in case order.
fn run_cases(
    cases: &[Case],
    tools: &Tools,
    dir: &TempDir,
    credvend: &Credvend,
    moto: &Moto,
) -> Vec<ClientRun> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<ClientRun>>> =
        Mutex::new((0..cases.len()).map(|_| None).collect());
    thread::scope(|scope| {
        for _ in 0..PARALLEL_CASES {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(index) else { break };
                    let case_dir = dir.path().join(case.label());
                    std::fs::create_dir_all(&case_dir).expect("case dir");
                    let run = run_case(case, tools, &case_dir, credvend, moto);
                    results.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(run);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|run| run.expect("every case ran"))
        .collect()
}

/// Runs one case's processes.
fn run_case(
    case: &Case,
    tools: &Tools,
    case_dir: &Path,
    credvend: &Credvend,
    moto: &Moto,
) -> ClientRun {
    let env_for = |token_env: Vec<(&'static str, String)>, uri: String| {
        let mut env = vec![("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri)];
        env.extend(token_env);
        env
    };
    let token_file = case_dir.join("token");
    let mapping = &case.mappings[0];
    match case.check {
        Check::Works(source, host) => {
            let token_env = match source {
                TokenSource::Env => {
                    vec![("AWS_CONTAINER_AUTHORIZATION_TOKEN", mapping.token.clone())]
                }
                TokenSource::File => {
                    write_private_file(&token_file, &mapping.token);
                    vec![(
                        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                        token_file.display().to_string(),
                    )]
                }
            };
            let env = env_for(token_env, credvend.uri(host, Some(&mapping.name)));
            tools.run(case.client, &env, case_dir, "run", moto, true)
        }
        Check::WrongToken => {
            let env = env_for(
                vec![("AWS_CONTAINER_AUTHORIZATION_TOKEN", random_token())],
                credvend.uri(Host::V4, Some(&mapping.name)),
            );
            tools.run(case.client, &env, case_dir, "run", moto, false)
        }
        Check::Rotation => {
            let env = env_for(
                vec![(
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                    token_file.display().to_string(),
                )],
                credvend.uri(Host::V4, None),
            );
            write_private_file(&token_file, &case.mappings[0].token);
            let first = tools.run(case.client, &env, case_dir, "before", moto, false);
            write_private_file(&token_file, &case.mappings[1].token);
            let second = tools.run(case.client, &env, case_dir, "after", moto, false);
            ClientRun::sequence(vec![first, second])
        }
    }
}

/// Compares a case's run with its expectation and credvend's audit log.
fn judge(case: &Case, run: &ClientRun, audit: &AuditLog) -> Verdict {
    let expect = case.expect();
    let result = check_case(case, &expect, run, audit)
        .map_err(|problem| format!("{problem}\n{}", run.describe()));
    Verdict {
        client: case.client,
        check: case.check,
        expect,
        result,
    }
}

fn check_case(
    case: &Case,
    expect: &Expect,
    run: &ClientRun,
    audit: &AuditLog,
) -> Result<(), String> {
    match (case.check, expect) {
        (Check::Works(..), Expect::Success) => {
            let mapping = &case.mappings[0];
            run.all_succeeded()?;
            run.acted_as(&[mapping.assumed_role_arn()])?;
            audit.served_exactly(&mapping.name, run.processes())
        }
        (Check::Rotation, _) => {
            run.all_succeeded()?;
            let arns: Vec<String> = case
                .mappings
                .iter()
                .map(MappingSpec::assumed_role_arn)
                .collect();
            run.acted_as(&arns)?;
            for mapping in &case.mappings {
                audit.served_exactly(&mapping.name, 1)?;
            }
            Ok(())
        }
        (Check::WrongToken, _) => {
            run.failed_promptly(PROMPT_FAILURE, wrong_token_error(case.client))?;
            audit.refused_only(&case.mappings[0].name, 403)
        }
        (
            Check::Works(..),
            Expect::ClientRefuses {
                error_contains,
                statuses,
                ..
            },
        ) => {
            run.failed_promptly(PROMPT_FAILURE, error_contains)?;
            let mapping = &case.mappings[0].name;
            match statuses {
                RequestStatuses::None => audit.requests(mapping).is_empty().then_some(()).ok_or_else(|| {
                    format!(
                        "the client should refuse before sending a request, but credvend logged {:?}",
                        audit.requests(mapping)
                    )
                }),
                RequestStatuses::All(status) => audit.refused_only(mapping, *status),
            }
        }
    }
}

/// credvend's audit lines (JSON log format), by mapping.
pub struct AuditLog {
    /// Status of every credential response, per mapping, in log order.
    by_mapping: BTreeMap<String, Vec<u16>>,
}

impl AuditLog {
    fn parse(log: &str) -> AuditLog {
        let mut by_mapping: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for line in log.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if event["target"] != "credvend::audit" {
                continue;
            }
            let mapping = event["mapping"].as_str().unwrap_or("-").to_owned();
            let status = event["status"].as_u64().unwrap_or(0) as u16;
            by_mapping.entry(mapping).or_default().push(status);
        }
        AuditLog { by_mapping }
    }

    fn requests(&self, mapping: &str) -> &[u16] {
        self.by_mapping.get(mapping).map_or(&[], Vec::as_slice)
    }

    /// Exactly `count` credential requests for `mapping`, all answered 200.
    fn served_exactly(&self, mapping: &str, count: usize) -> Result<(), String> {
        let requests = self.requests(mapping);
        if requests.len() == count && requests.iter().all(|s| *s == 200) {
            Ok(())
        } else {
            Err(format!(
                "expected exactly {count} credential request(s) for mapping {mapping}, all 200 \
                 (one per process: a client that refetches per call would show {CALLS} or \
                 more); credvend logged statuses {requests:?}"
            ))
        }
    }

    /// At least one request for `mapping`, at most [`MAX_REFUSED_REQUESTS`], all `status`.
    fn refused_only(&self, mapping: &str, status: u16) -> Result<(), String> {
        let requests = self.requests(mapping);
        if !requests.is_empty()
            && requests.len() <= MAX_REFUSED_REQUESTS
            && requests.iter().all(|s| *s == status)
        {
            Ok(())
        } else {
            Err(format!(
                "expected 1..={MAX_REFUSED_REQUESTS} credential requests for mapping {mapping}, \
                 all answered {status}; credvend logged statuses {requests:?}"
            ))
        }
    }
}

/// `credvend serve` with one mapping per case, listening on 127.0.0.1:P and [::1]:P.
pub struct Credvend {
    pub process: ChildGuard,
    pub port: u16,
}

impl Credvend {
    /// Starts `credvend serve` named `name` (its config and log are `<dir>/<name>.toml`
    /// and `.log`) with `mappings`, all prefetched, and `extra_config` appended.
    fn start(
        dir: &TempDir,
        moto: &Moto,
        name: &'static str,
        mappings: &[&MappingSpec],
        extra_config: &str,
    ) -> Credvend {
        let port = free_dual_stack_port();
        let admin = free_loopback_addr();
        let config_path = write_config(dir, moto, name, mappings, extra_config, port, admin);
        let process = spawn_credvend(dir, name, &config_path, admin, CREDVEND_READY_TIMEOUT);
        Credvend { process, port }
    }

    /// `FULL_URI` for `host`; without a mapping, credvend resolves it from the token.
    fn uri(&self, host: Host, mapping: Option<&str>) -> String {
        let path = match mapping {
            Some(name) => format!("/v1/credentials/{name}"),
            None => "/v1/credentials".to_owned(),
        };
        format!("http://{}:{}{path}", host.uri_host(), self.port)
    }
}

fn write_config(
    dir: &TempDir,
    moto: &Moto,
    name: &str,
    mappings: &[&MappingSpec],
    extra_config: &str,
    port: u16,
    admin: SocketAddr,
) -> PathBuf {
    let mut config = format!(
        r#"# Written by tests/compat/main.rs
[server]
listen = ["127.0.0.1:{port}", "[::1]:{port}"]
admin_listen = "{admin}"

[log]
level = "info"
format = "json"

{moto_sections}{extra_config}"#,
        moto_sections = moto.credvend_config_sections(),
    );
    for (index, mapping) in mappings.iter().enumerate() {
        let _ = write!(
            config,
            r#"
[mappings.{name}]
role_arn = "{role_arn}"
external_id = "compat-ExternalId-{index:04}-Zq7LmW3x"
token_sha256 = ["{hash}"]
prefetch = true
"#,
            name = mapping.name,
            role_arn = mapping.role_arn(),
            hash = token_sha256_hex(&mapping.token),
        );
    }
    let path = dir.path().join(format!("{name}.toml"));
    write_private_file(&path, &config);
    path
}
