//! The documentation stays honest: every repository path a page names (in backticks or
//! in a code block) and every relative link (with its `#anchor`) exists, no page names
//! a path from before the move to `crates/`, every page under docs/ stands on its own
//! (a title and an introduction) and is linked from the README, and the README stays a
//! short front door that opens with its two commands.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The README is read in five minutes; past this it is growing back into a manual.
const README_MAX_LINES: usize = 260;

/// Where a path a page names may start: the repository's top level.
const ROOTS: &[&str] = &[
    "src/",
    "tests/",
    "crates/",
    "scripts/",
    "docs/",
    "fuzz/",
    "packaging/",
    "reader.conf.d/",
    ".ci/",
];
const ROOT_FILES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    "Info.plist.in",
    "README.md",
];
/// Build and fuzzing output a page may name; not in the repository.
const GENERATED: &[&str] = &["fuzz/target", "fuzz/out", "target"];
/// Top-level directories of the layout before the move to `crates/`.
const MOVED: &[(&str, &str)] = &[
    ("driver/", "the root (src/, build.rs, Info.plist.in)"),
    ("protocol/", "crates/protocol/"),
    ("tools/", "crates/tools/, crates/testing/ or tests/"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/, as (path relative to the root, text).
fn pages() -> Vec<(PathBuf, String)> {
    let mut names = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| Path::new("docs").join(p.file_name().unwrap()))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = fs::read_to_string(root().join(&n)).unwrap();
            (n, text)
        })
        .collect()
}

/// A page's lines, each marked whether it lies inside a fenced code block (the fence
/// lines themselves count as inside).
fn lines(text: &str) -> Vec<(bool, &str)> {
    let mut fenced = false;
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return (true, l);
            }
            (fenced, l)
        })
        .collect()
}

/// The text of the inline code spans of a line outside code blocks.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// The targets of the Markdown links `[text](target)` of a line.
fn link_targets(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        match rest.find(')') {
            Some(j) => {
                out.push(&rest[..j]);
                rest = &rest[j..];
            }
            None => break,
        }
    }
    out
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings, duplicates numbered as GitHub numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (fenced, line) in lines(text) {
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = slug(line.trim_start_matches('#'));
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// The words of a span or code line that name a repository path.
fn repo_paths(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_start_matches(['"', '\'', '('])
                .trim_end_matches(['"', '\'', ')', ',', ';', ':', '.'])
        })
        // `path:LINE` and `path:LINE:COLUMN` (a mutant's place) name the file.
        .map(|w| {
            let mut w = w;
            while let Some((head, tail)) = w.rsplit_once(':') {
                if tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit()) {
                    break;
                }
                w = head;
            }
            w
        })
        .filter(|w| ROOTS.iter().any(|r| w.starts_with(r)) || ROOT_FILES.contains(w))
        .filter(|w| {
            !GENERATED.iter().any(|g| {
                w.strip_prefix(g)
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'))
            })
        })
        // Globs, variables and placeholders (`fuzz/seeds/TARGET/`) name no one file.
        .filter(|w| !w.contains(['*', '$', '{', '<', '[', '~']))
        .filter(|w| {
            !w.split('/').any(|seg| {
                seg.len() > 2
                    && !seg.contains('.')
                    && seg.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            })
        })
        // `file.rs:383:76` (a line and column, as cargo-mutants names a mutant) names
        // the file.
        .map(|w| {
            let mut path = w;
            while let Some((head, tail)) = path.rsplit_once(':') {
                if tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit()) {
                    break;
                }
                path = head;
            }
            path.to_owned()
        })
        .collect()
}

/// The words of a span that start with a directory the move to `crates/` removed.
fn moved_paths(text: &str) -> Vec<(String, &'static str)> {
    text.split_whitespace()
        .map(|w| w.trim_start_matches(['"', '\'', '(']))
        .filter_map(|w| {
            MOVED
                .iter()
                .find(|(old, _)| w.starts_with(old))
                .map(|(_, new)| (w.to_owned(), *new))
        })
        .collect()
}

/// `base/rel` with `.` and `..` resolved, without touching the file system.
fn join(base: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn every_path_a_page_names_exists() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for (page, text) in pages() {
        for (n, (fenced, line)) in lines(&text).into_iter().enumerate() {
            // In a code block, an indented line continues the line above or is a child
            // in a tree whose paths are relative to its parent: only unindented lines
            // name paths from the root.
            let spans = if fenced {
                if line.starts_with(char::is_whitespace) {
                    vec![]
                } else {
                    vec![line]
                }
            } else {
                code_spans(line)
            };
            for span in spans {
                for path in repo_paths(span) {
                    checked += 1;
                    if !root().join(&path).exists() {
                        missing.push(format!("{}:{}: `{path}`", page.display(), n + 1));
                    }
                }
                if !fenced {
                    for (old, new) in moved_paths(span) {
                        missing.push(format!(
                            "{}:{}: `{old}` is from before the move: now under {new}",
                            page.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths that do not exist:\n{}",
        missing.join("\n")
    );
    // The pages name dozens of paths: a parser that finds none checks nothing.
    assert!(checked > 50, "only {checked} paths found");
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let pages = pages();
    let mut broken = Vec::new();
    let mut checked = 0;
    for (page, text) in &pages {
        let dir = page.parent().unwrap();
        for (n, (fenced, line)) in lines(text).into_iter().enumerate() {
            if fenced {
                continue;
            }
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target, None),
                };
                let linked = if file.is_empty() {
                    page.clone()
                } else {
                    join(dir, file)
                };
                let at = format!("{}:{}: ({target})", page.display(), n + 1);
                if !root().join(&linked).exists() {
                    broken.push(format!("{at}: no {}", linked.display()));
                    continue;
                }
                if let Some(anchor) = anchor {
                    let linked_text = fs::read_to_string(root().join(&linked)).unwrap();
                    if !anchors(&linked_text).contains(anchor) {
                        broken.push(format!("{at}: no heading #{anchor} there"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 30, "only {checked} links found");
}

#[test]
fn the_readme_is_a_short_front_door_that_opens_with_its_two_commands() {
    let text = fs::read_to_string(root().join("README.md")).unwrap();
    let count = text.lines().count();
    assert!(
        count <= README_MAX_LINES,
        "README.md has {count} lines (at most {README_MAX_LINES}): move the detail to a page under docs/"
    );
    // The first code block, before any section, is the two commands.
    let first_section = text.find("\n## ").expect("README has sections");
    let head = &text[..first_section];
    let block: Vec<&str> = head
        .split("```")
        .nth(1)
        .expect("a code block before the first section")
        .lines()
        .skip(1)
        .collect();
    assert!(
        block.len() >= 2
            && block[0].starts_with("scripts/demo")
            && block[1].starts_with("scripts/test"),
        "the README's first code block must be scripts/demo then scripts/test:\n{}",
        block.join("\n")
    );
    assert!(head.contains("fresh Debian 12"), "{head}");
}

#[test]
fn every_docs_page_stands_on_its_own_and_is_linked_from_the_readme() {
    let pages = pages();
    let readme = &pages[0].1;
    let mut problems = Vec::new();
    for (page, text) in &pages[1..] {
        let name = page.display();
        if !readme.contains(&format!("]({name})")) {
            problems.push(format!("{name}: not linked from README.md"));
        }
        let mut ls = text.lines();
        if !ls.next().is_some_and(|l| l.starts_with("# ")) {
            problems.push(format!("{name}: does not start with a `# ` title"));
        }
        // An introduction: prose before the first section or code block.
        let intro: Vec<&str> = ls
            .take_while(|l| !l.starts_with("## ") && !l.starts_with("```"))
            .filter(|l| !l.trim().is_empty())
            .collect();
        if intro.is_empty() {
            problems.push(format!("{name}: no introduction under its title"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checks_see_what_they_check() {
    assert_eq!(
        slug("Several readers, and `VPCD_LOG`"),
        "several-readers-and-vpcd_log"
    );
    assert_eq!(
        slug("Time to a usable card (vpcd-run)"),
        "time-to-a-usable-card-vpcd-run"
    );
    assert_eq!(
        repo_paths("scripts/install --no-build and \"tests/sandbox/check\"."),
        ["scripts/install", "tests/sandbox/check"]
    );
    assert!(repo_paths("fuzz/seeds/TARGET/ target/debian/vpcd-rs_*.deb ./tests/run.sh").is_empty());
    assert_eq!(
        repo_paths("crates/protocol/src/config.rs:383:76 src/net.rs:12"),
        ["crates/protocol/src/config.rs", "src/net.rs"]
    );
    assert_eq!(
        moved_paths("tools/tests/hostile.rs")[0].0,
        "tools/tests/hostile.rs"
    );
    assert!(moved_paths("crates/tools/tests/check.rs").is_empty());
    assert_eq!(
        link_targets("[a](docs/A.md#x) and [b](#y)"),
        ["docs/A.md#x", "#y"]
    );
    assert_eq!(
        join(Path::new("docs"), "../README.md"),
        PathBuf::from("README.md")
    );
}
