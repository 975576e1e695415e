//! The local pass of a scenario: its pipeline run again, teacher-forced by the golden's
//! float64 truth ([`crate::pipelines::Forcing`]), so that every step and the output can be
//! judged from the truth's own input to them, wherever the trajectory is chaotic. It runs after
//! the scenario's own run, on a pipeline of its own: the run's bits are never touched.
use crate::error::{Error, Result};
use crate::harness::store::{GoldenStore, StepTruth};
use crate::pipelines::Forcing;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Where the local pass's inputs lie (files of the golden store, already verified against
/// their SHA-256), so that a child process reads them as this one does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalInputsAt {
    /// The truth's latents, float64 [steps, elements].
    pub latents: PathBuf,
    /// The truth's initial latent.
    pub initial: PathBuf,
    /// The truth's eta noise per step, where it has any.
    pub noise: Option<PathBuf>,
}

impl LocalInputsAt {
    /// The inputs of a per-step truth that holds them; `None` for one recorded before the local
    /// pass.
    pub fn of(store: &GoldenStore, st: &StepTruth) -> Result<Option<Self>> {
        let Some(local) = &st.local else {
            return Ok(None);
        };
        Ok(Some(LocalInputsAt {
            latents: store.path_of(&st.array)?,
            initial: store.path_of(&local.initial.array)?,
            noise: local
                .noise
                .as_ref()
                .map(|n| store.path_of(&n.array))
                .transpose()?,
        }))
    }

    /// Reads the arrays.
    pub fn load(&self) -> Result<Forcing> {
        let read = |p: &Path| -> Result<Tensor> {
            Tensor::read_npy(p)
                .map_err(|e| Error::invalid_file(p, format!("not a readable .npy: {e}")))
        };
        Ok(Forcing {
            latents: read(&self.latents)?,
            initial: read(&self.initial)?,
            noise: self.noise.as_deref().map(read).transpose()?,
        })
    }
}

/// What the local pass made: each step's own latent from the truth's input to it, and the
/// output from the truth's final latent (the scenario's slice of it), all as float64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalObservation {
    pub steps: Vec<Vec<f64>>,
    pub output: Vec<f64>,
}

impl LocalObservation {
    /// The local pass's output: the trace's latents and the (sliced) output tensor.
    pub fn of(output: &Tensor, trace: Vec<crate::pipelines::StepTrace>) -> Result<Self> {
        Ok(LocalObservation {
            steps: trace.into_iter().map(|s| s.latent).collect(),
            output: crate::torch::tensor_to_f64(output)?,
        })
    }
}
