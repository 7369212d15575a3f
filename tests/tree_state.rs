//! `scripts/tree-state.sh`, which `scripts/test.sh` and `scripts/demo.sh` use to fail a run
//! that leaves the working tree different from how it found it: it notices a rewritten,
//! added, deleted or `chmod`ed file, and not local edits made before the run. Run in a
//! scratch git repository, never in this one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch repository holding a copy of the script, one committed file and an
/// ignored folder; removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(self.state_file());
    }
}

impl Scratch {
    fn new() -> Scratch {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("credvend-tree-state-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        let root = dir.as_path();
        std::fs::create_dir(root.join("scripts")).unwrap();
        std::fs::copy(
            repo_root().join("scripts/tree-state.sh"),
            root.join("scripts/tree-state.sh"),
        )
        .expect("copy scripts/tree-state.sh");
        std::fs::write(root.join("config.toml"), "a = 1\n").unwrap();
        std::fs::set_permissions(
            root.join("config.toml"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::write(root.join(".gitignore"), "/.tools\n").unwrap();
        git(root, &["init", "-q"]);
        git(root, &["add", "-A"]);
        git(root, &["commit", "-q", "-m", "init"]);
        Scratch(dir)
    }

    /// Outside the scratch tree, as `mktemp` puts it in the scripts.
    fn state_file(&self) -> PathBuf {
        self.0.with_extension("state")
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn run(&self, command: &str) -> Output {
        Command::new("bash")
            .arg(self.path().join("scripts/tree-state.sh"))
            .arg(command)
            .arg(self.state_file())
            .output()
            .expect("run tree-state.sh")
    }

    fn save(&self) {
        let out = self.run("save");
        assert!(out.status.success(), "save: {out:?}");
    }

    /// `check`'s exit success and its stderr.
    fn check(&self) -> (bool, String) {
        let out = self.run("check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn an_untouched_tree_passes_and_local_edits_made_before_the_run_are_fine() {
    let s = Scratch::new();
    // A developer's uncommitted edit and untracked file, present before the run.
    std::fs::write(s.path().join("config.toml"), "a = 2\n").unwrap();
    std::fs::write(s.path().join("notes.txt"), "mine\n").unwrap();
    s.save();
    // Writes into ignored folders are what a run may do.
    std::fs::create_dir(s.path().join(".tools")).unwrap();
    std::fs::write(s.path().join(".tools/log"), "x").unwrap();
    let (ok, stderr) = s.check();
    assert!(ok, "an unchanged tree must pass: {stderr}");
}

#[test]
fn a_chmod_of_a_tracked_file_fails_the_check_naming_it() {
    let s = Scratch::new();
    s.save();
    std::fs::set_permissions(
        s.path().join("config.toml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // git itself sees nothing: it records only the executable bit.
    let status = Command::new("git")
        .arg("-C")
        .arg(s.path())
        .args(["status", "--porcelain"])
        .output()
        .unwrap();
    assert!(
        status.stdout.is_empty(),
        "git status should not see a 0600 chmod"
    );
    let (ok, stderr) = s.check();
    assert!(!ok, "a chmod of a tracked file must fail the check");
    assert!(
        stderr.contains("-644 config.toml") && stderr.contains("+600 config.toml"),
        "the check should show the mode change: {stderr}"
    );
}

#[test]
fn a_rewritten_or_added_file_fails_the_check_naming_it() {
    for (what, change) in [
        (
            "rewritten",
            &(|p: &Path| std::fs::write(p.join("config.toml"), "a = 3\n").unwrap())
                as &dyn Fn(&Path),
        ),
        ("added", &|p: &Path| {
            std::fs::write(p.join("stray.out"), "x").unwrap()
        }),
        ("deleted", &|p: &Path| {
            std::fs::remove_file(p.join("config.toml")).unwrap()
        }),
    ] {
        let s = Scratch::new();
        s.save();
        change(s.path());
        let (ok, stderr) = s.check();
        assert!(!ok, "a {what} file must fail the check");
        assert!(
            stderr.contains("the run changed the working tree")
                && (stderr.contains("config.toml") || stderr.contains("stray.out")),
            "the check should name the {what} file: {stderr}"
        );
    }
}

/// Both set-up commands save the state before their run and check it after.
#[test]
fn test_sh_and_demo_sh_check_the_tree() {
    for script in ["scripts/test.sh", "scripts/demo.sh"] {
        let text = std::fs::read_to_string(repo_root().join(script)).unwrap();
        let save = text.find("scripts/tree-state.sh save");
        let check = text.find("scripts/tree-state.sh check");
        assert!(
            matches!((save, check), (Some(s), Some(c)) if s < c),
            "{script} must run `scripts/tree-state.sh save` before its work and `check` after"
        );
        assert!(
            !text.contains("chmod 600 \"$config\""),
            "{script} chmods the committed config; serve a private copy instead"
        );
    }
}
