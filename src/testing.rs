//! Test fixtures shared by unit and integration tests: a [`Config`] with the documented
//! defaults built in code (no file), and mappings. Not part of the daemon's behaviour.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::aws_names::{Region, RoleArn, SessionName};
use crate::config::{
    Config, ControlConfig, EnforcementMode, LogConfig, LogFormat, Mapping, MetricsConfig,
    RefreshConfig, ReloadConfig, ServerConfig, StsConfig, VerifyConfig,
};
use crate::secret::{ExternalId, TokenHash};

/// The account of test roles.
pub const ACCOUNT: &str = "111122223333";

/// `arn:aws:iam::111122223333:role/{name}`.
pub fn role_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{name}")
}

/// A mapping `name` → role `role` with the given External ID and one token, defaults
/// elsewhere (1 h session, us-east-1, enforcement off).
pub fn mapping(name: &str, role: &str, external_id: Option<&str>, token: &str) -> Mapping {
    Mapping {
        name: name.to_string(),
        role_arn: RoleArn::parse(&role_arn(role)).expect("a valid role name"),
        external_id: external_id.map(ExternalId::new),
        token_sha256: vec![TokenHash::of_token(token.as_bytes())],
        session_name: SessionName::try_from(format!("credvend-{name}"))
            .expect("a valid mapping name"),
        session_duration: Duration::from_secs(3600),
        session_policy: None,
        policy_arns: Vec::new(),
        tags: BTreeMap::new(),
        source_identity: None,
        region: us_east_1(),
        prefetch: false,
        external_id_enforcement: EnforcementMode::Off,
    }
}

fn us_east_1() -> Region {
    Region::try_from("us-east-1".to_owned()).expect("a region name")
}

/// The shipped defaults (src/config/validate.rs), listeners on 127.0.0.1 port 0, STS at
/// `sts_endpoint`, except the two latency bounds: `cold_wait` and `call_timeout` are 30 s
/// here, so a cold miss is answered by the (loopback) STS however starved of CPU the test
/// machine is. A test about either bound sets its own.
pub fn config(sts_endpoint: &str, mappings: Vec<Mapping>) -> Config {
    Config {
        files: vec![PathBuf::from("test.toml")],
        include_dirs: Vec::new(),
        server: ServerConfig {
            listen: vec!["127.0.0.1:0".parse().expect("literal address")],
            admin_listen: "127.0.0.1:0".parse().expect("literal address"),
            allowed_hosts: Vec::new(),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            admin_allowed_hosts: Vec::new(),
            write_timeout: Duration::from_secs(10),
        },
        log: LogConfig {
            level: "info".into(),
            format: LogFormat::Plain,
        },
        sts: StsConfig {
            region: us_east_1(),
            endpoint_url: Some(sts_endpoint.to_string()),
            fallback_regions: Vec::new(),
            endpoint_urls: BTreeMap::new(),
            source_role_arn: None,
            max_requests_per_second: 1000,
            call_timeout: Duration::from_secs(30),
        },
        refresh: RefreshConfig {
            session_duration: Duration::from_secs(3600),
            refresh_before: Duration::from_secs(35 * 60),
            min_remaining: Duration::from_secs(20 * 60),
            cold_wait: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(6 * 3600),
        },
        verify: VerifyConfig {
            external_id_enforcement: EnforcementMode::Off,
            recheck_interval: Duration::from_secs(24 * 3600),
        },
        reload: ReloadConfig { watch: true },
        metrics: MetricsConfig::default(),
        control: ControlConfig::default(),
        mappings: mappings.into_iter().map(|m| (m.name.clone(), m)).collect(),
        warnings: Vec::new(),
    }
}

/// An in-memory `Write` whose clones share one buffer: hand a clone to a log writer or
/// subscriber, read what arrived with [`CapturedOutput::text`].
#[derive(Clone, Default)]
pub struct CapturedOutput(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedOutput {
    /// Everything written so far (lossy UTF-8).
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for CapturedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with this thread's log events (debug and up) captured as JSON objects, one
/// per line the subscriber wrote; returns `f`'s result and the events.
pub fn json_logs<T>(f: impl FnOnce() -> T) -> (T, Vec<serde_json::Value>) {
    let captured = CapturedOutput::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let lines = captured
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    (out, lines)
}

/// Runs `hook` once, on this thread, when the next configuration load on it has read
/// every file and not yet validated them: an edit made there lands "during a reload",
/// after the bytes the configuration is built from were read.
pub fn after_next_config_read(hook: impl FnOnce() + 'static) {
    crate::config::set_after_read(Box::new(hook));
}
