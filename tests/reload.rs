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
use support::e2e::credvend_serve;
use support::fake_sts::{FakeSts, Fault, Role, TrustRule};
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
endpoint_urls = {{ us-east-1 = "{sts_url}" }}
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
    launch_with_rust_log(d, RUST_LOG).await;
}

/// [`launch`] with `RUST_LOG` set to `rust_log` (empty: the config's `[log] level`).
async fn launch_with_rust_log(d: &mut Daemon, rust_log: &str) {
    d.child = credvend_serve(&d.config, &d.dir, rust_log, "vendor-base-secret")
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
    // ...once: a later event that leaves the bad content as it was (the same bytes saved
    // again) is not a new report. (One watch runs throughout: no need to wait for it.)
    let unchanged = d.logged(UNCHANGED);
    d.write(&d.config, "this is not toml [");
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

/// `[reload] watch = false`: a saved edit is not applied (no watch is set, the daemon
/// says so at start), SIGHUP applies it; a reload that sets `watch = true` starts the
/// watch, and the next edit is applied by it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_off_an_edit_waits_for_sighup_and_a_reload_can_turn_the_watch_on() {
    let sts = fake_sts().await;
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let b = mapping("b", "role-b", "external-id-b-1", TOKEN_B);
    let watch = |on: bool| format!("\n[reload]\nwatch = {on}\n");
    let mut d = prepare(&sts, "watch-off");
    let include_dir = d.etc.join("mappings.d");
    create_config_dir(&include_dir);
    d.write(&d.config, &d.main_text(&format!("{}{a}", watch(false))));
    launch(&mut d).await;
    until_logged(&d, |l| {
        l.contains("File watching is off ([reload] watch = false); reload with SIGHUP")
    })
    .await;

    // Saved, not applied: six debounce periods pass with b still refused.
    d.write(&d.config, &d.main_text(&format!("{}{a}{b}", watch(false))));
    tokio::time::sleep(credvend::reload::DEBOUNCE * 6).await;
    let before = get_with_token(d.listen, "/v1/credentials/b", TOKEN_B).await;
    assert_eq!(before.status, 403, "applied without SIGHUP: {}", d.log());
    assert_eq!(d.reloads().await, (0.0, 0.0), "{}", d.log());
    assert_eq!(
        d.logged("Watching for configuration changes"),
        0,
        "a watch was set: {}",
        d.log()
    );

    // SIGHUP applies it.
    d.hup();
    until_status(&d, "/v1/credentials/b", TOKEN_B, 200).await;
    d.until_reloads("SIGHUP applied", |applied, _| applied >= 1.0)
        .await;

    // Turned on by a reload: the watch starts, and a new drop-in needs no signal.
    d.write(&d.config, &d.main_text(&format!("{}{a}{b}", watch(true))));
    d.hup();
    until_logged(&d, watch_started).await;
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
    // No watch runs until the first one is set up after start: a change made then has
    // no event coming and must be found on disk; one made while a reload runs must not
    // be lost either. The first step writes as soon as credvend listens, each next one
    // as soon as the previous step's mapping answers (that reload is applied, the
    // reloader possibly still finishing it).
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
        let (sources, config) = Config::read(&main);
        let config = config.expect("valid configuration");
        let daemon = TestDaemon::start(config.clone(), clock).await;
        let reloader = Reloader::new(main.clone(), config, sources, daemon.daemon.clone());
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

    // Both fixed: the same content applies, on the file event of the chmod alone (the
    // bytes are those of the rejected read; who may write them is part of what was read).
    chmod(&include_dir, 0o755);
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied,
        "a permission fix is a change"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_in_the_config_directory_sets_off_no_reload() {
    // `credvend serve --config etc/credvend.toml 2> etc/credvend.log` with `level =
    // "debug"`: every log line is a file event in the watched directory. Only the
    // files credvend reads may set off a reload; a log line about a reload must not
    // set off the next one.
    let sts = fake_sts().await;
    let mut d = prepare(&sts, "log-in-etc");
    create_config_dir(&d.etc.join("mappings.d"));
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let b = mapping("b", "role-b", "external-id-b-1", TOKEN_B);
    let with_debug = |d: &Daemon, mappings: &str| {
        format!("{}\n[log]\nlevel = \"debug\"\n", d.main_text(mappings))
    };
    d.write(&d.config, &with_debug(&d, &a));
    // The log goes into etc/; `d.log()` reads it through this link.
    std::os::unix::fs::symlink(d.etc.join("credvend.log"), d.dir.join("stderr.log")).unwrap();
    launch_with_rust_log(&mut d, "").await;
    until_logged(&d, watch_started).await;
    assert!(d.logged("DEBUG") > 0, "not logging at debug:\n{}", d.log());
    let watches = d.logged("Watching for configuration changes");

    // An observation window of many debounce periods, in which the daemon keeps writing
    // its log (an audit line per credential served).
    let lines_before = d.log().lines().count();
    for _ in 0..8 {
        let r = get_with_token(d.listen, "/v1/credentials/a", TOKEN_A).await;
        assert_eq!(r.status, 200, "{}", r.body);
        tokio::time::sleep(credvend::reload::DEBOUNCE).await;
    }
    assert!(
        d.log().lines().count() > lines_before + 8,
        "the log file was not written during the window:\n{}",
        d.log()
    );
    let reload_lines = |d: &Daemon| d.logged("Reload requested") + d.logged(UNCHANGED);
    assert_eq!(
        reload_lines(&d),
        0,
        "log lines set off reloads:\n{}",
        d.log()
    );
    assert_eq!(d.reloads().await, (0.0, 0.0));

    // The watch is alive: an edit of the config file is one reload.
    d.write(&d.config, &with_debug(&d, &format!("{a}{b}")));
    until_status(&d, "/v1/credentials/b", TOKEN_B, 200).await;
    d.until_reloads("the edit applied", |applied, _| applied >= 1.0)
        .await;
    assert_eq!(d.logged("Reload requested"), 1, "{}", d.log());
    // One watch for the whole run: the reload did not set up another.
    assert_eq!(
        d.logged("Watching for configuration changes"),
        watches,
        "{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_landing_after_a_reload_read_the_files_is_a_change_for_the_next_file_event() {
    let a = mapping("a", "role-a", "external-id-a-1", TOKEN_A);
    let r = InProcess::start("mid-read", &a).await;
    // The main file now includes another directory (the set of files read changes),
    // whose file defines b; once the reload has read it, and before it is applied, that
    // file is edited to define c instead.
    create_config_dir(&r.dir.join("customers"));
    let customer = r.dir.join("customers/x.toml");
    write_atomically(&customer, &drop_in("b"));
    let main = main_file(
        "customers/*.toml",
        ("127.0.0.1:0", &r.admin),
        &r.sts.endpoint_url(),
        "",
        &a,
    );
    write_atomically(&r.main, &main);
    let edited = Arc::new(AtomicBool::new(false));
    {
        let (edited, path) = (edited.clone(), customer.clone());
        credvend::testing::after_next_config_read(move || {
            write_atomically(&path, &drop_in("c"));
            edited.store(true, Ordering::SeqCst);
        });
    }
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied
    );
    assert!(
        edited.load(Ordering::SeqCst),
        "the edit was not made during the reload"
    );
    assert_eq!(
        r.get("b", TOKEN_B).await.status,
        200,
        "what was read is applied"
    );

    // The edit's own file event: what is on disk is not what was applied.
    assert!(
        r.reloader.changed_on_disk(),
        "the edit made during the reload passes for applied"
    );
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied,
        "the edit made during the reload was taken for applied"
    );
    assert_eq!(r.get("c", TOKEN_B).await.status, 200);
    assert_access_denied(&r.get("b", TOKEN_B).await, "b replaced by c");
    assert_eq!(r.reloads(), (2.0, 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_reload_shows_in_status_and_metrics_with_its_problems_and_no_external_id() {
    use credvend::clock::Clock;
    const GOOD_ID: &str = "canary-good-external-id-0123456789";
    const BAD_ID: &str = "canary bad external id 0123456789";
    let a = |id: &str| mapping("a", "role-a", id, TOKEN_A);
    let r = InProcess::start("last-reload", &a(GOOD_ID)).await;
    let status = || async {
        let response = request(r.daemon.admin, "GET", "/status", &[]).await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert!(
            !response.body.contains("canary"),
            "an External ID in /status: {}",
            response.body
        );
        response.json()
    };
    let gauges = || {
        let text = r.daemon.daemon.metrics().render();
        let sample = |series: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(series)?
                        .strip_prefix(' ')?
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
        };
        (
            sample("credvend_config_last_reload_successful"),
            sample("credvend_config_last_reload_timestamp_seconds"),
        )
    };
    let secs = |at: std::time::SystemTime| {
        at.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let rfc3339 = |at: std::time::SystemTime| humantime::format_rfc3339_seconds(at).to_string();

    // Before any reload: none shown; the start-up load counts as the last, applied.
    let started = status().await;
    assert_eq!(started["last_reload"], serde_json::Value::Null, "{started}");
    let started_at = humantime::parse_rfc3339(started["started_at"].as_str().unwrap()).unwrap();
    let (ok, at) = gauges();
    assert_eq!((ok, at.floor()), (1.0, secs(started_at)));

    // A rejected edit: an External ID with blanks and an unknown key. Whole seconds on
    // the clock, so the gauge and the RFC 3339 time compare exactly.
    let clock = &r.daemon.clock;
    clock.set(std::time::UNIX_EPOCH + Duration::from_secs(secs(clock.now()) as u64 + 60));
    r.write_main("127.0.0.1:0", "bogus = 1", &a(BAD_ID));
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Rejected
    );
    let rejected_at = clock.now();
    let s = status().await;
    let last = &s["last_reload"];
    assert_eq!(last["result"], "rejected", "{s}");
    assert_eq!(last["trigger"], "file_change", "{s}");
    assert_eq!(last["at"], rfc3339(rejected_at), "{s}");
    assert_eq!(last["config_generation"], 1, "{s}");
    assert_eq!(last["problem_count"], 2, "{s}");
    let main = r.main.display().to_string();
    let mut keys: Vec<&str> = last["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["file"], main.as_str(), "{p}");
            assert!(!p["reason"].as_str().unwrap().is_empty(), "{p}");
            p["key"].as_str().unwrap()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["mappings.a.external_id", "sts.bogus"], "{s}");
    assert_eq!(gauges(), (0.0, secs(rejected_at)));
    // The running configuration is unchanged.
    assert_eq!(s["config_generation"], 1, "{s}");

    // A TOML syntax error on the External ID's line, retried by SIGHUP.
    clock.advance(Duration::from_secs(60));
    let unterminated = a(GOOD_ID).replace(&format!("\"{GOOD_ID}\""), &format!("\"{GOOD_ID}"));
    r.write_main("127.0.0.1:0", "", &unterminated);
    assert_eq!(r.reloader.reload(Trigger::Signal), ReloadOutcome::Rejected);
    let s = status().await;
    assert_eq!(s["last_reload"]["trigger"], "signal", "{s}");
    assert_eq!(s["last_reload"]["problem_count"], 1, "{s}");
    assert!(
        s["last_reload"]["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("TOML parse error"),
        "{s}"
    );
    assert_eq!(gauges(), (0.0, secs(clock.now())));

    // Fixed: applied, no problems, the new generation.
    clock.advance(Duration::from_secs(60));
    r.write_main("127.0.0.1:0", "", &a(GOOD_ID));
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied
    );
    let s = status().await;
    let last = &s["last_reload"];
    assert_eq!(last["result"], "applied", "{s}");
    assert_eq!(last["at"], rfc3339(clock.now()), "{s}");
    assert_eq!(last["config_generation"], 2, "{s}");
    assert_eq!(s["config_generation"], 2, "{s}");
    assert_eq!(last["problem_count"], 0, "{s}");
    assert_eq!(last["problems"], serde_json::json!([]), "{s}");
    assert_eq!(gauges(), (1.0, secs(clock.now())));
}

/// What one request of the generation-swap test was, and what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum GenRequest {
    /// `/v1/credentials/m` with the token of `m` in generation X (role `gen-a`).
    OldToken,
    /// `/v1/credentials/m` with the token of `m` in generation Y (role `gen-b`).
    NewToken,
    /// `/v1/credentials` with the token valid in both: mapping `p` (role `gen-p`) in X,
    /// mapping `q` (role `gen-q`) in Y.
    BothGenerations,
}

/// Tokens and credentials switch together (docs/design.md, Reload): while reloads flip
/// mapping `m` between role `gen-a` (token A) and role `gen-b` (token B) hundreds of
/// times, every credential served to token A is `gen-a`'s and every one served to token
/// B is `gen-b`'s, and a token valid in both generations (for a mapping that exists under
/// another name in each) is never refused. A request authorised against one generation
/// and served from the other would break one of these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_authorised_and_served_by_one_generation_while_reloads_flip_a_role() {
    use credvend::testing::{config, mapping, role_arn};
    use support::daemon::token;
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    for role in ["gen-a", "gen-b", "gen-p", "gen-q"] {
        sts.add_role(Role::new(role_arn(role), TrustRule::NoExternalIdRequired));
    }
    let (token_a, token_b, token_both) = (token("gen-a"), token("gen-b"), token("gen-both"));
    let x = config(
        &sts.endpoint_url(),
        vec![
            mapping("m", "gen-a", Some("external-id-a"), &token_a),
            mapping("p", "gen-p", Some("external-id-p"), &token_both),
        ],
    );
    let y = config(
        &sts.endpoint_url(),
        vec![
            mapping("m", "gen-b", Some("external-id-b"), &token_b),
            mapping("q", "gen-q", Some("external-id-q"), &token_both),
        ],
    );
    let d = TestDaemon::start(x.clone(), clock).await;

    // Reloads flip X and Y on a thread of their own (as `reload::run` applies them, in
    // `block_in_place`) until the clients are done.
    let done = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicUsize::new(0));
    let flipper = {
        let (daemon, done, flips) = (d.daemon.clone(), done.clone(), flips.clone());
        tokio::task::spawn_blocking(move || {
            while !done.load(Ordering::Relaxed) {
                let n = flips.fetch_add(1, Ordering::Relaxed);
                daemon.apply_config(if n % 2 == 0 { &y } else { &x });
                std::thread::yield_now();
            }
        })
    };

    const CLIENTS: usize = 6;
    const PER_CLIENT: usize = 150;
    let kinds = [
        GenRequest::OldToken,
        GenRequest::NewToken,
        GenRequest::BothGenerations,
    ];
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = d.addr;
            let tokens = (token_a.clone(), token_b.clone(), token_both.clone());
            tokio::spawn(async move {
                let mut answers = Vec::with_capacity(PER_CLIENT);
                for i in 0..PER_CLIENT {
                    let kind = kinds[(c + i) % kinds.len()];
                    let (path, token) = match kind {
                        GenRequest::OldToken => ("/v1/credentials/m", &tokens.0),
                        GenRequest::NewToken => ("/v1/credentials/m", &tokens.1),
                        GenRequest::BothGenerations => ("/v1/credentials", &tokens.2),
                    };
                    answers.push((kind, get_with_token(addr, path, token).await));
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.expect("client task"));
    }
    done.store(true, Ordering::Relaxed);
    flipper.await.expect("reload thread");
    let flips = flips.load(Ordering::Relaxed);

    // Every credential the fake STS issued, by AccessKeyId: the role it was issued for.
    let issued: std::collections::HashMap<String, String> = sts
        .assume_role_calls()
        .into_iter()
        .filter_map(|c| Some((c.issued_access_key_id?, c.role_arn?)))
        .collect();
    let mut wrong = Vec::new();
    let mut served = std::collections::HashMap::<(GenRequest, String), usize>::new();
    for (kind, answer) in &answers {
        if answer.status != 200 {
            let refused_is_right = matches!(kind, GenRequest::OldToken | GenRequest::NewToken)
                && answer.status == 403
                && answer.json()["code"] == "AccessDenied";
            if !refused_is_right {
                wrong.push(format!("{kind:?}: {} {}", answer.status, answer.body));
            }
            continue;
        }
        let key_id = answer.json()["AccessKeyId"]
            .as_str()
            .expect("AccessKeyId")
            .to_string();
        let role = issued
            .get(&key_id)
            .unwrap_or_else(|| panic!("{kind:?}: {key_id} was not issued by the fake STS"));
        let expected: &[&str] = match kind {
            GenRequest::OldToken => &["gen-a"],
            GenRequest::NewToken => &["gen-b"],
            GenRequest::BothGenerations => &["gen-p", "gen-q"],
        };
        if !expected.iter().any(|r| role_arn(r) == *role) {
            wrong.push(format!("{kind:?}: credentials of {role}"));
        }
        *served.entry((*kind, role.clone())).or_default() += 1;
    }
    assert!(
        wrong.is_empty(),
        "{} of {} answers mixed two generations ({flips} reloads), e.g. {:?}",
        wrong.len(),
        answers.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Both generations were really served to each token (the flips overlapped the
    // requests), or the test proved nothing.
    for kind in [GenRequest::OldToken, GenRequest::NewToken] {
        assert!(
            served.keys().any(|(k, _)| *k == kind),
            "{kind:?} was never served: {served:?} ({flips} reloads)"
        );
    }
    for role in ["gen-p", "gen-q"] {
        assert!(
            served.contains_key(&(GenRequest::BothGenerations, role_arn(role))),
            "the token valid in both generations never got {role}'s credentials: \
             {served:?} ({flips} reloads)"
        );
    }
    d.stop().await;
}

/// Mapping `a` (role-a, [`TOKEN_A`]) with `external_id_enforcement = mode`, after a
/// `[refresh]` whose cold wait covers a first vend's three STS calls (two probes, the
/// real call) on a loaded machine.
fn enforced_a(mode: &str) -> String {
    let a = mapping_tokens("a", "role-a", "external-id-a-1", &[TOKEN_A]).replace(
        r#"external_id_enforcement = "off""#,
        &format!(r#"external_id_enforcement = "{mode}""#),
    );
    assert!(a.contains(mode), "the mode was set");
    format!("[refresh]\ncold_wait = \"10s\"\n{a}")
}

impl InProcess {
    /// Mapping `a`'s `external_id_enforcement` in `/status`: (mode, result, state).
    async fn enforcement_of_a(&self) -> (String, String, String) {
        let status = request(self.daemon.admin, "GET", "/status", &[])
            .await
            .json();
        let a = &status["mappings"]["a"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        (
            text(&a["external_id_enforcement"]["mode"]),
            text(&a["external_id_enforcement"]["result"]),
            text(&a["state"]),
        )
    }
}

fn assert_trust_policy_unsafe(r: &RawResponse, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", r.body);
    assert_eq!(r.json()["code"], "TrustPolicyUnsafe", "{what}: {}", r.body);
}

/// A reload that changes only a mapping's enforcement mode re-decides it at the next
/// request, against the verdict already known (no STS call, no clock advance): `off`
/// serves a role found unsafe at once (its 403 is not kept by the negative cache), and
/// `require` again refuses it at once although its credential is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_enforcement_mode_is_decided_at_the_next_request() {
    // role-a's trust policy has no External ID condition (fake_sts_on).
    let r = InProcess::start("mode", &enforced_a("require")).await;
    let arn = "arn:aws:iam::111122223333:role/role-a";
    assert_trust_policy_unsafe(&r.get("a", TOKEN_A).await, "require, unsafe role");
    assert_eq!(
        r.sts.assume_role_calls().len(),
        1,
        "the accepted probe only"
    );
    assert_eq!(
        r.enforcement_of_a().await,
        ("require".into(), "not_enforced".into(), "failed".into())
    );

    // `off`: served at the very next request, the clock where it was.
    r.write_main("127.0.0.1:0", "", &enforced_a("off"));
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied
    );
    let served = r.get("a", TOKEN_A).await;
    assert_eq!(served.status, 200, "off serves at once: {}", served.body);
    let key_id = served.json()["AccessKeyId"].as_str().unwrap().to_string();
    let calls = r.sts.assume_role_calls();
    assert_eq!(calls.len(), 2, "one real call, no probe under off");
    assert_eq!(calls[1].role_arn.as_deref(), Some(arn));
    assert_eq!(
        calls[1].issued_access_key_id.as_deref(),
        Some(key_id.as_str())
    );
    let (mode, result, _) = r.enforcement_of_a().await;
    assert_eq!((mode.as_str(), result.as_str()), ("off", "not_enforced"));

    // Back to `require`: the cached credential is refused from the next request on,
    // without an STS call, and /status says why.
    r.write_main("127.0.0.1:0", "", &enforced_a("require"));
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied
    );
    for _ in 0..3 {
        assert_trust_policy_unsafe(&r.get("a", TOKEN_A).await, "require again, cached");
    }
    let (mode, result, _) = r.enforcement_of_a().await;
    assert_eq!(
        (mode.as_str(), result.as_str()),
        ("require", "not_enforced")
    );

    // `warn`: the same cached credential is served again, still without an STS call.
    r.write_main("127.0.0.1:0", "", &enforced_a("warn"));
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied
    );
    let warned = r.get("a", TOKEN_A).await;
    assert_eq!(warned.status, 200, "warn serves: {}", warned.body);
    assert_eq!(warned.json()["AccessKeyId"], key_id.as_str(), "from cache");
    assert_eq!(r.sts.assume_role_calls().len(), 2, "no STS call since off");
    let (mode, result, _) = r.enforcement_of_a().await;
    assert_eq!((mode.as_str(), result.as_str()), ("warn", "not_enforced"));
}

/// A role found not enforcing its External ID, fixed by the customer: a SIGHUP (even
/// with the configuration unchanged) makes the next request check it again and serve,
/// without waiting out the negative cache's backoff or the recheck interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_rechecks_a_role_found_unsafe_at_the_next_request() {
    let r = InProcess::start("sighup-unsafe", &enforced_a("require")).await;
    let arn = "arn:aws:iam::111122223333:role/role-a";
    assert_trust_policy_unsafe(&r.get("a", TOKEN_A).await, "unsafe");
    assert_eq!(r.sts.assume_role_calls().len(), 1);

    // The customer adds the condition. Without a SIGHUP the verdict stands (no probe).
    r.sts.add_role(Role::new(
        arn,
        TrustRule::RequireExternalId("external-id-a-1".into()),
    ));
    assert_trust_policy_unsafe(&r.get("a", TOKEN_A).await, "fixed, no SIGHUP yet");
    assert_eq!(
        r.sts.assume_role_calls().len(),
        1,
        "refused from the known verdict"
    );

    assert_eq!(r.reloader.reload(Trigger::Signal), ReloadOutcome::Applied);
    let served = r.get("a", TOKEN_A).await;
    assert_eq!(served.status, 200, "served after SIGHUP: {}", served.body);
    let calls = r.sts.assume_role_calls();
    assert_eq!(calls.len(), 4, "two refused probes, then the real call");
    assert_eq!(
        calls[1..].iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![Some(403), Some(403), Some(200)]
    );
    assert_eq!(
        r.enforcement_of_a().await,
        ("require".into(), "enforced".into(), "fresh".into())
    );
}

/// A role that refused the assumption (terminal AccessDenied, negatively cached), fixed
/// by the customer: a SIGHUP makes the next request try STS again instead of answering
/// from the negative cache for the rest of its backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_retries_a_mapping_refused_by_sts_at_the_next_request() {
    let r = InProcess::start("sighup-denied", &enforced_a("off")).await;
    let arn = "arn:aws:iam::111122223333:role/role-a";
    r.sts.set_role_fault(arn, Some(Fault::AccessDenied));
    let refused = r.get("a", TOKEN_A).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        refused.json()["code"],
        "AssumeRoleDenied",
        "{}",
        refused.body
    );
    assert_eq!(r.sts.faults_fired_for(arn), vec![Fault::AccessDenied]);

    // Fixed; without a SIGHUP the negative cache answers, STS is not asked.
    r.sts.set_role_fault(arn, None);
    let cached = r.get("a", TOKEN_A).await;
    assert_eq!(cached.json()["code"], "AssumeRoleDenied", "{}", cached.body);
    assert_eq!(r.sts.assume_role_calls().len(), 1, "negatively cached");

    assert_eq!(r.reloader.reload(Trigger::Signal), ReloadOutcome::Applied);
    let served = r.get("a", TOKEN_A).await;
    assert_eq!(served.status, 200, "served after SIGHUP: {}", served.body);
    assert_eq!(r.sts.assume_role_calls().len(), 2);
    assert_eq!(r.sts.faults_fired_for(arn), vec![Fault::AccessDenied]);
}

/// A credential fetched under `off` was never checked: a reload to `require` does not
/// serve it before the role is checked. The next request probes; an unsafe role is
/// refused, and its credential is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_require_checks_a_role_never_checked_before_serving_its_cached_credential() {
    let r = InProcess::start("mode-unchecked", &enforced_a("off")).await;
    let served = r.get("a", TOKEN_A).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(r.sts.assume_role_calls().len(), 1, "off: no probe");
    let (mode, result, _) = r.enforcement_of_a().await;
    assert_eq!((mode.as_str(), result.as_str()), ("off", "unknown"));

    r.write_main("127.0.0.1:0", "", &enforced_a("require"));
    assert_eq!(
        r.reloader.reload(Trigger::FileChange),
        ReloadOutcome::Applied
    );
    assert_trust_policy_unsafe(&r.get("a", TOKEN_A).await, "checked at the first request");
    let calls = r.sts.assume_role_calls();
    assert_eq!(calls.len(), 2, "one probe, accepted: {calls:?}");
    assert_eq!(
        calls[1].session_name.as_deref(),
        Some(credvend::verify::PROBE_SESSION_NAME)
    );
    assert_eq!(
        r.enforcement_of_a().await,
        ("require".into(), "not_enforced".into(), "failed".into())
    );
}
