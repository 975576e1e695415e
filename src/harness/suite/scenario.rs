//! A scenario: what it runs, on which device and kernels, under which determinism, and how its
//! output is judged (metrics, tolerances, the cross-class rule); and the check that it can run
//! as written.
use super::parse_slice;
use super::workload::Workload;
use crate::metrics::Metric;
use crate::portable::Kernels;
use crate::torch::{DeterminismSpec, DeviceSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A tolerance for one metric. Intrinsic metrics (sum_abs, max_abs, mean_abs) pass when
/// `|got - golden| <= abs + rel * |golden|`; l_inf and cosine_distance when `got <= max`;
/// psnr when `got >= min` (dB).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tolerance {
    // Order matters for the untagged match: `max`/`min` are required keys, Band's are not.
    Max {
        max: f64,
    },
    Min {
        min: f64,
    },
    Band {
        #[serde(default)]
        abs: f64,
        #[serde(default)]
        rel: f64,
    },
}

/// How a run is judged against the expectation of another environment class, when its own
/// class has none ([`crate::harness::compare::choose`] picks the nearest recorded class).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CrossClass {
    /// The bits must still be identical: the suite claims they do not depend on the class's
    /// vendor, oneDNN ISA, MKL path or thread count (measured for CPU random draws), only on
    /// the components in [`crate::env::BITS_DEPEND_ON`] (device, arch, ATen capability,
    /// libtorch): only an expectation that shares those is compared with.
    Bits,
    /// PyTorch's accuracy rule (`torch._dynamo.utils.same`) against the float64 truth,
    /// `rmse(truth, got) <= k * rmse(truth, expectation) + floor`, with the floor in units of
    /// the scenario's sensitivity (the rmse by which one ulp of initial noise moves the output):
    /// `floor = noise_ulps * sensitivity`. Another CPU's rounding acts like a few ulps of noise,
    /// and how far that carries is the scenario's own figure (`reprodiff calibrate`).
    ///
    /// `step_ulps` is the same idea step by step, where the golden holds the per-step truth:
    /// at every step whose noise response is still small next to the latent
    /// ([`crate::harness::compare::POWERLESS_SENSITIVITY`]), `rmse(truth_t, got_t) <= step_ulps *
    /// noise_response_t`, per dtype of the run (rounding of f16 or bf16 carries differently).
    /// The run's own trace is held to the truth alone, so the step rule judges scenarios whose
    /// output is too chaotic to compare, as far as their trajectory stays comparable.
    ///
    /// `local_ulps` is the local rule's (`harness::compare::local`), per dtype: each step
    /// and the output computed from the truth's own input to them, `rmse(truth_t, local_t) <=
    /// k * diffusers' local error_t + local_ulps * local response_t`.
    Truth {
        k: f64,
        noise_ulps: f64,
        #[serde(default)]
        step_ulps: PerDtype,
        #[serde(default)]
        local_ulps: PerDtype,
    },
}

/// A value per dtype of the run, where one is set (`{ f32 = 3.0, bf16 = 6.0 }`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerDtype {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f32: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f16: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16: Option<f64>,
}

impl PerDtype {
    pub fn get(&self, dtype: crate::torch::DType) -> Option<f64> {
        match dtype {
            crate::torch::DType::F32 => self.f32,
            crate::torch::DType::F16 => self.f16,
            crate::torch::DType::Bf16 => self.bf16,
            _ => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [("f32", self.f32), ("f16", self.f16), ("bf16", self.bf16)]
            .into_iter()
            .filter_map(|(n, v)| Some((n, v?)))
    }
}

/// One named thing to run and check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What runs.
    pub run: Workload,
    /// Where it runs.
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub determinism: DeterminismSpec,
    /// The kernels it runs on: libtorch's (`native`, the default) or reprodiff's `portable`
    /// ones, whose runs have one class on every host (`crate::env::EnvClass::Portable`).
    #[serde(default, skip_serializing_if = "Kernels::is_native")]
    pub kernels: Kernels,
    /// What is checked against the golden.
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub tolerance: BTreeMap<Metric, Tolerance>,
    /// How the run is compared with another class's expectation; `None`: it is not, and a
    /// host of a class without an expectation gets the verdict "no expectation".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_class: Option<CrossClass>,
    /// The scenario is compared only with its own class's expectation (or a published one),
    /// never across classes, for the measured reason given here (e.g. its sensitivity makes
    /// any cross-class tolerance powerless). On a host whose class has no expectation it is
    /// skipped before it runs, with this reason. A test holds the reason to the golden's truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_class_only: Option<String>,
    /// Check only this part of the output, numpy-style: "0, -3:, -3:, -1" is
    /// `image[0, -3:, -3:, -1]` (what diffusers' slow tests pin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// Store the output array in the golden (needed by l_inf, cosine_distance, psnr and to
    /// locate the first differing element). Default: true.
    #[serde(default = "yes")]
    pub store_array: bool,
}

fn yes() -> bool {
    true
}

impl Scenario {
    /// The tolerance for `metric`, defaulting to exact (zero width).
    pub fn tolerance_for(&self, metric: Metric) -> Tolerance {
        self.tolerance
            .get(&metric)
            .copied()
            .unwrap_or(match metric {
                Metric::Psnr => Tolerance::Min { min: f64::INFINITY },
                Metric::LInf | Metric::CosineDistance => Tolerance::Max { max: 0.0 },
                _ => Tolerance::Band { abs: 0.0, rel: 0.0 },
            })
    }

    /// The determinism the oracle computes this scenario under: the scenario's own, and for
    /// portable kernels the noise contract's ATen capability
    /// ([`crate::torch::PORTABLE_NOISE_CAPABILITY`]), so that diffusers' run and its float64 truth
    /// start from the portable run's noise. (`reprodiff list --json`'s `oracle_determinism`.)
    pub fn oracle_determinism(&self) -> DeterminismSpec {
        let mut d = self.determinism.clone();
        if self.kernels == Kernels::Portable {
            d.cpu_capability = Some(crate::torch::PORTABLE_NOISE_CAPABILITY);
        }
        d
    }

    /// Whether the scenario can be run as written (the suite loader's check; `run` uses it).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.kernels == Kernels::Portable {
            self.validate_portable()?;
        }
        if self.metrics.is_empty() {
            return Err("`metrics` is empty: a scenario must check something".into());
        }
        self.validate_tolerances()?;
        if let Some(CrossClass::Truth {
            k,
            noise_ulps,
            step_ulps,
            local_ulps,
        }) = self.cross_class
        {
            self.validate_truth_rule(k, noise_ulps, step_ulps, local_ulps)?;
        }
        if self
            .own_class_only
            .as_deref()
            .is_some_and(|r| r.trim().is_empty())
        {
            return Err("own_class_only: give the measured reason, not an empty string".into());
        }
        if let Some(s) = &self.slice {
            parse_slice(s).map_err(|m| format!("slice: {m}"))?;
        }
        if self.metrics.iter().any(|m| m.needs_array()) && !self.store_array {
            return Err("metrics compare against the golden array but store_array = false".into());
        }
        self.run.validate()
    }

    /// Portable kernels: on the CPU, in float32, not pinned to an ATen capability.
    fn validate_portable(&self) -> std::result::Result<(), String> {
        if self.device != DeviceSpec::Cpu {
            return Err(format!(
                "kernels = \"portable\" runs on the CPU, not on device {}",
                self.device
            ));
        }
        if self.determinism.cpu_capability.is_some() {
            return Err(
                "kernels = \"portable\" does not depend on the ATen capability: \
                        determinism.cpu_capability would only hide that"
                    .into(),
            );
        }
        if self.run.dtype() != crate::torch::DType::F32 {
            return Err(format!(
                "kernels = \"portable\" computes in float32 only (order rule v{}), not {}",
                crate::portable::ops::ORDER_RULE,
                self.run.dtype()
            ));
        }
        Ok(())
    }

    /// Each tolerance fits its metric: bands for the intrinsic metrics, a maximum for l_inf and
    /// cosine_distance, a minimum for psnr.
    fn validate_tolerances(&self) -> std::result::Result<(), String> {
        for (metric, tol) in &self.tolerance {
            let ok = match tol {
                Tolerance::Band { abs, rel } => metric.is_intrinsic() && *abs >= 0.0 && *rel >= 0.0,
                Tolerance::Max { max } => {
                    matches!(metric, Metric::LInf | Metric::CosineDistance) && *max >= 0.0
                }
                Tolerance::Min { .. } => *metric == Metric::Psnr,
            };
            if !ok {
                return Err(format!(
                    "tolerance.{metric}: {tol:?} does not fit this metric (sum_abs/max_abs/mean_abs \
                     take {{ abs, rel }} >= 0, l_inf/cosine_distance {{ max }}, psnr {{ min }})"
                ));
            }
        }
        Ok(())
    }

    /// The cross-class rule "truth": k >= 1, noise and step allowances in range, and the
    /// arrays it compares stored.
    fn validate_truth_rule(
        &self,
        k: f64,
        noise_ulps: f64,
        step_ulps: PerDtype,
        local_ulps: PerDtype,
    ) -> std::result::Result<(), String> {
        if !(k >= 1.0 && noise_ulps >= 0.0 && k.is_finite() && noise_ulps.is_finite()) {
            return Err(format!(
                "cross_class: k = {k}, noise_ulps = {noise_ulps}: k must be >= 1 and \
                 noise_ulps >= 0"
            ));
        }
        if let Some((dtype, v)) = step_ulps.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err(format!(
                "cross_class: step_ulps.{dtype} = {v}: must be finite and > 0"
            ));
        }
        // A floor: 0 where k alone passes every pair of recorded classes.
        if let Some((dtype, v)) = local_ulps
            .iter()
            .find(|(_, v)| !(v.is_finite() && *v >= 0.0))
        {
            return Err(format!(
                "cross_class: local_ulps.{dtype} = {v}: must be finite and >= 0"
            ));
        }
        if !self.store_array {
            return Err(
                "cross_class rule \"truth\" compares arrays but store_array = false".into(),
            );
        }

        Ok(())
    }
}
