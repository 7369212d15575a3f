//! `credvend onboard --format cloudformation|terraform` against the tools a customer
//! would use, from the Python venv (`scripts/setup-python.sh`; `scripts/test.sh` runs
//! it): the template passes `cfn-lint` and is deployed to moto's CloudFormation, after
//! which `credvend verify` passes against moto with IAM enforcement (and fails naming
//! the action when the template's permissions lack one); the Terraform module parses
//! with python-hcl2 and passes checkov's checks. In both, the policy documents, with
//! the parameters or variables at their defaults, equal what `credvend policy trust` /
//! `policy permissions` print (docs/onboarding.md, "CloudFormation and Terraform").
//!
//! moto lets AssumeRole through without the External ID, so `verify`'s enforcement
//! line fails here by design; tests/onboarding_cli.rs and
//! tests/external_id_enforcement.rs judge that line against the fake STS.
//!
//! A missing venv or tool fails the test with instructions rather than skipping it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::e2e::{
    Moto, TempDir, Venv, base_env, http_post_text, random_token, run_bounded, token_sha256_hex,
    write_private_file,
};

/// moto's default account: the roles the stacks create live there.
const ACCOUNT: &str = "123456789012";
const EXTERNAL_ID: &str = "ext-OnboardTemplate-7Rq2Lm9X";
/// A vendor role principal (the account-root default is the other case).
const VENDOR_ROLE: &str = "arn:aws:iam::568237466542:role/vendor-sync";
/// Upper bound for one external tool run (cfn-lint, checkov, a boto3 script); a hang
/// must fail, not stall the suite. checkov takes about 4 s on a quiet machine.
const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

/// Writes `credvend.toml` in `dir`: a mapping per role name, role
/// `arn:aws:iam::123456789012:role/NAME`, External ID [`EXTERNAL_ID`], STS at
/// `sts_url` when given, enforcement `warn` (moto cannot enforce External IDs).
fn write_config(dir: &TempDir, sts_url: Option<&str>, roles: &[&str]) -> PathBuf {
    let mut config = String::from("[sts]\nregion = \"us-east-1\"\n");
    if let Some(url) = sts_url {
        config.push_str(&format!("endpoint_urls = {{ us-east-1 = \"{url}\" }}\n"));
    }
    config.push_str("\n[verify]\nexternal_id_enforcement = \"warn\"\n");
    for role in roles {
        config.push_str(&format!(
            "\n[mappings.{role}]\nrole_arn = \"arn:aws:iam::{ACCOUNT}:role/{role}\"\n\
             external_id = \"{EXTERNAL_ID}\"\ntoken_sha256 = [\"{hash}\"]\n",
            hash = token_sha256_hex(&random_token()),
        ));
    }
    let path = dir.path().join("credvend.toml");
    write_private_file(&path, &config);
    path
}

/// `credvend ARGS…` with nothing from the test's environment but [`base_env`].
fn credvend(dir: &TempDir, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_credvend"))
        .args(args)
        .env_clear()
        .envs(base_env(dir.path()))
        .output()
        .expect("run credvend")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `credvend policy trust` and `policy permissions` for the same inputs, parsed.
fn policy_documents(
    dir: &TempDir,
    principal: &str,
    redshift: bool,
    bucket: &str,
    prefix: Option<&str>,
) -> (Value, Value) {
    let mut trust = vec![
        "policy",
        "trust",
        "--external-id",
        EXTERNAL_ID,
        "--principal",
        principal,
    ];
    if redshift {
        trust.extend(["--service", "redshift"]);
    }
    let mut permissions = vec!["policy", "permissions", "--bucket", bucket];
    if let Some(prefix) = prefix {
        permissions.extend(["--prefix", prefix]);
    }
    let parse = |args: &[&str]| -> Value {
        let out = credvend(dir, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("policy prints JSON")
    };
    (parse(&trust), parse(&permissions))
}

/// One template or module to check: the inputs, and what `credvend onboard` takes.
struct Case {
    mapping: &'static str,
    principal: &'static str,
    redshift: bool,
    bucket: &'static str,
    prefix: Option<&'static str>,
}

impl Case {
    fn onboard_args<'a>(&'a self, config: &'a str, format: &'a str) -> Vec<&'a str> {
        let mut args = vec![
            "onboard",
            self.mapping,
            "--config",
            config,
            "--bucket",
            self.bucket,
            "--principal",
            self.principal,
            "--format",
            format,
        ];
        if self.redshift {
            args.extend(["--service", "redshift"]);
        }
        if let Some(prefix) = self.prefix {
            args.extend(["--prefix", prefix]);
        }
        args
    }
}

const CASES: [Case; 2] = [
    // The guide's default: the vendor account root, one statement on the whole bucket.
    Case {
        mapping: "plain",
        principal: ACCOUNT,
        redshift: false,
        bucket: "acme-data",
        prefix: None,
    },
    // A vendor role, the Redshift statement, and a prefix (three statements), given
    // with a trailing slash that `policy` normalises away.
    Case {
        mapping: "narrow",
        principal: VENDOR_ROLE,
        redshift: true,
        bucket: "acme.data-2",
        prefix: Some("exports/daily/"),
    },
];

/// Reads a CloudFormation template (argv[1]) with PyYAML, resolves `Ref` and
/// `Fn::Sub` against the parameters' defaults (`${!x}` is a literal `${x}`), and prints
/// the parameters, the resolved documents, the resources' types and the outputs.
const RESOLVE_CLOUDFORMATION_PY: &str = r#"
import json, re, sys, yaml
t = yaml.safe_load(open(sys.argv[1]))
params = {k: v["Default"] for k, v in t["Parameters"].items()}
def resolve(x):
    if isinstance(x, dict):
        if list(x) == ["Ref"]:
            return params[x["Ref"]]
        if list(x) == ["Fn::Sub"]:
            return re.sub(r"\$\{(!?)([^}]*)\}",
                lambda m: "${" + m.group(2) + "}" if m.group(1) else params[m.group(2)],
                x["Fn::Sub"])
        return {k: resolve(v) for k, v in x.items()}
    if isinstance(x, list):
        return [resolve(v) for v in x]
    return x
res = t["Resources"]
print(json.dumps({
    "parameters": t["Parameters"],
    "types": {k: v["Type"] for k, v in res.items()},
    "role": {k: v for k, v in res["CredvendRole"]["Properties"].items() if k != "AssumeRolePolicyDocument"},
    "trust": resolve(res["CredvendRole"]["Properties"]["AssumeRolePolicyDocument"]),
    "policy": {k: v for k, v in res["CredvendSyncPolicy"]["Properties"].items() if k != "PolicyDocument"},
    "permissions": resolve(res["CredvendSyncPolicy"]["Properties"]["PolicyDocument"]),
    "outputs": t["Outputs"],
}))
"#;

/// Reads the Terraform module in argv[1] with python-hcl2, resolves `var.X` against
/// the variables' defaults inside the two `jsonencode(...)` documents, and prints the
/// variables, the resolved documents, the two resources' other attributes and the
/// outputs.
const RESOLVE_TERRAFORM_PY: &str = r#"
import json, os, re, sys
import hcl2
from hcl2 import SerializationOptions
opts = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
def load(name):
    with open(os.path.join(sys.argv[1], name)) as f:
        return hcl2.load(f, serialization_options=opts)
main, variables, outputs = load("main.tf"), load("variables.tf"), load("outputs.tf")
var = {n: b for v in variables["variable"] for n, b in v.items()}
values = {n: b["default"] for n, b in var.items()}
def sub(s):
    whole = re.fullmatch(r"\$\{var\.(\w+)\}", s)
    if whole:
        return values[whole.group(1)]
    s = re.sub(r"(?<!\$)\$\{var\.(\w+)\}", lambda m: values[m.group(1)], s)
    return s.replace("$${", "${").replace("%%{", "%{")
def resolve(x):
    if isinstance(x, dict):
        return {k: resolve(v) for k, v in x.items()}
    if isinstance(x, list):
        return [resolve(v) for v in x]
    return sub(x) if isinstance(x, str) else x
def document(expr):
    assert expr.startswith("${jsonencode(") and expr.endswith(")}"), expr
    return resolve(hcl2.loads("x = " + expr[len("${jsonencode("):-2], serialization_options=opts)["x"])
resources = {(t, n): b for r in main["resource"] for t, named in r.items() for n, b in named.items()}
role = resources[("aws_iam_role", "credvend")]
policy = resources[("aws_iam_role_policy", "credvend_sync")]
print(json.dumps({
    "variables": var,
    "resources": sorted(f"{t}.{n}" for t, n in resources),
    "role": {k: v for k, v in role.items() if k != "assume_role_policy"},
    "trust": document(role["assume_role_policy"]),
    "policy": {k: v for k, v in policy.items() if k != "policy"},
    "permissions": document(policy["policy"]),
    "outputs": outputs["output"],
}))
"#;

/// Runs `script` with `args` in the venv; its stdout as JSON.
fn python_json(venv: &Venv, dir: &TempDir, label: &str, script: &str, args: &[&str]) -> Value {
    let mut command = Command::new(venv.python());
    command
        .arg("-c")
        .arg(script)
        .args(args)
        .env_clear()
        .envs(base_env(dir.path()));
    let out = run_bounded(command, dir.path(), label, TOOL_TIMEOUT);
    assert!(out.success(), "{label}: {}", out.describe());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{label}: {e}: {}", out.stdout))
}

/// The template passes cfn-lint, and its documents, with the parameters at their
/// defaults, are exactly what `credvend policy` prints for the same inputs; the
/// parameters default to the mapping's values, the External ID's is `NoEcho`, and the
/// role ARN is the output. The template on stdout and the one `--out FILE` writes are
/// the same text.
#[test]
fn cloudformation_template_lints_clean_and_holds_the_policy_documents() {
    let venv = Venv::locate();
    let dir = TempDir::new("onboard-cfn");
    let config = write_config(&dir, None, &["plain", "narrow"]);
    let config = config.to_str().unwrap();
    for case in &CASES {
        let out = credvend(&dir, &case.onboard_args(config, "cloudformation"));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let template = text(&out.stdout);
        let file = dir.path().join(format!("{}.yaml", case.mapping));
        let mut args = case.onboard_args(config, "cloudformation");
        let file_arg = file.display().to_string();
        args.extend(["--out", &file_arg]);
        let to_file = credvend(&dir, &args);
        assert!(to_file.status.success(), "{}", text(&to_file.stderr));
        assert!(to_file.stdout.is_empty(), "{}", text(&to_file.stdout));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), template);

        let lint = run_bounded(
            {
                let mut c = Command::new(venv.bin("cfn-lint"));
                c.arg(&file).env_clear().envs(base_env(dir.path()));
                c
            },
            dir.path(),
            &format!("cfn-lint-{}", case.mapping),
            TOOL_TIMEOUT,
        );
        assert!(
            lint.success() && lint.stdout.trim().is_empty(),
            "cfn-lint {}:\n{}\n{template}",
            case.mapping,
            lint.describe()
        );

        let got = python_json(
            &venv,
            &dir,
            &format!("resolve-cfn-{}", case.mapping),
            RESOLVE_CLOUDFORMATION_PY,
            &[&file_arg],
        );
        let (trust, permissions) = policy_documents(
            &dir,
            case.principal,
            case.redshift,
            case.bucket,
            case.prefix,
        );
        assert_eq!(
            got["trust"], trust,
            "{}: trust policy\n{template}",
            case.mapping
        );
        assert_eq!(
            got["permissions"], permissions,
            "{}: permissions policy\n{template}",
            case.mapping
        );

        let parameters = &got["parameters"];
        let names: Vec<&str> = parameters
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec!["BucketName", "ExternalId", "RoleName"];
        if case.prefix.is_some() {
            expected.push("KeyPrefix");
        }
        expected.sort_unstable();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, expected, "{}", case.mapping);
        assert_eq!(parameters["RoleName"]["Default"], case.mapping);
        assert_eq!(parameters["BucketName"]["Default"], case.bucket);
        assert_eq!(parameters["ExternalId"]["Default"], EXTERNAL_ID);
        assert_eq!(
            parameters["ExternalId"]["NoEcho"], true,
            "{}: the ExternalId parameter must be NoEcho: {parameters}",
            case.mapping
        );
        for name in names.iter().filter(|n| **n != "ExternalId") {
            assert_eq!(parameters[name].get("NoEcho"), None, "{name}");
        }
        assert_eq!(
            got["types"],
            serde_json::json!({"CredvendRole": "AWS::IAM::Role", "CredvendSyncPolicy": "AWS::IAM::Policy"})
        );
        assert_eq!(
            got["role"]["RoleName"],
            serde_json::json!({"Ref": "RoleName"})
        );
        assert_eq!(
            got["policy"]["Roles"],
            serde_json::json!([{"Ref": "CredvendRole"}])
        );
        assert_eq!(
            got["outputs"]["RoleArn"]["Value"],
            serde_json::json!({"Fn::GetAtt": ["CredvendRole", "Arn"]})
        );
    }
}

/// The module parses with python-hcl2 (all three files), and its documents, with the
/// variables at their defaults, are exactly what `credvend policy` prints; the
/// variables default to the mapping's values, `external_id` is `sensitive`, and the
/// role ARN is the output.
#[test]
fn terraform_module_parses_and_holds_the_policy_documents() {
    let venv = Venv::locate();
    let dir = TempDir::new("onboard-tf");
    let config = write_config(&dir, None, &["plain", "narrow"]);
    let config = config.to_str().unwrap();
    for case in &CASES {
        let module = dir.path().join(case.mapping);
        let module_arg = module.display().to_string();
        let mut args = case.onboard_args(config, "terraform");
        args.extend(["--out", &module_arg]);
        let out = credvend(&dir, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        let got = python_json(
            &venv,
            &dir,
            &format!("resolve-tf-{}", case.mapping),
            RESOLVE_TERRAFORM_PY,
            &[&module_arg],
        );
        let main_tf = std::fs::read_to_string(module.join("main.tf")).unwrap();
        let (trust, permissions) = policy_documents(
            &dir,
            case.principal,
            case.redshift,
            case.bucket,
            case.prefix,
        );
        assert_eq!(
            got["trust"], trust,
            "{}: trust policy\n{main_tf}",
            case.mapping
        );
        assert_eq!(
            got["permissions"], permissions,
            "{}: permissions policy\n{main_tf}",
            case.mapping
        );
        assert_eq!(
            got["resources"],
            serde_json::json!(["aws_iam_role.credvend", "aws_iam_role_policy.credvend_sync"])
        );
        assert_eq!(got["role"]["name"], "${var.role_name}");
        assert_eq!(got["policy"]["role"], "${aws_iam_role.credvend.id}");
        let variables = &got["variables"];
        let mut names: Vec<&str> = variables
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        let mut expected = vec!["bucket_name", "external_id", "role_name"];
        if case.prefix.is_some() {
            expected.push("key_prefix");
        }
        expected.sort_unstable();
        assert_eq!(names, expected, "{}", case.mapping);
        assert_eq!(variables["role_name"]["default"], case.mapping);
        assert_eq!(variables["bucket_name"]["default"], case.bucket);
        assert_eq!(variables["external_id"]["default"], EXTERNAL_ID);
        assert_eq!(
            variables["external_id"]["sensitive"], true,
            "{}: external_id must be sensitive: {variables}",
            case.mapping
        );
        for name in names.iter().filter(|n| **n != "external_id") {
            assert_eq!(variables[name].get("sensitive"), None, "{name}");
        }
        assert_eq!(
            got["outputs"],
            serde_json::json!([{"role_arn": {
                "description": "Send this ARN back to the vendor.",
                "value": "${aws_iam_role.credvend.arn}"
            }}])
        );
    }
}

/// checkov's results on every module under `root` (terraform framework, all checks,
/// offline), in one run: checkov's start-up is most of its time.
fn checkov(venv: &Venv, dir: &TempDir, root: &Path) -> Value {
    let mut command = Command::new(venv.checkov());
    command
        .args(["--directory"])
        .arg(root)
        .args([
            "--framework",
            "terraform",
            "--skip-download",
            "--compact",
            "--output",
            "json",
        ])
        .env_clear()
        .envs(base_env(dir.path()));
    let out = run_bounded(command, dir.path(), "checkov", TOOL_TIMEOUT);
    // Exit status 1 means "a check failed"; anything else but 0 is checkov failing.
    assert!(
        matches!(out.status.and_then(|s| s.code()), Some(0 | 1)),
        "checkov: {}",
        out.describe()
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("checkov: {e}: {}", out.describe()))
}

/// `(check id, resource)` of one result list for the module in directory `module`
/// under checkov's root, sorted.
fn check_ids(report: &Value, list: &str, module: &str) -> Vec<(String, String)> {
    let prefix = format!("/{module}/");
    let mut ids: Vec<(String, String)> = report["results"][list]
        .as_array()
        .unwrap_or_else(|| panic!("no results.{list} in {report}"))
        .iter()
        .filter(|c| {
            c["file_path"]
                .as_str()
                .is_some_and(|p| p.starts_with(&prefix))
        })
        .map(|c| {
            (
                c["check_id"].as_str().unwrap().to_owned(),
                c["resource"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    ids.sort();
    ids
}

/// The IAM checks checkov 3.3.30 runs on the module's two resources; each must pass.
const IAM_CHECKS: [(&str, &str); 12] = [
    ("CKV2_AWS_40", "aws_iam_role_policy.credvend_sync"),
    ("CKV2_AWS_56", "aws_iam_role.credvend"),
    ("CKV_AWS_274", "aws_iam_role.credvend"),
    ("CKV_AWS_286", "aws_iam_role_policy.credvend_sync"),
    ("CKV_AWS_287", "aws_iam_role_policy.credvend_sync"),
    ("CKV_AWS_288", "aws_iam_role_policy.credvend_sync"),
    ("CKV_AWS_289", "aws_iam_role_policy.credvend_sync"),
    ("CKV_AWS_290", "aws_iam_role_policy.credvend_sync"),
    ("CKV_AWS_355", "aws_iam_role_policy.credvend_sync"),
    ("CKV_AWS_60", "aws_iam_role.credvend"),
    ("CKV_AWS_62", "aws_iam_role_policy.credvend_sync"),
    ("CKV_AWS_63", "aws_iam_role_policy.credvend_sync"),
];

/// checkov runs every Terraform check on the module and none fails. CKV_AWS_61 flags
/// any account-root principal, the guide's default: with one the module skips it with
/// the reason (the External ID condition), with a vendor role it passes. checkov reads
/// the real documents: a copy of the module with `*` as principal and as resource,
/// checked in the same run, fails the checks that look for exactly that.
#[test]
fn terraform_module_passes_checkov() {
    let venv = Venv::locate();
    let dir = TempDir::new("onboard-checkov");
    let config = write_config(&dir, None, &["plain", "narrow"]);
    let config = config.to_str().unwrap();
    let root = dir.path().join("modules");
    for case in &CASES {
        let module_arg = root.join(case.mapping).display().to_string();
        let mut args = case.onboard_args(config, "terraform");
        args.extend(["--out", &module_arg]);
        let out = credvend(&dir, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // The same module, opened to everyone and everything.
    let opened = root.join("opened");
    std::fs::create_dir_all(&opened).unwrap();
    for name in ["variables.tf", "outputs.tf"] {
        std::fs::copy(root.join("narrow").join(name), opened.join(name)).unwrap();
    }
    let main_tf = std::fs::read_to_string(root.join("narrow").join("main.tf")).unwrap();
    let opened_tf = main_tf
        .replace(&format!("AWS = \"{VENDOR_ROLE}\""), "AWS = \"*\"")
        .replace(
            "Resource = [\"arn:aws:s3:::${var.bucket_name}/${var.key_prefix}/*\"]",
            "Resource = [\"*\"]",
        );
    assert_eq!(
        opened_tf.matches("\"*\"").count(),
        2,
        "both edits applied:\n{opened_tf}"
    );
    std::fs::write(opened.join("main.tf"), opened_tf).unwrap();

    let report = checkov(&venv, &dir, &root);
    assert_eq!(
        report["summary"]["parsing_errors"], 0,
        "{}",
        report["summary"]
    );
    assert_eq!(
        report["summary"]["resource_count"], 6,
        "{}",
        report["summary"]
    );
    for case in &CASES {
        let failed = check_ids(&report, "failed_checks", case.mapping);
        assert!(failed.is_empty(), "{}: {failed:?}", case.mapping);
        let passed = check_ids(&report, "passed_checks", case.mapping);
        let skipped = check_ids(&report, "skipped_checks", case.mapping);
        for (id, resource) in IAM_CHECKS {
            assert!(
                passed.contains(&(id.to_owned(), resource.to_owned())),
                "{}: {id} on {resource} did not pass: passed {passed:?}",
                case.mapping
            );
        }
        let ckv_aws_61 = ("CKV_AWS_61".to_owned(), "aws_iam_role.credvend".to_owned());
        if case.principal == ACCOUNT {
            assert_eq!(skipped, vec![ckv_aws_61], "{}", case.mapping);
            let reason = report["results"]["skipped_checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["check_id"] == "CKV_AWS_61")
                .and_then(|c| c["check_result"]["suppress_comment"].as_str())
                .unwrap_or_default();
            assert!(reason.contains("sts:ExternalId"), "{reason:?}");
        } else {
            assert!(skipped.is_empty(), "{}: {skipped:?}", case.mapping);
            assert!(passed.contains(&ckv_aws_61), "{}: {passed:?}", case.mapping);
        }
    }
    let failed: Vec<String> = check_ids(&report, "failed_checks", "opened")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for id in ["CKV_AWS_60", "CKV_AWS_290", "CKV_AWS_355"] {
        assert!(
            failed.iter().any(|f| f == id),
            "{id} not failed on the opened module: {failed:?}"
        );
    }
}

// --- moto's CloudFormation ------------------------------------------------------------

/// Creates stack argv[3] from the template file argv[2] on moto (argv[1]) with the
/// parameters argv[4] (JSON object, may be empty) and bucket argv[5]; prints the
/// stack's status and outputs.
const CREATE_STACK_PY: &str = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1",
          aws_access_key_id="testing", aws_secret_access_key="testing")
s3 = boto3.client("s3", **kw)
if sys.argv[5] not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket=sys.argv[5])
cf = boto3.client("cloudformation", **kw)
params = [{"ParameterKey": k, "ParameterValue": v} for k, v in json.loads(sys.argv[4]).items()]
cf.create_stack(StackName=sys.argv[3], TemplateBody=open(sys.argv[2]).read(),
                Parameters=params, Capabilities=["CAPABILITY_NAMED_IAM"])
stack = cf.describe_stacks(StackName=sys.argv[3])["Stacks"][0]
print(json.dumps({"status": stack["StackStatus"],
                  "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}}))
"#;

/// Lets moto serve `count` more requests before it enforces IAM (`"inf"`: never).
fn moto_reset_auth(moto: &Moto, count: &str) {
    let reset = http_post_text(moto.addr, "/moto-api/reset-auth", count)
        .unwrap_or_else(|e| panic!("reset-auth: {e}"));
    assert_eq!(reset.status, 200, "reset-auth: {}", reset.body);
}

/// `credvend verify MAPPING --bucket BUCKET [--prefix P]` against moto with IAM
/// enforcement on for everything after the two enforcement probes and the AssumeRole
/// (moto's STS cannot be satisfied under enforcement). Returns the exit code and the
/// check lines.
fn verify_on_moto(
    dir: &TempDir,
    moto: &Moto,
    config: &Path,
    mapping: &str,
    bucket: &str,
    prefix: Option<&str>,
) -> (Option<i32>, Vec<String>) {
    moto_reset_auth(moto, "3");
    let mut command = Command::new(env!("CARGO_BIN_EXE_credvend"));
    command
        .args(["verify", mapping, "--config"])
        .arg(config)
        .args(["--bucket", bucket, "--s3-endpoint-url", &moto.url()])
        .env_clear()
        .envs(base_env(dir.path()))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    if let Some(prefix) = prefix {
        command.args(["--prefix", prefix]);
    }
    let out = run_bounded(
        command,
        dir.path(),
        &format!("verify-{mapping}"),
        TOOL_TIMEOUT,
    );
    moto_reset_auth(moto, "inf");
    assert!(out.status.is_some(), "verify {mapping}: {}", out.describe());
    let lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    // external-id, sts:AssumeRole and the five S3 checks.
    assert_eq!(lines.len(), 7, "verify {mapping}: {}", out.describe());
    (out.status.and_then(|s| s.code()), lines)
}

/// The line of check `name` (its second word).
fn check_line<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in {lines:#?}"))
}

/// The template, deployed as it is to moto's CloudFormation with its defaults, creates
/// the mapping's role (the stack's output is the mapping's role ARN), and `credvend
/// verify --bucket` then passes the assumption and all five S3 checks under moto's
/// IAM enforcement, with and without a prefix. The same template with `s3:PutObject`
/// cut from its permissions (deployed with RoleName set to another mapping's role)
/// fails exactly that check, naming the action and the resource to add it on. The
/// enforcement line fails throughout: moto accepts AssumeRole without the External ID
/// (see the module docs).
#[test]
fn cloudformation_stack_on_moto_creates_a_role_that_verify_passes() {
    let venv = Venv::locate();
    let dir = TempDir::new("onboard-cfn-moto");
    let moto = Moto::start(&venv, &dir);
    let config = write_config(&dir, Some(&moto.url()), &["full", "noput", "prefixed"]);
    let config_arg = config.display().to_string();
    let render = |mapping: &str, prefix: Option<&str>| -> (PathBuf, String) {
        let mut args = vec![
            "onboard",
            mapping,
            "--config",
            &config_arg,
            "--bucket",
            "bkt",
            "--principal",
            ACCOUNT,
            "--format",
            "cloudformation",
        ];
        if let Some(prefix) = prefix {
            args.extend(["--prefix", prefix]);
        }
        let out = credvend(&dir, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let file = dir.path().join(format!("{mapping}.yaml"));
        std::fs::write(&file, &out.stdout).unwrap();
        (file, text(&out.stdout))
    };
    let deploy = |stack: &str, file: &Path, parameters: Value| {
        let got = python_json(
            &venv,
            &dir,
            &format!("stack-{stack}"),
            CREATE_STACK_PY,
            &[
                &moto.url(),
                file.to_str().unwrap(),
                stack,
                &parameters.to_string(),
                "bkt",
            ],
        );
        assert_eq!(got["status"], "CREATE_COMPLETE", "{stack}: {got}");
        got["outputs"]["RoleArn"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let assert_enforcement_line_is_motos = |lines: &[String]| {
        let line = check_line(lines, "external-id");
        assert!(
            line.starts_with("FAIL") && line.contains("NOT ENFORCED"),
            "{lines:#?}"
        );
    };

    // As rendered, defaults only.
    let (full, _) = render("full", None);
    let role = deploy("credvend-full", &full, serde_json::json!({}));
    assert_eq!(role, format!("arn:aws:iam::{ACCOUNT}:role/full"));
    let (code, lines) = verify_on_moto(&dir, &moto, &config, "full", "bkt", None);
    assert_eq!(code, Some(1), "only the enforcement line fails: {lines:#?}");
    assert_enforcement_line_is_motos(&lines);
    for check in lines.iter().skip(1) {
        assert!(check.starts_with("ok"), "{lines:#?}");
    }
    assert!(
        check_line(&lines, "sts:AssumeRole").contains("assumed-role/full/"),
        "{lines:#?}"
    );

    // With a prefix: the probe goes under it, and the policy grants exactly that.
    let (prefixed, _) = render("prefixed", Some("sync/"));
    let role = deploy("credvend-prefixed", &prefixed, serde_json::json!({}));
    assert_eq!(role, format!("arn:aws:iam::{ACCOUNT}:role/prefixed"));
    let (code, lines) = verify_on_moto(&dir, &moto, &config, "prefixed", "bkt", Some("sync"));
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_enforcement_line_is_motos(&lines);
    for check in lines.iter().skip(1) {
        assert!(check.starts_with("ok"), "{lines:#?}");
    }
    assert!(
        check_line(&lines, "s3:PutObject").contains("wrote s3://bkt/sync/.credvend-verify/"),
        "{lines:#?}"
    );

    // One action cut from the permissions, the role named by the RoleName parameter:
    // verify names the action.
    let template = std::fs::read_to_string(&full).unwrap();
    let cut: Vec<&str> = template
        .lines()
        .filter(|l| l.trim() != "- \"s3:PutObject\"")
        .collect();
    assert_eq!(
        cut.len() + 1,
        template.lines().count(),
        "exactly one s3:PutObject line:\n{template}"
    );
    let edited = dir.path().join("noput-edited.yaml");
    std::fs::write(&edited, cut.join("\n") + "\n").unwrap();
    let role = deploy(
        "credvend-noput",
        &edited,
        serde_json::json!({"RoleName": "noput"}),
    );
    assert_eq!(role, format!("arn:aws:iam::{ACCOUNT}:role/noput"));
    let (code, lines) = verify_on_moto(&dir, &moto, &config, "noput", "bkt", None);
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(
        check_line(&lines, "sts:AssumeRole").starts_with("ok"),
        "{lines:#?}"
    );
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.starts_with("FAIL")
                && l.split_whitespace()
                    .nth(1)
                    .is_some_and(|c| c.starts_with("s3:"))
        })
        .collect();
    assert_eq!(failed.len(), 1, "exactly one S3 failure: {lines:#?}");
    assert!(
        failed[0].contains("s3:PutObject")
            && failed[0].contains("AccessDenied")
            && failed[0].contains(r#"add "s3:PutObject" on "arn:aws:s3:::bkt/*""#),
        "{lines:#?}"
    );
}
