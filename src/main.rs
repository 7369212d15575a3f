//! The `credvend` command: parse, load, init, run, map the outcome to an exit code
//! (64 for bad configuration or usage, 1 for runtime failure).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

use credvend::clock::SystemClock;
use credvend::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, LogFormat};
use credvend::creds::sts::{StsAssumer, StsSettings};
use credvend::daemon::{Daemon, Listeners};
use credvend::events::{ConfigReloadApplied, ConfigReloadRejected};
use credvend::secret::TokenHash;
use credvend::server::Limits;

/// Exit status for a configuration or usage problem (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "credvend",
    version,
    about = "Credential-vending sidecar: AWS container credentials for customer roles assumed with External IDs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Log format; overrides `[log] format`.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Validate the configuration and print a summary of the mappings.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Worker authorization tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random token (256 bits) and the `token_sha256` line for the config.
    New,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = "CREDVEND_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Plain,
    Json,
}

/// How a command failed.
enum Failure {
    Config(ConfigError),
    Runtime(anyhow::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(problems)) => {
            eprintln!("credvend: invalid configuration:");
            eprintln!("{problems}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("credvend: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve { config, log_format } => {
            let loaded = Config::load(&config.config).map_err(Failure::Config)?;
            let format = match log_format {
                Some(LogFormatArg::Plain) => LogFormat::Plain,
                Some(LogFormatArg::Json) => LogFormat::Json,
                None => loaded.log.format,
            };
            credvend::telemetry::init(&loaded.log.level, format)
                .map_err(|e| Failure::Runtime(anyhow::anyhow!(e)))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")
                .map_err(Failure::Runtime)?;
            runtime
                .block_on(serve(config.config, loaded))
                .map_err(Failure::Runtime)
        }
        Command::CheckConfig { config } => {
            let loaded = Config::load(&config.config).map_err(Failure::Config)?;
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{}", loaded.summary());
            Ok(())
        }
        Command::Token {
            command: TokenCommand::New,
        } => {
            let token = new_token();
            println!("{token}");
            println!(
                "token_sha256 = [\"{}\"]",
                TokenHash::of_token(token.as_bytes()).to_hex()
            );
            eprintln!(
                "Give the first line to the worker (AWS_CONTAINER_AUTHORIZATION_TOKEN, or a token file without a trailing newline); put the second in its mapping."
            );
            Ok(())
        }
    }
}

/// 256 bits from the OS CSPRNG, hex-encoded (64 characters, safe in any header and
/// file, no newline).
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

async fn serve(path: PathBuf, config: Config) -> anyhow::Result<()> {
    for warning in &config.warnings {
        warn!(warning = %warning, "Configuration warning");
    }
    let assumer = StsAssumer::from_env(StsSettings::from(&config.sts))
        .await
        .context("cannot set up the STS client")?;
    let listeners = Listeners::bind(&config.server).await?;
    let limits = Limits::from_config(&config.server);
    let daemon = Arc::new(Daemon::new(
        &config,
        Arc::new(assumer),
        Arc::new(SystemClock),
    ));
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        mappings = config.mappings.len(),
        "credvend started"
    );
    let reloader = tokio::spawn(reload_on_sighup(path, config, daemon.clone()));
    daemon.run(listeners, limits, shutdown_signal()).await;
    reloader.abort();
    info!("credvend stopped");
    Ok(())
}

/// Completes on SIGTERM (systemd, Kubernetes, docker stop) or SIGINT (Ctrl-C in a
/// terminal). Either means: stop accepting, finish what is in flight, exit 0.
///
/// The SIGTERM handler is installed when this is called, not when the future is first
/// polled: systemd may send SIGTERM as soon as READY=1 is out, and a signal arriving
/// before the handler exists takes the default action (killed, not a clean exit).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    async move {
        let mut term = match term {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "Cannot listen for SIGTERM; only SIGINT will stop the daemon");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "Shutdown requested"),
            _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "Shutdown requested"),
        }
    }
}

/// SIGHUP re-reads and re-validates the whole configuration. A valid one is applied
/// atomically; an invalid one is rejected whole and the running one keeps serving.
/// systemd is told `RELOADING=1` before and `READY=1` after, whatever the outcome.
///
/// The SIGHUP handler is installed when this is called (before READY=1), for the same
/// reason as in [`shutdown_signal`]: SIGHUP's default action terminates the process.
fn reload_on_sighup(
    path: PathBuf,
    current: Config,
    daemon: Arc<Daemon>,
) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup());
    async move {
        match hup {
            Ok(hup) => reload_loop(hup, path, current, daemon).await,
            Err(e) => error!(error = %e, "Cannot listen for SIGHUP; reload by restarting"),
        }
    }
}

async fn reload_loop(
    mut hup: tokio::signal::unix::Signal,
    path: PathBuf,
    mut current: Config,
    daemon: Arc<Daemon>,
) {
    while hup.recv().await.is_some() {
        info!(config = %path.display(), "Reload requested");
        credvend::notify::reloading();
        match Config::load(&path) {
            Ok(new) => {
                warn_restart_only_changes(&path, &current, &new);
                for warning in &new.warnings {
                    warn!(warning = %warning, "Configuration warning");
                }
                daemon.apply_config(&new);
                ConfigReloadApplied {
                    path: &path,
                    generation: daemon.generation(),
                    mappings: new.mappings.len(),
                }
                .emit(daemon.metrics());
                current = new;
            }
            Err(problems) => ConfigReloadRejected {
                path: &path,
                problems: &problems.problems,
            }
            .emit(daemon.metrics()),
        }
        credvend::notify::ready();
    }
}

/// Settings that only take effect at start-up (sockets, STS client, log setup).
fn warn_restart_only_changes(path: &Path, old: &Config, new: &Config) {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen || old.server.admin_listen != new.server.admin_listen
    {
        changed.push("server.listen/admin_listen");
    }
    if old.sts.region != new.sts.region
        || old.sts.endpoint_url != new.sts.endpoint_url
        || old.sts.source_role_arn != new.sts.source_role_arn
    {
        changed.push("sts");
    }
    if old.log.level != new.log.level || old.log.format != new.log.format {
        changed.push("log");
    }
    if !changed.is_empty() {
        warn!(
            config = %path.display(),
            sections = ?changed,
            "These settings changed but take effect only after a restart"
        );
    }
}
