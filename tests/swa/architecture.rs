//! The rules docs/architecture.md states, checked on the source: each library module uses only
//! the layers below its own (so no module circle can form), and no library string names a
//! command-line flag (flags are the binary's; the library names settings and gives hints).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The library's top-level modules, bottom layer first. A module may use modules of lower layers
/// only: never one of its own layer, nor one above.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["progress", "part", "batch", "simd"],
    &["fs"],
    &["checkpoint"],
    &["onnx"],
    &["runtime"],
    &["inputs"],
    &["tasks"],
    &["average", "recalibrate", "evaluate", "inspect"],
    &["soup", "ensemble", "parts", "report"],
    &["swag"],
    &["pipeline"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// A Rust source split into its code and its string literals (comments dropped).
struct Lexed {
    code: String,
    strings: Vec<(usize, String)>,
}

fn lex(src: &str) -> Lexed {
    let b = src.as_bytes();
    let (mut code, mut strings) = (String::new(), Vec::new());
    let mut i = 0;
    let line_at = |i: usize| src[..i].matches('\n').count() + 1;
    while i < b.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if let Some(hashes) = raw_string_start(rest) {
            let body_start = i + 1 + hashes + 1 + usize::from(rest.starts_with("br"));
            let close = format!("\"{}", "#".repeat(hashes));
            let end = src[body_start..].find(&close).map_or(src.len(), |e| body_start + e);
            strings.push((line_at(i), src[body_start..end].to_string()));
            code.push_str("\"\"");
            i = end + close.len();
        } else if b[i] == b'"' {
            let mut j = i + 1;
            let mut text = String::new();
            while j < b.len() && b[j] != b'"' {
                if b[j] == b'\\' {
                    // A line continuation skips the newline and the next line's indentation.
                    if b.get(j + 1) == Some(&b'\n') {
                        j += 2;
                        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                            j += 1;
                        }
                        continue;
                    }
                    j += 2;
                    continue;
                }
                let ch = src[j..].chars().next().unwrap();
                text.push(ch);
                j += ch.len_utf8();
            }
            strings.push((line_at(i), text));
            code.push_str("\"\"");
            i = j + 1;
        } else if b[i] == b'\'' && is_char_literal(rest) {
            let len = rest[1..].find('\'').map_or(1, |e| e + 2);
            i += len;
            code.push_str("' '");
        } else {
            let ch = rest.chars().next().unwrap();
            code.push(ch);
            i += ch.len_utf8();
        }
    }
    Lexed { code, strings }
}

/// `r"`, `r#"`, `br"`…: the number of `#`.
fn raw_string_start(rest: &str) -> Option<usize> {
    let r = rest.strip_prefix("br").or_else(|| rest.strip_prefix('r'))?;
    let hashes = r.bytes().take_while(|&c| c == b'#').count();
    (r.as_bytes().get(hashes) == Some(&b'"')).then_some(hashes)
}

/// A char literal (`'a'`, `'\n'`, `'"'`), not a lifetime (`'a`).
fn is_char_literal(rest: &str) -> bool {
    let b = rest.as_bytes();
    match b.get(1) {
        Some(b'\\') => true,
        Some(_) => {
            let ch = rest[1..].chars().next().unwrap();
            rest[1 + ch.len_utf8()..].starts_with('\'')
        }
        None => false,
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The library's source files (the binary's `main.rs` and `cli/` left out, and the generated
/// protobuf code), each with its top-level module and its code before any `#[cfg(test)]` module.
fn library() -> Vec<(String, PathBuf, Lexed)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if ["main", "cli", "lib"].contains(&top.as_str()) || rel.ends_with("proto.rs") || rel.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        out.push((top, rel.to_path_buf(), lex(&text)));
    }
    out
}

#[test]
fn every_library_module_is_in_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    let lib = std::fs::read_to_string(src).unwrap();
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ").or_else(|| line.strip_prefix("mod ")) {
            let m = m.trim_end_matches(';');
            assert!(layer_of(m).is_some(), "module `{m}` of lib.rs is in no layer of tests/swa/architecture.rs");
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let mut violations = BTreeMap::new();
    for (top, rel, lexed) in library() {
        let mine = layer_of(&top).unwrap_or_else(|| panic!("{}: module `{top}` is in no layer", rel.display()));
        let code = &lexed.code;
        let mut at = 0;
        while let Some(found) = code[at..].find("crate::") {
            let start = at + found + "crate::".len();
            at = start;
            // `$crate::` is a macro's own crate path, resolved where the macro expands.
            let used: String = code[start..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if used == top || used.is_empty() || used.chars().next().unwrap().is_uppercase() {
                continue;
            }
            let Some(theirs) = layer_of(&used) else { continue };
            if theirs >= mine {
                let line = code[..start].matches('\n').count() + 1;
                violations.insert(format!("{}:{line}", rel.display()), format!("`{top}` uses `{used}`"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "library modules using their own layer or a higher one (docs/architecture.md):\n{}",
        violations.iter().map(|(at, what)| format!("  {at}: {what}")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn no_library_string_names_a_flag() {
    let mut found = Vec::new();
    for (_, rel, lexed) in library() {
        for (line, s) in &lexed.strings {
            let bytes = s.as_bytes();
            for (i, _) in s.match_indices("--") {
                let before = i.checked_sub(1).map(|k| bytes[k]);
                let after = bytes.get(i + 2);
                let starts_flag = after.is_some_and(|c| c.is_ascii_lowercase());
                let standalone = before.is_none_or(|c| !c.is_ascii_alphanumeric() && c != b'-');
                if starts_flag && standalone {
                    found.push(format!("  {}:{line}: {s:?}", rel.display()));
                    break;
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "library strings that name a command-line flag (name the setting, or attach a Hint the binary renders):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_lexer_sees_strings_and_skips_comments() {
    let l = lex("let a = \"x --flag \\\n    y\"; // \"--not\"\nlet b = r#\"--raw\"#; let c = '\"'; fn f<'a>() {}");
    let strings: Vec<&str> = l.strings.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(strings, ["x --flag y", "--raw"]);
    assert!(l.code.contains("fn f<'a>()") && !l.code.contains("not"));
}
