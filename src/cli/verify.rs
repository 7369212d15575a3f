//! `credvend verify`: one mapping's checks (the External ID enforcement probes and,
//! with `--bucket`, the five S3 permissions), one line each on stdout.

use std::path::Path;

use anyhow::Context as _;

use credvend::creds::sts::{StsAssumer, StsSettings};
use credvend::policy;
use credvend::verify::{self, s3::S3Target};

use super::{block_on, load_mapping};
use crate::Failure;

/// Printed (to stderr) when every `verify` check passed. The check runs in its own
/// process; a running daemon that refused the mapping (TrustPolicyUnsafe, AccessDenied)
/// retries it only after its negative cache's backoff (up to 10 minutes), or at the next
/// request after a SIGHUP (docs/design.md, Reload).
const VERIFY_PASSED_HINT: &str = "All checks passed. If a running credvend refused this mapping, \
`systemctl reload credvend` (SIGHUP) makes it retry at the next request instead of after its backoff.";

/// `credvend verify MAPPING`: exit 0 when every check passed, 1 (`ChecksFailed`) when
/// one did not.
pub(crate) fn verify(
    path: &Path,
    mapping: &str,
    bucket: Option<String>,
    prefix: Option<String>,
    s3_endpoint_url: Option<String>,
) -> Result<(), Failure> {
    let (loaded, mapping_config) = load_mapping(path, mapping)?;
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
