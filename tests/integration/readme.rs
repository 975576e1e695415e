//! The README's 60-second tour, run as written (#29): every `$ reprodiff ...` line of its
//! console blocks, in order, with its `reprodiff-out/` folder moved to a temporary one. Each
//! must exit 0 and print the lines of the README's own output that do not depend on the host's
//! class (those are listed here, and each must also be in the README, so the two cannot part).
use crate::common::*;
use std::path::PathBuf;

/// The tour's commands, split as a POSIX shell splits them (single quotes only: the tour uses
/// no other quoting).
fn tour_commands(readme: &str) -> Vec<Vec<String>> {
    let mut lines = readme
        .lines()
        .skip_while(|l| *l != "## A 60-second tour")
        .skip(1);
    let (mut commands, mut fenced) = (Vec::new(), false);
    for line in lines.by_ref() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with("## ") {
            break;
        } else if let Some(args) = line.strip_prefix("$ reprodiff ").filter(|_| fenced) {
            commands.push(split(args));
        }
    }
    commands
}

fn split(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '\'' => (quoted, any) = (!quoted, true),
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            _ => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

#[test]
fn the_readme_tour_runs_as_written() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let commands = tour_commands(&readme);
    // Per command, in the tour's order: lines its output has on every host class.
    let expected: [&[&str]; 4] = [
        &["2 passed, 0 failed, 0 skipped"],
        &[
            "native                        2 passed, 0 failed, 0 skipped",
            "sse41                         2 passed, 0 failed, 0 skipped",
        ],
        &[
            "## sse41 against native",
            "<details><summary>First divergence (2)</summary>",
        ],
        &["ddim-tiny/tiny-ddim-a/steps5: identical through step 0 (t = 800) in time_embedding"],
    ];
    assert_eq!(
        commands.len(),
        expected.len(),
        "the tour's commands: {commands:?}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("reprodiff-out");
    for (args, want) in commands.iter().zip(expected) {
        let args: Vec<String> = args
            .iter()
            .map(|a| match a.strip_prefix("reprodiff-out/") {
                Some(rest) => out.join(rest).to_string_lossy().into_owned(),
                None => a.clone(),
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = reprodiff_native(&args, None);
        let t = text(&run);
        assert_eq!(run.status.code(), Some(0), "reprodiff {args:?}: {t}");
        for line in want {
            assert!(readme.contains(line), "the README no longer shows {line:?}");
            assert!(
                t.contains(line),
                "reprodiff {args:?} did not print {line:?}: {t}"
            );
        }
    }
}

#[test]
fn the_tour_splitter_keeps_quoted_words_whole() {
    assert_eq!(
        split("check --filter '^a/steps(2|5)$' --out x"),
        ["check", "--filter", "^a/steps(2|5)$", "--out", "x"]
    );
}
