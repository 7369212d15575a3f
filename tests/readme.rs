//! The README stays a front page, and the pages it sends readers to say what they must.
//!
//! - It is at most [`MAX_README_LINES`] lines: what credvend is, the two set-up commands,
//!   the worked two-customer example, how to point a worker at it, and where to go next.
//!   Reference material (operations, metrics, performance, compatibility, deployment)
//!   lives in `docs/`, and every page there is linked from the README.
//! - The set-up section opens with exactly the two commands CI and newcomers run, and
//!   says what each installs and changes.
//! - The pages a newcomer trying credvend against moto reads say why the default mode
//!   answers 403 `TrustPolicyUnsafe` there, and the fix.
//!
//! Each check fails naming what drifted.

use std::path::PathBuf;

/// A front page of a few screens; the rest belongs in `docs/`.
const MAX_README_LINES: usize = 200;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The body of the section under the heading `title` (any level), up to the next heading
/// of the same or a higher level. Headings inside fenced code blocks do not count.
fn section<'a>(text: &'a str, title: &str) -> Option<&'a str> {
    let mut in_fence = false;
    let mut start: Option<(usize, usize)> = None; // (byte offset of the body, level)
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && line.starts_with('#') {
            let level = line.chars().take_while(|c| *c == '#').count();
            let heading = line[level..].trim();
            match start {
                Some((body, open_level)) if level <= open_level => {
                    return Some(&text[body..offset]);
                }
                None if heading == title => start = Some((offset + line.len(), level)),
                _ => {}
            }
        }
        offset += line.len();
    }
    start.map(|(body, _)| &text[body..])
}

/// `##` headings of the README, in order.
fn top_sections(readme: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut headings = Vec::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && let Some(title) = line.strip_prefix("## ") {
            headings.push(title.trim().to_owned());
        }
    }
    headings
}

#[test]
fn the_readme_is_a_front_page_not_a_manual() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= MAX_README_LINES,
        "README.md has {lines} lines, more than the {MAX_README_LINES} of a front page: move \
         reference material into a page under docs/ and link it from \"Where to go next\""
    );
    let expected = [
        "Set up",
        "Two customers, step by step",
        "Pointing a sync worker at credvend",
        "Where to go next",
    ];
    assert_eq!(
        top_sections(&readme),
        expected,
        "README.md's sections drifted from the front page's outline"
    );
}

#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let readme = read("README.md");
    let mut pages: Vec<String> = std::fs::read_dir(repo_root().join("docs"))
        .expect("read docs/")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            name.ends_with(".md").then_some(name)
        })
        .collect();
    pages.sort();
    assert!(
        pages.len() >= 8,
        "docs/ holds only {pages:?}; is this the repository root?"
    );
    let where_next = section(&readme, "Where to go next").expect("README has \"Where to go next\"");
    let unlinked: Vec<&String> = pages
        .iter()
        .filter(|page| !where_next.contains(&format!("](docs/{page}")))
        .collect();
    assert!(
        unlinked.is_empty(),
        "README.md, \"Where to go next\" does not link these pages under docs/: {unlinked:?}"
    );
}

#[test]
fn the_set_up_section_opens_with_the_two_commands_and_says_what_they_install_and_change() {
    let readme = read("README.md");
    let set_up = section(&readme, "Set up").expect("README has a \"Set up\" section");
    let block_start = set_up.find("```sh\n").expect("a ```sh block in \"Set up\"") + 6;
    let block = &set_up[block_start..];
    let block = &block[..block.find("```").expect("the ```sh block ends")];
    let commands: Vec<&str> = block
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .collect();
    assert_eq!(
        commands,
        ["scripts/demo.sh", "scripts/test.sh"],
        "the set-up block must hold exactly the two commands, each with a one-line comment:\n{block}"
    );
    assert!(
        block.lines().all(|line| line.contains("  # ")),
        "each set-up command carries a one-line comment:\n{block}"
    );
    let first_block = readme.find("```sh\n").unwrap();
    let line_of_block = readme[..first_block].lines().count() + 1;
    assert!(
        line_of_block <= 30,
        "the set-up commands start on line {line_of_block} of README.md; keep them near the top"
    );
    // What the scripts install (apt-get packages, each named in the scripts too, so the
    // list below is not made up) and what they change.
    let scripts: String = [
        "scripts/test.sh",
        "scripts/demo.sh",
        "scripts/setup-python.sh",
        "scripts/setup-node.sh",
        "scripts/setup-go.sh",
    ]
    .iter()
    .map(|s| read(s))
    .collect();
    for package in [
        "prometheus",
        "systemd",
        "nodejs",
        "npm",
        "golang-go",
        "golang-github-aws-aws-sdk-go-v2-dev",
        "python3-venv",
        "curl",
    ] {
        assert!(
            scripts.contains(package),
            "no set-up script installs `{package}` any more; drop it from this list and the README"
        );
        assert!(
            set_up.contains(&format!("`{package}`")),
            "README.md, \"Set up\" does not say that the scripts install `{package}`"
        );
    }
    for said in [
        "`.venv/`",
        "`tests/compat/js/node_modules/`",
        "`.tools/demo/`",
        "`target/`",
        "No tracked file",
    ] {
        assert!(
            set_up.contains(said),
            "README.md, \"Set up\" no longer says what the scripts install or change: {said} is missing"
        );
    }
}

#[test]
fn the_worker_section_shows_both_endpoint_forms() {
    let readme = read("README.md");
    let worker = section(&readme, "Pointing a sync worker at credvend")
        .expect("README has \"Pointing a sync worker at credvend\"");
    for needed in [
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "/v1/credentials/acme-s3",
        "/v1/credentials`",
    ] {
        assert!(
            worker.contains(needed),
            "README.md, \"Pointing a sync worker at credvend\" does not mention {needed}"
        );
    }
}

/// Against moto the default `require` mode refuses every role: the page a newcomer reads
/// says so, with the fix, and the README links that section.
#[test]
fn the_moto_section_explains_the_403_and_its_fix() {
    let page = "docs/configuration.md";
    let heading = "Trying credvend against moto";
    let text = read(page);
    let moto = section(&text, heading).unwrap_or_else(|| panic!("{page} has no \"{heading}\""));
    for needed in [
        "scripts/moto.sh start",
        "403 `TrustPolicyUnsafe`",
        "`require`",
        "external_id_enforcement = \"warn\"",
        "`[verify] external_id_enforcement = \"warn\"`",
        "Never lower it against real",
    ] {
        assert!(
            moto.contains(needed),
            "{page}, \"{heading}\" must say why moto gets 403 and how to fix it; missing: {needed}"
        );
    }
    let readme = read("README.md");
    let link = format!("]({page}#trying-credvend-against-moto)");
    assert!(
        readme.contains(&link),
        "README.md does not link {page}#…: no `{link}`"
    );
    let demo = read("config/demo.toml");
    assert!(
        demo.contains("TrustPolicyUnsafe") && demo.contains(&format!("{page}, \"{heading}\"")),
        "config/demo.toml's [verify] comment must name TrustPolicyUnsafe and point at {page}"
    );
    // The section parser itself: a later heading ends the section.
    assert!(
        !moto.contains("\n## "),
        "the section ran into the next heading"
    );
}
