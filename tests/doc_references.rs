//! Every reference a reader may follow leads somewhere that exists.
//!
//! Scans the repository's files (those git tracks plus new untracked ones, or a directory
//! walk when git is unavailable) of the kinds that carry prose: Rust, Markdown, shell,
//! TOML, YAML, JSON, systemd units, the Dockerfile, the compatibility clients and
//! extension-less scripts. On every line it checks that:
//!
//! - each path ending in `.md` names an existing file, relative to the repository root
//!   or to the mentioning file's directory (a Markdown link target only relative to its
//!   own directory, as a Markdown renderer resolves it), and an `#anchor` after it names
//!   a heading of that file;
//! - each reference of the form `docs/design.md, Wire contract` names headings of the
//!   design document. The section text runs to the next `)`, `]`, `.`, `,`, `;`, `:` or
//!   the end of the line, and may name two sections joined by " and ". Keep such a
//!   reference on one line. A form in angle brackets (`<Heading>`) cites nothing;
//! - each reference of the form `docs/onboarding.md, "Onboarding a customer"` (a Markdown
//!   file, a comma, a heading in double quotes) names a heading of that file;
//! - the old external design brief is named nowhere, and no section-sign number or bare
//!   issue number (which a reader of the repository cannot follow) is left.
//!
//! Offenders are listed all at once, as `FILE:LINE: problem`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The external brief the code used to cite; spelled in two halves so that this file
/// does not name it.
const OLD_BRIEF: &str = concat!("DESIGN", ".md");
/// The section sign.
const SECTION_SIGN: char = '\u{a7}';
/// The project's design document, relative to the repository root.
const DESIGN_DOC: &str = "docs/design.md";

/// File extensions that carry comments or prose worth checking.
const EXTENSIONS: [&str; 14] = [
    "rs", "md", "sh", "toml", "yml", "yaml", "json", "service", "sysusers", "py", "mjs", "go",
    "txt", "dict",
];
/// Directories never scanned by the walk used when git is unavailable (build output,
/// tool installs, generated corpora).
const SKIP_DIRS: [&str; 8] = [
    "target",
    ".venv",
    "node_modules",
    ".git",
    ".tools",
    "corpus",
    "artifacts",
    "coverage",
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Repository-relative paths of the files to scan.
fn files_to_scan(root: &Path) -> Vec<String> {
    let listed = Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output();
    let mut files: Vec<String> = match listed {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .split('\0')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => {
            let mut found = Vec::new();
            walk(root, root, &mut found);
            found
        }
    };
    files.retain(|rel| is_scanned_kind(root, rel));
    files.sort();
    files.dedup();
    files
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !SKIP_DIRS.contains(&name.as_str()) {
                walk(root, &path, found);
            }
        } else if let Ok(rel) = path.strip_prefix(root) {
            found.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn is_scanned_kind(root: &Path, rel: &str) -> bool {
    let path = Path::new(rel);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if name == "Dockerfile" {
        return true;
    }
    match path.extension() {
        Some(ext) => EXTENSIONS.contains(&ext.to_string_lossy().as_ref()),
        // Extension-less files count when they are scripts (e.g. .ci/run).
        None => std::fs::read(root.join(rel)).is_ok_and(|bytes| bytes.starts_with(b"#!")),
    }
}

/// Lexically normalised `base/rel`, or `None` when it climbs out of the repository.
fn join_normalised(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = base
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    for piece in rel.split('/') {
        match piece {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p.to_owned()),
        }
    }
    Some(parts.iter().collect())
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Headings of a Markdown file (outside fenced code blocks).
#[derive(Default)]
struct Headings {
    titles: BTreeSet<String>,
    anchors: BTreeSet<String>,
}

fn parse_headings(text: &str) -> Headings {
    let mut headings = Headings::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        let Some(title) = line[hashes..].strip_prefix(' ') else {
            continue;
        };
        let title = title.trim().trim_end_matches('#').trim().to_owned();
        let base = slug(&title);
        let n = seen.entry(base.clone()).or_insert(0);
        let anchor = if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        *n += 1;
        headings.anchors.insert(anchor);
        headings.titles.insert(title);
    }
    headings
}

struct Checker {
    root: PathBuf,
    /// Headings of every Markdown file looked at so far, by repository-relative path.
    headings: BTreeMap<PathBuf, Headings>,
    /// How many `.md` references resolved, to prove the scan saw some.
    resolved: usize,
    /// How many section references into the design document were checked.
    design_sections: usize,
}

impl Checker {
    fn new(root: PathBuf) -> Self {
        Checker {
            root,
            headings: BTreeMap::new(),
            resolved: 0,
            design_sections: 0,
        }
    }

    fn headings_of(&mut self, rel: &Path) -> &Headings {
        let root = &self.root;
        self.headings.entry(rel.to_owned()).or_insert_with(|| {
            parse_headings(&std::fs::read_to_string(root.join(rel)).unwrap_or_default())
        })
    }

    /// Resolves a `.md` path mentioned in `file`: a repository-relative path to an
    /// existing file, or `None`.
    fn resolve(&self, file: &str, target: &str, link: bool) -> Option<PathBuf> {
        let dir = Path::new(file).parent().unwrap_or(Path::new(""));
        let mut candidates = vec![join_normalised(dir, target)];
        if !link {
            candidates.push(join_normalised(Path::new(""), target));
        }
        candidates
            .into_iter()
            .flatten()
            .find(|rel| self.root.join(rel).is_file())
    }

    /// Every problem on every line of `text`, the contents of repository file `file`.
    fn check_text(&mut self, file: &str, text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            for problem in self.check_line(file, line) {
                problems.push(format!("{file}:{}: {problem}", i + 1));
            }
        }
        problems
    }

    fn check_line(&mut self, file: &str, line: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if line.contains(OLD_BRIEF) {
            problems.push(format!(
                "names {OLD_BRIEF}, the old external brief; point at {DESIGN_DOC}, <Section> \
                 or at a file in the repository instead"
            ));
        }
        if has_section_number(line) {
            problems.push(format!(
                "a {SECTION_SIGN}N reference no reader can follow; name the section of \
                 {DESIGN_DOC} or a file instead"
            ));
        }
        if has_issue_number(line) {
            problems.push(
                "an issue-number reference no reader can follow; say in words what it means"
                    .to_owned(),
            );
        }
        for mention in md_mentions(line) {
            if mention.path.contains(OLD_BRIEF) {
                continue; // reported above
            }
            let Some(target) = self.resolve(file, &mention.path, mention.link) else {
                problems.push(format!(
                    "`{}` names a Markdown file that does not exist{}",
                    mention.path,
                    if mention.link {
                        " (a link resolves from the file's own directory)"
                    } else {
                        ""
                    }
                ));
                continue;
            };
            self.resolved += 1;
            if let Some(anchor) = &mention.anchor
                && !self.headings_of(&target).anchors.contains(anchor)
            {
                problems.push(format!(
                    "`{}#{anchor}`: {} has no heading with that anchor",
                    mention.path,
                    target.display()
                ));
            }
            let rest = &line[mention.end..];
            let Some(after) = rest.strip_prefix(", ") else {
                continue;
            };
            if let Some(quoted) = after.strip_prefix('"') {
                let Some(close) = quoted.find('"') else {
                    continue;
                };
                let title = &quoted[..close];
                if !self.headings_of(&target).titles.contains(title) {
                    problems.push(format!(
                        "`{}, \"{title}\"`: {} has no heading \"{title}\"",
                        mention.path,
                        target.display()
                    ));
                }
            } else if target == Path::new(DESIGN_DOC) && !after.starts_with('<') {
                // (`<Heading>` in angle brackets describes the form; it cites nothing.)
                let end = after
                    .find([')', ']', '.', ',', ';', ':', '"', '`', '|', '*'])
                    .unwrap_or(after.len());
                let sections = after[..end].trim();
                for section in sections.split(" and ") {
                    self.design_sections += 1;
                    if !self.headings_of(&target).titles.contains(section) {
                        let known: Vec<String> =
                            self.headings_of(&target).titles.iter().cloned().collect();
                        problems.push(format!(
                            "`{DESIGN_DOC}, {section}`: {DESIGN_DOC} has no such heading \
                             (keep the reference on one line; headings: {})",
                            known.join(" / ")
                        ));
                    }
                }
            }
        }
        problems
    }
}

/// A section sign followed (after optional spaces) by a digit.
fn has_section_number(line: &str) -> bool {
    line.match_indices(SECTION_SIGN).any(|(i, s)| {
        line[i + s.len()..]
            .trim_start_matches([' ', '\u{a0}'])
            .starts_with(|c: char| c.is_ascii_digit())
    })
}

/// The word "issue" followed by a number (optionally `#`), unless the line carries a URL
/// that the reader can follow.
fn has_issue_number(line: &str) -> bool {
    if line.contains("://") {
        return false;
    }
    let lower = line.to_ascii_lowercase();
    let word = "issue";
    lower.match_indices(word).any(|(i, _)| {
        let before_ok = !lower[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let after = lower[i + word.len()..].trim_start_matches(' ');
        let after = after.strip_prefix('#').unwrap_or(after);
        before_ok && after.starts_with(|c: char| c.is_ascii_digit())
    })
}

struct Mention {
    /// The path as written, e.g. `docs/design.md` or `../README.md`.
    path: String,
    anchor: Option<String>,
    /// Written as a Markdown link target (right after `](`).
    link: bool,
    /// Byte offset just after the mention (path and anchor).
    end: usize,
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// Every Markdown path (ending in `.md`, with an optional `#anchor`) on a line. Absolute paths and URLs (the
/// path then starts with `/`) and names with an empty stem (`*.md`, `{name}.md`) are not
/// repository references and are skipped.
fn md_mentions(line: &str) -> Vec<Mention> {
    let mut mentions = Vec::new();
    for (i, _) in line.match_indices(".md") {
        let end_of_ext = i + 3;
        if line[end_of_ext..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue; // .mdx, .md5, ...
        }
        let start = line[..i]
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_path_char(*c))
            .last()
            .map_or(i, |(j, _)| j);
        let path = &line[start..end_of_ext];
        let file_name = path.rsplit('/').next().unwrap_or("");
        let stem = &file_name[..file_name.len() - 3];
        if path.starts_with('/') || !stem.chars().any(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let mut end = end_of_ext;
        let mut anchor = None;
        if let Some(rest) = line[end_of_ext..].strip_prefix('#') {
            let a: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            end += 1 + a.len();
            anchor = Some(a);
        }
        let link = line[..start].ends_with("](");
        mentions.push(Mention {
            path: path.to_owned(),
            anchor,
            link,
            end,
        });
    }
    mentions
}

#[test]
fn every_reference_names_something_that_exists() {
    let root = repo_root();
    let files = files_to_scan(&root);
    for must in [
        "README.md",
        "src/lib.rs",
        "Cargo.toml",
        "Dockerfile",
        ".ci/run",
    ] {
        assert!(
            files.iter().any(|f| f == must),
            "the scan does not include {must}; it found {} files",
            files.len()
        );
    }
    let mut checker = Checker::new(root.clone());
    let mut problems = Vec::new();
    for file in &files {
        // Unreadable (deleted but still in the index) or non-UTF-8 files carry no prose.
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            continue;
        };
        problems.extend(checker.check_text(file, &text));
    }
    assert!(
        problems.is_empty(),
        "{} reference(s) a reader cannot follow:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The scan really read references: the README alone links docs/design.md and every
    // other page under docs/, and the sources cite sections of the design document.
    assert!(
        checker.resolved >= 20,
        "only {} Markdown references resolved; is the scan reading the files?",
        checker.resolved
    );
    assert!(
        checker.design_sections >= 20,
        "only {} `{DESIGN_DOC}, Section` references checked",
        checker.design_sections
    );
}

#[test]
fn the_readme_opens_with_a_link_to_the_design_document() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let first_paragraph: String = readme
        .lines()
        .skip_while(|l| l.starts_with('#') || l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        first_paragraph.contains(&format!("]({DESIGN_DOC})")),
        "the README's first paragraph does not link {DESIGN_DOC}:\n{first_paragraph}"
    );
}

/// The checker catches each kind of broken reference (the inputs are built at run time,
/// so this file itself names none of them).
#[test]
fn the_checker_reports_each_kind_of_broken_reference() {
    let mut checker = Checker::new(repo_root());
    let md = ".md";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("see docs/no-such-file{md} for more"),
            "does not exist",
        ),
        (format!("[design](design{md})"), "does not exist"),
        (
            format!("[design](../{DESIGN_DOC}#no-such-anchor)"),
            "no heading with that anchor",
        ),
        (
            format!("({DESIGN_DOC}, Wire protocol)"),
            "has no such heading",
        ),
        (
            format!("({DESIGN_DOC}, Reload and Hot swap)"),
            "has no such heading",
        ),
        (
            format!("(README{md}, \"No such heading\")"),
            "has no heading",
        ),
        (format!("see {OLD_BRIEF}"), "the old external brief"),
        (
            format!("rule {SECTION_SIGN}4 says"),
            "reference no reader can follow",
        ),
        (
            format!("rule {SECTION_SIGN} 4 says"),
            "reference no reader can follow",
        ),
        (format!("(is{}ue 7, item 3)", "s"), "issue-number reference"),
        (format!("(Is{}ue #12)", "s"), "issue-number reference"),
    ];
    for (line, expected) in &cases {
        let problems = checker.check_text("src/example.rs", line);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "`{line}` should be reported with \"{expected}\", got {problems:?}"
        );
        assert!(
            problems.iter().all(|p| p.starts_with("src/example.rs:1: ")),
            "problems should name file and line: {problems:?}"
        );
    }
    let fine: Vec<(&str, String)> = vec![
        (
            "src/example.rs",
            format!("see {DESIGN_DOC}, Wire contract and Credential lifecycle."),
        ),
        (
            "README.md",
            format!("[{DESIGN_DOC}, Module map]({DESIGN_DOC}#module-map)"),
        ),
        (
            "src/example.rs",
            format!(
                "(docs/onboarding{md}, \"Onboarding a customer\") and (README{md}, \"Set up\")"
            ),
        ),
        (
            "docs/soak.md",
            format!("[compat](compatibility{md}), fuzz/README{md}"),
        ),
        (
            "fuzz/README.md",
            format!("[design](../{DESIGN_DOC}#wire-contract)"),
        ),
        (
            "src/example.rs",
            format!("file:///usr/share/doc/credvend/README{md}, https://example.com/x/README{md}"),
        ),
        (
            "src/example.rs",
            format!("every *{md} file, {{name}}{md}, tissue 3"),
        ),
        (
            "src/example.rs",
            format!("cite it as \"{DESIGN_DOC}, <Heading>\""),
        ),
        (
            "src/example.rs",
            format!(
                "hyper is{}ue 3012 (https://github.com/hyperium/hyper/issues/3012)",
                "s"
            ),
        ),
    ];
    for (file, line) in &fine {
        let problems = checker.check_text(file, line);
        assert!(
            problems.is_empty(),
            "`{line}` in {file} should pass, got {problems:?}"
        );
    }
}
