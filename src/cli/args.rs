//! The command line: every command, flag and value parser (clap), and the control
//! socket's lookup (`ControlArgs::socket`). The commands themselves are in `src/main.rs`
//! (dispatch, `serve`) and the other files of `src/cli/`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use credvend::aws_names::SessionName;
use credvend::config::{CONFIG_PATH_ENV, Config, DEFAULT_CONFIG_PATH, EnforcementMode, LogFormat};
use credvend::control_client::{self, MintRequest};
use credvend::policy::{SessionAction, TrustService};

use crate::Failure;

/// Where `init` writes and `mapping new` looks by default: the default config's directory.
pub(crate) const DEFAULT_CONFIG_DIR: &str = "/etc/credvend";

#[derive(Parser)]
#[command(
    name = "credvend",
    version,
    about = "Credential-vending sidecar: AWS container credentials for customer roles assumed with External IDs"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    Onboard(Onboard),
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

/// The arguments of `credvend onboard`.
#[derive(clap::Args)]
pub(crate) struct Onboard {
    /// Mapping name from the configuration.
    pub(crate) mapping: String,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// The customer's bucket (for the permissions policy; required by
    /// cloudformation and terraform).
    #[arg(long)]
    pub(crate) bucket: Option<String>,
    /// Key prefix the vendor writes under.
    #[arg(long, requires = "bucket")]
    pub(crate) prefix: Option<String>,
    /// Vendor account ID or role ARN to trust. Default: `sts.source_role_arn` when
    /// credvend chains through one, else the account of credvend's own identity.
    #[arg(long)]
    pub(crate) principal: Option<String>,
    /// Also let an AWS service assume the role (redshift).
    #[arg(long, value_enum)]
    pub(crate) service: Vec<TrustService>,
    /// json: the two policies (default); cloudformation: a YAML template (stdout,
    /// or --out FILE); terraform: a module (main.tf, variables.tf, outputs.tf)
    /// written to --out DIR.
    #[arg(long, value_enum, default_value_t = OnboardFormat::Json)]
    pub(crate) format: OnboardFormat,
    /// json: write `trust-policy.json` (and with --bucket `permissions-policy.json`)
    /// into this directory; cloudformation: write the template to this file;
    /// terraform: write the module into this directory. Directories are created if
    /// missing, files (mode 0600 when new) replaced.
    #[arg(long, visible_alias = "out-dir", value_name = "FILE|DIR")]
    pub(crate) out: Option<PathBuf>,
    /// cloudformation: where the vendor hosts the template (an https:// URL the
    /// customer's console can read, e.g. on S3); prints the console's quick-create
    /// link with every parameter filled in.
    #[arg(long, value_name = "URL")]
    pub(crate) template_url: Option<String>,
}

/// What `credvend onboard` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnboardFormat {
    /// The two policies as JSON.
    Json,
    /// A CloudFormation template (YAML) creating the role.
    Cloudformation,
    /// A Terraform module creating the role.
    Terraform,
}

#[derive(Subcommand)]
pub(crate) enum MappingCommand {
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

pub(crate) fn parse_enforcement(value: &str) -> Result<EnforcementMode, String> {
    EnforcementMode::try_from(value.to_owned())
}

#[derive(Subcommand)]
pub(crate) enum ExternalIdCommand {
    /// Print new random External IDs (40 characters of [A-Za-z0-9] from the OS
    /// CSPRNG), one per line.
    New {
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        count: u32,
    },
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
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
pub(crate) enum TokenCommand {
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
pub(crate) struct ControlArgs {
    /// The daemon's control socket. Default: the `[control] socket` of --config when
    /// given (or CREDVEND_CONFIG), else /run/credvend/control.sock.
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Configuration to read the `[control] socket` from (ignored with --socket). It
    /// must be readable by this user; an orchestrator that cannot read it passes
    /// --socket.
    #[arg(long, env = CONFIG_PATH_ENV, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
}

/// The options of a job token.
#[derive(clap::Args)]
pub(crate) struct MintOptions {
    /// Revoke the token after this long (90m, 2h, 3600s; at most the daemon's
    /// `max_ttl`).
    #[arg(long, value_name = "DURATION", value_parser = control_client::parse_ttl)]
    pub(crate) ttl: Option<u64>,
    /// Assume the role with this RoleSessionName for this token (one AssumeRole per
    /// job, shown in the customer's CloudTrail) instead of sharing the mapping's cached
    /// credentials.
    #[arg(long, value_name = "NAME", value_parser = parse_session_name)]
    pub(crate) session_name: Option<SessionName>,
}

impl MintOptions {
    pub(crate) fn request(self, mapping: String) -> MintRequest {
        MintRequest {
            mapping,
            ttl_seconds: self.ttl,
            session_name: self.session_name,
            lease: None,
        }
    }
}

pub(crate) fn parse_session_name(value: &str) -> Result<SessionName, String> {
    SessionName::try_from(value.to_owned())
}

#[derive(clap::Args)]
pub(crate) struct ConfigArg {
    /// Configuration file.
    #[arg(long, env = CONFIG_PATH_ENV, default_value = DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
}

impl ControlArgs {
    /// The control socket: `--socket`, else the `[control] socket` of `--config`, else
    /// [`control_client::DEFAULT_SOCKET`].
    pub(crate) fn socket(&self) -> Result<PathBuf, Failure> {
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
