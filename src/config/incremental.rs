//! Reloading only what changed (docs/design.md, Reload).
//!
//! A valid read leaves a [`LoadIndex`]: per included file, what `stat` said of it, the
//! digest of its bytes, and the mappings it defined with their token hashes. The next
//! reload ([`read_changes`]) reads the main file again (it is small when the mappings
//! are in included files), looks at every included file with `stat` only, and reads,
//! parses and validates just the files that appeared, changed, or whose change `stat`
//! cannot rule out ([`FileStat::racy`]); files gone remove their mappings. The result
//! is what changed ([`ConfigChanges`]): the mappings of the files read again, and the
//! names gone.
//!
//! The checks across files still hold: a name or token hash of a re-read file that an
//! unchanged file (or the main file) also has, like any problem at all, sends the reload
//! to the full read ([`super::Config::read`]), which reports every problem with its file,
//! key and reason as a start-up would. So do a changed main file or environment, and an
//! environment override of a mapping's key (it applies across files). A file whose
//! mapping reads an `external_id_file` is read again at every reload: that file's bytes
//! are in no digest.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use figment::Figment;
use figment::value::{Dict, Value};
use sha2::{Digest, Sha256};

use super::Config;
use super::load::{
    self, FileFacts, FileRecord, FileStat, Included, LoadIndex, ReadLog, Report, Sources, TomlFile,
    unix_nanos,
};
use super::permissions;
use super::validate;
use crate::secret::TokenHash;

type Owned = Vec<(Box<str>, Box<[TokenHash]>)>;

/// The main file's part of a [`LoadIndex`]: its bytes, mode and owner.
fn main_key(facts: &FileFacts) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(facts.digest);
    hasher.update(facts.stat.mode.to_be_bytes());
    hasher.update(facts.stat.uid.to_be_bytes());
    hasher.finalize().into()
}

/// The index of a valid read: `None` when the next reload cannot reuse it (a file whose
/// `stat` failed, an environment override of a mapping's key).
pub(super) fn index(
    report: &Report,
    config: &Config,
    facts: &HashMap<PathBuf, FileFacts>,
    main: &Path,
) -> Option<LoadIndex> {
    let main_facts = facts.get(main)?;
    let (env, overrides_mappings) = load::env_digest();
    if overrides_mappings {
        return None;
    }
    let mut per_file: HashMap<&Path, (Owned, bool)> = HashMap::new();
    let mut main_mappings = Vec::new();
    for (name, mapping) in &config.mappings {
        let entry = (
            Box::from(name.as_str()),
            mapping.token_sha256.clone().into_boxed_slice(),
        );
        match report.included.get(name) {
            Some(file) => {
                let (owned, volatile) = per_file.entry(&**file).or_default();
                owned.push(entry);
                *volatile |= report
                    .lookup(&["mappings", name, "external_id_file"])
                    .is_some();
            }
            None => main_mappings.push(entry),
        }
    }
    let mut files = HashMap::with_capacity(config.files.len());
    for file in config.files.iter().skip(1) {
        let facts = facts.get(file)?.clone();
        let (mappings, volatile) = per_file.remove(file.as_path()).unwrap_or_default();
        files.insert(
            file.clone(),
            FileRecord {
                facts,
                mappings: mappings.into_boxed_slice(),
                volatile,
            },
        );
    }
    Some(LoadIndex {
        main: main_key(main_facts),
        env,
        main_mappings: main_mappings.into_boxed_slice(),
        files,
    })
}

/// What a reload changed, against the configuration an index was taken of.
pub(crate) struct ConfigChanges {
    /// The settings (validated again) with the mappings of the files read again;
    /// `None` when no file with mappings was read again (the settings are the ones
    /// applied: the main file did not change).
    pub(crate) config: Option<Config>,
    /// Mappings gone: defined by a file that changed or went away, and by none now.
    pub(crate) removed: BTreeSet<String>,
    /// How many mappings the configuration has after the change.
    pub(crate) mappings: usize,
    /// What to change in the index once the change is applied.
    updates: Vec<(PathBuf, Option<FileRecord>)>,
}

impl ConfigChanges {
    /// Updates `index` to describe the configuration with this change applied.
    pub(crate) fn commit(self, index: &mut LoadIndex) {
        for (path, record) in self.updates {
            match record {
                Some(record) => index.files.insert(path, record),
                None => index.files.remove(&path),
            };
        }
    }
}

/// Reads what changed since `index` was taken. `Err` names why only a full read can
/// tell (its [`Sources`] are then incomplete: the caller reads in full).
pub(super) fn read_changes(
    main: &Path,
    index: &LoadIndex,
) -> (Sources, Result<ConfigChanges, &'static str>) {
    let mut sources = Sources {
        reread: Some(Vec::new()),
        ..Sources::default()
    };
    let mut log = ReadLog::new(&mut sources, true);
    let result = changes(main, index, &mut log);
    let digest = log.hasher.finalize().into();
    sources.digest = digest;
    (sources, result)
}

fn changes(
    main: &Path,
    index: &LoadIndex,
    log: &mut ReadLog<'_>,
) -> Result<ConfigChanges, &'static str> {
    let (env, overrides_mappings) = load::env_digest();
    if overrides_mappings || env != index.env {
        return Err("the environment changed");
    }
    let main_display = main.display().to_string();
    let text = log.read(main).map_err(|_| "the main file cannot be read")?;
    let main_facts = log.facts.get(main).ok_or("the main file has no stat")?;
    if main_key(main_facts) != index.main {
        return Err("the main file changed");
    }
    // The main file is the one applied: parsed whole only if a file of mappings is read
    // again (for its settings); `include` is found in its top-level keys, before its
    // first table (with all the mappings in the main file, a whole parse would cost
    // hundreds of MiB at every look).
    let include = load::include_of(&text).ok_or("the main file's include does not parse")?;
    let base = Figment::from(TomlFile::new(main, include)).merge(load::env_provider());
    let mut report = Report::new(base, main, main_display.clone());
    report.check_private_file(main, &main_display);
    load::warn_unrelated_env_vars(&mut report);

    let (includes, include_dirs) = load::resolve_includes(main, &mut report, log.sources);
    let origin = report.origin(&["include"]);
    for dir in &include_dirs {
        log.permissions(dir);
        report.check_permissions(dir, permissions::Kind::IncludeDirectory, &origin, "include");
    }

    let mut read: HashSet<&Path> = HashSet::from([main]);
    let mut updates: Vec<(PathBuf, Option<FileRecord>)> = Vec::new();
    // Names of the mappings of files read again or gone, as the index had them.
    let mut replaced: BTreeSet<String> = BTreeSet::new();
    // The mappings of the files read again, for one validation, and their files.
    let mut included = Dict::new();
    let mut included_files: HashMap<String, Arc<Path>> = HashMap::new();
    let mut reread: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for include in &includes {
        if !read.insert(include) {
            continue;
        }
        let record = index.files.get(include);
        let stat = FileStat::of(include);
        if let (Some(record), Some(stat)) = (record, stat)
            && !record.volatile
            && stat == record.facts.stat
        {
            let digest = if record.facts.stat.racy(record.facts.checked_at) {
                // `stat` cannot vouch for it: compare the bytes.
                let checked_at = unix_nanos(std::time::SystemTime::now());
                let bytes = std::fs::read(include).ok();
                if let Some(reread) = &mut log.sources.reread {
                    reread.push(include.clone());
                }
                let digest: Option<[u8; 32]> = bytes.map(|b| Sha256::digest(&b).into());
                if digest == Some(record.facts.digest) {
                    updates.push((
                        include.clone(),
                        Some(FileRecord {
                            facts: FileFacts {
                                stat,
                                digest: record.facts.digest,
                                checked_at,
                            },
                            ..record.clone()
                        }),
                    ));
                }
                digest.filter(|d| *d == record.facts.digest)
            } else {
                Some(record.facts.digest)
            };
            if let Some(digest) = digest {
                log.file_digest(include, Some(&digest), None);
                log.mode(stat.mode, stat.uid);
                log.sources.files.push(include.clone());
                continue;
            }
        }
        // New, changed, or not to be trusted: read and parse as a full read does.
        if let Some(record) = record {
            replaced.extend(record.mappings.iter().map(|(name, _)| name.to_string()));
        }
        let display = include.display().to_string();
        report.check_private_file(include, &display);
        let dict = match load::read_toml(include, log) {
            Ok(dict) => dict,
            Err(reason) => {
                report.problem_in(&display, "", reason);
                continue;
            }
        };
        let mut names = Vec::new();
        if let Some(mappings) = load::included_mappings(dict, &display, &main_display, &mut report)
        {
            let shared: Arc<Path> = Arc::from(include.as_path());
            for (name, mapping) in mappings {
                if included_files
                    .insert(name.clone(), Arc::clone(&shared))
                    .is_some()
                {
                    return Err("a mapping is defined in two files read again");
                }
                names.push(name.clone());
                included.insert(name, mapping);
            }
        }
        reread.push((include.clone(), names));
    }
    // Files gone.
    for (path, record) in &index.files {
        if !read.contains(path.as_path()) {
            replaced.extend(record.mappings.iter().map(|(name, _)| name.to_string()));
            updates.push((path.clone(), None));
        }
    }
    if !report.problems.is_empty() {
        return Err("a problem");
    }

    // The mappings kept as they were: counted, and (below) checked against the ones
    // read again, in one pass without building sets of them (100,000 inserts each).
    let kept = || {
        index
            .main_mappings
            .iter()
            .chain(index.files.values().flat_map(|r| r.mappings.iter()))
            .filter(|(name, _)| !replaced.contains(&**name))
    };
    let mappings = kept().count() + included.len();
    if mappings == 0 {
        return Err("no mappings left");
    }
    let config = if included.is_empty() {
        None
    } else {
        let without_mappings: Dict = toml::from_str::<Dict>(&text)
            .map_err(|_| "the main file does not parse")?
            .into_iter()
            .filter(|(key, _)| key.as_str() != "mappings")
            .collect();
        let mut dict = Dict::new();
        dict.insert("mappings".to_owned(), Value::from(included));
        let figment = Figment::from(TomlFile::new(main, without_mappings))
            .merge(Included(Mutex::new(Some(dict))))
            .merge(load::env_provider());
        // Every name read again, also one whose mapping has a problem.
        let report_names: HashSet<String> = included_files.keys().cloned().collect();
        report.included = included_files;
        report.set_figment(figment);
        let config = validate::build(&mut report, Vec::new(), include_dirs);
        let volatile: HashSet<String> = report
            .included
            .keys()
            .filter(|name| {
                report
                    .lookup(&["mappings", name, "external_id_file"])
                    .is_some()
            })
            .cloned()
            .collect();
        let warnings = report.finish().map_err(|_| "a problem")?;
        let mut config = config.ok_or("a problem")?;
        config.warnings = warnings;
        // The checks across files: a name or token hash of a mapping read again that
        // a mapping kept also has.
        let mut new_tokens: HashSet<&TokenHash> = HashSet::new();
        for mapping in config.mappings.values() {
            for token in &mapping.token_sha256 {
                if !new_tokens.insert(token) {
                    return Err("a token hash read again is also listed by another mapping");
                }
            }
        }
        for (name, tokens) in kept() {
            if config.mappings.contains_key(&**name) || report_names.contains(&**name) {
                return Err("a mapping read again is also defined in a file kept");
            }
            if tokens.iter().any(|token| new_tokens.contains(token)) {
                return Err("a token hash read again is also listed by another mapping");
            }
        }
        for (path, names) in &reread {
            let facts = log.facts.get(path).ok_or("a file read again has no stat")?;
            let owned: Owned = names
                .iter()
                .filter_map(|name| {
                    let mapping = config.mappings.get(name)?;
                    Some((
                        Box::from(name.as_str()),
                        mapping.token_sha256.clone().into_boxed_slice(),
                    ))
                })
                .collect();
            updates.push((
                path.clone(),
                Some(FileRecord {
                    facts: facts.clone(),
                    mappings: owned.into_boxed_slice(),
                    volatile: names.iter().any(|name| volatile.contains(name)),
                }),
            ));
        }
        Some(config)
    };
    if config.is_none() {
        // Files read again that define no mapping (an emptied file).
        for (path, _) in &reread {
            let facts = log.facts.get(path).ok_or("a file read again has no stat")?;
            updates.push((
                path.clone(),
                Some(FileRecord {
                    facts: facts.clone(),
                    mappings: Box::new([]),
                    volatile: false,
                }),
            ));
        }
    }
    let present: BTreeSet<&str> = config
        .iter()
        .flat_map(|c| c.mappings.keys().map(String::as_str))
        .collect();
    let removed: BTreeSet<String> = replaced
        .into_iter()
        .filter(|name| !present.contains(name.as_str()))
        .collect();
    Ok(ConfigChanges {
        config,
        removed,
        mappings,
        updates,
    })
}
