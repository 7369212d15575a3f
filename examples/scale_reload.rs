//! Reload and prefetch at scale, in process (no HTTP, no real STS): prints figures, asserts
//! nothing about time. Part of `scripts/bench.sh scale`; by hand:
//!
//! ```text
//! cargo run --release --example scale_reload -- [reload MAPPINGS] [warm MAPPINGS RPS]
//! ```
//!
//! - `reload N` (default 100,000): a main file with `include = "mappings.d/*.toml"` and N
//!   files of one mapping each, 1,000 of them `prefetch` (warmed first, so a reload has
//!   credentials to keep). Then one mapping's file gets another role and the reloader
//!   runs as a file event would run it. Prints the read + apply time (the watch adds its
//!   debounce, [`credvend::reload::DEBOUNCE`], before it), the AssumeRole calls the
//!   reload caused (target: exactly 1, the changed mapping), and the peak RSS during the
//!   reload against the idle RSS before it (target ≤ 1.5×).
//! - `warm N RPS` (default 10,000 at 1,000/s): N `prefetch` mappings and one more that is
//!   not; `[sts] max_requests_per_second = RPS`. Prints the time until every mapping is
//!   warm, the highest number of AssumeRole calls started in any one-second window
//!   (target ≤ RPS, plus the bucket's burst of one second's worth), and how long a cold
//!   request for the other mapping, made while the warm-up runs, waited for STS.
//!
//! The STS is an assumer that answers at once: the figures are credvend's own cost.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use credvend::clock::SystemClock;
use credvend::config::Config;
use credvend::creds::{AssumeError, AssumeRoleInput, Credentials, RoleAssumer};
use credvend::daemon::Daemon;
use credvend::reload::{ReloadOutcome, Reloader, Trigger};
use credvend::secret::SecretValue;

const ACCOUNT: &str = "111122223333";

/// Answers every AssumeRole at once with a 1 h credential; records when and for which
/// role each call came.
#[derive(Default)]
struct CountingSts {
    calls: AtomicUsize,
    log: Mutex<Vec<(Instant, String)>>,
}

impl RoleAssumer for CountingSts {
    fn assume_role<'a>(
        &'a self,
        input: &'a AssumeRoleInput,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Credentials, AssumeError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            self.log
                .lock()
                .unwrap()
                .push((Instant::now(), input.role_arn.to_string()));
            Ok(Credentials {
                access_key_id: format!("ASIASCALE{n:011}"),
                secret_access_key: SecretValue::new("secret"),
                session_token: SecretValue::new("token"),
                expiration: SystemTime::now() + Duration::from_secs(3600),
                assumed_role_arn: format!("arn:aws:sts::{ACCOUNT}:assumed-role/r/s"),
            })
        })
    }
}

fn main_file(dir: &Path, rps: u32, include: bool, inline: &str) -> PathBuf {
    let path = dir.join("credvend.toml");
    let include = if include {
        "include = \"mappings.d/*.toml\"\n\n"
    } else {
        ""
    };
    let text = format!(
        "{include}[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:1\"\n\n\
         [sts]\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\"\n\
         max_requests_per_second = {rps}\n\n[verify]\nexternal_id_enforcement = \"off\"\n\n\
         [refresh]\ncold_wait = \"10s\"\n\n{inline}"
    );
    write_private(&path, &text);
    path
}

fn mapping_toml(i: usize, role: &str, prefetch: bool) -> String {
    format!(
        "[mappings.m{i:06}]\nrole_arn = \"arn:aws:iam::{ACCOUNT}:role/{role}\"\n\
         external_id = \"external-id-{i:06}\"\ntoken_sha256 = [\"{:064x}\"]\nprefetch = {prefetch}\n\n",
        i as u128 + 1
    )
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .expect("write a config file");
    file.write_all(text.as_bytes())
        .expect("write a config file");
    drop(file);
    std::fs::rename(&tmp, path).expect("rename a config file into place");
}

/// A directory in the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("credvend-scale-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (VmRSS, VmHWM) in KiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

/// Reload of one mapping's file among `count` included files.
pub async fn reload_scenario(count: usize) {
    const WARM: usize = 1000;
    let dir = TempDir::new("reload");
    let path = main_file(dir.path(), 100_000, true, "");
    let include = dir.path().join("mappings.d");
    std::fs::create_dir(&include).expect("mappings.d");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&include, std::fs::Permissions::from_mode(0o700))
            .expect("chmod mappings.d");
    }
    let started = Instant::now();
    for i in 0..count {
        write_private(
            &include.join(format!("m{i:06}.toml")),
            &mapping_toml(i, &format!("role-{i}"), i < WARM),
        );
    }
    println!(
        "reload at {count} included files ({WARM} of them prefetch), written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let (sources, config) = Config::read(&path);
    let config = config.unwrap_or_else(|e| panic!("config invalid: {:?}", e.problems));
    println!(
        "  first read + validate: {} ms",
        started.elapsed().as_millis()
    );
    let sts = Arc::new(CountingSts::default());
    let daemon = Arc::new(Daemon::new(&config, sts.clone(), Arc::new(SystemClock)));
    daemon.cache.start();
    let reloader = Reloader::new(path.clone(), config, sources, daemon.clone());
    let warmed = wait_until("warm-up", Duration::from_secs(600), || {
        sts.calls.load(Ordering::SeqCst) >= WARM && daemon.cache.prefetch_settled()
    })
    .await;
    println!(
        "  {WARM} prefetch mappings warm after {} ms",
        warmed.as_millis()
    );
    // A no-op file event: read and digest only.
    let started = Instant::now();
    assert_eq!(
        reloader.reload(Trigger::FileChange),
        ReloadOutcome::Unchanged
    );
    println!(
        "  file event, nothing changed (read + digest): {} ms",
        started.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (idle, _) = rss();

    // Change one warm mapping's role.
    let target = 7;
    write_private(
        &include.join(format!("m{target:06}.toml")),
        &mapping_toml(target, "role-changed", true),
    );
    let calls_before = sts.calls.load(Ordering::SeqCst);
    reset_peak();
    let started = Instant::now();
    let outcome = reloader.reload(Trigger::FileChange);
    let took = started.elapsed();
    assert_eq!(outcome, ReloadOutcome::Applied);
    wait_until(
        "the changed mapping's prefetch",
        Duration::from_secs(60),
        || sts.calls.load(Ordering::SeqCst) > calls_before && daemon.cache.prefetch_settled(),
    )
    .await;
    // Anything else the reload set off would have started by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, peak) = rss();
    let calls: Vec<String> = sts.log.lock().unwrap()[calls_before..]
        .iter()
        .map(|(_, role)| role.clone())
        .collect();
    println!(
        "  reload changing 1 mapping's file: {} ms read + validate + apply \
         (+ {} ms watch debounce; target <= 1000 ms in all)",
        took.as_millis(),
        credvend::reload::DEBOUNCE.as_millis()
    );
    println!(
        "  AssumeRole calls caused by the reload: {} {calls:?} (target: 1, role-changed)",
        calls.len()
    );
    println!(
        "  RSS idle {}, peak during the reload {} = {:.2}x (target <= 1.5x)",
        mib(idle),
        mib(peak),
        peak as f64 / idle.max(1) as f64
    );
    // Where a full reload's time goes: reading and validating everything, then applying.
    let started = Instant::now();
    let (_, full) = Config::read(&path);
    let full = full.unwrap_or_else(|e| panic!("config invalid: {:?}", e.problems));
    let read_took = started.elapsed();
    let started = Instant::now();
    daemon.apply_config(&full);
    println!(
        "  for comparison, a full read + validate {} ms, applying {} mappings {} ms",
        read_took.as_millis(),
        full.mappings.len(),
        started.elapsed().as_millis()
    );
    drop(full);
    drop(reloader);
    drop(daemon);
}

/// Warm-up of `count` prefetch mappings under `[sts] max_requests_per_second = rps`, with
/// one cold request made while it runs.
pub async fn warm_scenario(count: usize, rps: u32) {
    use std::fmt::Write as _;
    let dir = TempDir::new("warm");
    let mut inline = String::with_capacity(count * 250);
    for i in 0..count {
        inline.push_str(&mapping_toml(i, &format!("role-{i}"), true));
    }
    let cold = count;
    let _ = write!(inline, "{}", mapping_toml(cold, "role-cold", false));
    let path = main_file(dir.path(), rps, false, &inline);
    let (_, config) = Config::read(&path);
    let config = config.unwrap_or_else(|e| panic!("config invalid: {:?}", e.problems));
    let sts = Arc::new(CountingSts::default());
    let daemon = Arc::new(Daemon::new(&config, sts.clone(), Arc::new(SystemClock)));
    let started = Instant::now();
    daemon.cache.start();
    // Let the warm-up use its burst first, then ask for the cold mapping.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = Instant::now();
    daemon
        .cache
        .get(&format!("m{cold:06}"))
        .await
        .expect("the cold mapping vends");
    let cold_wait = asked.elapsed();
    wait_until("warm-up", Duration::from_secs(3600), || {
        daemon.cache.prefetch_settled()
    })
    .await;
    let warm = started.elapsed();
    let log = sts.log.lock().unwrap();
    let mut per_window: BTreeMap<u64, usize> = BTreeMap::new();
    for (at, _) in log.iter() {
        *per_window
            .entry(at.duration_since(started).as_secs())
            .or_default() += 1;
    }
    let busiest = per_window.values().max().copied().unwrap_or(0);
    println!("warm-up of {count} prefetch mappings at max_requests_per_second = {rps}");
    println!(
        "  every mapping warm after {:.1} s (floor at this budget: {:.1} s)",
        warm.as_secs_f64(),
        count.saturating_sub(rps as usize) as f64 / f64::from(rps)
    );
    println!(
        "  AssumeRole calls: {}; most started in one second: {busiest} (budget {rps}/s, \
         burst {rps})",
        log.len()
    );
    println!(
        "  cold request during the warm-up served after {:.1} ms (one budget slot: {:.1} ms)",
        cold_wait.as_secs_f64() * 1000.0,
        1000.0 / f64::from(rps)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let arg = |i: usize, default: usize| {
        args.get(i)
            .and_then(|a| a.replace('_', "").parse().ok())
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("reload") => runtime.block_on(reload_scenario(arg(1, 100_000))),
        Some("warm") => runtime.block_on(warm_scenario(arg(1, 10_000), arg(2, 1000) as u32)),
        _ => {
            runtime.block_on(reload_scenario(100_000));
            runtime.block_on(warm_scenario(10_000, 1000));
        }
    }
}
