//! The conformance suite as tests: one trial per (suite, scenario) found under fixtures/,
//! named `suite/scenario` (e.g. `rng/randn/cpu-generator/seed0/4`). A trial passes when the
//! scenario is identical to its golden or within tolerance, or cannot run on this host for a
//! stated reason (no CUDA, no model weights); it fails on drift, failure or a missing golden.
//! The suites are data: adding a scenario to a suite file adds a test here.
use libtest_mimic::{Arguments, Failed, Trial};
use reprodiff::harness::check::Verdict;
use reprodiff::harness::observe::Runner;
use reprodiff::harness::report;
use reprodiff::harness::session::{check_one, Fixtures, Selection};
use std::path::PathBuf;
use std::sync::Arc;

fn main() {
    let args = Arguments::from_args();
    let fixtures = Fixtures::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"));
    let suites = fixtures
        .select(&Selection::default())
        .unwrap_or_else(|e| panic!("cannot load the suites: {e}"));
    let runner = Arc::new(Runner {
        exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_reprodiff"))),
    });
    let store = Arc::new(fixtures.store());

    let mut trials = Vec::new();
    for suite in suites {
        let suite = Arc::new(suite);
        for index in 0..suite.scenarios.len() {
            let (suite, runner, store) = (suite.clone(), runner.clone(), store.clone());
            let name = format!("{}/{}", suite.name, suite.scenarios[index].name);
            trials.push(Trial::test(name, move || {
                let golden = store
                    .load(&suite.name)
                    .map_err(|e| Failed::from(e.to_string()))?;
                let scenario = &suite.scenarios[index];
                let (result, _) = check_one(&runner, &store, &suite, golden.as_ref(), scenario);
                let table = report::table(std::slice::from_ref(&result));
                if result.verdict == Verdict::NotRun {
                    eprintln!("{table}");
                }
                if result.verdict.passed() {
                    Ok(())
                } else {
                    Err(format!("{} is {}:\n{table}", result.scenario, result.verdict).into())
                }
            }));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
