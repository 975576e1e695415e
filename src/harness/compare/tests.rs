//! The rules of the comparison, on hand-made goldens and observations.
use super::*;
use crate::harness::run::observe::NotObserved;
use crate::harness::store::Provenance;
use crate::harness::suite::Suite;
use std::path::Path;

const INTEL: &str =
    "cpu/x86_64/intel/aten=avx512/onednn=avx512_core_amx/mkl=auto/threads=2/libtorch=2.13.0";
const AMD: &str =
    "cpu/x86_64/amd/aten=avx512/onednn=avx512_core_bf16/mkl=auto/threads=2/libtorch=2.13.0";
const AMD_DEFAULT: &str =
    "cpu/x86_64/amd/aten=default/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0";

fn scenario(extra: &str) -> Scenario {
    let text = format!(
        "schema = 1\nname = \"t\"\n[[scenario]]\nname = \"s\"\nmetrics = [\"bits\"]\n\
         run = {{ kind = \"random\", op = \"randn\", shape = [4], generator = {{ type = \
         \"single\", seed = 0 }} }}\n{extra}\n"
    );
    Suite::parse(&text, Path::new("t.toml"))
        .unwrap()
        .scenarios
        .remove(0)
}

fn expectation(class: &str, producer: &str) -> Expectation {
    Expectation {
        class: class.parse().unwrap(),
        sha256: Some(format!("{producer}-{class}")),
        metrics: Default::default(),
        array: None,
        array_sha256: None,
        local: None,
        step_error: None,
        provenance: Provenance {
            producer: producer.into(),
            tool: "t".into(),
            command: format!("made by {producer}"),
            environment: None,
        },
    }
}

fn golden(expectations: &[(&str, &str)]) -> GoldenScenario {
    GoldenScenario {
        shape: vec![4],
        dtype: crate::torch::DType::F32,
        truth: None,
        expectations: expectations
            .iter()
            .map(|(c, p)| expectation(c, p))
            .collect(),
        model_sha256: None,
    }
}

fn authority<'a>(c: &Choice<'a>) -> (&'a str, Match) {
    let (e, how) = c.authority.as_ref().expect("an authority");
    (e.provenance.producer.as_str(), *how)
}

const TRUTH: &str = "cross_class = { rule = \"truth\", k = 2.0, noise_ulps = 1.0 }";

#[test]
fn the_own_oracle_expectation_is_the_authority() {
    let g = golden(&[(INTEL, "oracle"), (AMD, "oracle")]);
    let c = choose(&g, &INTEL.parse().unwrap(), &scenario(TRUTH));
    assert_eq!(authority(&c), ("oracle", Match::SameClass));
    assert!(c.blessed.is_none());
}

#[test]
fn a_blessed_expectation_never_replaces_the_nearest_oracle_class() {
    let g = golden(&[(INTEL, "reprodiff"), (AMD, "oracle")]);
    let c = choose(&g, &INTEL.parse().unwrap(), &scenario(TRUTH));
    let (e, how) = c.authority.as_ref().unwrap();
    assert_eq!(
        (e.class.to_string().as_str(), *how),
        (AMD, Match::NearestClass)
    );
    assert_eq!(c.blessed.unwrap().class.to_string(), INTEL);
}

#[test]
fn a_publication_stays_the_authority_beside_a_blessed_expectation() {
    let g = golden(&[("any", "published"), (INTEL, "reprodiff")]);
    let c = choose(&g, &INTEL.parse().unwrap(), &scenario(""));
    assert_eq!(authority(&c), ("published", Match::Published));
    assert!(c.blessed.is_some());
}

#[test]
fn only_blessed_expectations_are_all_there_is() {
    let g = golden(&[(INTEL, "reprodiff")]);
    let c = choose(&g, &INTEL.parse().unwrap(), &scenario(""));
    assert_eq!(authority(&c), ("reprodiff", Match::SameClass));
    assert!(c.blessed.is_none());
    let c = choose(&g, &AMD.parse().unwrap(), &scenario(TRUTH));
    assert!(matches!(c.authority, Err(NoAuthority::NoExpectation(_))));
}

#[test]
fn own_class_only_and_no_rule_have_no_authority_on_another_class() {
    let g = golden(&[(AMD, "oracle")]);
    let own = scenario(&format!("{TRUTH}\nown_class_only = \"measured\""));
    let c = choose(&g, &INTEL.parse().unwrap(), &own);
    assert_eq!(
        c.authority.unwrap_err(),
        NoAuthority::OwnClassOnly("measured".into())
    );
    let c = choose(&g, &INTEL.parse().unwrap(), &scenario(""));
    assert!(matches!(c.authority, Err(NoAuthority::NoExpectation(_))));
    // On its own class an own-class-only scenario is judged as any other.
    let c = choose(&g, &AMD.parse().unwrap(), &own);
    assert_eq!(authority(&c), ("oracle", Match::SameClass));
}

#[test]
fn the_bits_rule_compares_only_with_the_same_aten_capability() {
    let bits = scenario("cross_class = { rule = \"bits\" }");
    let g = golden(&[(AMD, "oracle"), (AMD_DEFAULT, "oracle")]);
    let intel_default: EnvClass =
        "cpu/x86_64/intel/aten=default/onednn=sse41/mkl=auto/threads=1/libtorch=2.13.0"
            .parse()
            .unwrap();
    let c = choose(&g, &intel_default, &bits);
    let (e, _) = c.authority.unwrap();
    assert_eq!(e.class.to_string(), AMD_DEFAULT);
    let g = golden(&[(AMD, "oracle")]);
    assert!(matches!(
        choose(&g, &intel_default, &bits).authority,
        Err(NoAuthority::NoExpectation(_))
    ));
    assert!(choose(&g, &INTEL.parse().unwrap(), &bits).authority.is_ok());
}

#[test]
fn a_scenario_found_missing_only_at_run_time_fails() {
    let r = ScenarioResult::not_observed("s", "x", &NotObserved::NotRun("gone".into()));
    assert_eq!(r.verdict, Verdict::Failed);
    assert!(r.notes[0].contains("gone"), "{:?}", r.notes);
    assert!(Verdict::NotComparable.fails(false));
    assert!(!Verdict::NotRun.fails(true));
    assert!(Verdict::NoExpectation.fails(true) && !Verdict::NoExpectation.fails(false));
}

/// The elements the per-step truth holds depend on the latent's size alone: all of a
/// small latent, else 256 evenly spaced ones, the first element first.
#[test]
fn the_step_truth_elements_are_fixed_by_the_size_alone() {
    use crate::pipelines::trace::{step_subset, STEP_TRUTH_ELEMENTS};
    let small: Vec<f64> = (0..192).map(f64::from).collect();
    assert_eq!(step_subset(&small), small);
    let big: Vec<f64> = (0..4096).map(f64::from).collect();
    let sub = step_subset(&big);
    assert_eq!(sub.len(), STEP_TRUTH_ELEMENTS);
    assert_eq!(&sub[..3], &[0.0, 16.0, 32.0]);
    assert_eq!(sub[255], 4080.0);
}

fn reading(ratios: &[f64], steps: usize) -> StepReading {
    StepReading {
        steps,
        ratios: ratios.to_vec(),
        limit: POWERLESS_SENSITIVITY,
    }
}

fn chaotic() -> ScenarioResult {
    ScenarioResult::skipped("s", "x", Verdict::NotComparable, "output chaotic")
}

/// Where the output is chaotic, the comparable steps decide, and the line says how far it
/// looked; the first step beyond the bound is named.
#[test]
fn the_step_rule_judges_a_chaotic_output_by_its_comparable_steps() {
    let mut r = chaotic();
    step_rule(&mut r, &reading(&[0.5, 1.2, 0.9], 50), 2.0);
    assert_eq!(r.verdict, Verdict::WithinTolerance);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("through step 3 of 50") && n.contains("chaotic after")),
        "{:?}",
        r.notes
    );
    let mut r = chaotic();
    step_rule(&mut r, &reading(&[0.5, 2.5, 9.0], 50), 2.0);
    assert_eq!(r.verdict, Verdict::Drifted);
    assert!(
        r.notes.iter().any(|n| n.contains("at step 2 of 50")),
        "{:?}",
        r.notes
    );
    // No comparable step: the output's "not comparable" stands (a failure).
    let mut r = chaotic();
    step_rule(&mut r, &reading(&[], 50), 2.0);
    assert_eq!(r.verdict, Verdict::NotComparable);
    // A comparable output that drifted stays drifted whatever the steps say.
    let mut r = chaotic();
    r.verdict = Verdict::Drifted;
    step_rule(&mut r, &reading(&[0.1], 1), 2.0);
    assert_eq!(r.verdict, Verdict::Drifted);
}

/// A step is comparable while its noise response is at most POWERLESS_SENSITIVITY of the
/// truth's RMS there; the first that is not ends the comparable steps.
#[test]
fn comparable_steps_end_at_the_first_chaotic_step() {
    let truth = vec![1.0; 6]; // 3 steps of 2 elements, RMS 1
    let limit = POWERLESS_SENSITIVITY;
    use crate::torch::DType;
    assert_eq!(
        comparable_steps(&truth, &[0.0, limit, limit * 0.5], DType::F32),
        3
    );
    assert_eq!(
        comparable_steps(&truth, &[0.0, limit * 2.0, 0.0], DType::F32),
        1
    );
    assert_eq!(
        comparable_steps(&truth, &[limit * 2.0, 0.0, 0.0], DType::F32),
        0
    );
    // f16's own rounding is 2^13 times float32's: the same amplification is allowed, with
    // no cap (bf16: 2^16 times).
    assert_eq!(step_limit(DType::F32), limit);
    assert_eq!(step_limit(DType::F16), limit * 8192.0);
    assert_eq!(step_limit(DType::Bf16), limit * 65536.0);
    let f16 = step_limit(DType::F16);
    assert_eq!(
        comparable_steps(&truth, &[0.5 * f16, f16, 2.0 * f16], DType::F16),
        2
    );
}

fn stage(error: f64, bound: f64) -> local::LocalStage {
    local::LocalStage {
        stage: format!("stage {error}"),
        error,
        bound,
    }
}

/// The local rule: within where every stage is within its bound; the first stage beyond is
/// named; a NaN error fails; where the output was not comparable the local verdict replaces
/// it, elsewhere the worse of the two stands.
#[test]
fn the_local_rule_fails_at_the_first_stage_beyond_its_bound() {
    let reference = expectation(
        "cpu/x86_64/intel/aten=avx2/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0",
        "oracle",
    );
    let mut r = chaotic();
    local::local_rule(
        &mut r,
        &[stage(1.0, 2.0), stage(0.0, 0.0)],
        &reference,
        (2.0, 3.0),
    );
    assert_eq!(r.verdict, Verdict::WithinTolerance);
    assert!(
        r.notes.iter().any(|n| n.contains("within the local rule")),
        "{:?}",
        r.notes
    );
    let mut r = chaotic();
    local::local_rule(
        &mut r,
        &[stage(1.0, 2.0), stage(3.0, 2.0), stage(9.0, 2.0)],
        &reference,
        (2.0, 3.0),
    );
    assert_eq!(r.verdict, Verdict::Drifted);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("beyond the local rule at stage 3")),
        "{:?}",
        r.notes
    );
    for stages in [vec![stage(f64::NAN, 1.0)], vec![stage(1e-9, 0.0)]] {
        let mut r = chaotic();
        local::local_rule(&mut r, &stages, &reference, (2.0, 3.0));
        assert_eq!(r.verdict, Verdict::Drifted, "{stages:?}");
    }
    // A drifted output stays drifted whatever the stages say.
    let mut r = chaotic();
    r.verdict = Verdict::Drifted;
    local::local_rule(&mut r, &[stage(0.0, 1.0)], &reference, (2.0, 3.0));
    assert_eq!(r.verdict, Verdict::Drifted);
}
