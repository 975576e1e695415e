//! The local rule: every step and the output judged from the truth's own input to them.
//!
//! A step is a function of its input. The run's local pass ([`crate::harness::run::local`])
//! computes each step from the float64 truth's latent before it (rounded to the run's dtype),
//! and the output from the truth's final latent; neither is chaotic, wherever in the trajectory
//! it is. Each is held to the truth after it by the truth rule's form, against what diffusers
//! does from the same input on the nearest class the oracle measured (its local figures):
//!
//! ```text
//! rmse(truth_t, local_t) <= k * diffusers' local error_t + local_ulps * local response_t
//! ```
//!
//! where the local response is how far diffusers' step moves when its input moves one ulp (of
//! the run's dtype). `k` is the suite's truth-rule k, `local_ulps` its calibrated value for the
//! run's dtype (`reprodiff calibrate`, from the oracle's classes alone).
use super::result::{MetricCheck, ScenarioResult, Verdict};
use crate::env::EnvClass;
use crate::harness::run::observe::Observation;
use crate::harness::store::{Expectation, GoldenScenario, GoldenStore, LocalFigures};
use crate::metrics;

/// One stage's reading: its name, the run's local error and the bound.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalStage {
    pub stage: String,
    pub error: f64,
    pub bound: f64,
}

impl LocalStage {
    /// error / bound (0 for 0/0, infinite past a zero bound, NaN stays NaN).
    pub fn ratio(&self) -> f64 {
        if self.bound > 0.0 {
            self.error / self.bound
        } else if self.error == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    }

    fn fails(&self) -> bool {
        let r = self.ratio();
        r.is_nan() || r > 1.0
    }
}

/// The oracle expectation with local figures nearest to `class`.
pub fn reference<'a>(golden: &'a GoldenScenario, class: &EnvClass) -> Option<&'a Expectation> {
    let measured: Vec<&EnvClass> = golden
        .expectations
        .iter()
        .filter(|e| e.local.is_some())
        .map(|e| &e.class)
        .collect();
    class.nearest(measured).and_then(|c| golden.expectation(c))
}

/// The local pass of `obs` held against the truth, stage by stage (steps, then the output).
pub fn local_stages(
    golden: &GoldenScenario,
    figures: &LocalFigures,
    obs: &Observation,
    store: &GoldenStore,
    truth_output: &[f64],
    (k, ulps): (f64, f64),
) -> std::result::Result<Vec<LocalStage>, String> {
    let local = obs.local.as_ref().ok_or("the run made no local pass")?;
    let st = golden
        .truth
        .as_ref()
        .and_then(|t| t.steps.as_ref())
        .ok_or("the golden has no per-step truth")?;
    let (truth, shape) = store.read_array(&st.array).map_err(|e| e.to_string())?;
    let steps = local.steps.len();
    let per = shape.get(1).copied().unwrap_or(0) as usize;
    if shape.first().copied() != Some(steps as i64) || figures.error.len() != steps {
        return Err(format!(
            "the local pass made {steps} steps; the truth is {shape:?} and diffusers' local \
             figures have {} steps",
            figures.error.len()
        ));
    }
    let mut stages = Vec::with_capacity(steps + 1);
    for (i, own) in local.steps.iter().enumerate() {
        if own.len() != per {
            return Err(format!(
                "step {}: the local pass's latent has {} elements, the truth's {per}",
                i + 1,
                own.len()
            ));
        }
        stages.push(LocalStage {
            stage: format!("step {} of {steps}", i + 1),
            error: metrics::rmse(&truth[i * per..(i + 1) * per], own),
            bound: k * figures.error[i] + ulps * figures.response[i],
        });
    }
    if local.output.len() != truth_output.len() {
        return Err(format!(
            "the local pass's output has {} elements, the truth's {}",
            local.output.len(),
            truth_output.len()
        ));
    }
    stages.push(LocalStage {
        stage: "the output (decode and post-processing of the truth's final latent)".into(),
        error: metrics::rmse(truth_output, &local.output),
        bound: k * figures.output_error + ulps * figures.output_response,
    });
    Ok(stages)
}

/// Applies the local rule to `result`: a check `local_error` (the worst stage's error over its
/// bound) and a note naming the first stage beyond it. Where the output was not comparable,
/// the local rule's verdict (with the step rule's, if any) replaces it.
pub(super) fn local_rule(
    result: &mut ScenarioResult,
    stages: &[LocalStage],
    reference: &Expectation,
    (k, ulps): (f64, f64),
) {
    let Some(worst) = stages.iter().map(LocalStage::ratio).reduce(|a, b| {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.max(b)
        }
    }) else {
        return;
    };
    let beyond = stages.iter().find(|s| s.fails());
    let verdict = if beyond.is_some() {
        Verdict::Drifted
    } else {
        Verdict::WithinTolerance
    };
    let n = stages.len() - 1;
    result.checks.push(MetricCheck {
        metric: "local_error".into(),
        golden: "0".into(),
        got: format!("{worst:.3}"),
        delta: Some(worst),
        tolerance: format!(
            "<= {k} x diffusers' local error + {ulps} local responses, at each of {n} steps and \
             the output"
        ),
        verdict,
    });
    result.notes.push(match beyond {
        Some(s) => format!(
            "beyond the local rule at {}: from the truth's input, rmse(truth, got) is {:.3e}, the \
             bound {:.3e} ({k} x diffusers' local error + {ulps} local responses, measured on {})",
            s.stage, s.error, s.bound, reference.class
        ),
        None => format!(
            "within the local rule at every step and the output (worst {worst:.3} of the bound; \
             diffusers' local error measured on {})",
            reference.class
        ),
    });
    result.verdict = if result.verdict == Verdict::NotComparable {
        verdict
    } else {
        result.verdict.max(verdict)
    };
}
