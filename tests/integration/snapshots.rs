//! insta snapshots (in snapshots/) of what people read: the `env --json` fingerprint's schema
//! and the table `check` prints. The drift reports' snapshots are in `drift`.
use crate::common::{reprodiff, snapshot_settings};
use reprodiff::error::exit;
use reprodiff::harness::compare::{ComparedWith, Match, MetricCheck, ScenarioResult, Verdict};
use reprodiff::harness::report::table;
use reprodiff::metrics::Metric;

#[test]
fn env_json_schema() {
    let out = reprodiff(&["env", "--json"], None);
    assert_eq!(out.status.code(), Some(exit::OK));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    snapshot_settings().bind(|| {
        insta::assert_json_snapshot!("env_json_schema", v, {
            ".versions.reprodiff" => "[version]",
            ".versions.torch_build" => "[build]",
            ".cpu.model" => "[cpu model]",
            ".cpu.isa" => "[isa flags]",
            ".cpu.capability" => "[capability]",
            ".cpu.vendor" => "[vendor]",
            ".cpu.kernel_env" => "[kernel env]",
            ".class" => "[class]",
            ".cpu.threads" => "[threads]",
            ".determinism.threads" => "[threads]",
            ".determinism.cpu_capability" => "[capability]",
            ".cuda" => "[cuda]",
            ".os.arch" => "[arch]",
            ".os.libc" => "[libc]",
        });
    });
}

const HOST: &str =
    "cpu/x86_64/intel/aten=avx512/onednn=avx512_core_amx/mkl=auto/threads=2/libtorch=2.13.0";
const AMD_AVX2: &str = "cpu/x86_64/amd/aten=avx2/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0";

/// One row of a scenario's checks.
fn row(
    metric: Metric,
    golden: &str,
    got: &str,
    delta: Option<f64>,
    tolerance: &str,
    verdict: Verdict,
) -> MetricCheck {
    MetricCheck {
        metric: metric.to_string(),
        golden: golden.into(),
        got: got.into(),
        delta,
        tolerance: tolerance.into(),
        verdict,
    }
}

/// A bit-identical rng scenario judged against its own class.
fn identical_rng() -> ScenarioResult {
    ScenarioResult {
        suite: "rng".into(),
        scenario: "randn/seed0/4".into(),
        verdict: Verdict::Identical,
        checks: vec![
            row(
                Metric::Bits,
                "3d2a6e6ad1af",
                "3d2a6e6ad1af",
                None,
                "bit-exact",
                Verdict::Identical,
            ),
            row(
                Metric::SumAbs,
                "4.581645607948303",
                "4.581645607948303",
                Some(0.0),
                "exact",
                Verdict::Identical,
            ),
        ],
        notes: vec![],
        output: None,
        class: Some(HOST.into()),
        compared_with: Some(ComparedWith {
            class: HOST.into(),
            how: Match::SameClass,
            producer: "oracle".into(),
        }),
    }
}

/// A drifted published-golden scenario with a note on its largest difference.
fn drifted_ddim() -> ScenarioResult {
    ScenarioResult {
        suite: "ddim".into(),
        scenario: "cifar10/50-steps".into(),
        verdict: Verdict::Drifted,
        checks: vec![
            row(
                Metric::SumAbs,
                "1491.1711",
                "1491.2",
                Some(0.0289),
                "abs 0.01",
                Verdict::Drifted,
            ),
            row(
                Metric::LInf,
                "0",
                "0.00002",
                Some(0.00002),
                "<= 0.0001",
                Verdict::WithinTolerance,
            ),
        ],
        notes: vec!["largest difference 0.00002 at [0, 31, 2, 1]: got 0.5 golden 0.49998".into()],
        output: None,
        class: Some(HOST.into()),
        compared_with: Some(ComparedWith {
            class: "any".into(),
            how: Match::Published,
            producer: "published".into(),
        }),
    }
}

/// A scenario within tolerance of the truth rule, judged against the nearest class.
fn within_by_the_truth() -> ScenarioResult {
    ScenarioResult {
        suite: "ddim-tiny".into(),
        scenario: "tiny-ddim-a/steps5".into(),
        verdict: Verdict::WithinTolerance,
        checks: vec![MetricCheck {
            metric: "rmse_truth".into(),
            golden: "7.8e-7".into(),
            got: "1.32e-6".into(),
            delta: Some(5.4e-7),
            tolerance: "<= 2 * 7.800e-7 + 1e-7 = 1.660e-6".into(),
            verdict: Verdict::WithinTolerance,
        }],
        notes: vec![],
        output: None,
        class: Some(HOST.into()),
        compared_with: Some(ComparedWith {
            class: AMD_AVX2.into(),
            how: Match::NearestClass,
            producer: "oracle".into(),
        }),
    }
}

/// A scenario not run: its model is missing.
fn not_run_without_its_model() -> ScenarioResult {
    ScenarioResult {
        suite: "ddim".into(),
        scenario: "docs/2-steps".into(),
        verdict: Verdict::NotRun,
        checks: vec![],
        notes: vec!["model not found".into()],
        output: None,
        class: None,
        compared_with: None,
    }
}

#[test]
fn check_table_layout() {
    let results = vec![
        identical_rng(),
        drifted_ddim(),
        within_by_the_truth(),
        not_run_without_its_model(),
    ];
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("check_table_layout", table::render(&results, false, true));
    });
}
