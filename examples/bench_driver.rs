//! The benchmark harness (docs/performance.md, "Performance"); `scripts/bench.sh` builds it in
//! release mode and runs `bench_driver all`. Figures come from runs that measure their
//! baseline in the same run, never from timed tests.
//!
//! The driver hosts the in-repo fake STS (`tests/support/fake_sts.rs`) in-process, writes
//! TOML configs into a temporary directory, and runs the **real `credvend serve` binary**
//! as a child process against it (base credentials from the environment), so every
//! figure covers the shipped binary: config loading, logging, metrics, hyper.
//!
//! Scenarios (`bench_driver SCENARIO`; `all` runs them in this order):
//! - `throughput`: credvend's cache-hit path vs `examples/bare_hyper.rs` answering the
//!   same body bytes, `wrk --latency` at fixed connection counts, alternating A B A B.
//!   Prints req/s, p50 and p99 for both, the ratios per pair and their median. With
//!   `BENCH_BASELINE=/path/to/credvend`, that build runs third in every pair (A B C A B
//!   C) and its server-CPU ratio to bare hyper is printed beside this build's.
//! - `herd`: 1,000 concurrent first requests for one mapping while STS takes 300 ms:
//!   AssumeRole calls and the latency distribution.
//! - `scale`: `scale-idle` then `scale-warm`.
//! - `scale-idle`: 100,000 mappings (`BENCH_MAPPINGS`), nothing warm, as one file and as
//!   one included file per mapping, with the process's default environment: check-config
//!   time, start to listening, idle RSS, the first `/metrics` scrape (size, series, time,
//!   peak RSS), a reload of one mapping's file (time to applied, AssumeRole calls, peak
//!   RSS), each beside the goal; `BENCH_BASELINE=/path/to/credvend` measures another
//!   build's start-up in the same run.
//! - `scale-warm`: 10,000 prefetch mappings (`BENCH_PREFETCH_MAPPINGS`): validate+load
//!   time, start to listening, time until all are warm and the STS calls, RSS warm, a
//!   SIGHUP reload changing one mapping (time until that mapping serves its new
//!   credential) and the STS calls it caused; then the cost of a warm credential: RSS of
//!   the same mappings all warm minus a tenth warm, per mapping that differs, with the
//!   process's default environment (and `BENCH_BASELINE`'s, in the same run).
//! - `ttfc`: time to first credential of fresh boto3 processes, through credvend (warm)
//!   vs boto3's own AssumeRole provider, STS with 50 ms latency; STS calls for each.
//!
//! Environment: `BENCH_DURATION` (wrk seconds per run, default 10), `BENCH_CONNECTIONS`
//! (comma-separated, default `16,128`), `BENCH_PAIRS` (default 3, at each log level),
//! `BENCH_LEVELS` (log levels of the throughput runs, default `info,warn`),
//! `BENCH_MAPPINGS` (default 100000), `BENCH_PREFETCH_MAPPINGS` (default 10000), `BENCH_BASELINE`,
//! `BENCH_START_LIMIT` (seconds, default 120), `BENCH_PROCESSES` (default 100), `BENCH_PYTHON` (default
//! `.venv/bin/python`), `BENCH_TARGET` (where the release binaries are, default
//! `target/release`). Every wait is bounded; load goes to 127.0.0.1 only.

#[path = "../tests/support/fake_sts.rs"]
mod fake_sts;
#[path = "../tests/support/http.rs"]
mod http;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credvend::clock::SystemClock;
use fake_sts::{FakeSts, Fault, Role, TrustRule};
use sha2::{Digest, Sha256};

const ACCOUNT: &str = "111122223333";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn target_dir() -> PathBuf {
    PathBuf::from(std::env::var("BENCH_TARGET").unwrap_or_else(|_| "target/release".into()))
}

/// Where the throughput runs place their processes: `BENCH_PIN=SERVER_CPUS:WRK_CPUS`
/// (`taskset -c` lists). The default on a machine with 2 or more CPUs is `0:1`: the
/// server under test on CPU 0, wrk on CPU 1, so neither trades places with the other
/// between runs and each server's rate is what one core of it delivers. `BENCH_PIN=off`
/// lets the scheduler place everything.
fn pin_spec() -> Option<(String, String)> {
    let spec = std::env::var("BENCH_PIN").unwrap_or_else(|_| {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
            "0:1".into()
        } else {
            "off".into()
        }
    });
    spec.split_once(':')
        .map(|(server, wrk)| (server.to_string(), wrk.to_string()))
}

fn pinned(program: impl AsRef<std::ffi::OsStr>, role: Placement) -> Command {
    match pin_spec() {
        Some((server, wrk)) => {
            let mut command = Command::new("taskset");
            command
                .arg("-c")
                .arg(match role {
                    Placement::Server => server,
                    Placement::LoadGenerator => wrk,
                })
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

#[derive(Clone, Copy)]
enum Placement {
    Server,
    LoadGenerator,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

fn role_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{name}")
}

/// 64 hex characters, distinct per `i`.
fn token(i: usize) -> String {
    format!("{i:016x}{}", "0123456789abcdef".repeat(3))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[derive(Clone)]
struct MappingSpec {
    name: String,
    role: String,
    external_id: String,
    token: String,
    prefetch: bool,
}

struct ConfigSpec<'a> {
    listen: SocketAddr,
    admin: SocketAddr,
    sts: &'a str,
    log_level: &'a str,
    max_rps: u32,
    mappings: &'a [MappingSpec],
}

fn write_config(path: &Path, spec: &ConfigSpec<'_>) {
    use std::fmt::Write;
    let mut out = String::with_capacity(256 + spec.mappings.len() * 300);
    let _ = write!(
        out,
        "[server]\nlisten = [\"{}\"]\nadmin_listen = \"{}\"\nmax_connections = 4096\n\n\
         [log]\nlevel = \"{}\"\n\n[sts]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\
         max_requests_per_second = {}\n\n[verify]\nexternal_id_enforcement = \"off\"\n\n",
        spec.listen, spec.admin, spec.log_level, spec.sts, spec.max_rps
    );
    for m in spec.mappings {
        let _ = write!(
            out,
            "[mappings.{}]\nrole_arn = \"{}\"\nexternal_id = \"{}\"\ntoken_sha256 = [\"{}\"]\nprefetch = {}\n\n",
            m.name,
            role_arn(&m.role),
            m.external_id,
            sha256_hex(&m.token),
            m.prefetch
        );
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out).expect("write config");
    set_private(&tmp);
    std::fs::rename(&tmp, path).expect("rename config");
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// A child process killed on drop.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The glibc allocator settings (`MALLOC_*`) of `systemd/credvend.service`'s
/// `Environment=` lines, so the benchmarks run credvend as it is deployed.
fn shipped_allocator_env() -> Vec<(String, String)> {
    let unit = std::fs::read_to_string("systemd/credvend.service").unwrap_or_default();
    let env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Environment="))
        .flat_map(str::split_whitespace)
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| key.starts_with("MALLOC_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env
}

fn spawn_credvend(config: &Path, log: &Path) -> Proc {
    spawn_credvend_with(config, log, &shipped_allocator_env())
}

fn spawn_credvend_with(config: &Path, log: &Path, allocator_env: &[(String, String)]) -> Proc {
    spawn_binary(&target_dir().join("credvend"), config, log, allocator_env)
}

fn spawn_binary(
    binary: &Path,
    config: &Path,
    log: &Path,
    allocator_env: &[(String, String)],
) -> Proc {
    let log = std::fs::File::create(log).expect("log file");
    let child = pinned(binary, Placement::Server)
        .args(["serve", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(allocator_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_ACCESS_KEY_ID", "AKIAVENDORBASE000000")
        .env("AWS_SECRET_ACCESS_KEY", "vendor-base-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn credvend (build it with cargo build --release first)");
    Proc(child)
}

/// Polls until a TCP connect to `addr` succeeds; the time it took.
async fn wait_listening(addr: SocketAddr, started: Instant, limit: Duration) -> Duration {
    try_wait_listening(addr, started, limit)
        .await
        .unwrap_or_else(|| panic!("{addr} not listening within {limit:?}"))
}

/// [`wait_listening`], `None` when `limit` passes first.
async fn try_wait_listening(
    addr: SocketAddr,
    started: Instant,
    limit: Duration,
) -> Option<Duration> {
    while started.elapsed() < limit {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// A fake STS with one role that requires `external_id`, answering every call after
/// `latency`, and the one mapping `name` (token `token(token_index)`) that assumes it.
async fn one_role_sts(
    name: &str,
    external_id: &str,
    token_index: usize,
    prefetch: bool,
    latency: Option<Duration>,
) -> (FakeSts, MappingSpec) {
    let sts = FakeSts::start(Arc::new(SystemClock)).await;
    let role = format!("bench-{name}");
    sts.add_role(Role::new(
        role_arn(&role),
        TrustRule::RequireExternalId(external_id.into()),
    ));
    if let Some(latency) = latency {
        sts.set_persistent_fault(Some(Fault::Latency(latency)));
    }
    let mapping = MappingSpec {
        name: name.into(),
        role,
        external_id: external_id.into(),
        token: token(token_index),
        prefetch,
    };
    (sts, mapping)
}

/// credvend for `mappings` on `sts` at `log_level`: writes `<stem>.toml`, starts it with
/// its log in `<stem>.log`, waits until `/readyz` answers 200 and returns the process and
/// its credential listener.
async fn start_credvend(
    dir: &Path,
    stem: &str,
    sts: &FakeSts,
    log_level: &str,
    mappings: &[MappingSpec],
) -> (Proc, SocketAddr) {
    start_binary(
        &target_dir().join("credvend"),
        dir,
        stem,
        sts,
        log_level,
        mappings,
    )
    .await
}

/// [`start_credvend`] for the credvend binary at `binary` (a baseline build).
async fn start_binary(
    binary: &Path,
    dir: &Path,
    stem: &str,
    sts: &FakeSts,
    log_level: &str,
    mappings: &[MappingSpec],
) -> (Proc, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.join(format!("{stem}.toml"));
    write_config(
        &config,
        &ConfigSpec {
            listen,
            admin,
            sts: &sts.endpoint_url(),
            log_level,
            max_rps: 20,
            mappings,
        },
    );
    let credvend = spawn_binary(
        binary,
        &config,
        &dir.join(format!("{stem}.log")),
        &shipped_allocator_env(),
    );
    wait_ready(admin, Instant::now(), Duration::from_secs(30)).await;
    (credvend, listen)
}

/// Polls `GET /readyz` until 200; the time since `started`.
async fn wait_ready(admin: SocketAddr, started: Instant, limit: Duration) -> Duration {
    while started.elapsed() < limit {
        if tokio::net::TcpStream::connect(admin).await.is_ok()
            && http::request(admin, "GET", "/readyz", &[]).await.status == 200
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("credvend not ready within {limit:?}");
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if !n.is_multiple_of(2) {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// throughput

struct WrkResult {
    rps: f64,
    /// Server CPU time (user + system) per request, in microseconds.
    cpu_us: f64,
    p50_us: f64,
    p99_us: f64,
    errors: bool,
}

fn parse_latency_us(text: &str) -> Option<f64> {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| text.split_at(i))?;
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        _ => return None,
    })
}

/// User + system CPU time of process `pid` so far (`/proc/PID/stat`, clock ticks).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs wrk against `url`; `server` is the pid whose CPU time is charged to the run.
fn run_wrk(url: &str, token: &str, connections: u32, seconds: u32, server: u32) -> WrkResult {
    let ticks_before = cpu_ticks(server);
    let output = pinned("wrk", Placement::LoadGenerator)
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            "--latency",
            "-H",
            &format!("Authorization: {token}"),
            url,
        ])
        .output()
        .expect("run wrk (apt-get install wrk)");
    let ticks = cpu_ticks(server).saturating_sub(ticks_before);
    let text = String::from_utf8_lossy(&output.stdout);
    let mut result = WrkResult {
        rps: 0.0,
        cpu_us: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        errors: false,
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => result.rps = value.parse().unwrap_or(0.0),
            [count, "requests", "in", ..] => {
                if let Ok(count) = count.parse::<f64>() {
                    result.cpu_us = ticks as f64 / clock_ticks_per_second() * 1e6 / count;
                }
            }
            ["50%", value] => result.p50_us = parse_latency_us(value).unwrap_or(f64::NAN),
            ["99%", value] => result.p99_us = parse_latency_us(value).unwrap_or(f64::NAN),
            ["Non-2xx", ..] | ["Socket", "errors:", ..] => result.errors = true,
            _ => {}
        }
    }
    result
}

async fn throughput(dir: &Path) {
    let seconds: u32 = env_or("BENCH_DURATION", 10);
    let pairs: usize = env_or("BENCH_PAIRS", 3);
    let connections: Vec<u32> = std::env::var("BENCH_CONNECTIONS")
        .unwrap_or_else(|_| "16,128".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let (sts, mapping) = one_role_sts("hot", "bench-external-id", 1, true, None).await;
    let mappings = [mapping];
    // Audit line on (the default `info`), then off (`warn`) for its cost.
    let levels = std::env::var("BENCH_LEVELS").unwrap_or_else(|_| "info,warn".into());
    for level in levels.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        let (credvend, listen) =
            start_credvend(dir, &format!("throughput-{level}"), &sts, level, &mappings).await;
        let baseline = match std::env::var_os("BENCH_BASELINE").map(PathBuf::from) {
            Some(binary) => {
                let (proc, listen) = start_binary(
                    &binary,
                    dir,
                    &format!("throughput-baseline-{level}"),
                    &sts,
                    level,
                    &mappings,
                )
                .await;
                println!("\n  baseline: {}", binary.display());
                Some((proc, format!("http://{listen}/v1/credentials/hot")))
            }
            None => None,
        };
        let bare: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // The exact body credvend sends, for the bare server.
        let response =
            http::get_with_token(listen, "/v1/credentials/hot", &mappings[0].token).await;
        assert_eq!(
            response.status, 200,
            "credvend cache hit: {}",
            response.body
        );
        let body_file = dir.join("body.json");
        std::fs::write(&body_file, response.body.as_bytes()).expect("body file");
        set_private(&body_file);
        let bare_proc = Proc(
            pinned(target_dir().join("examples/bare_hyper"), Placement::Server)
                .arg(bare.to_string())
                .arg(&body_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn bare_hyper"),
        );
        wait_listening(bare, Instant::now(), Duration::from_secs(10)).await;
        let credvend_url = format!("http://{listen}/v1/credentials/hot");
        let bare_url = format!("http://{bare}/v1/credentials/hot");
        println!(
            "\n== throughput: cache hit vs bare hyper (log level {level}; body {} bytes; wrk -t1 {seconds}s; {}; load {})",
            response.body.len(),
            match pin_spec() {
                Some((server, wrk)) => format!("servers on CPU {server}, wrk on CPU {wrk}"),
                None => "unpinned".into(),
            },
            uptime()
        );
        // Short warm-up of both, not counted.
        let (bare_pid, credvend_pid) = (bare_proc.pid(), credvend.pid());
        run_wrk(&bare_url, &mappings[0].token, 16, 1, bare_pid);
        run_wrk(&credvend_url, &mappings[0].token, 16, 1, credvend_pid);
        if let Some((proc, url)) = &baseline {
            run_wrk(url, &mappings[0].token, 16, 1, proc.pid());
        }
        let pair_count = pairs;
        for &c in &connections {
            let mut rps_ratios = Vec::new();
            let mut p99_ratios = Vec::new();
            let mut cpu_ratios = Vec::new();
            let mut baseline_cpu_ratios = Vec::new();
            println!(
                "  connections {c}:\n    pair  bare req/s  p50     p99      cpu/req | credvend req/s  p50     p99      cpu/req | req/s ratio  p99 ratio  cpu/req ratio"
            );
            for pair in 1..=pair_count {
                let a = run_wrk(&bare_url, &mappings[0].token, c, seconds, bare_pid);
                let b = run_wrk(&credvend_url, &mappings[0].token, c, seconds, credvend_pid);
                let rps_ratio = b.rps / a.rps;
                let p99_ratio = b.p99_us / a.p99_us;
                let cpu_ratio = b.cpu_us / a.cpu_us;
                let base = baseline
                    .as_ref()
                    .map(|(proc, url)| run_wrk(url, &mappings[0].token, c, seconds, proc.pid()));
                rps_ratios.push(rps_ratio);
                p99_ratios.push(p99_ratio);
                cpu_ratios.push(cpu_ratio);
                println!(
                    "    {pair}     {:>10.0}  {:>6.0}us {:>7.0}us {:>5.1}us | {:>14.0}  {:>6.0}us {:>7.0}us {:>5.1}us | {:>11.3}  {:>9.3}  {:>13.3}{}",
                    a.rps,
                    a.p50_us,
                    a.p99_us,
                    a.cpu_us,
                    b.rps,
                    b.p50_us,
                    b.p99_us,
                    b.cpu_us,
                    rps_ratio,
                    p99_ratio,
                    cpu_ratio,
                    if a.errors || b.errors {
                        "  (errors!)"
                    } else {
                        ""
                    }
                );
                if let Some(base) = base {
                    let ratio = base.cpu_us / a.cpu_us;
                    baseline_cpu_ratios.push(ratio);
                    println!(
                        "          baseline: {:>10.0} req/s  {:>6.0}us {:>7.0}us {:>5.1}us cpu/req; cpu/req ratio to bare {:.3}{}",
                        base.rps,
                        base.p50_us,
                        base.p99_us,
                        base.cpu_us,
                        ratio,
                        if base.errors { "  (errors!)" } else { "" }
                    );
                }
            }
            let rps_median = median(&mut rps_ratios);
            let p99_median = median(&mut p99_ratios);
            let spread = |ratios: &[f64]| {
                let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let highest = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{lowest:.3}-{highest:.3}")
            };
            let cpu_spread = spread(&cpu_ratios);
            let cpu_median = median(&mut cpu_ratios);
            println!(
                "    median ratio: throughput {rps_median:.3} (target >= 0.85), p99 {p99_median:.3} (target <= 1.5), server CPU per request {cpu_median:.3} ({})  [load {}]",
                if level == "warn" {
                    "target <= 1.15"
                } else {
                    "audit line on"
                },
                uptime()
            );
            println!("    server CPU per request ratios, range {cpu_spread}");
            if !baseline_cpu_ratios.is_empty() {
                let range = spread(&baseline_cpu_ratios);
                println!(
                    "    baseline: median server CPU per request ratio {:.3}, range {range}",
                    median(&mut baseline_cpu_ratios)
                );
            }
        }
        drop(baseline);
        drop(bare_proc);
        drop(credvend);
    }
    let stats = sts.assume_role_calls().len();
    println!(
        "  STS AssumeRole calls during throughput runs: {stats} (one prefetch per credvend start)"
    );
}

// ---------------------------------------------------------------------------------------
// herd

async fn herd(dir: &Path) {
    let requests: usize = env_or("BENCH_HERD", 1000);
    let latency = Some(Duration::from_millis(300));
    let (sts, mapping) = one_role_sts("herd", "herd-external-id", 2, false, latency).await;
    let mappings = [mapping];
    let (_credvend, listen) = start_credvend(dir, "herd", &sts, "info", &mappings).await;
    // Connect every client first, then release all requests at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(requests));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..requests {
        let barrier = barrier.clone();
        let token = mappings[0].token.clone();
        tasks.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(listen).await.ok()?;
            let request = format!(
                "GET /v1/credentials/herd HTTP/1.1\r\nHost: {listen}\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
            );
            barrier.wait().await;
            let started = Instant::now();
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut raw = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
                .await
                .ok()?
                .ok()?;
            let elapsed = started.elapsed();
            let status: u16 = String::from_utf8_lossy(&raw)
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((status, elapsed))
        });
    }
    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.ok().flatten() {
            Some((status, elapsed)) => {
                *statuses.entry(status).or_default() += 1;
                latencies.push(elapsed);
            }
            None => failed += 1,
        }
    }
    latencies.sort();
    let calls = sts.assume_role_calls().len();
    println!(
        "\n== cold herd: {requests} concurrent first requests, STS latency 300 ms, cold_wait 800 ms (load {})",
        uptime()
    );
    println!("  STS AssumeRole calls: {calls} (target 1)");
    println!("  statuses: {statuses:?}, client errors: {failed}");
    println!(
        "  latency: min {}  p50 {}  p90 {}  p99 {}  max {}",
        ms(latencies.first().copied().unwrap_or_default()),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
}

// ---------------------------------------------------------------------------------------
// scale

async fn scale(dir: &Path) {
    scale_idle(dir).await;
    scale_warm(dir).await;
}

/// 10,000 (`BENCH_PREFETCH_MAPPINGS`) mappings, all `prefetch = true`, in one file: time
/// to warm, RSS warm, a SIGHUP reload of one changed mapping.
async fn scale_warm(dir: &Path) {
    let count: usize = env_or("BENCH_PREFETCH_MAPPINGS", 10_000);
    let sts = FakeSts::start(Arc::new(SystemClock)).await;
    let mut mappings = Vec::with_capacity(count);
    for i in 0..count {
        let role = format!("bench-scale-{i}");
        sts.add_role(Role::new(role_arn(&role), TrustRule::AnyExternalId));
        mappings.push(MappingSpec {
            name: format!("m{i:05}"),
            role,
            external_id: format!("external-id-{i:05}"),
            token: token(100_000 + i),
            prefetch: true,
        });
    }
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.join("scale.toml");
    let sts_url = sts.endpoint_url();
    let spec = |mappings: &[MappingSpec]| {
        write_config(
            &config,
            &ConfigSpec {
                listen,
                admin,
                sts: &sts_url,
                log_level: "info",
                max_rps: 100_000,
                mappings,
            },
        )
    };
    spec(&mappings);
    let size = std::fs::metadata(&config).map(|m| m.len()).unwrap_or(0);
    println!(
        "\n== scale, warm: {count} mappings, all prefetch, config {} KiB (load {})",
        size / 1024,
        uptime()
    );

    let started = Instant::now();
    let check = Command::new(target_dir().join("credvend"))
        .args(["check-config", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run check-config");
    let validate = started.elapsed();
    println!(
        "  validate + load (credvend check-config, whole process): {} (exit {})",
        ms(validate),
        check.code().unwrap_or(-1)
    );

    let allocator_env = shipped_allocator_env();
    println!("  allocator settings from systemd/credvend.service: {allocator_env:?}");
    let started = Instant::now();
    let credvend = spawn_credvend(&config, &dir.join("scale.log"));
    let listening = wait_listening(listen, started, Duration::from_secs(30)).await;
    println!("  start to listening: {} (target <= 2 s)", ms(listening));
    let (rss_cold, _) = rss_kib(credvend.pid());
    let warm = wait_ready(admin, started, Duration::from_secs(300)).await;
    let calls_warm = sts.assume_role_calls().len();
    // Let the last fetches' tasks and the allocator's purge settle before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss, hwm) = rss_kib(credvend.pid());
    println!(
        "  all warm (/readyz) after {}: {calls_warm} AssumeRole calls",
        ms(warm)
    );
    println!(
        "  RSS: {:.1} MiB at listening, {:.1} MiB warm (peak {:.1} MiB) (target <= 64 MiB warm)",
        rss_cold as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    // Reload changing one mapping's External ID (part of its fingerprint).
    let target = 4242 % count;
    let path = format!("/v1/credentials/{}", mappings[target].name);
    let before = http::get_with_token(listen, &path, &mappings[target].token).await;
    let old_key = before.json()["AccessKeyId"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    mappings[target].external_id = format!("external-id-{target:05}-rotated");
    let calls_before = sts.assume_role_calls().len();
    spec(&mappings);
    let reloaded = sighup_until_new_key(
        credvend.pid(),
        listen,
        &path,
        &mappings[target].token,
        &old_key,
        Duration::from_secs(30),
    )
    .await;
    // Wait out the file watcher's debounce too (it reloads the same file once more).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = sts.assume_role_calls();
    let new_calls: Vec<String> = after[calls_before..]
        .iter()
        .map(|c| c.role_arn.clone().unwrap_or_default())
        .collect();
    println!(
        "  SIGHUP reload changing 1 mapping: new credential served after {} (target <= 300 ms)",
        reloaded.map_or_else(|| "NEVER".into(), ms)
    );
    println!(
        "  AssumeRole calls caused by the reload: {} {:?} (target: 1, the changed mapping {})",
        new_calls.len(),
        new_calls,
        role_arn(&mappings[target].role)
    );
    if new_calls.len() != 1 {
        // Show what the daemon logged about the reload and the mapping.
        let log = std::fs::read_to_string(dir.join("scale.log")).unwrap_or_default();
        for line in log.lines().filter(|l| {
            l.contains("eload") || l.contains(&mappings[target].name) || l.contains("WARN")
        }) {
            println!("    log: {line}");
        }
    }
    let (rss_after, _) = rss_kib(credvend.pid());
    println!("  RSS after reload: {:.1} MiB", rss_after as f64 / 1024.0);
    // Further reloads of the same file: is the growth retained memory that the next
    // reload reuses, or does every reload add to it?
    let mut after_more = Vec::new();
    for _ in 0..3 {
        let hup = Command::new("kill")
            .args(["-HUP", &credvend.pid().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(hup.success(), "SIGHUP delivered");
        tokio::time::sleep(Duration::from_secs(2)).await;
        after_more.push(format!("{:.1}", rss_kib(credvend.pid()).0 as f64 / 1024.0));
    }
    println!(
        "  RSS after 3 more reloads of the same file: {} MiB",
        after_more.join(", ")
    );
    drop(credvend);

    // What a warm credential costs, with the process's default environment: the same
    // mappings with a tenth of them warm (prefetch) and with all of them warm, 2 s after
    // /readyz each; the difference over the mappings that differ is what one more warm
    // credential adds (the first fetch's one-time costs, the STS client and its
    // connections, fall out). Beside it, all warm minus none warm, per mapping, which
    // counts those one-time costs too.
    let tenth = count / 10;
    let partial_config = dir.join("scale-tenth.toml");
    let idle_config = dir.join("scale-none.toml");
    for (path, warm) in [(&partial_config, tenth), (&idle_config, 0)] {
        let specs: Vec<MappingSpec> = mappings
            .iter()
            .enumerate()
            .map(|(i, m)| MappingSpec {
                prefetch: i < warm,
                ..m.clone()
            })
            .collect();
        write_config(
            path,
            &ConfigSpec {
                listen,
                admin,
                sts: &sts_url,
                log_level: "info",
                max_rps: 100_000,
                mappings: &specs,
            },
        );
    }
    println!(
        "  per warm credential, process's default environment (no MALLOC_*): RSS with all \
         {count} mappings warm minus with {tenth} warm, / {} (goal {GOAL_PER_WARM})",
        count - tenth
    );
    let mut builds = Vec::new();
    if let Some(baseline) = std::env::var_os("BENCH_BASELINE").map(PathBuf::from) {
        builds.push((format!("baseline {}", baseline.display()), baseline));
    }
    builds.push(("this build".to_owned(), target_dir().join("credvend")));
    for (label, binary) in builds {
        let mut rss = [0u64; 3];
        for (i, config) in [&idle_config, &partial_config, &config]
            .into_iter()
            .enumerate()
        {
            let started = Instant::now();
            let credvend = spawn_binary(&binary, config, &dir.join("scale-warm-cost.log"), &[]);
            wait_ready(admin, started, Duration::from_secs(300)).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss[i] = rss_kib(credvend.pid()).0;
            drop(credvend);
        }
        let [none, partial, all] = rss;
        println!(
            "    {label}: {} with none warm, {} with {tenth}, {} with {count}: \
             {:.2} KiB per warm credential ({:.2} KiB per mapping all warm minus none)",
            mib(none),
            mib(partial),
            mib(all),
            (all as f64 - partial as f64) / (count - tenth) as f64,
            (all as f64 - none as f64) / count as f64
        );
    }
}

// ---------------------------------------------------------------------------------------
// scale, idle: 100,000 mappings, nothing warm

/// The issue's goals for 100,000 idle mappings, printed beside each figure.
const GOAL_LISTENING: &str = "<= 1.5 s";
const GOAL_IDLE_RSS: &str = "<= 128 MiB";
const GOAL_METRICS: &str = "< 1 MiB";
const GOAL_PER_WARM: &str = "<= 2 KiB";

/// `[mappings.NAME]` table of one mapping of the idle scenario.
fn mapping_table(m: &MappingSpec) -> String {
    format!(
        "[mappings.{}]\nrole_arn = \"{}\"\nexternal_id = \"{}\"\ntoken_sha256 = [\"{}\"]\nprefetch = {}\n\n",
        m.name,
        role_arn(&m.role),
        m.external_id,
        sha256_hex(&m.token),
        m.prefetch
    )
}

/// Sends SIGHUP to `pid`, then asks for `path` with `token` until it is served a key
/// other than `old_key`: how long that took from the signal, or `None` after `limit`.
async fn sighup_until_new_key(
    pid: u32,
    listen: SocketAddr,
    path: &str,
    token: &str,
    old_key: &str,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success(), "SIGHUP delivered");
    while started.elapsed() < limit {
        let response = http::get_with_token(listen, path, token).await;
        if response.status == 200 && response.json()["AccessKeyId"].as_str() != Some(old_key) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create config file");
    file.write_all(text.as_bytes()).expect("write config file");
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS, so the next read of it
/// is the peak of what happens in between.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

struct IdleFigures {
    listening: Duration,
    rss_listening_kib: u64,
    rss_idle_kib: u64,
    peak_start_kib: u64,
    metrics_bytes: usize,
    metrics_series: usize,
    metrics_time: Duration,
    peak_scrape_kib: Option<u64>,
    rss_after_scrape_kib: u64,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Starts `binary` on `config`, measures start → listening, idle RSS, and the first
/// `/metrics` scrape; returns the figures and the running process, or `None` when it
/// was not listening within `BENCH_START_LIMIT` seconds (default 120).
async fn measure_idle(
    binary: &Path,
    config: &Path,
    log: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    allocator_env: &[(String, String)],
) -> Option<(IdleFigures, Proc)> {
    let started = Instant::now();
    let credvend = spawn_binary(binary, config, log, allocator_env);
    let limit = Duration::from_secs(env_or("BENCH_START_LIMIT", 120));
    let Some(listening) = try_wait_listening(listen, started, limit).await else {
        println!("    {}: not listening within {limit:?}", binary.display());
        return None;
    };
    let (rss_listening_kib, _) = rss_kib(credvend.pid());
    wait_ready(admin, started, Duration::from_secs(120)).await;
    // Idle: let start-up work (the first metrics refresh, the allocator's purge) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_idle_kib, peak_start_kib) = rss_kib(credvend.pid());
    let reset = reset_peak_rss(credvend.pid());
    let scrape_started = Instant::now();
    let metrics = http::request(admin, "GET", "/metrics", &[]).await;
    let metrics_time = scrape_started.elapsed();
    let (rss_after_scrape_kib, peak_scrape) = rss_kib(credvend.pid());
    assert_eq!(metrics.status, 200, "GET /metrics");
    let metrics_series = metrics
        .body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    Some((
        IdleFigures {
            listening,
            rss_listening_kib,
            rss_idle_kib,
            peak_start_kib,
            metrics_bytes: metrics.body.len(),
            metrics_series,
            metrics_time,
            peak_scrape_kib: reset.then_some(peak_scrape),
            rss_after_scrape_kib,
        },
        credvend,
    ))
}

fn print_idle(label: &str, f: &IdleFigures) {
    println!("  {label}:");
    println!(
        "    start to listening  {:>10}   (goal {GOAL_LISTENING})",
        ms(f.listening)
    );
    println!(
        "    RSS idle            {:>10}   (goal {GOAL_IDLE_RSS}; {} at listening, peak during start {})",
        mib(f.rss_idle_kib),
        mib(f.rss_listening_kib),
        mib(f.peak_start_kib)
    );
    println!(
        "    GET /metrics        {:>10}   (goal {GOAL_METRICS}; {} series, {} to render and send)",
        format!("{:.1} KiB", f.metrics_bytes as f64 / 1024.0),
        f.metrics_series,
        ms(f.metrics_time)
    );
    println!(
        "    peak RSS during the first scrape {}, RSS after it {}",
        f.peak_scrape_kib.map_or_else(|| "n/a".into(), mib),
        mib(f.rss_after_scrape_kib)
    );
}

/// 100,000 (`BENCH_MAPPINGS`) mappings, none prefetched and none used yet, written once
/// as `include`d files (one per mapping, in one directory) and once as one file: start to
/// listening, idle RSS, the first `/metrics` scrape, all with the process's default
/// environment (no `MALLOC_*`); then, on the include layout, a change to one mapping's
/// file (reload: time until the new credential is served, AssumeRole calls, peak RSS).
/// `BENCH_BASELINE=/path/to/credvend` runs the same measurements on another build (e.g.
/// main's) in the same run.
async fn scale_idle(dir: &Path) {
    let count: usize = env_or("BENCH_MAPPINGS", 100_000);
    let sts = FakeSts::start(Arc::new(SystemClock)).await;
    let mut mappings = Vec::with_capacity(count);
    for i in 0..count {
        let role = format!("bench-idle-{i}");
        mappings.push(MappingSpec {
            name: format!("c{i:06}"),
            role,
            external_id: format!("external-id-{i:06}-0123456789abcdefghijklmnop"),
            token: token(1_000_000 + i),
            prefetch: false,
        });
    }
    // The one role the reload part uses; the others are never assumed.
    let target = 42_424 % count;
    sts.add_role(Role::new(
        role_arn(&mappings[target].role),
        TrustRule::AnyExternalId,
    ));
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let head = format!(
        "[server]\nlisten = [\"{listen}\"]\nadmin_listen = \"{admin}\"\nmax_connections = 4096\n\n\
         [log]\nlevel = \"info\"\n\n[sts]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\
         max_requests_per_second = 20\n\n[verify]\nexternal_id_enforcement = \"off\"\n\n",
        sts.endpoint_url()
    );

    // One file.
    let one_file = dir.join("idle-one.toml");
    let mut text = head.clone();
    for m in &mappings {
        text.push_str(&mapping_table(m));
    }
    write_private(&one_file, &text);
    let one_file_size = text.len();
    drop(text);
    // One main file and one included file per mapping.
    let include_dir = dir.join("mappings.d");
    std::fs::create_dir_all(&include_dir).expect("include dir");
    std::fs::set_permissions(
        &include_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod include dir");
    let written = Instant::now();
    for m in &mappings {
        write_private(
            &include_dir.join(format!("{}.toml", m.name)),
            &mapping_table(m),
        );
    }
    let write_time = written.elapsed();
    let include_main = dir.join("idle-include.toml");
    write_private(
        &include_main,
        &format!("include = [\"mappings.d/*.toml\"]\n\n{head}"),
    );
    println!(
        "\n== scale, idle: {count} mappings, none prefetched, none used; process's default \
         environment (no MALLOC_*) (load {})",
        uptime()
    );
    println!(
        "  one file of {} KiB; or {count} included files in one directory (written in {})",
        one_file_size / 1024,
        ms(write_time)
    );

    let binary = target_dir().join("credvend");
    let baseline = std::env::var_os("BENCH_BASELINE").map(PathBuf::from);
    for (layout, config) in [("include", &include_main), ("one file", &one_file)] {
        let started = Instant::now();
        let check = Command::new(&binary)
            .args(["check-config", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run check-config");
        println!(
            "\n  -- {layout}: validate + load (credvend check-config, whole process) {} (exit {})",
            ms(started.elapsed()),
            check.code().unwrap_or(-1)
        );
        if let Some(baseline) = &baseline
            && let Some((figures, baseline_proc)) = measure_idle(
                baseline,
                config,
                &dir.join("idle-baseline.log"),
                listen,
                admin,
                &[],
            )
            .await
        {
            print_idle(&format!("baseline {}", baseline.display()), &figures);
            if layout == "include" {
                idle_reload(
                    &sts,
                    &include_dir,
                    &mappings[target],
                    listen,
                    &baseline_proc,
                    "baseline",
                )
                .await;
            }
        }
        let Some((figures, credvend)) = measure_idle(
            &binary,
            config,
            &dir.join(format!("idle-{}.log", layout.replace(' ', "-"))),
            listen,
            admin,
            &[],
        )
        .await
        else {
            continue;
        };
        print_idle("this build", &figures);
        if layout == "include" {
            idle_reload(
                &sts,
                &include_dir,
                &mappings[target],
                listen,
                &credvend,
                "this-build",
            )
            .await;
        }
        drop(credvend);
    }
    let with_env = shipped_allocator_env();
    if !with_env.is_empty()
        && let Some((figures, _credvend)) = measure_idle(
            &binary,
            &one_file,
            &dir.join("idle-unit-env.log"),
            listen,
            admin,
            &with_env,
        )
        .await
    {
        print_idle(
            &format!("one file, with systemd/credvend.service's {with_env:?}"),
            &figures,
        );
    }
    let _ = std::fs::remove_dir_all(&include_dir);
}

/// Changes one mapping's included file (its External ID, to one ending in `label`) and
/// sends SIGHUP: time until the mapping serves a new credential, the AssumeRole calls in
/// the 3 s after, peak RSS.
async fn idle_reload(
    sts: &FakeSts,
    include_dir: &Path,
    mapping: &MappingSpec,
    listen: SocketAddr,
    credvend: &Proc,
    label: &str,
) {
    let path = format!("/v1/credentials/{}", mapping.name);
    let before = http::get_with_token(listen, &path, &mapping.token).await;
    if before.status != 200 {
        println!(
            "    reload: the mapping's first request failed ({}), skipped",
            before.status
        );
        return;
    }
    let old_key = before.json()["AccessKeyId"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let (rss_before, _) = rss_kib(credvend.pid());
    let reset = reset_peak_rss(credvend.pid());
    let calls_before = sts.assume_role_calls().len();
    let changed = MappingSpec {
        name: mapping.name.clone(),
        role: mapping.role.clone(),
        external_id: format!("{}-rotated-{label}", mapping.external_id),
        token: mapping.token.clone(),
        prefetch: false,
    };
    let file = include_dir.join(format!("{}.toml", mapping.name));
    let tmp = file.with_extension("tmp");
    write_private(&tmp, &mapping_table(&changed));
    std::fs::rename(&tmp, &file).expect("rename mapping file");
    let applied = sighup_until_new_key(
        credvend.pid(),
        listen,
        &path,
        &mapping.token,
        &old_key,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = sts.assume_role_calls().len() - calls_before;
    let (rss_after, peak) = rss_kib(credvend.pid());
    println!(
        "    reload of one mapping's file (+SIGHUP): applied after {} (goal <= 1 s), \
         {calls} AssumeRole calls (goal 1)",
        applied.map_or_else(|| "NEVER".into(), ms)
    );
    println!(
        "    RSS {} before, {} after, peak during the reload {} (goal <= 1.5x idle)",
        mib(rss_before),
        mib(rss_after),
        if reset { mib(peak) } else { "n/a".into() }
    );
}

// ---------------------------------------------------------------------------------------
// time to first credential

const TTFC_SCRIPT: &str = r#"
import json, sys, time
t0 = time.perf_counter()
import boto3
t1 = time.perf_counter()
creds = boto3.Session().get_credentials().get_frozen_credentials()
t2 = time.perf_counter()
assert creds.access_key.startswith("ASIA"), creds.access_key
print(json.dumps({"import_s": t1 - t0, "creds_s": t2 - t1}))
"#;

struct Ttfc {
    creds: Vec<Duration>,
    process: Vec<Duration>,
}

fn run_python(python: &Path, envs: &[(String, String)], n: usize) -> Ttfc {
    let mut out = Ttfc {
        creds: Vec::new(),
        process: Vec::new(),
    };
    for _ in 0..n {
        let started = Instant::now();
        let output = Command::new(python)
            .args(["-c", TTFC_SCRIPT])
            .env_clear()
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("run python");
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&output.stdout);
        let parsed: Option<serde_json::Value> = serde_json::from_str(text.trim()).ok();
        match parsed.and_then(|v| v["creds_s"].as_f64()) {
            Some(secs) if output.status.success() => {
                out.creds.push(Duration::from_secs_f64(secs));
                out.process.push(elapsed);
            }
            _ => {
                eprintln!(
                    "  python failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
            }
        }
    }
    out.creds.sort();
    out.process.sort();
    out
}

async fn ttfc(dir: &Path) {
    let n: usize = env_or("BENCH_PROCESSES", 100);
    let python =
        PathBuf::from(std::env::var("BENCH_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into()));
    let latency = Some(Duration::from_millis(50));
    let (sts, mapping) = one_role_sts("ttfc", "ttfc-external-id", 3, true, latency).await;
    let mappings = [mapping];
    let (_credvend, listen) = start_credvend(dir, "ttfc", &sts, "info", &mappings).await;
    let calls_warm = sts.assume_role_calls().len();

    let base_env = vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_default(),
        ),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
    ];
    let mut via_credvend = base_env.clone();
    via_credvend.extend([
        ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
        ("AWS_SHARED_CREDENTIALS_FILE".into(), "/nonexistent".into()),
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
            format!("http://{listen}/v1/credentials/ttfc"),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN".into(),
            mappings[0].token.clone(),
        ),
    ]);
    let aws_config = dir.join("aws-config");
    let aws_credentials = dir.join("aws-credentials");
    std::fs::write(
        &aws_config,
        format!(
            "[profile bench]\nrole_arn = {}\nexternal_id = ttfc-external-id\nsource_profile = base\nregion = us-east-1\n\n[profile base]\nregion = us-east-1\n",
            role_arn("bench-ttfc")
        ),
    )
    .expect("aws config");
    std::fs::write(
        &aws_credentials,
        "[base]\naws_access_key_id = AKIAVENDORBASE000000\naws_secret_access_key = vendor-base-secret\n",
    )
    .expect("aws credentials");
    let mut via_assume_role = base_env;
    via_assume_role.extend([
        ("AWS_CONFIG_FILE".into(), aws_config.display().to_string()),
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            aws_credentials.display().to_string(),
        ),
        ("AWS_PROFILE".into(), "bench".into()),
        ("AWS_ENDPOINT_URL_STS".into(), sts.endpoint_url()),
    ]);

    println!(
        "\n== time to first credential, fresh boto3 process x{n}, STS latency 50 ms (load {})",
        uptime()
    );
    let a = run_python(&python, &via_credvend, n);
    let calls_credvend = sts.assume_role_calls().len() - calls_warm;
    let b = run_python(&python, &via_assume_role, n);
    let calls_assume = sts.assume_role_calls().len() - calls_warm - calls_credvend;
    let line = |name: &str, t: &Ttfc| {
        println!(
            "  {name:<34} ok {:>3}  credential p50 {}  p90 {}  | whole process p50 {}",
            t.creds.len(),
            ms(percentile(&t.creds, 50.0)),
            ms(percentile(&t.creds, 90.0)),
            ms(percentile(&t.process, 50.0)),
        );
    };
    line("through credvend (warm)", &a);
    line("boto3 AssumeRole provider", &b);
    let ratio = percentile(&b.creds, 50.0).as_secs_f64() / percentile(&a.creds, 50.0).as_secs_f64();
    let process_ratio =
        percentile(&b.process, 50.0).as_secs_f64() / percentile(&a.process, 50.0).as_secs_f64();
    println!(
        "  ratio (p50, Session() to credential): {ratio:.1}x faster (target >= 5x); whole process incl. interpreter and import: {process_ratio:.2}x"
    );
    println!(
        "  STS AssumeRole calls for {n} processes: credvend {calls_credvend} (+{calls_warm} prefetch before), boto3 {calls_assume} (target: 1 vs {n})"
    );
}

#[tokio::main]
async fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let dir = std::env::temp_dir().join(format!("credvend-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!(
        "credvend benchmark harness — scenario {scenario}, nproc {}, load {}, work dir {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        uptime(),
        dir.display()
    );
    match scenario.as_str() {
        "throughput" => throughput(&dir).await,
        "herd" => herd(&dir).await,
        "scale" => scale(&dir).await,
        "scale-idle" => scale_idle(&dir).await,
        "scale-warm" => scale_warm(&dir).await,
        "ttfc" => ttfc(&dir).await,
        "all" => {
            throughput(&dir).await;
            herd(&dir).await;
            scale(&dir).await;
            ttfc(&dir).await;
        }
        other => {
            eprintln!(
                "unknown scenario {other}: throughput | herd | scale | scale-idle | scale-warm | ttfc | all"
            );
            std::process::exit(64);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
