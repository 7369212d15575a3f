//! Hot reload of the real binary: file changes (main file and include directory),
//! SIGHUP, invalid edits, and reloads under continuous load (DESIGN.md §4).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use credvend::clock::ManualClock;
use credvend::secret::TokenHash;
use support::fake_sts::{FakeSts, Role, TrustRule};
use support::http::{get_with_token, request};

const TOKEN_A: &str = "reload-token-a-0123456789abcdef0123456789abcdef0123456789ab";
const TOKEN_B: &str = "reload-token-b-0123456789abcdef0123456789abcdef0123456789ab";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Daemon {
    child: Child,
    dir: PathBuf,
    config: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    sts_url: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mapping(name: &str, role: &str, external_id: &str, token: &str) -> String {
    format!(
        r#"
[mappings.{name}]
role_arn = "arn:aws:iam::111122223333:role/{role}"
external_id = "{external_id}"
token_sha256 = ["{}"]
external_id_enforcement = "off"
"#,
        TokenHash::of_token(token.as_bytes()).to_hex()
    )
}

impl Daemon {
    fn main_text(&self, mappings: &str) -> String {
        format!(
            r#"include = ["mappings.d/*.toml"]

[server]
listen = ["{}"]
admin_listen = "{}"

[sts]
endpoint_url = "{}"
{mappings}"#,
            self.listen, self.admin, self.sts_url
        )
    }

    /// Replaces `path` atomically, as editors and config management do.
    fn write(&self, path: &Path, text: &str) {
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::rename(&tmp, path).unwrap();
    }

    fn hup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = request(self.admin, "GET", "/metrics", &[]).await.body;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

async fn start(sts: &FakeSts, label: &str, mappings: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!(
        "credvend-reload-{label}-{}-{}",
        std::process::id(),
        sts.addr().port()
    ));
    std::fs::create_dir_all(dir.join("mappings.d")).unwrap();
    let mut d = Daemon {
        child: Command::new("true").spawn().unwrap(),
        config: dir.join("credvend.toml"),
        dir,
        listen: free_addr(),
        admin: free_addr(),
        sts_url: sts.endpoint_url(),
    };
    let _ = d.child.wait();
    d.write(&d.config, &d.main_text(mappings));
    d.child = Command::new(env!("CARGO_BIN_EXE_credvend"))
        .args(["serve", "--config"])
        .arg(&d.config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("AWS_ACCESS_KEY_ID", "AKIAVENDORBASE000000")
        .env("AWS_SECRET_ACCESS_KEY", "vendor-base-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while request_ok(d.admin).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "credvend did not start: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d
}

async fn request_ok(addr: SocketAddr) -> Option<()> {
    tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
}

async fn fake_sts() -> FakeSts {
    let sts = FakeSts::start(Arc::new(ManualClock::starting_now())).await;
    for role in ["role-a", "role-b"] {
        sts.add_role(Role::new(
            format!("arn:aws:iam::111122223333:role/{role}"),
            TrustRule::NoExternalIdRequired,
        ));
    }
    sts
}

/// Polls `path` with `token` until it answers `status` (file events are asynchronous).
async fn until_status(d: &Daemon, path: &str, token: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if get_with_token(d.listen, path, token).await.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status}; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until a line of the daemon's log satisfies `matches`.
async fn until_logged(d: &Daemon, matches: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.log().lines().any(&matches) {
        assert!(
            Instant::now() < deadline,
            "expected line never logged; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_apply_only_what_changed_and_bad_edits_keep_the_old_config() {
    let sts = fake_sts().await;
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let d = start(&sts, "files", &a).await;
    let first = get_with_token(d.listen, "/v1/credentials/a", TOKEN_A).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let key_a = first.json()["AccessKeyId"].clone();

    // A new drop-in file adds mapping b; a is untouched.
    d.write(
        &d.dir.join("mappings.d/b.toml"),
        &mapping("b", "role-b", "external-id-b-1", TOKEN_B),
    );
    until_status(&d, "/v1/credentials/b", TOKEN_B, 200).await;
    let again = get_with_token(d.listen, "/v1/credentials/a", TOKEN_A).await;
    assert_eq!(
        again.json()["AccessKeyId"],
        key_a,
        "unchanged mapping kept its credential"
    );

    // A broken edit is rejected whole: a and b keep serving, the error is logged and
    // counted.
    d.write(
        &d.config,
        &format!("{}\n[server]\nbogus = 1\n", d.main_text(&a)),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while d
        .metric(r#"credvend_config_reloads_total{result="error"}"#)
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "bad edit not seen: {}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get_with_token(d.listen, "/v1/credentials/a", TOKEN_A)
            .await
            .status,
        200
    );
    assert_eq!(
        get_with_token(d.listen, "/v1/credentials/b", TOKEN_B)
            .await
            .status,
        200
    );
    // The line and the counter come from one function; the line reaches the file
    // within the log writer's batch window (10 ms), so wait for it.
    let config = d.config.display().to_string();
    until_logged(&d, |l| {
        l.contains("ERROR") && l.contains(&config) && l.contains("Reload rejected")
    })
    .await;

    // Fixing the file with a changed External ID for a: a is refetched, b is kept.
    let calls_before = sts.assume_role_calls().len();
    d.write(
        &d.config,
        &d.main_text(&mapping("a", "role-a", "external-id-a-2", TOKEN_A)),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get_with_token(d.listen, "/v1/credentials/a", TOKEN_A).await;
        if r.status == 200 && r.json()["AccessKeyId"] != key_a {
            break;
        }
        assert!(Instant::now() < deadline, "a never refetched: {}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get_with_token(d.listen, "/v1/credentials/b", TOKEN_B)
            .await
            .status,
        200
    );
    let new_calls: Vec<_> = sts.assume_role_calls()[calls_before..].to_vec();
    assert_eq!(new_calls.len(), 1, "only the changed mapping was refetched");
    assert_eq!(new_calls[0].external_id.as_deref(), Some("external-id-a-2"));

    // Removing b's file removes b.
    std::fs::remove_file(d.dir.join("mappings.d/b.toml")).unwrap();
    until_status(&d, "/v1/credentials/b", TOKEN_B, 403).await;
    assert!(
        d.metric(r#"credvend_config_reloads_total{result="success"}"#)
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sighup_reloads_under_load_fail_no_request() {
    let sts = fake_sts().await;
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let b = mapping("b", "role-b", "external-id-b-1", TOKEN_B);
    let d = start(&sts, "hup", &a).await;
    assert_eq!(
        get_with_token(d.listen, "/v1/credentials/a", TOKEN_A)
            .await
            .status,
        200
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, listen) = (stop.clone(), ok.clone(), failed.clone(), d.listen);
        load.push(tokio::spawn(async move {
            // Bounded: stops when told, and after at most 20 000 requests.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = get_with_token(listen, "/v1/credentials/a", TOKEN_A).await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for i in 0..20 {
        // Alternate: with and without mapping b, then an invalid file every fifth time.
        let text = match i % 5 {
            4 => "this is not toml [".to_string(),
            n if n % 2 == 0 => d.main_text(&format!("{a}{b}")),
            _ => d.main_text(&a),
        };
        d.write(&d.config, &text);
        d.hup();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "the load actually ran");
    let errors = d
        .metric(r#"credvend_config_reloads_total{result="error"}"#)
        .await;
    assert!(errors >= 4.0, "invalid files rejected: {errors}");
    assert!(
        d.metric(r#"credvend_config_reloads_total{result="success"}"#)
            .await
            >= 12.0
    );
    // a was never invalidated: one AssumeRole for it in all that time.
    let a_calls = sts
        .assume_role_calls()
        .iter()
        .filter(|c| c.role_arn.as_deref() == Some("arn:aws:iam::111122223333:role/role-a"))
        .count();
    assert_eq!(a_calls, 1);
}
