//! Hot reload. The real binary: file changes (main file, include directory, a
//! Kubernetes-style directory of symlinks), SIGHUP, invalid edits, the fallback when file
//! watching is unavailable, and reloads under continuous load. In process, on
//! `credvend::reload::Reloader` directly: token rotation and revocation, which file events
//! reload and which do not, and the restart-only warning.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use credvend::clock::ManualClock;
use credvend::config::Config;
use credvend::reload::{ReloadOutcome, Reloader, Trigger};
use credvend::secret::TokenHash;
use support::daemon::TestDaemon;
use support::fake_sts::{FakeSts, Role, TrustRule};
use support::http::{RawResponse, get_with_token, request};

const TOKEN_A: &str = "reload-token-a-0123456789abcdef0123456789abcdef0123456789ab";
const TOKEN_B: &str = "reload-token-b-0123456789abcdef0123456789abcdef0123456789ab";
const TOKEN_A2: &str = "reload-token-a2-123456789abcdef0123456789abcdef0123456789ab";

/// How long a test waits for something the daemon does in the background (a debounced
/// file event, a signal, a log line): generous, so a loaded 2-core machine passes, and
/// never the expected path (every wait polls and returns as soon as it holds).
const PATIENCE: Duration = Duration::from_secs(20);

/// The binary's log filter: info, plus the reload module's debug lines ("Configuration
/// files unchanged", "Watching for configuration changes") that tests wait on.
const RUST_LOG: &str = "info,credvend::reload=debug";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Daemon {
    child: Child,
    /// Everything the test made: `etc/` and the daemon's log.
    dir: PathBuf,
    /// The configuration directory. The log is kept out of it: it is watched, and a
    /// log line written there would be a file event of its own.
    etc: PathBuf,
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
    mapping_tokens(name, role, external_id, &[token])
}

fn mapping_tokens(name: &str, role: &str, external_id: &str, tokens: &[&str]) -> String {
    let hashes: Vec<String> = tokens
        .iter()
        .map(|t| format!("\"{}\"", TokenHash::of_token(t.as_bytes()).to_hex()))
        .collect();
    format!(
        r#"
[mappings.{name}]
role_arn = "arn:aws:iam::111122223333:role/{role}"
external_id = "{external_id}"
token_sha256 = [{}]
external_id_enforcement = "off"
"#,
        hashes.join(", ")
    )
}

/// A main file including `include` (a glob), with `sts_extra` lines in `[sts]`.
fn main_file(
    include: &str,
    (listen, admin): (&str, &str),
    sts_url: &str,
    sts_extra: &str,
    mappings: &str,
) -> String {
    format!(
        r#"include = ["{include}"]

[server]
listen = ["{listen}"]
admin_listen = "{admin}"

[sts]
endpoint_url = "{sts_url}"
{sts_extra}
{mappings}"#
    )
}

/// Creates directory `path` (and its parents) with mode 0755 whatever the umask:
/// credvend refuses an include directory that group or others can write.
fn create_config_dir(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Replaces `path` atomically, as editors and config management do.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::rename(&tmp, path).unwrap();
}

impl Daemon {
    fn main_text(&self, mappings: &str) -> String {
        main_file(
            "mappings.d/*.toml",
            (&self.listen.to_string(), &self.admin.to_string()),
            &self.sts_url,
            "",
            mappings,
        )
    }

    /// Replaces `path` atomically, as editors and config management do.
    fn write(&self, path: &Path, text: &str) {
        write_atomically(path, text);
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

    /// How many lines of the log contain `needle`.
    fn logged(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = request(self.admin, "GET", "/metrics", &[]).await.body;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// `credvend_config_reloads_total`: (applied, rejected).
    async fn reloads(&self) -> (f64, f64) {
        (
            self.metric(r#"credvend_config_reloads_total{result="success"}"#)
                .await,
            self.metric(r#"credvend_config_reloads_total{result="error"}"#)
                .await,
        )
    }

    /// Polls the reload counters until `done(applied, rejected)` holds. The counter is
    /// bumped after the new configuration is in force, so a test that saw the effect
    /// of a reload waits here for its count rather than reading it at once.
    async fn until_reloads(&self, what: &str, done: impl Fn(f64, f64) -> bool) -> (f64, f64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (applied, rejected) = self.reloads().await;
            if done(applied, rejected) {
                return (applied, rejected);
            }
            assert!(
                Instant::now() < deadline,
                "{what}: reloads applied {applied}, rejected {rejected}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A config directory and addresses for a daemon not yet started.
fn prepare(sts: &FakeSts, label: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!(
        "credvend-reload-{label}-{}-{}",
        std::process::id(),
        sts.addr().port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let etc = dir.join("etc");
    create_config_dir(&etc);
    // Two ports free a moment ago: the kernel may hand out the same one twice.
    let listen = free_addr();
    let admin = std::iter::repeat_with(free_addr)
        .find(|a| *a != listen)
        .unwrap();
    let mut d = Daemon {
        child: Command::new("true").spawn().unwrap(),
        config: etc.join("credvend.toml"),
        etc,
        dir,
        listen,
        admin,
        sts_url: sts.endpoint_url(),
    };
    let _ = d.child.wait();
    d
}

/// Starts `credvend serve` on `d.config` and waits for its admin listener.
async fn launch(d: &mut Daemon) {
    d.child = Command::new(env!("CARGO_BIN_EXE_credvend"))
        .args(["serve", "--config"])
        .arg(&d.config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", RUST_LOG)
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
}

/// The usual daemon: `credvend.toml` with `mappings` inline and an empty `mappings.d/`.
async fn start(sts: &FakeSts, label: &str, mappings: &str) -> Daemon {
    let mut d = prepare(sts, label);
    create_config_dir(&d.etc.join("mappings.d"));
    d.write(&d.config, &d.main_text(mappings));
    launch(&mut d).await;
    d
}

async fn request_ok(addr: SocketAddr) -> Option<()> {
    tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
}

async fn fake_sts() -> FakeSts {
    fake_sts_on(ManualClock::starting_now()).await
}

async fn fake_sts_on(clock: ManualClock) -> FakeSts {
    let sts = FakeSts::start(Arc::new(clock)).await;
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
    let deadline = Instant::now() + PATIENCE;
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
    until_logged_times(d, 1, matches).await;
}

/// Waits (bounded) until a line satisfying `matches` follows the last line satisfying
/// `after`.
async fn until_logged_after(
    d: &Daemon,
    after: impl Fn(&str) -> bool,
    matches: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = d.log();
        let lines: Vec<&str> = log.lines().collect();
        if let Some(i) = lines.iter().rposition(|l| after(l))
            && lines[i + 1..].iter().any(|l| matches(l))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected line never logged after the marker; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A line saying the watch (re)started is complete: the include directory is watched
/// last.
fn watch_started(line: &str) -> bool {
    line.contains("Watching for configuration changes") && line.contains("mappings.d")
}

/// Waits (bounded) until `times` lines of the daemon's log satisfy `matches`.
async fn until_logged_times(d: &Daemon, times: usize, matches: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while d.log().lines().filter(|l| matches(l)).count() < times {
        assert!(
            Instant::now() < deadline,
            "expected line never logged {times} time(s); log:\n{}",
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
        &d.etc.join("mappings.d/b.toml"),
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
    d.until_reloads("bad edit rejected", |_, rejected| rejected >= 1.0)
        .await;
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
    let deadline = Instant::now() + PATIENCE;
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
    std::fs::remove_file(d.etc.join("mappings.d/b.toml")).unwrap();
    until_status(&d, "/v1/credentials/b", TOKEN_B, 403).await;
    // b added, a fixed, b removed; the bad edit was the one rejection.
    let (_, rejected) = d
        .until_reloads("three reloads applied", |applied, _| applied >= 3.0)
        .await;
    assert_eq!(rejected, 1.0);
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
    // Each step writes the file, signals, and waits for the outcome its own content
    // produces (applied for valid TOML, rejected for the invalid one) before the next
    // step: on a loaded machine a reload can take longer than any fixed pause. Signals
    // may coalesce and a file event may add a reload, so counts only grow by at least
    // one per step; what is in force afterwards (mapping b or not) pins that the step's
    // content, not an earlier one, was applied.
    let mut b_present = false;
    for i in 0..20 {
        // Alternate: with and without mapping b, then an invalid file every fifth time.
        let (text, valid) = match i % 5 {
            4 => ("this is not toml [".to_string(), false),
            n if n % 2 == 0 => (d.main_text(&format!("{a}{b}")), true),
            _ => (d.main_text(&a), true),
        };
        let (applied, rejected) = d.reloads().await;
        let served = ok.load(Ordering::Relaxed);
        d.write(&d.config, &text);
        d.hup();
        let step = format!("step {i} ({})", if valid { "valid" } else { "invalid" });
        if valid {
            d.until_reloads(&step, |now, _| now > applied).await;
            b_present = i % 5 % 2 == 0;
        } else {
            d.until_reloads(&step, |_, now| now > rejected).await;
        }
        // What is in force: b exactly when the last valid file had it.
        let expected = if b_present { 200 } else { 403 };
        until_status(&d, "/v1/credentials/b", TOKEN_B, expected).await;
        // The load kept going across this reload.
        let deadline = Instant::now() + PATIENCE;
        while ok.load(Ordering::Relaxed) < served + 10 {
            assert!(Instant::now() < deadline, "{step}: the load stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
    assert!(ok.load(Ordering::Relaxed) >= 200, "the load actually ran");
    let (applied, rejected) = d.reloads().await;
    assert!(rejected >= 4.0, "invalid files rejected: {rejected}");
    assert!(applied >= 16.0, "valid files applied: {applied}");
    // The signals drove these reloads, not only the file events of the writes. (A
    // signal sent while an earlier one is still pending merges with it, which needs a
    // stall of the whole debounce period; 16 of 20 leaves room for a few.)
    until_logged_times(&d, 16, |l| {
        l.contains("Reload requested") && l.contains("trigger=Signal")
    })
    .await;
    // a was never invalidated: one AssumeRole for it in all that time.
    let a_calls = sts
        .assume_role_calls()
        .iter()
        .filter(|c| c.role_arn.as_deref() == Some("arn:aws:iam::111122223333:role/role-a"))
        .count();
    assert_eq!(a_calls, 1);
}

/// Mapping `name` → role-b behind `TOKEN_B`, for drop-in files.
fn drop_in(name: &str) -> String {
    mapping(name, "role-b", &format!("external-id-{name}"), TOKEN_B)
}

const UNCHANGED: &str = "Configuration files unchanged; nothing to reload";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_events_that_change_nothing_do_not_reload_and_a_bad_edit_is_reported_once() {
    let sts = fake_sts().await;
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let d = start(&sts, "dedup", &a).await;
    // What follows are file events that change nothing, so nothing to find on disk if
    // they fell where no watch runs: each is made once the watch is up.
    until_logged(&d, watch_started).await;

    // The same bytes saved again (a new file renamed over the old, as editors do) and an
    // unrelated file created next to it: file events, but nothing credvend reads changed.
    d.write(&d.config, &d.main_text(&a));
    std::fs::write(d.etc.join("notes.txt"), "not configuration").unwrap();
    until_logged(&d, |l| l.contains(UNCHANGED)).await;
    assert_eq!(
        d.reloads().await,
        (0.0, 0.0),
        "no reload for unchanged files"
    );

    // A bad edit is rejected and reported...
    d.write(&d.config, "this is not toml [");
    d.until_reloads("bad edit rejected", |_, rejected| rejected >= 1.0)
        .await;
    let rejected = |l: &str| l.contains("ERROR") && l.contains("Reload rejected");
    until_logged(&d, rejected).await;
    // ...once: a later event that leaves the bad content as it was is not a new report.
    until_logged_after(&d, rejected, watch_started).await;
    let unchanged = d.logged(UNCHANGED);
    std::fs::write(d.etc.join("notes.txt"), "still not configuration").unwrap();
    until_logged_times(&d, unchanged + 1, |l| l.contains(UNCHANGED)).await;
    assert_eq!(
        d.reloads().await,
        (0.0, 1.0),
        "the bad edit was reported once"
    );
    assert_eq!(
        get_with_token(d.listen, "/v1/credentials/a", TOKEN_A)
            .await
            .status,
        200,
        "the running configuration keeps serving"
    );

    // SIGHUP always retries, and reports the same bad content again.
    d.hup();
    let (applied, _) = d
        .until_reloads("SIGHUP retried the bad file", |_, rejected| rejected >= 2.0)
        .await;
    assert_eq!(applied, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_file_watching_sighup_still_reloads_and_watching_resumes_when_it_can() {
    let sts = fake_sts().await;
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let b = mapping("b", "role-b", "external-id-b-1", TOKEN_B);
    let d = start(&sts, "nowatch", &a).await;
    let include_dir = d.etc.join("mappings.d");
    until_logged(&d, watch_started).await;

    // The include directory vanishes: its parent's watch reports it, the watch is
    // restarted and cannot watch a directory that is gone.
    std::fs::remove_dir(&include_dir).unwrap();
    let unavailable = |l: &str| {
        l.contains("WARN")
            && l.contains("File watching unavailable; reload with SIGHUP")
            && l.contains("mappings.d")
    };
    until_logged(&d, unavailable).await;

    // SIGHUP still reloads.
    d.write(&d.config, &d.main_text(&format!("{a}{b}")));
    d.hup();
    until_status(&d, "/v1/credentials/b", TOKEN_B, 200).await;
    d.until_reloads("SIGHUP applied", |applied, _| applied >= 1.0)
        .await;

    // With the directory back, the next reload watches again: a new drop-in is then
    // picked up by file watching alone.
    create_config_dir(&include_dir);
    let watches = d.logged("Watching for configuration changes");
    d.hup();
    d.until_reloads("second SIGHUP applied", |applied, _| applied >= 2.0)
        .await;
    until_logged_times(&d, 2, watch_started).await;
    assert!(d.logged("Watching for configuration changes") > watches);
    d.write(
        &include_dir.join("c.toml"),
        &mapping("c", "role-b", "external-id-c-1", TOKEN_A2),
    );
    until_status(&d, "/v1/credentials/c", TOKEN_A2, 200).await;
}

/// Publishes `files` the way the kubelet updates a mounted ConfigMap: the files go into
/// a new timestamped directory, a `..data_tmp` symlink to it is renamed over `..data`,
/// and the previous directory is removed. The visible names are symlinks through
/// `..data`, created on the first publication.
fn publish_configmap(dir: &Path, version: u32, files: &[(&str, String)]) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let stamp = format!("..2026_11_30_15_00_{version:02}.{:09}", 100_000 + version);
    std::fs::create_dir(dir.join(&stamp)).unwrap();
    for (name, text) in files {
        let path = dir.join(&stamp).join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let previous = std::fs::read_link(dir.join("..data")).ok();
    symlink(&stamp, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (name, _) in files {
        if std::fs::symlink_metadata(dir.join(name)).is_err() {
            symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
        }
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_updated_by_swapping_its_data_symlink_is_reloaded_by_file_watching() {
    let sts = fake_sts().await;
    let mut d = prepare(&sts, "configmap");
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let main = main_file(
        "mappings.toml",
        (&d.listen.to_string(), &d.admin.to_string()),
        &d.sts_url,
        "",
        &a,
    );
    publish_configmap(
        &d.etc,
        1,
        &[
            ("credvend.toml", main.clone()),
            ("mappings.toml", "# no drop-in mappings yet\n".into()),
        ],
    );
    launch(&mut d).await;
    let first = get_with_token(d.listen, "/v1/credentials/a", TOKEN_A).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let key_a = first.json()["AccessKeyId"].clone();

    // The ConfigMap gains mapping b: no signal, the symlink swap alone.
    publish_configmap(
        &d.etc,
        2,
        &[
            ("credvend.toml", main.clone()),
            ("mappings.toml", drop_in("b")),
        ],
    );
    until_status(&d, "/v1/credentials/b", TOKEN_B, 200).await;
    // And loses it again.
    publish_configmap(
        &d.etc,
        3,
        &[
            ("credvend.toml", main.clone()),
            ("mappings.toml", "# b removed\n".into()),
        ],
    );
    until_status(&d, "/v1/credentials/b", TOKEN_B, 403).await;
    d.until_reloads("two ConfigMap updates applied", |applied, _| applied >= 2.0)
        .await;
    let again = get_with_token(d.listen, "/v1/credentials/a", TOKEN_A).await;
    assert_eq!(again.json()["AccessKeyId"], key_a, "a was not touched");
    assert_eq!(d.logged("File watching unavailable"), 0, "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_right_after_start_or_a_reload_is_not_lost() {
    // No watch runs until the first one is set up after start, nor while a reload runs
    // and until the next watch is: a change made then has no event coming and must be
    // found on disk. The first step writes as soon as credvend listens, each next one
    // as soon as the previous step's mapping answers (that reload is applied, the new
    // watch possibly not yet started).
    let sts = fake_sts().await;
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let d = start(&sts, "gap", &a).await;
    let drop_in_path = d.etc.join("mappings.d/m.toml");
    for i in 0..6 {
        let name = format!("m{i}");
        d.write(&drop_in_path, &drop_in(&name));
        let path = format!("/v1/credentials/{name}");
        let deadline = Instant::now() + PATIENCE;
        while get_with_token(d.listen, &path, TOKEN_B).await.status != 200 {
            assert!(
                Instant::now() < deadline,
                "the change to {name} was never applied; log:\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A daemon in this process with its configuration in a file and a [`Reloader`] on
/// it: reloads happen exactly when the test calls `reload`, nothing watches the files.
struct InProcess {
    sts: FakeSts,
    daemon: TestDaemon,
    reloader: Reloader,
    dir: PathBuf,
    main: PathBuf,
    admin: String,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl InProcess {
    async fn start(label: &str, mappings: &str) -> InProcess {
        let clock = ManualClock::starting_now();
        let sts = fake_sts_on(clock.clone()).await;
        let dir = std::env::temp_dir().join(format!(
            "credvend-reload-{label}-{}-{}",
            std::process::id(),
            sts.addr().port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        create_config_dir(&dir.join("mappings.d"));
        let main = dir.join("credvend.toml");
        // Port 0 for both listeners, told apart by address (both loopback).
        let admin = "127.0.0.2:0".to_string();
        let text = main_file(
            "mappings.d/*.toml",
            ("127.0.0.1:0", &admin),
            &sts.endpoint_url(),
            "",
            mappings,
        );
        write_atomically(&main, &text);
        let config = Config::load(&main).expect("valid configuration");
        let daemon = TestDaemon::start(config.clone(), clock).await;
        let reloader = Reloader::new(main.clone(), config, daemon.daemon.clone());
        InProcess {
            sts,
            daemon,
            reloader,
            dir,
            main,
            admin,
        }
    }

    /// Rewrites the main file: listeners `listen`, `sts_extra` in `[sts]`.
    fn write_main(&self, listen: &str, sts_extra: &str, mappings: &str) {
        let text = main_file(
            "mappings.d/*.toml",
            (listen, &self.admin),
            &self.sts.endpoint_url(),
            sts_extra,
            mappings,
        );
        write_atomically(&self.main, &text);
    }

    async fn get(&self, mapping: &str, token: &str) -> RawResponse {
        get_with_token(
            self.daemon.addr,
            &format!("/v1/credentials/{mapping}"),
            token,
        )
        .await
    }

    /// `credvend_config_reloads_total`: (applied, rejected).
    fn reloads(&self) -> (f64, f64) {
        let text = self.daemon.daemon.metrics().render();
        let sample = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        };
        (
            sample(r#"credvend_config_reloads_total{result="success"}"#),
            sample(r#"credvend_config_reloads_total{result="error"}"#),
        )
    }
}

fn assert_access_denied(r: &RawResponse, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", r.body);
    assert_eq!(r.json()["code"], "AccessDenied", "{what}: {}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_or_revoked_by_reload_is_refused_at_once_and_the_credential_is_kept() {
    let a = |tokens: &[&str]| mapping_tokens("a", "role-a", "external-id-a-1", tokens);
    let r = InProcess::start("tokens", &a(&[TOKEN_A])).await;
    let first = r.get("a", TOKEN_A).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let credential = first.json();
    assert_eq!(r.sts.assume_role_calls().len(), 1);

    // (tokens after the reload, tokens refused from then on, what the step is)
    let steps: [(&[&str], &[&str], &str); 3] = [
        (&[TOKEN_A2], &[TOKEN_A], "rotation: A replaced by A2"),
        (&[TOKEN_A2, TOKEN_B], &[TOKEN_A], "B added next to A2"),
        (&[TOKEN_B], &[TOKEN_A, TOKEN_A2], "revocation: A2 removed"),
    ];
    for (tokens, refused, what) in steps {
        r.write_main("127.0.0.1:0", "", &a(tokens));
        assert_eq!(
            r.reloader.reload(Trigger::FileChange),
            ReloadOutcome::Applied,
            "{what}"
        );
        // The very first request after the reload returned: no grace period.
        for token in refused {
            assert_access_denied(&r.get("a", token).await, what);
        }
        for token in tokens {
            let ok = r.get("a", token).await;
            assert_eq!(ok.status, 200, "{what}: {}", ok.body);
            let body = ok.json();
            assert_eq!(
                (&body["AccessKeyId"], &body["Expiration"]),
                (&credential["AccessKeyId"], &credential["Expiration"]),
                "{what}: the cached credential is kept"
            );
        }
    }
    assert_eq!(
        r.sts.assume_role_calls().len(),
        1,
        "tokens are not AssumeRole inputs: no new AssumeRole call"
    );
    assert_eq!(r.reloads(), (3.0, 0.0));
    assert_eq!(r.daemon.daemon.generation(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_event_reloads_only_changed_content_and_reports_a_bad_edit_once() {
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let r = InProcess::start("dedup", &a).await;
    assert_eq!(r.get("a", TOKEN_A).await.status, 200);
    let generation = || r.daemon.daemon.generation();

    // Nothing credvend reads changed: the same bytes saved again, an unrelated file next
    // to the main file, a file that is not `.toml` in the include directory.
    r.write_main("127.0.0.1:0", "", &a);
    std::fs::write(r.dir.join("notes.txt"), "not configuration").unwrap();
    std::fs::write(r.dir.join("mappings.d/README"), "not configuration").unwrap();
    assert!(!r.reloader.changed_on_disk());
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Unchanged
    );
    assert_eq!((r.reloads(), generation()), ((0.0, 0.0), 1));

    // A new drop-in is a change.
    write_atomically(&r.dir.join("mappings.d/b.toml"), &drop_in("b"));
    assert!(r.reloader.changed_on_disk());
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied
    );
    assert_eq!((r.reloads(), generation()), ((1.0, 0.0), 2));
    assert_eq!(r.get("b", TOKEN_B).await.status, 200);

    // A bad edit is rejected and counted once; file events that leave it as it is are
    // not reloads, and the running configuration keeps serving.
    r.write_main("127.0.0.1:0", "bogus = 1", &a);
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Rejected
    );
    assert_eq!(r.reloads(), (1.0, 1.0));
    assert!(!r.reloader.changed_on_disk());
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Unchanged
    );
    std::fs::write(r.dir.join("notes.txt"), "still not configuration").unwrap();
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Unchanged
    );
    assert_eq!((r.reloads(), generation()), ((1.0, 1.0), 2));
    assert_eq!(r.get("a", TOKEN_A).await.status, 200);
    assert_eq!(r.get("b", TOKEN_B).await.status, 200);

    // SIGHUP retries the same bad content and reports it again.
    assert_eq!(r.reloader.reload(Trigger::Signal), ReloadOutcome::Rejected);
    assert_eq!(r.reloads(), (1.0, 2.0));
    // A different bad edit is a change, reported.
    r.write_main("127.0.0.1:0", "bogus = 2", &a);
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Rejected
    );
    assert_eq!(r.reloads(), (1.0, 3.0));
    // Fixed: applied.
    r.write_main("127.0.0.1:0", "", &a);
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied
    );
    assert_eq!((r.reloads(), generation()), ((2.0, 3.0), 3));
    // SIGHUP with nothing changed still reloads: the operator asked.
    assert_eq!(r.reloader.reload(Trigger::Signal), ReloadOutcome::Applied);
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Unchanged
    );
    assert_eq!((r.reloads(), generation()), ((3.0, 3.0), 4));
    // The drop-in removed: a change.
    std::fs::remove_file(r.dir.join("mappings.d/b.toml")).unwrap();
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied
    );
    assert_access_denied(&r.get("b", TOKEN_B).await, "b removed");
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Unchanged
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_files_another_user_could_write_is_rejected_and_the_old_config_serves() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let b = mapping("b", "role-b", "external-id-b-1", TOKEN_B);
    let r = InProcess::start("writable", &a).await;
    assert_eq!(r.get("a", TOKEN_A).await.status, 200);
    let rejection = |logs: &[serde_json::Value], path: &Path| {
        let shown = path.display().to_string();
        let lines: Vec<String> = logs.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("writable by group or others")
                    && l.contains(&format!("chmod go-w {shown}"))),
            "no rejection naming {shown} and its fix in:\n{}",
            lines.join("\n")
        );
    };

    // Mapping b is added in an edit that leaves the main file group-writable: the
    // reload is rejected, b is not served, a still is.
    r.write_main("127.0.0.1:0", "", &format!("{a}{b}"));
    chmod(&r.main, 0o664);
    let (outcome, logs) = with_logs(|| r.reloader.reload(Trigger::FileChange));
    assert_eq!(outcome, ReloadOutcome::Rejected);
    rejection(&logs, &fs_canonical(&r.main));
    assert_access_denied(&r.get("b", TOKEN_B).await, "rejected: b not added");
    assert_eq!(r.get("a", TOKEN_A).await.status, 200);
    assert_eq!((r.reloads(), r.daemon.daemon.generation()), ((0.0, 1.0), 1));

    // The file fixed, the drop-in directory opened to everyone: rejected too.
    chmod(&r.main, 0o600);
    let include_dir = r.dir.join("mappings.d");
    chmod(&include_dir, 0o777);
    let (outcome, logs) = with_logs(|| r.reloader.reload(Trigger::Signal));
    assert_eq!(outcome, ReloadOutcome::Rejected);
    rejection(&logs, &fs_canonical(&include_dir));
    assert_access_denied(&r.get("b", TOKEN_B).await, "still rejected");
    assert_eq!(r.reloads(), (0.0, 2.0));

    // Both fixed: the same content applies.
    chmod(&include_dir, 0o755);
    assert_eq!(r.reloader.reload(Trigger::Signal), ReloadOutcome::Applied);
    assert_eq!(r.get("b", TOKEN_B).await.status, 200);
    assert_eq!(r.reloads(), (1.0, 2.0));
}

fn fs_canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap()
}

/// Runs `f` with this thread's log events captured as JSON objects (debug and up).
fn with_logs<T>(f: impl FnOnce() -> T) -> (T, Vec<serde_json::Value>) {
    credvend::testing::json_logs(f)
}

/// The `sections` of every restart-only warning in `logs`.
fn restart_warnings(logs: &[serde_json::Value]) -> Vec<String> {
    logs.iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("take effect only after a restart"))
        })
        .map(|l| {
            assert_eq!(l["level"], "WARN", "{l}");
            l["sections"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_settings_are_warned_about_and_the_rest_of_the_reload_applies() {
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let b = mapping("b", "role-b", "external-id-b-1", TOKEN_B);
    let r = InProcess::start("restart-only", &a).await;

    // [sts] call_timeout changes in the same edit that adds mapping b.
    r.write_main("127.0.0.1:0", r#"call_timeout = "7s""#, &format!("{a}{b}"));
    let (outcome, logs) = with_logs(|| r.reloader.reload(Trigger::FileChange));
    assert_eq!(outcome, ReloadOutcome::Applied);
    assert_eq!(restart_warnings(&logs), [r#"["sts"]"#]);
    assert_eq!(r.get("b", TOKEN_B).await.status, 200, "b was applied");

    // [server] listen changes in the edit that removes b: warned about, the daemon
    // keeps serving where it listens, and b is gone.
    let elsewhere = free_addr().to_string();
    r.write_main(&elsewhere, r#"call_timeout = "7s""#, &a);
    let (outcome, logs) = with_logs(|| r.reloader.reload(Trigger::FileChange));
    assert_eq!(outcome, ReloadOutcome::Applied);
    assert_eq!(
        restart_warnings(&logs),
        [r#"["server.listen/admin_listen"]"#]
    );
    assert_access_denied(&r.get("b", TOKEN_B).await, "b removed");
    assert_eq!(r.get("a", TOKEN_A).await.status, 200);

    // An edit that touches neither: no such warning.
    r.write_main(&elsewhere, r#"call_timeout = "7s""#, &format!("{a}{b}"));
    let (outcome, logs) = with_logs(|| r.reloader.reload(Trigger::FileChange));
    assert_eq!(outcome, ReloadOutcome::Applied);
    assert_eq!(restart_warnings(&logs), Vec::<String>::new());
    assert_eq!(r.get("b", TOKEN_B).await.status, 200);
}
