//! docs/commands.md's flags tables are the command line's own: each command's table, between
//! `<!-- flags: COMMAND -->` and `<!-- /flags -->`, is made here from clap's definitions
//! (`reprodiff::cli::Cli`), so a flag added, renamed or re-documented in the code shows in
//! this test until the page says it too. `REPRODIFF_UPDATE_DOCS=1` rewrites the tables in place
//! (never where `CI` is set); every command must have a table.
use clap::CommandFactory;
use std::path::Path;

/// Every leaf command, as its words (`["golden", "merge"]`), with its clap definition.
fn leaves(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(String, clap::Command)>) {
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|c| c.get_name() != "help" && !c.is_hide_set())
        .collect();
    if subs.is_empty() {
        out.push((path.join(" "), cmd.clone()));
    }
    for sub in subs {
        let mut p = path.clone();
        p.push(sub.get_name().to_string());
        leaves(sub, p, out);
    }
}

/// A Markdown cell: one line, pipes and angle brackets escaped.
fn cell(text: &str) -> String {
    let one_line: Vec<&str> = text.split_whitespace().collect();
    one_line
        .join(" ")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The command's flags table: flag (with its value), what it does, its values and default.
fn table(cmd: &clap::Command) -> String {
    let mut rows = vec!["| flag | meaning |".to_string(), "|---|---|".to_string()];
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_hide_set() || id == "help" || id == "version" {
            continue;
        }
        let value = arg
            .get_value_names()
            .map(|names| {
                names
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| id.to_uppercase());
        let flag = match (arg.get_long(), arg.get_action().takes_values()) {
            (Some(long), true) => format!("`--{long} {value}`"),
            (Some(long), false) => format!("`--{long}`"),
            (None, _) => format!("`{value}`"),
        };
        let mut meaning = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| match v.get_help() {
                Some(h) => format!("`{}` ({h})", v.get_name()),
                None => format!("`{}`", v.get_name()),
            })
            .collect();
        if !values.is_empty() && arg.get_action().takes_values() {
            meaning.push_str(&format!("; one of {}", values.join(", ")));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && arg.get_action().takes_values() {
            meaning.push_str(&format!("; default `{}`", defaults.join(",")));
        }
        if let Some(env) = arg.get_env() {
            meaning.push_str(&format!("; also `{}`", env.to_string_lossy()));
        }
        rows.push(format!("| {flag} | {} |", cell(&meaning)));
    }
    rows.join("\n")
}

/// The page with every command's table made afresh, and the commands that have no table.
fn regenerate(page: &str) -> (String, Vec<String>) {
    let mut commands = Vec::new();
    leaves(&reprodiff::cli::Cli::command(), Vec::new(), &mut commands);
    let mut page = page.to_string();
    let mut missing = Vec::new();
    for (name, cmd) in &commands {
        let open = format!("<!-- flags: {name} -->\n");
        let Some(start) = page.find(&open).map(|i| i + open.len()) else {
            missing.push(name.clone());
            continue;
        };
        let end = start
            + page[start..]
                .find("<!-- /flags -->")
                .expect("each table is closed");
        page.replace_range(start..end, &format!("{}\n", table(cmd)));
    }
    (page, missing)
}

#[test]
fn every_command_has_its_flags_table_in_the_command_reference() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/commands.md");
    let page = std::fs::read_to_string(&path).unwrap();
    let (fresh, missing) = regenerate(&page);
    assert!(
        missing.is_empty(),
        "no flags table in docs/commands.md for {missing:?}"
    );
    if fresh != page
        && std::env::var_os("REPRODIFF_UPDATE_DOCS").is_some()
        && std::env::var_os("CI").is_none()
    {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    if fresh != page {
        let diff: Vec<String> = fresh
            .lines()
            .filter(|l| !page.lines().any(|p| p == *l))
            .map(String::from)
            .collect();
        panic!(
            "docs/commands.md's flags tables differ from the command line's definitions \
             (REPRODIFF_UPDATE_DOCS=1 cargo nextest run -E 'test(flags_table)' rewrites them); \
             lines the code gives that the page lacks:\n{}",
            diff.join("\n")
        );
    }
}
