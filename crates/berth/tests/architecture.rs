//! The map is checked: every crate's normal dependencies, as `cargo metadata` reports
//! them, must be allowed by the tables in ARCHITECTURE.md ("Dependency rules").

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The two tables: crate → allowed berth crates, fenced crate → crates that may use it.
fn rules() -> (BTreeMap<String, Vec<String>>, BTreeMap<String, Vec<String>>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let section = text.split("## Dependency rules (checked)").nth(1).expect("the rules section");
    let blocks: Vec<&str> =
        section.split("```text").skip(1).take(2).map(|b| b.split("```").next().unwrap()).collect();
    assert_eq!(blocks.len(), 2, "two tables");
    let table = |block: &str| -> BTreeMap<String, Vec<String>> {
        block
            .lines()
            .skip(2) // the blank line after the fence, and the header
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next().unwrap().to_owned();
                let allowed = words.filter(|w| *w != "-").map(str::to_owned).collect();
                (name, allowed)
            })
            .collect()
    };
    (table(blocks[0]), table(blocks[1]))
}

#[test]
fn crates_depend_only_on_what_the_map_allows() {
    let (internal, fenced) = rules();
    assert!(
        internal.contains_key("berth-api") && fenced.contains_key("nix"),
        "{internal:?} {fenced:?}"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        seen.insert(name.to_owned());
        let Some(allowed) = internal.get(name) else {
            problems.push(format!("{name} is not in the dependency table"));
            continue;
        };
        for dependency in package["dependencies"].as_array().unwrap() {
            if !dependency["kind"].is_null() {
                continue; // dev and build dependencies are free
            }
            let dep = dependency["name"].as_str().unwrap();
            if dep.starts_with("berth") && !allowed.iter().any(|a| a == "*" || a == dep) {
                problems
                    .push(format!("{name} depends on {dep}, which ARCHITECTURE.md does not allow"));
            }
            if let Some(users) = fenced.get(dep) {
                if !users.iter().any(|u| u == name) {
                    problems.push(format!("{name} depends on {dep}, fenced to {users:?}"));
                }
            }
        }
    }
    for listed in internal.keys() {
        if !seen.contains(listed) {
            problems.push(format!("ARCHITECTURE.md lists {listed}, which is not a crate"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
