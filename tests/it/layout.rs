//! The tree is the map: every top-level module of `services/` sits in one
//! tier (the lab's programs, the commands, the plumbing), the crate doc and
//! docs/layout.md say the same tiers, and the layers point one way:
//! plumbing imports no program and no command, and a program imports no
//! command. Read from the sources, so a new module or a stray import fails
//! here rather than in a newcomer's first week.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The lab's programs: what runs in a container.
const PROGRAMS: &[&str] = &["edge", "hasher", "rng", "webui", "worker"];
/// The commands, which assemble programs.
const COMMANDS: &[&str] = &[
    "bench",
    "cli",
    "doctor",
    "healthcheck",
    "top",
    "traces",
    "up",
];
/// The plumbing, which imports no program and no command.
const PLUMBING: &[&str] = &[
    "client",
    "protocol",
    "server",
    "shutdown",
    "store",
    "telemetry",
    "tls",
];

fn services() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("services")
}

/// The top-level module a `services/` entry declares (`rng/`, `edge.rs`).
fn module_of(entry: &Path) -> Option<String> {
    let name = entry.file_name()?.to_str()?;
    if entry.is_dir() {
        return Some(name.to_owned());
    }
    name.strip_suffix(".rs").map(str::to_owned)
}

/// Every `.rs` file at or below `path`.
fn sources(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).unwrap() {
        let entry = entry.unwrap().path();
        if entry.is_dir() {
            files.extend(sources(&entry));
        } else if entry.extension().is_some_and(|e| e == "rs") {
            files.push(entry);
        }
    }
    files
}

/// The top-level modules a source names through `crate::`: `crate::x::...`
/// and each item of `crate::{x::..., y, ...}`. Comments are skipped, so a
/// doc link does not count as an import.
fn crate_modules(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            found.extend(group_heads(group));
        } else {
            found.insert(ident(rest).to_owned());
        }
    }
    found
}

/// The first path segment of each top-level item of a `{...}` group.
fn group_heads(group: &str) -> Vec<String> {
    let (mut heads, mut depth, mut item_start) = (Vec::new(), 0, true);
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && depth == 0 && !c.is_whitespace() => {
                heads.push(ident(&group[at..]).to_owned());
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

#[test]
fn every_module_sits_in_one_tier() {
    let mut modules = BTreeSet::new();
    for entry in fs::read_dir(services()).unwrap() {
        let entry = entry.unwrap().path();
        if let Some(module) = module_of(&entry)
            && module != "lib"
            && module != "main"
        {
            assert!(
                !(entry.is_file() && services().join(&module).is_dir()),
                "services/{module}.rs beside services/{module}/: one or the other"
            );
            modules.insert(module);
        }
    }
    let tiers: BTreeSet<String> = [PROGRAMS, COMMANDS, PLUMBING]
        .concat()
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(
        modules, tiers,
        "services/ and the tiers of this test differ: put each module in one tier"
    );
}

#[test]
fn plumbing_imports_no_program_and_programs_import_no_command() {
    let rules = [
        ("plumbing", PLUMBING, [PROGRAMS, COMMANDS].concat()),
        ("program", PROGRAMS, COMMANDS.to_vec()),
    ];
    let mut wrong = Vec::new();
    for (tier, members, forbidden) in rules {
        for member in members {
            let dir = services().join(member);
            let path = if dir.is_dir() {
                dir
            } else {
                services().join(format!("{member}.rs"))
            };
            for file in sources(&path) {
                let source = fs::read_to_string(&file).unwrap();
                for used in crate_modules(&source) {
                    if forbidden.contains(&used.as_str()) && used != *member {
                        wrong.push(format!("{} ({tier}) imports {used}", file.display()));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "layers pointing the wrong way:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_crate_doc_and_the_layout_page_name_every_module_under_its_tier() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = fs::read_to_string(root.join("services/lib.rs")).unwrap();
    let page = fs::read_to_string(root.join("docs/layout.md")).unwrap();
    for (name, text, heading) in [
        ("services/lib.rs", &lib, "//! ## "),
        ("docs/layout.md", &page, "## "),
    ] {
        for (tier, members) in [
            ("Programs", PROGRAMS),
            ("Commands", COMMANDS),
            ("Plumbing", PLUMBING),
        ] {
            let start = text
                .find(&format!("{heading}{tier}"))
                .unwrap_or_else(|| panic!("{name} has no heading {heading}{tier}"));
            let section = &text[start + heading.len()..];
            let section = &section[..section.find(heading).unwrap_or(section.len())];
            for member in members {
                assert!(
                    section.contains(&format!("`{member}`"))
                        || section.contains(&format!("[`{member}`]"))
                        || section.contains(&format!("{member}/"))
                        || section.contains(&format!("{member}.rs")),
                    "{name}: {member} is not named under {tier}"
                );
            }
        }
    }
}

#[test]
fn imports_are_read_from_paths_and_groups() {
    let source = "use crate::{\n    client::balancer::{self, X},\n    pb,\n};\n// crate::rng in a comment\nlet x = crate::store::Store::new();";
    let found: Vec<String> = crate_modules(source).into_iter().collect();
    assert_eq!(found, ["client", "pb", "store"]);
}

/// `pub struct|enum|type|trait NAME` in every source below `services/`,
/// with the file each is in.
fn public_types() -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for file in sources(&services()) {
        let source = fs::read_to_string(&file).unwrap();
        for line in source.lines() {
            let line = line.trim_start();
            for kind in ["pub struct ", "pub enum ", "pub type ", "pub trait "] {
                if let Some(rest) = line.strip_prefix(kind) {
                    found.push((ident(rest).to_owned(), file.clone()));
                }
            }
        }
    }
    found
}

/// What `build.rs` generates from `proto/`: each message, each service as
/// a server trait, and its `...Client` and `...Server`.
fn generated_names() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut names = BTreeSet::new();
    let mut protos = vec![root];
    while let Some(path) = protos.pop() {
        if path.is_dir() {
            protos.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        for line in fs::read_to_string(&path).unwrap().lines() {
            let line = line.trim_start();
            if let Some(rest) = line.strip_prefix("message ") {
                names.insert(ident(rest).to_owned());
            } else if let Some(rest) = line.strip_prefix("service ") {
                let service = ident(rest);
                names.extend([
                    service.to_owned(),
                    format!("{service}Client"),
                    format!("{service}Server"),
                ]);
            }
        }
    }
    names
}

#[test]
fn no_type_of_ours_is_named_like_a_generated_one_or_like_another() {
    let generated = generated_names();
    assert!(
        generated.contains("RngClient"),
        "read no service from proto/"
    );
    let ours = public_types();
    let like_generated: Vec<_> = ours
        .iter()
        .filter(|(name, _)| generated.contains(name))
        .map(|(name, file)| format!("{name} in {}", file.display()))
        .collect();
    assert!(
        like_generated.is_empty(),
        "named like a generated type (import the stub under an alias, e.g. RngStub, and name ours for what it is): {like_generated:?}"
    );
    // A command's own Config and Report are the one exception.
    let mut seen = std::collections::BTreeMap::<&str, Vec<String>>::new();
    for (name, file) in &ours {
        seen.entry(name)
            .or_default()
            .push(file.display().to_string());
    }
    let twice: Vec<_> = seen
        .iter()
        .filter(|(name, files)| files.len() > 1 && !["Config", "Report"].contains(name))
        .collect();
    assert!(twice.is_empty(), "public types with one name: {twice:?}");
}
