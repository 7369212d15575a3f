//! criterion micro-benchmarks of the credential request path:
//!
//! - `token_check/*`: [`AccessTable::authorize`] — SHA-256 of the presented token plus
//!   the constant-time compare, by mapping name and by token (no mapping in the path),
//!   in a table of 1 and of 10,000 mappings; and the `Host` check.
//! - `mapping_lookup/*`: [`CredentialCache::get`] on a warm cache (the lock-free cache
//!   hit), for 1 and 10,000 mappings.
//! - `response/*`: building the 200 response: `shared` (the request path: a view of the
//!   body encoded once per credential) vs `encode_per_request` (what the request path did
//!   before: serialise the body for every request).
//! - `audit_line/*`: emitting the INFO audit line of one vend (`CredentialsServed`)
//!   through the subscriber `serve` installs, plain and JSON, into `io::sink`; and with
//!   the level at `warn`, where the line is off.
//! - `audit_line/writer/{writer}/{threads}`: the same line with a log writer behind it,
//!   writing to `/dev/null` opened as a file (so the `write` calls are made), from 1
//!   and from 2 threads at once: `batching` (`credvend::telemetry`'s writer, what
//!   `serve` installs), `appender` and `appender_bufwriter` (`tracing_appender`'s
//!   non-blocking writer with lossy mode off, on the file and on a `BufWriter` of it),
//!   and `sink` (no writer). Time per line, from the first line until the writer's
//!   guard is dropped (queued lines are paid for); each writer also prints the CPU time
//!   of all threads per line and the `write` calls per line. docs/design.md,
//!   "Decisions" has the figures.
//!
//! Run with `cargo bench --bench hot_path`. Not part of `cargo test`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use credvend::cache::CredentialCache;
use credvend::clock::SystemClock;
use credvend::creds::{AssumeError, AssumeRoleInput, Credentials, RoleAssumer};
use credvend::metrics::Metrics;
use credvend::protocol::CredentialBody;
use credvend::secret::SecretValue;
use credvend::server::access::AccessTable;
use credvend::server::wire;
use credvend::testing::{config, mapping};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// A 64-character token for mapping `i`.
fn token(i: usize) -> String {
    format!("{i:016x}{}", "0123456789abcdef".repeat(3))
}

fn name(i: usize) -> String {
    format!("m{i:05}")
}

fn config_with(count: usize) -> credvend::config::Config {
    let mappings = (0..count)
        .map(|i| {
            mapping(
                &name(i),
                &format!("role-{i}"),
                Some("external-id"),
                &token(i),
            )
        })
        .collect();
    config("http://127.0.0.1:9", mappings)
}

/// Credential-sized values, as STS issues them (session token ~ 800 characters).
fn credentials() -> Credentials {
    Credentials {
        access_key_id: "ASIAQEXAMPLE00000001".into(),
        secret_access_key: SecretValue::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        session_token: SecretValue::new("FwoGZXIvYXdzE".repeat(62)),
        expiration: SystemTime::now() + Duration::from_secs(3600),
        assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/role-0/credvend-m00000".into(),
    }
}

/// Answers every AssumeRole at once with [`credentials`].
struct InstantSts;

impl RoleAssumer for InstantSts {
    fn assume_role<'a>(
        &'a self,
        _input: &'a AssumeRoleInput,
    ) -> Pin<Box<dyn Future<Output = Result<Credentials, AssumeError>> + Send + 'a>> {
        Box::pin(async { Ok(credentials()) })
    }
}

/// Polls a future that must complete without waiting (a cache hit never awaits).
fn poll_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("cache hit should not wait"),
    }
}

fn token_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("token_check");
    for count in [1, 10_000] {
        let table = AccessTable::new(&config_with(count));
        let target = name(count / 2);
        let presented = token(count / 2);
        group.bench_with_input(BenchmarkId::new("by_name", count), &count, |b, _| {
            b.iter(|| {
                table
                    .authorize(
                        Some(std::hint::black_box(&target)),
                        Some(presented.as_bytes()),
                    )
                    .is_ok()
            })
        });
        group.bench_with_input(BenchmarkId::new("by_token", count), &count, |b, _| {
            b.iter(|| {
                table
                    .authorize(None, Some(std::hint::black_box(presented.as_bytes())))
                    .is_ok()
            })
        });
    }
    let table = AccessTable::new(&config_with(1));
    let local: SocketAddr = "127.0.0.1:8901".parse().unwrap();
    group.bench_function("host_allowed", |b| {
        b.iter(|| table.host_allowed(std::hint::black_box("127.0.0.1:8901"), local))
    });
    group.finish();
}

fn mapping_lookup(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("mapping_lookup");
    for count in [1, 10_000] {
        let config = config_with(count);
        let target = name(count / 2);
        let cache = CredentialCache::new(
            &config,
            Arc::new(InstantSts),
            Arc::new(SystemClock),
            Arc::new(Metrics::new()),
        );
        runtime
            .block_on(cache.get(&target))
            .expect("warm the mapping");
        group.bench_with_input(BenchmarkId::new("cache_hit", count), &count, |b, _| {
            b.iter(|| poll_ready(cache.get(std::hint::black_box(&target))).is_ok())
        });
    }
    group.finish();
}

fn response(c: &mut Criterion) {
    let creds = credentials();
    let role_arn = "arn:aws:iam::111122223333:role/role-0";
    let body = CredentialBody::encode(&creds, role_arn).expect("encodes");
    let mut group = c.benchmark_group("response");
    group.bench_function("shared", |b| {
        b.iter(|| wire::shared_credentials_response(std::hint::black_box(&body)))
    });
    group.bench_function("encode_per_request", |b| {
        b.iter(|| {
            let body =
                CredentialBody::encode(std::hint::black_box(&creds), role_arn).expect("encodes");
            wire::shared_credentials_response(&body)
        })
    });
    group.finish();
}

/// One audit line, as the request path emits it.
fn emit_audit_line(metrics: &Metrics, client: SocketAddr, expiration: SystemTime) {
    use credvend::events::CredentialsServed;
    use credvend::model::Source;
    CredentialsServed {
        mapping: std::hint::black_box("m00000"),
        client,
        source: Source::Cache,
        access_key_id: "ASIAQEXAMPLE00000001",
        expiration,
        job: None,
        arrived: std::time::Instant::now(),
    }
    .emit(metrics)
}

fn audit_line(c: &mut Criterion) {
    use credvend::config::LogFormat;
    use tracing_subscriber::EnvFilter;

    let metrics = Metrics::new();
    let client: SocketAddr = "127.0.0.1:53124".parse().unwrap();
    let expiration = SystemTime::now() + Duration::from_secs(3600);
    let mut group = c.benchmark_group("audit_line");
    for (label, level, format) in [
        ("plain", "info", LogFormat::Plain),
        ("json", "info", LogFormat::Json),
        ("off", "warn", LogFormat::Plain),
    ] {
        let subscriber =
            credvend::telemetry::subscriber(EnvFilter::new(level), format, std::io::sink);
        tracing::subscriber::with_default(subscriber, || {
            group.bench_function(label, |b| {
                b.iter(|| emit_audit_line(&metrics, client, expiration))
            });
        });
    }
    group.finish();
    audit_line_writers(c, &metrics, client, expiration);
}

/// A file descriptor (`/dev/null`) that counts what reaches it: the benchmark checks
/// that every line was written before the clock stopped, and reports write calls per
/// line.
#[derive(Clone)]
struct CountedNull {
    file: Arc<std::fs::File>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
    writes: Arc<std::sync::atomic::AtomicU64>,
}

impl CountedNull {
    fn open() -> Self {
        Self {
            file: Arc::new(std::fs::File::create("/dev/null").expect("open /dev/null")),
            bytes: Arc::default(),
            writes: Arc::default(),
        }
    }
}

impl std::io::Write for CountedNull {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        let n = (&*self.file).write(buf)?;
        self.bytes.fetch_add(n as u64, Relaxed);
        self.writes.fetch_add(1, Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// CPU time of the whole process so far (all threads, including ones that exited), in
/// clock ticks of 10 ms: `utime + stime` from `/proc/self/stat`.
fn process_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); the first after the name is field 3.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// The log writers compared under `audit_line/writer/*`.
#[derive(Clone, Copy)]
enum LogWriter {
    /// `io::sink` on the calling thread: formatting only, no writer.
    Sink,
    /// `credvend::telemetry`'s batching writer (what `serve` installs).
    Batching,
    /// `tracing_appender::non_blocking`, lossy off, straight to the file.
    Appender,
    /// The same, on a `BufWriter` (its worker flushes after draining the channel).
    AppenderBufWriter,
}

impl LogWriter {
    fn label(self) -> &'static str {
        match self {
            LogWriter::Sink => "sink",
            LogWriter::Batching => "batching",
            LogWriter::Appender => "appender",
            LogWriter::AppenderBufWriter => "appender_bufwriter",
        }
    }

    /// The subscriber `serve` installs (plain, info) on this writer over `null`, and
    /// what writes out the queued lines when dropped.
    fn start(self, null: &CountedNull) -> (tracing::Dispatch, Box<dyn Send>) {
        use tracing_appender::non_blocking::NonBlockingBuilder;

        let appender = || NonBlockingBuilder::default().lossy(false);
        match self {
            LogWriter::Sink => (plain_info(std::io::sink), Box::new(())),
            LogWriter::Batching => {
                let (writer, guard) =
                    credvend::telemetry::batching_writer(Box::new(null.clone())).expect("writer");
                (plain_info(writer), Box::new(guard))
            }
            LogWriter::Appender => {
                let (writer, guard) = appender().finish(null.clone());
                (plain_info(writer), Box::new(guard))
            }
            LogWriter::AppenderBufWriter => {
                let (writer, guard) = appender().finish(std::io::BufWriter::new(null.clone()));
                (plain_info(writer), Box::new(guard))
            }
        }
    }
}

/// The subscriber `serve` installs with the defaults (plain, info), on `writer`.
fn plain_info<W>(writer: W) -> tracing::Dispatch
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    tracing::Dispatch::new(credvend::telemetry::subscriber(
        tracing_subscriber::EnvFilter::new("info"),
        credvend::config::LogFormat::Plain,
        writer,
    ))
}

/// The length of one plain audit line (fixed: the timestamp has fixed width).
fn audit_line_len(metrics: &Metrics, client: SocketAddr, expiration: SystemTime) -> u64 {
    let captured = credvend::testing::CapturedOutput::default();
    let writer = captured.clone();
    tracing::dispatcher::with_default(&plain_info(move || writer.clone()), || {
        emit_audit_line(metrics, client, expiration)
    });
    captured.text().len() as u64
}

/// `audit_line/writer/{writer}/{threads}`: `threads` threads emit the audit line
/// through the subscriber `serve` installs, on each [`LogWriter`] over `/dev/null`. The
/// time of a sample runs from the first line to the writer's guard being dropped, so
/// lines still queued when the producers finish are paid for; every sample checks that
/// all its bytes reached the file. Reported per line.
fn audit_line_writers(
    c: &mut Criterion,
    metrics: &Metrics,
    client: SocketAddr,
    expiration: SystemTime,
) {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Barrier, Mutex};
    use std::time::Instant;

    let line_len = audit_line_len(metrics, client, expiration);
    let mut group = c.benchmark_group("audit_line/writer");
    for threads in [1u64, 2] {
        for writer in [
            LogWriter::Sink,
            LogWriter::Batching,
            LogWriter::Appender,
            LogWriter::AppenderBufWriter,
        ] {
            let (writes, lines, ticks) = (Mutex::new(0u64), Mutex::new(0u64), Mutex::new(0u64));
            group.bench_with_input(
                BenchmarkId::new(writer.label(), threads),
                &threads,
                |b, &threads| {
                    b.iter_custom(|iters| {
                        let per_thread = iters.div_ceil(threads);
                        let null = CountedNull::open();
                        let cpu_before = process_cpu_ticks();
                        let (dispatch, guard) = writer.start(&null);
                        let start = Barrier::new(threads as usize + 1);
                        // The scope returns once every producer has emitted its lines.
                        let began = std::thread::scope(|s| {
                            for _ in 0..threads {
                                let (dispatch, start) = (&dispatch, &start);
                                s.spawn(move || {
                                    tracing::dispatcher::with_default(dispatch, || {
                                        start.wait();
                                        for _ in 0..per_thread {
                                            emit_audit_line(metrics, client, expiration);
                                        }
                                    })
                                });
                            }
                            start.wait();
                            Instant::now()
                        });
                        drop(guard);
                        let elapsed = began.elapsed();
                        if !matches!(writer, LogWriter::Sink) {
                            let expected = per_thread * threads * line_len;
                            let written = null.bytes.load(Relaxed);
                            assert_eq!(
                                written,
                                expected,
                                "{}: not every line reached the file",
                                writer.label()
                            );
                        }
                        *ticks.lock().unwrap() += process_cpu_ticks() - cpu_before;
                        *writes.lock().unwrap() += null.writes.load(Relaxed);
                        *lines.lock().unwrap() += per_thread * threads;
                        elapsed.mul_f64(iters as f64 / (per_thread * threads) as f64)
                    })
                },
            );
            let (writes, lines) = (*writes.lock().unwrap(), *lines.lock().unwrap());
            let ticks = *ticks.lock().unwrap();
            // Ticks are 10 ms; summed over every sample the rounding averages out, given
            // enough of them (not in `cargo test --benches`, which runs each once).
            let cpu = if ticks >= 100 {
                format!("{:.0} ns", ticks as f64 * 1e7 / lines as f64)
            } else {
                "not measured (under 1 s of it)".into()
            };
            if lines > 0 {
                eprintln!(
                    "audit_line/writer/{}/{threads}: CPU per line (all threads) {cpu}, \
                     write calls per line {:.3}",
                    writer.label(),
                    writes as f64 / lines as f64
                );
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the machine is shared; the relative figures are what matter.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = token_check, mapping_lookup, response, audit_line
}
criterion_main!(benches);
