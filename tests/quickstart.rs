//! The README's worked example, run as written: the block marked
//! `<!-- quickstart: … -->` in README.md, "Two customers, step by step" (the same block
//! is in docs/quickstart.md) is taken from the file and run with bash, so the README
//! cannot drift from what works.
//!
//! The only substitutions are the values the README sets in its own preparation block
//! (`DIR`, `PORT`, `ADMIN_PORT`: a temp directory and free ports) and where the tools
//! are: `PATH` starts with the directory of the `credvend` built for this test run and
//! the venv's `bin/` (moto, the AWS CLI), `MOTO_STATE_DIR` keeps `scripts/moto.sh`'s
//! state in the temp directory, `TEST_VENV` names the venv. Nothing else is inherited
//! but `PATH`: no `AWS_*` or `CREDVEND_*` variable of the test's own environment.
//!
//! The script runs in a process group of its own that is killed when the test ends, so
//! a failure part-way leaves neither moto nor credvend running.

mod support;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::e2e::{
    Outcome, TempDir, Venv, base_env, create_file, free_loopback_addr, read_lossy, repo_root,
};

/// The marker line right before the block the test runs.
const MARKER: &str = "<!-- quickstart:";
/// Building nothing, starting moto and credvend, two AWS CLI runs: generous for a
/// loaded 2-core machine, and a hang still fails.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

/// The marked ```sh block of `file`: the lines between the fence after [`MARKER`] and
/// the closing fence.
fn marked_block(file: &Path) -> String {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let mut lines = text.lines().skip_while(|l| !l.starts_with(MARKER));
    assert!(
        lines.next().is_some(),
        "{} has no line starting with `{MARKER}`",
        file.display()
    );
    assert_eq!(
        lines.next(),
        Some("```sh"),
        "{}: the marker must be followed by a ```sh fence",
        file.display()
    );
    let block: Vec<&str> = lines.take_while(|l| *l != "```").collect();
    assert!(
        !block.is_empty(),
        "{}: the marked block is empty",
        file.display()
    );
    block.join("\n") + "\n"
}

/// Kills a process group (the script, moto and credvend) when dropped.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Runs `command` (a process group leader) to completion, stdout and stderr in
/// `dir/quickstart.out` / `.err`, killed after [`SCRIPT_TIMEOUT`]; its whole group is
/// killed afterwards, whatever happened (the script's last line stops its servers when
/// it gets there).
fn run_in_own_group(mut command: Command, dir: &Path) -> Outcome {
    let (out, err) = (dir.join("quickstart.out"), dir.join("quickstart.err"));
    command
        .stdin(std::process::Stdio::null())
        .stdout(create_file(&out))
        .stderr(create_file(&err));
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start bash: {e}"));
    let _group = GroupGuard(child.id());
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Outcome {
        status,
        stdout: read_lossy(&out),
        stderr: read_lossy(&err),
        elapsed: started.elapsed(),
    }
}

#[test]
fn readme_two_customer_example_runs_as_written() {
    let readme = marked_block(&repo_root().join("README.md"));
    let page = marked_block(&repo_root().join("docs/quickstart.md"));
    assert_eq!(
        readme, page,
        "the worked example differs between README.md and docs/quickstart.md"
    );

    let venv = Venv::locate();
    let venv_bin = venv.bin("aws").parent().unwrap().to_path_buf();
    let tmp = TempDir::new("quickstart");
    let dir = tmp.path().join("etc");
    let (port, admin_port) = loop {
        let (a, b) = (free_loopback_addr().port(), free_loopback_addr().port());
        if a != b {
            break (a, b);
        }
    };
    let credvend_dir = PathBuf::from(env!("CARGO_BIN_EXE_credvend"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = std::env::join_paths([credvend_dir, venv_bin.clone()].into_iter().chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let script = tmp.path().join("quickstart.sh");
    std::fs::write(&script, format!("set -euo pipefail\n{readme}")).unwrap();

    let mut command = Command::new("bash");
    command
        .arg(&script)
        .current_dir(repo_root())
        .env_clear()
        .envs(base_env(tmp.path()))
        .env("PATH", path)
        .env("DIR", &dir)
        .env("PORT", port.to_string())
        .env("ADMIN_PORT", admin_port.to_string())
        .env("MOTO_STATE_DIR", tmp.path().join("moto"))
        .env("TEST_VENV", venv_bin.parent().unwrap())
        .process_group(0);
    let outcome = run_in_own_group(command, tmp.path());
    let log = read_lossy(&dir.join("credvend.log"));
    let context = format!(
        "{}\n--- credvend.log ---\n{log}\n--- moto log ---\n{}",
        outcome.describe(),
        read_lossy(&tmp.path().join("moto/moto.log"))
    );
    assert!(
        outcome.success(),
        "the README's commands failed:\n{context}"
    );

    // The JSON documents the script printed, in order: each starts on a line of its own.
    let mut offset = 0;
    let mut documents = Vec::new();
    for line in outcome.stdout.split_inclusive('\n') {
        if line.starts_with('{') {
            let mut stream = serde_json::Deserializer::from_str(&outcome.stdout[offset..])
                .into_iter::<serde_json::Value>();
            if let Some(Ok(document)) = stream.next() {
                documents.push(document);
            }
        }
        offset += line.len();
    }
    // Each customer's worker ran as that customer's role, in the README's order.
    let arns: Vec<&str> = documents.iter().filter_map(|d| d["Arn"].as_str()).collect();
    assert_eq!(
        arns,
        [
            "arn:aws:sts::111122223333:assumed-role/acme-sync/credvend-acme",
            "arn:aws:sts::444455556666:assumed-role/globex-sync/credvend-globex",
        ],
        "get-caller-identity answers:\n{context}"
    );
    let status = documents
        .iter()
        .find(|d| d.get("mappings").is_some())
        .unwrap_or_else(|| panic!("no /status document in the output:\n{context}"));
    let mappings = status["mappings"]
        .as_object()
        .unwrap_or_else(|| panic!("/status has no mappings object: {status}"));
    let names: Vec<&String> = mappings.keys().collect();
    assert_eq!(names, ["acme", "globex"], "{status}");
    for (name, entry) in mappings {
        assert_eq!(entry["state"], "fresh", "{name}: {status}");
        // moto cannot enforce External IDs: the README's `--enforcement warn` is why
        // these were served at all.
        assert_eq!(
            entry["external_id_enforcement"]["mode"], "warn",
            "{name}: {status}"
        );
    }
    // The tokens went to the shell only: neither the log nor /status has them.
    assert!(!log.contains("AWS_CONTAINER_AUTHORIZATION_TOKEN"), "{log}");
}
