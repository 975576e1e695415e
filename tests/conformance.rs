//! The conformance suite as tests: one trial per (suite, scenario) found under fixtures/,
//! named `suite/scenario` (e.g. `rng/randn/cpu-generator/seed0/4`). A trial passes only when
//! the scenario was compared and found identical to its expectation or within tolerance; every
//! other verdict fails it (drift, failure, a missing golden, not comparable, a scenario that
//! turned out not to run). What cannot run or be judged here is decided at list time
//! (`session::plan`: no CUDA, a CPU capability or model weights missing, a scenario checked only
//! on its own class, no expectation for this class outside CI) and ignored, with the reason
//! printed, so runners count it apart from the passes. The suites are data: adding a scenario
//! to a suite file adds a test here.
use libtest_mimic::{Arguments, Failed, Trial};
use reprodiff::env::Fingerprint;
use reprodiff::harness::compare::{in_ci, Verdict};
use reprodiff::harness::report::table;
use reprodiff::harness::run::observe::Runner;
use reprodiff::harness::session::{check_one, plan};
use reprodiff::harness::suite::{Fixtures, Selection};
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
    let host = Arc::new(Fingerprint::current().unwrap_or_else(|e| panic!("fingerprint: {e}")));

    let mut trials = Vec::new();
    for suite in suites {
        let goldens = store
            .load(&suite.name)
            .unwrap_or_else(|e| panic!("cannot load the goldens of {}: {e}", suite.name));
        let suite = Arc::new(suite);
        for index in 0..suite.scenarios.len() {
            let scenario = &suite.scenarios[index];
            let name = format!("{}/{}", suite.name, scenario.name);
            // Ignored only where the plan's verdict is not itself a failure (no expectation
            // is one in CI: that trial runs and fails with the reason).
            let skip =
                plan(&suite, scenario, goldens.as_ref(), &host).filter(|(v, _)| !v.fails(in_ci()));
            if let (Some((verdict, why)), true) = (&skip, args.list) {
                eprintln!("{name}: ignored, {verdict}: {why}");
            }
            let (suite, runner, store) = (suite.clone(), runner.clone(), store.clone());
            let host = host.clone();
            let trial = Trial::test(name, move || {
                let golden = store
                    .load_verified(&suite.name, [suite.scenarios[index].name.as_str()])
                    .map_err(|e| Failed::from(e.to_string()))?;
                let scenario = &suite.scenarios[index];
                let (result, _) =
                    check_one(&runner, &store, &suite, golden.as_ref(), scenario, &host);
                let text = format!(
                    "{}{}",
                    table::lines(std::slice::from_ref(&result), true),
                    result
                        .class
                        .as_deref()
                        .map_or(String::new(), |c| format!("host class: {c}\n"))
                );
                // Nothing passes unlooked at: a trial that ran passes only on a comparison.
                if !result.verdict.passed() {
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
