//! credvend — a credential-vending sidecar daemon.
//!
//! Sync workers fetch AWS credentials for a customer's role over the ECS container
//! credentials protocol; credvend assumes the role with the customer's External ID,
//! caches the session credentials and refreshes them ahead of expiry.
//!
//! Module map, leaves first; dependencies point one way, down this list (the edges and
//! the command that checks them: docs/design.md, "Module map"):
//! - [`aws_names`]: AWS names with their rules, each written once (partitions, account
//!   IDs, role and policy ARNs, External IDs, session names); a leaf that `config`,
//!   `policy`, `protocol` and the tests take them from.
//! - [`clock`]: the wall-clock seam (tests move time by hand).
//! - [`secret`]: zeroizing, redacting holders for External IDs, tokens and keys.
//! - [`notify`]: systemd `READY=1` / `RELOADING=1` / `STOPPING=1`.
//! - [`memory`]: the heap: jemalloc told to give freed memory back after a load.
//! - [`policy`]: onboarding: External IDs, the customer's permission and trust policies.
//! - [`config`]: the TOML file (plus includes and `CREDVEND_` env overrides), validated
//!   whole before anything binds.
//! - [`telemetry`]: log setup.
//! - [`setup`]: writing a new configuration (`credvend init`, `credvend mapping new`)
//!   and worker tokens.
//! - [`control_client`]: the client of the control socket (`credvend token
//!   issue|list|revoke`, and `credvend exec`'s connection): mint, list, revoke job tokens.
//! - [`credential_process`]: `credvend credential-process`: the AWS
//!   `credential_process` helper, one fetch from the credential endpoint.
//! - [`exec`]: `credvend exec`: one job run with a token that lives as long as it does.
//! - [`creds`]: the [`creds::Credentials`] type, the AssumeRole input a mapping makes,
//!   the [`creds::RoleAssumer`] seam and the real STS client; failures are classified
//!   where they enter.
//! - [`model`]: the mapping vocabulary shared above it: lifecycle state, source of a
//!   served credential, the `/status` view, why a fetch failed, the enforcement verdict.
//! - [`protocol`]: the wire vocabulary: the credential body (encoded once per
//!   credential) and every error a request can get, with its status and code.
//! - [`verify`]: the External ID enforcement check, what its outcome means for a
//!   mapping, and `credvend verify`.
//! - [`metrics`]: every Prometheus family, registered once; bounded labels.
//! - [`events`]: notable events whose `emit()` writes the log line and the metric
//!   together.
//! - [`cache`]: per-mapping lifecycle, single flight, the refresh scheduler, the STS
//!   budget.
//! - [`server`]: the accept loop with its bounds, the credential endpoint (responses,
//!   auth, host checks), the admin endpoint, and job tokens: their store and the control
//!   socket that mints them.
//! - [`daemon`]: binds the pieces for one config generation and runs the listeners.
//! - [`reload`]: re-reads, validates and applies the config on SIGHUP or a file change.
//! - `testing`: fixtures for tests (hidden from the docs; no daemon behaviour).
#![forbid(unsafe_code)]

pub mod aws_names;
pub mod cache;
pub mod clock;
pub mod config;
pub mod control_client;
pub mod credential_process;
pub mod creds;
pub mod daemon;
pub mod events;
pub mod exec;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod policy;
pub mod protocol;
pub mod reload;
pub mod secret;
pub mod server;
pub mod setup;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
#[doc(hidden)]
pub mod testing;
pub mod verify;
