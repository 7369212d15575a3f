//! A whole credvend daemon in-process: real listeners on 127.0.0.1:0, the real STS
//! client pointed at the fake STS, a manual clock, and a shutdown handle.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials as AwsCredentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use credvend::clock::ManualClock;
use credvend::config::{Config, Mapping};
use credvend::creds::sts::{StsAssumer, StsSettings};
use credvend::daemon::{Daemon, Listeners};
use credvend::server::Limits;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::fake_sts::FakeSts;

#[allow(unused_imports)]
pub use credvend::testing::{ACCOUNT, config, mapping, role_arn};

/// A token for tests: recognisable, 64 characters.
pub fn token(label: &str) -> String {
    format!("{label:-<16}{}", "0123456789abcdef".repeat(3))
}

/// The real STS client against the fake, with static vendor credentials.
pub async fn assumer(config: &Config) -> StsAssumer {
    let base = AwsCredentials::new(
        "AKIAVENDORBASE000000",
        "vendor-base-secret",
        None,
        None,
        "test",
    );
    StsAssumer::with_credentials_provider(
        StsSettings::from(&config.sts),
        SharedCredentialsProvider::new(base),
    )
    .await
    .expect("STS client")
}

/// A running daemon.
pub struct TestDaemon {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub daemon: Arc<Daemon>,
    pub clock: ManualClock,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestDaemon {
    /// Starts `config` against `sts` with `clock`.
    pub async fn start(config: Config, clock: ManualClock) -> TestDaemon {
        let listeners = Listeners::bind(&config.server).await.expect("bind");
        Self::start_with_listeners(config, clock, listeners).await
    }

    /// Like [`TestDaemon::start`], serving `listeners` the test bound itself (they need
    /// not be the addresses `config.server` names; `addr` is the first credential one).
    pub async fn start_with_listeners(
        config: Config,
        clock: ManualClock,
        listeners: Listeners,
    ) -> TestDaemon {
        let assumer = assumer(&config).await;
        let addr = listeners.credential_addrs()[0];
        let admin = listeners.admin_addr().expect("admin addr");
        let daemon = Arc::new(Daemon::new(
            &config,
            Arc::new(assumer),
            Arc::new(clock.clone()),
        ));
        let (tx, rx) = oneshot::channel();
        let limits = Limits::from_config(&config.server);
        let task = {
            let daemon = daemon.clone();
            tokio::spawn(async move {
                daemon
                    .run(listeners, limits, async {
                        let _ = rx.await;
                    })
                    .await;
            })
        };
        TestDaemon {
            addr,
            admin,
            daemon,
            clock,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits for the daemon to drain and stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("daemon stops within 30 s")
                .expect("daemon task did not panic");
        }
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("daemon running")
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Convenience: fake STS + daemon sharing one manual clock.
pub async fn start_with_sts(mappings: Vec<Mapping>) -> (FakeSts, TestDaemon) {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    let daemon = TestDaemon::start(config(&sts.endpoint_url(), mappings), clock).await;
    (sts, daemon)
}

/// Like [`start_with_sts`], with `tweak` applied to the config first (limits, timeouts,
/// budget).
pub async fn start_with_sts_and(
    mappings: Vec<Mapping>,
    tweak: impl FnOnce(&mut Config),
) -> (FakeSts, TestDaemon) {
    let clock = ManualClock::starting_now();
    let sts = FakeSts::start(Arc::new(clock.clone())).await;
    let mut config = config(&sts.endpoint_url(), mappings);
    tweak(&mut config);
    let daemon = TestDaemon::start(config, clock).await;
    (sts, daemon)
}

/// Polls `condition` every 5 ms until it holds; panics with `what` after 10 s. For
/// waiting on background work (a refresh the clock made due), not for timing.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The common case: mapping `acme-s3` → role `vendor-sync`, whose trust policy requires
/// `external_id`. Returns the fake STS, the daemon and the mapping's token.
pub async fn start_acme(external_id: &str) -> (FakeSts, TestDaemon, String) {
    let token = token("acme");
    let (sts, d) = start_with_sts(vec![mapping(
        "acme-s3",
        "vendor-sync",
        Some(external_id),
        &token,
    )])
    .await;
    sts.add_role(super::fake_sts::Role::new(
        role_arn("vendor-sync"),
        super::fake_sts::TrustRule::RequireExternalId(external_id.into()),
    ));
    (sts, d, token)
}

/// Waits until mapping `name` is settled at the daemon's current clock reading: no
/// fetch in flight, and no refresh or retry due (every one the clock made due has run
/// and landed). Returns the mapping's status at that point, for the caller to assert
/// the state it reached.
///
/// Unlike polling "nothing in flight" alone, this cannot pass before background work
/// the clock just made due has even started: a due refresh shows as `next_refresh <=
/// now` until the scheduler has taken it, and the scheduler registers the fetch in the
/// same step as it takes the refresh off its queue (see src/cache/publish.rs,
/// `on_refresh_due`). Panics with the last status after 30 s (a bound for a loaded
/// machine, not a timing assertion).
#[track_caller]
pub fn settled<'a>(
    d: &'a TestDaemon,
    name: &'a str,
) -> impl std::future::Future<Output = credvend::model::MappingStatus> + 'a {
    use credvend::model::MappingState;
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            // Let tasks woken by a clock step run before the first look.
            tokio::task::yield_now().await;
            let now = d.daemon.cache.now();
            let status = d
                .daemon
                .cache
                .status()
                .into_iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("mapping {name} not configured (at {caller})"));
            let in_flight = matches!(
                status.state,
                MappingState::Fetching | MappingState::Refreshing
            );
            let due = status.next_refresh.is_some_and(|at| at <= now);
            if !in_flight && !due {
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "mapping {name} not settled after 30 s (in flight: {in_flight}, refresh \
                     due: {due}): {status:?} (at {caller})"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
