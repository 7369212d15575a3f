//! Where the bytes go at scale (docs/performance.md, "Memory and start-up at 100,000
//! mappings"): a counting global allocator around the system one, and the structures a
//! daemon builds for N mappings (nothing warm), each measured as the live heap it adds.
//!
//! ```sh
//! cargo run --release --example memory_breakdown -- 100000 include   # or: one-file
//! ```
//!
//! Figures: live bytes (what the structure keeps, per mapping), peak bytes while it was
//! built (the transient), allocations. The config is generated like the `scale` scenario
//! of `examples/bench_driver.rs`: one `[mappings.NAME]` table per mapping with a role, an
//! External ID and one token hash, in one file or one included file per mapping.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use credvend::cache::CredentialCache;
use credvend::clock::SystemClock;
use credvend::config::Config;
use credvend::creds::{AssumeError, AssumeRoleInput, Credentials, RoleAssumer};
use credvend::metrics::Metrics;
use credvend::secret::SecretValue;
use credvend::server::access::AccessTable;
use sha2::{Digest, Sha256};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Live allocations by size (8-byte steps up to 4 KiB, the last bucket for the rest),
/// for the warm stage's table of what a credential keeps.
static BY_SIZE: [AtomicUsize; 513] = [const { AtomicUsize::new(0) }; 513];

fn bucket(size: usize) -> usize {
    size.div_ceil(8).min(512)
}

fn add(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
    BY_SIZE[bucket(size)].fetch_add(1, Ordering::Relaxed);
}

fn remove(size: usize) {
    LIVE.fetch_sub(size, Ordering::Relaxed);
    BY_SIZE[bucket(size)].fetch_sub(1, Ordering::Relaxed);
}

fn by_size() -> Vec<usize> {
    BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are
// updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Ordering::Relaxed);
        add(layout.size());
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Ordering::Relaxed);
        add(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        remove(layout.size());
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        COUNT.fetch_add(1, Ordering::Relaxed);
        remove(layout.size());
        add(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Answers every AssumeRole at once with a 1 h credential whose session token has a
/// real one's length (1,024 characters, as `tests/support/fake_sts.rs` makes them), for
/// the warm stage.
struct InstantSts;

impl RoleAssumer for InstantSts {
    fn assume_role<'a>(
        &'a self,
        input: &'a AssumeRoleInput,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Credentials, AssumeError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let serial = COUNT.load(Ordering::Relaxed);
            Ok(Credentials {
                access_key_id: format!("ASIA{serial:016}"),
                secret_access_key: SecretValue::new(format!("{serial:040}")),
                session_token: SecretValue::new(format!("{serial:01024}")),
                expiration: SystemTime::now() + std::time::Duration::from_secs(3600),
                assumed_role_arn: format!("{}/session", input.role_arn),
            })
        })
    }
}

struct Stage {
    live_before: usize,
    count_before: usize,
    started: Instant,
}

fn begin() -> Stage {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    Stage {
        live_before: LIVE.load(Ordering::Relaxed),
        count_before: COUNT.load(Ordering::Relaxed),
        started: Instant::now(),
    }
}

fn end(stage: Stage, name: &str, n: usize) {
    let elapsed = stage.started.elapsed();
    let live = LIVE.load(Ordering::Relaxed);
    let kept = live as i64 - stage.live_before as i64;
    let peak = PEAK.load(Ordering::Relaxed) - stage.live_before;
    let count = COUNT.load(Ordering::Relaxed) - stage.count_before;
    println!(
        "{name:<44} kept {:>8.1} MiB ({:>6.0} B/mapping)  peak +{:>7.1} MiB  {:>9} allocs ({:.1}/mapping)  {:>8.1} ms",
        kept as f64 / 1048576.0,
        kept as f64 / n as f64,
        peak as f64 / 1048576.0,
        count,
        count as f64 / n as f64,
        elapsed.as_secs_f64() * 1e3
    );
}

fn table(i: usize) -> String {
    let token = format!("{i:016x}{}", "0123456789abcdef".repeat(3));
    format!(
        "[mappings.c{i:06}]\nrole_arn = \"arn:aws:iam::111122223333:role/bench-idle-{i}\"\n\
         external_id = \"external-id-{i:06}-0123456789abcdefghijklmnop\"\ntoken_sha256 = [\"{}\"]\nprefetch = false\n\n",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
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

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let layout = args.next().unwrap_or_else(|| "one-file".into());
    let dir = std::env::temp_dir().join(format!("credvend-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let head = "[server]\nlisten = [\"127.0.0.1:1\"]\nadmin_listen = \"127.0.0.1:2\"\n\n\
                [sts]\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:3\"\n\
                max_requests_per_second = 1000000\n\n\
                [verify]\nexternal_id_enforcement = \"off\"\n\n";
    let main_file = dir.join("credvend.toml");
    if layout == "include" {
        let mappings_dir = dir.join("mappings.d");
        std::fs::create_dir_all(&mappings_dir).expect("include dir");
        std::fs::set_permissions(
            &mappings_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod");
        for i in 0..n {
            write_private(&mappings_dir.join(format!("c{i:06}.toml")), &table(i));
        }
        write_private(
            &main_file,
            &format!("include = [\"mappings.d/*.toml\"]\n\n{head}"),
        );
    } else {
        let mut text = head.to_owned();
        for i in 0..n {
            text.push_str(&table(i));
        }
        write_private(&main_file, &text);
    }
    println!(
        "{n} mappings, layout {layout}; live heap before: {:.1} MiB",
        LIVE.load(Ordering::Relaxed) as f64 / 1048576.0
    );

    let stage = begin();
    let (sources, config) = Config::read(&main_file);
    let config = config.expect("valid config");
    end(
        stage,
        "Config::read (the validated Config and its Sources)",
        n,
    );

    let stage = begin();
    let access = AccessTable::new(&config);
    end(stage, "AccessTable (token -> mapping)", n);

    let stage = begin();
    let metrics = Metrics::configured(config.metrics, Arc::new(SystemClock));
    metrics.sync_mappings(config.mappings.keys().map(String::as_str));
    let metrics = Arc::new(metrics);
    end(stage, "Metrics (per-mapping series state)", n);

    let stage = begin();
    let cache = CredentialCache::new(
        &config,
        Arc::new(InstantSts),
        Arc::new(SystemClock),
        metrics.clone(),
    );
    end(stage, "CredentialCache (mapping table, specs, store)", n);

    let stage = begin();
    let table = cache.mapping_table();
    end(stage, "CredentialCache::mapping_table (serving view)", n);

    let stage = begin();
    let rendered = metrics.render();
    let size = rendered.len();
    drop(rendered);
    end(
        stage,
        &format!("Metrics::render ({size} bytes, then dropped)"),
        n,
    );

    let stage = begin();
    let files = config.files.len();
    drop(config);
    end(
        stage,
        &format!("drop the Config after building ({files} files)"),
        n,
    );

    let stage = begin();
    let listed = sources.files.len();
    drop(sources);
    end(
        stage,
        &format!("drop the Sources ({listed} files listed; the reload index)"),
        n,
    );

    println!(
        "live heap after start-up: {:.1} MiB ({:.0} B/mapping)",
        LIVE.load(Ordering::Relaxed) as f64 / 1048576.0,
        LIVE.load(Ordering::Relaxed) as f64 / n as f64
    );

    // Warm: a credential fetched for the first `warm` mappings (the request path's cold
    // fetch), as many as the scale-warm benchmark has.
    // First a tenth of them, then the rest, which is what `scale-warm`'s figure per warm
    // credential measures (all warm minus a tenth warm): the tables' growth from a tenth
    // to all counts in it, their first buckets do not.
    let warm = n.min(10_000);
    let tenth = warm / 10;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let warm_range = |range: std::ops::Range<usize>| {
        runtime.block_on(async {
            for i in range {
                cache.get(&format!("c{i:06}")).await.expect("a credential");
            }
        })
    };
    let stage = begin();
    warm_range(0..tenth);
    end(
        stage,
        &format!("{tenth} warm credentials (per credential)"),
        tenth,
    );
    let sizes_before = by_size();
    let stage = begin();
    warm_range(tenth..warm);
    end(
        stage,
        &format!("{} more warm credentials (per credential)", warm - tenth),
        warm - tenth,
    );
    let warm = warm - tenth;
    // What each credential keeps, by allocation size: the sizes with at least one live
    // allocation per ten credentials more than before.
    let mut kept: Vec<(usize, f64)> = by_size()
        .iter()
        .zip(&sizes_before)
        .enumerate()
        .map(|(bucket, (after, before))| {
            (bucket * 8, (*after as f64 - *before as f64) / warm as f64)
        })
        .filter(|(_, per)| per.abs() >= 0.1)
        .collect();
    kept.sort_by(|a, b| (b.0 as f64 * b.1).total_cmp(&(a.0 as f64 * a.1)));
    for (size, per) in kept {
        println!(
            "    size <= {size:>5} B: {per:>5.2} per credential ({:>6.0} B)",
            size as f64 * per
        );
    }
    drop((access, cache, table, metrics));
    let _ = std::fs::remove_dir_all(&dir);
}
