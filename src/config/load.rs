//! Reading the files and the environment into one figment, and attributing problems.
//!
//! Inputs, in increasing precedence:
//! 1. the main TOML file;
//! 2. the files matched by its `include` globs (relative globs resolve against the main
//!    file's directory; each glob's matches are sorted; the main file itself is never
//!    re-read). Included files may hold **only** `[mappings.*]` tables: server, STS and
//!    lifetime settings live in one place, so a fleet's drop-in directory can add
//!    customers but cannot quietly change how the daemon binds or refreshes. A mapping
//!    defined in two files is an error naming both, never a silent merge;
//! 3. environment variables `CREDVEND_<SECTION>__<KEY>` (`__` between levels, keys
//!    lower-cased). `CREDVEND_CONFIG` names the config file and is not a key. Which
//!    other `CREDVEND_*` variables are overrides is [`env_var_kind`]'s rule: a name with
//!    `__`, or a top-level key by itself, is one (and a misspelt key in it is a problem
//!    naming the variable); any other name is not credvend's and is ignored with a
//!    warning naming it, so a script's own `CREDVEND_BIN` cannot stop a daemon.
//!
//! Every file is parsed on its own first, so one file with a TOML syntax error is
//! reported (without its source snippet, which could contain an External ID) while the
//! others are still checked. Each value in the merged figment carries a tag naming its
//! provider; [`Report`] uses it to say which file or variable a bad value came from.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use figment::providers::Env;
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::error::{ConfigError, Problem};
use super::permissions;
use super::raw::{OneOrMany, TOP_LEVEL_KEYS};

/// Prefix of environment overrides.
pub(super) const ENV_PREFIX: &str = "CREDVEND_";
/// The variable naming the config file; read by the CLI, never a config key.
pub(super) const CONFIG_PATH_VAR: &str = "CREDVEND_CONFIG";

/// Everything read, merged, ready for validation.
pub(super) struct Loaded {
    pub report: Report,
    /// Main file first, then includes in load order.
    pub files: Vec<PathBuf>,
    /// Directories the `include` globs look in.
    pub include_dirs: Vec<PathBuf>,
    /// What the main file was when read ([`FileFacts`]), by path, for the [`LoadIndex`].
    pub facts: HashMap<PathBuf, FileFacts>,
    /// What each included file (`files` after the first) was and defined, in the same
    /// order, for the [`LoadIndex`].
    pub included: Vec<IncludedFile>,
}

/// What one included file of a read was and defined, for the [`LoadIndex`].
pub(super) struct IncludedFile {
    /// `None` when its `stat` failed: the index cannot vouch for it then.
    pub facts: Option<FileFacts>,
    /// The mappings it defined (a name also defined by an earlier file left out).
    pub names: Vec<String>,
    /// One of them reads an `external_id_file` ([`FileRecord::volatile`]).
    pub volatile: bool,
}

/// What one read of the configuration looked at, whether or not it was valid: the files
/// it read, where its `include` globs look, and a digest of the bytes it parsed. The
/// reloader tells a change from a no-op file event by the digest, and filters file events
/// to these names (docs/design.md, Reload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Every file read or tried: the main file first, then includes in load order.
    pub files: Vec<PathBuf>,
    /// Each `include` glob whose wildcards are all in its last component, as the
    /// directory it looks in and the file-name pattern there (`mappings.d` and `*.toml`
    /// for `mappings.d/*.toml`; a literal include is its own pattern). A file appearing
    /// there that matches is a change.
    pub include_globs: Vec<(PathBuf, String)>,
    /// SHA-256 over each file's path and the bytes parsed from it (or that it could not
    /// be read), in load order: the very bytes the configuration was built from, so an
    /// edit landing after they were read is a difference, never taken for what was read.
    /// Each file's and include directory's mode and owner are in it too: they are
    /// checked, so fixing them is a change.
    pub digest: [u8; 32],
    /// For a read that reused what the configuration before it read
    /// (`Config::read_changes`): the files whose bytes it read again (the main
    /// file, the included files that changed or appeared, and those whose change the
    /// file times cannot rule out). `None` for a full read, which reads every file.
    pub reread: Option<Vec<PathBuf>>,
    /// What each file read contributed, for the next read to reuse
    /// ([`super::incremental`]); only after a read that produced a valid configuration.
    /// Not part of the comparison: two reads of the same bytes are equal.
    pub(crate) index: IndexSlot,
}

/// Where [`Sources`] carries the [`LoadIndex`] of a valid read, from the loader to the
/// reloader that keeps it.
#[derive(Clone, Default)]
pub(crate) struct IndexSlot(pub(crate) Option<Arc<LoadIndex>>);

impl PartialEq for IndexSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for IndexSlot {}

impl std::fmt::Debug for IndexSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(index) => write!(f, "LoadIndex({} files)", index.files.len()),
            None => f.write_str("None"),
        }
    }
}

/// Hashes what each file read returned, as it is read: per file its path, a SHA-256 of
/// its bytes (or that it could not be read) and its mode and owner. A read that reuses
/// an unchanged file's digest ([`super::incremental`]) feeds the same bytes, so both
/// reads of the same files give the same digest.
pub(super) struct ReadLog<'a> {
    pub(super) hasher: Sha256,
    pub(super) sources: &'a mut Sources,
    /// What each file read was found to be, by path, when `record` is on.
    pub(super) facts: HashMap<PathBuf, FileFacts>,
    pub(super) record: bool,
}

impl<'a> ReadLog<'a> {
    pub(super) fn new(sources: &'a mut Sources, record: bool) -> Self {
        Self {
            hasher: Sha256::new(),
            sources,
            facts: HashMap::new(),
            record,
        }
    }

    /// Reads `path` whole, recording its name and bytes (or the failure).
    pub(super) fn read(&mut self, path: &Path) -> std::io::Result<String> {
        let (read, text) = FileRead::of(path);
        self.record(path, &read, true);
        text
    }

    /// Records one file read ([`FileRead::of`], on any thread): its name, the digest of
    /// its bytes (or why it could not be read), its mode and owner; and, when recording
    /// with `facts`, what it was ([`FileFacts`]) by path. Called in load order: the
    /// digest of the whole read depends on it.
    pub(super) fn record(&mut self, path: &Path, read: &FileRead, facts: bool) {
        self.sources.files.push(path.to_path_buf());
        if let Some(reread) = &mut self.sources.reread {
            reread.push(path.to_path_buf());
        }
        match &read.digest {
            Ok(digest) => {
                self.file_digest(path, Some(&short(digest)), None);
                if let (true, true, Some(facts)) = (self.record, facts, read.facts()) {
                    self.facts.insert(path.to_path_buf(), facts);
                }
            }
            Err(kind) => self.file_digest(path, None, Some(*kind)),
        }
        match read.stat {
            Some(stat) => self.mode(stat.mode, stat.uid),
            None => self.permissions(path),
        }
    }

    /// Feeds one file's path and the digest of its bytes (or why it could not be read)
    /// into the digest of the whole read.
    pub(super) fn file_digest(
        &mut self,
        path: &Path,
        digest: Option<&ShortDigest>,
        error: Option<std::io::ErrorKind>,
    ) {
        self.hasher.update(path.as_os_str().as_encoded_bytes());
        self.hasher.update([0]);
        match (digest, error) {
            (Some(digest), _) => {
                self.hasher.update(b"\x01");
                self.hasher.update(digest);
            }
            (None, kind) => {
                self.hasher.update(b"\xffunreadable:");
                self.hasher.update(format!("{kind:?}").as_bytes());
            }
        }
    }

    /// Records who owns `path` (after symlinks) and who may write it: the files are
    /// checked for that, so a `chmod` or `chown` that fixes a rejected read is a change
    /// even when the bytes are the same.
    pub(super) fn permissions(&mut self, path: &Path) {
        use std::os::unix::fs::MetadataExt;
        match fs::metadata(path) {
            Ok(meta) => self.mode(meta.mode(), meta.uid()),
            Err(_) => self.hasher.update(b"\xfeno metadata"),
        }
    }

    /// [`ReadLog::permissions`] from a mode and owner already looked up.
    pub(super) fn mode(&mut self, mode: u32, uid: u32) {
        self.hasher.update(b"\xfemode:");
        self.hasher.update(mode.to_be_bytes());
        self.hasher.update(uid.to_be_bytes());
    }
}

/// Nanoseconds since the Unix epoch (negative before it).
pub(super) fn unix_nanos(at: std::time::SystemTime) -> i64 {
    match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// What `stat` says of a file (after symlinks): which file it is, its size, its times,
/// its mode and owner. Two equal `FileStat`s of a path say its bytes did not change,
/// except for a rewrite of the same size inside the file system's timestamp
/// granularity ([`FileStat::racy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileStat {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
}

impl FileStat {
    pub(crate) fn of(path: &Path) -> Option<Self> {
        fs::metadata(path).ok().map(|meta| Self::from(&meta))
    }

    /// Whether a file with this `stat`, taken at `checked_at` (ns since the epoch), could
    /// have been rewritten since without `stat` showing it: its modification or change
    /// time lies within [`RACY_WINDOW`] of the moment it was looked at. File times come
    /// from a coarse clock (a kernel tick; whole seconds on some file systems, two on
    /// FAT), so a rewrite of the same size in the same tick leaves every field equal.
    /// Such a file is read again, and compared by digest, until a read happens long
    /// enough after its last change (the "racily clean" rule of git's index).
    /// All of it folded to 8 bytes (SipHash), what the reload index keeps: a file whose
    /// `stat` folds the same is taken for unchanged, as one whose `stat` is the same
    /// was before (a change that folds alike by chance: one in 2^64).
    pub(crate) fn fold(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }

    pub(crate) fn racy(&self, checked_at: i64) -> bool {
        let window = i64::try_from(RACY_WINDOW.as_nanos()).unwrap_or(i64::MAX);
        self.mtime_ns.max(self.ctime_ns) > checked_at.saturating_sub(window)
    }
}

impl From<&fs::Metadata> for FileStat {
    fn from(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            mode: meta.mode(),
            uid: meta.uid(),
        }
    }
}

/// How close to the moment a file was looked at its last change may be before `stat`
/// alone cannot vouch for it ([`FileStat::racy`]): above the two seconds of FAT's
/// timestamps and a network file system's small clock skew.
pub(crate) const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

/// One file read: its `stat` before the read, the digest of the bytes read, and when.
#[derive(Debug, Clone)]
pub(crate) struct FileFacts {
    pub(crate) stat: FileStat,
    pub(crate) digest: [u8; 32],
    pub(crate) checked_at: i64,
}

/// What reading one file found ([`FileRead::of`]): done on any thread, recorded in load
/// order ([`ReadLog::record`]).
#[derive(Debug, Clone)]
pub(super) struct FileRead {
    /// What `stat` said of the file read (of the open file: the very one read), or of
    /// its path when it could not be opened; `None` when neither worked.
    pub(super) stat: Option<FileStat>,
    /// When it was looked at, before its bytes were read ([`FileStat::racy`]).
    pub(super) checked_at: i64,
    /// The SHA-256 of its bytes, or why it could not be read.
    pub(super) digest: Result<[u8; 32], std::io::ErrorKind>,
}

impl FileRead {
    /// Opens `path`, `stat`s the open file, then reads it whole: one lookup of the path
    /// (`fs::read_to_string` after a `stat` of the path looked it up twice and `stat`ed
    /// the file twice; at 100,000 included files the system calls were most of the
    /// read). The file's identity and times come before its bytes: an edit landing after
    /// them makes the next `stat` differ, or falls in the window [`FileStat::racy`]
    /// re-reads.
    pub(super) fn of(path: &Path) -> (Self, std::io::Result<String>) {
        use std::io::Read;
        let mut file = match fs::File::open(path) {
            Ok(file) => file,
            Err(e) => {
                let read = Self {
                    stat: FileStat::of(path),
                    checked_at: unix_nanos(std::time::SystemTime::now()),
                    digest: Err(e.kind()),
                };
                return (read, Err(e));
            }
        };
        let stat = file.metadata().ok().map(|meta| FileStat::from(&meta));
        let checked_at = unix_nanos(std::time::SystemTime::now());
        // Sized from the `stat`, and read up to that size: no read to find the end of
        // the file (a system call per file). Bytes appended after the `stat` are left
        // for the next read: the `stat` recorded is the one before them, so the next
        // reload sees the file changed and reads it again. A file whose `stat` gives
        // no size (0) is read to its end.
        let size = stat.map_or(0, |stat| usize::try_from(stat.size).unwrap_or(0));
        let mut bytes = vec![0u8; size.max(64)];
        let mut filled = 0;
        let result = loop {
            if size > 0 && filled == size {
                break Ok(());
            }
            if filled == bytes.len() {
                bytes.resize(bytes.len() * 2, 0);
            }
            match file.read(&mut bytes[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        bytes.truncate(filled);
        let text = result.and_then(|()| {
            String::from_utf8(bytes).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                )
            })
        });
        let read = Self {
            stat,
            checked_at,
            digest: match &text {
                Ok(text) => Ok(Sha256::digest(text.as_bytes()).into()),
                Err(e) => Err(e.kind()),
            },
        };
        (read, text)
    }

    /// What the file was, when it was read and `stat` worked.
    pub(super) fn facts(&self) -> Option<FileFacts> {
        Some(FileFacts {
            stat: self.stat?,
            digest: *self.digest.as_ref().ok()?,
            checked_at: self.checked_at,
        })
    }
}

/// The mappings a file defined, for the checks across files of a reload that reads
/// only some files again: their names (in one string, a line each: a mapping name has
/// no line break) and each of their token hashes folded to 8 bytes ([`folded_token`]).
/// A reload that finds a token read again among these goes to the full read, which
/// compares whole hashes: two different hashes folding alike cost that reload its
/// speed, never its answer. At 100,000 files this is one string and one small slice per file
/// instead of a slice of pairs, a string and a slice of 32-byte hashes per mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FileMappings(Box<[u8]>);

impl FileMappings {
    /// Laid out in one allocation: the number of token hashes (4 bytes), each folded
    /// (8 bytes), then the names.
    pub(crate) fn new<'a>(
        mappings: impl IntoIterator<Item = (&'a str, &'a [crate::secret::TokenHash])>,
    ) -> Self {
        let mut names = String::new();
        let mut tokens = Vec::new();
        for (name, hashes) in mappings {
            if !names.is_empty() {
                names.push('\n');
            }
            names.push_str(name);
            tokens.extend(hashes.iter().map(folded_token));
        }
        if names.is_empty() && tokens.is_empty() {
            return Self::default();
        }
        let mut bytes = Vec::with_capacity(4 + 8 * tokens.len() + names.len());
        bytes.extend_from_slice(
            &u32::try_from(tokens.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for token in &tokens {
            bytes.extend_from_slice(&token.to_le_bytes());
        }
        bytes.extend_from_slice(names.as_bytes());
        Self(bytes.into_boxed_slice())
    }

    /// Where the names start (after the count and the tokens).
    fn names_at(&self) -> usize {
        match self.0.get(..4) {
            Some(count) => {
                let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
                (4 + 8 * count as usize).min(self.0.len())
            }
            None => 0,
        }
    }

    /// The names of the mappings, in the order given.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        std::str::from_utf8(&self.0[self.names_at()..])
            .unwrap_or_default()
            .split('\n')
            .filter(|name| !name.is_empty())
    }

    /// Every token hash of these mappings, folded ([`folded_token`]).
    pub(crate) fn tokens(&self) -> impl Iterator<Item = u64> {
        self.0
            .get(4..self.names_at())
            .unwrap_or_default()
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
    }
}

/// A token hash folded to 8 bytes (SipHash of all 32), what a [`FileMappings`] keeps
/// of it. Not its first 8 bytes: hand-written hashes (`00…01`, `00…02`) share those.
pub(crate) fn folded_token(hash: &crate::secret::TokenHash) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    hash.0.hash(&mut hasher);
    hasher.finish()
}

/// A file's digest as the reload index keeps it and the digest of a whole read takes
/// it: the first 16 bytes of the SHA-256 of its bytes.
pub(crate) type ShortDigest = [u8; 16];

/// The first 16 bytes of `digest`.
pub(crate) fn short(digest: &[u8; 32]) -> ShortDigest {
    let mut head = [0u8; 16];
    head.copy_from_slice(&digest[..16]);
    head
}

/// What one included file contributed to a valid configuration: what it was when read,
/// and the mappings it defined with their token hashes (for the checks across files).
/// 48 bytes and one allocation beside its name, per file: at 100,000 included files
/// the index was ~29 MiB of the idle daemon with the whole `stat` and digest, the time
/// it was read, and each mapping's name and hashes apart.
#[derive(Debug, Clone)]
pub(crate) struct FileRecord {
    /// Its `stat` when read, folded ([`FileStat::fold`]).
    pub(crate) stat: u64,
    /// The digest of the bytes read ([`ShortDigest`]).
    pub(crate) digest: ShortDigest,
    /// Its last change was too close to the moment it was read for `stat` to vouch
    /// for it ([`FileStat::racy`]): the next reload compares its bytes.
    pub(crate) racy: bool,
    /// One of its mappings reads an `external_id_file`, whose bytes are not in the
    /// digest: the file is read and validated again at every reload.
    pub(crate) volatile: bool,
    pub(crate) mappings: FileMappings,
}

impl FileRecord {
    pub(crate) fn new(facts: &FileFacts, mappings: FileMappings, volatile: bool) -> Self {
        Self {
            stat: facts.stat.fold(),
            digest: short(&facts.digest),
            racy: facts.stat.racy(facts.checked_at),
            volatile,
            mappings,
        }
    }
}

/// The included files of a [`LoadIndex`], by path. A path is kept as its directory
/// (once per directory: an include directory holds them all) and its file name, so
/// 100,000 files in one directory keep one copy of the directory's name, not 100,000.
#[derive(Debug, Clone, Default)]
pub(crate) struct IncludedIndex {
    dirs: Vec<PathBuf>,
    /// Key: the directory's position in `dirs` (4 bytes) and the file name's bytes.
    files: HashMap<Box<[u8]>, FileRecord>,
}

impl IncludedIndex {
    /// The key of `path`, with `dirs` extended when `add` (else `None` for a directory
    /// not in it).
    fn key(&mut self, path: &Path, add: bool) -> Option<Box<[u8]>> {
        let (dir, name) = split(path);
        let position = match self.dirs.iter().position(|d| d.as_os_str() == dir) {
            Some(position) => position,
            None if add => {
                self.dirs.push(PathBuf::from(dir));
                self.dirs.len() - 1
            }
            None => return None,
        };
        Some(key_of(position, name))
    }

    fn lookup_key(&self, path: &Path) -> Option<Box<[u8]>> {
        let (dir, name) = split(path);
        let position = self.dirs.iter().position(|d| d.as_os_str() == dir)?;
        Some(key_of(position, name))
    }

    pub(crate) fn get(&self, path: &Path) -> Option<&FileRecord> {
        self.files.get(&self.lookup_key(path)?)
    }

    #[cfg(test)]
    pub(crate) fn get_mut(&mut self, path: &Path) -> Option<&mut FileRecord> {
        let key = self.lookup_key(path)?;
        self.files.get_mut(&key)
    }

    pub(crate) fn insert(&mut self, path: &Path, record: FileRecord) {
        if let Some(key) = self.key(path, true) {
            self.files.insert(key, record);
        }
    }

    pub(crate) fn remove(&mut self, path: &Path) -> Option<FileRecord> {
        let key = self.lookup_key(path)?;
        self.files.remove(&key)
    }

    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// Every file, with its path.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (PathBuf, &FileRecord)> {
        use std::os::unix::ffi::OsStrExt;
        self.files.iter().map(|(key, record)| {
            let (position, name) = key.split_at(4);
            let position = u32::from_le_bytes([position[0], position[1], position[2], position[3]]);
            let dir = &self.dirs[position as usize];
            (dir.join(std::ffi::OsStr::from_bytes(name)), record)
        })
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &FileRecord> {
        self.files.values()
    }

    #[cfg(test)]
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut FileRecord> {
        self.files.values_mut()
    }

    fn with_capacity(capacity: usize) -> Self {
        Self {
            dirs: Vec::new(),
            files: HashMap::with_capacity(capacity),
        }
    }
}

/// A path's directory and file name, as bytes (the directory empty for a bare name).
fn split(path: &Path) -> (&std::ffi::OsStr, &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    match bytes.iter().rposition(|&b| b == b'/') {
        // `/a.toml`: the directory is `/`.
        Some(slash) => (
            std::ffi::OsStr::from_bytes(&bytes[..slash.max(1)]),
            &bytes[slash + 1..],
        ),
        None => (std::ffi::OsStr::new(""), bytes),
    }
}

fn key_of(position: usize, name: &[u8]) -> Box<[u8]> {
    let mut key = Vec::with_capacity(4 + name.len());
    key.extend_from_slice(&u32::try_from(position).unwrap_or(u32::MAX).to_le_bytes());
    key.extend_from_slice(name);
    key.into_boxed_slice()
}

/// What a valid read of the configuration was built from, for the next reload to redo
/// only what changed ([`super::incremental`]; docs/design.md, Reload).
#[derive(Debug, Clone)]
pub(crate) struct LoadIndex {
    /// The main file's digest (bytes, mode, owner) and the digest of every `CREDVEND_*`
    /// variable: when either differs, the reload is a full one.
    pub(crate) main: [u8; 32],
    pub(crate) env: [u8; 32],
    /// The main file's own mappings and their tokens.
    pub(crate) main_mappings: FileMappings,
    /// Every included file, by path as the globs produced it.
    pub(crate) files: IncludedIndex,
}

impl LoadIndex {
    pub(crate) fn with_capacity(
        main: [u8; 32],
        env: [u8; 32],
        main_mappings: FileMappings,
        files: usize,
    ) -> Self {
        Self {
            main,
            env,
            main_mappings,
            files: IncludedIndex::with_capacity(files),
        }
    }
}

/// A digest of every `CREDVEND_*` variable (name and value), and whether one of them
/// overrides a mapping's key (then no reload reuses a file's mappings: the variable
/// applies across files).
pub(super) fn env_digest() -> ([u8; 32], bool) {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with(ENV_PREFIX)
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect();
    vars.sort();
    let mut hasher = Sha256::new();
    let mut overrides_mappings = false;
    for (name, value) in &vars {
        let rest = &name[ENV_PREFIX.len()..];
        if env_var_kind(rest) == EnvVarKind::Override
            && rest
                .get(..8)
                .is_some_and(|head| head.eq_ignore_ascii_case("mappings"))
        {
            overrides_mappings = true;
        }
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    (hasher.finalize().into(), overrides_mappings)
}

/// Reads the main file, its includes and the environment, returning with the result
/// what was read ([`Sources`], also when reading failed). The result is `Err` only when
/// the main file itself cannot be read or parsed (nothing else can be checked then);
/// every other problem is left in the report for validation to add to.
pub(super) fn load(main: &Path) -> (Sources, Result<Loaded, ConfigError>) {
    let mut sources = Sources::default();
    let mut log = ReadLog::new(&mut sources, true);
    let result = load_logged(main, &mut log);
    let facts = std::mem::take(&mut log.facts);
    let digest = log.hasher.finalize().into();
    sources.digest = digest;
    (
        sources,
        result.map(|mut loaded| {
            loaded.facts = facts;
            loaded
        }),
    )
}

/// What [`load`] would read now, with the same digest, without building or validating
/// the configuration: only the main file's top-level keys (before its first table
/// header) are parsed, for `include`, and the included files are hashed, not parsed. For telling whether anything changed on disk
/// (at 100,000 mappings a full [`load`] takes seconds and hundreds of MiB of transient
/// heap). A main file [`load`] cannot parse may give a different digest here (it hashes
/// the includes too): that reads as a change, and the full reload then reports it.
pub(super) fn sources(main: &Path) -> Sources {
    let mut sources = Sources::default();
    let mut log = ReadLog::new(&mut sources, false);
    let main_display = main.display().to_string();
    let include = log.read(main).ok().and_then(|text| include_of(&text));
    if let Some(dict) = include {
        let base = Figment::from(TomlFile::new(main, dict)).merge(env_provider());
        let mut report = Report::new(base, main, main_display);
        let (includes, include_dirs) = resolve_includes(main, &mut report, log.sources);
        for dir in &include_dirs {
            log.permissions(dir);
        }
        let mut seen: HashSet<PathBuf> = HashSet::from([main.to_path_buf()]);
        for include in includes {
            if seen.insert(include.clone()) {
                let _ = log.read(&include);
            }
        }
    }
    let digest = log.hasher.finalize().into();
    sources.digest = digest;
    sources
}

/// The main file's `include` key (a table holding it, or nothing), from `text`:
/// `include` is a top-level key, so it comes before the first table header, and only
/// that prefix is parsed (the mappings after it would cost a full parse tree). `None`
/// when that prefix does not parse.
pub(super) fn include_of(text: &str) -> Option<Dict> {
    #[derive(serde::Deserialize)]
    struct IncludeOnly {
        include: Option<Value>,
    }
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('[') {
            break;
        }
        end += line.len();
    }
    let IncludeOnly { include } = toml::from_str::<IncludeOnly>(&text[..end]).ok()?;
    let mut dict = Dict::new();
    if let Some(include) = include {
        dict.insert("include".to_owned(), include);
    }
    Some(dict)
}

fn load_logged(main: &Path, log: &mut ReadLog<'_>) -> Result<Loaded, ConfigError> {
    let main_display = main.display().to_string();
    let fatal = |reason: String| ConfigError {
        problems: vec![Problem {
            file: main_display.clone(),
            key: String::new(),
            reason,
        }],
    };
    let main_dict = read_toml(main, log).map_err(fatal)?;

    let env = env_provider();
    // The include list may itself be overridden from the environment, so it is read
    // from the main file merged with the environment. Mappings play no part in it and
    // are left out: with thousands of them, every copy of the tree costs (figment
    // copies a provider's data once to merge it and once more to look a value up).
    let without_mappings: Dict = main_dict
        .iter()
        .filter(|(key, _)| key.as_str() != "mappings")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let base = Figment::from(TomlFile::new(main, without_mappings)).merge(env.clone());
    let mut report = Report::new(base, main, main_display.clone());
    report.check_private_file(main, &main_display);
    warn_unrelated_env_vars(&mut report);

    // Which file defines each mapping, to reject a name defined twice.
    let mut mapping_files: HashMap<String, Arc<Path>> = HashMap::new();
    let _ = note_mappings(
        &main_dict,
        &Arc::from(main),
        &mut mapping_files,
        &mut report,
    );
    let mut files = vec![main.to_path_buf()];
    // Without an environment override of a mapping's key, the mappings (the main
    // file's and the included files') never go through figment: they are moved into
    // the merged tree after it is built ([`Report::put_mappings`]). figment would hold
    // one copy of them and hand out another, each a few hundred MiB at 100,000
    // mappings. Their values carry no provider tag; [`Report::origin`] attributes them
    // by the file each mapping came from ([`Report::included`]) or to the main file.
    let (_, env_overrides_mappings) = env_digest();
    let mut main_dict = main_dict;
    let mut mappings_aside = (!env_overrides_mappings)
        .then(|| main_dict.remove("mappings"))
        .flatten();
    let mut figment = Figment::from(TomlFile::new(main, main_dict));

    let (includes, include_dirs) = resolve_includes(main, &mut report, log.sources);
    // A file dropped into an include directory is configuration: whoever can write
    // the directory can add a mapping.
    let origin = report.origin(&["include"]);
    for dir in &include_dirs {
        log.permissions(dir);
        report.check_permissions(dir, permissions::Kind::IncludeDirectory, &origin, "include");
    }
    // A set beside the list: `files.contains` was quadratic, minutes at 100,000 files.
    let mut read: HashSet<&Path> = HashSet::from([main]);
    let unique: Vec<&Path> = includes
        .iter()
        .map(PathBuf::as_path)
        .filter(|include| read.insert(include))
        .collect();
    let running_as = permissions::running_as();
    // Every included mapping, merged into the figment as one provider ([`Included`]),
    // and the file each came from.
    let mut included = Dict::new();
    let mut included_files: HashMap<String, Arc<Path>> = HashMap::new();
    let mut index_files = Vec::with_capacity(unique.len());
    // Read and parsed on every core, then taken in load order: the problems, the
    // duplicates and the digest are the same as one file after another.
    for (include, (file, parsed)) in unique.iter().zip(read_and_parse(&unique)) {
        // The file's name as shown is made only for a problem.
        let display = || include.display().to_string();
        // One `stat` for the permission check and the read's record.
        match file.stat {
            Some(stat)
                if permissions::nothing_to_find(
                    stat.mode,
                    stat.uid,
                    permissions::Kind::File,
                    running_as,
                ) => {}
            _ => report.check_private_file(include, &display()),
        }
        log.record(include, &file, false);
        let dict = match parsed {
            Ok(dict) => dict,
            Err(reason) => {
                report.problem_in(&display(), "", reason);
                continue;
            }
        };
        let mut names = Vec::new();
        let mut volatile = false;
        if let Some(mut mappings) = included_mappings(dict, include, &main_display, &mut report) {
            // One shared path for all the mappings of a file.
            let shared: Arc<Path> = Arc::from(*include);
            // A duplicate is reported and left out, so it cannot override the first
            // definition and add follow-on problems of its own.
            let duplicates = note_names(
                mappings.iter().map(|(name, _)| name),
                &shared,
                &mut mapping_files,
                &mut report,
            );
            if !duplicates.is_empty() {
                mappings.retain(|(name, _)| !duplicates.contains(name));
            }
            for (name, mapping) in mappings {
                volatile |= matches!(&mapping, Value::Dict(_, keys) if keys.contains_key("external_id_file"));
                included_files.insert(name.clone(), Arc::clone(&shared));
                names.push(name.clone());
                included.insert(name, mapping);
            }
        }
        index_files.push(IncludedFile {
            facts: file.facts(),
            names,
            volatile,
        });
        files.push(include.to_path_buf());
    }
    drop(unique);
    if env_overrides_mappings {
        if !included.is_empty() {
            let mut dict = Dict::new();
            dict.insert("mappings".to_owned(), Value::from(included));
            figment = figment.merge(Included(Mutex::new(Some(dict))));
        }
    } else if !included.is_empty() {
        match &mut mappings_aside {
            Some(Value::Dict(_, mappings)) => mappings.extend(included),
            // The main file's `mappings` is not a table: reported as such, and the
            // included mappings are left out as with figment's merge.
            Some(_) => {}
            None => mappings_aside = Some(Value::from(included)),
        }
    }
    report.included = included_files;
    #[cfg(any(test, feature = "test-util"))]
    seam::after_read();

    report.set_figment(figment.merge(env));
    if let Some(mappings) = mappings_aside {
        report.put_mappings(mappings);
    }
    Ok(Loaded {
        report,
        files,
        include_dirs,
        facts: HashMap::new(),
        included: index_files,
    })
}

/// The environment's overrides as a figment provider.
pub(super) fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|rest| env_var_kind(rest.as_str()) == EnvVarKind::Override)
        .split("__")
}

/// What a `CREDVEND_*` environment variable is to credvend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EnvVarKind {
    /// `CREDVEND_CONFIG`: the config file's path, read by the CLI.
    ConfigPath,
    /// A config override: its path is checked like a file's keys, so a misspelt key
    /// is a problem naming the variable.
    Override,
    /// Not credvend's (a script's `CREDVEND_BIN`): ignored, with a warning naming it.
    Unrelated,
}

/// Classifies a variable by its name after `CREDVEND_` (case-insensitive, as the
/// override keys are): the config path; an override when it has the level separator
/// `__` (`SERVER__LISTEN`, also a misspelt `SEVRER__LISTEN`: the separator says it was
/// meant as an override) or is a top-level key by itself (`INCLUDE`); else unrelated.
pub(super) fn env_var_kind(rest: &str) -> EnvVarKind {
    let rest = rest.trim();
    if rest.eq_ignore_ascii_case(&CONFIG_PATH_VAR[ENV_PREFIX.len()..]) {
        EnvVarKind::ConfigPath
    } else if rest.contains("__") || TOP_LEVEL_KEYS.iter().any(|k| rest.eq_ignore_ascii_case(k)) {
        EnvVarKind::Override
    } else {
        EnvVarKind::Unrelated
    }
}

/// Warns about each `CREDVEND_*` variable that is neither the config path nor an
/// override ([`env_var_kind`]); one that starts like a section (`CREDVEND_LOG_LEVEL`)
/// gets the override it probably meant.
pub(super) fn warn_unrelated_env_vars(report: &mut Report) {
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            name.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| env_var_kind(rest) == EnvVarKind::Unrelated)
        })
        .collect();
    names.sort();
    for name in names {
        let rest = &name[ENV_PREFIX.len()..];
        let meant = TOP_LEVEL_KEYS.iter().find_map(|section| {
            let head = rest.get(..section.len())?;
            let key = rest.get(section.len()..)?.strip_prefix('_')?;
            (head.eq_ignore_ascii_case(section) && !key.is_empty())
                .then(|| format!("{ENV_PREFIX}{}__{key}", section.to_ascii_uppercase()))
        });
        let hint = match meant {
            Some(meant) => format!(
                "; to override a key, separate the levels with a double underscore \
                 (`{meant}`?)"
            ),
            None => String::new(),
        };
        report.warn_in(
            &format!("environment variable {name}"),
            "",
            format!(
                "ignored: not a configuration override (those are \
                 {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}SERVER__LISTEN){hint}"
            ),
        );
    }
}

/// Parses one TOML file into an untagged dictionary (the figment assigns tags).
pub(super) fn read_toml(path: &Path, log: &mut ReadLog<'_>) -> Result<Dict, String> {
    let text = log.read(path).map_err(read_error)?;
    parse_toml(&text)
}

/// The reason given for a file that cannot be read.
fn read_error(e: std::io::Error) -> String {
    format!("cannot read file: {e}")
}

/// One file's text as an untagged dictionary, or why it does not parse.
fn parse_toml(text: &str) -> Result<Dict, String> {
    toml::from_str::<Dict>(text).map_err(|e| without_snippet(&e.to_string()))
}

/// At most this many threads read and parse the included files.
const READ_THREADS: usize = 4;

/// Below this many files, one thread reads them all (a thread costs more than it earns).
const PARALLEL_FROM: usize = 256;

/// Reads and parses `paths` ([`FileRead::of`], [`parse_toml`]), split in contiguous
/// parts over up to [`READ_THREADS`] threads (the cores there are), the results in
/// `paths`' order: at 100,000 included files, reading and parsing them was most of
/// the start-up, on one core.
pub(super) fn read_and_parse(paths: &[&Path]) -> Vec<(FileRead, Result<IncludedTables, String>)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(READ_THREADS);
    let threads = if paths.len() < PARALLEL_FROM {
        1
    } else {
        threads
    };
    read_and_parse_on(paths, threads)
}

/// [`read_and_parse`] on `threads` threads (this one and `threads - 1` helpers).
fn read_and_parse_on(
    paths: &[&Path],
    threads: usize,
) -> Vec<(FileRead, Result<IncludedTables, String>)> {
    let work = |part: &[&Path]| -> Vec<(FileRead, Result<IncludedTables, String>)> {
        part.iter()
            .map(|path| {
                let (file, text) = FileRead::of(path);
                let parsed = text
                    .map_err(read_error)
                    .and_then(|text| parse_toml(&text))
                    .map(IncludedTables::of);
                (file, parsed)
            })
            .collect()
    };
    if threads < 2 || paths.is_empty() {
        return work(paths);
    }
    let part = paths.len().div_ceil(threads);
    // The helpers allocate from this thread's arena ([`crate::memory::share_arena`]).
    let arena = crate::memory::thread_arena();
    std::thread::scope(|scope| {
        let mut parts = paths.chunks(part);
        let first = parts.next().unwrap_or_default();
        let others: Vec<_> = parts
            .map(|part| {
                scope.spawn(move || {
                    if let Some(arena) = arena {
                        crate::memory::share_arena(arena);
                    }
                    work(part)
                })
            })
            .collect();
        let mut out = work(first);
        for other in others {
            match other.join() {
                Ok(results) => out.extend(results),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// toml's parse errors quote the offending source line; that line may be an
/// `external_id = "…"`, so only the position and the message are kept.
fn without_snippet(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .filter(|line| {
            let after_number = line.trim_start_matches(|c: char| c.is_ascii_digit());
            !after_number.trim_start().starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// One included file's parsed table, taken apart where it was parsed: its other
/// top-level keys (each a problem: an included file holds only mappings) and its
/// `[mappings.*]` tables as a list. Held for 100,000 files at once (read on every
/// core, then taken in order), the tables around the mappings would be two tree nodes
/// per file, ~120 MiB.
pub(super) struct IncludedTables {
    /// Every top-level key but `mappings`, in order.
    others: Vec<String>,
    /// `mappings`: its tables by name in order, or `Err` when it is not a table.
    mappings: Option<Result<Vec<(String, Value)>, ()>>,
}

impl IncludedTables {
    pub(super) fn of(dict: Dict) -> Self {
        let mut others = Vec::new();
        let mut mappings = None;
        for (key, value) in dict {
            if key == "mappings" {
                mappings = Some(match value {
                    Value::Dict(_, tables) => Ok(tables.into_iter().collect()),
                    _ => Err(()),
                });
            } else {
                others.push(key);
            }
        }
        Self { others, mappings }
    }
}

/// The `[mappings.*]` tables of one included file's parsed table, by name; any other
/// key is a problem (an included file may hold only mappings).
pub(super) fn included_mappings(
    tables: IncludedTables,
    file: &Path,
    main_display: &str,
    report: &mut Report,
) -> Option<Vec<(String, Value)>> {
    let display = || file.display().to_string();
    for key in tables.others {
        let reason = if TOP_LEVEL_KEYS.contains(&key.as_str()) {
            format!(
                "only [mappings.*] tables may appear in an included file; \
                 move `{key}` to {main_display}"
            )
        } else {
            "unknown key; an included file may hold only [mappings.*] tables".to_owned()
        };
        report.problem_in(&display(), &key, reason);
    }
    match tables.mappings? {
        Ok(mappings) => Some(mappings),
        Err(()) => {
            report.problem_in(
                &display(),
                "mappings",
                "must be a table of [mappings.<name>] tables",
            );
            None
        }
    }
}

/// Records which file defines each mapping; a second definition is a problem naming
/// both. Returns the names already defined elsewhere.
fn note_mappings(
    dict: &Dict,
    file: &Arc<Path>,
    seen: &mut HashMap<String, Arc<Path>>,
    report: &mut Report,
) -> Vec<String> {
    match dict.get("mappings") {
        Some(Value::Dict(_, mappings)) => note_names(mappings.keys(), file, seen, report),
        _ => Vec::new(),
    }
}

/// [`note_mappings`] for a file's table of mappings.
fn note_names<'a>(
    names: impl Iterator<Item = &'a String>,
    file: &Arc<Path>,
    seen: &mut HashMap<String, Arc<Path>>,
    report: &mut Report,
) -> Vec<String> {
    let mut duplicates = Vec::new();
    for name in names {
        if let Some(first) = seen.get(name) {
            let first = first.display();
            report.problem_in(
                &file.display().to_string(),
                &format!("mappings.{name}"),
                format!(
                    "mapping `{name}` is already defined in {first}; \
                     each mapping must be defined in exactly one file"
                ),
            );
            duplicates.push(name.clone());
        } else {
            seen.insert(name.clone(), Arc::clone(file));
        }
    }
    duplicates
}

/// Expands the `include` globs into files, in order, each glob's matches sorted. Also
/// returns the directories the globs look in (watched for new drop-in files), and notes
/// each of them with its file-name pattern in `sources`.
pub(super) fn resolve_includes(
    main: &Path,
    report: &mut Report,
    sources: &mut Sources,
) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let Some(value) = report.lookup(&["include"]).cloned() else {
        return (Vec::new(), Vec::new());
    };
    let patterns = match value.deserialize::<OneOrMany>() {
        Ok(list) => list.0,
        Err(e) => {
            report.problem(&["include"], e.kind.to_string());
            return (Vec::new(), Vec::new());
        }
    };
    let base_dir = main.parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    let mut dirs = Vec::new();
    for pattern in patterns {
        let full = if Path::new(&pattern).is_absolute() || base_dir.as_os_str().is_empty() {
            pattern.clone()
        } else {
            // Escape the directory: a `[` in a path must not become a glob class.
            format!(
                "{}/{pattern}",
                glob::Pattern::escape(&base_dir.to_string_lossy())
            )
        };
        // The directory a glob looks in, when only its last component has wildcards
        // (`mappings.d/*.toml`): a file created there later must trigger a reload.
        let full_path = Path::new(&pattern);
        let dir = if full_path.is_absolute() {
            full_path.parent().map(Path::to_path_buf)
        } else {
            full_path.parent().map(|p| base_dir.join(p))
        };
        let dir = dir.filter(|d| !d.to_string_lossy().contains(['*', '?', '[']));
        if let Some(dir) = &dir {
            if let Some(name) = full_path.file_name() {
                sources
                    .include_globs
                    .push((dir.clone(), name.to_string_lossy().into_owned()));
            }
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        let paths = match glob::glob(&full) {
            Ok(paths) => paths,
            Err(e) => {
                report.problem(&["include"], format!("bad glob `{pattern}`: {e}"));
                continue;
            }
        };
        let fast = match (&dir, full_path.file_name().and_then(|n| n.to_str())) {
            (Some(dir), Some(name)) if name.contains(['*', '?', '[']) => matches_in(dir, name),
            _ => None,
        };
        let mut matched = Vec::new();
        // The directory's listing comes sorted (by name, the paths' order in one
        // directory); `glob`'s matches are sorted here.
        let sorted = fast.is_some();
        if let Some(fast) = fast {
            matched = fast;
        } else {
            for entry in paths {
                match entry {
                    Ok(path) if path.is_file() => matched.push(path),
                    Ok(_) => {}
                    Err(e) => {
                        report.problem(&["include"], format!("cannot read `{pattern}`: {e}"));
                    }
                }
            }
        }
        // An empty drop-in directory is normal; a named file that is missing is a typo.
        let is_literal = !pattern.contains(['*', '?', '[']);
        if is_literal && matched.is_empty() {
            report.problem(
                &["include"],
                format!("included file `{full}` does not exist"),
            );
        }
        if !sorted {
            matched.sort();
        }
        out.extend(matched);
    }
    (out, dirs)
}

/// The files in `dir` whose name matches the glob `name`, as `glob::glob` on
/// `dir/name` finds them (`*` matches a leading dot too, a symlink counts when it leads
/// to a file), for a glob whose wildcards are all in its last component. One directory
/// read, and a `stat` only for a symlink: `glob` and `is_file` take a `stat` per file,
/// a few hundred milliseconds at 100,000 files. `None` when this cannot say the same
/// as `glob` would (a `.` or `..` in `dir`, a name not UTF-8, an unreadable directory):
/// the caller asks `glob`.
fn matches_in(dir: &Path, name: &str) -> Option<Vec<PathBuf>> {
    use std::path::Component;
    let plain = dir
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::RootDir));
    let canonical: PathBuf = dir.components().collect();
    if !plain || canonical.as_os_str() != dir.as_os_str() {
        return None;
    }
    let pattern = glob::Pattern::new(name).ok()?;
    let options = glob::MatchOptions::new();
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let file_name = entry.file_name().into_string().ok()?;
        if !pattern.matches_with(&file_name, options) {
            continue;
        }
        let file_type = entry.file_type().ok()?;
        let is_file = if file_type.is_symlink() {
            dir.join(&file_name).is_file()
        } else {
            file_type.is_file()
        };
        if is_file {
            names.push(file_name);
        }
    }
    // In one directory, the order of the paths is their names' (sorted as strings,
    // much cheaper than comparing paths component by component).
    names.sort_unstable();
    Some(names.into_iter().map(|name| dir.join(name)).collect())
}

/// A test seam: a hook run once, on the thread loading, after every file was read and
/// before validation — where an edit lands "during a reload".
#[cfg(any(test, feature = "test-util"))]
pub(super) mod seam {
    use std::cell::RefCell;

    type Hook = Box<dyn FnOnce()>;

    thread_local! {
        static AFTER_READ: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Runs `hook` at the next load's `after_read` on this thread.
    pub fn set_after_read(hook: Hook) {
        AFTER_READ.with(|h| *h.borrow_mut() = Some(hook));
    }

    pub(super) fn after_read() {
        if let Some(hook) = AFTER_READ.with(|h| h.borrow_mut().take()) {
            hook();
        }
    }
}

/// A parsed TOML file as a figment provider whose metadata names the file, so values
/// from it are attributed to it.
///
/// figment asks a provider for its data once, when it is merged, and the provider is
/// dropped right after; the data is handed over rather than copied ([`take_once`]): with
/// 100,000 mappings in one file, a copy is a few hundred MiB of transient heap.
pub(super) struct TomlFile {
    path: PathBuf,
    dict: Mutex<Option<Dict>>,
}

impl TomlFile {
    pub(super) fn new(path: &Path, dict: Dict) -> Self {
        Self {
            path: path.to_path_buf(),
            dict: Mutex::new(Some(dict)),
        }
    }
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        take_once(&self.dict)
    }
}

/// A provider's data, moved out on figment's one call ([`TomlFile`]). A second call is a
/// bug, and an error rather than an empty table that would read as "nothing configured".
#[allow(clippy::result_large_err)] // figment's `Provider::data` return type
fn take_once(dict: &Mutex<Option<Dict>>) -> Result<Map<Profile, Dict>, figment::Error> {
    let taken = dict
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    match taken {
        Some(dict) => Ok(Profile::Default.collect(dict)),
        None => Err(figment::Error::from(
            "a configuration provider's data was asked for twice".to_owned(),
        )),
    }
}

/// The metadata name of [`Included`].
const INCLUDED: &str = "included TOML files";

/// The mappings of every included file as one figment provider. figment merges a
/// provider by rebuilding the merged map, so merging each included file on its own
/// was quadratic (minutes at 100,000 files); the file a mapping's values came from is
/// kept in [`Report::included`] instead of in figment's per-provider metadata.
/// Its data is handed over like [`TomlFile`]'s.
pub(super) struct Included(pub(super) Mutex<Option<Dict>>);

impl Provider for Included {
    fn metadata(&self) -> Metadata {
        Metadata::named(INCLUDED)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        take_once(&self.0)
    }
}

/// Every distinct tag in `value`'s tree (a handful: one per provider).
fn collect_tags(value: &Value, tags: &mut BTreeSet<Tag>) {
    tags.insert(value.tag());
    match value {
        Value::Dict(_, dict) => dict.values().for_each(|v| collect_tags(v, tags)),
        Value::Array(_, array) => array.iter().for_each(|v| collect_tags(v, tags)),
        _ => {}
    }
}

/// Collects problems and warnings, attributing each to where its value came from.
pub(super) struct Report {
    /// The included file that defined each mapping it has ([`Included`]).
    pub(super) included: HashMap<String, Arc<Path>>,
    /// The metadata of every provider a value in `root` came from, by the values' tag.
    /// The figment itself is not kept: it holds a second copy of the whole tree.
    metadata: BTreeMap<Tag, Metadata>,
    root: Value,
    /// The main file, as given.
    main_file: PathBuf,
    main: String,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Report {
    pub(super) fn new(figment: Figment, main_file: &Path, main: String) -> Self {
        let mut report = Self {
            included: HashMap::new(),
            metadata: BTreeMap::new(),
            root: Value::from(Dict::new()),
            main_file: main_file.to_path_buf(),
            main,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        report.set_figment(figment);
        report
    }

    /// Takes the merged tree out of `figment` and keeps only the metadata its values'
    /// tags name; the figment (and its copy of the tree) is dropped.
    pub(super) fn set_figment(&mut self, figment: Figment) {
        match figment.find_value("") {
            Ok(root) => self.root = root,
            // Only a provider error lands here; ours never fail, the Env provider
            // neither, so this is a bug guard rather than an expected path.
            Err(e) => self.problem_in(&self.main.clone(), "", e.kind.to_string()),
        }
        let mut tags = BTreeSet::new();
        collect_tags(&self.root, &mut tags);
        self.metadata = tags
            .into_iter()
            .filter_map(|tag| Some((tag, figment.get_metadata(tag)?.clone())))
            .collect();
    }

    /// Puts `mappings` into the merged tree as its `mappings` table, moved, not copied
    /// (the mappings set aside from figment in [`load`]).
    fn put_mappings(&mut self, mappings: Value) {
        if let Value::Dict(_, root) = &mut self.root {
            root.insert("mappings".to_owned(), mappings);
        }
    }

    fn get_metadata(&self, tag: Tag) -> Option<&Metadata> {
        self.metadata.get(&tag)
    }

    /// The merged value at `path` (exact keys: mapping names may contain dots).
    pub fn lookup(&self, path: &[&str]) -> Option<&Value> {
        let mut value = &self.root;
        for key in path {
            value = value.as_dict()?.get(*key)?;
        }
        Some(value)
    }

    /// The deepest value present along `path`, with its depth.
    fn deepest(&self, path: &[&str]) -> (usize, &Value) {
        let mut value = &self.root;
        let mut depth = 0;
        for key in path {
            match value.as_dict().and_then(|d| d.get(*key)) {
                Some(next) => {
                    value = next;
                    depth += 1;
                }
                None => break,
            }
        }
        (depth, value)
    }

    /// The main config file.
    pub fn main_file(&self) -> &Path {
        &self.main_file
    }

    /// The file a value at `path` came from, if it came from a file.
    pub fn origin_file(&self, path: &[&str]) -> Option<PathBuf> {
        let (_, value) = self.deepest(path);
        let Some(metadata) = self.get_metadata(value.tag()) else {
            // A mapping put in beside figment: its included file, or the main file.
            return Some(
                self.included_file(path)
                    .map_or_else(|| self.main_file.clone(), Path::to_path_buf),
            );
        };
        if metadata.name == INCLUDED {
            return self.included_file(path).map(Path::to_path_buf);
        }
        metadata.source.as_ref()?.file_path().map(Path::to_path_buf)
    }

    /// For a value under `mappings.<name>` that came from an included file, that file.
    fn included_file(&self, path: &[&str]) -> Option<&Path> {
        match path {
            ["mappings", name, ..] => self.included.get(*name).map(|file| &**file),
            _ => None,
        }
    }

    /// Human-readable origin: file path, `environment variable CREDVEND_…`, or the main
    /// file when the value is absent (a default) or its origin unknown.
    pub fn origin(&self, path: &[&str]) -> String {
        let (depth, value) = self.deepest(path);
        if depth == 0 {
            return self.main.clone();
        }
        match self.get_metadata(value.tag()) {
            Some(Metadata {
                source: Some(Source::File(file)),
                ..
            }) => file.display().to_string(),
            // `None`: a mapping put in beside figment ([`Report::put_mappings`]).
            Some(Metadata { name, .. }) if name == INCLUDED => self
                .included_file(path)
                .map_or_else(|| self.main.clone(), |file| file.display().to_string()),
            None => self
                .included_file(path)
                .map_or_else(|| self.main.clone(), |file| file.display().to_string()),
            Some(metadata) if metadata.name.contains("environment") => {
                let var: Vec<String> = path[..depth]
                    .iter()
                    .map(|k| k.to_ascii_uppercase())
                    .collect();
                let var = format!("{ENV_PREFIX}{}", var.join("__"));
                // A table made from variables below it (an unknown section
                // `CREDVEND_SEVRER__LISTEN`): name those variables.
                let mut below: Vec<String> = std::env::vars_os()
                    .filter_map(|(name, _)| name.into_string().ok())
                    .filter(|name| {
                        name.to_ascii_uppercase()
                            .strip_prefix(&var)
                            .is_some_and(|rest| rest.starts_with("__"))
                    })
                    .collect();
                below.sort();
                if below.is_empty() {
                    format!("environment variable {var}")
                } else {
                    format!("environment variable {}", below.join(", "))
                }
            }
            _ => self.main.clone(),
        }
    }

    pub fn problem(&mut self, path: &[&str], reason: impl Into<String>) {
        let file = self.origin(path);
        self.problem_in(&file, &path.join("."), reason);
    }

    pub fn problem_in(&mut self, file: &str, key: &str, reason: impl Into<String>) {
        self.problems.push(Problem {
            file: file.to_owned(),
            key: key.to_owned(),
            reason: reason.into(),
        });
    }

    pub fn warn(&mut self, path: &[&str], reason: impl Into<String>) {
        let file = self.origin(path);
        self.warn_in(&file, &path.join("."), reason);
    }

    pub fn warn_in(&mut self, file: &str, key: &str, reason: impl Into<String>) {
        self.warnings.push(Problem {
            file: file.to_owned(),
            key: key.to_owned(),
            reason: reason.into(),
        });
    }

    /// Checks who else could change or read the config file `path`
    /// ([`permissions`]): a problem when another user could write it, a warning when
    /// group or others can read it (config files hold External IDs).
    pub fn check_private_file(&mut self, path: &Path, file: &str) {
        self.check_private(path, file, "");
    }

    /// [`Report::check_private_file`] for a file named by `key` (an External ID file:
    /// nothing but a secret), attributed to `file`, where the key was set.
    pub fn check_private(&mut self, path: &Path, file: &str, key: &str) {
        self.check_permissions(path, permissions::Kind::File, file, key);
    }

    pub(super) fn check_permissions(
        &mut self,
        path: &Path,
        kind: permissions::Kind,
        file: &str,
        key: &str,
    ) {
        let found = permissions::inspect(path, kind);
        for reason in found.problems {
            self.problem_in(file, key, reason);
        }
        for reason in found.warnings {
            self.warn_in(file, key, reason);
        }
    }

    /// Deserializes the table at `path` into `T`, reporting every problem rather than
    /// the first: after each serde error the offending key is dropped and the table is
    /// decoded again, so an unknown key and a mistyped value in one table both appear.
    /// Returns `T` (with the broken keys left at their defaults) and the broken keys, so
    /// validation does not add "missing" problems for keys already reported as wrong.
    pub fn decode<T: DeserializeOwned + Default>(
        &mut self,
        path: &[&str],
    ) -> Option<(T, BTreeSet<String>)> {
        let mut broken = BTreeSet::new();
        // Common case first: the table decodes as it is, straight from the merged tree.
        if let Some(value @ Value::Dict(..)) = self.lookup(path)
            && let Ok(decoded) = value.deserialize::<T>()
        {
            return Some((decoded, broken));
        }
        let (tag, mut dict) = match self.lookup(path) {
            None => return Some((T::default(), broken)),
            Some(Value::Dict(tag, dict)) => (*tag, dict.clone()),
            Some(_) => {
                self.problem(path, "must be a table");
                return None;
            }
        };
        loop {
            let err = match Value::Dict(tag, dict.clone()).deserialize::<T>() {
                Ok(value) => return Some((value, broken)),
                Err(err) => err,
            };
            let mut progressed = false;
            for e in err {
                let mut full: Vec<&str> = path.to_vec();
                full.extend(e.path.iter().map(String::as_str));
                let reason = describe(&e.kind, &full);
                self.problem(&full, reason);
                if let Some(first) = e.path.first() {
                    progressed |= dict.remove(first).is_some();
                    broken.insert(first.clone());
                }
            }
            if !progressed {
                return None;
            }
        }
    }

    /// Finishes: `Ok(warnings)` when no problem was found.
    pub fn finish(self) -> Result<Vec<String>, ConfigError> {
        if self.problems.is_empty() {
            Ok(self.warnings.iter().map(Problem::to_string).collect())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

/// A serde error as a reason. Values under `external_id` are never echoed.
fn describe(kind: &figment::error::Kind, path: &[&str]) -> String {
    use figment::error::Kind;
    match kind {
        Kind::UnknownField(_, expected) => {
            format!("unknown key; expected one of: {}", expected.join(", "))
        }
        _ if path.contains(&"external_id") => {
            "must be a string (value not shown: External IDs are secret)".to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod provider_tests {
    use super::*;

    /// The one-directory-read listing of an include glob finds what `glob` finds:
    /// dot files, symlinks to files (not broken ones, not directories), classes.
    #[test]
    fn an_include_directory_listing_matches_what_glob_finds() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("credvend-glob-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub.toml")).unwrap();
        for name in [
            "a.toml",
            "b.toml",
            ".hidden.toml",
            "c.txt",
            "[x].toml",
            "ab.toml",
        ] {
            fs::write(dir.join(name), "").unwrap();
        }
        symlink(dir.join("a.toml"), dir.join("link.toml")).unwrap();
        symlink(dir.join("missing"), dir.join("broken.toml")).unwrap();
        symlink(dir.join("sub.toml"), dir.join("dirlink.toml")).unwrap();
        for name in [
            "*.toml",
            "?.toml",
            "[ab].toml",
            "*",
            "a*",
            "*.t?ml",
            "[!a]*.toml",
        ] {
            let mut fast = matches_in(&dir, name).expect("a plain directory");
            fast.sort();
            let full = format!("{}/{name}", dir.display());
            let mut slow: Vec<PathBuf> = glob::glob(&full)
                .unwrap()
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            slow.sort();
            assert_eq!(fast, slow, "{name}");
        }
        assert_eq!(matches_in(&dir.join("../x"), "*.toml"), None);
        assert_eq!(matches_in(&dir.join("./x"), "*.toml"), None);
        let _ = fs::remove_dir_all(&dir);
    }

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("credvend-{label}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A file is read whole, as `fs::read_to_string` reads it, though only up to the
    /// size its `stat` gives (no read for the end of the file): empty, small, larger
    /// than any first guess, not UTF-8 (the same error), missing (no `stat`).
    #[test]
    fn a_file_is_read_whole_up_to_its_stat_size_as_fs_reads_it() {
        let dir = Scratch::new("fileread");
        let big: String = (0..20_000).map(|i| format!("{i:05}\n")).collect();
        for (name, bytes) in [
            ("empty.toml", Vec::new()),
            ("one.toml", b"x".to_vec()),
            ("small.toml", b"[mappings.a]\nrole_arn = \"r\"\n".to_vec()),
            ("big.toml", big.clone().into_bytes()),
            ("latin1.toml", b"name = \"caf\xe9\"\n".to_vec()),
        ] {
            let path = dir.0.join(name);
            fs::write(&path, &bytes).unwrap();
            let (read, text) = FileRead::of(&path);
            let stat = read.stat.expect("a stat");
            assert_eq!(stat.size, bytes.len() as u64, "{name}");
            match fs::read_to_string(&path) {
                Ok(expected) => {
                    assert_eq!(text.as_deref().ok(), Some(expected.as_str()), "{name}");
                    let digest: [u8; 32] = Sha256::digest(&bytes).into();
                    assert_eq!(read.digest, Ok(digest), "{name}");
                    assert_eq!(read.facts().map(|f| f.digest), Some(digest), "{name}");
                }
                Err(expected) => {
                    let error = text.expect_err(name);
                    assert_eq!(error.kind(), expected.kind(), "{name}");
                    assert_eq!(error.to_string(), expected.to_string(), "{name}");
                    assert_eq!(read.digest, Err(expected.kind()), "{name}");
                    assert!(read.facts().is_none(), "{name}");
                }
            }
        }
        let (read, text) = FileRead::of(&dir.0.join("missing.toml"));
        assert_eq!(text.unwrap_err().kind(), std::io::ErrorKind::NotFound);
        assert!(read.stat.is_none());
        assert_eq!(read.digest, Err(std::io::ErrorKind::NotFound));
    }

    /// Read on several threads, the included files come back in their order with what
    /// one thread finds: the problems, the duplicates and the digest of a load follow
    /// from that order.
    #[test]
    fn included_files_read_on_several_threads_come_back_in_order() {
        let dir = Scratch::new("parallel");
        let mut paths = Vec::new();
        for i in 0..41 {
            let path = dir.0.join(format!("m{i:03}.toml"));
            let text = match i {
                7 => "[mappings.m007\nbroken".to_owned(),
                19 => "server = 1\n[mappings.m019]\nrole_arn = \"r\"\n".to_owned(),
                // Never written: cannot be read.
                30 => {
                    paths.push(path);
                    continue;
                }
                _ => format!("[mappings.m{i:03}]\nrole_arn = \"r{i}\"\n"),
            };
            fs::write(&path, text).unwrap();
            paths.push(path);
        }
        let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let summary = |results: Vec<(FileRead, Result<IncludedTables, String>)>| {
            results
                .into_iter()
                .map(|(read, parsed)| {
                    let parsed = parsed.map(|tables| {
                        let names: Vec<String> = match tables.mappings {
                            Some(Ok(mappings)) => mappings.into_iter().map(|(n, _)| n).collect(),
                            _ => Vec::new(),
                        };
                        (tables.others, names)
                    });
                    (read.digest, read.stat.map(|s| s.ino), parsed)
                })
                .collect::<Vec<_>>()
        };
        let one = summary(read_and_parse_on(&paths, 1));
        assert_eq!(one.len(), 41);
        for (i, (_, _, parsed)) in one.iter().enumerate() {
            match i {
                7 => assert!(parsed.is_err(), "{parsed:?}"),
                30 => assert!(
                    parsed
                        .as_ref()
                        .is_err_and(|e| e.starts_with("cannot read file")),
                    "{parsed:?}"
                ),
                19 => assert_eq!(
                    parsed,
                    &Ok((vec!["server".to_owned()], vec!["m019".to_owned()]))
                ),
                _ => assert_eq!(parsed, &Ok((Vec::new(), vec![format!("m{i:03}")]))),
            }
        }
        for threads in [2, 3, 4, 40, 41, 100] {
            assert_eq!(
                summary(read_and_parse_on(&paths, threads)),
                one,
                "{threads} threads"
            );
        }
    }

    /// The index keeps a path as its directory (once) and its name, and gives back the
    /// same path: in the root, relative, nested.
    #[test]
    fn the_index_keeps_a_path_as_its_directory_and_name_and_gives_it_back() {
        let record = |n: u64| FileRecord {
            stat: n,
            digest: [0; 16],
            racy: false,
            volatile: false,
            mappings: FileMappings::default(),
        };
        let paths = [
            "/a.toml",
            "b.toml",
            "d/a.toml",
            "/etc/credvend/mappings.d/a.toml",
            "/etc/credvend/mappings.d/b.toml",
            "/etc/credvend/other.d/a.toml",
        ];
        let mut index = IncludedIndex::default();
        for (n, path) in paths.iter().enumerate() {
            index.insert(Path::new(path), record(n as u64));
        }
        assert_eq!(index.len(), paths.len());
        assert_eq!(index.dirs.len(), 5, "{:?}", index.dirs);
        for (n, path) in paths.iter().enumerate() {
            assert_eq!(
                index.get(Path::new(path)).map(|r| r.stat),
                Some(n as u64),
                "{path}"
            );
        }
        assert!(index.get(Path::new("/etc/credvend/c.toml")).is_none());
        assert!(index.get(Path::new("a.toml")).is_none());
        let mut listed: Vec<(PathBuf, u64)> = index.iter().map(|(p, r)| (p, r.stat)).collect();
        listed.sort_by_key(|(_, n)| *n);
        let expected: Vec<(PathBuf, u64)> = paths
            .iter()
            .enumerate()
            .map(|(n, p)| (PathBuf::from(p), n as u64))
            .collect();
        assert_eq!(listed, expected);
        assert_eq!(index.remove(Path::new("d/a.toml")).map(|r| r.stat), Some(2));
        assert!(index.get(Path::new("d/a.toml")).is_none());
        assert_eq!(index.len(), paths.len() - 1);
    }

    /// A file's mappings, kept as their names and folded token hashes, give back the
    /// names in order and a fold per hash; hand-written hashes that differ only in
    /// their last bytes fold apart.
    #[test]
    fn a_files_mappings_keep_their_names_and_folded_token_hashes() {
        use crate::secret::TokenHash;
        let hash = |last: u8| {
            let mut bytes = [0u8; 32];
            bytes[31] = last;
            TokenHash(bytes)
        };
        let (one, two, three) = ([hash(1)], [hash(2), hash(3)], []);
        let mappings = FileMappings::new([
            ("acme-1", &one[..]),
            ("b.2", &two[..]),
            ("no_tokens", &three[..]),
        ]);
        assert_eq!(
            mappings.names().collect::<Vec<_>>(),
            ["acme-1", "b.2", "no_tokens"]
        );
        let folded: Vec<u64> = mappings.tokens().collect();
        assert_eq!(
            folded,
            [
                folded_token(&hash(1)),
                folded_token(&hash(2)),
                folded_token(&hash(3))
            ]
        );
        let distinct: HashSet<u64> = folded.iter().copied().collect();
        assert_eq!(distinct.len(), 3, "{folded:?}");
        let empty = FileMappings::new([]);
        assert_eq!(empty.names().count(), 0);
        assert_eq!(empty.tokens().count(), 0);
    }

    /// The parsed tree is moved into figment, not copied (a copy of 100,000 mappings is
    /// a few hundred MiB of transient heap), and a second request is an error rather
    /// than an empty table that would read as "nothing configured".
    #[test]
    fn a_provider_hands_its_tree_over_once() {
        let mut dict = Dict::new();
        dict.insert("include".to_owned(), Value::from("a.toml"));
        let file = TomlFile::new(Path::new("/etc/credvend/credvend.toml"), dict);
        let first = file.data().expect("the first call has the data");
        assert_eq!(first[&Profile::Default]["include"].as_str(), Some("a.toml"));
        let second = file.data().expect_err("the data was handed over");
        assert!(second.to_string().contains("asked for twice"), "{second}");
        assert!(file.dict.lock().unwrap().is_none(), "no copy kept");

        let included = Included(Mutex::new(Some(Dict::new())));
        assert!(included.data().is_ok());
        assert!(included.data().is_err());
    }
}
