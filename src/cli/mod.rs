//! The binary's commands, beside `src/main.rs` (which declares this module; it is not
//! part of the library and names the library as `credvend::`): `args` (the command
//! line), `onboard`, `verify`, `setup` (`init`, `mapping new`), and what several
//! commands share: loading the mapping a command names, a one-shot runtime, credvend's
//! own principal.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use credvend::config::{Config, DEFAULT_CONFIG_PATH, Mapping};
use credvend::creds::sts::{StsAssumer, StsSettings};
use credvend::policy::Principal;

use crate::Failure;

pub(crate) mod args;
pub(crate) mod onboard;
pub(crate) mod setup;
pub(crate) mod verify;

/// Loads the configuration at `path` and finds the mapping named `name` in it (for the
/// commands that take a mapping name).
pub(crate) fn load_mapping(path: &Path, name: &str) -> Result<(Config, Mapping), Failure> {
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
pub(crate) fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::Runtime)?;
    Ok(runtime.block_on(future))
}

/// The account root of credvend's own identity: the documented default principal of
/// the trust policy. Uses `[sts]` from the config when there is one.
pub(crate) async fn own_principal(config: Option<PathBuf>) -> Result<Principal, Failure> {
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
