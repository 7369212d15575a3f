//! Who else could change, or read, what credvend reads (docs/design.md, Security model).
//!
//! Whoever can write a config file, an included file, an include directory or an
//! External ID file decides which roles credvend assumes, with which External IDs, and
//! which tokens open them: that is every customer's credentials. So a file or
//! directory that is writable by group or others, or owned by anyone but root or the
//! user credvend runs as (an owner can always `chmod` it back), is a configuration
//! error; the daemon refuses to start with it and a reload that finds it is rejected.
//! A file readable by group or others (it holds External IDs and token hashes) is only
//! a warning, as before: a Kubernetes Secret mounted with `fsGroup` is group-readable.
//!
//! Symlinks are followed: what is checked is the file they lead to (a Kubernetes
//! ConfigMap mounts each key as a symlink through `..data/` to a root-owned 0644 file,
//! which passes). The link itself has no permissions of its own that matter. On a file
//! system mounted read-only nobody can write, whatever the mode says: Kubernetes mounts
//! ConfigMap and Secret volumes read-only, with the volume's directory at mode 0777 or
//! 1777, so an include directory there passes.
//!
//! Only the files and the include directories are checked, not their parent
//! directories.

use std::fs;
use std::path::Path;

/// What is being checked: the advice differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A config file or an External ID file: its content is secret, too.
    File,
    /// A directory the `include` globs look in: a file dropped there is configuration.
    IncludeDirectory,
}

/// What one check found, as reasons (each names the path and the fix).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Findings {
    /// Configuration errors.
    pub problems: Vec<String>,
    /// Warnings.
    pub warnings: Vec<String>,
}

/// Checks `path` against the effective uid of this process. A path that cannot be
/// inspected yields nothing: reading it reports the error.
pub(super) fn inspect(path: &Path, kind: Kind) -> Findings {
    inspect_as(path, kind, rustix::process::geteuid().as_raw())
}

/// Whether a file or directory with this mode and owner (after symlinks) certainly
/// has no finding: the common case, a private file of root or the service user, finds
/// nothing whatever the mount, so the path need not be resolved nor its file system
/// asked about (most of the cost of reading 100,000 included files). A caller that has
/// the `stat` already skips [`inspect`] then.
pub(super) fn nothing_to_find(mode: u32, owner: u32, kind: Kind, running_as: u32) -> bool {
    let mode = mode & 0o7777;
    let readable = kind == Kind::File && mode & 0o044 != 0;
    mode & 0o022 == 0 && (owner == 0 || owner == running_as) && !readable
}

/// The effective user id of this process.
pub(super) fn running_as() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// [`inspect`] for a process running as `running_as`.
pub(super) fn inspect_as(path: &Path, kind: Kind, running_as: u32) -> Findings {
    use std::os::unix::fs::MetadataExt;
    // `metadata` (like `statvfs`) follows symlinks: the file or directory itself is
    // checked.
    let Ok(metadata) = fs::metadata(path) else {
        return Findings::default();
    };
    let mode = metadata.mode() & 0o7777;
    let owner = metadata.uid();
    if nothing_to_find(mode, owner, kind, running_as) {
        return Findings::default();
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let real = fs::canonicalize(path).unwrap_or_else(|_| absolute.clone());
    let read_only = rustix::fs::statvfs(path)
        .is_ok_and(|fs| fs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    judge(
        &Subject {
            shown: path,
            absolute: &absolute,
            real: &real,
            kind,
        },
        Stat {
            mode,
            owner,
            read_only,
        },
        running_as,
    )
}

/// Why the directory of the control socket (`[control] socket`) is unfit, if it is:
/// missing, not a directory, or writable by group or others (who could then remove the
/// socket and put their own in its place, receiving the orchestrator's mint requests
/// and handing it tokens of their choosing). `None` when it is fit.
pub(super) fn control_socket_dir_problem(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let shown = dir.display();
    let metadata = match fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) => {
            return Some(format!(
                "the socket's directory {shown} cannot be used ({error}); create it owned \
                 by the user credvend runs as, mode 0750 (systemd: RuntimeDirectory=credvend)"
            ));
        }
    };
    if !metadata.is_dir() {
        return Some(format!("{shown} is not a directory"));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "the socket's directory {shown} is writable by group or others (mode {mode:04o}), \
             so another local user could replace the socket with their own: use a directory \
             only credvend can write (`chmod go-w {shown}`, or RuntimeDirectory=credvend)"
        ));
    }
    None
}

struct Subject<'a> {
    /// As the configuration names it.
    shown: &'a Path,
    /// Made absolute, symlinks left alone.
    absolute: &'a Path,
    /// With every symlink resolved: what `chmod`/`chown` should be run on.
    real: &'a Path,
    kind: Kind,
}

impl Subject<'_> {
    /// The path, and where it leads when that is elsewhere.
    fn describe(&self) -> String {
        if self.real == self.absolute {
            self.shown.display().to_string()
        } else {
            format!(
                "{} (which resolves to {})",
                self.shown.display(),
                self.real.display()
            )
        }
    }
}

/// What the file system says about a subject.
#[derive(Debug, Clone, Copy)]
struct Stat {
    /// Permission bits (with setuid, setgid, sticky).
    mode: u32,
    owner: u32,
    /// On a file system mounted read-only.
    read_only: bool,
}

fn judge(subject: &Subject<'_>, stat: Stat, running_as: u32) -> Findings {
    let Stat {
        mode,
        owner,
        read_only,
    } = stat;
    let mut findings = Findings::default();
    let shown = subject.describe();
    let target = subject.real.display();
    let what = match subject.kind {
        Kind::File => "change the configuration",
        Kind::IncludeDirectory => "add or replace configuration files in it",
    };
    if mode & 0o022 != 0 && !read_only {
        findings.problems.push(format!(
            "{shown} is writable by group or others (mode {:04o}), so another local user \
             could {what} and obtain any customer's credentials: run `chmod go-w {target}`",
            mode & 0o7777
        ));
    }
    if owner != 0 && owner != running_as && !read_only {
        let fix = if running_as == 0 {
            // Most likely an operator checking the service's files as root.
            format!(
                "`chown root {target}`, or run credvend as uid {owner} if that is its \
                 service user (`runuser -u credvend -- credvend …`)"
            )
        } else {
            format!("`chown {running_as} {target}` (or `chown root {target}`)")
        };
        findings.problems.push(format!(
            "{shown} is owned by uid {owner}, which is neither root nor the user credvend \
             runs as (uid {running_as}), so that user could {what}: run {fix}"
        ));
    }
    if subject.kind == Kind::File && mode & 0o044 != 0 {
        // Group/other READ is a disclosure, not a takeover: a warning.
        findings.warnings.push(format!(
            "{shown} is readable by group or others (mode {:04o}) and may hold External \
             IDs: run `chmod 600 {target}`",
            mode & 0o7777
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(kind: Kind, mode: u32, owner: u32, running_as: u32) -> Findings {
        judged_on(kind, mode, owner, running_as, false)
    }

    fn judged_on(kind: Kind, mode: u32, owner: u32, running_as: u32, read_only: bool) -> Findings {
        let path = Path::new("/etc/credvend/credvend.toml");
        judge(
            &Subject {
                shown: path,
                absolute: path,
                real: path,
                kind,
            },
            Stat {
                mode,
                owner,
                read_only,
            },
            running_as,
        )
    }

    #[test]
    fn owner_only_files_of_root_or_the_service_user_pass() {
        for owner in [0, 999] {
            assert_eq!(
                judged(Kind::File, 0o600, owner, 999),
                Findings::default(),
                "owner {owner}"
            );
            assert_eq!(
                judged(Kind::IncludeDirectory, 0o755, owner, 999),
                Findings::default(),
                "owner {owner}"
            );
        }
    }

    #[test]
    fn readable_files_are_a_warning_and_readable_directories_nothing() {
        // A kubelet-written ConfigMap file: root, 0644.
        let found = judged(Kind::File, 0o644, 0, 65532);
        assert!(found.problems.is_empty(), "{found:?}");
        assert_eq!(found.warnings.len(), 1, "{found:?}");
        assert!(
            found.warnings[0].contains("chmod 600 /etc/credvend/credvend.toml"),
            "{found:?}"
        );
        assert_eq!(
            judged(Kind::IncludeDirectory, 0o755, 0, 65532),
            Findings::default()
        );
    }

    #[test]
    fn group_or_other_write_is_an_error_naming_the_fix() {
        for mode in [0o620, 0o602, 0o664, 0o666, 0o1777] {
            let found = judged(Kind::File, mode, 999, 999);
            assert_eq!(found.problems.len(), 1, "mode {mode:o}: {found:?}");
            assert!(
                found.problems[0].contains("writable by group or others")
                    && found.problems[0].contains("chmod go-w /etc/credvend/credvend.toml"),
                "{found:?}"
            );
        }
        let found = judged(Kind::IncludeDirectory, 0o775, 0, 999);
        assert_eq!(found.problems.len(), 1, "{found:?}");
    }

    #[test]
    fn a_foreign_owner_is_an_error_naming_the_fix() {
        let found = judged(Kind::File, 0o600, 1000, 999);
        assert_eq!(found.problems.len(), 1, "{found:?}");
        let reason = &found.problems[0];
        assert!(
            reason.contains("owned by uid 1000")
                && reason.contains("runs as (uid 999)")
                && reason.contains("chown 999 /etc/credvend/credvend.toml"),
            "{reason}"
        );
        // Running as root, only root's own files pass; the advice covers an operator
        // checking the service user's files as root.
        let found = judged(Kind::File, 0o600, 999, 0);
        assert_eq!(found.problems.len(), 1, "{found:?}");
        assert!(
            found.problems[0].contains("chown root /etc/credvend/credvend.toml")
                && found.problems[0].contains("run credvend as uid 999"),
            "{found:?}"
        );
    }

    #[test]
    fn nothing_on_a_read_only_mount_is_writable() {
        // A Kubernetes ConfigMap or Secret volume: its directory is 0777 or 1777, and
        // it is mounted read-only.
        for mode in [0o777, 0o1777] {
            assert_eq!(
                judged_on(Kind::IncludeDirectory, mode, 0, 65532, true),
                Findings::default(),
                "mode {mode:o}"
            );
            assert_eq!(
                judged_on(Kind::IncludeDirectory, mode, 0, 65532, false)
                    .problems
                    .len(),
                1,
                "mode {mode:o}"
            );
        }
        assert!(
            judged_on(Kind::File, 0o600, 1000, 65532, true)
                .problems
                .is_empty()
        );
        // Still readable by others: the warning stays.
        assert_eq!(
            judged_on(Kind::File, 0o666, 1000, 65532, true)
                .warnings
                .len(),
            1
        );
    }

    /// The real metadata path, on a file this test creates: a mode it sets, an owner
    /// that is not "the user credvend runs as" because the test says it runs as
    /// someone else (a file owned by root always passes, so when the test runs as root
    /// the file is handed to another uid first).
    #[test]
    fn real_files_are_checked_through_their_symlinks() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
        let dir = std::env::temp_dir().join(format!(
            "credvend-permissions-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        fs::create_dir_all(dir.join("..data")).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let real = dir.join("..data/credvend.toml");
        fs::write(&real, "").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("credvend.toml");
        symlink("..data/credvend.toml", &link).unwrap();

        let me = rustix::process::geteuid().as_raw();
        assert_eq!(inspect(&link, Kind::File), Findings::default());

        // Group-writable behind the link: refused, naming the link and the real file.
        fs::set_permissions(&real, fs::Permissions::from_mode(0o660)).unwrap();
        let found = inspect(&link, Kind::File);
        assert_eq!(found.problems.len(), 1, "{found:?}");
        let real_shown = fs::canonicalize(&real).unwrap();
        assert!(
            found.problems[0].contains(&format!(
                "{} (which resolves to {})",
                link.display(),
                real_shown.display()
            )) && found.problems[0].contains(&format!("chmod go-w {}", real_shown.display())),
            "{found:?}"
        );

        // Owned by someone else.
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
        let other = if me == 0 {
            std::os::unix::fs::chown(&real, Some(4242), None).unwrap();
            4343 // anyone but the owner and root
        } else {
            me + 1
        };
        assert_ne!(fs::metadata(&real).unwrap().uid(), other);
        let found = inspect_as(&link, Kind::File, other);
        assert_eq!(found.problems.len(), 1, "{found:?}");
        assert!(found.problems[0].contains("owned by uid"), "{found:?}");

        let _ = fs::remove_dir_all(&dir);
    }
}
