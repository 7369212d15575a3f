//! `credvend exec`: runs one job with a token that lives exactly as long as the job
//! (docs/jobs.md).
//!
//! The order, each step on the one control connection ([`control_client`]):
//! 1. handlers for SIGINT, SIGTERM and SIGHUP, before anything else (a signal that
//!    arrives while the token is minted ends `exec` before the command starts);
//! 2. `POST /v1/tokens` with `"lease": "connection"` (no TTL unless `--ttl`): the daemon
//!    revokes the token when this connection closes, so it dies with `exec` even by
//!    SIGKILL (the socket is close-on-exec: the child does not hold it open);
//! 3. the command, with the answer's `credentials_uri` and token in its environment and
//!    the variables the SDKs would prefer to them removed ([`child_env`]);
//! 4. while it runs: the three signals are passed on to it;
//! 5. when it exits: `DELETE` of the token, the connection closed, and its status is
//!    `exec`'s ([`exit_code`]: 128+n when a signal killed it).
//!
//! [`control_client`]: crate::control_client

use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::control_client::{ClientError, Connection, Lease, MintRequest};

/// Where the worker's SDK fetches credentials: the 201 answer's `credentials_uri`.
pub const URI_VAR: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
/// The job token, sent by the SDK as the `Authorization` header.
pub const TOKEN_VAR: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";

/// Removed from the command's environment: each would win over the container
/// credentials in the SDKs' provider chains (static keys, a profile, a relative ECS
/// URI, a token file the SDKs read instead of [`TOKEN_VAR`]), or, for the web-identity
/// pair, hand the job another role (an EKS pod's IRSA identity).
pub const REMOVED_VARS: [&str; 8] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
];

/// Exit status when exec itself cannot go on (signal handlers, waiting for the child):
/// EX_OSERR.
pub const EXIT_OSERR: u8 = 71;
/// Exit status when the command exists but cannot be run (as env(1) and the shells).
pub const EXIT_CANNOT_RUN: u8 = 126;
/// Exit status when the command is not found (as env(1) and the shells).
pub const EXIT_NOT_FOUND: u8 = 127;

/// The signals passed on to the command.
pub const FORWARDED: [SignalKind; 3] = [
    SignalKind::interrupt(),
    SignalKind::terminate(),
    SignalKind::hangup(),
];

/// What to run, and with which token.
#[derive(Debug, Clone)]
pub struct Job {
    /// The control socket.
    pub socket: PathBuf,
    /// The mint request (the lease is set by [`run`]).
    pub request: MintRequest,
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// Why exec ended without the command's status.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Control(#[from] ClientError),
    #[error("cannot run {}: {source}", program.to_string_lossy())]
    Spawn {
        program: OsString,
        source: std::io::Error,
    },
    #[error("cannot {what}: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
    /// A forwarded signal came before the command started: it was not started, and the
    /// token (if minted) died with the connection.
    #[error("{} before the command started; it was not run", signal_name(*signal))]
    Interrupted { signal: i32 },
}

impl ExecError {
    /// The exit status exec ends with on this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecError::Control(error) => error.exit_code(),
            ExecError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                EXIT_NOT_FOUND
            }
            ExecError::Spawn { .. } => EXIT_CANNOT_RUN,
            ExecError::Os { .. } => EXIT_OSERR,
            ExecError::Interrupted { signal } => signal_exit_code(*signal),
        }
    }
}

/// The command's environment: `parent`'s without [`REMOVED_VARS`], with [`URI_VAR`] and
/// [`TOKEN_VAR`] set (replacing any values `parent` had).
pub fn child_env(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    credentials_uri: &str,
    token: &str,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = parent
        .into_iter()
        .filter(|(name, _)| {
            !REMOVED_VARS.iter().any(|r| name == OsStr::new(r))
                && name != OsStr::new(URI_VAR)
                && name != OsStr::new(TOKEN_VAR)
        })
        .collect();
    env.push((URI_VAR.into(), credentials_uri.into()));
    env.push((TOKEN_VAR.into(), token.into()));
    env
}

/// exec's exit status for the command's: its code, or 128+n when signal n killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => signal_exit_code(signal),
        // Neither exited nor killed: `wait` reports no other kind of status.
        (None, None) => 1,
    }
}

fn signal_exit_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

fn signal_name(signal: i32) -> String {
    match signal {
        1 => "SIGHUP".to_owned(),
        2 => "SIGINT".to_owned(),
        15 => "SIGTERM".to_owned(),
        n => format!("signal {n}"),
    }
}

/// The handlers for [`FORWARDED`], installed together.
struct Forwarded {
    streams: Vec<(i32, Signal)>,
}

impl Forwarded {
    fn install() -> Result<Forwarded, ExecError> {
        let streams = FORWARDED
            .iter()
            .map(|kind| {
                signal(*kind)
                    .map(|stream| (kind.as_raw_value(), stream))
                    .map_err(|source| ExecError::Os {
                        what: "install the signal handlers",
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Forwarded { streams })
    }

    /// The next signal received (its number).
    async fn recv(&mut self) -> i32 {
        let [(int, a), (term, b), (hup, c)] = &mut self.streams[..] else {
            unreachable!("three handlers");
        };
        tokio::select! {
            _ = a.recv() => *int,
            _ = b.recv() => *term,
            _ = c.recv() => *hup,
        }
    }
}

/// Runs `job` (see the module documentation); returns the exit status exec ends with.
/// Warnings (the daemon dropped the connection, the revoke failed) go to stderr; the
/// token never does.
pub async fn run(mut job: Job) -> Result<u8, ExecError> {
    let mut signals = Forwarded::install()?;
    job.request.lease = Some(Lease::Connection);
    let mut connection = tokio::select! {
        connection = Connection::open(&job.socket) => connection?,
        signal = signals.recv() => return Err(ExecError::Interrupted { signal }),
    };
    let minted = tokio::select! {
        minted = connection.mint(&job.request) => minted?,
        // Dropping the connection ends the lease of a token minted on it.
        signal = signals.recv() => return Err(ExecError::Interrupted { signal }),
    };
    let mut command = tokio::process::Command::new(&job.program);
    command.args(&job.args).env_clear().envs(child_env(
        std::env::vars_os(),
        &minted.credentials_uri,
        minted.token.expose(),
    ));
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(source) => {
            revoke(&mut connection, &minted.id).await;
            connection.close().await;
            return Err(ExecError::Spawn {
                program: job.program,
                source,
            });
        }
    };
    let pid = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32));
    let mut connection_open = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            signal = signals.recv() => {
                // The child is not reaped before `wait` completes, so `pid` is still
                // its own (at worst a zombie the signal does nothing to).
                if let (Some(pid), Some(signal)) = (pid, rustix::process::Signal::from_named_raw(signal)) {
                    let _ = rustix::process::kill_process(pid, signal);
                }
            }
            () = connection.closed(), if connection_open => {
                connection_open = false;
                warn_connection_closed(&minted.id);
            }
        }
    };
    if connection_open {
        revoke(&mut connection, &minted.id).await;
    }
    connection.close().await;
    let status = status.map_err(|source| ExecError::Os {
        what: "wait for the command",
        source,
    })?;
    Ok(exit_code(status))
}

/// The one line for a control connection the daemon closed under a running command
/// (while it ran, or noticed only when the command's end was to be reported).
fn warn_connection_closed(id: &str) {
    eprintln!(
        "credvend: warning: the daemon closed the control connection (restarted or \
         stopped?) while the command ran: job token {id} died with it"
    );
}

/// `DELETE`s the token. A token already gone (its `--ttl` ran out, or someone revoked
/// it) is what was wanted; a connection the daemon closed meanwhile took the token with
/// it; any other failure is a warning (closing the connection ends the lease anyway).
async fn revoke(connection: &mut Connection, id: &str) {
    match connection.revoke(id).await {
        Ok(()) | Err(ClientError::Refused { status: 404, .. }) => {}
        Err(ClientError::Lost { .. })
            if tokio::time::timeout(Duration::from_secs(1), connection.closed())
                .await
                .is_ok() =>
        {
            warn_connection_closed(id);
        }
        Err(error) => eprintln!(
            "credvend: warning: revoking job token {id}: {error} (closing the connection \
             ends its lease)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::process::Command;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn the_child_env_drops_what_the_sdks_prefer_and_sets_uri_and_token() {
        let mut parent = vars(&[
            ("PATH", "/usr/bin"),
            ("HOME", "/home/job"),
            ("AWS_REGION", "eu-west-1"),
            (URI_VAR, "http://old/"),
            (TOKEN_VAR, "old-token"),
        ]);
        for name in REMOVED_VARS {
            parent.push((name.into(), "from-the-parent".into()));
        }
        let env = child_env(
            parent,
            "http://127.0.0.1:8901/v1/credentials/acme-s3",
            "cvj_x",
        );
        let env: std::collections::BTreeMap<String, String> = env
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        let expected: std::collections::BTreeMap<String, String> = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/job"),
            ("AWS_REGION", "eu-west-1"),
            (URI_VAR, "http://127.0.0.1:8901/v1/credentials/acme-s3"),
            (TOKEN_VAR, "cvj_x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn the_removed_list_holds_the_documented_variables() {
        for name in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        ] {
            assert!(REMOVED_VARS.contains(&name), "{name} is not removed");
        }
    }

    fn status_of(script: &str) -> ExitStatus {
        Command::new("/bin/sh")
            .args(["-c", script])
            .status()
            .expect("run /bin/sh")
    }

    #[test]
    fn an_exit_code_passes_through() {
        assert_eq!(exit_code(status_of("exit 0")), 0);
        assert_eq!(exit_code(status_of("exit 3")), 3);
        assert_eq!(exit_code(status_of("exit 255")), 255);
    }

    #[test]
    fn death_by_signal_is_128_plus_its_number() {
        assert_eq!(exit_code(status_of("kill -TERM $$")), 128 + 15);
        assert_eq!(exit_code(status_of("kill -KILL $$")), 128 + 9);
        assert_eq!(exit_code(ExitStatus::from_raw(2)), 128 + 2, "SIGINT");
    }

    #[test]
    fn failures_map_to_their_exit_codes() {
        let spawn = |kind: std::io::ErrorKind| ExecError::Spawn {
            program: "job".into(),
            source: kind.into(),
        };
        assert_eq!(spawn(std::io::ErrorKind::NotFound).exit_code(), 127);
        assert_eq!(spawn(std::io::ErrorKind::PermissionDenied).exit_code(), 126);
        let interrupted = ExecError::Interrupted { signal: 15 };
        assert_eq!(interrupted.exit_code(), 143);
        assert_eq!(
            interrupted.to_string(),
            "SIGTERM before the command started; it was not run"
        );
    }
}
