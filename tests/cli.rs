//! The `credvend` binary as an operator uses it: exit codes, messages, signals.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use credvend::secret::TokenHash;
use support::config_file::{loopback_server_toml, sts_and_acme_toml};

const BIN: &str = env!("CARGO_BIN_EXE_credvend");

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "credvend-cli-{label}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `credvend check-config --config <config>`, with no `CREDVEND_CONFIG` inherited.
fn check_config(config: impl AsRef<std::ffi::OsStr>) -> std::process::Output {
    Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(config)
        .env_remove("CREDVEND_CONFIG")
        .output()
        .unwrap()
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn hash(token: &str) -> String {
    TokenHash::of_token(token.as_bytes()).to_hex()
}

#[test]
fn check_config_reports_every_problem_with_file_and_key_and_exits_64() {
    let scratch = Scratch::new("bad");
    let shared = hash("shared-token");
    let path = scratch.write(
        "credvend.toml",
        &format!(
            r#"
[server]
listen = ["127.0.0.1:8901"]
colour = "blue"

[mappings.acme-s3]
role_arn = "arn:aws:iam::111122223333:role/vendor-sync"
external_id = "acme-external-id-0123456789"
token_sha256 = ["{shared}"]
session_duration = "15m"

[mappings.beta-s3]
role_arn = "arn:aws:iam::12345:rol/broken"
external_id = "beta-external-id-0123456789"
token_sha256 = ["{shared}"]
"#
        ),
    );
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    let file = path.display().to_string();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(&file)).collect();
    let find = |key: &str| {
        lines
            .iter()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no problem line for {key} in:\n{stderr}"))
            .to_string()
    };
    assert!(
        find("colour").contains("server"),
        "unknown key names its section"
    );
    assert!(find("role_arn").contains("beta-s3"));
    let session = find("session_duration");
    assert!(session.contains("acme-s3") && session.contains("refresh_before"));
    let shared_line = find("token_sha256");
    assert!(shared_line.contains("acme-s3") && shared_line.contains("beta-s3"));
    assert!(
        !stderr.contains("external-id-0123456789"),
        "External ID leaked: {stderr}"
    );
}

/// Exposing the admin listener beyond loopback is its own switch: the credential
/// listener's `allow_non_loopback` does not open it (exit 64, naming the file, the key
/// and the switch), `admin_allow_non_loopback` does, and it does not open the credential
/// listener in turn.
#[test]
fn a_non_loopback_admin_listener_needs_its_own_switch() {
    let scratch = Scratch::new("admin-switch");
    let token = hash("admin-switch-token");
    let check = |name: &str, server: &str| {
        let path = scratch.write(
            name,
            &format!(
                "[server]\n{server}\n\n[mappings.acme-s3]\n\
                 role_arn = \"arn:aws:iam::111122223333:role/vendor-sync\"\n\
                 external_id = \"acme-external-id-0123456789\"\n\
                 token_sha256 = [\"{token}\"]\n"
            ),
        );
        let out = check_config(&path);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), path.display().to_string(), stderr)
    };

    // Refused (64) with a line naming the file and every one of `parts`.
    let refused = |name: &str, server: &str, parts: &[&str], missing: &str| {
        let (code, file, stderr) = check(name, server);
        assert_eq!(code, Some(64), "stderr: {stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&file) && parts.iter().all(|p| l.contains(p))),
            "no {missing} in:\n{stderr}"
        );
    };

    refused(
        "credential-switch.toml",
        "allow_non_loopback = true\nadmin_listen = \"0.0.0.0:8902\"",
        &[
            "server.admin_listen",
            "0.0.0.0:8902 is not a loopback address",
            "server.admin_allow_non_loopback = true",
        ],
        "FILE: server.admin_listen: REASON line naming the admin switch",
    );

    let (code, _, stderr) = check(
        "admin-switch.toml",
        "admin_allow_non_loopback = true\nadmin_listen = \"0.0.0.0:8902\"",
    );
    assert_eq!(code, Some(0), "stderr: {stderr}");

    refused(
        "admin-switch-listen.toml",
        "admin_allow_non_loopback = true\nlisten = [\"0.0.0.0:8901\"]",
        &["server.listen", "server.allow_non_loopback = true"],
        "FILE: server.listen: REASON line naming the credential switch",
    );
}

/// The example must not be installed unchanged: `check-config` refuses it, naming its
/// two placeholders and nothing else; filled in, it is accepted and summarised.
#[test]
fn check_config_refuses_the_example_naming_its_placeholders() {
    let (_dir, example) = private_copy_of_the_example();
    let out = check_config(&example);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    let file = example.display().to_string();
    let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&file)).collect();
    assert_eq!(
        problems,
        [
            format!(
                "{file}: mappings.acme-s3.external_id: a placeholder, not an External ID (it \
                 contains \"replaceme\"): generate one with `credvend external-id new` (or \
                 write the whole mapping with `credvend mapping new`) and give it to the \
                 customer for their trust policy"
            ),
            format!(
                "{file}: mappings.acme-s3.token_sha256: entry 1: a placeholder, not a token \
                 hash (it contains \"replaceme\"): `credvend token new` prints a token and \
                 its hash"
            ),
        ],
        "stderr: {stderr}"
    );

    let (_dir, filled_in) = private_copy_of_the_example_filled_in();
    let out = check_config(&filled_in);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("mapping acme-s3 "), "{stdout}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(!stdout.contains(FILLED_IN_EXTERNAL_ID), "{stdout}");
}

/// A `CREDVEND_*` variable that is not a config override (a script's own) does not stop
/// credvend: a warning names it. A misspelt override still fails, naming its variable.
#[test]
fn unrelated_credvend_variables_are_warned_about_not_fatal() {
    let (_dir, config) = private_copy_of_the_example_filled_in();
    let check = |vars: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&config)
            .env_remove("CREDVEND_CONFIG")
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check(&[
        ("CREDVEND_BIN", "/usr/local/bin/credvend"),
        ("CREDVEND_TEST_VENV", "/srv/venv"),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    for name in ["CREDVEND_BIN", "CREDVEND_TEST_VENV"] {
        assert!(
            stderr.contains(&format!(
                "warning: environment variable {name}: ignored: not a configuration override"
            )),
            "{stderr}"
        );
    }
    let (code, stderr) = check(&[("CREDVEND_SERVER__LISTN", "127.0.0.1:1")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("environment variable CREDVEND_SERVER__LISTN: server.listn: unknown key"),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_a_config_file_other_users_could_write() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("writable");
    let path = scratch.write(
        "credvend.toml",
        &format!(
            r#"
[mappings.acme-s3]
role_arn = "arn:aws:iam::111122223333:role/vendor-sync"
external_id = "acme-external-id-0123456789"
token_sha256 = ["{}"]
"#,
            hash("t")
        ),
    );
    let check = || {
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check();
    assert_eq!(code, Some(0), "{stderr}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, stderr) = check();
    assert_eq!(code, Some(64), "{stderr}");
    let shown = std::fs::canonicalize(&path).unwrap().display().to_string();
    assert!(
        stderr.contains(&format!(
            "{}: {} is writable by group or others (mode 0666)",
            path.display(),
            path.display()
        )) && stderr.contains(&format!("run `chmod go-w {shown}`")),
        "{stderr}"
    );
    assert!(!stderr.contains("acme-external-id"), "{stderr}");
}

#[test]
fn missing_config_file_is_a_configuration_error() {
    let out = Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent/credvend.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/credvend.toml"));
}

#[test]
fn credvend_config_names_the_config_file_when_config_is_not_given() {
    // A valid config read through the variable: check-config accepts it.
    let (_dir, example) = private_copy_of_the_example_filled_in();
    let out = Command::new(BIN)
        .arg("check-config")
        .env("CREDVEND_CONFIG", &example)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A file that is not there: the error names the variable's path, not the default.
    let out = Command::new(BIN)
        .arg("check-config")
        .env("CREDVEND_CONFIG", "/nonexistent/from-env.toml")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains("/nonexistent/from-env.toml"),
        "stderr: {stderr}"
    );
}

#[test]
fn token_new_prints_a_256_bit_token_and_its_hash_line() {
    let out = Command::new(BIN).args(["token", "new"]).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let token = lines.next().unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        lines.next().unwrap(),
        format!("token_sha256 = [\"{}\"]", hash(token))
    );
    let again = Command::new(BIN).args(["token", "new"]).output().unwrap();
    assert_ne!(String::from_utf8(again.stdout).unwrap(), stdout);
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("credvend {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Two distinct free loopback ports: both probes stay bound until both are read, so the
/// kernel cannot hand out the same port twice.
fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (bind(), bind());
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// `credvend serve --config <config>` with placeholder static AWS keys and no instance
/// metadata lookup.
fn serve_command(config: &std::path::Path) -> Command {
    let mut serve = Command::new(BIN);
    serve
        .args(["serve", "--config"])
        .arg(config)
        .env("AWS_ACCESS_KEY_ID", "AKIATEST")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    serve
}

/// `credvend.toml` in `scratch`: loopback listeners on `port` and `admin`, an STS
/// endpoint nothing answers on, and mapping `acme-s3` for `token`.
fn write_acme_config(scratch: &Scratch, port: u16, admin: u16, token: &str) -> PathBuf {
    scratch.write(
        "credvend.toml",
        &(loopback_server_toml(port, admin)
            + &sts_and_acme_toml("http://127.0.0.1:9", "acme-external-id-0123456789", token)),
    )
}

#[test]
fn serve_exits_0_on_sigterm_after_binding() {
    let scratch = Scratch::new("serve");
    let (port, admin) = free_ports();
    let path = write_acme_config(&scratch, port, admin, "t");
    let mut child = serve_command(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        if let Some(exit) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("credvend exited ({exit}) before its admin listener came up: {stderr}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("admin listener never came up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("credvend did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(exit.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

/// The binary's allocator is jemalloc, set up to give freed heap back: once the start-up
/// load is done every arena is purged (a debug line says how many), and its background
/// purging is on (a failure to set it up is a warning, which must not appear).
#[test]
fn serve_gives_the_start_up_loads_freed_heap_back() {
    let scratch = Scratch::new("heap");
    let (port, admin) = free_ports();
    let path = write_acme_config(&scratch, port, admin, "t");
    let mut child = serve_command(&path)
        .env("RUST_LOG", "credvend=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let line = stderr
        .lines()
        .find(|line| line.contains("Freed heap given back after the start-up load"))
        .unwrap_or_else(|| panic!("no release after the start-up load: {stderr}"));
    let arenas: u32 = line
        .split("arenas=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no arena count: {line}"));
    assert!(arenas >= 1, "{line}");
    assert!(!stderr.contains("Cannot set up the allocator"), "{stderr}");
}

/// A port already taken: `serve` exits 1 and says which listener (its config key and
/// address) could not be bound, with the OS error once. Both listeners, one at a time.
#[test]
fn serve_names_the_listener_it_cannot_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let (free, _) = free_ports();
    for (key, port, admin) in [
        ("server.listen", taken_port, free),
        ("server.admin_listen", free, taken_port),
    ] {
        let scratch = Scratch::new("bind-clash");
        let path = write_acme_config(&scratch, port, admin, "t");
        let out = serve_command(&path).stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("credvend: "))
            .unwrap_or_else(|| panic!("{key}: no error line: {stderr}"));
        assert!(
            line.contains(&format!("cannot listen on 127.0.0.1:{taken_port} ({key})")),
            "{line}"
        );
        assert_eq!(
            line.matches("ddress already in use").count(),
            1,
            "the OS error once: {line}"
        );
    }
    drop(taken);
}

/// Without AWS credentials of its own, `serve` still starts (they may appear later),
/// but says so: a WARN at start naming the problem, `/readyz` 503 with a reason,
/// `/status` `base_identity` unavailable, and a worker's 503 that tells whoever reads
/// it where the fault is (and no more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_base_credentials_says_so_in_the_log_readyz_status_and_the_503() {
    use support::http::{get_with_token, request};
    let scratch = Scratch::new("no-base-creds");
    let (port, admin) = free_ports();
    let token = "no-base-credentials-token";
    let path = write_acme_config(&scratch, port, admin, token);
    let log = scratch.0.join("stderr.log");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &scratch.0)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _reaped = Reaped(child);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let admin_addr: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();
    let listen_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();

    // /readyz turns 503 with the reason once the background check has run.
    let deadline = Instant::now() + Duration::from_secs(60);
    let readyz = loop {
        if tokio::net::TcpStream::connect(admin_addr).await.is_ok() {
            let r = request(admin_addr, "GET", "/readyz", &[]).await;
            if r.body.contains("no base AWS credentials") {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never unready; log:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert_eq!(readyz.json()["status"], "unavailable", "{}", readyz.body);

    let status = request(admin_addr, "GET", "/status", &[]).await.json();
    let identity = &status["base_identity"];
    assert_eq!(identity["state"], "unavailable", "{status}");
    assert_eq!(identity["last_error"]["reason"], "no_base_credentials");
    assert_eq!(identity["last_error"]["code"], "BaseCredentialsUnavailable");
    assert_eq!(
        identity["last_error"]["problem"],
        "credvend has no AWS credentials of its own to call STS with"
    );

    let warned = log_text();
    assert!(
        warned.lines().any(|l| l.contains("WARN")
            && l.contains("Cannot confirm credvend's own AWS identity")
            && l.contains("no_base_credentials")),
        "{warned}"
    );

    let r = get_with_token(listen_addr, "/v1/credentials/acme-s3", token).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let body = r.json();
    assert_eq!(body["code"], "CredentialsUnavailable");
    assert_eq!(
        body["message"],
        "credentials for mapping 'acme-s3' are not available yet: credvend has no AWS credentials of its own to call STS with (see its log)",
        "{}",
        r.body
    );
}

/// Kills and reaps a child when dropped, so a failed assertion leaves no process behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `credvend serve` marks itself non-dumpable (no core dump can hold its secrets). The
/// kernel shows it: the private files under `/proc/<pid>/` (`environ`, `mem`, `fd`) of a
/// non-dumpable process belong to root, those of a dumpable one to the process's user
/// (proc(5)). So both run as a user other than root (`nobody` when the test itself runs
/// as root), and `sleep`, run the same way, shows the probe telling the two apart.
#[cfg(target_os = "linux")]
#[test]
fn serve_is_not_dumpable() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    let me = rustix::process::geteuid().as_raw();
    let user = if me == 0 { 65534 } else { me };
    let as_user = |command: &mut Command| {
        if me == 0 {
            command.uid(user).gid(user);
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let proc_owner = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/environ"))
            .unwrap()
            .uid()
    };

    let control = Reaped(as_user(Command::new("sleep").arg("60")));
    assert_eq!(
        proc_owner(control.0.id()),
        user,
        "a dumpable process's /proc/<pid>/environ belongs to its user"
    );
    drop(control);

    let scratch = Scratch::new("dumpable");
    let (port, admin) = free_ports();
    let path = write_acme_config(&scratch, port, admin, "t");
    // Readable by `nobody`: owned by root, so it may be (with a warning).
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut serve = Command::new(BIN);
    serve
        .args(["serve", "--config"])
        .arg(&path)
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", "AKIATEST")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    let mut child = Reaped(as_user(&mut serve));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        if let Some(exit) = child.0.try_wait().unwrap() {
            panic!("credvend exited ({exit}) before its admin listener came up");
        }
        assert!(Instant::now() < deadline, "admin listener never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        proc_owner(child.0.id()),
        0,
        "credvend (running as uid {user}) is still dumpable"
    );
}

/// `config/credvend.toml` copied to a scratch directory with mode 0600: a checkout made
/// under umask 002 leaves the example group-writable, which credvend refuses.
fn private_copy_of_the_example() -> (Scratch, PathBuf) {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/credvend.toml");
    let scratch = Scratch::new("example");
    let copy = scratch.write("credvend.toml", &std::fs::read_to_string(example).unwrap());
    (scratch, copy)
}

/// An External ID and token hash that replace the example's placeholders.
const FILLED_IN_EXTERNAL_ID: &str = "cli-filled-in-ExternalId-7Hq2Wv9Xk4Lm8Np3";

/// [`private_copy_of_the_example`] with its placeholders replaced: a valid config.
fn private_copy_of_the_example_filled_in() -> (Scratch, PathBuf) {
    let (scratch, copy) = private_copy_of_the_example();
    let text = std::fs::read_to_string(&copy).unwrap();
    let filled_in = text
        .replace(
            "replace-me-with-credvend-external-id-new",
            FILLED_IN_EXTERNAL_ID,
        )
        .replace(
            "replace-me-with-the-hash-from-credvend-token-new",
            &hash("cli-filled-in-token"),
        );
    assert_ne!(filled_in, text, "the example's placeholders moved");
    let copy = scratch.write("credvend.toml", &filled_in);
    (scratch, copy)
}

/// `credvend init --dir <dir>`.
fn init(dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir)
        .output()
        .unwrap()
}

/// `credvend init` writes a private, valid main file with a drop-in directory, warns
/// that it has no mappings yet, and never overwrites.
#[test]
fn init_writes_a_private_valid_config_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("init");
    let dir = scratch.0.join("etc");
    let out = init(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty());
    let main = dir.join("credvend.toml");
    assert!(
        stderr.contains("credvend mapping new NAME --role-arn ARN"),
        "{stderr}"
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&main), 0o600);
    assert_eq!(
        mode(&dir.join("mappings.d")) & 0o077,
        0,
        "mappings.d is private"
    );
    let text = std::fs::read_to_string(&main).unwrap();
    assert!(text.contains("include = [\"mappings.d/*.toml\"]"), "{text}");

    let check = check_config(&main);
    let check_err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{check_err}");
    assert!(
        String::from_utf8_lossy(&check.stdout).starts_with(
            "listen 127.0.0.1:8901, [::1]:8901 (admin 127.0.0.1:8902); 0 mapping(s) from 1 file(s)"
        ),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(check_err.contains("mappings: no mappings"), "{check_err}");

    std::fs::write(&main, "# edited\n").unwrap();
    let again = init(&dir);
    let again_err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(64), "{again_err}");
    assert!(
        again_err.contains(&format!(
            "{} already exists; not overwriting it",
            main.display()
        )),
        "{again_err}"
    );
    assert_eq!(std::fs::read_to_string(&main).unwrap(), "# edited\n");
}

/// A scratch directory with `credvend init --dir <scratch>/etc` run in it (asserted to
/// succeed); returns the scratch (keep it alive) and that config directory.
fn initialised_scratch(name: &str) -> (Scratch, PathBuf) {
    let scratch = Scratch::new(name);
    let dir = scratch.0.join("etc");
    let out = init(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (scratch, dir)
}

/// `credvend mapping new`: the token alone on stdout (its hash in the file), a private
/// mapping file that passes check-config, the External ID for the customer on stderr,
/// names and ARNs checked by the config's rules, and no file ever overwritten.
#[test]
fn mapping_new_writes_a_mapping_that_passes_check_config() {
    use std::os::unix::fs::PermissionsExt;
    let (_scratch, dir) = initialised_scratch("mapping-new");
    let new = |name: &str, role: &str, extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["mapping", "new", name, "--role-arn", role, "--dir"])
            .arg(&dir)
            .args(extra)
            .env_remove("CREDVEND_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let role = "arn:aws:iam::111122223333:role/acme-sync";
    let (code, stdout, stderr) = new("acme", role, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let token = stdout.strip_suffix('\n').expect("one line");
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{stdout:?}"
    );
    assert!(
        !stderr.contains(token),
        "the token is printed once, on stdout: {stderr}"
    );

    let file = dir.join("mappings.d/acme.toml");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!("token_sha256 = [\"{}\"]", hash(token))),
        "{text}"
    );
    assert!(text.contains(&format!("role_arn = \"{role}\"")), "{text}");
    let external_id = text
        .lines()
        .find_map(|l| l.strip_prefix("external_id = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no external_id line in {text}"));
    assert_eq!(external_id.len(), 40);
    assert!(
        stderr.contains(&format!("requires External ID {external_id} ")),
        "{stderr}"
    );
    assert!(stderr.contains("/v1/credentials/acme"), "{stderr}");

    // A dotted name (a quoted table) and a per-mapping enforcement mode.
    let (code, _, stderr) = new(
        "globex.eu",
        "arn:aws:iam::444455556666:role/globex",
        &["--enforcement", "warn"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("never against real AWS"), "{stderr}");

    let check = check_config(dir.join("credvend.toml"));
    let summary = String::from_utf8_lossy(&check.stdout);
    let check_err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{check_err}");
    assert!(check_err.is_empty(), "no warnings expected: {check_err}");
    assert!(summary.contains("2 mapping(s) from 3 file(s)"), "{summary}");
    assert!(
        summary.contains(&format!("mapping acme role={role} ")),
        "{summary}"
    );
    assert!(
        summary.contains("mapping globex.eu role=arn:aws:iam::444455556666:role/globex"),
        "{summary}"
    );
    assert!(summary.contains("enforcement=warn"), "{summary}");

    // Never overwritten; bad names and ARNs are refused before anything is written.
    let (code, stdout, stderr) = new("acme", role, &[]);
    assert_eq!((code, stdout.as_str()), (Some(64), ""), "{stderr}");
    assert!(
        stderr.contains("acme.toml already exists; not overwriting it"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    let (code, _, stderr) = new("bad name", role, &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("mapping name `bad name`: a mapping name may contain only"),
        "{stderr}"
    );
    let (code, _, stderr) = new("beta", "arn:aws:iam::1:role/x", &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("--role-arn: `arn:aws:iam::1:role/x` is not an IAM role ARN"),
        "{stderr}"
    );
    let names: Vec<_> = std::fs::read_dir(dir.join("mappings.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// A mapping file the configuration would reject (its name is already defined in the
/// main file) is removed again: `mapping new` leaves a config that passes or the one it
/// found.
#[test]
fn mapping_new_removes_its_file_when_the_config_rejects_it() {
    let (_scratch, dir) = initialised_scratch("mapping-new-dup");
    let main = dir.join("credvend.toml");
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!(
        "\n[mappings.acme]\nrole_arn = \"arn:aws:iam::111122223333:role/acme\"\n\
         external_id = \"{FILLED_IN_EXTERNAL_ID}\"\ntoken_sha256 = [\"{}\"]\n",
        hash("inline")
    ));
    std::fs::write(&main, text).unwrap();
    let out = Command::new(BIN)
        .args([
            "mapping",
            "new",
            "acme",
            "--role-arn",
            "arn:aws:iam::111122223333:role/acme",
            "--config",
        ])
        .arg(&main)
        .env_remove("CREDVEND_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no token for a mapping that was not kept"
    );
    assert!(
        stderr.contains("the configuration is invalid, so it was removed again"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mapping `acme` is already defined in"),
        "{stderr}"
    );
    assert!(!dir.join("mappings.d/acme.toml").exists());
}

/// The STS region keys (docs/design.md, Regional failover): each bad value is a
/// line naming the file, the key and why, and the exit status is 64; the deprecated
/// `endpoint_url` alone loads with a warning naming it.
#[test]
fn check_config_refuses_bad_sts_region_keys_with_exit_64() {
    let scratch = Scratch::new("regions");
    let token = hash("regions-token");
    let mapping = format!(
        r#"
[mappings.acme-s3]
role_arn = "arn:aws:iam::111122223333:role/vendor-sync"
external_id = "acme-external-id-0123456789abcdefghijk"
token_sha256 = ["{token}"]
"#
    );
    let path = scratch.write(
        "credvend.toml",
        &format!(
            r#"
[sts]
region = "us-east-1"
fallback_regions = ["us-east-1", "us-west-2", "us-west-2"]
endpoint_url = "http://127.0.0.1:5000"

[sts.endpoint_urls]
us-east-1 = "http://127.0.0.1:5001"
us-west-2 = "sts.us-west-2.amazonaws.com"
eu-west-1 = "http://127.0.0.1:5002"
{mapping}"#
        ),
    );
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    let file = path.display().to_string();
    for (key, reason) in [
        ("sts.fallback_regions", "`us-east-1` is the primary region"),
        ("sts.fallback_regions", "`us-west-2` is listed twice"),
        ("sts.endpoint_urls.us-west-2", "http:// or https://"),
        ("sts.endpoint_urls.eu-west-1", "neither the primary region"),
        (
            "sts.endpoint_url",
            "both sts.endpoint_url and sts.endpoint_urls.us-east-1",
        ),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&file) && l.contains(key) && l.contains(reason)),
            "no line naming {file}, {key} and `{reason}` in:\n{stderr}"
        );
    }

    let ok = scratch.write(
        "deprecated.toml",
        &format!("[sts]\nendpoint_url = \"http://127.0.0.1:5000\"\n{mapping}"),
    );
    let out = check_config(&ok);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("sts.endpoint_url") && all.contains("deprecated"),
        "no deprecation warning in:\n{all}"
    );
}

/// A reader that has gone (`credvend … | head -1` after `head` exits) ends the command
/// quietly with 141, the status of a process SIGPIPE killed, as a C tool in the same
/// pipeline would; `println!` panicked instead ("failed printing to stdout").
#[test]
fn output_to_a_closed_pipe_ends_quietly_with_141() {
    for args in [
        &["external-id", "new"][..],
        &["policy", "permissions", "--bucket", "acme-data"][..],
        &["token", "new"][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
