//! Load and soak driver (docs/soak.md; not part of CI): runs the real `credvend serve`
//! binary against the in-repo fake STS under continuous client load, with SIGHUP
//! reloads and an injected STS outage, and reports what clients saw.
//!
//! Run it through `scripts/soak.sh`, which builds the release binary first. By hand:
//!
//! ```text
//! cargo run --release --example soak -- --credvend target/release/credvend
//! ```
//!
//! **Lifetimes.** credvend asks STS for 1 h sessions (config validation requires at
//! least 900 s), but the fake STS hands out credentials living only `--lifetime`
//! seconds (plus a few seconds more per mapping, so refreshes do not line up).
//! credvend treats them as short-lived: serves them and refreshes them at half their
//! life. A credential is never served within 60 s of expiry, so lifetimes must stay
//! above 120 s for the half-life refresh to land while the old credential is still
//! servable; the default 140 s gives a refresh about every 70 s per mapping.
//!
//! **Timeline** (all bounded; the driver stops itself after `--duration`):
//! - `--workers` keep-alive clients plus `--fresh-conn-workers` clients that open a
//!   new connection per request, each pausing `--pause-ms` between requests, spread
//!   over the mappings (every 7th request uses `GET /v1/credentials`, resolving the
//!   mapping from the token);
//! - every `--reload-every`, the config file is rewritten and credvend gets SIGHUP:
//!   alternately adding and removing a mapping (`toggle`, which joins the load only
//!   once credvend reports the reload applied, and leaves it before the reload that
//!   removes it); every 5th reload writes an invalid file first, which must be
//!   rejected with the old mappings serving;
//! - from `--outage-start` for `--outage-length`, every STS AssumeRole answers 503.
//!
//! **Report:** requests, non-200 responses split into before / inside / after the
//! outage window (the window includes a recovery allowance of one backoff cap, 60 s,
//! after STS returns; the last non-200 after the outage is reported separately),
//! transport errors, credentials served with less than 60 s left (must be 0), distinct
//! AccessKeyIds seen, STS calls (from the fake, by outcome), reloads, peak RSS
//! (`VmHWM`) and RSS over time. Exits non-zero when anything outside the outage window
//! failed.

#[path = "../tests/support/fake_sts.rs"]
mod fake_sts;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use credvend::clock::SystemClock;
use credvend::secret::TokenHash;
use fake_sts::{FakeSts, Fault, Role, TrustRule};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A credential served with this little left breaks the contract
/// (docs/design.md, Credential lifecycle).
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// Recovery allowance after STS returns: one transient backoff cap.
const RECOVERY_ALLOWANCE: Duration = Duration::from_secs(60);
/// Upper bound on requests per worker, on top of the time bound.
const MAX_REQUESTS_PER_WORKER: u64 = 5_000_000;

#[derive(Parser, Debug)]
#[command(about = "Soak credvend against the fake STS")]
struct Args {
    /// The credvend binary to run.
    #[arg(long, default_value = "target/release/credvend")]
    credvend: PathBuf,
    /// Total load duration, seconds.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Mappings under load (plus the toggled one).
    #[arg(long, default_value_t = 6)]
    mappings: usize,
    /// Credential lifetime handed out by the fake STS, seconds (> 120).
    #[arg(long, default_value_t = 140)]
    lifetime: u64,
    /// Keep-alive client connections.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Clients opening a new connection per request.
    #[arg(long, default_value_t = 2)]
    fresh_conn_workers: usize,
    /// Pause between requests of one client, milliseconds.
    #[arg(long, default_value_t = 10)]
    pause_ms: u64,
    /// Seconds between SIGHUP reloads.
    #[arg(long, default_value_t = 20)]
    reload_every: u64,
    /// Outage start, seconds after load starts.
    #[arg(long, default_value_t = 240)]
    outage_start: u64,
    /// Outage length, seconds.
    #[arg(long, default_value_t = 90)]
    outage_length: u64,
    /// Keep the work directory (config, credvend log) after the run.
    #[arg(long)]
    keep: bool,
}

/// One mapping as the driver knows it.
#[derive(Clone)]
struct Target {
    name: String,
    token: String,
}

/// What the clients saw. Times are offsets from the start of load.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    ok: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
    /// Non-200 responses and transport errors with their time and a short description.
    failures: Mutex<Vec<(Duration, String)>>,
    transport_errors: AtomicU64,
    short_served: AtomicU64,
    access_key_ids: Mutex<HashSet<String>>,
    latency_max_us: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.lifetime <= 2 * EXPIRY_MARGIN.as_secs() {
        bail!("--lifetime must exceed 120 s (credentials are never served within 60 s of expiry)");
    }
    let work = std::env::temp_dir().join(format!("credvend-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run(&args, &work).await;
    if args.keep || result.is_err() {
        eprintln!("work directory kept: {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

async fn run(args: &Args, work: &Path) -> anyhow::Result<()> {
    let sts = FakeSts::start(Arc::new(SystemClock)).await;
    let mut targets = Vec::new();
    for i in 0..=args.mappings {
        let name = if i == args.mappings {
            "toggle".to_owned()
        } else {
            format!("soak-{i}")
        };
        let lifetime = Duration::from_secs(args.lifetime + 5 * i as u64);
        sts.add_role(
            Role::new(
                role_arn(&name),
                TrustRule::RequireExternalId(external_id(&name)),
            )
            .lifetime(lifetime),
        );
        targets.push(Target {
            token: format!("{:0<64}", hex::encode(format!("soak-token-{name}"))),
            name,
        });
    }
    let toggle = targets.pop().expect("toggle mapping");

    let listen = free_port()?;
    let admin = free_port()?;
    let config_path = work.join("credvend.toml");
    let log_path = work.join("credvend.log");
    let writer = ConfigWriter {
        path: config_path.clone(),
        listen,
        admin,
        sts: sts.endpoint_url(),
        targets: targets.clone(),
        toggle: toggle.clone(),
    };
    writer.write(false, false)?;

    // Empty AWS config files: the SDK reads only the environment's base credentials.
    let aws_config = work.join("aws-config");
    let aws_credentials = work.join("aws-credentials");
    std::fs::write(&aws_config, "")?;
    std::fs::write(&aws_credentials, "")?;
    let log = std::fs::File::create(&log_path)?;
    let child = std::process::Command::new(&args.credvend)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", work)
        .env("AWS_ACCESS_KEY_ID", "AKIASOAKBASE00000000")
        .env("AWS_SECRET_ACCESS_KEY", "soak-base-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", &aws_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &aws_credentials)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", args.credvend.display()))?;
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    eprintln!(
        "credvend pid {pid} on {listen} (admin {admin}); log {}",
        log_path.display()
    );
    wait_ready(admin).await?;

    let tally = Arc::new(Tally::default());
    let load_set = Arc::new(RwLock::new(targets.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);

    let mut workers = Vec::new();
    for worker in 0..args.workers + args.fresh_conn_workers {
        let client = Client {
            addr: listen,
            keep_alive: worker < args.workers,
            pause: Duration::from_millis(args.pause_ms),
            tally: tally.clone(),
            load_set: load_set.clone(),
            stop: stop.clone(),
            started,
            deadline,
        };
        workers.push(tokio::spawn(client.run(worker)));
    }

    let rss_samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_rss(pid, started, deadline, rss_samples.clone()));

    // Control loop: reloads and the outage, on one timeline.
    let outage_start = started + Duration::from_secs(args.outage_start);
    let outage_end = outage_start + Duration::from_secs(args.outage_length);
    let mut outage_on = false;
    let mut reloads = Reloads::default();
    let mut next_reload = started + Duration::from_secs(args.reload_every);
    let mut toggle_present = false;
    while Instant::now() < deadline {
        let now = Instant::now();
        if !outage_on && now >= outage_start && now < outage_end {
            sts.set_persistent_fault(Some(Fault::ServiceUnavailable));
            outage_on = true;
            eprintln!("[{:>4}s] STS outage begins", started.elapsed().as_secs());
        }
        if outage_on && now >= outage_end {
            sts.set_persistent_fault(None);
            outage_on = false;
            eprintln!("[{:>4}s] STS outage ends", started.elapsed().as_secs());
        }
        if now >= next_reload {
            next_reload += Duration::from_secs(args.reload_every);
            reloads.count += 1;
            if reloads.count.is_multiple_of(5) {
                // An invalid file must be rejected whole; the old mappings keep serving.
                writer.write(toggle_present, true)?;
                hup_and_wait(pid, admin, "error", &mut reloads).await?;
                writer.write(toggle_present, false)?;
            } else if toggle_present {
                load_set
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|t| t.name != toggle.name);
                // Let requests already sent for `toggle` finish before it goes away.
                tokio::time::sleep(Duration::from_millis(200)).await;
                writer.write(false, false)?;
                hup_and_wait(pid, admin, "success", &mut reloads).await?;
                toggle_present = false;
            } else {
                writer.write(true, false)?;
                hup_and_wait(pid, admin, "success", &mut reloads).await?;
                load_set
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(toggle.clone());
                toggle_present = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    let _ = sampler.await;
    let hwm_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let metrics = http_get(admin, "/metrics").await.unwrap_or_default();

    // Clean shutdown: SIGTERM, then the exit status.
    signal(pid, "-TERM")?;
    let exit = child.wait_for_exit(Duration::from_secs(30)).await?;

    let report = Report {
        args,
        elapsed,
        tally: &tally,
        outage: (
            Duration::from_secs(args.outage_start),
            Duration::from_secs(args.outage_start + args.outage_length),
        ),
        sts_calls: sts.calls(),
        reloads: &reloads,
        metrics: &metrics,
        hwm_kib,
        rss: &rss_samples.lock().unwrap_or_else(|e| e.into_inner()),
        exit: exit.code(),
    };
    let outside = report.print();
    if outside > 0 {
        bail!("{outside} failed requests outside the outage window");
    }
    if !exit.success() {
        bail!("credvend exited with {exit}");
    }
    Ok(())
}

/// Our credvend child; killed if the driver bails out early.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    async fn wait_for_exit(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let give_up = Instant::now() + limit;
        while Instant::now() < give_up {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "credvend did not exit within {} s of SIGTERM",
            limit.as_secs()
        )
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Counts of reloads the driver performed and credvend confirmed.
#[derive(Default)]
struct Reloads {
    count: u64,
    applied: u64,
    rejected: u64,
}

/// Writes the config file: the load mappings, optionally `toggle`, optionally broken.
struct ConfigWriter {
    path: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    sts: String,
    targets: Vec<Target>,
    toggle: Target,
}

impl ConfigWriter {
    fn write(&self, with_toggle: bool, broken: bool) -> anyhow::Result<()> {
        let mut text = format!(
            r#"[server]
listen = ["{listen}"]
admin_listen = "{admin}"

[log]
# Audit lines (one per vend) would be ~1000 a second here; lifecycle lines stay.
level = "info,credvend::audit=warn"
format = "json"

[sts]
region = "us-east-1"
endpoint_url = "{sts}"
call_timeout = "2s"

[refresh]
session_duration = "1h"
refresh_before = "{refresh_before}"
min_remaining = "20m"

[verify]
external_id_enforcement = "require"
"#,
            listen = self.listen,
            admin = self.admin,
            sts = self.sts,
            // Invalid: not shorter than the session duration.
            refresh_before = if broken { "2h" } else { "35m" },
        );
        let mut mappings: Vec<&Target> = self.targets.iter().collect();
        if with_toggle {
            mappings.push(&self.toggle);
        }
        for target in mappings {
            text.push_str(&format!(
                "\n[mappings.{name}]\nrole_arn = \"{arn}\"\nexternal_id = \"{eid}\"\n\
                 token_sha256 = [\"{hash}\"]\n",
                name = target.name,
                arn = role_arn(&target.name),
                eid = external_id(&target.name),
                hash = TokenHash::of_token(target.token.as_bytes()).to_hex(),
            ));
        }
        // Write then rename, as an operator's config management would: credvend never
        // reads a half-written file.
        let tmp = self.path.with_extension("toml.tmp");
        std::fs::write(&tmp, text)?;
        set_private(&tmp)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

#[cfg(unix)]
fn set_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

fn role_arn(name: &str) -> String {
    format!("arn:aws:iam::111122223333:role/{name}")
}

fn external_id(name: &str) -> String {
    format!("soak-external-id-{name}-0123456789")
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

/// Sends SIGHUP and waits (at most 10 s) until `credvend_config_reloads_total{result}`
/// moves: the driver only changes the load set once credvend has applied a reload.
async fn hup_and_wait(
    pid: u32,
    admin: SocketAddr,
    result: &str,
    reloads: &mut Reloads,
) -> anyhow::Result<()> {
    let series = format!("credvend_config_reloads_total{{result=\"{result}\"}}");
    let before = metric(&http_get(admin, "/metrics").await?, &series);
    signal(pid, "-HUP")?;
    let give_up = Instant::now() + Duration::from_secs(10);
    while Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = metric(&http_get(admin, "/metrics").await?, &series);
        if now > before {
            match result {
                "success" => reloads.applied += 1,
                _ => reloads.rejected += 1,
            }
            return Ok(());
        }
    }
    bail!("credvend did not report a reload ({result}) within 10 s of SIGHUP")
}

async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(30);
    while Instant::now() < give_up {
        if let Ok(response) = request(admin, "/readyz", None, false).await
            && response.status == 200
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("credvend was not ready within 30 s")
}

/// The value of one exposition line `series value`, 0 when absent.
fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Sum of every sample of `family` whose labels contain `filter`.
fn metric_sum(exposition: &str, family: &str, filter: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| line.starts_with(&format!("{family}{{")) && line.contains(filter))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    Ok(request(addr, path, None, false).await?.body)
}

async fn sample_rss(
    pid: u32,
    started: Instant,
    deadline: Instant,
    samples: Arc<Mutex<Vec<(u64, u64)>>>,
) {
    while Instant::now() < deadline {
        if let Some(kib) = proc_status_kib(pid, "VmRSS:") {
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((started.elapsed().as_secs(), kib));
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// A `kB` field of `/proc/PID/status`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One load client.
struct Client {
    addr: SocketAddr,
    keep_alive: bool,
    pause: Duration,
    tally: Arc<Tally>,
    load_set: Arc<RwLock<Vec<Target>>>,
    stop: Arc<AtomicBool>,
    started: Instant,
    deadline: Instant,
}

impl Client {
    async fn run(self, worker: usize) {
        let mut conn: Option<BufReader<TcpStream>> = None;
        let mut n: u64 = worker as u64;
        for _ in 0..MAX_REQUESTS_PER_WORKER {
            if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
                break;
            }
            n += 1;
            let target = {
                let set = self.load_set.read().unwrap_or_else(|e| e.into_inner());
                set[(n as usize) % set.len()].clone()
            };
            // Every 7th request lets credvend find the mapping from the token.
            let path = if n.is_multiple_of(7) {
                "/v1/credentials".to_owned()
            } else {
                format!("/v1/credentials/{}", target.name)
            };
            let sent = Instant::now();
            let result = match (&mut conn, self.keep_alive) {
                (Some(stream), true) => {
                    exchange(stream, self.addr, &path, Some(&target.token), true).await
                }
                _ => match TcpStream::connect(self.addr).await {
                    Ok(stream) => {
                        let stream = conn.insert(BufReader::new(stream));
                        exchange(
                            stream,
                            self.addr,
                            &path,
                            Some(&target.token),
                            self.keep_alive,
                        )
                        .await
                    }
                    Err(e) => Err(e.into()),
                },
            };
            let at = self.started.elapsed();
            let latency_us = sent.elapsed().as_micros() as u64;
            self.tally
                .latency_max_us
                .fetch_max(latency_us, Ordering::Relaxed);
            self.tally.requests.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(response) => {
                    *self
                        .tally
                        .by_status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(response.status)
                        .or_default() += 1;
                    if response.status == 200 {
                        self.tally.ok.fetch_add(1, Ordering::Relaxed);
                        self.check_credentials(&response.body, at);
                    } else {
                        let code = serde_json::from_str::<serde_json::Value>(&response.body)
                            .ok()
                            .and_then(|v| v["code"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        self.fail(at, format!("{} {code} {}", response.status, target.name));
                    }
                    if !self.keep_alive {
                        conn = None;
                    }
                }
                Err(error) => {
                    self.tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                    self.fail(at, format!("transport error: {error}"));
                    conn = None;
                }
            }
            tokio::time::sleep(self.pause).await;
        }
    }

    fn fail(&self, at: Duration, what: String) {
        self.tally
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, what));
    }

    /// A 200 body must be a credential with more than [`EXPIRY_MARGIN`] left.
    fn check_credentials(&self, body: &str, at: Duration) {
        let parsed: serde_json::Value = match serde_json::from_str(body) {
            Ok(v) => v,
            Err(_) => return self.fail(at, "200 with a body that is not JSON".into()),
        };
        let expiration = parsed["Expiration"]
            .as_str()
            .and_then(|s| humantime::parse_rfc3339(s).ok());
        match expiration {
            Some(expiration) => {
                let left = expiration
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                // One second of slack: Expiration has whole seconds.
                if left + Duration::from_secs(1) < EXPIRY_MARGIN {
                    self.tally.short_served.fetch_add(1, Ordering::Relaxed);
                    self.fail(at, format!("200 with only {}s left", left.as_secs()));
                }
            }
            None => self.fail(at, "200 without a valid Expiration".into()),
        }
        if let Some(akid) = parsed["AccessKeyId"].as_str() {
            let mut seen = self
                .tally
                .access_key_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !seen.contains(akid) {
                seen.insert(akid.to_owned());
            }
        }
    }
}

struct Response {
    status: u16,
    body: String,
}

/// One request on a fresh connection (admin endpoint, readiness).
async fn request(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    keep_alive: bool,
) -> anyhow::Result<Response> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await?);
    exchange(&mut stream, addr, path, token, keep_alive).await
}

/// Writes one GET and reads one response (Content-Length framed, as credvend always
/// answers), within 5 s.
async fn exchange(
    stream: &mut BufReader<TcpStream>,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    keep_alive: bool,
) -> anyhow::Result<Response> {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: {token}\r\n"));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    tokio::time::timeout(Duration::from_secs(5), async {
        stream.get_mut().write_all(head.as_bytes()).await?;
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut content_length = 0usize;
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                bail!("connection closed inside the response head");
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse()?;
            }
        }
        let mut body = vec![0u8; content_length];
        stream.read_exact(&mut body).await?;
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    })
    .await
    .context("no response within 5 s")?
}

struct Report<'a> {
    args: &'a Args,
    elapsed: Duration,
    tally: &'a Tally,
    /// Outage start and end, offsets from the start of load.
    outage: (Duration, Duration),
    sts_calls: Vec<fake_sts::StsCall>,
    reloads: &'a Reloads,
    metrics: &'a str,
    hwm_kib: u64,
    rss: &'a [(u64, u64)],
    exit: Option<i32>,
}

impl Report<'_> {
    /// Prints the report (Markdown) and returns the failures outside the outage window.
    fn print(&self) -> usize {
        let (start, end) = self.outage;
        let window_end = end + RECOVERY_ALLOWANCE;
        let failures = self
            .tally
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before: Vec<_> = failures.iter().filter(|(t, _)| *t < start).collect();
        let during: Vec<_> = failures
            .iter()
            .filter(|(t, _)| *t >= start && *t < end)
            .collect();
        let recovery: Vec<_> = failures
            .iter()
            .filter(|(t, _)| *t >= end && *t < window_end)
            .collect();
        let after: Vec<_> = failures.iter().filter(|(t, _)| *t >= window_end).collect();
        let last_after_outage = failures
            .iter()
            .filter(|(t, _)| *t >= end)
            .map(|(t, _)| t.saturating_sub(end))
            .max();
        let first_in_outage = during.iter().map(|(t, _)| t.saturating_sub(start)).min();

        let requests = self.tally.requests.load(Ordering::Relaxed);
        let assume: Vec<_> = self
            .sts_calls
            .iter()
            .filter(|c| c.action == "AssumeRole")
            .collect();
        let issued = assume
            .iter()
            .filter(|c| c.issued_access_key_id.is_some())
            .count();
        let faulted = assume.iter().filter(|c| c.fault.is_some()).count();
        let denied_probes = assume
            .iter()
            .filter(|c| c.fault.is_none() && c.error_code.as_deref() == Some("AccessDenied"))
            .count();
        let in_outage = assume.iter().filter(|c| c.fault.is_some()).count();
        let outside = before.len() + after.len();

        println!("## credvend soak report\n");
        println!(
            "- duration: {:.0} s of load; {} mappings (+1 toggled by reloads), STS lifetimes {}–{} s (refresh at half-life)",
            self.elapsed.as_secs_f64(),
            self.args.mappings,
            self.args.lifetime,
            self.args.lifetime + 5 * self.args.mappings as u64
        );
        println!(
            "- load: {} keep-alive + {} new-connection clients, {} ms pause",
            self.args.workers, self.args.fresh_conn_workers, self.args.pause_ms
        );
        println!(
            "- requests: {requests} ({:.0}/s), 200: {}, by status: {:?}",
            requests as f64 / self.elapsed.as_secs_f64(),
            self.tally.ok.load(Ordering::Relaxed),
            self.tally
                .by_status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        );
        println!(
            "- non-200 or transport error: before outage {}, inside outage [{}s, {}s) {}, recovery allowance [{}s, {}s) {}, after {}",
            before.len(),
            start.as_secs(),
            end.as_secs(),
            during.len(),
            end.as_secs(),
            window_end.as_secs(),
            recovery.len(),
            after.len()
        );
        println!("- **non-200 outside the outage window: {outside}**");
        println!(
            "- first failure after outage start: {}; last failure after outage end: {}",
            first_in_outage.map_or("none".into(), |d| format!("+{:.1} s", d.as_secs_f64())),
            last_after_outage.map_or("none".into(), |d| format!("+{:.1} s", d.as_secs_f64()))
        );
        println!(
            "- transport errors: {}; credentials served with < 60 s left: {}; max client latency {:.1} ms",
            self.tally.transport_errors.load(Ordering::Relaxed),
            self.tally.short_served.load(Ordering::Relaxed),
            self.tally.latency_max_us.load(Ordering::Relaxed) as f64 / 1000.0
        );
        println!(
            "- distinct AccessKeyIds served: {}",
            self.tally
                .access_key_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len()
        );
        println!(
            "- STS calls (fake STS): {} total, {} AssumeRole: {issued} issued credentials, {denied_probes} enforcement probes denied (expected), {faulted} failed by the injected outage ({in_outage})",
            self.sts_calls.len(),
            assume.len(),
        );
        println!(
            "- credvend metrics at the end (mappings configured then): assume_role success {}, error {}; served cache {}, fresh {}, degraded {}",
            metric_sum(
                self.metrics,
                "credvend_assume_role_total",
                "result=\"success\""
            ),
            metric_sum(
                self.metrics,
                "credvend_assume_role_total",
                "result=\"error\""
            ),
            metric_sum(
                self.metrics,
                "credvend_credentials_served_total",
                "source=\"cache\""
            ),
            metric_sum(
                self.metrics,
                "credvend_credentials_served_total",
                "source=\"fresh\""
            ),
            metric_sum(
                self.metrics,
                "credvend_credentials_served_total",
                "source=\"degraded\""
            ),
        );
        println!(
            "- reloads: {} SIGHUPs, {} applied, {} invalid rejected (old config kept serving)",
            self.reloads.applied + self.reloads.rejected,
            self.reloads.applied,
            self.reloads.rejected
        );
        let rss: Vec<String> = self
            .rss
            .iter()
            .step_by(6)
            .map(|(t, kib)| format!("{t}s {:.1}", *kib as f64 / 1024.0))
            .collect();
        println!(
            "- peak RSS (VmHWM): {:.1} MiB; RSS MiB over time: {}",
            self.hwm_kib as f64 / 1024.0,
            rss.join(", ")
        );
        println!("- credvend exit status after SIGTERM: {:?}", self.exit);

        let mut kinds: BTreeMap<(&str, String), usize> = BTreeMap::new();
        for (t, what) in failures.iter() {
            let phase = if *t < start {
                "before"
            } else if *t < end {
                "outage"
            } else if *t < window_end {
                "recovery"
            } else {
                "after"
            };
            // Status, code and mapping (transport errors: their first words).
            let kind = what.split(' ').take(3).collect::<Vec<_>>().join(" ");
            *kinds.entry((phase, kind)).or_default() += 1;
        }
        if !kinds.is_empty() {
            println!("\nfailures by phase and kind:");
            for ((phase, kind), count) in &kinds {
                println!("  {phase:<8} {kind:<40} {count}");
            }
        }
        for (t, what) in before.iter().chain(after.iter()).take(20) {
            println!("  outside window at {:.1}s: {what}", t.as_secs_f64());
        }
        outside
    }
}
