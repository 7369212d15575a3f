//! The daemon: one config generation's worth of state (access table, credential cache)
//! plus the listeners serving it.
//!
//! [`Daemon::run`] takes listeners that are already bound and a shutdown future, so
//! tests run the whole daemon on `127.0.0.1:0` with a fake STS and a manual clock.
//! [`Daemon::apply_config`] swaps in a new, already-validated config atomically: requests
//! in flight finish against the generation they started with.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cache::CredentialCache;
use crate::clock::Clock;
use crate::config::{Config, ControlConfig, ServerConfig};
use crate::creds::RoleAssumer;
use crate::creds::sts::StsAssumer;
use crate::metrics::Metrics;
use crate::server::access::{AccessTable, HostAllowList};
use crate::server::admin::AdminEndpoint;
use crate::server::control::{self, ControlBindError, ControlEndpoint, ControlSocket};
use crate::server::credentials::{CredentialEndpoint, Generation};
use crate::server::jobs::JobTokens;
use crate::server::status::{BaseIdentity, BaseIdentityStatus, LastReload};
use crate::server::{self, Limits};

/// A listen address could not be bound. The message names the config key the address
/// came from and carries the OS error once (it is not also a `source`, which
/// `{error:#}` would print a second time).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({key}): {error}")]
pub struct BindError {
    /// `server.listen` or `server.admin_listen`.
    pub key: &'static str,
    pub addr: SocketAddr,
    pub error: std::io::Error,
}

/// A listener of the configuration could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Tcp(#[from] BindError),
    #[error(transparent)]
    Control(#[from] ControlBindError),
}

/// How often the base identity is checked again while it is not known to work
/// ([`Daemon::watch_base_identity`]): credentials may appear after start (an instance
/// profile attached, a container credential endpoint that comes up late).
pub const BASE_IDENTITY_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Bound sockets, ready to serve.
pub struct Listeners {
    pub credentials: Vec<TcpListener>,
    pub admin: TcpListener,
    /// The control socket (`[control] socket`), if configured.
    pub control: Option<ControlSocket>,
}

impl Listeners {
    /// Binds every configured address of `[server]`; fails on the first that cannot be
    /// bound. No control socket ([`Listeners::bind_all`] adds it).
    pub async fn bind(server: &ServerConfig) -> Result<Self, BindError> {
        let mut credentials = Vec::with_capacity(server.listen.len());
        for addr in &server.listen {
            credentials.push(bind("server.listen", *addr).await?);
        }
        Ok(Self {
            credentials,
            admin: bind("server.admin_listen", server.admin_listen).await?,
            control: None,
        })
    }

    /// Binds every listener: `server`'s addresses, then the control socket if
    /// `control.socket` is set.
    pub async fn bind_all(
        server: &ServerConfig,
        control: &ControlConfig,
    ) -> Result<Self, ListenError> {
        let mut listeners = Self::bind(server).await?;
        listeners.control = ControlSocket::bind(control)?;
        Ok(listeners)
    }

    /// The bound credential addresses (useful with port 0; tests only).
    #[cfg(any(test, feature = "test-util"))]
    pub fn credential_addrs(&self) -> Vec<SocketAddr> {
        self.credentials
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound admin address (tests only).
    #[cfg(any(test, feature = "test-util"))]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| BindError { key, addr, error })
}

/// The running daemon's shared state.
pub struct Daemon {
    pub cache: CredentialCache,
    /// The access rules and mapping table requests are served against, swapped as one.
    serving: Arc<ArcSwap<Generation>>,
    /// `Host` values the admin listener accepts (swapped on reload, like `serving`).
    admin_hosts: Arc<ArcSwap<HostAllowList>>,
    /// Set once every listener is serving (readiness).
    listening: Arc<AtomicBool>,
    /// Incremented by every applied config (1 = the one started with).
    generation: Arc<AtomicU64>,
    /// Wall-clock start time, for `/status`.
    started_at: std::time::SystemTime,
    /// Every metric family; served on the admin listener's `/metrics`.
    metrics: Arc<Metrics>,
    /// The last reload that went ahead, for `/status` (none yet: the configuration is
    /// the one started with).
    last_reload: Arc<Mutex<Option<LastReload>>>,
    /// What is known of credvend's own AWS identity, for `/readyz` and `/status`.
    base_identity: Arc<Mutex<BaseIdentityStatus>>,
    /// Live job tokens (docs/design.md, Job tokens).
    jobs: JobTokens,
    /// `[control] max_tokens` (restart-only): the control socket's connection bound.
    max_tokens: usize,
}

impl Daemon {
    pub fn new(config: &Config, assumer: Arc<dyn RoleAssumer>, clock: Arc<dyn Clock>) -> Self {
        let metrics = new_metrics(config, clock.clone());
        let started_at = clock.now();
        // The start-up load counts as the first: it was applied.
        metrics.config_last_reload(true, started_at);
        // The region breakers' cool-downs run on the daemon's clock.
        assumer.use_clock(clock.clone());
        metrics.sts_regions(&assumer.region_health());
        let cache = CredentialCache::new(config, assumer, clock.clone(), metrics.clone());
        let jobs = JobTokens::new(
            &config.control,
            config.mappings.keys().map(String::as_str),
            clock,
            metrics.clone(),
            cache.clone(),
        );
        let serving = Generation {
            access: AccessTable::new(config),
            mappings: cache.mapping_table(),
        };
        Self {
            cache,
            serving: Arc::new(ArcSwap::from_pointee(serving)),
            admin_hosts: Arc::new(ArcSwap::from_pointee(admin_hosts(config))),
            listening: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(1)),
            started_at,
            metrics,
            last_reload: Arc::new(Mutex::new(None)),
            base_identity: Arc::new(Mutex::new(BaseIdentityStatus::default())),
            jobs,
            max_tokens: config.control.max_tokens,
        }
    }

    /// The live job tokens.
    pub fn jobs(&self) -> &JobTokens {
        &self.jobs
    }

    /// The daemon's metrics (one registry per daemon, so tests can run many).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Applies a new validated config: tokens and mappings switch together (one store,
    /// so no request is authorised by one generation and served by another); only
    /// mappings whose AssumeRole inputs changed lose their cached credentials.
    pub fn apply_config(&self, config: &Config) {
        let access = AccessTable::new(config);
        // Job tokens of removed mappings are revoked before their metric series go.
        self.jobs
            .retain_mappings(config.mappings.keys().map(String::as_str));
        // Metrics first: events for a mapping the metric set does not know are dropped,
        // and the cache starts fetching new mappings as soon as it has the config.
        self.metrics
            .sync_mappings(config.mappings.keys().map(String::as_str));
        self.metrics.configure(config.metrics);
        // The serving generation is swapped as soon as the cache uses the new table, before
        // it drops the changed mappings' credentials: a request still authorised by the
        // generation before is served from the cache, not fetched for a role being dropped.
        self.cache.apply_config_then(config, |mappings| {
            self.serving
                .store(Arc::new(Generation { access, mappings }));
        });
        self.admin_hosts.store(Arc::new(admin_hosts(config)));
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        info!(
            generation,
            mappings = config.mappings.len(),
            "Configuration applied"
        );
    }

    /// [`Daemon::apply_config`] for a reload that read only the files that changed
    /// (docs/design.md, Reload): `changes` holds the settings and the mappings of those
    /// files (new or replaced), `removed` the names gone; every other mapping stays as
    /// it is, and the work is the changed mappings', not the whole table's.
    pub fn apply_changes(&self, changes: &Config, removed: &BTreeSet<String>) {
        let access = self.serving.load().access.with_changes(changes, removed);
        let added = || changes.mappings.keys().map(String::as_str);
        self.jobs.change_mappings(added(), removed);
        self.metrics.change_mappings(added(), removed);
        self.metrics.configure(changes.metrics);
        self.cache.apply_changes_then(changes, removed, |mappings| {
            self.serving
                .store(Arc::new(Generation { access, mappings }));
        });
        self.admin_hosts.store(Arc::new(admin_hosts(changes)));
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        info!(
            generation,
            changed = changes.mappings.len(),
            removed = removed.len(),
            "Configuration applied"
        );
    }

    /// Forgets every mapping's negative cache and terminal backoff
    /// ([`CredentialCache::forget_failures`]): a SIGHUP's second job.
    pub fn forget_failures(&self) {
        self.cache.forget_failures();
    }

    /// Keeps `reload` as the last reload for `/status`.
    pub fn record_reload(&self, reload: LastReload) {
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(reload);
    }

    /// The last reload that went ahead, if any.
    pub fn last_reload(&self) -> Option<LastReload> {
        self.last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Config generation currently applied.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The admin endpoints over this daemon's state, as [`Daemon::run`] serves them on
    /// the admin listener. Its `/readyz` answers "listeners not bound yet" until `run` is
    /// serving every listener, and again once shutdown has begun.
    pub fn admin_endpoint(&self) -> AdminEndpoint {
        AdminEndpoint {
            cache: self.cache.clone(),
            listening: self.listening.clone(),
            metrics: self.metrics.clone(),
            generation: self.generation.clone(),
            started_at: self.started_at,
            hosts: self.admin_hosts.clone(),
            last_reload: self.last_reload.clone(),
            base_identity: self.base_identity.clone(),
            jobs: self.jobs.clone(),
        }
    }

    /// Asks STS who credvend is (`sts:GetCallerIdentity` through `assumer`, bounded by
    /// its call timeout) and records the answer for `/status` and `/readyz`. A change is
    /// logged: a WARN naming the problem when the credentials are missing or rejected
    /// (the daemon keeps running: they may appear later), INFO with the ARN when found.
    pub async fn check_base_identity(&self, assumer: &StsAssumer) {
        let result = assumer.get_caller_identity().await;
        let at = self.cache.now();
        let mut status = self.base_identity.lock().unwrap_or_else(|e| e.into_inner());
        let was = std::mem::discriminant(&status.state);
        match result {
            Ok(identity) => {
                if !matches!(status.state, BaseIdentity::Ok { .. }) {
                    info!(arn = %identity.arn, "AWS identity found");
                }
                status.state = BaseIdentity::Ok {
                    arn: identity.arn,
                    checked_at: at,
                };
            }
            Err(error) => {
                let problem = error.reason.base_identity_problem();
                status.state = if problem.is_some() {
                    BaseIdentity::Unavailable
                } else {
                    BaseIdentity::Unchecked
                };
                let changed = was != std::mem::discriminant(&status.state)
                    || status.last_error.as_ref().map(|e| e.0) != Some(error.reason);
                if changed {
                    warn!(
                        reason = error.reason.as_str(),
                        code = %error.code,
                        error = %error.message,
                        problem = problem.unwrap_or("STS did not answer"),
                        "Cannot confirm credvend's own AWS identity; nothing can be vended without it"
                    );
                }
                status.last_error = Some((error.reason, error.code, at));
            }
        }
    }

    /// [`Daemon::check_base_identity`] now, and every [`BASE_IDENTITY_RECHECK`] while
    /// the identity is not known to work. Runs until dropped (`serve` aborts it).
    pub async fn watch_base_identity(self: Arc<Self>, assumer: Arc<StsAssumer>) {
        loop {
            let known = matches!(
                self.base_identity
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .state,
                BaseIdentity::Ok { .. }
            );
            if !known {
                self.check_base_identity(&assumer).await;
            }
            tokio::time::sleep(BASE_IDENTITY_RECHECK).await;
        }
    }

    /// Serves until `shutdown` completes, then drains every listener within the grace
    /// period and stops the refresh scheduler.
    pub async fn run(
        &self,
        listeners: Listeners,
        limits: Limits,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let scheduler = self.cache.start();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };

        let mut servers = Vec::new();
        // `max_connections` bounds the credential listeners together (the default
        // listens on 127.0.0.1 and [::1]: still 1024 in all, not per address); the
        // admin listener has slots of its own, so probes and scrapes never wait behind
        // credential clients.
        let credential_slots = server::ConnectionSlots::new(limits.max_connections);
        // One reference count per request rather than one per field of the endpoint.
        let endpoint = Arc::new(CredentialEndpoint {
            generation: self.serving.clone(),
            cache: self.cache.clone(),
            metrics: self.metrics.clone(),
            jobs: self.jobs.clone(),
        });
        // What a client of the control socket sets as AWS_CONTAINER_CREDENTIALS_FULL_URI
        // (a SocketAddr displays IPv6 in brackets).
        let credentials_base = listeners
            .credentials
            .first()
            .and_then(|l| l.local_addr().ok())
            .map(|addr| format!("http://{addr}"))
            .unwrap_or_default();
        let sweeper = tokio::spawn(self.jobs.clone().run_sweeper());
        for listener in listeners.credentials {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, "Serving credentials");
            }
            let endpoint = endpoint.clone();
            // The endpoint answers a cache hit at once (`Handled::Ready`); only a request
            // that waits for the cache carries a future of its own.
            let handler = move |request, conn| endpoint.handle(request, conn);
            servers.push(tokio::spawn(server::serve_sharing(
                listener,
                handler,
                limits.clone(),
                credential_slots.clone(),
                stopped(),
            )));
        }
        let admin = self.admin_endpoint();
        if let Ok(addr) = listeners.admin.local_addr() {
            info!(%addr, "Serving admin endpoints");
        }
        let handler = move |request, conn| {
            let admin = admin.clone();
            async move { admin.handle(request, conn).await }
        };
        servers.push(tokio::spawn(server::serve(
            listeners.admin,
            handler,
            limits.clone(),
            stopped(),
        )));
        if let Some(socket) = listeners.control {
            let endpoint = ControlEndpoint {
                jobs: self.jobs.clone(),
                credentials_base,
            };
            servers.push(tokio::spawn(control::serve(
                socket,
                endpoint,
                limits.clone(),
                self.max_tokens,
                stopped(),
            )));
        }
        self.listening.store(true, Ordering::Release);
        crate::notify::ready();

        shutdown.await;
        crate::notify::stopping();
        info!("Shutting down: no new connections, draining in-flight requests");
        self.listening.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        for server in servers {
            let _ = server.await;
        }
        scheduler.abort();
        sweeper.abort();
    }
}

/// The `Host` values the admin listener accepts under `config`.
fn admin_hosts(config: &Config) -> HostAllowList {
    HostAllowList::new(
        [&config.server.admin_listen],
        &config.server.admin_allowed_hosts,
    )
}

/// The metric set of a daemon starting with `config`: every mapping registered, the
/// `[metrics]` section applied, activity timed on the daemon's `clock`.
fn new_metrics(config: &Config, clock: Arc<dyn Clock>) -> Arc<Metrics> {
    let metrics = Metrics::configured(config.metrics, clock);
    metrics.sync_mappings(config.mappings.keys().map(String::as_str));
    Arc::new(metrics)
}
