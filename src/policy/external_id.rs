//! External IDs: generating new ones, checking given ones against STS's rules.

use rand::Rng;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;

use super::PolicyError;
use crate::aws_names::{ExternalIdError, check_external_id};

/// Length of the External IDs credvend generates. The vendor's IAM-role guide asks for at
/// least 32; 40 alphanumerics carry about 238 bits, far beyond guessing, and stay well
/// inside STS's 1224-character limit.
pub const GENERATED_EXTERNAL_ID_LEN: usize = 40;

/// Generates a fresh External ID: [`GENERATED_EXTERNAL_ID_LEN`] characters of
/// `[A-Za-z0-9]` from the operating system's CSPRNG.
///
/// `Alphanumeric` samples by rejection, so each of the 62 characters is equally
/// likely (no modulo bias); `OsRng` reads the kernel's generator directly, so there is
/// no user-space PRNG state to leak or fork.
pub fn new_external_id() -> String {
    OsRng
        .sample_iter(&Alphanumeric)
        .take(GENERATED_EXTERNAL_ID_LEN)
        .map(char::from)
        .collect()
}

/// Checks an External ID against STS's rules ([`check_external_id`]: 2–1224
/// characters of `[A-Za-z0-9+=,.@:/_-]`). Customer-supplied legacy IDs may use the
/// punctuation; generated ones are alphanumeric.
pub fn validate_external_id(s: &str) -> Result<(), PolicyError> {
    check_external_id(s).map_err(|err| match err {
        ExternalIdError::Length { length } => PolicyError::ExternalIdLength { length },
        ExternalIdError::Character { position, .. } => {
            PolicyError::ExternalIdCharacter { position }
        }
    })
}
