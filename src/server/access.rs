//! Who may fetch which mapping, and from which `Host` (the `Host` check, [`HostAllowList`],
//! is shared with the admin listener).
//!
//! Tokens are stored only as SHA-256 hashes (`token_sha256`). A presented token is
//! hashed exactly as sent (SDKs send it verbatim: no `Bearer ` prefix, no trimming) and
//! compared in constant time. A request naming a mapping is checked against that
//! mapping's hashes only; for an unknown mapping the same work is done against a dummy
//! hash, so "no such mapping" and "wrong token" look alike in status, body and timing.
//! A request without a mapping (`GET /v1/credentials`) finds its mapping from the token:
//! the lookup is keyed by the token's SHA-256, which an attacker cannot steer, and the
//! match is then confirmed in constant time.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::Request;
use hyper::header;

use crate::config::Config;
use crate::secret::TokenHash;

/// Why a request was not authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    MissingToken,
    /// Wrong token for an existing mapping, or (without a mapping in the path) a token
    /// of no mapping.
    Denied,
    /// The path names a mapping that does not exist. Answered exactly like [`Denied`]
    /// (status, body, timing); only the audit line tells them apart.
    ///
    /// [`Denied`]: AuthFailure::Denied
    UnknownMapping,
}

/// A mapping's token hashes: most mappings have one, kept inline (no allocation of its
/// own); more go in one boxed slice.
#[derive(Clone)]
enum Tokens {
    One(TokenHash),
    Many(Box<[TokenHash]>),
}

impl Tokens {
    fn new(hashes: &[TokenHash]) -> Self {
        match hashes {
            [one] => Tokens::One(*one),
            many => Tokens::Many(many.into()),
        }
    }

    fn as_slice(&self) -> &[TokenHash] {
        match self {
            Tokens::One(one) => std::slice::from_ref(one),
            Tokens::Many(many) => many,
        }
    }
}

/// Access rules of one config generation. Each mapping's name is stored once, shared by
/// both maps (docs/performance.md, "Memory and start-up at 100,000 mappings").
pub struct AccessTable {
    /// By name. Request paths choose the names looked up here, the config the names
    /// stored: foldhash, randomly seeded per map (no fixed seed to aim collisions at).
    mappings: foldhash::HashMap<Arc<str>, Tokens>,
    by_token: HashMap<TokenHash, Arc<str>>,
    /// `Host` values the credential listeners accept.
    hosts: HostAllowList,
}

impl AccessTable {
    pub fn new(config: &Config) -> Self {
        let mut table = Self {
            mappings: foldhash::HashMap::with_capacity_and_hasher(
                config.mappings.len(),
                Default::default(),
            ),
            by_token: HashMap::with_capacity(config.mappings.len()),
            hosts: HostAllowList::new(&config.server.listen, &config.server.allowed_hosts),
        };
        table.insert_all(config);
        table
    }

    /// Adds `config`'s mappings and their tokens, one shared name per mapping.
    fn insert_all(&mut self, config: &Config) {
        for (name, mapping) in &config.mappings {
            let name: Arc<str> = Arc::from(name.as_str());
            for token in &mapping.token_sha256 {
                self.by_token.insert(*token, name.clone());
            }
            self.mappings
                .insert(name, Tokens::new(&mapping.token_sha256));
        }
    }

    /// This table with `changes`' mappings (new or replaced) put in and the `removed`
    /// ones taken out; the `Host` rules are `changes`' (a reload that read only the
    /// files that changed, docs/design.md, Reload). The other mappings' entries are
    /// copied, not rebuilt from a whole configuration.
    pub fn with_changes(&self, changes: &Config, removed: &BTreeSet<String>) -> Self {
        let mut mappings = self.mappings.clone();
        let mut by_token = self.by_token.clone();
        let replaced = removed
            .iter()
            .map(String::as_str)
            .chain(changes.mappings.keys().map(String::as_str));
        for name in replaced {
            if let Some(old) = mappings.remove(name) {
                for token in old.as_slice() {
                    if by_token.get(token).is_some_and(|owner| &**owner == name) {
                        by_token.remove(token);
                    }
                }
            }
        }
        let mut table = Self {
            mappings,
            by_token,
            hosts: HostAllowList::new(&changes.server.listen, &changes.server.allowed_hosts),
        };
        table.insert_all(changes);
        table
    }

    /// The `Host` values the credential listeners accept.
    pub fn hosts(&self) -> &HostAllowList {
        &self.hosts
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
                    Some(tokens) => (true, tokens.as_slice()),
                    None => (false, &dummy[..]),
                };
                // Fold over every hash so the time taken does not depend on which one
                // (if any) matched.
                let matched = hashes
                    .iter()
                    .fold(false, |acc, hash| acc | hash.ct_eq(&presented));
                match (known, matched) {
                    (true, true) => Ok(name),
                    (true, false) => Err(AuthFailure::Denied),
                    (false, _) => Err(AuthFailure::UnknownMapping),
                }
            }
            None => {
                let (stored, name) = self
                    .by_token
                    .get_key_value(&presented)
                    .ok_or(AuthFailure::Denied)?;
                if stored.ct_eq(&presented) {
                    Ok(name)
                } else {
                    Err(AuthFailure::Denied)
                }
            }
        }
    }

    /// `name` as this generation spells it, if it has that mapping (a borrow that lives
    /// as long as the table, for the audit line).
    pub fn mapping_name(&self, name: &str) -> Option<&str> {
        self.mappings
            .get_key_value(name)
            .map(|(key, _)| key.as_ref())
    }

    /// Whether `host` (a `Host` header value) names a credential listener; see
    /// [`HostAllowList::allows`].
    pub fn host_allowed(&self, host: &str, local: SocketAddr) -> bool {
        self.hosts.allows(host, local)
    }
}

/// The `Host` values one kind of listener accepts: the defence against DNS rebinding,
/// where a web page the operator's browser opened makes it send requests to a name that
/// now resolves to 127.0.0.1. Such a request carries the attacker's name as `Host`, so
/// only names of this endpoint are accepted: `localhost`, `127.0.0.1`, `::1`, the IP of
/// every listen address, the address the client actually connected to, and the
/// configured extra names. The credential listeners use `server.listen` and
/// `server.allowed_hosts`; the admin listener `server.admin_listen` and
/// `server.admin_allowed_hosts`.
#[derive(Debug, Clone)]
pub struct HostAllowList {
    /// Lower-case, no port, no brackets, no trailing dot.
    names: HashSet<String>,
    /// The few names of `names` an SDK sends (loopback and the listen IPs), compared
    /// byte for byte before anything else: most requests are allowed without the IP
    /// parse and the set's hash (docs/performance.md, "The cache hit's own cost").
    usual: Box<[Box<str>]>,
}

impl HostAllowList {
    /// Loopback names, the IP of each of `listen`, and `extra` (validated host names).
    pub fn new<'a>(listen: impl IntoIterator<Item = &'a SocketAddr>, extra: &[String]) -> Self {
        let mut usual: Vec<Box<str>> = ["127.0.0.1", "localhost", "::1"]
            .iter()
            .map(|&s| s.into())
            .collect();
        for addr in listen {
            let ip: Box<str> = addr.ip().to_string().into();
            if !usual.contains(&ip) {
                usual.push(ip);
            }
        }
        let mut names: HashSet<String> = usual.iter().map(|s| s.to_string()).collect();
        for host in extra {
            names.insert(normalise_host(host));
        }
        Self {
            names,
            usual: usual.into(),
        }
    }

    /// Whether `request` names this endpoint. The name is the `Host` header; only
    /// without one does the authority of an absolute-form request target
    /// (`GET http://127.0.0.1:8901/... HTTP/1.1`) stand in for it. A `Host` that is not
    /// UTF-8 is refused, never replaced by the target's authority; with neither, the
    /// request is refused.
    pub fn allows_request<B>(&self, request: &Request<B>, local: SocketAddr) -> bool {
        let host = match request.headers().get(header::HOST) {
            // What an SDK sends, allowed before the UTF-8 check (the usual names are
            // ASCII) and the parse.
            Some(value) if self.is_usual(value.as_bytes()) => return true,
            Some(value) => match std::str::from_utf8(value.as_bytes()) {
                Ok(host) => host,
                Err(_) => return false,
            },
            None => match request.uri().authority() {
                Some(authority) => authority.as_str(),
                None => return false,
            },
        };
        self.allows(host, local)
    }

    /// Whether `host` (a `Host` header value) names this endpoint: a loopback name, a
    /// listen address, the address the client actually connected to (`local`), or a
    /// configured extra name. Anything else is a DNS-rebinding attempt.
    ///
    /// Allocation-free unless the value has upper-case letters (SDKs send lower case).
    pub fn allows(&self, host: &str, local: SocketAddr) -> bool {
        if self.is_usual(host.as_bytes()) {
            return true;
        }
        let host = trim_host(strip_port(host));
        if host.parse::<IpAddr>().is_ok_and(|ip| ip == local.ip()) {
            return true;
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.names.contains(&host.to_ascii_lowercase())
        } else {
            self.names.contains(host)
        }
    }
}

impl HostAllowList {
    /// Whether `host`, without its port, is one of the usual names byte for byte (no
    /// case folding, no brackets, no trailing dot: those take the full check). The
    /// port is stripped like [`strip_port`] strips it from a name without brackets.
    fn is_usual(&self, host: &[u8]) -> bool {
        self.usual.iter().any(|usual| {
            let usual = usual.as_bytes();
            match host.strip_prefix(usual) {
                Some([]) => true,
                // A port, unless the name has colons of its own (`::1:80` is no
                // `::1` with a port; `strip_port` leaves it whole).
                Some([b':', port @ ..]) => {
                    !usual.contains(&b':') && port.iter().all(u8::is_ascii_digit)
                }
                _ => false,
            }
        })
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

    /// The three refusals a token check can give, told apart for the audit line (the
    /// wire answer is the same for both `Denied` and `UnknownMapping`).
    #[test]
    fn an_unknown_mapping_is_told_apart_from_a_wrong_token() {
        let config = crate::testing::config(
            "http://127.0.0.1:9",
            vec![crate::testing::mapping(
                "acme-s3",
                "sync",
                None,
                "acme-token",
            )],
        );
        let table = AccessTable::new(&config);
        assert_eq!(
            table.authorize(Some("acme-s3"), Some(b"acme-token")),
            Ok("acme-s3")
        );
        assert_eq!(
            table.authorize(Some("acme-s3"), Some(b"wrong")),
            Err(AuthFailure::Denied)
        );
        assert_eq!(
            table.authorize(Some("ghost"), Some(b"acme-token")),
            Err(AuthFailure::UnknownMapping)
        );
        assert_eq!(
            table.authorize(None, Some(b"wrong")),
            Err(AuthFailure::Denied)
        );
        assert_eq!(
            table.authorize(Some("ghost"), None),
            Err(AuthFailure::MissingToken)
        );
    }

    /// The byte-for-byte check of the usual names accepts exactly them (with a port):
    /// a look-alike that starts or ends like one is left to the full check, which
    /// refuses it.
    #[test]
    fn the_usual_names_match_exactly() {
        let listen: SocketAddr = "127.0.0.2:8901".parse().unwrap();
        let local: SocketAddr = "127.0.0.2:8901".parse().unwrap();
        let hosts = HostAllowList::new([&listen], &[]);
        for host in [
            "127.0.0.1",
            "127.0.0.1:8901",
            "localhost",
            "localhost:80",
            "::1",
            "[::1]:8901",
            "127.0.0.2",
            "127.0.0.2:8901",
        ] {
            assert!(hosts.allows(host, local), "{host:?} refused");
        }
        for host in [
            "127.0.0.10",
            "127.0.0.1.evil.example",
            "127.0.0.1x:8901",
            "x127.0.0.1",
            "localhost.evil.example",
            "localhostx",
            "evil-localhost",
            "::12",
            "::1:80",
            "127.0.0.20",
            "127.0.0.2.evil.example:8901",
        ] {
            assert!(!hosts.allows(host, local), "{host:?} allowed");
        }
    }

    /// One token kept inline, several in a slice, none at all: each mapping accepts
    /// exactly its own tokens, by name and without one.
    #[test]
    fn every_token_of_a_mapping_and_only_those_authorize_it() {
        let mut two = crate::testing::mapping("two", "sync", None, "two-a");
        two.token_sha256
            .push(TokenHash::of_token(b"two-b".as_slice()));
        let mut none = crate::testing::mapping("none", "sync", None, "unused");
        none.token_sha256.clear();
        let config = crate::testing::config(
            "http://127.0.0.1:9",
            vec![
                crate::testing::mapping("one", "sync", None, "one-a"),
                two,
                none,
            ],
        );
        let table = AccessTable::new(&config);
        for (token, mapping) in [("one-a", "one"), ("two-a", "two"), ("two-b", "two")] {
            let token = Some(token.as_bytes());
            assert_eq!(table.authorize(Some(mapping), token), Ok(mapping));
            assert_eq!(table.authorize(None, token), Ok(mapping));
            for other in ["one", "two", "none"].into_iter().filter(|m| *m != mapping) {
                assert_eq!(
                    table.authorize(Some(other), token),
                    Err(AuthFailure::Denied),
                    "{mapping}'s token for {other}"
                );
            }
        }
        assert_eq!(
            table.authorize(Some("none"), Some(b"unused")),
            Err(AuthFailure::Denied)
        );
        assert_eq!(table.mapping_name("two"), Some("two"));
        assert_eq!(table.mapping_name("three"), None);
    }

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
