//! The `credvend` command: parse, load, init, run, map the outcome to an exit code
//! (64 for bad configuration or usage, 1 for runtime failure; the control-socket
//! commands and `exec` have their own: docs/jobs.md, "Exit status").

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use tracing::{debug, error, info, warn};

use credvend::clock::SystemClock;
use credvend::config::{Config, ConfigError, Sources};
use credvend::control_client::{self, ClientError, Connection};
use credvend::credential_process;
use credvend::creds::sts::{StsAssumer, StsSettings};
use credvend::daemon::{Daemon, Listeners};
use credvend::exec::{self, Job};
use credvend::policy::{self, Principal};
use credvend::reload::{self, Reloader};
use credvend::secret::TokenHash;
use credvend::server::Limits;
use credvend::setup;

use cli::args::{
    Cli, Command, DEFAULT_CONFIG_DIR, ExternalIdCommand, MappingCommand, PolicyCommand,
    TokenCommand,
};
use cli::onboard::onboard;
use cli::setup::{init, mapping_new};
use cli::verify::verify;
use cli::{block_on, own_principal};

/// jemalloc rather than glibc's allocator: told after each config load to give the
/// load's freed heap back, with background threads returning what stays unused
/// (`credvend::memory`; docs/performance.md, "Memory and start-up at 100,000 mappings").
/// glibc kept the load's transient heap (356 MiB idle at 100,000 mappings against ~100
/// MiB live) unless started with `MALLOC_ARENA_MAX=1`, and its `malloc_trim` needs
/// `unsafe`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for a configuration or usage problem (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Exit status when stdout's reader has gone: 128 + SIGPIPE, what a process the signal
/// killed reports.
const EXIT_BROKEN_PIPE: u8 = 141;

/// Exit status when the output cannot be written otherwise (EX_IOERR).
const EXIT_IO_ERROR: u8 = 74;

/// `println!` for a command's output on stdout, returning the write's error instead of
/// panicking as `println!` does when the reader has gone (`credvend … | head -1`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(Failure::Output)
    }};
}

/// [`outln!`] without the newline.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err(Failure::Output)
    }};
}

/// How a command failed.
enum Failure {
    Config(ConfigError),
    /// Bad command-line input (exit 64, like a bad config).
    Usage(String),
    Runtime(anyhow::Error),
    /// `verify` ran and found problems; it already printed them.
    ChecksFailed,
    /// A control-socket command or `exec` failed: its one line and its exit status.
    Control {
        message: String,
        code: u8,
    },
    /// `exec`'s command ended with this non-zero status (128+n for signal n).
    Child(u8),
    /// Writing the command's output to stdout failed.
    Output(std::io::Error),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Control {
            message: error.to_string(),
            code: error.exit_code(),
        }
    }
}

mod cli;

fn main() -> ExitCode {
    forbid_core_dumps();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout with status 0; a bad command line is a usage
        // error like any other (64, not clap's 2, which `exec` could not tell apart
        // from a command's own status 2).
        Err(error)
            if error.use_stderr()
                && std::env::args_os()
                    .nth(1)
                    .is_some_and(|a| a == "credential-process") =>
        {
            // A credential_process helper's stderr is quoted by the SDK: one line, as
            // for every other failure of the command.
            eprintln!("credvend: {}", one_line_usage_error(&error));
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(problems)) => {
            eprintln!("credvend: invalid configuration:");
            eprintln!("{problems}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("credvend: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("credvend: {error:#}");
            ExitCode::FAILURE
        }
        Err(Failure::ChecksFailed) => ExitCode::FAILURE,
        Err(Failure::Control { message, code }) => {
            eprintln!("credvend: {message}");
            ExitCode::from(code)
        }
        Err(Failure::Child(code)) => ExitCode::from(code),
        // The reader went away (`| head -1`): end quietly with the status a process
        // killed by SIGPIPE has, as a C tool in the same pipeline would.
        Err(Failure::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(EXIT_BROKEN_PIPE)
        }
        Err(Failure::Output(error)) => {
            eprintln!("credvend: cannot write the output: {error}");
            ExitCode::from(EXIT_IO_ERROR)
        }
    }
}

/// Clap's usage error as one line: its text up to the usage, lines joined.
fn one_line_usage_error(error: &clap::Error) -> String {
    let text = error.render().to_string();
    text.lines()
        .take_while(|line| !line.starts_with("Usage:"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Marks the process non-dumpable before anything is read: its memory holds External
/// IDs, token hashes and customers' credentials, so no core dump of it may be written
/// (whatever `ulimit -c` or `core_pattern` say), and other processes of the same user
/// cannot attach to it or read its `/proc/<pid>/mem` or `environ` (which the kernel
/// shows as owned by root from then on: `tests/cli.rs` checks it that way). The systemd
/// unit also sets `LimitCORE=0`.
fn forbid_core_dumps() {
    #[cfg(target_os = "linux")]
    if let Err(error) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("credvend: warning: cannot disable core dumps (PR_SET_DUMPABLE): {error}");
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve { config, log_format } => {
            let (sources, loaded) = Config::read(&config.config);
            let loaded = loaded.map_err(Failure::Config)?;
            let format = log_format.unwrap_or(loaded.log.format);
            // Held until `serve` returns: dropping it flushes the queued log lines.
            let _log_guard = credvend::telemetry::init(&loaded.log.level, format)
                .map_err(|e| Failure::Runtime(anyhow::anyhow!(e)))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")
                .map_err(Failure::Runtime)?;
            runtime
                .block_on(serve(config.config, loaded, sources))
                .map_err(Failure::Runtime)
        }
        Command::CheckConfig { config } => {
            let loaded = Config::load(&config.config).map_err(Failure::Config)?;
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            outln!("{}", loaded.summary())?;
            Ok(())
        }
        Command::Init { dir } => init(&dir),
        Command::Mapping {
            command:
                MappingCommand::New {
                    name,
                    role_arn,
                    config,
                    dir,
                    enforcement,
                },
        } => {
            let main = match (config, dir) {
                (Some(config), _) => config,
                (None, dir) => dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR))
                    .join(setup::MAIN_FILE),
            };
            mapping_new(&main, &name, &role_arn, enforcement)
        }
        Command::Exec {
            control,
            options,
            mapping,
            mut command,
        } => {
            let socket = control.socket()?;
            let program = command.remove(0);
            let job = Job {
                socket,
                request: options.request(mapping),
                program,
                args: command,
            };
            match block_on(exec::run(job))? {
                Ok(0) => Ok(()),
                Ok(code) => Err(Failure::Child(code)),
                Err(error) => Err(Failure::Control {
                    message: error.to_string(),
                    code: error.exit_code(),
                }),
            }
        }
        Command::Token {
            command:
                TokenCommand::Issue {
                    control,
                    options,
                    mapping,
                },
        } => {
            let socket = control.socket()?;
            let request = options.request(mapping);
            let minted = block_on(Connection::one_shot(&socket, async |c| {
                c.mint(&request).await
            }))??;
            outln!("{}", String::from_utf8_lossy(&minted.body))?;
            Ok(())
        }
        Command::Token {
            command: TokenCommand::List { control, json },
        } => {
            let socket = control.socket()?;
            let listing = block_on(Connection::one_shot(&socket, async |c| c.list().await))??;
            if json {
                outln!("{}", String::from_utf8_lossy(&listing.body))?;
            } else {
                out!("{}", control_client::render_table(&listing.tokens))?;
            }
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Revoke { control, id },
        } => {
            if !control_client::is_token_id(&id) {
                return Err(Failure::Usage(format!(
                    "{id:?} is not a job token id (jt_ and 16 hex digits; `credvend token list` shows them)"
                )));
            }
            let socket = control.socket()?;
            block_on(Connection::one_shot(&socket, async |c| c.revoke(&id).await))??;
            eprintln!("Revoked {id}.");
            Ok(())
        }
        Command::Token {
            command: TokenCommand::New,
        } => {
            let token = setup::new_token();
            outln!("{token}")?;
            outln!(
                "token_sha256 = [\"{}\"]",
                TokenHash::of_token(token.as_bytes()).to_hex()
            )?;
            eprintln!(
                "Give the first line to the worker (AWS_CONTAINER_AUTHORIZATION_TOKEN, or a token file without a trailing newline); put the second in its mapping."
            );
            Ok(())
        }
        Command::CredentialProcess {
            url,
            token_file,
            token_env,
        } => {
            let token = match (token_file, token_env) {
                (Some(path), _) => credential_process::read_token_file(&path),
                (None, Some(name)) => credential_process::read_token_env(&name),
                (None, None) => unreachable!("clap requires one of them"),
            };
            let outcome = token.and_then(|token| {
                block_on(credential_process::fetch(
                    &url,
                    &token,
                    credential_process::FETCH_TIMEOUT,
                ))
                .map_err(|_| credential_process::FetchError::Unreachable {
                    url: url.clone(),
                    what: "cannot start the async runtime".to_owned(),
                })?
            });
            match outcome {
                Ok(json) => {
                    use std::io::Write as _;
                    let mut stdout = std::io::stdout().lock();
                    stdout
                        .write_all(&json)
                        .and_then(|()| stdout.write_all(b"\n"))
                        .and_then(|()| stdout.flush())
                        .context("writing the credential to stdout")
                        .map_err(Failure::Runtime)
                }
                Err(error) => Err(Failure::Control {
                    message: error.to_string(),
                    code: 1,
                }),
            }
        }
        Command::ExternalId {
            command: ExternalIdCommand::New { count },
        } => {
            for _ in 0..count {
                outln!("{}", policy::new_external_id())?;
            }
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Permissions { bucket, prefix },
        } => {
            let text = policy::render_permissions_policy(&bucket, prefix.as_deref())
                .map_err(|e| Failure::Usage(e.to_string()))?;
            outln!("{text}")?;
            Ok(())
        }
        Command::Policy {
            command:
                PolicyCommand::Trust {
                    external_id,
                    principal,
                    service,
                    session_action,
                    config,
                },
        } => {
            policy::validate_external_id(&external_id)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            let principal = match principal {
                Some(p) => Principal::parse(&p).map_err(|e| Failure::Usage(e.to_string()))?,
                None => block_on(own_principal(config))??,
            };
            let text =
                policy::render_trust_policy(&principal, &external_id, &service, &session_action)
                    .map_err(|e| Failure::Usage(e.to_string()))?;
            outln!("{text}")?;
            Ok(())
        }
        Command::Onboard(args) => onboard(args),
        Command::Verify {
            mapping,
            config,
            bucket,
            prefix,
            s3_endpoint_url,
        } => verify(&config.config, &mapping, bucket, prefix, s3_endpoint_url),
    }
}

async fn serve(path: PathBuf, config: Config, sources: Sources) -> anyhow::Result<()> {
    // Signal handlers first, before any socket is bound: once a listener accepts,
    // a supervisor or test may send SIGTERM or SIGHUP, and a signal arriving before its
    // handler exists takes the default action (the process dies).
    let shutdown = shutdown_signal();
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    for warning in &config.warnings {
        warn!(warning = %warning, "Configuration warning");
    }
    let assumer = Arc::new(
        StsAssumer::from_env(StsSettings::from(&config.sts))
            .await
            .context("cannot set up the STS client")?,
    );
    let daemon = Arc::new(Daemon::new(&config, assumer.clone(), Arc::new(SystemClock)));
    let (server, control, mappings) = (
        config.server.clone(),
        config.control.clone(),
        config.mappings.len(),
    );
    // The reloader holds the digest of the bytes this configuration was parsed from: a
    // change made after they were read is always a change to reload.
    let reloader = Reloader::new(path.clone(), config, sources, daemon.clone());
    // The start-up load's transient heap and the config's mappings are freed by now.
    // Background purging only from here: during the load, jemalloc gives the freed
    // large buffers of growing tables back at once (its arena for huge allocations
    // purges immediately while there are no background threads), which kept the load's
    // peak ~100 MiB lower at 100,000 mappings than with them on from the start.
    if let Err(error) = credvend::memory::start_background_purge() {
        warn!(%error, "Cannot set up the allocator to give freed memory back; idle memory stays larger");
    }
    let released = credvend::memory::release_freed_heap();
    debug!(
        arenas = released.arenas,
        "Freed heap given back after the start-up load"
    );
    let listeners = Listeners::bind_all(&server, &control).await?;
    let limits = Limits::from_config(&server);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        mappings,
        "credvend started"
    );
    let reloader = tokio::spawn(reload::run(hup, reloader));
    // In the background, after binding: a missing identity is a warning (it may appear
    // later), and STS's answer must not hold up the listeners.
    let identity = tokio::spawn(daemon.clone().watch_base_identity(assumer));
    daemon.run(listeners, limits, shutdown).await;
    identity.abort();
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
