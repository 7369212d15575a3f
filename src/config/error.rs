//! The configuration error: every problem found in one pass, one line each.
//!
//! An operator fixing a broken file wants the whole list at once, not one error per
//! restart, so loading collects [`Problem`]s instead of returning at the first. Each
//! problem names the file the offending value came from (or the environment variable),
//! the dotted key, and a reason. Reasons never contain an External ID.

use std::fmt;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the value came from, `environment variable CREDVEND_…` for an
    /// override, or the main file when the value was absent or its origin is unknown.
    pub file: String,
    /// Dotted key path, e.g. `mappings.acme-s3.role_arn`. Empty for problems with a
    /// whole file (unreadable, not TOML).
    pub key: String,
    /// What is wrong and, where useful, how to fix it.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.reason)
        }
    }
}

/// The configuration was rejected. `Display` prints one line per problem,
/// `FILE: KEY: REASON`, in the order found (files in load order, then keys).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.problems))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
