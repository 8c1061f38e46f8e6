//! The tree's shape, checked on every `cargo test`: which layer may import
//! which (ARCHITECTURE.md, "Layers"), where the storage engine and the wire
//! format may be named, and how long a source file may grow. Each rule
//! reads the source text; the last tests feed the checker a deliberate
//! violation to show it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A source file may not grow past this many lines.
const MAX_LINES: usize = 700;

/// For each layer (a top-level module of `src/`), the layers it may import
/// through `crate::`. A layer may always import itself. Layers not listed
/// (`cli`, `testing`) may import anything.
const LAYERS: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("time", &["domain"]),
    ("provenance", &["domain"]),
    ("store", &["domain", "provenance", "time"]),
    ("telemetry", &["time"]),
    (
        "registry",
        &["domain", "provenance", "store", "telemetry", "time"],
    ),
    (
        "grpc",
        &[
            "domain",
            "provenance",
            "registry",
            "store",
            "telemetry",
            "time",
        ],
    ),
    ("server", &["grpc", "registry", "telemetry"]),
];

/// External crates that only some layers may name: the storage engine
/// lives behind `store::Engine`, the wire format in `grpc` (and the layers
/// that serve or call it). The etcd engine is a gRPC client of etcd, so it
/// names both wire crates, and only for etcd's own API.
const CONFINED_CRATES: &[(&str, &[&str])] = &[
    ("sled", &["store/sled/"]),
    (
        "prost",
        &["grpc/", "cli/", "server/", "testing/", "store/etcd/"],
    ),
    (
        "tonic",
        &[
            "grpc/",
            "cli/",
            "server/",
            "telemetry/",
            "testing/",
            "store/etcd/",
        ],
    ),
    // TLS ends in the server layer; clients use tonic's TLS settings.
    ("rustls", &["server/"]),
    ("tokio_rustls", &["server/"]),
    ("x509_parser", &["server/"]),
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    rule: String,
}

/// A source file: its path relative to `src/` (with `/` separators) and
/// its text.
struct Source {
    path: String,
    text: String,
}

impl Source {
    /// The layer a file belongs to: its top-level directory, or its file
    /// stem for `src/x.rs`.
    fn layer(&self) -> &str {
        match self.path.split_once('/') {
            Some((dir, _)) => dir,
            None => self.path.trim_end_matches(".rs"),
        }
    }

    /// The lines of code, with comments and the insides of string and
    /// char literals blanked out.
    fn code_lines(&self) -> Vec<(usize, String)> {
        code_only(&self.text)
            .lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line.to_string()))
            .filter(|(_, code)| !code.trim().is_empty())
            .collect()
    }
}

/// `text` with comments and the contents of string and char literals
/// replaced by spaces; line breaks are kept, so line numbers still hold.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i..].starts_with(&['/', '*']) {
                    depth += 1;
                } else if chars[i..].starts_with(&['*', '/']) {
                    depth -= 1;
                    if depth == 0 {
                        out.push_str("  ");
                        i += 2;
                        break;
                    }
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == 'r' && !prev_ident && matches!(next, Some('"' | '#')) {
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            out.push('r');
            out.extend(std::iter::repeat_n(' ', hashes + 1));
            i += hashes + 2;
            while i < chars.len() && !chars[i..].starts_with(&close) {
                out.push(blank(chars[i]));
                i += 1;
            }
            out.extend(std::iter::repeat_n(' ', close.len()));
            i += close.len();
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if let Some(&inner) = chars.get(i) {
                    out.push(blank(inner));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal ('\n', '\''): blank to its closing quote.
            let len = chars[i + 3..]
                .iter()
                .position(|c| *c == '\'')
                .map_or(1, |p| p + 4);
            out.extend(std::iter::repeat_n(' ', len));
            i += len;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            // A plain char literal ('"'); a lifetime has no closing quote.
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Every `crate::` import in `text`: the top-level module named, with the
/// line it is on. `use crate::{a::X, b::{Y, Z}}` names `a` and `b`.
fn crate_imports(text: &str) -> Vec<(usize, String)> {
    let code = code_only(text);
    let mut found = Vec::new();
    let mut rest = code.as_str();
    let mut offset = 0;
    while let Some(at) = rest.find("crate::") {
        let before = code[..offset + at].chars().next_back();
        let start = offset + at + "crate::".len();
        let line = code[..start].matches('\n').count() + 1;
        let after = &code[start..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            // `$crate::` or `foo_crate::`: not this crate's path.
        } else if let Some(group) = after.strip_prefix('{') {
            for (at, name) in top_level_names(group) {
                let line = line + group[..at].matches('\n').count();
                found.push((line, name));
            }
        } else {
            found.push((line, leading_ident(after)));
        }
        offset = start;
        rest = &code[start..];
    }
    found
}

/// The first identifier of each top-level entry of a `{ ... }` group whose
/// opening brace has been consumed, with its offset in `group`.
fn top_level_names(group: &str) -> Vec<(usize, String)> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut entry_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => entry_start = true,
            c if entry_start && depth == 0 && !c.is_whitespace() => {
                names.push((i, leading_ident(&group[i..])));
                entry_start = false;
            }
            _ => {}
        }
    }
    names
}

fn leading_ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Whether `code` names the external crate `krate` as a path (`krate::`)
/// or in a `use krate` / `extern crate krate`, not as part of a longer
/// name or after `self::`/`super::` (a module of our own).
fn names_crate(code: &str, krate: &str) -> bool {
    let mut search = 0;
    while let Some(at) = code[search..].find(krate) {
        let start = search + at;
        let end = start + krate.len();
        search = end;
        let before = &code[..start];
        let prev = before.chars().next_back();
        if prev.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if before.ends_with("self::") || before.ends_with("super::") || before.ends_with("crate::")
        {
            continue;
        }
        let after = &code[end..];
        let as_path = after.starts_with("::");
        let as_use = (before.trim_end().ends_with("use") || before.trim_end().ends_with("crate"))
            && !after.starts_with(|c: char| c.is_alphanumeric() || c == '_');
        if as_path || as_use {
            return true;
        }
    }
    false
}

fn check(sources: &[Source]) -> Vec<Violation> {
    let layers: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut violations = Vec::new();
    for source in sources {
        let lines = source.text.lines().count();
        if lines > MAX_LINES {
            violations.push(Violation {
                file: source.path.clone(),
                line: lines,
                rule: format!("{lines} lines, more than {MAX_LINES}: split it"),
            });
        }
        let layer = source.layer();
        if let Some(allowed) = layers.get(layer) {
            for (line, imported) in crate_imports(&source.text) {
                let permitted = imported == layer || allowed.contains(&imported.as_str());
                // A test-only import gets its own rule below.
                if !permitted && imported != "testing" {
                    violations.push(Violation {
                        file: source.path.clone(),
                        line,
                        rule: format!(
                            "layer `{layer}` imports `crate::{imported}`; it may import only {allowed:?}"
                        ),
                    });
                }
            }
        }
        if layer != "testing" {
            for (line, imported) in crate_imports(&source.text) {
                if imported == "testing" {
                    violations.push(Violation {
                        file: source.path.clone(),
                        line,
                        rule: "only tests and fuzz targets may use `crate::testing`".into(),
                    });
                }
            }
        }
        for (krate, homes) in CONFINED_CRATES {
            if homes.iter().any(|home| source.path.starts_with(home)) {
                continue;
            }
            for (line, code) in source.code_lines() {
                if names_crate(&code, krate) {
                    violations.push(Violation {
                        file: source.path.clone(),
                        line,
                        rule: format!("names the `{krate}` crate; only {homes:?} may"),
                    });
                }
            }
        }
    }
    violations
}

fn read_tree(root: &Path) -> Vec<Source> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<Source>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("src/ is readable")
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let relative = path.strip_prefix(root).expect("under src/");
                out.push(Source {
                    path: relative.to_string_lossy().replace('\\', "/"),
                    text: std::fs::read_to_string(&path).expect("a source file is UTF-8"),
                });
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn source(path: &str, text: &str) -> Source {
    Source {
        path: path.into(),
        text: text.into(),
    }
}

#[test]
fn the_tree_keeps_its_layers_and_file_sizes() {
    let sources = read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        sources.len() > 50,
        "read only {} files from src/",
        sources.len()
    );
    let violations = check(&sources);
    let report: Vec<String> = violations
        .iter()
        .map(|v| format!("src/{}:{}: {}", v.file, v.line, v.rule))
        .collect();
    assert!(report.is_empty(), "\n{}", report.join("\n"));
}

#[test]
fn every_layer_of_the_tree_is_known() {
    let sources = read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let known: Vec<&str> = LAYERS
        .iter()
        .map(|(layer, _)| *layer)
        .chain(["cli", "testing", "lib", "main"])
        .collect();
    for source in &sources {
        assert!(
            known.contains(&source.layer()),
            "src/{} is in layer `{}`, which has no rule here",
            source.path,
            source.layer()
        );
    }
}

#[test]
fn a_back_import_is_reported() {
    let violations = check(&[source(
        "store/reads.rs",
        "use crate::domain::PromptName;\nuse crate::{\n    time::now,\n    registry::Registry,\n};\n",
    )]);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].line, 4);
    assert!(violations[0].rule.contains("crate::registry"));
}

#[test]
fn naming_the_engine_or_the_wire_outside_their_homes_is_reported() {
    let violations = check(&[
        source("registry/read.rs", "fn f(db: &sled::Db) {}\n"),
        source(
            "store/mod.rs",
            "use self::sled::SledEngine;\n// sled::Db in a comment\n",
        ),
        source("store/sled/mod.rs", "use sled::IVec;\n"),
        source("domain/names.rs", "use prost::Message;\n"),
        source(
            "registry/error.rs",
            "let s = \"tonic::Status\"; // a string\n",
        ),
    ]);
    let files: Vec<&str> = violations.iter().map(|v| v.file.as_str()).collect();
    assert_eq!(
        files,
        ["registry/read.rs", "domain/names.rs"],
        "{violations:?}"
    );
}

#[test]
fn a_long_file_and_a_test_only_import_are_reported() {
    let long = "fn f() {}\n".repeat(MAX_LINES + 1);
    let violations = check(&[
        source("grpc/service.rs", &long),
        source("registry/tests.rs", "use crate::testing::seeds;\n"),
    ]);
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(violations[0].rule.contains("701 lines"));
    assert!(violations[1].rule.contains("crate::testing"));
}

#[test]
fn imports_are_read_from_nested_groups() {
    let imports = crate_imports(
        "use crate::{a::{B, C}, d, e::F};\nmacro_rules! m { () => { $crate::x } }\nlet p = foo_crate::y;\n",
    );
    let names: Vec<&str> = imports.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(names, ["a", "d", "e"]);
}
