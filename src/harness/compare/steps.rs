//! The per-step rule across classes: a run's trace held against the golden's per-step float64
//! truth, as far as the trajectory is comparable.
use super::result::{MetricCheck, ScenarioResult, Verdict};
use super::{relative_sensitivity, POWERLESS_SENSITIVITY};
use crate::harness::run::observe::Observation;
use crate::harness::store::GoldenStore;
use crate::metrics;
use crate::pipelines::trace::{step_subset, STEP_TRUTH_ELEMENTS};

/// A run's trace held against the per-step truth: per step, how far the run is from the
/// truth in units of that step's noise response, as far as the trajectory is comparable.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReading {
    /// Denoising steps in the run.
    pub steps: usize,
    /// Per comparable step (the first `ratios.len()` steps, those whose noise response is at
    /// most [`step_limit`] of the truth's RMS there): rmse(truth, run) / response.
    pub ratios: Vec<f64>,
    /// The step limit of the run's dtype ([`step_limit`]).
    pub limit: f64,
}

impl StepReading {
    /// The largest ratio over the comparable steps.
    pub fn worst(&self) -> Option<f64> {
        // A NaN ratio is the worst of all (f64::max would drop it).
        self.ratios.iter().copied().reduce(|a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        })
    }
}

/// The most a step's noise response may be, relative to the truth's RMS there, for the step to
/// be comparable across classes, in a run of `dtype`. For float32 it is the output's limit,
/// [`POWERLESS_SENSITIVITY`]: rounding amplified some 8,400 times (1e-3 / 2^-23). A run in
/// f16 or bf16 starts from a noise response of about its own epsilon (2^-10, 2^-7), so the same
/// amplification of its own rounding is allowed. There is no cap: where a reduced-precision
/// trajectory has become another one, the bound (a multiple of that step's noise response)
/// grows with it, and the local rule (`local.rs`) judges every step from the truth's own input
/// in the run's precision.
pub fn step_limit(dtype: crate::torch::DType) -> f64 {
    use crate::torch::DType;
    let eps = |d: DType| match d {
        DType::F32 => f64::from(f32::EPSILON),
        DType::F16 => 2f64.powi(-10),
        DType::Bf16 => 2f64.powi(-7),
        DType::F64 => f64::EPSILON,
    };
    POWERLESS_SENSITIVITY * eps(dtype) / eps(DType::F32)
}

/// How many steps, from the first, a per-step truth (`truth`: [steps, elements], flat) keeps
/// comparable across classes for a run of `dtype`: those whose noise response is at most
/// [`step_limit`] of the truth's RMS at that step. After the first that is not, the trajectory
/// is chaotic.
pub fn comparable_steps(
    truth: &[f64],
    noise_response: &[f64],
    dtype: crate::torch::DType,
) -> usize {
    let per = truth.len() / noise_response.len().max(1);
    let limit = step_limit(dtype);
    noise_response
        .iter()
        .enumerate()
        .take_while(|(i, r)| relative_sensitivity(**r, &truth[i * per..(i + 1) * per]) <= limit)
        .count()
}

/// Reads the golden's per-step truth and holds the run's trace against it.
pub(super) fn step_reading(
    st: &crate::harness::store::StepTruth,
    obs: &Observation,
    store: &GoldenStore,
) -> std::result::Result<StepReading, String> {
    let trace = obs
        .trace
        .as_ref()
        .ok_or("the run recorded no per-step trace")?;
    let (values, shape) = store.read_array(&st.array).map_err(|e| e.to_string())?;
    let steps = st.noise_response.len();
    if shape.len() != 2 || shape[0] as usize != steps || trace.len() != steps {
        return Err(format!(
            "the per-step truth {} is {shape:?} for {steps} noise responses; the run made {} steps",
            st.array,
            trace.len()
        ));
    }
    let per = shape[1] as usize;
    let comparable = comparable_steps(&values, &st.noise_response, obs.dtype);
    let mut ratios = Vec::new();
    for (i, (step, response)) in trace.iter().zip(&st.noise_response).enumerate() {
        // A truth recorded by an older oracle holds the elements step_subset picks.
        let got = if step.latent.len() == per {
            std::borrow::Cow::Borrowed(&step.latent)
        } else if per == STEP_TRUTH_ELEMENTS && step.latent.len() > per {
            std::borrow::Cow::Owned(step_subset(&step.latent))
        } else {
            return Err(format!(
                "step {}: the run's latent has {} elements, the truth's {per}",
                i + 1,
                step.latent.len()
            ));
        };
        if i >= comparable {
            continue;
        }
        let r = metrics::rmse(&values[i * per..(i + 1) * per], &got);
        ratios.push(if *response > 0.0 {
            r / response
        } else if r == 0.0 {
            0.0
        } else {
            f64::INFINITY
        });
    }
    Ok(StepReading {
        steps,
        ratios,
        limit: step_limit(obs.dtype),
    })
}

/// The cross-class step rule: every comparable step within `bound` noise responses of the
/// truth. Where the output itself is not comparable, this is the verdict ("within tolerance
/// through step 31 of 50; chaotic after"); else the worse of the two.
pub(super) fn step_rule(result: &mut ScenarioResult, reading: &StepReading, bound: f64) {
    let (n, m) = (reading.ratios.len(), reading.steps);
    let output_chaotic = result.verdict == Verdict::NotComparable;
    if n == 0 {
        result.notes.push(format!(
            "not one of the {m} steps is comparable across classes: the noise response exceeds \
             {}% of the latent from the first step on",
            100.0 * reading.limit
        ));
        return;
    }
    let beyond = reading.ratios.iter().position(|r| r.is_nan() || *r > bound);
    let verdict = match beyond {
        Some(_) => Verdict::Drifted,
        None => Verdict::WithinTolerance,
    };
    let worst = reading.worst().expect("n > 0");
    result.checks.push(MetricCheck {
        metric: "rmse_truth_steps".into(),
        golden: "0".into(),
        got: format!("{worst:.3}"),
        delta: Some(worst),
        tolerance: format!("<= {bound} noise responses at steps 1 to {n} of {m}"),
        verdict,
    });
    let chaotic = if n < m {
        format!(
            "; chaotic after, where the noise response exceeds {}% of the latent",
            100.0 * reading.limit
        )
    } else {
        String::new()
    };
    result.notes.push(match beyond {
        Some(i) => format!(
            "beyond the step rule at step {} of {m}: rmse(truth, got) is {:.3} noise responses \
             of that step, the bound {bound}; comparable through step {n}{chaotic}",
            i + 1,
            reading.ratios[i]
        ),
        None => format!(
            "within tolerance through step {n} of {m} by the per-step truth (worst {worst:.3} of \
             {bound} noise responses){chaotic}"
        ),
    });
    result.verdict = if output_chaotic {
        verdict
    } else {
        result.verdict.max(verdict)
    };
}
