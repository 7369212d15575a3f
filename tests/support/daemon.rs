//! A whole credvend daemon in-process: real listeners on 127.0.0.1:0, the real STS
//! client pointed at the fake STS, a manual clock, and a shutdown handle.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials as AwsCredentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use credvend::clock::ManualClock;
use credvend::config::{
    Config, Enforcement, LogConfig, LogFormat, Mapping, RefreshConfig, ServerConfig, StsConfig,
    VerifyConfig,
};
use credvend::creds::sts::{StsAssumer, StsSettings};
use credvend::daemon::{Daemon, Listeners};
use credvend::secret::{ExternalId, TokenHash};
use credvend::server::Limits;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::fake_sts::FakeSts;

pub const ACCOUNT: &str = "111122223333";

pub fn role_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{name}")
}

/// A token for tests: recognisable, 64 characters.
pub fn token(label: &str) -> String {
    format!("{label:-<16}{}", "0123456789abcdef".repeat(3))
}

/// A mapping `name` → role `role`, External ID `external_id`, one token.
pub fn mapping(name: &str, role: &str, external_id: Option<&str>, token: &str) -> Mapping {
    Mapping {
        name: name.to_string(),
        role_arn: role_arn(role),
        external_id: external_id.map(ExternalId::new),
        token_sha256: vec![TokenHash::of_token(token.as_bytes())],
        session_name: format!("credvend-{name}"),
        session_duration: Duration::from_secs(3600),
        session_policy: None,
        policy_arns: Vec::new(),
        tags: BTreeMap::new(),
        source_identity: None,
        region: "us-east-1".to_string(),
        prefetch: false,
        external_id_enforcement: Enforcement::Off,
    }
}

/// Defaults of DESIGN.md §4 with test listeners on port 0.
pub fn config(sts_endpoint: &str, mappings: Vec<Mapping>) -> Config {
    Config {
        path: PathBuf::from("test.toml"),
        files: vec![PathBuf::from("test.toml")],
        server: ServerConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            allow_non_loopback: false,
            allowed_hosts: Vec::new(),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
        },
        log: LogConfig {
            level: "info".into(),
            format: LogFormat::Plain,
        },
        sts: StsConfig {
            region: "us-east-1".into(),
            endpoint_url: Some(sts_endpoint.to_string()),
            source_role_arn: None,
            max_requests_per_second: 1000,
            call_timeout: Duration::from_secs(5),
        },
        refresh: RefreshConfig {
            session_duration: Duration::from_secs(3600),
            refresh_before: Duration::from_secs(35 * 60),
            min_remaining: Duration::from_secs(20 * 60),
            cold_wait: Duration::from_millis(800),
            idle_timeout: Duration::from_secs(6 * 3600),
        },
        verify: VerifyConfig {
            external_id_enforcement: Enforcement::Off,
            recheck_interval: Duration::from_secs(24 * 3600),
        },
        mappings: mappings.into_iter().map(|m| (m.name.clone(), m)).collect(),
        warnings: Vec::new(),
    }
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
        let assumer = assumer(&config).await;
        let listeners = Listeners::bind(&config.server).await.expect("bind");
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
