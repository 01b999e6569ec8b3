//! Every file in `testdata/valid` must load and every file in
//! `testdata/invalid` must fail, as their header comments say:
//!
//! - `# expect: KEY: TEXT`: (invalid) the error names KEY and its message
//!   holds TEXT; `# also: TEXT`: the message holds TEXT too.
//! - `# warn: TEXT`: (valid) one warning holds TEXT; a valid file warns
//!   exactly as often as it has `# warn:` lines.
//! - `# shows: TEXT`: (valid) a line of the check-config output starts
//!   with TEXT.
//! - `# env: NAME=VALUE`: the environment the file is read against.
//!
//! `$TESTDATA` stands for the testdata folder in every header value.

use std::path::{Path, PathBuf};

use super::testdata;
use crate::config::env::Env;
use crate::config::load::load_with;

#[derive(Default)]
struct Header {
    expect: Vec<String>,
    also: Vec<String>,
    warn: Vec<String>,
    shows: Vec<String>,
    env: Vec<(String, String)>,
}

fn header(path: &Path) -> Header {
    let root = testdata().display().to_string();
    let text = std::fs::read_to_string(path).unwrap();
    let mut h = Header::default();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let Some((tag, value)) = line[1..].trim_start().split_once(": ") else {
            continue;
        };
        let value = value.replace("$TESTDATA", &root);
        match tag {
            "expect" => h.expect.push(value),
            "also" => h.also.push(value),
            "warn" => h.warn.push(value),
            "shows" => h.shows.push(value),
            "env" => {
                let (k, v) = value.split_once('=').expect("# env: NAME=VALUE");
                h.env.push((k.to_string(), v.to_string()));
            }
            _ => {}
        }
    }
    h
}

fn files(folder: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(testdata().join(folder))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn every_valid_file_loads_with_its_warnings_and_output() {
    let files = files("valid");
    assert!(files.len() >= 7, "valid fixtures missing: {files:?}");
    let mut failures = Vec::new();
    for path in &files {
        let h = header(path);
        let settings = match load_with(path, &Env::from_pairs(&h.env)) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: refused: {e}", name(path)));
                continue;
            }
        };
        let mut unmatched = settings.warnings.clone();
        for want in &h.warn {
            match unmatched.iter().position(|w| w.contains(want.as_str())) {
                Some(i) => {
                    unmatched.remove(i);
                }
                None => failures.push(format!("{}: no warning holds {want:?}", name(path))),
            }
        }
        for extra in unmatched {
            failures.push(format!("{}: unexpected warning {extra:?}", name(path)));
        }
        let shown = settings.to_string();
        for want in &h.shows {
            if !shown.lines().any(|l| l.starts_with(want.as_str())) {
                failures.push(format!(
                    "{}: no output line starts with {want:?} in:\n{shown}",
                    name(path)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_invalid_file_fails_naming_its_key() {
    let files = files("invalid");
    assert!(
        files.len() >= 70,
        "invalid fixtures missing: {}",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let h = header(path);
        let [expect] = h.expect.as_slice() else {
            failures.push(format!("{}: needs one `# expect:` line", name(path)));
            continue;
        };
        let (key, text) = expect.split_once(": ").expect("# expect: KEY: TEXT");
        let err = match load_with(path, &Env::from_pairs(&h.env)) {
            Ok(_) => {
                failures.push(format!("{}: accepted", name(path)));
                continue;
            }
            Err(e) => e,
        };
        let named = err.key == key && err.source_name == path.display().to_string();
        let said = std::iter::once(text)
            .chain(h.also.iter().map(String::as_str))
            .all(|t| err.message.contains(t));
        if !named || !said {
            failures.push(format!(
                "{}: wanted {key}: {text:?} {:?}\n  got {}: {:?}",
                name(path),
                h.also,
                err.key,
                err.message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
