//! credvend — a credential-vending sidecar daemon.
//!
//! Sync workers fetch AWS credentials for a customer's role over the ECS container
//! credentials protocol; credvend assumes the role with the customer's External ID,
//! caches the session credentials and refreshes them ahead of expiry.
//!
//! Module map:
//! - [`aws_names`]: AWS names with their rules, each written once (partitions, account
//!   IDs, role and policy ARNs, External IDs, session names); a leaf that `config`,
//!   `policy` and `server` take them from.
//! - [`config`]: the TOML file (plus includes and `CREDVEND_` env overrides), validated
//!   whole before anything binds.
//! - [`creds`]: the [`creds::Credentials`] type, the [`creds::RoleAssumer`] seam and the
//!   real STS client; failures are classified where they enter.
//! - [`cache`]: per-mapping lifecycle, single flight, the refresh scheduler, the STS
//!   budget.
//! - [`server`]: the accept loop with its bounds, the credential endpoint (wire format,
//!   auth, host checks) and the admin endpoint.
//! - [`daemon`]: binds the pieces for one config generation and runs the listeners.
//! - [`clock`]: the wall-clock seam (tests move time by hand).
//! - [`secret`]: zeroizing, redacting holders for External IDs, tokens and keys.
//! - [`policy`]: onboarding: External IDs, the customer's permission and trust policies.
//! - [`telemetry`]: log setup.
//! - [`metrics`]: every Prometheus family, registered once; bounded labels.
//! - [`events`]: notable events whose `emit()` writes the log line and the metric
//!   together.
//! - [`notify`]: systemd `READY=1` / `RELOADING=1` / `STOPPING=1`.
#![forbid(unsafe_code)]

pub mod aws_names;
pub mod cache;
pub mod clock;
pub mod config;
pub mod creds;
pub mod daemon;
pub mod events;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod reload;
pub mod secret;
pub mod server;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
#[doc(hidden)]
pub mod testing;
pub mod verify;
