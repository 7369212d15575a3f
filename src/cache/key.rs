//! A mapping's identity: [`MappingKey`], its name plus a fingerprint of every AssumeRole
//! input, so that a config change that would change the STS call changes the key.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::aws_names::SessionName;
use crate::creds::AssumeRoleInput;

/// Identity of a mapping's credentials: its name plus a fingerprint of every
/// AssumeRole input. Two configs produce the same key only if they would make the same
/// STS call.
///
/// One pointer: the key is stored in the slots table, the refresh queue's two tables
/// and beside every cached credential, so a clone is a reference count and each of
/// those buckets holds 8 bytes of it instead of 32 (a test pins the size). Equal keys
/// are usually the same allocation, which `eq` checks first.
#[derive(Clone)]
pub struct MappingKey(Arc<KeyParts>);

#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
struct KeyParts {
    name: Arc<str>,
    fingerprint: [u8; 16],
}

impl PartialEq for MappingKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for MappingKey {}

impl std::hash::Hash for MappingKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialOrd for MappingKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MappingKey {
    /// By name, then fingerprint.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl MappingKey {
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl fmt::Debug for MappingKey {
    // The fingerprint covers the External ID; it is not shown anywhere.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappingKey({})", self.0.name)
    }
}

impl MappingKey {
    /// The key of mapping `name` whose STS call is `input` (against `endpoint`, if set).
    pub(super) fn new(name: &str, input: &AssumeRoleInput, endpoint: Option<&str>) -> Self {
        Self(Arc::new(KeyParts {
            name: Arc::from(name),
            fingerprint: fingerprint(input, endpoint),
        }))
    }

    /// The key of this mapping's per-job entry for RoleSessionName `session`
    /// (docs/design.md, Per-job entries): the mapping's name, and a fingerprint over
    /// this key's and the session name, so it differs from the mapping's own and every
    /// other job's, and changes whenever the mapping's inputs do.
    pub(super) fn for_job(&self, session: &SessionName) -> Self {
        let mut h = Sha256::new();
        h.update(b"job");
        h.update(self.0.fingerprint);
        h.update((session.len() as u64).to_be_bytes());
        h.update(session.as_bytes());
        let digest = h.finalize();
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&digest[..16]);
        Self(Arc::new(KeyParts {
            name: self.0.name.clone(),
            fingerprint,
        }))
    }

    /// The name, shared (no copy).
    pub(super) fn shared_name(&self) -> &Arc<str> {
        &self.0.name
    }
}

/// SHA-256 over every AssumeRole input, length-prefixed so no two different inputs
/// serialise alike.
fn fingerprint(input: &AssumeRoleInput, endpoint: Option<&str>) -> [u8; 16] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(input.role_arn.as_bytes());
    field(input.session_name.as_bytes());
    match &input.external_id {
        Some(id) => {
            field(b"1");
            field(id.expose().as_bytes());
        }
        None => field(b"0"),
    }
    field(&input.duration.as_secs().to_be_bytes());
    field(
        input
            .session_policy
            .as_deref()
            .unwrap_or("\0none")
            .as_bytes(),
    );
    for arn in &input.policy_arns {
        field(arn.as_bytes());
    }
    field(b"tags");
    for (k, v) in &input.tags {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    field(
        input
            .source_identity
            .as_deref()
            .unwrap_or("\0none")
            .as_bytes(),
    );
    field(input.region.as_bytes());
    field(endpoint.unwrap_or("\0default").as_bytes());
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}
