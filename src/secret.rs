//! Secret-holding types.
//!
//! External IDs, authorization tokens, secret access keys and session tokens are held in
//! [`secrecy::SecretString`] (zeroized on drop). Their `Debug` output never shows the
//! value: at most a short SHA-256 fingerprint, which lets an operator tell two values
//! apart in a log without learning either.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// First 8 hex digits of the SHA-256 of `value`: enough to tell values apart in a log,
/// useless for recovering them.
pub fn fingerprint(value: &[u8]) -> String {
    let digest = Sha256::digest(value);
    hex::encode(&digest[..4])
}

/// A customer role's External ID (the value the trust policy's `sts:ExternalId`
/// condition compares against).
#[derive(Clone)]
pub struct ExternalId(SecretString);

impl ExternalId {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The value itself, for the STS request only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Short, non-reversible fingerprint for logs.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.expose().as_bytes())
    }
}

impl fmt::Debug for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExternalId(sha256:{}…)", self.fingerprint())
    }
}

impl PartialEq for ExternalId {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

/// SHA-256 of an authorization token, as configured in `token_sha256`.
///
/// Not a secret by itself (the token cannot be recovered from it), but it still never
/// appears in logs: `Debug` shows a fingerprint of the hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hash of a presented token, exactly as sent (no trimming, no prefix stripping).
    pub fn of_token(token: &[u8]) -> Self {
        Self(Sha256::digest(token).into())
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(hex_str: &str) -> Option<Self> {
        if hex_str.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).ok()?;
        Some(Self(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Constant-time equality, for checking a presented token: the XOR of the two
    /// hashes is folded eight bytes at a time with no branch on the data, and only the
    /// folded word is compared (with `subtle`, so the compiler cannot turn the fold
    /// into an early exit). The time taken does not depend on where the hashes differ;
    /// four words instead of `subtle`'s 32 byte-wise steps (docs/performance.md, "The
    /// cache hit's own cost").
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        use subtle::ConstantTimeEq;
        let word = |bytes: &[u8; 32], i: usize| {
            let mut chunk = [0u8; 8];
            chunk.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(chunk)
        };
        let diff = (0..4).fold(0u64, |acc, i| acc | (word(&self.0, i) ^ word(&other.0, i)));
        diff.ct_eq(&0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", fingerprint(&self.0))
    }
}

/// A secret string value of a credential (secret access key, session token).
#[derive(Clone)]
pub struct SecretValue(SecretString);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("** redacted **")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let canary = "CANARY-external-id-0123456789";
        let id = ExternalId::new(canary);
        let shown = format!("{id:?} {:?}", SecretValue::new("CANARY-secret-key"));
        assert!(
            !shown.contains("CANARY"),
            "secret leaked through Debug: {shown}"
        );
        assert!(shown.starts_with("ExternalId(sha256:"), "{shown}");
        assert!(shown.contains("** redacted **"), "{shown}");
    }

    #[test]
    fn token_hash_parses_and_compares() {
        let hash = TokenHash::of_token(b"abc");
        let hex_str = hash.to_hex();
        assert_eq!(
            hex_str,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenHash::from_hex(&hex_str.to_uppercase()), Some(hash));
        assert!(hash.ct_eq(&TokenHash::from_hex(&hex_str).unwrap()));
        assert!(!hash.ct_eq(&TokenHash::of_token(b"abd")));
        assert_eq!(TokenHash::from_hex("abc"), None);
        assert_eq!(TokenHash::from_hex(&"g".repeat(64)), None);
        assert!(!format!("{hash:?}").contains(&hex_str));
    }

    /// The word-wise comparison sees a difference in any one bit of any byte: two
    /// hashes equal but for that bit are never equal.
    #[test]
    fn token_hashes_differing_in_any_one_bit_are_not_equal() {
        let hash = TokenHash::of_token(b"acme-token");
        assert!(hash.ct_eq(&TokenHash(hash.0)));
        for byte in 0..32 {
            for bit in 0..8 {
                let mut other = hash;
                other.0[byte] ^= 1 << bit;
                assert!(
                    !hash.ct_eq(&other),
                    "hashes differing in bit {bit} of byte {byte} compared equal"
                );
            }
        }
    }
}
