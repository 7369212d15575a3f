//! credvend — a credential-vending sidecar daemon.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod creds;
pub mod policy;
pub mod secret;
