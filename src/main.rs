//! The `credvend` command: parse, load, init, run, map the outcome to an exit code
//! (64 for bad configuration or usage, 1 for runtime failure; the control-socket
//! commands and `exec` have their own: docs/jobs.md, "Exit status").

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::{debug, error, info, warn};

use credvend::aws_names::SessionName;
use credvend::clock::SystemClock;
use credvend::config::{
    CONFIG_PATH_ENV, Config, ConfigError, DEFAULT_CONFIG_PATH, EnforcementMode, LogFormat, Mapping,
    Sources,
};
use credvend::control_client::{self, ClientError, Connection, MintRequest};
use credvend::credential_process;
use credvend::creds::sts::{StsAssumer, StsSettings};
use credvend::daemon::{Daemon, Listeners};
use credvend::exec::{self, Job};
use credvend::policy::{self, Principal, SessionAction, TrustService};
use credvend::reload::{self, Reloader};
use credvend::secret::TokenHash;
use credvend::server::Limits;
use credvend::setup::{self, MappingRequest, SetupError};
use credvend::verify::{self, s3::S3Target};

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

/// Where `init` writes and `mapping new` looks by default: the default config's directory.
const DEFAULT_CONFIG_DIR: &str = "/etc/credvend";

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
        log_format: Option<LogFormat>,
    },
    /// Validate the configuration and print a summary of the mappings.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write a new configuration directory: DIR/credvend.toml (loopback listeners, mode
    /// 0600, never overwritten) and DIR/mappings.d/ for one file per customer.
    Init {
        /// Directory to write into (created when missing).
        #[arg(long, default_value = DEFAULT_CONFIG_DIR)]
        dir: PathBuf,
    },
    /// Customer mappings.
    Mapping {
        #[command(subcommand)]
        command: MappingCommand,
    },
    /// Worker authorization tokens: config tokens (`new`) and job tokens on the control
    /// socket (`issue`, `list`, `revoke`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run CMD with a job token of MAPPING that lives exactly as long as CMD: minted on
    /// the control socket with a connection lease (revoked when exec ends, even by
    /// SIGKILL), no expiry unless --ttl. CMD gets AWS_CONTAINER_CREDENTIALS_FULL_URI and
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN, and not the AWS_* variables the SDKs would
    /// prefer; SIGINT, SIGTERM and SIGHUP are passed on to it. Exits with CMD's status
    /// (128+n when signal n killed it).
    Exec {
        #[command(flatten)]
        control: ControlArgs,
        #[command(flatten)]
        options: MintOptions,
        /// Mapping name from the daemon's configuration.
        mapping: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// The AWS `credential_process` helper: fetch the credential at URL from credvend's
    /// credential endpoint (GET with the token as Authorization, plain HTTP to a
    /// loopback address only) and print it as `credential_process` JSON. On any error:
    /// one line on stderr, exit status 1 (docs/compatibility.md, "credential_process").
    CredentialProcess {
        /// The credential URL, e.g. http://127.0.0.1:8080/v1/credentials/acme.
        #[arg(long)]
        url: String,
        /// File holding the worker's token; one trailing newline is trimmed.
        #[arg(
            long,
            value_name = "PATH",
            required_unless_present = "token_env",
            conflicts_with = "token_env"
        )]
        token_file: Option<PathBuf>,
        /// Environment variable holding the worker's token.
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
    },
    /// External IDs for customers' trust policies.
    ExternalId {
        #[command(subcommand)]
        command: ExternalIdCommand,
    },
    /// Print the IAM policies a customer installs on their role.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print what a mapping's customer must install: the trust policy (with the
    /// mapping's External ID and the vendor principal) and the permissions policy for
    /// the bucket, as one JSON document on stdout (`trust_policy`,
    /// `permissions_policy`) or as files with --out; or, with --format, as a
    /// CloudFormation template or a Terraform module that creates the role with both.
    /// The steps and the `credvend verify` command to run afterwards go to stderr.
    Onboard {
        /// Mapping name from the configuration.
        mapping: String,
        #[command(flatten)]
        config: ConfigArg,
        /// The customer's bucket (for the permissions policy; required by
        /// cloudformation and terraform).
        #[arg(long)]
        bucket: Option<String>,
        /// Key prefix the vendor writes under.
        #[arg(long, requires = "bucket")]
        prefix: Option<String>,
        /// Vendor account ID or role ARN to trust. Default: `sts.source_role_arn` when
        /// credvend chains through one, else the account of credvend's own identity.
        #[arg(long)]
        principal: Option<String>,
        /// Also let an AWS service assume the role (redshift).
        #[arg(long, value_enum)]
        service: Vec<TrustService>,
        /// json: the two policies (default); cloudformation: a YAML template (stdout,
        /// or --out FILE); terraform: a module (main.tf, variables.tf, outputs.tf)
        /// written to --out DIR.
        #[arg(long, value_enum, default_value_t = OnboardFormat::Json)]
        format: OnboardFormat,
        /// json: write `trust-policy.json` (and with --bucket `permissions-policy.json`)
        /// into this directory; cloudformation: write the template to this file;
        /// terraform: write the module into this directory. Directories are created if
        /// missing, files (mode 0600 when new) replaced.
        #[arg(long, visible_alias = "out-dir", value_name = "FILE|DIR")]
        out: Option<PathBuf>,
        /// cloudformation: where the vendor hosts the template (an https:// URL the
        /// customer's console can read, e.g. on S3); prints the console's quick-create
        /// link with every parameter filled in.
        #[arg(long, value_name = "URL")]
        template_url: Option<String>,
    },
    /// Check a mapping's role: External ID enforcement, the assumption itself, and with
    /// --bucket the five S3 permissions. Exit status 1 when anything fails.
    Verify {
        /// Mapping name from the configuration.
        mapping: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Bucket to exercise GetBucketLocation, ListBucket, PutObject, GetObject and
        /// DeleteObject on (a probe object is written and deleted).
        #[arg(long)]
        bucket: Option<String>,
        /// Key prefix the vendor writes under; the probe object goes there.
        #[arg(long, requires = "bucket")]
        prefix: Option<String>,
        /// S3-compatible endpoint (VPC endpoint, test emulator).
        #[arg(long, requires = "bucket")]
        s3_endpoint_url: Option<String>,
    },
}

/// What `credvend onboard` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnboardFormat {
    /// The two policies as JSON.
    Json,
    /// A CloudFormation template (YAML) creating the role.
    Cloudformation,
    /// A Terraform module creating the role.
    Terraform,
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Write DIR/mappings.d/NAME.toml (mode 0600, never overwritten) with a fresh
    /// External ID and token. Prints the token once, alone on stdout (so
    /// `TOKEN=$(credvend mapping new …)` keeps it), and the next steps on stderr.
    New {
        /// Mapping name: A-Z a-z 0-9 _ . - (it appears in the credential URL).
        name: String,
        /// The customer's role, e.g. arn:aws:iam::111122223333:role/vendor-sync.
        #[arg(long)]
        role_arn: String,
        /// The main configuration file; the mapping goes into mappings.d/ beside it.
        #[arg(long, conflicts_with = "dir")]
        config: Option<PathBuf>,
        /// The configuration directory `credvend init` wrote. Default /etc/credvend.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Set external_id_enforcement for this mapping (default: the global setting).
        /// `warn` for an STS that cannot enforce External IDs, such as moto.
        #[arg(long, value_parser = parse_enforcement)]
        enforcement: Option<EnforcementMode>,
    },
}

fn parse_enforcement(value: &str) -> Result<EnforcementMode, String> {
    EnforcementMode::try_from(value.to_owned())
}

#[derive(Subcommand)]
enum ExternalIdCommand {
    /// Print new random External IDs (40 characters of [A-Za-z0-9] from the OS
    /// CSPRNG), one per line.
    New {
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        count: u32,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// The permissions policy: the five S3 actions on the bucket and its objects.
    Permissions {
        #[arg(long)]
        bucket: String,
        /// Limit object access to this key prefix.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// The trust policy: sts:AssumeRole for the vendor principal, only with the
    /// External ID.
    Trust {
        #[arg(long)]
        external_id: String,
        /// Vendor account ID or role ARN to trust. Default: the account of credvend's
        /// own AWS identity (sts:GetCallerIdentity, using [sts] from the config).
        #[arg(long)]
        principal: Option<String>,
        /// Also let an AWS service assume the role (redshift: Redshift Serverless
        /// UNLOAD/COPY).
        #[arg(long, value_enum)]
        service: Vec<TrustService>,
        /// Also let the principal tag the session (tag-session: a mapping with `tags`)
        /// or set a source identity (set-source-identity: a mapping with
        /// `source_identity`). `credvend onboard` takes these from the mapping.
        #[arg(long, value_enum)]
        session_action: Vec<SessionAction>,
        /// Configuration whose [sts] section is used to find the default principal.
        #[arg(long, env = CONFIG_PATH_ENV)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random token (256 bits) and the `token_sha256` line for the config.
    New,
    /// Mint a job token on the control socket; prints the daemon's JSON answer (`id`,
    /// `token`, `expires_at`, `credentials_uri`, …) on stdout. Expires after --ttl
    /// (default: 1 hour, at most the daemon's `max_ttl`) or at `token revoke`.
    Issue {
        #[command(flatten)]
        control: ControlArgs,
        #[command(flatten)]
        options: MintOptions,
        /// Mapping name from the daemon's configuration.
        mapping: String,
    },
    /// List the live job tokens (never their values): a table, or the JSON with --json.
    List {
        #[command(flatten)]
        control: ControlArgs,
        /// Print the daemon's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a job token by its id (`jt_…`, from `token issue` or `token list`).
    Revoke {
        #[command(flatten)]
        control: ControlArgs,
        id: String,
    },
}

/// Where the control socket is.
#[derive(clap::Args)]
struct ControlArgs {
    /// The daemon's control socket. Default: the `[control] socket` of --config when
    /// given (or CREDVEND_CONFIG), else /run/credvend/control.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Configuration to read the `[control] socket` from (ignored with --socket). It
    /// must be readable by this user; an orchestrator that cannot read it passes
    /// --socket.
    #[arg(long, env = CONFIG_PATH_ENV, value_name = "PATH")]
    config: Option<PathBuf>,
}

/// The options of a job token.
#[derive(clap::Args)]
struct MintOptions {
    /// Revoke the token after this long (90m, 2h, 3600s; at most the daemon's
    /// `max_ttl`).
    #[arg(long, value_name = "DURATION", value_parser = control_client::parse_ttl)]
    ttl: Option<u64>,
    /// Assume the role with this RoleSessionName for this token (one AssumeRole per
    /// job, shown in the customer's CloudTrail) instead of sharing the mapping's cached
    /// credentials.
    #[arg(long, value_name = "NAME", value_parser = parse_session_name)]
    session_name: Option<SessionName>,
}

impl MintOptions {
    fn request(self, mapping: String) -> MintRequest {
        MintRequest {
            mapping,
            ttl_seconds: self.ttl,
            session_name: self.session_name,
            lease: None,
        }
    }
}

fn parse_session_name(value: &str) -> Result<SessionName, String> {
    SessionName::try_from(value.to_owned())
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = CONFIG_PATH_ENV, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

/// How a command failed.
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
        Command::Onboard {
            mapping,
            config,
            bucket,
            prefix,
            principal,
            service,
            format,
            out,
            template_url,
        } => onboard(Onboard {
            mapping,
            path: config.config,
            bucket,
            prefix,
            principal,
            service,
            format,
            out,
            template_url,
        }),
        Command::Verify {
            mapping,
            config,
            bucket,
            prefix,
            s3_endpoint_url,
        } => {
            let (loaded, mapping_config) = load_mapping(&config.config, &mapping)?;
            if let Some(bucket) = &bucket {
                policy::validate_bucket_name(bucket).map_err(|e| Failure::Usage(e.to_string()))?;
            }
            // The same rules and normal form as `policy permissions --prefix`, so the
            // probe object goes exactly where that policy grants access.
            let prefix = prefix
                .map(|p| policy::validate_prefix(&p))
                .transpose()
                .map_err(|e| Failure::Usage(e.to_string()))?;
            let target = bucket.map(|bucket| S3Target {
                bucket,
                prefix,
                region: mapping_config.region.to_string(),
                endpoint_url: s3_endpoint_url,
            });
            let lines = block_on(async {
                let assumer = StsAssumer::from_env(StsSettings::from(&loaded.sts))
                    .await
                    .context("cannot set up the STS client")?;
                anyhow::Ok(verify::verify_mapping(&assumer, &mapping_config, target).await)
            })?
            .map_err(Failure::Runtime)?;
            for line in &lines {
                outln!("{line}")?;
            }
            if lines.iter().all(|l| l.passed) {
                // This is another process than the daemon: a daemon that refused the
                // mapping keeps refusing it until its backoff ends, unless told to retry.
                eprintln!("{VERIFY_PASSED_HINT}");
                Ok(())
            } else {
                Err(Failure::ChecksFailed)
            }
        }
    }
}

/// Printed (to stderr) when every `verify` check passed. The check runs in its own
/// process; a running daemon that refused the mapping (TrustPolicyUnsafe, AccessDenied)
/// retries it only after its negative cache's backoff (up to 10 minutes), or at the next
/// request after a SIGHUP (docs/design.md, Reload).
const VERIFY_PASSED_HINT: &str = "All checks passed. If a running credvend refused this mapping, \
`systemctl reload credvend` (SIGHUP) makes it retry at the next request instead of after its backoff.";

/// The arguments of `credvend onboard`.
struct Onboard {
    mapping: String,
    path: PathBuf,
    bucket: Option<String>,
    prefix: Option<String>,
    principal: Option<String>,
    service: Vec<TrustService>,
    format: OnboardFormat,
    out: Option<PathBuf>,
    template_url: Option<String>,
}

/// `credvend onboard`: the documents one mapping's customer installs, and the check.
///
/// The documents are data: one JSON object on stdout (`trust_policy`, and with
/// `--bucket` `permissions_policy`), or one file each with `--out`, so they can be
/// handed over or piped (`| jq .trust_policy`) as they are; with `--format
/// cloudformation|terraform` a template or module that creates the role with both
/// (`policy::RoleTemplate`). The steps are guidance for the operator and go to stderr.
fn onboard(args: Onboard) -> Result<(), Failure> {
    let Onboard {
        mapping,
        path,
        bucket,
        prefix,
        principal,
        service,
        format,
        out,
        template_url,
    } = args;
    // The command line first, before the configuration or STS is read.
    let format_name = match format {
        OnboardFormat::Json => "json",
        OnboardFormat::Cloudformation => "cloudformation",
        OnboardFormat::Terraform => "terraform",
    };
    if format != OnboardFormat::Json && bucket.is_none() {
        return Err(Failure::Usage(format!(
            "--format {format_name} needs --bucket: the {} creates the role with both policies",
            if format == OnboardFormat::Terraform {
                "module"
            } else {
                "template"
            }
        )));
    }
    if format == OnboardFormat::Terraform && out.is_none() {
        return Err(Failure::Usage(
            "--format terraform writes a module of three files (main.tf, variables.tf, \
             outputs.tf): pass --out DIR"
                .to_owned(),
        ));
    }
    if let Some(url) = &template_url {
        if format != OnboardFormat::Cloudformation {
            return Err(Failure::Usage(format!(
                "--template-url is for --format cloudformation (the quick-create link), not --format {format_name}"
            )));
        }
        if !url.starts_with("https://")
            || url.len() == "https://".len()
            || url.contains(char::is_whitespace)
        {
            return Err(Failure::Usage(format!(
                "--template-url {url:?}: expected the https:// URL the template is hosted at (e.g. on S3)"
            )));
        }
    }
    match (&out, format) {
        (Some(out), OnboardFormat::Cloudformation) if out.is_dir() => {
            return Err(Failure::Usage(format!(
                "--out {}: is a directory; --format cloudformation writes one file",
                out.display()
            )));
        }
        (Some(out), OnboardFormat::Json | OnboardFormat::Terraform)
            if out.exists() && !out.is_dir() =>
        {
            return Err(Failure::Usage(format!(
                "--out {}: is not a directory; --format {format_name} writes files into one",
                out.display()
            )));
        }
        _ => {}
    }

    let (loaded, m) = load_mapping(&path, &mapping)?;
    let Some(external_id) = m.external_id.as_ref() else {
        return Err(Failure::Usage(format!(
            "mapping '{mapping}' has no External ID; generate one with `credvend external-id new` and set external_id"
        )));
    };
    let usage = |e: policy::PolicyError| Failure::Usage(e.to_string());
    // Inputs AWS would refuse are refused before STS is asked for the principal.
    if let Some(bucket) = &bucket {
        policy::validate_bucket_name(bucket).map_err(usage)?;
    }
    if let Some(prefix) = &prefix {
        policy::validate_prefix(prefix).map_err(usage)?;
    }
    let principal = match (principal, &loaded.sts.source_role_arn) {
        (Some(p), _) => Principal::parse(&p).map_err(usage)?,
        // Chaining: customer roles are assumed by the vendor service role.
        (None, Some(source)) => Principal::role(source).map_err(usage)?,
        (None, None) => block_on(own_principal(Some(path.clone())))??,
    };
    // What the daemon's AssumeRole for this mapping needs of the role beyond the
    // External ID: the session actions in the trust policy and, for sessions longer
    // than IAM's default hour, the role's MaxSessionDuration.
    let session = SessionAction::needed(!m.tags.is_empty(), m.source_identity.is_some());
    let max_session_seconds = Some(m.session_duration.as_secs()).filter(|&seconds| seconds > 3600);
    let mut verify_cmd = format!("credvend verify {mapping} --config {}", path.display());
    if let Some(bucket) = &bucket {
        verify_cmd.push_str(&format!(" --bucket {bucket}"));
    }
    if let Some(prefix) = &prefix {
        verify_cmd.push_str(&format!(" --prefix {prefix}"));
    }
    if let Some(bucket) = &bucket
        && format != OnboardFormat::Json
    {
        let template = policy::RoleTemplate {
            mapping: &mapping,
            role: &m.role_arn,
            principal: &principal,
            external_id: external_id.expose(),
            services: &service,
            session: &session,
            max_session_seconds,
            bucket,
            prefix: prefix.as_deref(),
        };
        return if format == OnboardFormat::Cloudformation {
            onboard_cloudformation(
                &template,
                &m,
                out.as_deref(),
                template_url.as_deref(),
                &verify_cmd,
            )
        } else {
            let dir = out.as_deref().expect("checked above");
            onboard_terraform(&template, &m, dir, &verify_cmd)
        };
    }

    let trust = policy::render_trust_policy(&principal, external_id.expose(), &service, &session)
        .map_err(usage)?;
    let permissions = bucket
        .as_deref()
        .map(|bucket| policy::render_permissions_policy(bucket, prefix.as_deref()))
        .transpose()
        .map_err(usage)?;

    // Where each document went, for the steps.
    let (trust_at, permissions_at) = match &out {
        Some(dir) => {
            create_out_dir(dir)?;
            let write = |name: &str, text: &str| -> Result<String, Failure> {
                let file = dir.join(name);
                write_out_file(&file, &format!("{text}\n"))?;
                Ok(file.display().to_string())
            };
            let trust_at = write("trust-policy.json", &trust)?;
            let permissions_at = permissions
                .as_deref()
                .map(|text| write("permissions-policy.json", text))
                .transpose()?;
            (trust_at, permissions_at)
        }
        None => {
            let parse = |text: &str| {
                serde_json::from_str::<serde_json::Value>(text)
                    .context("a rendered policy is not JSON")
                    .map_err(Failure::Runtime)
            };
            let mut documents = serde_json::Map::new();
            documents.insert("trust_policy".into(), parse(&trust)?);
            if let Some(text) = &permissions {
                documents.insert("permissions_policy".into(), parse(text)?);
            }
            let text = serde_json::to_string_pretty(&documents)
                .context("cannot encode the documents")
                .map_err(Failure::Runtime)?;
            outln!("{text}")?;
            (
                "`trust_policy` in the JSON on stdout".to_owned(),
                permissions
                    .as_ref()
                    .map(|_| "`permissions_policy` in the JSON on stdout".to_owned()),
            )
        }
    };
    eprintln!("Onboarding mapping '{mapping}': role {}", m.role_arn);
    eprintln!(
        "1. The customer sets the trust policy on the role (it trusts {} only with the External ID): {trust_at}",
        principal.arn()
    );
    match (&bucket, permissions_at) {
        (Some(bucket), Some(at)) => {
            eprintln!("2. ... and attaches the permissions policy (bucket {bucket}): {at}")
        }
        _ => eprintln!(
            "2. ... and attaches the permissions policy: rerun with --bucket NAME to produce it."
        ),
    }
    eprintln!("3. Then check it: {verify_cmd}");
    eprintln!(
        "(Or hand over a template that creates the role with both: --format cloudformation or --format terraform.)"
    );
    Ok(())
}

/// `onboard --format cloudformation`: the template on stdout or in `out`, the
/// quick-create link and the steps on stderr.
fn onboard_cloudformation(
    template: &policy::RoleTemplate<'_>,
    m: &Mapping,
    out: Option<&Path>,
    template_url: Option<&str>,
    verify_cmd: &str,
) -> Result<(), Failure> {
    let usage = |e: policy::PolicyError| Failure::Usage(e.to_string());
    let yaml = template.cloudformation().map_err(usage)?;
    let link = template_url
        .map(|url| template.quick_create_url(url, m.region.as_ref()))
        .transpose()
        .map_err(usage)?;
    let at = match out {
        Some(file) => {
            if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_out_dir(parent)?;
            }
            write_out_file(file, &yaml)?;
            file.display().to_string()
        }
        None => {
            out!("{yaml}")?;
            "stdout".to_owned()
        }
    };
    let stack = template.stack_name();
    eprintln!(
        "Onboarding mapping '{}': role {} (CloudFormation template: {at})",
        template.mapping, m.role_arn
    );
    match link {
        Some(link) => {
            eprintln!(
                "1. The customer opens this link signed in to account {} (region {}), \
                 acknowledges that it creates a named IAM role, and creates the stack:",
                m.role_arn.account(),
                m.region
            );
            eprintln!("   {link}");
        }
        None => {
            eprintln!(
                "1. The customer creates the stack in account {} from the template, e.g. \
                 `aws cloudformation deploy --template-file role.yaml --stack-name {stack} \
                 --capabilities CAPABILITY_NAMED_IAM`.",
                m.role_arn.account()
            );
            eprintln!(
                "   For a console quick-create link, host the template (e.g. on S3) and rerun \
                 with --template-url URL."
            );
        }
    }
    eprintln!(
        "2. The stack's output RoleArn is the role credvend assumes: {} unless the customer \
         changed RoleName.",
        m.role_arn
    );
    eprintln!("3. Then check it: {verify_cmd}");
    Ok(())
}

/// `onboard --format terraform`: the module's files into `dir`, the steps on stderr.
fn onboard_terraform(
    template: &policy::RoleTemplate<'_>,
    m: &Mapping,
    dir: &Path,
    verify_cmd: &str,
) -> Result<(), Failure> {
    let module = template
        .terraform()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    create_out_dir(dir)?;
    let mut written = Vec::new();
    for (name, text) in module.files() {
        let file = dir.join(name);
        write_out_file(&file, text)?;
        written.push(file.display().to_string());
    }
    eprintln!(
        "Onboarding mapping '{}': role {} (Terraform module: {})",
        template.mapping,
        m.role_arn,
        written.join(", ")
    );
    eprintln!(
        "1. The customer applies the module in account {} (`terraform init && terraform apply` \
         in {}, or as a module block with source = that directory).",
        m.role_arn.account(),
        dir.display()
    );
    eprintln!(
        "2. Its output role_arn is the role credvend assumes: {} unless the customer changed \
         role_name.",
        m.role_arn
    );
    eprintln!("3. Then check it: {verify_cmd}");
    Ok(())
}

/// Creates `--out`'s directory (and its parents) if missing.
fn create_out_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
        .map_err(Failure::Runtime)
}

/// Writes one onboarding file, replacing it; a new file is created owner-only (it
/// holds the mapping's External ID).
fn write_out_file(file: &Path, text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", file.display()))
        .map_err(Failure::Runtime)
}

/// A setup command's failure: bad input or a file in the way is a usage problem (64),
/// a rejected configuration a configuration problem (64), I/O a runtime failure (1).
fn setup_failure(error: SetupError) -> Failure {
    match error {
        SetupError::Usage(_) | SetupError::Exists { .. } | SetupError::Rejected { .. } => {
            Failure::Usage(error.to_string())
        }
        SetupError::Io { .. } => Failure::Runtime(error.into()),
    }
}

/// `credvend init`: the files, then what to do next (stderr).
fn init(dir: &Path) -> Result<(), Failure> {
    let made = setup::init(dir).map_err(setup_failure)?;
    let (dir, main) = (dir.display(), made.main.display());
    eprintln!(
        "Wrote {main} (mode 0600) and created {}/.",
        made.mappings_dir.display()
    );
    eprintln!("Next:");
    eprintln!("  1. For each customer: credvend mapping new NAME --role-arn ARN --dir {dir}");
    eprintln!("     (writes the mapping with a fresh External ID; prints the worker's token once)");
    eprintln!("  2. credvend check-config --config {main}");
    eprintln!("  3. credvend serve --config {main}   (or the systemd unit)");
    eprintln!(
        "The files must be readable by the user credvend runs as and writable by no other: \
         run this as that user, or chown them to it."
    );
    Ok(())
}

/// `credvend mapping new`: the token alone on stdout, everything else on stderr.
fn mapping_new(
    main: &Path,
    name: &str,
    role_arn: &str,
    enforcement: Option<EnforcementMode>,
) -> Result<(), Failure> {
    let request = MappingRequest::new(name, role_arn, enforcement).map_err(setup_failure)?;
    let dir = main.parent().unwrap_or(Path::new(""));
    let made = setup::new_mapping(main, &dir.join(setup::MAPPINGS_DIR), &request)
        .map_err(setup_failure)?;
    outln!("{}", made.token)?;
    let listen = made
        .config
        .as_ref()
        .and_then(|c| c.server.listen.first().copied())
        .map_or_else(|| "127.0.0.1:8901".to_owned(), |a| a.to_string());
    let main = main.display();
    eprintln!(
        "Wrote {} (mode 0600): mapping `{name}` for {}.",
        made.path.display(),
        request.role_arn
    );
    eprintln!(
        "The worker's token is on stdout, shown this once (only its SHA-256 is kept). \
         A worker uses:"
    );
    eprintln!("  AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{listen}/v1/credentials/{name}");
    eprintln!("  AWS_CONTAINER_AUTHORIZATION_TOKEN=<the token>");
    eprintln!("Next:");
    eprintln!(
        "  1. The customer's trust policy requires External ID {} (not secret from this \
         customer; never give it to another). Print it for them:",
        made.external_id
    );
    eprintln!("     credvend onboard {name} --config {main} --bucket BUCKET");
    eprintln!("  2. credvend check-config --config {main}");
    eprintln!(
        "  3. A running credvend picks the new file up by itself (it watches the directory), \
         or at `systemctl reload credvend`."
    );
    eprintln!("  4. Once the customer is done: credvend verify {name} --config {main}");
    if let Some(mode) = enforcement.filter(|m| *m != EnforcementMode::Require) {
        eprintln!(
            "Note: external_id_enforcement = \"{}\" for this mapping: its role is served even \
             if it does not require the External ID. Meant for an STS that cannot enforce one \
             (moto); never against real AWS.",
            mode.as_str()
        );
    }
    if let Some(why) = &made.not_included {
        eprintln!("warning: the mapping is not in use yet: {why}");
    }
    Ok(())
}

impl ControlArgs {
    /// The control socket: `--socket`, else the `[control] socket` of `--config`, else
    /// [`control_client::DEFAULT_SOCKET`].
    fn socket(&self) -> Result<PathBuf, Failure> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        let Some(path) = &self.config else {
            return Ok(PathBuf::from(control_client::DEFAULT_SOCKET));
        };
        let loaded = Config::load(path).map_err(Failure::Config)?;
        loaded.control.socket.ok_or_else(|| {
            Failure::Usage(format!(
                "{} has no [control] socket (the systemd unit and the image set it through \
                 CREDVEND_CONTROL__SOCKET, not the file): pass --socket, or leave out \
                 --config for {}",
                path.display(),
                control_client::DEFAULT_SOCKET
            ))
        })
    }
}

/// Loads the configuration at `path` and finds the mapping named `name` in it (for the
/// commands that take a mapping name).
fn load_mapping(path: &Path, name: &str) -> Result<(Config, Mapping), Failure> {
    let loaded = Config::load(path).map_err(Failure::Config)?;
    let Some(mapping) = loaded.mappings.get(name).cloned() else {
        return Err(Failure::Usage(format!(
            "no mapping '{name}' in {}",
            path.display()
        )));
    };
    Ok((loaded, mapping))
}

/// Runs `future` on a fresh runtime (for one-shot commands).
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::Runtime)?;
    Ok(runtime.block_on(future))
}

/// The account root of credvend's own identity: the documented default principal of
/// the trust policy. Uses `[sts]` from the config when there is one.
async fn own_principal(config: Option<PathBuf>) -> Result<Principal, Failure> {
    let default = PathBuf::from(DEFAULT_CONFIG_PATH);
    let path = config.or_else(|| default.exists().then_some(default));
    let settings = match path {
        Some(path) => StsSettings::from(&Config::load(&path).map_err(Failure::Config)?.sts),
        None => StsSettings {
            default_region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            endpoint_url: None,
            fallback_regions: Vec::new(),
            endpoint_urls: Default::default(),
            source_role_arn: None,
            call_timeout: std::time::Duration::from_secs(10),
        },
    };
    let assumer = StsAssumer::from_env(settings)
        .await
        .context("cannot set up the STS client")
        .map_err(Failure::Runtime)?;
    let identity = assumer.get_caller_identity().await.map_err(|e| {
        // The same words as the daemon's log, `/status` and a worker's 503.
        let problem = e
            .reason
            .base_identity_problem()
            .unwrap_or("STS did not answer");
        Failure::Runtime(anyhow::anyhow!(
            "cannot find credvend's own AWS identity (pass --principal): {problem} ({e})"
        ))
    })?;
    Principal::from_caller_arn(&identity.arn).map_err(|e| Failure::Runtime(e.into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("credvend").chain(args.iter().copied()))
    }

    #[test]
    fn exec_takes_the_command_after_the_separator_with_its_own_flags() {
        let cli = parse(&[
            "exec",
            "--socket",
            "/tmp/c.sock",
            "--ttl",
            "2h",
            "--session-name",
            "sync-job-8812",
            "acme-s3",
            "--",
            "python",
            "-m",
            "sync",
            "--ttl",
            "x",
        ])
        .expect("parses");
        let Command::Exec {
            control,
            options,
            mapping,
            command,
        } = cli.command
        else {
            panic!("not exec");
        };
        assert_eq!(control.socket, Some(PathBuf::from("/tmp/c.sock")));
        assert_eq!(mapping, "acme-s3");
        assert_eq!(command, ["python", "-m", "sync", "--ttl", "x"]);
        let request = options.request(mapping);
        assert_eq!(request.ttl_seconds, Some(7200));
        assert_eq!(request.session_name.as_deref(), Some("sync-job-8812"));
        assert_eq!(request.lease, None, "exec::run sets the lease itself");
    }

    #[test]
    fn exec_needs_a_command_after_the_separator() {
        for args in [
            &["exec", "acme-s3"][..],
            &["exec", "acme-s3", "--"],
            &["exec", "acme-s3", "python"],
        ] {
            let error = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert!(error.use_stderr(), "{args:?}: {error}");
        }
    }

    #[test]
    fn a_bad_ttl_or_session_name_is_a_usage_error() {
        for args in [
            &["exec", "--ttl", "0s", "acme-s3", "--", "true"][..],
            &["exec", "--ttl", "soon", "acme-s3", "--", "true"],
            &[
                "exec",
                "--session-name",
                "has space",
                "acme-s3",
                "--",
                "true",
            ],
            &["token", "issue", "--session-name", "a", "acme-s3"],
        ] {
            let error = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
        }
    }

    #[test]
    fn the_socket_is_the_flag_else_the_default() {
        let flag = ControlArgs {
            socket: Some("/srv/c.sock".into()),
            config: Some("/nonexistent/credvend.toml".into()),
        };
        assert_eq!(
            flag.socket().ok(),
            Some(PathBuf::from("/srv/c.sock")),
            "--socket wins over --config (which is not even read)"
        );
        let neither = ControlArgs {
            socket: None,
            config: None,
        };
        assert_eq!(
            neither.socket().ok(),
            Some(PathBuf::from("/run/credvend/control.sock"))
        );
        let unreadable = ControlArgs {
            socket: None,
            config: Some("/nonexistent/credvend.toml".into()),
        };
        assert!(matches!(unreadable.socket(), Err(Failure::Config(_))));
    }

    #[test]
    fn token_commands_parse() {
        let cli = parse(&["token", "revoke", "--socket", "/s", "jt_0123456789abcdef"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Token {
                command: TokenCommand::Revoke { ref id, .. }
            } if id == "jt_0123456789abcdef"
        ));
        let cli = parse(&["token", "list", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Token {
                command: TokenCommand::List { json: true, .. }
            }
        ));
        assert!(parse(&["token", "new"]).is_ok(), "token new stays");
    }
}
