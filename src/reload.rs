//! Hot reload (docs/design.md, Reload): `SIGHUP`, or a change on disk of the config file,
//! an included file, or a file appearing in an include directory.
//!
//! Every reload re-reads and re-validates everything, then swaps atomically through
//! [`Daemon::apply_config`]: only mappings whose AssumeRole inputs changed lose their
//! credentials, removed mappings stop serving, new ones work at once, and requests in
//! flight finish against the generation they started with. An invalid file is rejected
//! whole — the running configuration keeps serving — with one ERROR per problem (file,
//! key, reason) and `credvend_config_reloads_total{result="error"}`.
//!
//! File watching uses the `notify` crate on the *directories* holding the files, not the
//! files: editors save by writing a new file and renaming it over the old one, and
//! Kubernetes updates a mounted ConfigMap by swapping a symlink, both of which a watch
//! on the old file would miss. Bursts of events are debounced, and a change only
//! triggers a reload when the content of what credvend reads actually changed. Events
//! that only say a file was opened or read are ignored.
//!
//! No watch runs while a reload does (nor before the first one is set up): once the new
//! watch is in place, the caller asks [`Reloader::changed_on_disk`], so a change made in
//! between is reloaded rather than lost. For the same reason the files are digested
//! before they are read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_debouncer_mini::notify::event::{AccessKind, AccessMode};
use notify_debouncer_mini::notify::{
    self, Event, EventHandler, EventKind, RecommendedWatcher, RecursiveMode, Watcher, WatcherKind,
};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer_opt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::daemon::Daemon;
use crate::events::{ConfigReloadApplied, ConfigReloadRejected};

/// Quiet period before a burst of file events becomes one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: always reload (the operator asked).
    Signal,
    /// A file event: reload only if what credvend reads changed.
    FileChange,
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
    current: Config,
    /// Digest of every file the current config was read from (plus the include
    /// directories' listings), to ignore file events that change nothing.
    digest: [u8; 32],
}

impl Reloader {
    pub fn new(path: PathBuf, current: Config, daemon: Arc<Daemon>) -> Self {
        let (_, digest) = content_digest(&current);
        Self {
            path,
            daemon,
            state: Mutex::new(State { current, digest }),
        }
    }

    /// The files and include directories of the applied configuration.
    pub fn watch_targets(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let state = self.lock();
        (
            state.current.files.clone(),
            state.current.include_dirs.clone(),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One reload. systemd is told `RELOADING=1` before and `READY=1` after, whatever
    /// the outcome.
    pub fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        let mut state = self.lock();
        // The files are digested before they are read: a write landing while they are
        // loaded then shows as a change at the next check, instead of passing for what
        // was applied.
        let (paths, before) = content_digest(&state.current);
        if trigger == Trigger::FileChange && before == state.digest {
            debug!(config = %self.path.display(), "Configuration files unchanged; nothing to reload");
            return ReloadOutcome::Unchanged;
        }
        info!(config = %self.path.display(), trigger = ?trigger, "Reload requested");
        crate::notify::reloading();
        let outcome = match Config::load(&self.path) {
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
                }
                .emit(self.daemon.metrics());
                // Same files as before (an edit): the digest taken before the load. A
                // file added or removed: digest the new set now (a write to it during
                // this reload would be taken for applied; rare, and the next write to
                // it reloads).
                let new_paths = digest_paths(&new);
                state.digest = if new_paths == paths {
                    before
                } else {
                    digest_of(&new_paths)
                };
                state.current = new;
                ReloadOutcome::Applied
            }
            Err(problems) => {
                ConfigReloadRejected {
                    path: &self.path,
                    problems: &problems.problems,
                }
                .emit(self.daemon.metrics());
                // Remember what was rejected so the same bad content is not re-reported
                // on every file event; a SIGHUP still retries it.
                state.digest = before;
                ReloadOutcome::Rejected
            }
        };
        crate::notify::ready();
        outcome
    }

    /// Whether the files now differ from what the last reload applied or rejected (what
    /// a [`Trigger::FileChange`] reload would act on). Logs nothing, changes nothing:
    /// for a caller that was not watching for a while (while a reload ran) to catch up.
    pub fn changed_on_disk(&self) -> bool {
        let state = self.lock();
        content_digest(&state.current).1 != state.digest
    }
}

/// The files of `config` and the `.toml` files now in its include directories (so a new
/// drop-in counts as a change), with the SHA-256 of their paths and content.
fn content_digest(config: &Config) -> (BTreeSet<PathBuf>, [u8; 32]) {
    let paths = digest_paths(config);
    let digest = digest_of(&paths);
    (paths, digest)
}

fn digest_paths(config: &Config) -> BTreeSet<PathBuf> {
    let mut paths: BTreeSet<PathBuf> = config.files.iter().cloned().collect();
    for dir in &config.include_dirs {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "toml") {
                    paths.insert(path);
                }
            }
        }
    }
    paths
}

fn digest_of(paths: &BTreeSet<PathBuf>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for path in paths {
        hasher.update(path.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        match std::fs::read(path) {
            Ok(bytes) => {
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(&bytes);
            }
            Err(_) => hasher.update(b"\xffmissing"),
        }
    }
    hasher.finalize().into()
}

/// Settings that only take effect at start-up (sockets, STS client, log setup).
fn warn_restart_only_changes(path: &Path, old: &Config, new: &Config) {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen || old.server.admin_listen != new.server.admin_listen
    {
        changed.push("server.listen/admin_listen");
    }
    if old.sts.region != new.sts.region
        || old.sts.endpoint_url != new.sts.endpoint_url
        || old.sts.source_role_arn != new.sts.source_role_arn
        || old.sts.max_requests_per_second != new.sts.max_requests_per_second
        || old.sts.call_timeout != new.sts.call_timeout
    {
        changed.push("sts");
    }
    if old.log.level != new.log.level || old.log.format != new.log.format {
        changed.push("log");
    }
    if !changed.is_empty() {
        warn!(
            config = %path.display(),
            sections = ?changed,
            "These settings changed but take effect only after a restart"
        );
    }
}

/// A running watch on the configuration's directories. Dropping it stops watching.
pub struct ConfigWatcher {
    _debouncer: Debouncer<ChangeWatcher>,
}

/// The platform's watcher, without the events that only say a file was opened or read
/// (inotify reports every open): credvend reads its files right after (re)starting a
/// watch, and would otherwise wake itself up every debounce period; an operator or a
/// backup reading them changes nothing either. A close after writing is kept.
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

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    pub path: PathBuf,
    #[source]
    pub source: notify_debouncer_mini::notify::Error,
}

impl ConfigWatcher {
    /// Watches the directories of `files` and `include_dirs`; every debounced burst of
    /// events becomes one message on the returned channel.
    pub fn start(
        files: &[PathBuf],
        include_dirs: &[PathBuf],
        debounce: Duration,
    ) -> Result<(Self, mpsc::UnboundedReceiver<()>), WatchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut debouncer = new_debouncer_opt::<_, ChangeWatcher>(
            notify_debouncer_mini::Config::default().with_timeout(debounce),
            move |result: DebounceEventResult| match result {
                Ok(events) if !events.is_empty() => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(error) => warn!(%error, "Config file watch error"),
            },
        )
        .map_err(|source| WatchError {
            path: PathBuf::new(),
            source,
        })?;
        let mut dirs: BTreeSet<PathBuf> = include_dirs.iter().cloned().collect();
        for file in files {
            let dir = match file.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            dirs.insert(dir);
        }
        for dir in dirs {
            debouncer
                .watcher()
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    path: dir.clone(),
                    source,
                })?;
            debug!(dir = %dir.display(), "Watching for configuration changes");
        }
        Ok((
            Self {
                _debouncer: debouncer,
            },
            rx,
        ))
    }
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
    // Set at start and after every reload: no watch ran until now, so a change made
    // meanwhile has no event coming and is looked for on disk once the watch is in place.
    let mut look_on_disk = true;
    loop {
        // (Re)start the watch on the applied config's files: a reload may have
        // changed which include directories exist.
        let (files, include_dirs) = reloader.watch_targets();
        let (watcher, mut changes) = match ConfigWatcher::start(&files, &include_dirs, DEBOUNCE) {
            Ok((watcher, changes)) => (Some(watcher), Some(changes)),
            Err(e) => {
                warn!(error = %e, "File watching unavailable; reload with SIGHUP");
                (None, None)
            }
        };
        let changed_meanwhile = std::mem::take(&mut look_on_disk)
            && tokio::task::block_in_place(|| reloader.changed_on_disk());
        let trigger = if changed_meanwhile {
            Trigger::FileChange
        } else {
            tokio::select! {
                Some(_) = async { hup.as_mut()?.recv().await } => Trigger::Signal,
                Some(()) = async { changes.as_mut()?.recv().await } => Trigger::FileChange,
                else => return,
            }
        };
        drop(watcher);
        // Config::load reads files: keep it off the async workers.
        let outcome = tokio::task::block_in_place(|| reloader.reload(trigger));
        debug!(?outcome, "Reload finished");
        look_on_disk = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind};

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
        let (_watcher, mut changes) =
            ConfigWatcher::start(std::slice::from_ref(&file), &[], debounce).unwrap();

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
}
