//! What a comparison gives: the verdict, the rows of the check table, the scenario's result.
use crate::harness::run::observe::{NotObserved, Observation};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Ordered from best to worst; a scenario's verdict is the worst of its metrics'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Bit-identical to the expectation (or the metric's value is exactly the expectation's).
    Identical,
    /// Different, inside the scenario's tolerance (or its cross-class tolerance).
    WithinTolerance,
    /// Not run, for a reason found before running it (no CUDA, no weights, the CPU lacks a
    /// capability, a scenario checked only on its own class on another class). Neither a pass
    /// nor a failure: a skip, said with its reason. A scenario that turns out not to run only
    /// once started is `Failed`.
    NotRun,
    /// Only another class's expectation, and the scenario too sensitive for any tolerance to
    /// mean something there: nothing could be compared. A failure; a suite that knows it marks
    /// the scenario `own_class_only`, with the measured reason, and it is skipped instead.
    NotComparable,
    /// This host's class has no expectation the scenario's cross-class rule can use. A failure
    /// in CI; elsewhere a skip, decided before running.
    NoExpectation,
    /// The output matches what `reprodiff bless` wrote for this class, and no diffusers (oracle
    /// or published) expectation exists: reprodiff agrees with itself, which judges nothing
    /// against diffusers. Counted apart; a failure in CI.
    BlessedOnly,
    /// Outside the tolerance.
    Drifted,
    /// No golden to compare with: bless or run the oracle.
    NoGolden,
    /// The run failed, or its output cannot be compared (shape, dtype, NaN).
    Failed,
}

impl Verdict {
    /// Whether this verdict fails a check run (`ci`: running in CI, where a host without an
    /// expectation means the goldens do not cover the machines the project is tested on).
    pub fn fails(self, ci: bool) -> bool {
        match self {
            Verdict::Identical | Verdict::WithinTolerance | Verdict::NotRun => false,
            Verdict::NoExpectation | Verdict::BlessedOnly => ci,
            Verdict::NotComparable | Verdict::Drifted | Verdict::NoGolden | Verdict::Failed => true,
        }
    }

    /// Compared and found good: identical or within tolerance.
    pub fn passed(self) -> bool {
        matches!(self, Verdict::Identical | Verdict::WithinTolerance)
    }

    /// Every verdict, best first.
    pub const ALL: [Verdict; 9] = [
        Verdict::Identical,
        Verdict::WithinTolerance,
        Verdict::NotComparable,
        Verdict::NotRun,
        Verdict::NoExpectation,
        Verdict::BlessedOnly,
        Verdict::Drifted,
        Verdict::NoGolden,
        Verdict::Failed,
    ];

    /// The name records and reports use ("within-tolerance"): serde's name of the variant.
    pub fn key(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .expect("a verdict serialises as its name")
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::WithinTolerance => "within tolerance",
            Verdict::NotRun => "not run",
            Verdict::NotComparable => "not comparable",
            Verdict::NoExpectation => "no expectation",
            Verdict::BlessedOnly => "blessed only",
            Verdict::Drifted => "drifted",
            Verdict::NoGolden => "no golden",
            Verdict::Failed => "failed",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Whether this process runs in CI (the `CI` variable set, as CI services do).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// One row of the check table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricCheck {
    /// A suite metric's name, or "rmse_truth" for the cross-class rule.
    pub metric: String,
    /// Expected value (for bits: the SHA-256; for comparative metrics: the ideal value).
    pub golden: String,
    pub got: String,
    pub delta: Option<f64>,
    pub tolerance: String,
    pub verdict: Verdict,
}

/// How the expectation was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Match {
    /// The run's own class.
    SameClass,
    /// A published value (class `any`).
    Published,
    /// The nearest recorded class, under the scenario's cross-class rule.
    NearestClass,
}

/// The expectation a run was compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparedWith {
    pub class: String,
    #[serde(rename = "match")]
    pub how: Match,
    pub producer: String,
}

/// The outcome of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub suite: String,
    pub scenario: String,
    pub verdict: Verdict,
    /// The environment class the scenario ran in.
    pub class: Option<String>,
    pub compared_with: Option<ComparedWith>,
    pub checks: Vec<MetricCheck>,
    /// Why it failed or was not run, where the worst element is, how to fix a missing golden.
    pub notes: Vec<String>,
    pub output: Option<OutputSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSummary {
    pub shape: Vec<i64>,
    pub dtype: String,
    pub sha256: String,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub unseeded_seed: Option<u64>,
    pub elapsed_s: f64,
    /// The per-step trace of a pipeline scenario: where two runs part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<crate::pipelines::StepTrace>>,
}

impl OutputSummary {
    pub fn of(obs: &Observation) -> Self {
        OutputSummary {
            shape: obs.shape.clone(),
            dtype: obs.dtype.to_string(),
            sha256: obs.sha256.clone(),
            metrics: obs.metrics.clone(),
            unseeded_seed: obs.unseeded_seed,
            elapsed_s: obs.elapsed_s,
            // Records keep each step's sum_abs and sample, not the latent itself.
            trace: obs.trace.as_ref().map(|t| {
                t.iter()
                    .map(|s| crate::pipelines::StepTrace {
                        latent: Vec::new(),
                        shape: Vec::new(),
                        ..s.clone()
                    })
                    .collect()
            }),
        }
    }
}

impl ScenarioResult {
    /// A run compared with nothing (`reprodiff run --json`): verdict "no golden", the output
    /// described, and `note` saying why.
    pub fn uncompared(suite: &str, scenario: &str, obs: &Observation, note: &str) -> Self {
        ScenarioResult {
            output: Some(OutputSummary::of(obs)),
            ..Self::bare(suite, scenario, Verdict::NoGolden, note.into())
        }
    }

    fn bare(suite: &str, scenario: &str, verdict: Verdict, note: String) -> Self {
        ScenarioResult {
            suite: suite.into(),
            scenario: scenario.into(),
            verdict,
            class: None,
            compared_with: None,
            checks: Vec::new(),
            notes: vec![note],
            output: None,
        }
    }

    /// A scenario skipped before it ran: `verdict` is `NotRun` or `NoExpectation`.
    pub fn skipped(suite: &str, scenario: &str, verdict: Verdict, reason: &str) -> Self {
        Self::bare(suite, scenario, verdict, reason.into())
    }

    /// A scenario that produced no observation. Whatever was found missing only once it ran
    /// is a failure: what a host lacks is decided before running (`session::plan`).
    pub fn not_observed(suite: &str, scenario: &str, why: &NotObserved) -> Self {
        match why {
            NotObserved::NotRun(reason) => Self::bare(
                suite,
                scenario,
                Verdict::Failed,
                format!(
                    "could not run, although nothing was found missing before it started: \
                     {reason}"
                ),
            ),
            NotObserved::Failed(e) => Self::bare(suite, scenario, Verdict::Failed, e.to_string()),
        }
    }

    /// The row that decided the verdict: the first check with the scenario's verdict.
    pub fn worst_check(&self) -> Option<&MetricCheck> {
        self.checks.iter().find(|c| c.verdict == self.verdict)
    }
}

/// The command that creates a missing golden.
pub fn bless_hint(suite: &str, scenario: &str) -> String {
    format!(
        "no golden for this scenario: record diffusers' with the oracle (ci/oracle/run.sh \
         --suite {suite} --filter '^{}$'); `reprodiff bless` only adds reprodiff's own bits, \
         which no check counts as a pass against diffusers",
        regex::escape(scenario)
    )
}
