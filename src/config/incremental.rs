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
    self, FileFacts, FileMappings, FileRecord, FileStat, Included, IncludedFile, LoadIndex,
    ReadLog, Report, Sources, TomlFile, folded_token, unix_nanos,
};
use super::permissions;
use super::validate;
use crate::secret::TokenHash;

/// The main file's part of a [`LoadIndex`]: its bytes, mode and owner.
fn main_key(facts: &FileFacts) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(facts.digest);
    hasher.update(facts.stat.mode.to_be_bytes());
    hasher.update(facts.stat.uid.to_be_bytes());
    hasher.finalize().into()
}

/// The index of a valid read: `None` when the next reload cannot reuse it (a file whose
/// `stat` failed, an environment override of a mapping's key). `included` is what each
/// included file (`config.files` after the main file) was and defined, in that order.
pub(super) fn index(
    report: &Report,
    config: &Config,
    facts: &HashMap<PathBuf, FileFacts>,
    included: Vec<IncludedFile>,
    main: &Path,
) -> Option<LoadIndex> {
    let main_facts = facts.get(main)?;
    let (env, overrides_mappings) = load::env_digest();
    if overrides_mappings || included.len() + 1 != config.files.len() {
        return None;
    }
    let tokens_of = |name: &str| -> Option<&[TokenHash]> {
        Some(config.mappings.get(name)?.token_sha256.as_slice())
    };
    let main_mappings = config
        .mappings
        .iter()
        .filter(|(name, _)| !report.included.contains_key(*name))
        .map(|(name, mapping)| (name.as_str(), mapping.token_sha256.as_slice()));
    let mut index = LoadIndex::with_capacity(
        main_key(main_facts),
        env,
        FileMappings::new(main_mappings),
        included.len(),
    );
    for (file, included) in config.files.iter().skip(1).zip(included) {
        let mut mappings = Vec::with_capacity(included.names.len());
        for name in &included.names {
            mappings.push((name.as_str(), tokens_of(name)?));
        }
        index.files.insert(
            file,
            FileRecord::new(
                &included.facts?,
                FileMappings::new(mappings),
                included.volatile,
            ),
        );
    }
    Some(index)
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
                Some(record) => index.files.insert(&path, record),
                None => {
                    index.files.remove(&path);
                }
            }
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
    // Files of the index seen again: when all are, none is gone.
    let mut seen = 0;
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
        seen += usize::from(record.is_some());
        let stat = FileStat::of(include);
        if let (Some(record), Some(stat)) = (record, stat)
            && !record.volatile
            && stat.fold() == record.stat
        {
            let digest = if record.racy {
                // `stat` cannot vouch for it: compare the bytes.
                let checked_at = unix_nanos(std::time::SystemTime::now());
                let bytes = std::fs::read(include).ok();
                if let Some(reread) = &mut log.sources.reread {
                    reread.push(include.clone());
                }
                let digest: Option<[u8; 32]> = bytes.map(|b| Sha256::digest(&b).into());
                let same = digest.filter(|d| load::short(d) == record.digest);
                if let Some(digest) = same {
                    updates.push((
                        include.clone(),
                        Some(FileRecord::new(
                            &FileFacts {
                                stat,
                                digest,
                                checked_at,
                            },
                            record.mappings.clone(),
                            record.volatile,
                        )),
                    ));
                }
                same.map(|_| record.digest)
            } else {
                Some(record.digest)
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
            replaced.extend(record.mappings.names().map(str::to_owned));
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
        if let Some(mappings) = load::included_mappings(
            load::IncludedTables::of(dict),
            include,
            &main_display,
            &mut report,
        ) {
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
    if seen < index.files.len() {
        for (path, record) in index.files.iter() {
            if !read.contains(path.as_path()) {
                replaced.extend(record.mappings.names().map(str::to_owned));
                updates.push((path, None));
            }
        }
    }
    if !report.problems.is_empty() {
        return Err("a problem");
    }

    // The mappings of the files kept as they were: counted, and (below) checked
    // against the ones read again, in one pass without building sets of them (100,000
    // inserts each). A file read again or gone has all its names in `replaced` (a name
    // is in one file only), so its first name tells.
    let kept = || {
        std::iter::once(&index.main_mappings)
            .chain(index.files.values().map(|r| &r.mappings))
            .filter(|m| {
                m.names()
                    .next()
                    .is_some_and(|name| !replaced.contains(name))
            })
    };
    let mappings = kept().map(|m| m.names().count()).sum::<usize>() + included.len();
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
        let new_folded: HashSet<u64> = new_tokens.iter().map(|t| folded_token(t)).collect();
        for kept in kept() {
            if kept
                .names()
                .any(|name| config.mappings.contains_key(name) || report_names.contains(name))
            {
                return Err("a mapping read again is also defined in a file kept");
            }
            if kept.tokens().any(|token| new_folded.contains(&token)) {
                return Err("a token hash read again may also be listed by another mapping");
            }
        }
        for (path, names) in &reread {
            let facts = log.facts.get(path).ok_or("a file read again has no stat")?;
            let owned = FileMappings::new(names.iter().filter_map(|name| {
                let mapping = config.mappings.get(name)?;
                Some((name.as_str(), mapping.token_sha256.as_slice()))
            }));
            updates.push((
                path.clone(),
                Some(FileRecord::new(
                    facts,
                    owned,
                    names.iter().any(|name| volatile.contains(name)),
                )),
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
                Some(FileRecord::new(facts, FileMappings::default(), false)),
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
