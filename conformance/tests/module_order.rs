//! The crate's modules depend one way, in the order `lib.rs` writes down:
//! a module's `crate::` paths name only modules ranked before it, so no
//! import circle can come back unnoticed.

use std::path::{Path, PathBuf};

/// Rank of each top-level module (lower first); equal ranks may not use
/// each other.
const RANKS: [(&str, u8); 14] = [
    ("netns", 0),
    ("traffic", 1),
    ("firewall", 1),
    ("forge", 1),
    ("toolpath", 1),
    ("cni", 2),
    ("topology", 3),
    ("chain", 3),
    ("clients", 4),
    ("matrix", 5),
    ("scenarios", 6),
    ("run", 7),
    ("report", 8),
    ("bench", 8),
];

fn rank(module: &str) -> Option<u8> {
    match module {
        "bench_report" => Some(9),
        m => RANKS.iter().find(|(n, _)| *n == m).map(|(_, r)| *r),
    }
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The code of a file without its test module and line comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_module_uses_only_modules_before_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default()
            .trim_end_matches(".rs");
        if matches!(top, "lib" | "main") {
            continue;
        }
        let own = rank(top).unwrap_or_else(|| panic!("{top} has no rank: add it to RANKS"));
        let text = code(&std::fs::read_to_string(file).expect("read"));
        for used in text.split("crate::").skip(1) {
            let name: String = used
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let Some(theirs) = rank(&name) else { continue };
            checked += 1;
            if name != top && theirs >= own {
                wrong.push(format!("{} uses crate::{name}", rel.display()));
            }
        }
    }
    assert!(checked > 20, "the scan found only {checked} crate:: paths");
    assert!(
        wrong.is_empty(),
        "against the order in lib.rs:\n{}",
        wrong.join("\n")
    );
}
