//! The conformance suite as tests: one trial per (suite, scenario) found under fixtures/,
//! named `suite/scenario` (e.g. `rng/randn/cpu-generator/seed0/4`). A trial passes when the
//! scenario is identical to its expectation or within tolerance; it fails on drift, failure, a
//! missing golden, and (in CI) a host class without an expectation. A scenario that cannot run
//! here (no CUDA, model weights not in the local cache) is ignored at list time, with the
//! reason printed, so runners count it apart from the passes. The suites are data: adding a
//! scenario to a suite file adds a test here.
use libtest_mimic::{Arguments, Failed, Trial};
use reprodiff::harness::check::{in_ci, Verdict};
use reprodiff::harness::observe::Runner;
use reprodiff::harness::report;
use reprodiff::harness::session::{cannot_run, check_one, Fixtures, Selection};
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
            let skip = cannot_run(&suite.scenarios[index]);
            if let (Some(why), true) = (&skip, args.list) {
                eprintln!("{name}: ignored, not run: {why}");
            }
            let trial = Trial::test(name, move || {
                let golden = store
                    .load(&suite.name)
                    .map_err(|e| Failed::from(e.to_string()))?;
                let scenario = &suite.scenarios[index];
                let (result, _) = check_one(&runner, &store, &suite, golden.as_ref(), scenario);
                let text = format!(
                    "{}{}",
                    report::lines(std::slice::from_ref(&result), true),
                    result
                        .class
                        .as_deref()
                        .map_or(String::new(), |c| format!("host class: {c}\n"))
                );
                if result.verdict.fails(in_ci()) {
                    return Err(
                        format!("{} is {}:\n{text}", result.scenario, result.verdict).into(),
                    );
                }
                if result.verdict != Verdict::Identical {
                    eprintln!("{text}");
                }
                Ok(())
            });
            trials.push(trial.with_ignored_flag(skip.is_some()));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
