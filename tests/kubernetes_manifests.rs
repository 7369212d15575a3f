//! `deploy/kubernetes/` is valid Kubernetes and agrees with the config it ships.
//!
//! `tests/kubernetes/validate_manifests.py` (run with the project venv's Python, which
//! has the pinned official `kubernetes` client: scripts/python-requirements.txt) walks
//! every object against the client's models, generated from the API's OpenAPI schema, so
//! an unknown or misplaced field or a wrong type fails; the Kustomization and the
//! PodMonitor (a CRD the client has no model for) are checked against small allow-lists.
//! It then checks the manifests against the config Secret (ports, probe paths, the
//! worker's URL and token hash, the hardening). This test runs it on the shipped
//! manifests, on mutated copies (each mutation must fail, naming what is wrong), and runs
//! `credvend check-config` on the config Secret's files with the container's
//! `CREDVEND_*` environment.
//!
//! A missing venv fails the test (with how to make one): a skipped check proves nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "credvend-k8s-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        // 0700 whatever the umask: under umask 002 the directory would be group-writable,
        // and credvend refuses configuration in a directory others could write to.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn manifests() -> PathBuf {
    repo("deploy/kubernetes")
}

/// `<repo>/.venv/bin/python`, or `TEST_VENV`'s (as tests/support/e2e.rs), with the
/// `kubernetes` client importable.
fn python() -> PathBuf {
    let root = std::env::var_os("TEST_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo(".venv"));
    let python = root.join("bin/python");
    let hint = "run scripts/setup-python.sh (scripts/test.sh does it for you) or set TEST_VENV \
                to a venv with the packages in scripts/python-requirements.txt";
    assert!(python.is_file(), "{} is missing: {hint}", python.display());
    let check = Command::new(&python)
        .args(["-c", "import kubernetes.client, yaml"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        check.status.success(),
        "{} cannot import the kubernetes client: {}\n{hint}",
        python.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    python
}

fn validate(dir: &Path, extra: &[&str]) -> Output {
    Command::new(python())
        .arg(repo("tests/kubernetes/validate_manifests.py"))
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run validate_manifests.py")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A copy of the manifests with `file`'s `from` replaced by `to` (which must occur).
fn mutated(file: &str, from: &str, to: &str) -> TempDir {
    let dir = TempDir::new("mutated");
    for entry in fs::read_dir(manifests()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join(file);
    let original = fs::read_to_string(&path).unwrap();
    assert_eq!(
        original.matches(from).count(),
        1,
        "mutation {from:?} must occur exactly once in {file}"
    );
    fs::write(&path, original.replacen(from, to, 1)).unwrap();
    dir
}

#[test]
fn shipped_manifests_are_valid_and_agree_with_their_config() {
    let out = validate(&manifests(), &[]);
    assert!(
        out.status.success(),
        "deploy/kubernetes/ is invalid:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // Every manifest was read: the directory holds what the docs say it does.
    for file in [
        "kustomization.yaml",
        "serviceaccount.yaml",
        "secret-config.yaml",
        "secret-worker-token.yaml",
        "deployment.yaml",
        "podmonitor.yaml",
    ] {
        assert!(manifests().join(file).is_file(), "{file} is missing");
    }
}

/// Each mutation must be refused with a message containing the given text: the
/// validator is strict about names, places and types, and about agreement with the
/// config.
#[test]
fn misspelt_misplaced_or_inconsistent_fields_fail() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // A misspelt field.
        (
            "deployment.yaml",
            "          readinessProbe:",
            "          readinesProbe:",
            "unknown field 'readinesProbe' in V1Container",
        ),
        // A real field in the wrong place: readOnlyRootFilesystem is a container's
        // securityContext field, not the pod's.
        (
            "deployment.yaml",
            "        fsGroup: 65532",
            "        fsGroup: 65532\n        readOnlyRootFilesystem: true",
            "unknown field 'readOnlyRootFilesystem' in V1PodSecurityContext",
        ),
        // A wrong type.
        (
            "deployment.yaml",
            "containerPort: 8902",
            "containerPort: \"8902\"",
            "containerPort: expected int, got str",
        ),
        // A required field missing.
        (
            "deployment.yaml",
            "              containerPort: 8902\n",
            "",
            "Invalid value for `container_port`, must not be `None`",
        ),
        // A misspelt field in a hand-checked kind (the PodMonitor CRD).
        (
            "podmonitor.yaml",
            "podMetricsEndpoints:",
            "podMetricEndpoints:",
            "unknown field 'podMetricEndpoints'",
        ),
        // Agreement with the config: a probe on another port than admin_listen's.
        (
            "secret-config.yaml",
            "admin_listen = \"0.0.0.0:8902\"",
            "admin_listen = \"0.0.0.0:9902\"",
            "no containerPort 9902 (admin_listen)",
        ),
        // The worker's URL on a port credvend does not listen on.
        (
            "deployment.yaml",
            "http://127.0.0.1:8901/v1/credentials/acme-s3",
            "http://127.0.0.1:8911/v1/credentials/acme-s3",
            "is not on a listen address",
        ),
        // The worker's URL naming a mapping the config lacks.
        (
            "deployment.yaml",
            "/v1/credentials/acme-s3",
            "/v1/credentials/acme-s4",
            "names no configured mapping",
        ),
        // A token whose hash the mapping does not list.
        (
            "secret-worker-token.yaml",
            "  token: 0",
            "  token: 1",
            "SHA-256 is not in mapping acme-s3's token_sha256",
        ),
        // Readiness on the liveness endpoint.
        (
            "deployment.yaml",
            "              path: /readyz\n              port: admin\n            periodSeconds: 5",
            "              path: /healthz\n              port: admin\n            periodSeconds: 5",
            "readinessProbe: path /healthz should be /readyz",
        ),
        // Not a native sidecar.
        (
            "deployment.yaml",
            "          restartPolicy: Always\n",
            "",
            "not a native sidecar",
        ),
        // Hardening lost.
        (
            "deployment.yaml",
            "            runAsGroup: 65532\n            readOnlyRootFilesystem: true",
            "            runAsGroup: 65532\n            readOnlyRootFilesystem: false",
            "credvend.securityContext: readOnlyRootFilesystem must be true",
        ),
    ];
    let dirs: Vec<TempDir> = cases
        .iter()
        .map(|(file, from, to, _)| mutated(file, from, to))
        .collect();
    // One interpreter for all of them: `--each` reports "== DIR" then its errors.
    let mut args = vec!["--each".to_string()];
    args.extend(dirs.iter().map(|d| d.path().display().to_string()));
    let out = Command::new(python())
        .arg(repo("tests/kubernetes/validate_manifests.py"))
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run validate_manifests.py --each");
    assert!(
        out.status.success(),
        "--each failed:\n{}",
        text(&out.stderr)
    );
    let report = text(&out.stdout);
    let mut failures = Vec::new();
    for ((file, from, to, expect), dir) in cases.iter().zip(&dirs) {
        let header = format!("== {}\n", dir.path().display());
        let Some(start) = report.find(&header) else {
            failures.push(format!("{file}: no report for {}", dir.path().display()));
            continue;
        };
        let rest = &report[start + header.len()..];
        let errors = &rest[..rest.find("== ").unwrap_or(rest.len())];
        if errors.is_empty() || !errors.contains(expect) {
            failures.push(format!(
                "{file}: {from:?} -> {to:?}: expected a failure containing {expect:?}, got:\n{errors}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The config Secret's files, laid out as the pod mounts them, with the credvend
/// container's `CREDVEND_*` environment, pass `credvend check-config`.
#[test]
fn the_config_secret_passes_check_config() {
    let dir = TempDir::new("config");
    let out = validate(
        &manifests(),
        &["--extract-config", dir.path().to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "validate_manifests.py --extract-config failed:\n{}",
        text(&out.stderr)
    );
    let mut files: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["credvend.toml", "mapping-acme-s3.toml"]);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credvend"));
    cmd.args(["check-config", "--config"])
        .arg(dir.path().join("credvend.toml"))
        .stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CREDVEND_") {
            cmd.env_remove(name);
        }
    }
    let env = text(&out.stdout);
    let mut set = Vec::new();
    for line in env.lines() {
        let (name, value) = line.split_once('=').expect("NAME=VALUE");
        cmd.env(name, value);
        set.push(name.to_string());
    }
    assert_eq!(
        set,
        ["CREDVEND_CONTROL__SOCKET"],
        "the container's CREDVEND_* variables"
    );
    let checked = cmd.output().expect("run credvend check-config");
    assert!(
        checked.status.success(),
        "credvend check-config refuses the config Secret:\n{}{}",
        text(&checked.stdout),
        text(&checked.stderr)
    );

    // It really read the included mapping: break its token hash and it must say so.
    let mapping = dir.path().join("mapping-acme-s3.toml");
    let original = fs::read_to_string(&mapping).unwrap();
    fs::write(&mapping, original.replace("f86bec86", "zz")).unwrap();
    let broken = cmd.output().expect("run credvend check-config");
    let stderr = text(&broken.stderr) + &text(&broken.stdout);
    assert_eq!(
        broken.status.code(),
        Some(64),
        "check-config accepted a broken hash:\n{stderr}"
    );
    assert!(
        stderr.contains("mapping-acme-s3.toml") && stderr.contains("token_sha256"),
        "check-config's error names the included file and key:\n{stderr}"
    );
}
