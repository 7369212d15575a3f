//! Onboarding commands (docs/onboarding.md, "Onboarding a customer") through the real binary; STS
//! is the fake.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use credvend::clock::ManualClock;
use support::config_file::sts_and_acme_toml;
use support::fake_sts::{FakeSts, Role, TrustRule};

const BIN: &str = env!("CARGO_BIN_EXE_credvend");
const EXTERNAL_ID: &str = "canary-external-id-7f3a9c1e5b";

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    for var in ["CREDVEND_CONFIG", "AWS_PROFILE", "AWS_SESSION_TOKEN"] {
        command.env_remove(var);
    }
    command.env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().expect("run credvend")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn external_ids_are_fresh_40_character_alphanumerics() {
    let out = run(&["external-id", "new", "--count", "3"], &[]);
    assert!(out.status.success());
    let ids: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        assert_eq!(id.len(), 40);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
}

#[test]
fn permissions_policy_grants_the_five_actions_on_bucket_and_objects() {
    let out = run(&["policy", "permissions", "--bucket", "acme-sync"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let policy: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(policy["Version"], "2012-10-17");
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Effect"], "Allow");
    let mut actions: Vec<&str> = statement["Action"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            "s3:DeleteObject",
            "s3:GetBucketLocation",
            "s3:GetObject",
            "s3:ListBucket",
            "s3:PutObject"
        ]
    );
    assert_eq!(
        statement["Resource"],
        serde_json::json!(["arn:aws:s3:::acme-sync", "arn:aws:s3:::acme-sync/*"])
    );

    let bad = run(&["policy", "permissions", "--bucket", "Acme_Sync"], &[]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(stderr(&bad).contains("Acme_Sync"));
}

#[test]
fn trust_policy_names_the_principal_and_requires_the_external_id() {
    let role = "arn:aws:iam::568237466542:role/vendor-sync-service";
    let out = run(
        &[
            "policy",
            "trust",
            "--external-id",
            EXTERNAL_ID,
            "--principal",
            role,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let policy: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Principal"]["AWS"], role);
    assert_eq!(statement["Action"], "sts:AssumeRole");
    assert_eq!(
        statement["Condition"]["StringEquals"]["sts:ExternalId"],
        EXTERNAL_ID
    );
    assert_eq!(policy["Statement"].as_array().unwrap().len(), 1);

    let bad = run(
        &["policy", "trust", "--external-id", "x", "--principal", role],
        &[],
    );
    assert_eq!(bad.status.code(), Some(64));
}

struct Fixture {
    sts: FakeSts,
    dir: PathBuf,
    config: PathBuf,
}

impl Fixture {
    /// Runs `credvend args… --config <the fixture's config>` with [`BASE_ENV`], off the
    /// async runtime so the in-process fake STS keeps serving.
    async fn run(&self, args: &[&str]) -> Output {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.extend(["--config".to_owned(), self.config.display().to_string()]);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args, &BASE_ENV)
        })
        .await
        .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn fixture(rule: TrustRule) -> Fixture {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock)).await;
    sts.add_role(Role::new(
        "arn:aws:iam::111122223333:role/vendor-sync",
        rule,
    ));
    let dir = std::env::temp_dir().join(format!(
        "credvend-onboarding-{}-{}",
        std::process::id(),
        sts.addr().port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("credvend.toml");
    std::fs::write(
        &config,
        sts_and_acme_toml(&sts.endpoint_url(), EXTERNAL_ID, "t"),
    )
    .unwrap();
    // Owner-only whatever the umask: a config file others could write is refused.
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Fixture { sts, dir, config }
}

/// The vendor's static base identity; no shared AWS config files.
const BASE_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "AKIAVENDORBASE000000"),
    ("AWS_SECRET_ACCESS_KEY", "vendor-base-secret"),
    ("AWS_CONFIG_FILE", "/dev/null"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
];

#[tokio::test(flavor = "multi_thread")]
async fn trust_policy_defaults_to_the_daemons_own_account() {
    let f = fixture(TrustRule::NoExternalIdRequired).await;
    let out = f
        .run(&["policy", "trust", "--external-id", EXTERNAL_ID])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let policy: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    // The fake's base identity is arn:aws:iam::568237466542:user/vendor.
    assert_eq!(
        policy["Statement"][0]["Principal"]["AWS"],
        "arn:aws:iam::568237466542:root"
    );
    let calls = f.sts.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].action, "GetCallerIdentity");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_for_a_role_that_enforces_its_external_id() {
    let f = fixture(TrustRule::RequireExternalId(EXTERNAL_ID.into())).await;
    let out = f.run(&["verify", "acme-s3"]).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("ok") && lines[0].contains("external-id"));
    assert!(lines[1].starts_with("ok") && lines[1].contains("assumed-role/vendor-sync"));
    assert_eq!(f.sts.assume_role_calls().len(), 3);
    assert!(!text.contains(EXTERNAL_ID));
    // The daemon is another process: how to make it retry a mapping it refused.
    assert!(
        stderr(&out).contains("`systemctl reload credvend` (SIGHUP) makes it retry"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_fails_for_a_role_without_the_condition_and_says_how_to_fix_it() {
    let f = fixture(TrustRule::NoExternalIdRequired).await;
    let out = f.run(&["verify", "acme-s3"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("NOT ENFORCED"), "{text}");
    assert!(text.contains("sts:ExternalId"), "{text}");
    assert!(!text.contains(EXTERNAL_ID) && !stderr(&out).contains(EXTERNAL_ID));
    assert!(
        !stderr(&out).contains("systemctl reload"),
        "{}",
        stderr(&out)
    );

    let unknown = f.run(&["verify", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(64));
}

#[test]
fn policies_equal_the_guides_documents() {
    let out = run(&["policy", "permissions", "--bucket", "syncoutput"], &[]);
    let policy: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        policy,
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "CredvendSyncBucketAccess",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket", "s3:PutObject", "s3:DeleteObject", "s3:GetBucketLocation"],
                "Resource": ["arn:aws:s3:::syncoutput", "arn:aws:s3:::syncoutput/*"]
            }]
        })
    );
    for (principal, expected) in [
        (
            "arn:aws:iam::568237466542:root",
            "arn:aws:iam::568237466542:root",
        ),
        ("568237466542", "arn:aws:iam::568237466542:root"),
        (
            "arn:aws:iam::568237466542:role/vendor-sync",
            "arn:aws:iam::568237466542:role/vendor-sync",
        ),
    ] {
        let out = run(
            &[
                "policy",
                "trust",
                "--external-id",
                "0000",
                "--principal",
                principal,
            ],
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let policy: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(
            policy,
            serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Sid": "CredvendAssumeWithExternalId",
                    "Effect": "Allow",
                    "Principal": {"AWS": expected},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"sts:ExternalId": "0000"}}
                }]
            })
        );
    }
}

/// `onboard`'s stdout is one JSON document (both policies), handed over or piped as it
/// is; the steps and the verify command are on stderr.
#[tokio::test(flavor = "multi_thread")]
async fn onboard_prints_both_documents_as_json_and_the_steps_on_stderr() {
    let f = fixture(TrustRule::RequireExternalId(EXTERNAL_ID.into())).await;
    let out = f
        .run(&["onboard", "acme-s3", "--bucket", "acme-data"])
        .await;
    let (text, guidance) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}\n{guidance}");
    let documents: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{text}"));
    assert_eq!(documents.as_object().unwrap().len(), 2, "{text}");
    let trust = &documents["trust_policy"]["Statement"][0];
    assert_eq!(trust["Principal"]["AWS"], "arn:aws:iam::568237466542:root");
    assert_eq!(
        trust["Condition"]["StringEquals"]["sts:ExternalId"],
        EXTERNAL_ID
    );
    assert_eq!(
        documents["permissions_policy"]["Statement"][0]["Resource"][0],
        "arn:aws:s3:::acme-data"
    );
    assert!(
        guidance.contains("Onboarding mapping 'acme-s3'"),
        "{guidance}"
    );
    assert!(guidance.contains("trust policy"), "{guidance}");
    assert!(
        guidance.contains(&format!(
            "credvend verify acme-s3 --config {} --bucket acme-data",
            f.config.display()
        )),
        "{guidance}"
    );
    assert!(!text.contains("credvend verify"), "{text}");
}

/// A mapping that tags its sessions, sets a source identity and asks for two-hour
/// sessions: AWS checks `sts:TagSession` and `sts:SetSourceIdentity` against the trust
/// policy and refuses sessions longer than the role's `MaxSessionDuration`, so both
/// formats carry what the mapping's AssumeRole needs.
#[tokio::test(flavor = "multi_thread")]
async fn onboard_takes_session_actions_and_duration_from_the_mapping() {
    let f = fixture(TrustRule::RequireExternalId(EXTERNAL_ID.into())).await;
    let mut config = std::fs::read_to_string(&f.config).unwrap();
    config.push_str(
        "session_duration = \"2h\"\nsource_identity = \"sync-acme\"\n\n\
         [mappings.acme-s3.tags]\nteam = \"sync\"\n",
    );
    std::fs::write(&f.config, config).unwrap();

    let out = f
        .run(&["onboard", "acme-s3", "--bucket", "acme-data"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let documents: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        documents["trust_policy"]["Statement"][0]["Action"],
        serde_json::json!(["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]),
        "{documents}"
    );

    let out = f
        .run(&[
            "onboard",
            "acme-s3",
            "--bucket",
            "acme-data",
            "--format",
            "cloudformation",
        ])
        .await;
    let template = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(template.contains("MaxSessionDuration: 7200"), "{template}");
    assert!(
        template.contains("- \"sts:SetSourceIdentity\""),
        "{template}"
    );
}

/// With `--out-dir`, each policy is a file of its own, exactly the document `policy
/// trust` / `policy permissions` would print; stdout is empty, stderr names the files.
#[tokio::test(flavor = "multi_thread")]
async fn onboard_out_dir_writes_each_policy_to_its_own_file() {
    let f = fixture(TrustRule::RequireExternalId(EXTERNAL_ID.into())).await;
    let out_dir = f.dir.join("handover");
    let out = f
        .run(&[
            "onboard",
            "acme-s3",
            "--bucket",
            "acme-data",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ])
        .await;
    let guidance = stderr(&out);
    assert!(out.status.success(), "{guidance}");
    assert_eq!(stdout(&out), "", "documents went to files");
    let read = |name: &str| -> serde_json::Value {
        let path = out_dir.join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; stderr: {guidance}", path.display()));
        assert!(guidance.contains(&path.display().to_string()), "{guidance}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}:\n{text}"))
    };
    let trust = read("trust-policy.json");
    assert_eq!(
        trust["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
        EXTERNAL_ID
    );
    let permissions = read("permissions-policy.json");
    assert_eq!(
        permissions["Statement"][0]["Resource"][0],
        "arn:aws:s3:::acme-data"
    );
    assert!(guidance.contains("credvend verify acme-s3"), "{guidance}");
}

/// Without AWS credentials of its own, `onboard` (which looks up the vendor account)
/// says so in the daemon's words, and names the reason label the metrics and `/status`
/// use.
#[tokio::test(flavor = "multi_thread")]
async fn onboard_without_base_credentials_says_so_like_the_daemon() {
    let f = fixture(TrustRule::RequireExternalId(EXTERNAL_ID.into())).await;
    let config = f.config.display().to_string();
    let home = f.dir.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["onboard", "acme-s3", "--config", &config])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .expect("run credvend")
    })
    .await
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("credvend has no AWS credentials of its own to call STS with"),
        "{err}"
    );
    assert!(err.contains("no_base_credentials"), "{err}");
    assert!(!err.contains("expired_base_credentials"), "{err}");
    assert_eq!(stdout(&out), "", "no document without a principal");
}

/// `--format cloudformation --template-url`: the template on stdout (as `> role.yaml`
/// keeps it), and on stderr the console's quick-create link, every parameter in its
/// fragment and percent-encoded, then the steps ending in `credvend verify`. The
/// default principal is the daemon's own account, as for the JSON documents.
#[tokio::test(flavor = "multi_thread")]
async fn onboard_cloudformation_prints_the_template_and_the_quick_create_link() {
    let f = fixture(TrustRule::RequireExternalId(EXTERNAL_ID.into())).await;
    let out = f
        .run(&[
            "onboard",
            "acme-s3",
            "--bucket",
            "acme-data",
            "--prefix",
            "sync/",
            "--format",
            "cloudformation",
            "--template-url",
            "https://vendor-templates.s3.us-east-1.amazonaws.com/credvend/acme-s3.yaml?versionId=a&b",
        ])
        .await;
    let (template, guidance) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{guidance}");
    assert!(
        template.contains("AWSTemplateFormatVersion: \"2010-09-09\"")
            && template.contains("AWS: \"arn:aws:iam::568237466542:root\""),
        "{template}"
    );
    assert!(!template.contains("credvend verify"), "{template}");
    let link = "https://console.aws.amazon.com/cloudformation/home?region=us-east-1\
                #/stacks/quickcreate\
                ?templateURL=https%3A%2F%2Fvendor-templates.s3.us-east-1.amazonaws.com%2Fcredvend%2Facme-s3.yaml%3FversionId%3Da%26b\
                &stackName=credvend-acme-s3\
                &param_RoleName=vendor-sync&param_BucketName=acme-data&param_KeyPrefix=sync\
                &param_ExternalId=canary-external-id-7f3a9c1e5b";
    assert!(
        guidance.lines().any(|l| l.trim() == link),
        "no quick-create link {link}\nin:\n{guidance}"
    );
    let verify = format!(
        "credvend verify acme-s3 --config {} --bucket acme-data --prefix sync/",
        f.config.display()
    );
    assert!(
        guidance.lines().last().is_some_and(|l| l.contains(&verify)),
        "{guidance}"
    );
}

/// `--format terraform --out DIR`: the three files of the module, created owner-only
/// (they hold the External ID), nothing on stdout, the files and the steps on stderr.
#[tokio::test(flavor = "multi_thread")]
async fn onboard_terraform_writes_the_module_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let f = fixture(TrustRule::RequireExternalId(EXTERNAL_ID.into())).await;
    let module = f.dir.join("module");
    let out = f
        .run(&[
            "onboard",
            "acme-s3",
            "--bucket",
            "acme-data",
            "--principal",
            "arn:aws:iam::568237466542:role/vendor-sync",
            "--format",
            "terraform",
            "--out",
            module.to_str().unwrap(),
        ])
        .await;
    let guidance = stderr(&out);
    assert!(out.status.success(), "{guidance}");
    assert_eq!(stdout(&out), "");
    for name in ["main.tf", "variables.tf", "outputs.tf"] {
        let path = module.join(name);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{name} is {:o}, not owner-only",
            mode & 0o777
        );
        assert!(guidance.contains(&path.display().to_string()), "{guidance}");
    }
    let main_tf = std::fs::read_to_string(module.join("main.tf")).unwrap();
    assert!(
        main_tf.contains("AWS = \"arn:aws:iam::568237466542:role/vendor-sync\""),
        "{main_tf}"
    );
    let variables_tf = std::fs::read_to_string(module.join("variables.tf")).unwrap();
    assert!(
        variables_tf.contains(&format!(
            "default     = \"{EXTERNAL_ID}\"\n  sensitive   = true"
        )),
        "{variables_tf}"
    );
    assert!(guidance.contains("credvend verify acme-s3"), "{guidance}");
    assert!(
        f.sts.calls().is_empty(),
        "--principal given: no GetCallerIdentity"
    );
}

/// A bad `onboard --format` command line is one line on stderr and exit status 64,
/// with nothing on stdout and no file written, found before STS is asked for the
/// default principal.
#[tokio::test(flavor = "multi_thread")]
async fn onboard_format_usage_errors_are_one_line_and_exit_64() {
    let f = fixture(TrustRule::RequireExternalId(EXTERNAL_ID.into())).await;
    let a_dir = f.dir.join("a-dir");
    std::fs::create_dir_all(&a_dir).unwrap();
    let a_file = f.dir.join("a-file");
    std::fs::write(&a_file, "").unwrap();
    let (a_dir, a_file) = (a_dir.to_str().unwrap(), a_file.to_str().unwrap());
    let base = ["onboard", "acme-s3", "--bucket", "acme-data"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["onboard", "acme-s3", "--format", "cloudformation"],
            "--format cloudformation needs --bucket",
        ),
        (
            vec![
                "onboard",
                "acme-s3",
                "--format",
                "terraform",
                "--out",
                a_dir,
            ],
            "--format terraform needs --bucket",
        ),
        (
            [&base[..], &["--format", "terraform"]].concat(),
            "--format terraform writes a module of three files (main.tf, variables.tf, outputs.tf): pass --out DIR",
        ),
        (
            [
                &base[..],
                &["--template-url", "https://x.s3.amazonaws.com/t.yaml"],
            ]
            .concat(),
            "--template-url is for --format cloudformation",
        ),
        (
            [
                &base[..],
                &[
                    "--format",
                    "cloudformation",
                    "--template-url",
                    "http://x/t.yaml",
                ],
            ]
            .concat(),
            "expected the https:// URL",
        ),
        (
            [&base[..], &["--format", "cloudformation", "--out", a_dir]].concat(),
            "is a directory; --format cloudformation writes one file",
        ),
        (
            [&base[..], &["--format", "terraform", "--out", a_file]].concat(),
            "is not a directory; --format terraform writes files into one",
        ),
        (
            vec![
                "onboard",
                "acme-s3",
                "--bucket",
                "Acme_Data",
                "--format",
                "terraform",
                "--out",
                a_dir,
            ],
            "invalid S3 bucket name \"Acme_Data\"",
        ),
        (
            [
                &base[..],
                &["--prefix", "/sync", "--format", "cloudformation"],
            ]
            .concat(),
            "invalid key prefix \"/sync\"",
        ),
    ];
    for (args, needle) in cases {
        let out = f.run(&args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line:\n{err}");
        assert!(
            err.starts_with("credvend: ") && err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
        assert_eq!(stdout(&out), "", "{args:?}");
    }
    assert_eq!(
        std::fs::read_dir(a_dir).unwrap().count(),
        0,
        "nothing written"
    );
    assert!(
        f.sts.calls().is_empty(),
        "usage errors are found before STS is asked: {:?}",
        f.sts.calls()
    );
}
