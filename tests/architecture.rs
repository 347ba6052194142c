//! `docs/architecture.md` shows the module graph as it is: its table's "depends on" column must
//! name exactly the top-level modules each module's code refers to (`crate::x` paths outside
//! `#[cfg(test)]` code), so the document cannot drift from the `use` statements.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Top-level module name → the files that make it up.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if matches!(name.as_str(), "lib" | "main") {
            continue;
        }
        let files = if path.is_dir() {
            walk(&path)
        } else {
            vec![path.clone()]
        };
        out.entry(name).or_default().extend(files);
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.push(p);
        }
    }
    files
}

/// Modules named as `crate::x` in the non-test code of `files`.
fn references(files: &[PathBuf], known: &BTreeSet<String>, own: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for line in code.lines() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if known.contains(&name) && name != own {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// The table rows: module → the modules its last column names.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`').trim_end_matches('/').to_string();
        let deps = cells[cells.len() - 2]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        out.insert(name, deps);
    }
    out
}

#[test]
fn the_documented_module_graph_is_the_real_one() {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let doc = documented();
    let documented_names: BTreeSet<String> = doc.keys().cloned().collect();
    assert_eq!(
        documented_names, known,
        "docs/architecture.md's table must list every module under src/"
    );
    let mut wrong = Vec::new();
    for (name, files) in &modules {
        let real = references(files, &known, name);
        if doc[name] != real {
            wrong.push(format!(
                "{name}: documented {:?}, code uses {:?}",
                doc[name], real
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_api_does_not_reach_into_the_worker() {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let api = references(&modules["api"], &known, "api");
    assert!(!api.contains("worker"), "api uses worker: {api:?}");
    let store = references(&modules["store"], &known, "store");
    for above in ["api", "worker", "jobs", "score"] {
        assert!(!store.contains(above), "store uses {above}: {store:?}");
    }
}
