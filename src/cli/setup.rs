//! `credvend init` and `credvend mapping new`: the files `credvend::setup` writes, and
//! what to do next (stderr).

use std::path::Path;

use credvend::config::EnforcementMode;
use credvend::setup::{self, MappingRequest, SetupError};

use crate::Failure;

/// A setup command's failure: bad input or a file in the way is a usage problem (64),
/// a rejected configuration a configuration problem (64), I/O a runtime failure (1).
pub(crate) fn setup_failure(error: SetupError) -> Failure {
    match error {
        SetupError::Usage(_) | SetupError::Exists { .. } | SetupError::Rejected { .. } => {
            Failure::Usage(error.to_string())
        }
        SetupError::Io { .. } => Failure::Runtime(error.into()),
    }
}

/// `credvend init`: the files, then what to do next (stderr).
pub(crate) fn init(dir: &Path) -> Result<(), Failure> {
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
pub(crate) fn mapping_new(
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
