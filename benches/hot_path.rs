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

fn audit_line(c: &mut Criterion) {
    use credvend::config::LogFormat;
    use credvend::events::CredentialsServed;
    use credvend::model::Source;
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
                b.iter(|| {
                    CredentialsServed {
                        mapping: std::hint::black_box("m00000"),
                        client,
                        source: Source::Cache,
                        access_key_id: "ASIAQEXAMPLE00000001",
                        expiration,
                    }
                    .emit(&metrics)
                })
            });
        });
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
