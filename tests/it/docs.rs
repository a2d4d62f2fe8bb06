//! The docs as a reader follows them: the README stays a front door (short,
//! leading to every page of docs/), and every relative link in it, in docs/
//! and in the top-level pages reaches a file, and a heading when it names one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The README is read in one screenful or two; the rest lives in docs/.
const README_MOST_LINES: usize = 200;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, RELIABILITY.md, BENCHMARKS.md and every page of docs/.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages: Vec<PathBuf> = ["README.md", "RELIABILITY.md", "BENCHMARKS.md"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines a reader sees as prose and headings: fenced and indented code
/// blocks are left out (a `](` in a shell line is no link).
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced && !line.starts_with("    ")
        })
        .collect()
}

/// Each `[text](target)` link's target, in order.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    found
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (letters,
/// digits, `-` and `_` kept), spaces made `-`; a repeated heading gets `-1`,
/// `-2`...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let slug: String = line[hashes..]
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// Why `target`, a link on `page`, leads nowhere; `None` when it resolves.
fn broken(page: &Path, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        page.parent().unwrap().join(path)
    };
    if !file.exists() {
        return Some(format!("no file {}", file.display()));
    }
    let anchor = anchor?;
    if file.extension().is_none_or(|ext| ext != "md") {
        return Some(format!(
            "an anchor into {}, which is not markdown",
            file.display()
        ));
    }
    let text = std::fs::read_to_string(&file).unwrap();
    (!anchors(&text).contains(anchor))
        .then(|| format!("no heading #{anchor} in {}", file.display()))
}

#[test]
fn every_relative_link_reaches_a_file_and_its_heading() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in links(&text) {
            checked += 1;
            if let Some(why) = broken(&page, &target) {
                let name = page.strip_prefix(root()).unwrap().display();
                problems.push(format!("{name}: ({target}): {why}"));
            }
        }
    }
    assert!(
        checked >= 40,
        "only {checked} links found: is the link parser broken?"
    );
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_readme_is_a_front_door_to_every_page_of_docs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= README_MOST_LINES,
        "README.md has {lines} lines: keep it a front door (at most {README_MOST_LINES}), move detail to docs/"
    );
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .map(|target| target.split('#').next().unwrap().to_owned())
        .collect();
    for page in pages()
        .iter()
        .filter(|page| page.parent().unwrap().ends_with("docs"))
    {
        let name = format!("docs/{}", page.file_name().unwrap().to_str().unwrap());
        assert!(linked.contains(&name), "README.md does not lead to {name}");
    }
    // The two commands are the product's front door.
    for command in ["cargo run --release -- up", "bash tests/run.sh"] {
        assert!(readme.contains(command), "README.md lost `{command}`");
    }
}

#[test]
fn anchors_follow_githubs_rules() {
    let text = "# Scaling rng: the lab's fix, and the gRPC trap\n\
                ## The API (`proto/dockercoins/v1/`)\n\
                ## Notes\n## Notes\n    # not a heading\n";
    let found = anchors(text);
    for anchor in [
        "scaling-rng-the-labs-fix-and-the-grpc-trap",
        "the-api-protodockercoinsv1",
        "notes",
        "notes-1",
    ] {
        assert!(found.contains(anchor), "{anchor} not in {found:?}");
    }
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!(
        links("see [a](b.md#c) and [d](#e)\n    [x](code)\n"),
        ["b.md#c", "#e"]
    );
}
