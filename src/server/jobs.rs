//! The job-token store (docs/design.md, Job tokens): tokens minted on the control socket
//! ([`super::control`]) for one job, accepted by the credential endpoint exactly like a
//! configured token of their mapping until they are revoked or expire.
//!
//! A token is `cvj_` + 64 hex digits (32 bytes from the OS CSPRNG) and is held only as
//! its SHA-256 ([`TokenHash`]), in memory: a restart revokes every token. Its id
//! (`jt_` and 16 hex digits, separate randomness) names it in `GET /v1/tokens`,
//! `DELETE`, logs and audit lines; the id opens nothing.
//!
//! A token ends when:
//! - `DELETE /v1/tokens/{id}` revokes it;
//! - it was minted with `"lease": "connection"` and that control connection closes
//!   ([`JobTokens::end_connection`]);
//! - a reload removes its mapping ([`JobTokens::retain_mappings`]);
//! - its expiry passes on the daemon's [`Clock`]: refused at once on use
//!   ([`JobTokens::authorize`]), and removed and counted by the sweeper
//!   ([`JobTokens::run_sweeper`]), which sleeps until the earliest expiry and is woken
//!   whenever the set changes.
//!
//! Tokens that name a `session_name` share a per-job cache entry per (mapping,
//! session_name); when the last live one of a pair ends, that entry is dropped
//! (`drop_job_entry`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rand::RngCore;
use rand::rngs::OsRng;
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::aws_names::SessionName;
use crate::cache::CredentialCache;
use crate::clock::Clock;
use crate::config::ControlConfig;
use crate::events::{JobAudit, JobTokenEnd, JobTokenEnded, JobTokenMinted};
use crate::metrics::Metrics;
use crate::secret::TokenHash;

/// `ttl_seconds` of a token minted without one and without a lease (capped at
/// `[control] max_ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Who minted a token: the peer credentials (`SO_PEERCRED`) of the control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// `None` when the kernel did not report it.
    pub pid: Option<i32>,
}

/// One control socket connection (for leases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// A live job token, as listed (no token, no hash).
#[derive(Debug, Clone)]
pub struct JobToken {
    pub id: String,
    pub mapping: String,
    pub session_name: Option<SessionName>,
    pub expires_at: Option<SystemTime>,
    pub created_at: SystemTime,
    pub minted_by: Peer,
    /// The connection whose close revokes it (`"lease": "connection"`).
    pub lease: Option<ConnId>,
}

/// A stored token: its listing plus its hash.
struct Stored {
    hash: TokenHash,
    /// Mint order (listing order; the clock may not move between two mints).
    serial: u64,
    token: Arc<JobToken>,
}

/// What the credential endpoint learns from a job token that authorises a request.
#[derive(Debug, Clone)]
pub struct JobGrant(Arc<JobToken>);

impl JobGrant {
    /// The token's mapping.
    pub fn mapping(&self) -> &str {
        &self.0.mapping
    }

    /// The per-job RoleSessionName, if the token has one.
    pub fn session_name(&self) -> Option<&SessionName> {
        self.0.session_name.as_ref()
    }

    /// The audit line's fields.
    pub fn audit(&self) -> JobAudit<'_> {
        JobAudit {
            id: &self.0.id,
            minted_by_uid: self.0.minted_by.uid,
            minted_by_pid: self.0.minted_by.pid,
        }
    }
}

/// A mint request, validated by the control endpoint.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub mapping: String,
    pub ttl: Option<Duration>,
    pub session_name: Option<SessionName>,
    /// `Some`: revoke when this connection closes.
    pub lease: Option<ConnId>,
}

/// A minted token: the secret, shown once, and its listing.
pub struct Minted {
    /// `cvj_…`; zeroized when dropped.
    pub token: Zeroizing<String>,
    pub info: Arc<JobToken>,
}

/// Why a mint was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MintError {
    /// `ttl_seconds` over `[control] max_ttl` (or zero).
    TtlOutOfRange { max: Duration },
    /// The configuration has no such mapping.
    UnknownMapping,
    /// `[control] max_tokens` tokens are live.
    TooMany { max: usize },
}

#[derive(Default)]
struct State {
    by_id: HashMap<String, Stored>,
    by_hash: HashMap<TokenHash, String>,
    /// Live tokens per (mapping, session_name): the per-job cache entry is dropped when
    /// the count reaches zero.
    sessions: HashMap<(String, SessionName), usize>,
    /// Mappings of the applied configuration: a token is minted only for one of them,
    /// and a reload removing one revokes its tokens under the same lock, so no token
    /// of a removed mapping can slip in between.
    mappings: BTreeSet<String>,
    /// Mints so far.
    minted: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Woken when the set changes (the sweeper re-reads the earliest expiry).
    changed: Notify,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    cache: CredentialCache,
    max_ttl: Duration,
    max_tokens: usize,
}

/// The live job tokens of the daemon (clones share them).
#[derive(Clone)]
pub struct JobTokens(Arc<Shared>);

impl JobTokens {
    /// An empty store with the bounds of `control` (restart-only) for the mappings
    /// `mappings`.
    pub fn new<'a>(
        control: &ControlConfig,
        mappings: impl IntoIterator<Item = &'a str>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        cache: CredentialCache,
    ) -> Self {
        let state = State {
            mappings: mappings.into_iter().map(str::to_owned).collect(),
            ..State::default()
        };
        Self(Arc::new(Shared {
            state: Mutex::new(state),
            changed: Notify::new(),
            clock,
            metrics,
            cache,
            max_ttl: control.max_ttl,
            max_tokens: control.max_tokens,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The longest TTL a token may have.
    pub fn max_ttl(&self) -> Duration {
        self.0.max_ttl
    }

    /// Mints a token for `request`, recorded as minted by `peer`.
    pub fn mint(&self, request: MintRequest, peer: Peer) -> Result<Minted, MintError> {
        let max_ttl = self.0.max_ttl;
        if let Some(ttl) = request.ttl
            && (ttl.is_zero() || ttl > max_ttl)
        {
            return Err(MintError::TtlOutOfRange { max: max_ttl });
        }
        let ttl = match (request.ttl, request.lease) {
            (Some(ttl), _) => Some(ttl),
            // A lease without a TTL lives exactly as long as its connection.
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TTL.min(max_ttl)),
        };
        let now = self.0.clock.now();
        let minted = {
            let mut state = self.lock();
            if !state.mappings.contains(&request.mapping) {
                return Err(MintError::UnknownMapping);
            }
            if state.by_id.len() >= self.0.max_tokens {
                return Err(MintError::TooMany {
                    max: self.0.max_tokens,
                });
            }
            let (token, hash) = new_token();
            let mut id = new_id();
            while state.by_id.contains_key(&id) {
                id = new_id();
            }
            let info = Arc::new(JobToken {
                id: id.clone(),
                mapping: request.mapping,
                session_name: request.session_name,
                expires_at: ttl.map(|ttl| now + ttl),
                created_at: now,
                minted_by: peer,
                lease: request.lease,
            });
            if let Some(session) = &info.session_name {
                *state
                    .sessions
                    .entry((info.mapping.clone(), session.clone()))
                    .or_default() += 1;
            }
            state.by_hash.insert(hash, id.clone());
            state.minted += 1;
            let serial = state.minted;
            state.by_id.insert(
                id,
                Stored {
                    hash,
                    serial,
                    token: info.clone(),
                },
            );
            self.0.metrics.job_tokens_live(state.by_id.len());
            Minted { token, info }
        };
        let info = &minted.info;
        JobTokenMinted {
            id: &info.id,
            mapping: &info.mapping,
            session_name: info.session_name.as_deref(),
            expires_at: info.expires_at,
            lease: info.lease.is_some(),
            minted_by_uid: peer.uid,
            minted_by_pid: peer.pid,
        }
        .emit(&self.0.metrics);
        self.0.changed.notify_one();
        Ok(minted)
    }

    /// The live token whose hash is `presented`, if it may fetch `requested` (its own
    /// mapping when `None`). An expired token is refused here at once, whether or not
    /// the sweeper has removed it yet. The lookup is keyed by the presented token's
    /// SHA-256, which a client cannot steer, and confirmed in constant time.
    pub fn authorize(&self, requested: Option<&str>, presented: &TokenHash) -> Option<JobGrant> {
        let now = self.0.clock.now();
        let state = self.lock();
        let id = state.by_hash.get(presented)?;
        let stored = state.by_id.get(id)?;
        if !stored.hash.ct_eq(presented) {
            return None;
        }
        let token = &stored.token;
        if token.expires_at.is_some_and(|at| at <= now) {
            // Let the sweeper count it now rather than at its next wake-up.
            self.0.changed.notify_one();
            return None;
        }
        if requested.is_some_and(|name| name != token.mapping) {
            return None;
        }
        Some(JobGrant(token.clone()))
    }

    /// Every live token, in the order they were minted.
    pub fn list(&self) -> Vec<Arc<JobToken>> {
        let now = self.0.clock.now();
        let state = self.lock();
        let mut tokens: Vec<(u64, Arc<JobToken>)> = state
            .by_id
            .values()
            .filter(|s| s.token.expires_at.is_none_or(|at| at > now))
            .map(|s| (s.serial, s.token.clone()))
            .collect();
        tokens.sort_by_key(|(serial, _)| *serial);
        tokens.into_iter().map(|(_, token)| token).collect()
    }

    /// Live tokens of each mapping that has any (for `/status`).
    pub fn count_by_mapping(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for token in self.list() {
            *counts.entry(token.mapping.clone()).or_default() += 1;
        }
        counts
    }

    /// Revokes token `id` (`DELETE`). `false` if no live token has that id.
    pub fn revoke(&self, id: &str) -> bool {
        let now = self.0.clock.now();
        let live = {
            let state = self.lock();
            state
                .by_id
                .get(id)
                .is_some_and(|s| s.token.expires_at.is_none_or(|at| at > now))
        };
        if !live {
            // Expired but not swept yet: the sweeper counts it as expired.
            self.0.changed.notify_one();
            return false;
        }
        self.remove_where(|t| t.id == id, JobTokenEnd::Deleted) > 0
    }

    /// The control connection `conn` closed: revokes the tokens it leased.
    pub fn end_connection(&self, conn: ConnId) -> usize {
        self.remove_where(|t| t.lease == Some(conn), JobTokenEnd::LeaseClosed)
    }

    /// A new configuration with `mappings` was applied: revokes the tokens of every
    /// mapping it no longer has, and mints only for these from now on.
    pub fn retain_mappings<'a>(&self, mappings: impl IntoIterator<Item = &'a str>) -> usize {
        let names: BTreeSet<String> = mappings.into_iter().map(str::to_owned).collect();
        let mut state = self.lock();
        state.mappings = names;
        let removed = self.take_where(
            &mut state,
            |_| true,
            |state, t| !state.mappings.contains(&t.mapping),
        );
        self.finish(state, removed, JobTokenEnd::MappingRemoved)
    }

    /// [`JobTokens::retain_mappings`] for a reload that names only what changed:
    /// `added` mappings may mint, `removed` ones lose their tokens.
    pub fn change_mappings<'a>(
        &self,
        added: impl IntoIterator<Item = &'a str>,
        removed: &BTreeSet<String>,
    ) -> usize {
        let mut state = self.lock();
        for name in removed {
            state.mappings.remove(name);
        }
        state.mappings.extend(added.into_iter().map(str::to_owned));
        let removed = self.take_where(
            &mut state,
            |_| true,
            |state, t| !state.mappings.contains(&t.mapping),
        );
        self.finish(state, removed, JobTokenEnd::MappingRemoved)
    }

    /// Removes every expired token (counted as expired) and returns the earliest expiry
    /// still ahead.
    pub fn sweep(&self) -> Option<SystemTime> {
        let now = self.0.clock.now();
        let mut state = self.lock();
        let removed = self.take_where(
            &mut state,
            |t| t.expires_at.is_some_and(|at| at <= now),
            |_, _| true,
        );
        let next = state
            .by_id
            .values()
            .filter_map(|s| s.token.expires_at)
            .min();
        self.finish(state, removed, JobTokenEnd::Expired);
        next
    }

    /// Sweeps expired tokens for ever: sleeps (on the daemon's clock) until the earliest
    /// expiry, or until the set changes. Runs until dropped (`Daemon::run` aborts it).
    pub async fn run_sweeper(self) {
        loop {
            // Registered before sweeping, so a change made during the sweep wakes the
            // wait below instead of being missed.
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = self.sweep();
            match next {
                Some(at) => {
                    tokio::select! {
                        () = self.0.clock.sleep_until(at) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    fn remove_where(&self, matches: impl Fn(&JobToken) -> bool, end: JobTokenEnd) -> usize {
        let mut state = self.lock();
        let removed = self.take_where(&mut state, matches, |_, _| true);
        self.finish(state, removed, end)
    }

    /// Takes the tokens matching both predicates out of `state`; returns them with the
    /// (mapping, session) pairs whose last token they were.
    fn take_where(
        &self,
        state: &mut State,
        matches: impl Fn(&JobToken) -> bool,
        also: impl Fn(&State, &JobToken) -> bool,
    ) -> Removed {
        let ids: Vec<String> = state
            .by_id
            .values()
            .filter(|s| matches(&s.token) && also(&*state, &s.token))
            .map(|s| s.token.id.clone())
            .collect();
        let mut removed = Removed::default();
        for id in ids {
            let Some(stored) = state.by_id.remove(&id) else {
                continue;
            };
            state.by_hash.remove(&stored.hash);
            let token = stored.token;
            if let Some(session) = &token.session_name {
                let key = (token.mapping.clone(), session.clone());
                if let Some(count) = state.sessions.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        state.sessions.remove(&key);
                        removed.last_of_session.push(key);
                    }
                }
            }
            removed.tokens.push(token);
        }
        removed
    }

    /// Outside the lock: logs and counts the removed tokens and drops the per-job
    /// cache entries nobody uses any more.
    fn finish(&self, state: MutexGuard<'_, State>, removed: Removed, end: JobTokenEnd) -> usize {
        let live = state.by_id.len();
        drop(state);
        if removed.tokens.is_empty() {
            return 0;
        }
        self.0.metrics.job_tokens_live(live);
        for token in &removed.tokens {
            JobTokenEnded {
                id: &token.id,
                mapping: &token.mapping,
                end,
            }
            .emit(&self.0.metrics);
        }
        for (mapping, session) in &removed.last_of_session {
            drop_job_entry(&self.0.cache, mapping, session);
        }
        self.0.changed.notify_one();
        removed.tokens.len()
    }
}

#[derive(Default)]
struct Removed {
    tokens: Vec<Arc<JobToken>>,
    last_of_session: Vec<(String, SessionName)>,
}

/// Drops the per-job cache entry of (`mapping`, `session`): the last live token with
/// that pair ended.
fn drop_job_entry(cache: &CredentialCache, mapping: &str, session: &SessionName) {
    cache.drop_job(mapping, session);
}

/// A new token and its hash: `cvj_` + 64 lower-case hex digits of 32 bytes from the OS
/// CSPRNG.
fn new_token() -> (Zeroizing<String>, TokenHash) {
    let mut bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(bytes.as_mut());
    let mut token = Zeroizing::new(String::with_capacity(4 + 64));
    token.push_str("cvj_");
    for byte in bytes.iter() {
        token.push(char::from(HEX[usize::from(byte >> 4)]));
        token.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    let hash = TokenHash::of_token(token.as_bytes());
    (token, hash)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A new id: `jt_` + 16 hex digits (its own randomness: an id reveals nothing about
/// the token).
fn new_id() -> String {
    let mut bytes = [0u8; 8];
    OsRng.fill_bytes(&mut bytes);
    format!("jt_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::creds::{AssumeError, AssumeRoleInput, Credentials, RoleAssumer};

    /// An STS that is never called: these tests do not vend.
    struct NoSts;

    impl RoleAssumer for NoSts {
        fn assume_role<'a>(
            &'a self,
            _input: &'a AssumeRoleInput,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Credentials, AssumeError>> + Send + 'a>,
        > {
            Box::pin(std::future::pending())
        }
    }

    /// A store for mappings `acme-s3` and `beta-s3` (no sweeper running: every sweep
    /// is the test's).
    fn store() -> (JobTokens, ManualClock, Arc<Metrics>) {
        let config = crate::testing::config(
            "http://127.0.0.1:9",
            vec![
                crate::testing::mapping("acme-s3", "sync", None, "acme-token"),
                crate::testing::mapping("beta-s3", "sync", None, "beta-token"),
            ],
        );
        let clock = ManualClock::starting_now();
        let metrics = Arc::new(Metrics::new());
        metrics.sync_mappings(["acme-s3", "beta-s3"]);
        let cache = CredentialCache::new(
            &config,
            Arc::new(NoSts),
            Arc::new(clock.clone()),
            metrics.clone(),
        );
        let jobs = JobTokens::new(
            &config.control,
            ["acme-s3", "beta-s3"],
            Arc::new(clock.clone()),
            metrics.clone(),
            cache,
        );
        (jobs, clock, metrics)
    }

    fn request(mapping: &str, ttl: Option<u64>, lease: Option<u64>) -> MintRequest {
        MintRequest {
            mapping: mapping.into(),
            ttl: ttl.map(Duration::from_secs),
            session_name: None,
            lease: lease.map(ConnId),
        }
    }

    const PEER: Peer = Peer {
        uid: 1000,
        pid: Some(4242),
    };

    /// Expiry is checked on every use: a token is refused from its expiry on, before
    /// any sweep has removed it; the sweep then counts it as expired.
    #[tokio::test]
    async fn an_expired_token_is_refused_on_use_before_it_is_swept() {
        let (jobs, clock, metrics) = store();
        let minted = jobs.mint(request("acme-s3", Some(60), None), PEER).unwrap();
        let hash = TokenHash::of_token(minted.token.as_bytes());
        assert!(jobs.authorize(Some("acme-s3"), &hash).is_some());
        assert!(jobs.authorize(None, &hash).is_some());
        assert!(
            jobs.authorize(Some("beta-s3"), &hash).is_none(),
            "a token opens its own mapping only"
        );
        clock.advance(Duration::from_secs(59));
        assert!(jobs.authorize(Some("acme-s3"), &hash).is_some());
        clock.advance(Duration::from_secs(1));
        assert!(
            jobs.authorize(Some("acme-s3"), &hash).is_none(),
            "accepted at its expiry"
        );
        assert!(jobs.list().is_empty(), "listed after its expiry");
        assert!(
            !jobs.revoke(&minted.info.id),
            "an expired token was revoked"
        );
        assert_eq!(jobs.sweep(), None);
        let text = metrics.render();
        assert!(
            text.contains("credvend_job_tokens_expired_total{mapping=\"acme-s3\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("credvend_job_tokens_revoked_total{mapping=\"acme-s3\"} 0\n"),
            "{text}"
        );
    }

    /// The per-job cache entry of a (mapping, session_name) pair is dropped when the last
    /// live token with that pair ends, not before.
    #[tokio::test]
    async fn the_last_token_of_a_session_ends_its_cache_entry() {
        let (jobs, _clock, _metrics) = store();
        let session = |name: &str| SessionName::try_from(name.to_owned()).unwrap();
        let with_session = |name: &str| MintRequest {
            session_name: Some(session(name)),
            ..request("acme-s3", None, None)
        };
        let first = jobs.mint(with_session("job-1"), PEER).unwrap();
        let second = jobs.mint(with_session("job-1"), PEER).unwrap();
        let other = jobs.mint(with_session("job-2"), PEER).unwrap();
        let take = |id: &str| {
            let mut state = jobs.lock();
            jobs.take_where(&mut state, |t| t.id == id, |_, _| true)
                .last_of_session
        };
        assert_eq!(take(&first.info.id), Vec::new(), "job-1 still has a token");
        assert_eq!(
            take(&second.info.id),
            [("acme-s3".to_owned(), session("job-1"))]
        );
        assert_eq!(
            take(&other.info.id),
            [("acme-s3".to_owned(), session("job-2"))]
        );
    }

    /// Ending a connection revokes the tokens it leased, and only those.
    #[tokio::test]
    async fn a_closed_connection_revokes_only_its_own_leases() {
        let (jobs, _clock, _metrics) = store();
        let leased = jobs.mint(request("acme-s3", None, Some(1)), PEER).unwrap();
        let other = jobs.mint(request("acme-s3", None, Some(2)), PEER).unwrap();
        let plain = jobs.mint(request("beta-s3", None, None), PEER).unwrap();
        assert_eq!(
            leased.info.expires_at, None,
            "a lease without ttl has no expiry"
        );
        assert!(
            plain.info.expires_at.is_some(),
            "a plain token gets the default ttl"
        );
        assert_eq!(jobs.end_connection(ConnId(1)), 1);
        let left: Vec<String> = jobs.list().iter().map(|t| t.id.clone()).collect();
        assert_eq!(left, [other.info.id.clone(), plain.info.id.clone()]);
    }

    #[test]
    fn tokens_and_ids_have_their_documented_shape() {
        let (token, hash) = new_token();
        assert_eq!(token.len(), 68, "{}", token.len());
        assert!(token.starts_with("cvj_"));
        assert!(
            token[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(hash, TokenHash::of_token(token.as_bytes()));
        let (other, _) = new_token();
        assert_ne!(*token, *other, "two tokens from the CSPRNG are equal");
        let id = new_id();
        assert_eq!(id.len(), 19);
        assert!(id.starts_with("jt_"));
    }
}
