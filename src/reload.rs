//! Hot reload (docs/design.md, Reload): `SIGHUP`, or a change on disk of the config file,
//! an included file, or a file appearing in an include directory.
//!
//! A reload reads again, parses and validates only the included files that changed
//! (`Config::read_changes`; a changed main file or environment, or any problem, takes
//! the full read, which reports every problem as a start-up would), then swaps
//! atomically through [`Daemon::apply_changes`] (or [`Daemon::apply_config`] after a
//! full read): only mappings whose AssumeRole inputs changed lose their
//! credentials, removed mappings stop serving, new ones work at once, and requests in
//! flight finish against the generation they started with. An invalid file is rejected
//! whole — the running configuration keeps serving — with one ERROR per problem (file,
//! key, reason) and `credvend_config_reloads_total{result="error"}`. The last reload's
//! time, result and problems are kept for `/status` ([`LastReload`]). A SIGHUP also ends
//! every mapping's negative cache ([`Daemon::forget_failures`]), so a customer who fixed
//! their role is retried at the next request.
//!
//! File watching uses the `notify` crate on the *directories* holding the files, not the
//! files: editors save by writing a new file and renaming it over the old one, and
//! Kubernetes updates a mounted ConfigMap by swapping a symlink, both of which a watch
//! on the old file would miss. Only events naming what credvend reads count: the files
//! it read, every name they resolve through (a ConfigMap's `..data` link and the
//! directory it points to), the include directories, and names there that match an
//! include glob. Anything else in those directories — a log file written there, an
//! editor's swap file — is ignored, so a log line cannot set off a reload that logs the
//! next line. Bursts of events are debounced, and a change only triggers a reload when
//! the bytes credvend would parse differ from the ones the running (or last rejected)
//! configuration was parsed from ([`Sources::digest`], taken as the files are read).
//! Events that only say a file was opened or read are ignored.
//!
//! `[reload] watch = false` turns the watch off (SIGHUP only); the applied
//! configuration decides at every round, so a reload can turn it off or on.
//!
//! One watch lives for the whole run; after each reload it follows what the new
//! configuration reads (directories added or gone). Events arriving during a reload wait
//! in its channel for the next round. A directory newly watched has had no watch before,
//! so the loop then looks on disk once ([`Reloader::changed_on_disk`]) rather than wait
//! for an event that may already have passed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify_debouncer_mini::notify::event::{AccessKind, AccessMode};
use notify_debouncer_mini::notify::{
    self, Event, EventHandler, EventKind, RecommendedWatcher, RecursiveMode, Watcher, WatcherKind,
};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer_opt};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ConfigChanges, LoadIndex, Problem, Sources};
use crate::daemon::Daemon;
use crate::events::{ConfigReloadApplied, ConfigReloadRejected};
use crate::server::status::{LastReload, ReloadResult};

/// Quiet period before a burst of file events becomes one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: always reload (the operator asked), and forget every mapping's negative
    /// cache ([`Daemon::forget_failures`]).
    Signal,
    /// A file event: reload only if what credvend reads changed.
    FileChange,
}

impl Trigger {
    /// The spelling in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::FileChange => "file_change",
        }
    }
}

/// Outcome of one reload attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    Rejected,
    /// A file event, but the files' content is what is already applied.
    Unchanged,
}

/// Re-reads, validates and applies the configuration.
pub struct Reloader {
    path: PathBuf,
    daemon: Arc<Daemon>,
    state: Mutex<State>,
}

struct State {
    /// The applied configuration's settings ([`Config::into_settings`]): the tables
    /// built from its mappings are the daemon's, this copy keeps none of them.
    current: Config,
    /// What the last read (applied, or rejected) looked at, with the digest of the bytes
    /// it parsed: file events that change nothing against it are not reloads.
    sources: Sources,
    /// What the applied configuration was read from, file by file: a reload reads again
    /// only the files that changed ([`Config::read_changes`]). `None` after a read that
    /// cannot be reused (an environment override of a mapping's key): a full read.
    index: Option<LoadIndex>,
}

/// The [`LoadIndex`] a valid read left in `sources`, taken out of it (the reloader's
/// copy of `sources` is cloned for the watch, the index is not).
fn take_index(sources: &mut Sources) -> Option<LoadIndex> {
    sources
        .index
        .0
        .take()
        .map(|index| Arc::try_unwrap(index).unwrap_or_else(|shared| (*shared).clone()))
}

impl Reloader {
    /// `sources` is what the read that produced `current` looked at
    /// ([`Config::read`]).
    pub fn new(path: PathBuf, current: Config, mut sources: Sources, daemon: Arc<Daemon>) -> Self {
        let index = take_index(&mut sources);
        Self {
            path,
            daemon,
            state: Mutex::new(State {
                current: current.into_settings(),
                sources,
                index,
            }),
        }
    }

    /// Whether the applied configuration asks for file watching (`[reload] watch`).
    pub fn watch_enabled(&self) -> bool {
        self.lock().current.reload.watch
    }

    /// What the last read looked at: what the watch follows. Once followed
    /// ([`Reloader::follow`]), the files an include glob covers are left out of its
    /// `files`: the watch counts them by the glob.
    pub fn sources(&self) -> Sources {
        self.lock().sources.clone()
    }

    /// Points `watcher` at what the last read looked at ([`ConfigWatcher::follow`]),
    /// and drops from the files kept those an include glob covers (no link, in the
    /// glob's directory, matching its pattern): the watch counts them by the glob, and
    /// at 100,000 included files their names were ~8 MiB kept, and as much again in
    /// the watch's set and in a copy made for it at every reload. Returns whether a
    /// directory was newly watched. What the names freed goes back to the operating
    /// system at once ([`crate::memory::release_freed_heap`]).
    pub fn follow(&self, watcher: &mut ConfigWatcher) -> bool {
        let mut state = self.lock();
        let (relevant, covered) = Relevant::covering(&state.sources);
        let wanted = Relevant::directories(&state.sources);
        let mut covered = covered.into_iter();
        state
            .sources
            .files
            .retain(|_| !covered.next().unwrap_or(false));
        state.sources.files.shrink_to_fit();
        drop(state);
        let added = watcher.follow_relevant(relevant, wanted);
        crate::memory::release_freed_heap();
        added
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One reload. systemd is told `RELOADING=1` before it is applied or rejected and
    /// `READY=1` after, whatever the outcome. Then the heap the read freed (parsed trees,
    /// the config's copies, the tables of the generation before) goes back to the
    /// operating system ([`crate::memory::release_freed_heap`]).
    pub fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        let outcome = self.read_and_apply(trigger);
        crate::memory::release_freed_heap();
        outcome
    }

    fn read_and_apply(&self, trigger: Trigger) -> ReloadOutcome {
        let mut state = self.lock();
        if let Some(index) = &state.index {
            let (sources, changes) = Config::read_changes(&self.path, index);
            match changes {
                Ok(changes) => return self.apply_changes(&mut state, trigger, sources, changes),
                Err(why) => {
                    debug!(config = %self.path.display(), why, "Reading the whole configuration");
                }
            }
        }
        let (mut sources, result) = Config::read(&self.path);
        if trigger == Trigger::FileChange && sources.digest == state.sources.digest {
            debug!(config = %self.path.display(), "Configuration files unchanged; nothing to reload");
            // The same bytes as the last read: when they were valid, those applied.
            if let Some(index) = take_index(&mut sources) {
                state.index = Some(index);
            }
            state.sources = sources;
            return ReloadOutcome::Unchanged;
        }
        info!(config = %self.path.display(), trigger = ?trigger, "Reload requested");
        crate::notify::reloading();
        let at = self.daemon.cache.now();
        let (outcome, problems) = match result {
            Ok(new) => {
                warn_restart_only_changes(&self.path, &state.current, &new);
                for warning in &new.warnings {
                    warn!(warning = %warning, "Configuration warning");
                }
                self.daemon.apply_config(&new);
                ConfigReloadApplied {
                    path: &self.path,
                    generation: self.daemon.generation(),
                    mappings: new.mappings.len(),
                    at,
                }
                .emit(self.daemon.metrics());
                state.current = new.into_settings();
                state.index = take_index(&mut sources);
                (ReloadOutcome::Applied, Vec::new())
            }
            Err(error) => {
                ConfigReloadRejected {
                    path: &self.path,
                    problems: &error.problems,
                    at,
                }
                .emit(self.daemon.metrics());
                (ReloadOutcome::Rejected, error.problems)
            }
        };
        self.finish(&mut state, trigger, sources, at, outcome, problems)
    }

    /// The end of every reload that went ahead, applied or rejected.
    fn finish(
        &self,
        state: &mut State,
        trigger: Trigger,
        sources: Sources,
        at: SystemTime,
        outcome: ReloadOutcome,
        problems: Vec<Problem>,
    ) -> ReloadOutcome {
        if trigger == Trigger::Signal {
            // The operator asked: a customer who fixed their role (trust policy, External
            // ID enforcement) is retried at the next request, whatever the outcome.
            self.daemon.forget_failures();
            debug!("Negative caches cleared; refused mappings retry at their next request");
        }
        // The digest of what this read parsed, applied or rejected: the same bad content
        // is not re-reported on every file event (a SIGHUP still retries it), and an
        // edit landing after the files were read differs from it.
        state.sources = sources;
        self.daemon.record_reload(last_reload(
            at,
            trigger,
            outcome,
            self.daemon.generation(),
            problems,
        ));
        crate::notify::ready();
        outcome
    }

    /// Applies what a read of only the changed files found ([`Config::read_changes`]):
    /// the mappings of those files, the names gone; the rest of the daemon's tables is
    /// left as it is ([`Daemon::apply_changes`]).
    fn apply_changes(
        &self,
        state: &mut State,
        trigger: Trigger,
        sources: Sources,
        mut changes: ConfigChanges,
    ) -> ReloadOutcome {
        if trigger == Trigger::FileChange && sources.digest == state.sources.digest {
            debug!(config = %self.path.display(), "Configuration files unchanged; nothing to reload");
            // Files found unchanged keep the time they were last looked at.
            if let Some(index) = &mut state.index {
                changes.commit(index);
            }
            state.sources = sources;
            return ReloadOutcome::Unchanged;
        }
        info!(
            config = %self.path.display(),
            trigger = ?trigger,
            files_read = sources.reread.as_ref().map_or(0, Vec::len),
            "Reload requested"
        );
        crate::notify::reloading();
        let at = self.daemon.cache.now();
        let new = changes.config.take();
        if let Some(new) = &new {
            for warning in &new.warnings {
                warn!(warning = %warning, "Configuration warning");
            }
        }
        // Without a file of mappings read again, the settings are the applied ones (the
        // main file did not change).
        let applied = new.as_ref().unwrap_or(&state.current);
        self.daemon.apply_changes(applied, &changes.removed);
        ConfigReloadApplied {
            path: &self.path,
            generation: self.daemon.generation(),
            mappings: changes.mappings,
            at,
        }
        .emit(self.daemon.metrics());
        if let Some(new) = new {
            state.current = new.into_settings();
        }
        if let Some(index) = &mut state.index {
            changes.commit(index);
        }
        self.finish(
            state,
            trigger,
            sources,
            at,
            ReloadOutcome::Applied,
            Vec::new(),
        )
    }

    /// Whether the files now differ from what the last reload applied or rejected (what
    /// a [`Trigger::FileChange`] reload would act on). Logs nothing, changes nothing:
    /// for a caller that was not watching somewhere for a while to catch up. What the
    /// look freed (at 100,000 included files, a list of them all and a set) goes back
    /// to the operating system at once ([`crate::memory::release_freed_heap`]), not
    /// over the allocator's decay time: it runs at start, right after the start-up
    /// load's heap was given back.
    pub fn changed_on_disk(&self) -> bool {
        let changed = self.look_on_disk();
        crate::memory::release_freed_heap();
        changed
    }

    fn look_on_disk(&self) -> bool {
        let state = self.lock();
        if let Some(index) = &state.index {
            // `stat` for the files kept; the ones that changed are read.
            let (sources, changes) = Config::read_changes(&self.path, index);
            if changes.is_ok() {
                return sources.digest != state.sources.digest;
            }
        }
        Config::read_sources(&self.path).digest != state.sources.digest
    }
}

/// The `/status` record of a reload that went ahead.
fn last_reload(
    at: SystemTime,
    trigger: Trigger,
    outcome: ReloadOutcome,
    generation: u64,
    problems: Vec<Problem>,
) -> LastReload {
    LastReload {
        at,
        trigger: trigger.as_str(),
        result: if outcome == ReloadOutcome::Applied {
            ReloadResult::Applied
        } else {
            ReloadResult::Rejected
        },
        generation,
        problems,
    }
}

/// Settings that only take effect at start-up (sockets, STS client, log setup, the
/// control socket and its bounds).
fn warn_restart_only_changes(path: &Path, old: &Config, new: &Config) {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen || old.server.admin_listen != new.server.admin_listen
    {
        changed.push("server.listen/admin_listen");
    }
    if old.sts.region != new.sts.region
        || old.sts.endpoint_url != new.sts.endpoint_url
        || old.sts.fallback_regions != new.sts.fallback_regions
        || old.sts.endpoint_urls != new.sts.endpoint_urls
        || old.sts.source_role_arn != new.sts.source_role_arn
        || old.sts.max_requests_per_second != new.sts.max_requests_per_second
        || old.sts.call_timeout != new.sts.call_timeout
    {
        changed.push("sts");
    }
    if old.log.level != new.log.level || old.log.format != new.log.format {
        changed.push("log");
    }
    if old.control != new.control {
        changed.push("control");
    }
    if !changed.is_empty() {
        warn!(
            config = %path.display(),
            sections = ?changed,
            "These settings changed but take effect only after a restart"
        );
    }
}

/// The one watch on the configuration's directories, for the whole run. Dropping it
/// stops watching.
pub struct ConfigWatcher {
    debouncer: Debouncer<ChangeWatcher>,
    /// The directories watched, each with the identity (device, inode) it had when its
    /// watch was set: a directory removed and created again needs a new watch.
    watched: BTreeMap<PathBuf, Option<(u64, u64)>>,
    /// What events count; shared with the debouncer's thread.
    relevant: Arc<Mutex<Relevant>>,
}

/// The platform's watcher, without the events that only say a file was opened or read
/// (inotify reports every open): credvend reads its files at every reload, and would
/// otherwise wake itself up every debounce period; an operator or a backup reading them
/// changes nothing either. A close after writing is kept.
struct ChangeWatcher(RecommendedWatcher);

impl Watcher for ChangeWatcher {
    fn new<F: EventHandler>(mut handler: F, config: notify::Config) -> notify::Result<Self> {
        RecommendedWatcher::new(
            move |event: notify::Result<Event>| {
                if !matches!(&event, Ok(event) if only_reads(&event.kind)) {
                    handler.handle_event(event);
                }
            },
            config,
        )
        .map(Self)
    }

    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> notify::Result<()> {
        self.0.watch(path, mode)
    }

    fn unwatch(&mut self, path: &Path) -> notify::Result<()> {
        self.0.unwatch(path)
    }

    fn kind() -> WatcherKind {
        RecommendedWatcher::kind()
    }
}

/// An access that cannot have changed the file: anything but a close after writing.
fn only_reads(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}

/// Which paths in the watched directories are configuration. Paths are absolute the way
/// `notify` reports them (relative ones joined to the working directory, not resolved).
#[derive(Debug, Default)]
struct Relevant {
    /// The files read, the include directories, and every name they resolve through.
    paths: BTreeSet<PathBuf>,
    /// An include directory and the file-name pattern of its glob there.
    globs: Vec<(PathBuf, glob::Pattern)>,
}

impl Relevant {
    fn of(sources: &Sources) -> Self {
        Self::covering(sources).0
    }

    /// [`Relevant::of`], and for each of `sources.files` whether an include glob
    /// already covers it: a file that is no link, in the glob's directory, matching its
    /// pattern, counts by the pattern and needs no name of its own (at 100,000 included
    /// files, their names were a set of 100,000 paths).
    fn covering(sources: &Sources) -> (Self, Vec<bool>) {
        let mut relevant = Relevant::default();
        for (dir, name) in &sources.include_globs {
            let dir = absolute(dir);
            relevant.paths.extend(resolution_chain(&dir));
            if let Ok(pattern) = glob::Pattern::new(name) {
                relevant.globs.push((dir, pattern));
            }
        }
        let mut covered = Vec::with_capacity(sources.files.len());
        for file in &sources.files {
            let file = absolute(file);
            let chain = resolution_chain(&file);
            let by_glob = chain.len() == 1 && relevant.matches_glob(&file);
            if !by_glob {
                relevant.paths.extend(chain);
            }
            covered.push(by_glob);
        }
        (relevant, covered)
    }

    fn matches_glob(&self, path: &Path) -> bool {
        self.globs.iter().any(|(dir, pattern)| {
            path.parent() == Some(dir.as_path())
                && path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| pattern.matches(name))
        })
    }

    fn matches(&self, path: &Path) -> bool {
        self.paths.contains(path) || self.matches_glob(path)
    }

    /// The directories to watch: the files' and the include directories.
    fn directories(sources: &Sources) -> BTreeSet<PathBuf> {
        let mut dirs: BTreeSet<PathBuf> = sources
            .include_globs
            .iter()
            .map(|(dir, _)| absolute(dir))
            .collect();
        for file in &sources.files {
            if let Some(dir) = absolute(file).parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        dirs
    }
}

/// `path` joined to the working directory if relative, as `notify` does with the paths
/// it is asked to watch (so the paths of its events compare equal).
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// `path` and every name it resolves through from its directory on: for a ConfigMap's
/// `credvend.toml -> ..data/credvend.toml` with `..data -> ..2026_11_30_…`, also
/// `..data`, `..2026_11_30_…` and the file in it — renaming a new `..data` into place is
/// then an event on a name that counts. The directories above `path` are not resolved
/// (they are not watched).
fn resolution_chain(path: &Path) -> Vec<PathBuf> {
    let mut chain = vec![path.to_path_buf()];
    let Some(dir) = path.parent() else {
        return chain;
    };
    let mut current = path.to_path_buf();
    let mut base = dir.to_path_buf();
    let mut pending: Vec<PathBuf> = Vec::new();
    // At most 40 links, as the kernel allows.
    for _ in 0..40 {
        if let Ok(target) = std::fs::read_link(&current) {
            // The link's target replaces it; what is left of the path follows.
            let mut parts: Vec<PathBuf> = target
                .components()
                .map(|c| PathBuf::from(c.as_os_str()))
                .collect();
            parts.extend(pending.drain(..).rev());
            pending = parts.into_iter().rev().collect();
            if target.is_absolute() {
                base = PathBuf::from("/");
            }
        } else {
            base = current.clone();
            if pending.is_empty() {
                break;
            }
        }
        // Walk to the next name, recording each.
        loop {
            let Some(part) = pending.pop() else {
                return chain;
            };
            match part.components().next() {
                Some(Component::Normal(name)) => {
                    current = base.join(name);
                    chain.push(current.clone());
                    break;
                }
                Some(Component::ParentDir) => {
                    base.pop();
                }
                _ => {}
            }
        }
    }
    chain
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    pub path: PathBuf,
    #[source]
    pub source: notify_debouncer_mini::notify::Error,
}

impl ConfigWatcher {
    /// A watch on nothing yet ([`ConfigWatcher::follow`] says what); every debounced
    /// burst of events naming configuration becomes one message on the returned channel.
    pub fn start(debounce: Duration) -> Result<(Self, mpsc::UnboundedReceiver<()>), WatchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let relevant = Arc::new(Mutex::new(Relevant::default()));
        let filter = relevant.clone();
        let debouncer = new_debouncer_opt::<_, ChangeWatcher>(
            notify_debouncer_mini::Config::default().with_timeout(debounce),
            move |result: DebounceEventResult| match result {
                Ok(events) => {
                    // Nothing is logged for an event that does not count: the log file
                    // may be in a watched directory.
                    let relevant = filter.lock().unwrap_or_else(|e| e.into_inner());
                    if events.iter().any(|event| relevant.matches(&event.path)) {
                        let _ = tx.send(());
                    }
                }
                Err(error) => warn!(%error, "Config file watch error"),
            },
        )
        .map_err(|source| WatchError {
            path: PathBuf::new(),
            source,
        })?;
        Ok((
            Self {
                debouncer,
                watched: BTreeMap::new(),
                relevant,
            },
            rx,
        ))
    }

    /// Watches what `sources` reads from now on: directories no longer needed are let
    /// go, new ones (and ones removed and created again) are watched, and events count
    /// by the new names. Returns whether a directory was newly watched: a change made
    /// there before has no event coming. A directory that cannot be watched is logged
    /// ("File watching unavailable; reload with SIGHUP") and tried again next time.
    pub fn follow(&mut self, sources: &Sources) -> bool {
        self.follow_relevant(Relevant::of(sources), Relevant::directories(sources))
    }

    fn follow_relevant(&mut self, relevant: Relevant, wanted: BTreeSet<PathBuf>) -> bool {
        *self.relevant.lock().unwrap_or_else(|e| e.into_inner()) = relevant;
        let gone: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|dir| !wanted.contains(*dir))
            .cloned()
            .collect();
        for dir in gone {
            self.watched.remove(&dir);
            // Already gone if the directory was removed.
            let _ = self.debouncer.watcher().unwatch(&dir);
        }
        let mut added = false;
        for dir in wanted {
            let identity = identity(&dir);
            if identity.is_some() && self.watched.get(&dir) == Some(&identity) {
                continue;
            }
            match self
                .debouncer
                .watcher()
                .watch(&dir, RecursiveMode::NonRecursive)
            {
                Ok(()) => {
                    self.watched.insert(dir.clone(), identity);
                    added = true;
                    debug!(dir = %dir.display(), "Watching for configuration changes");
                }
                Err(source) => {
                    self.watched.remove(&dir);
                    let error = WatchError {
                        path: dir.clone(),
                        source,
                    };
                    warn!(error = %error, "File watching unavailable; reload with SIGHUP");
                }
            }
        }
        added
    }
}

/// A directory's device and inode, to tell it from one created again under its name.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Reloads on SIGHUP and on changes to the configuration files, until neither can
/// arrive any more.
///
/// `hup` is the SIGHUP stream, installed by the caller before anything was bound:
/// SIGHUP's default action terminates the process.
pub async fn run(hup: std::io::Result<tokio::signal::unix::Signal>, reloader: Reloader) {
    let mut hup = match hup {
        Ok(hup) => Some(hup),
        Err(e) => {
            error!(error = %e, "Cannot listen for SIGHUP; only file changes reload");
            None
        }
    };
    let mut watcher: Option<ConfigWatcher> = None;
    let mut changes: Option<mpsc::UnboundedReceiver<()>> = None;
    let mut announced_off = false;
    loop {
        // `[reload] watch`, as the applied configuration has it: a reload that turns it
        // off stops the watch, one that turns it on starts it.
        if reloader.watch_enabled() {
            announced_off = false;
            if watcher.is_none() {
                match ConfigWatcher::start(DEBOUNCE) {
                    Ok((started, rx)) => (watcher, changes) = (Some(started), Some(rx)),
                    Err(e) => warn!(error = %e, "File watching unavailable; reload with SIGHUP"),
                }
            }
        } else {
            (watcher, changes) = (None, None);
            if !announced_off {
                announced_off = true;
                info!(
                    config = %reloader.path.display(),
                    "File watching is off ([reload] watch = false); reload with SIGHUP"
                );
            }
        }
        // Follow what the applied (or last rejected) configuration reads. A directory
        // watched for the first time — all of them at start, after the configuration
        // was read — may have changed with no event coming: look on disk.
        let newly_watched = watcher
            .as_mut()
            .is_some_and(|watcher| reloader.follow(watcher));
        let changed_meanwhile =
            newly_watched && tokio::task::block_in_place(|| reloader.changed_on_disk());
        let trigger = if changed_meanwhile {
            Trigger::FileChange
        } else {
            tokio::select! {
                Some(_) = async { hup.as_mut()?.recv().await } => Trigger::Signal,
                Some(()) = async { changes.as_mut()?.recv().await } => Trigger::FileChange,
                else => return,
            }
        };
        // Config::load reads files: keep it off the async workers. The watch keeps
        // running: an event during the reload waits in the channel.
        let outcome = tokio::task::block_in_place(|| reloader.reload(trigger));
        debug!(?outcome, "Reload finished");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock as _;
    use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind};

    /// `[control]` is restart-only: a reload that changes it warns, naming the section.
    #[test]
    fn a_changed_control_section_is_warned_about() {
        let old = crate::testing::config("http://127.0.0.1:9", Vec::new());
        let mut new = old.clone();
        new.control.max_tokens = 5;
        let ((), lines) = crate::testing::json_logs(|| {
            warn_restart_only_changes(Path::new("credvend.toml"), &old, &old);
            warn_restart_only_changes(Path::new("credvend.toml"), &old, &new);
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["sections"], r#"["control"]"#, "{:?}", lines[0]);
    }

    #[test]
    fn opening_or_reading_a_file_is_not_a_change_writing_it_is() {
        for read in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Open(AccessMode::Read),
            AccessKind::Close(AccessMode::Read),
            AccessKind::Read,
            AccessKind::Any,
        ] {
            assert!(only_reads(&EventKind::Access(read)), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(!only_reads(&change), "{change:?}");
        }
    }

    #[tokio::test]
    async fn the_watch_is_not_woken_by_reads_and_is_by_writes() {
        let dir = std::env::temp_dir().join(format!("credvend-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credvend.toml");
        std::fs::write(&file, "# one").unwrap();
        let debounce = Duration::from_millis(20);
        let (mut watcher, mut changes) = ConfigWatcher::start(debounce).unwrap();
        assert!(watcher.follow(&Sources {
            files: vec![file.clone()],
            ..Sources::default()
        }));

        // What the reloader does right after starting a watch: read the files.
        for _ in 0..3 {
            std::fs::read(&file).unwrap();
        }
        // Many debounce periods: an event for those reads would be out by now. (On a
        // stalled machine this can pass without having checked; it cannot fail wrongly.)
        tokio::time::sleep(debounce * 25).await;
        assert!(
            changes.try_recv().is_err(),
            "reading the file woke the watch"
        );

        std::fs::write(&file, "# two").unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(20), changes.recv()).await;
        assert_eq!(
            woke,
            Ok(Some(())),
            "writing the file did not wake the watch"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A directory in the temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("credvend-relevant-{label}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn only_the_files_read_and_include_matches_count_not_a_log_or_a_swap_file() {
        let tmp = TempDir::new("plain");
        let dir = &tmp.0;
        let sources = Sources {
            files: vec![dir.join("credvend.toml"), dir.join("mappings.d/a.toml")],
            include_globs: vec![(dir.join("mappings.d"), "*.toml".into())],
            ..Sources::default()
        };
        let relevant = Relevant::of(&sources);
        for counts in [
            "credvend.toml",
            "mappings.d",
            "mappings.d/a.toml",
            // A new drop-in, and a file renamed into place by an editor.
            "mappings.d/b.toml",
        ] {
            assert!(relevant.matches(&dir.join(counts)), "{counts}");
        }
        for ignored in [
            "credvend.log",
            "credvend.toml~",
            ".credvend.toml.swp",
            "4913",
            "mappings.d/README",
            "mappings.d/b.toml.tmp",
        ] {
            assert!(!relevant.matches(&dir.join(ignored)), "{ignored}");
        }
        assert_eq!(
            Relevant::directories(&sources),
            [dir.clone(), dir.join("mappings.d")].into_iter().collect()
        );
    }

    /// An included file the glob covers counts by the glob and is not kept by name (at
    /// 100,000 files the names were ~8 MiB in the watch and as much in the reloader);
    /// one that is a link keeps its chain, so an edit of the file it points to (outside
    /// the include directory) still counts; so does the main file.
    #[test]
    fn included_files_the_glob_covers_are_not_kept_by_name_and_a_link_keeps_its_target() {
        let tmp = TempDir::new("covered");
        let dir = &tmp.0;
        std::fs::create_dir_all(dir.join("mappings.d")).unwrap();
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        for file in ["credvend.toml", "mappings.d/a.toml", "elsewhere/real.toml"] {
            std::fs::write(dir.join(file), "").unwrap();
        }
        std::os::unix::fs::symlink(
            dir.join("elsewhere/real.toml"),
            dir.join("mappings.d/link.toml"),
        )
        .unwrap();
        let sources = Sources {
            files: vec![
                dir.join("credvend.toml"),
                dir.join("mappings.d/a.toml"),
                dir.join("mappings.d/link.toml"),
            ],
            include_globs: vec![(dir.join("mappings.d"), "*.toml".into())],
            ..Sources::default()
        };
        let (relevant, covered) = Relevant::covering(&sources);
        assert_eq!(covered, [false, true, false]);
        assert!(
            !relevant.paths.contains(&dir.join("mappings.d/a.toml")),
            "{:?}",
            relevant.paths
        );
        for counts in [
            "credvend.toml",
            "mappings.d/a.toml",
            "mappings.d/link.toml",
            "elsewhere/real.toml",
        ] {
            assert!(relevant.matches(&dir.join(counts)), "{counts}");
        }
        assert!(!relevant.matches(&dir.join("elsewhere/other.toml")));

        // The reloader keeps, once it has pointed the watch, only the files not covered.
        let config = crate::testing::config("http://127.0.0.1:9", Vec::new());
        let clock = crate::clock::ManualClock::starting_now();
        let sts = Arc::new(CountingSts {
            clock: clock.clone(),
            roles: Mutex::new(Vec::new()),
            probes: Default::default(),
        });
        let daemon = Arc::new(Daemon::new(&config, sts, Arc::new(clock)));
        let reloader = Reloader::new(dir.join("credvend.toml"), config, sources, daemon);
        let Ok((mut watcher, _events)) = ConfigWatcher::start(Duration::from_millis(50)) else {
            return;
        };
        let releases = crate::memory::releases_on_this_thread;
        let before = releases();
        assert!(
            reloader.follow(&mut watcher),
            "the directories are newly watched"
        );
        assert_eq!(releases() - before, 1, "what following freed is given back");
        let before = releases();
        let _ = reloader.changed_on_disk();
        assert_eq!(releases() - before, 1, "what the look freed is given back");
        assert_eq!(
            reloader.sources().files,
            [dir.join("credvend.toml"), dir.join("mappings.d/link.toml")]
        );
        let watched = watcher.relevant.lock().unwrap();
        assert!(watched.matches(&dir.join("mappings.d/a.toml")));
        assert!(watched.matches(&dir.join("elsewhere/real.toml")));
    }

    /// Answers every AssumeRole at once with a 1 h credential, recording each call's
    /// role.
    struct CountingSts {
        clock: crate::clock::ManualClock,
        /// The role of every assumption STS granted, in order.
        roles: Mutex<Vec<String>>,
        /// Calls refused for their External ID (the enforcement check's probes).
        probes: std::sync::atomic::AtomicUsize,
    }

    impl crate::creds::RoleAssumer for CountingSts {
        fn assume_role<'a>(
            &'a self,
            input: &'a crate::creds::AssumeRoleInput,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<crate::creds::Credentials, crate::creds::AssumeError>,
                    > + Send
                    + 'a,
            >,
        > {
            Box::pin(async move {
                // A role that enforces its External ID, as customers' roles do: the
                // enforcement check's probes (none, or a random one) are refused and
                // only the mapping's own assumption counts. Without this every mapping
                // would be refused as unsafe and never warm.
                let enforced = input
                    .external_id
                    .as_ref()
                    .is_some_and(|id| id.expose().starts_with("external-id-"));
                self.probes
                    .fetch_add(usize::from(!enforced), std::sync::atomic::Ordering::Relaxed);
                if !enforced {
                    return Err(crate::creds::AssumeError {
                        reason: crate::creds::FailureReason::AccessDenied,
                        code: "AccessDenied".into(),
                        message: "External ID required".into(),
                        duration_too_long: false,
                    });
                }
                let n = {
                    let mut roles = self.roles.lock().unwrap();
                    roles.push(input.role_arn.to_string());
                    roles.len()
                };
                Ok(crate::creds::Credentials {
                    access_key_id: format!("ASIACOUNTED{n:09}"),
                    secret_access_key: crate::secret::SecretValue::new("secret"),
                    session_token: crate::secret::SecretValue::new("token"),
                    expiration: self.clock.now() + Duration::from_secs(3600),
                    assumed_role_arn: "arn:aws:sts::111122223333:assumed-role/r/s".into(),
                })
            })
        }
    }

    /// Writes `text` to `path` readable by its owner only (config files are checked).
    fn write_private(path: &Path, text: &str) {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn mapping_file(i: usize, role: &str) -> String {
        format!(
            "[mappings.m{i:04}]\nrole_arn = \"{}\"\nexternal_id = \"external-id-{i:04}\"\n\
             token_sha256 = [\"{:064x}\"]\nprefetch = true\n",
            crate::testing::role_arn(role),
            i + 1
        )
    }

    /// An include directory of `count` files of one mapping each (`m0000`…, not
    /// prefetched), loaded, and a daemon and reloader on it, with the files' index aged
    /// by an hour (as if they were last changed long before they were read: `stat`
    /// vouches for them, nothing needs reading again to be sure).
    struct Included {
        _tmp: TempDir,
        main: PathBuf,
        include: PathBuf,
        sts: Arc<CountingSts>,
        daemon: Arc<Daemon>,
        reloader: Reloader,
    }

    /// A main file including `mappings.d/*.toml`, and `count` files there of one
    /// mapping each ([`mapping_file`], `prefetch` as asked): the directory, the main
    /// file, the include directory.
    fn include_dir(label: &str, count: usize, prefetch: bool) -> (TempDir, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new(label);
        let dir = tmp.0.clone();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let include = dir.join("mappings.d");
        std::fs::create_dir(&include).unwrap();
        std::fs::set_permissions(&include, std::fs::Permissions::from_mode(0o700)).unwrap();
        let main = dir.join("credvend.toml");
        write_private(
            &main,
            "include = \"mappings.d/*.toml\"\n\n[sts]\nregion = \"us-east-1\"\n\
             endpoint_url = \"http://127.0.0.1:9\"\nmax_requests_per_second = 100000\n",
        );
        for i in 0..count {
            let text = mapping_file(i, &format!("role-{i}"));
            let text = if prefetch {
                text
            } else {
                text.replace("prefetch = true", "prefetch = false")
            };
            write_private(&include.join(format!("m{i:04}.toml")), &text);
        }
        (tmp, main, include)
    }

    fn included(label: &str, count: usize) -> Included {
        let (tmp, main, include) = include_dir(label, count, false);
        let (sources, config) = Config::read(&main);
        let config = config.unwrap_or_else(|e| panic!("{:?}", e.problems));
        assert_eq!(config.mappings.len(), count);
        assert!(sources.index.0.is_some(), "a valid read leaves its index");
        let clock = crate::clock::ManualClock::starting_now();
        let sts = Arc::new(CountingSts {
            clock: clock.clone(),
            roles: Mutex::new(Vec::new()),
            probes: Default::default(),
        });
        let daemon = Arc::new(Daemon::new(&config, sts.clone(), Arc::new(clock)));
        let reloader = Reloader::new(main.clone(), config, sources, daemon.clone());
        age_index(&reloader);
        Included {
            _tmp: tmp,
            main,
            include,
            sts,
            daemon,
            reloader,
        }
    }

    /// Moves the time each file of the index was looked at an hour on.
    fn age_index(reloader: &Reloader) {
        let mut state = reloader.lock();
        for record in state.index.as_mut().expect("an index").files.values_mut() {
            record.racy = false;
        }
    }

    impl Included {
        fn file(&self, i: usize) -> PathBuf {
            self.include.join(format!("m{i:04}.toml"))
        }

        /// The files the last reload read again.
        fn reread(&self) -> Vec<PathBuf> {
            self.reloader
                .sources()
                .reread
                .expect("the last reload read only what changed")
        }

        fn names(&self) -> BTreeSet<String> {
            self.daemon
                .cache
                .status()
                .into_iter()
                .map(|s| s.name)
                .collect()
        }

        /// The role `name` is assumed with now (one AssumeRole).
        async fn role_of(&self, name: &str) -> String {
            self.daemon
                .cache
                .get(name)
                .await
                .expect("the mapping vends");
            self.sts.roles.lock().unwrap().last().cloned().unwrap()
        }
    }

    /// A reload after one of many included files changed reads and parses that file and
    /// the main file, no other, and applies the change; a file added, and one removed,
    /// likewise. Counted by the files the reload read (`Sources::reread`), not by time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_reads_again_only_the_included_files_that_changed() {
        const COUNT: usize = 200;
        let t = included("only-changed", COUNT);
        let generation = t.daemon.generation();
        assert_eq!(t.role_of("m0007").await, crate::testing::role_arn("role-7"));

        // A file event with nothing changed reads only the main file.
        assert_eq!(
            t.reloader.reload(Trigger::FileChange),
            ReloadOutcome::Unchanged
        );
        assert_eq!(t.reread(), std::slice::from_ref(&t.main));

        write_private(
            &t.file(7),
            &mapping_file(7, "changed").replace("prefetch = true", "prefetch = false"),
        );
        assert_eq!(
            t.reloader.reload(Trigger::FileChange),
            ReloadOutcome::Applied
        );
        assert_eq!(t.reread(), [t.main.clone(), t.file(7)], "read again");
        // Time passes: the file just read is no longer too recent for `stat` to vouch.
        age_index(&t.reloader);
        assert_eq!(
            t.role_of("m0007").await,
            crate::testing::role_arn("changed")
        );
        assert_eq!(t.names().len(), COUNT);

        // A new file, and one gone; then a SIGHUP with nothing changed.
        write_private(
            &t.file(COUNT),
            &mapping_file(COUNT, "new").replace("prefetch = true", "prefetch = false"),
        );
        std::fs::remove_file(t.file(3)).unwrap();
        assert_eq!(
            t.reloader.reload(Trigger::FileChange),
            ReloadOutcome::Applied
        );
        assert_eq!(t.reread(), [t.main.clone(), t.file(COUNT)]);
        age_index(&t.reloader);
        let names = t.names();
        assert_eq!(names.len(), COUNT, "one added, one removed");
        assert!(names.contains(&format!("m{COUNT:04}")) && !names.contains("m0003"));
        assert_eq!(
            t.role_of(&format!("m{COUNT:04}")).await,
            crate::testing::role_arn("new")
        );
        assert_eq!(t.reloader.reload(Trigger::Signal), ReloadOutcome::Applied);
        assert_eq!(t.reread(), std::slice::from_ref(&t.main));
        assert_eq!(t.names(), names);
        // The generation counts every reload applied.
        assert_eq!(t.daemon.generation(), generation + 3);
    }

    /// A changed file that is invalid, or that defines a mapping another (unchanged) file
    /// has, is refused with its file, key and reason, as a full read reports it; the
    /// configuration before keeps serving; fixed, it is applied reading only that file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_changed_file_is_refused_with_file_key_and_reason_and_the_old_config_serves() {
        let t = included("bad-changed", 50);
        let plain = |i: usize, role: &str| {
            mapping_file(i, role).replace("prefetch = true", "prefetch = false")
        };
        let file = t.file(9);
        let file_name = file.display().to_string();
        let generation = t.daemon.generation();

        write_private(
            &file,
            &plain(9, "x").replace("arn:aws:iam::", "arn:aws:nope::"),
        );
        assert_eq!(
            t.reloader.reload(Trigger::FileChange),
            ReloadOutcome::Rejected
        );
        let problems = t.daemon.last_reload().expect("recorded").problems;
        assert!(
            problems.iter().any(|p| p.file == file_name
                && p.key == "mappings.m0009.role_arn"
                && !p.reason.is_empty()),
            "{problems:?}"
        );
        assert_eq!(
            t.role_of("m0009").await,
            crate::testing::role_arn("role-9"),
            "old config serves"
        );
        assert_eq!(t.daemon.generation(), generation, "nothing applied");

        // Another file's mapping name in the changed file.
        write_private(&file, &plain(9, "role-9").replace("m0009", "m0010"));
        assert_eq!(
            t.reloader.reload(Trigger::FileChange),
            ReloadOutcome::Rejected
        );
        let problems = t.daemon.last_reload().expect("recorded").problems;
        assert!(
            problems.iter().any(|p| p.key == "mappings.m0010"
                && p.reason.contains("already defined in")
                && (p.file == file_name || p.reason.contains(&file_name))),
            "{problems:?}"
        );
        assert!(t.names().contains("m0009"), "old config serves");
        assert_eq!(t.daemon.generation(), generation, "nothing applied");

        // Another mapping's token in the changed file.
        write_private(
            &file,
            &plain(9, "role-9").replace(&format!("{:064x}", 10), &format!("{:064x}", 11)),
        );
        assert_eq!(
            t.reloader.reload(Trigger::FileChange),
            ReloadOutcome::Rejected
        );
        let problems = t.daemon.last_reload().expect("recorded").problems;
        assert!(
            problems
                .iter()
                .any(|p| p.key.ends_with("token_sha256") && p.reason.contains("also listed by")),
            "{problems:?}"
        );
        assert_eq!(t.daemon.generation(), generation, "nothing applied");

        write_private(&file, &plain(9, "fixed"));
        assert_eq!(
            t.reloader.reload(Trigger::FileChange),
            ReloadOutcome::Applied
        );
        assert_eq!(t.reread(), [t.main.clone(), file.clone()]);
        assert_eq!(t.role_of("m0009").await, crate::testing::role_arn("fixed"));
    }

    /// A rewrite in place of the same size inside the file system's timestamp
    /// granularity leaves `stat` as it was; a file whose last change is that close to
    /// the moment it was read is compared by its bytes, so the rewrite is applied. Here
    /// the index is made to hold the rewritten file's very `stat` (what a same-tick
    /// rewrite leaves), with the time it was looked at just before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_same_size_rewrite_that_stat_cannot_see_is_still_applied() {
        use std::io::Write as _;
        let t = included("racy", 20);
        let file = t.file(4);
        let before = std::fs::read_to_string(&file).unwrap();
        let after = before.replace("role-4", "role-x");
        assert_eq!(before.len(), after.len());
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all(after.as_bytes()).unwrap();
        drop(f);
        let stat = crate::config::FileStat::of(&file).unwrap();
        {
            let mut state = t.reloader.lock();
            let record = state.index.as_mut().unwrap().files.get_mut(&file).unwrap();
            record.stat = stat.fold();
            record.racy = stat.racy(stat.ctime_ns);
            assert!(record.racy, "changed at the moment it was looked at");
        }
        assert_eq!(
            t.reloader.reload(Trigger::FileChange),
            ReloadOutcome::Applied
        );
        assert_eq!(
            t.reread(),
            [t.main.clone(), file.clone(), file.clone()],
            "compared, then parsed"
        );
        assert_eq!(t.role_of("m0004").await, crate::testing::role_arn("role-x"));

        // Looked at long after its last change, a file `stat` vouches for is not read.
        age_index(&t.reloader);
        assert_eq!(
            t.reloader.reload(Trigger::FileChange),
            ReloadOutcome::Unchanged
        );
        assert_eq!(t.reread(), std::slice::from_ref(&t.main));
    }

    /// Exactly one AssumeRole for a reload changing one of many warm mappings: 1,000
    /// `prefetch` mappings, one file each in an include directory, all warm; one file
    /// gets another role. The reload (a file event, twice) calls STS for that mapping
    /// and for no other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_changing_one_of_1000_warm_mappings_makes_exactly_one_assume_role() {
        const COUNT: usize = 1000;
        let (_tmp, main, include) = include_dir("one-call", COUNT, true);
        let (sources, config) = Config::read(&main);
        let config = config.unwrap_or_else(|e| panic!("{:?}", e.problems));
        assert_eq!(config.mappings.len(), COUNT);
        let clock = crate::clock::ManualClock::starting_now();
        let sts = Arc::new(CountingSts {
            clock: clock.clone(),
            roles: Mutex::new(Vec::new()),
            probes: Default::default(),
        });
        let daemon = Arc::new(Daemon::new(&config, sts.clone(), Arc::new(clock)));
        daemon.cache.start();
        let reloader = Reloader::new(main.clone(), config, sources, daemon.clone());
        let calls = || sts.roles.lock().unwrap().len();
        let settle = |what: &str, calls_at_least: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while calls() < calls_at_least || !daemon.cache.prefetch_settled() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: {} calls",
                    calls()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            // Whatever else it set off has had time to start (a late extra call can
            // only be missed here, never invented).
            std::thread::sleep(Duration::from_millis(200));
        };
        settle("warm-up", COUNT);
        assert_eq!(calls(), COUNT, "warm-up: one call per mapping");
        let warm = daemon
            .cache
            .status()
            .iter()
            .filter(|s| s.state == crate::model::MappingState::Fresh)
            .count();
        assert_eq!(
            warm, COUNT,
            "every mapping holds a credential after warm-up"
        );
        let probes = sts.probes.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(probes, 2 * COUNT, "two enforcement probes per mapping");

        // A file event, then a SIGHUP (which also ends negative caches and restarts the
        // prefetch of mappings without a credential: none here).
        for (round, trigger) in [Trigger::FileChange, Trigger::Signal]
            .into_iter()
            .enumerate()
        {
            let target = 7 + round;
            let role = format!("changed-{round}");
            write_private(
                &include.join(format!("m{target:04}.toml")),
                &mapping_file(target, &role),
            );
            let before = calls();
            assert_eq!(
                reloader.reload(trigger),
                ReloadOutcome::Applied,
                "{trigger:?}"
            );
            settle("the changed mapping's prefetch", before + 1);
            let made = sts.roles.lock().unwrap()[before..].to_vec();
            assert_eq!(
                made,
                [crate::testing::role_arn(&role)],
                "{trigger:?}: the AssumeRole calls of a reload changing m{target:04}"
            );
            // The changed role is checked again (a new key starts unknown); no other is.
            let probes_now = sts.probes.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(
                probes_now - probes - 2 * round,
                2,
                "{trigger:?}: enforcement probes of the reload"
            );
        }
    }

    #[test]
    fn the_names_a_configmap_file_resolves_through_count() {
        use std::os::unix::fs::symlink;
        let tmp = TempDir::new("configmap");
        let dir = &tmp.0;
        let stamp = "..2026_11_30_15_00_01.100000001";
        std::fs::create_dir(dir.join(stamp)).unwrap();
        std::fs::write(dir.join(stamp).join("credvend.toml"), "").unwrap();
        symlink(stamp, dir.join("..data")).unwrap();
        symlink("..data/credvend.toml", dir.join("credvend.toml")).unwrap();
        let main = dir.join("credvend.toml");
        assert_eq!(
            resolution_chain(&main),
            [
                main.clone(),
                dir.join("..data"),
                dir.join(stamp),
                dir.join(stamp).join("credvend.toml"),
            ]
        );
        let relevant = Relevant::of(&Sources {
            files: vec![main],
            ..Sources::default()
        });
        // The kubelet's swap: `..data_tmp` renamed over `..data`.
        assert!(relevant.matches(&dir.join("..data")));
        assert!(relevant.matches(&dir.join(stamp)));
        assert!(!relevant.matches(&dir.join("..data_tmp")));
        assert!(!relevant.matches(&dir.join("credvend.log")));
    }

    /// Every reload, whatever its outcome, gives the heap its read freed back
    /// (`crate::memory::release_freed_heap`): applied, unchanged (a file event whose
    /// files hash the same, after a full read) and rejected alike.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_reload_gives_the_freed_heap_back() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new("release");
        let dir = &tmp.0;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let main = dir.join("credvend.toml");
        let head = "[sts]\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\"\n\n";
        let write = |role: &str| {
            write_private(&main, &format!("{head}{}", mapping_file(1, role)));
        };
        write("first");
        let (sources, config) = Config::read(&main);
        let config = config.unwrap_or_else(|e| panic!("{:?}", e.problems));
        let clock = crate::clock::ManualClock::starting_now();
        let sts = Arc::new(CountingSts {
            clock: clock.clone(),
            roles: Mutex::new(Vec::new()),
            probes: Default::default(),
        });
        let daemon = Arc::new(Daemon::new(&config, sts, Arc::new(clock)));
        let reloader = Reloader::new(main.clone(), config, sources, daemon);
        // The count is this thread's: other tests' reloads do not move it.
        let releases = crate::memory::releases_on_this_thread;
        let mut outcomes = Vec::new();
        write("second");
        let before = releases();
        outcomes.push(reloader.reload(Trigger::Signal));
        assert_eq!(releases() - before, 1, "applied");
        let before = releases();
        outcomes.push(reloader.reload(Trigger::FileChange));
        assert_eq!(releases() - before, 1, "unchanged");
        write_private(&main, "[sts]\nregion = 42\n");
        let before = releases();
        outcomes.push(reloader.reload(Trigger::Signal));
        assert_eq!(releases() - before, 1, "rejected");
        assert_eq!(
            outcomes,
            [
                ReloadOutcome::Applied,
                ReloadOutcome::Unchanged,
                ReloadOutcome::Rejected
            ]
        );
    }
}
