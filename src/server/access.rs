//! Who may fetch which mapping, and from which `Host`.
//!
//! Tokens are stored only as SHA-256 hashes (`token_sha256`). A presented token is
//! hashed exactly as sent (SDKs send it verbatim: no `Bearer ` prefix, no trimming) and
//! compared in constant time. A request naming a mapping is checked against that
//! mapping's hashes only; for an unknown mapping the same work is done against a dummy
//! hash, so "no such mapping" and "wrong token" look alike in status, body and timing.
//! A request without a mapping (`GET /v1/credentials`) finds its mapping from the token:
//! the lookup is keyed by the token's SHA-256, which an attacker cannot steer, and the
//! match is then confirmed in constant time.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::config::Config;
use crate::secret::TokenHash;

/// Why a request was not authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    MissingToken,
    /// Wrong token, or a mapping that does not exist.
    Denied,
}

struct MappingAccess {
    tokens: Vec<TokenHash>,
}

/// Access rules of one config generation.
pub struct AccessTable {
    mappings: HashMap<String, MappingAccess>,
    by_token: HashMap<TokenHash, String>,
    /// Extra accepted `Host` values, lower-case, no port, no brackets.
    allowed_hosts: HashSet<String>,
}

impl AccessTable {
    pub fn new(config: &Config) -> Self {
        let mut mappings = HashMap::new();
        let mut by_token = HashMap::new();
        for (name, mapping) in &config.mappings {
            for token in &mapping.token_sha256 {
                by_token.insert(*token, name.clone());
            }
            mappings.insert(
                name.clone(),
                MappingAccess {
                    tokens: mapping.token_sha256.clone(),
                },
            );
        }
        let mut allowed_hosts: HashSet<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for addr in &config.server.listen {
            allowed_hosts.insert(addr.ip().to_string());
        }
        for host in &config.server.allowed_hosts {
            allowed_hosts.insert(normalise_host(host));
        }
        Self {
            mappings,
            by_token,
            allowed_hosts,
        }
    }

    /// The mapping `token` may fetch: `requested` if named, else the token's own.
    pub fn authorize<'a>(
        &'a self,
        requested: Option<&'a str>,
        token: Option<&[u8]>,
    ) -> Result<&'a str, AuthFailure> {
        let token = token.ok_or(AuthFailure::MissingToken)?;
        let presented = TokenHash::of_token(token);
        match requested {
            Some(name) => {
                let dummy = [TokenHash([0u8; 32])];
                let (known, hashes) = match self.mappings.get(name) {
                    Some(access) => (true, access.tokens.as_slice()),
                    None => (false, &dummy[..]),
                };
                // Fold over every hash so the time taken does not depend on which one
                // (if any) matched.
                let matched = hashes
                    .iter()
                    .fold(false, |acc, hash| acc | hash.ct_eq(&presented));
                if known && matched {
                    Ok(name)
                } else {
                    Err(AuthFailure::Denied)
                }
            }
            None => {
                let (stored, name) = self
                    .by_token
                    .get_key_value(&presented)
                    .ok_or(AuthFailure::Denied)?;
                if stored.ct_eq(&presented) {
                    Ok(name.as_str())
                } else {
                    Err(AuthFailure::Denied)
                }
            }
        }
    }

    /// Whether `host` (a `Host` header value) names this endpoint: a loopback name, a
    /// listen address, the address the client actually connected to, or a configured
    /// allowed host. Anything else is a DNS-rebinding attempt.
    ///
    /// Allocation-free unless the value has upper-case letters (SDKs send lower case).
    pub fn host_allowed(&self, host: &str, local: SocketAddr) -> bool {
        let host = trim_host(strip_port(host));
        if host.parse::<IpAddr>().is_ok_and(|ip| ip == local.ip()) {
            return true;
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.allowed_hosts.contains(&host.to_ascii_lowercase())
        } else {
            self.allowed_hosts.contains(host)
        }
    }
}

/// `example.com:8901` → `example.com`; `[::1]:8901` → `[::1]`; `::1` stays.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Without IPv6 brackets and without a trailing dot.
fn trim_host(host: &str) -> &str {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
}

/// Lower-case, without IPv6 brackets and without a trailing dot.
fn normalise_host(host: &str) -> String {
    trim_host(host).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_brackets_are_stripped() {
        assert_eq!(strip_port("127.0.0.1:8901"), "127.0.0.1");
        assert_eq!(strip_port("[::1]:8901"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("localhost"), "localhost");
        assert_eq!(normalise_host("[::1]"), "::1");
        assert_eq!(normalise_host("LocalHost."), "localhost");
    }
}
