//! Knobs: the speed settings users reach for, each of which may change the bits.
//!
//! One spelling everywhere: `REPRODIFF_KNOBS` (what `matrix` sets in each child), the `+knob`
//! suffixes of matrix and localize labels, and the fingerprint's `knobs` list are all tokens of
//! [`Knob`], comma- or plus-separated.
//!
//! | token | what a diffusers user writes |
//! |---|---|
//! | `channels-last` | `pipe.unet.to(memory_format=torch.channels_last)` (here: every 4-D weight of every model) |
//! | `onednn-off` | `torch.backends.mkldnn.enabled = False` |
//! | `math-attention` | `with torch.nn.attention.sdpa_kernel(SDPBackend.MATH):` |
//! | `f32`, `bf16`, `f16` | `pipe.to(dtype)`; the output is cast back to the scenario's dtype |
//! | `det-default`, `det-full` | the determinism preset (`enable_full_determinism()` for full) |
//! | `cuda` | `pipe.to("cuda")` for a CPU scenario (generators stay where the scenario put them) |
//! | `portable` | none: reprodiff's portable kernels ([`crate::portable`]) instead of libtorch's |
use super::{ffi, DType, DeviceSpec, Preset};
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The variable `matrix` sets for each child.
pub const ENV: &str = "REPRODIFF_KNOBS";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Knob {
    ChannelsLast,
    OnednnOff,
    MathAttention,
    Dtype(DType),
    Determinism(Preset),
    Cuda,
    Portable,
}

pub const KNOWN: &str = "channels-last, onednn-off, math-attention, f32, bf16, f16, det-default, \
                         det-full, cuda, portable";

impl Knob {
    pub fn parse(token: &str) -> Result<Knob> {
        Ok(match token {
            "channels-last" => Knob::ChannelsLast,
            "onednn-off" => Knob::OnednnOff,
            "math-attention" => Knob::MathAttention,
            "f32" => Knob::Dtype(DType::F32),
            "bf16" => Knob::Dtype(DType::Bf16),
            "f16" => Knob::Dtype(DType::F16),
            "det-default" => Knob::Determinism(Preset::Default),
            "det-full" => Knob::Determinism(Preset::Full),
            "cuda" => Knob::Cuda,
            "portable" => Knob::Portable,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown knob '{token}' (known: {KNOWN})"
                )))
            }
        })
    }

    pub fn token(self) -> &'static str {
        match self {
            Knob::ChannelsLast => "channels-last",
            Knob::OnednnOff => "onednn-off",
            Knob::MathAttention => "math-attention",
            Knob::Dtype(DType::Bf16) => "bf16",
            Knob::Dtype(DType::F16) => "f16",
            Knob::Dtype(DType::F64) => "f64",
            Knob::Dtype(DType::F32) => "f32",
            Knob::Determinism(Preset::Default) => "det-default",
            Knob::Determinism(Preset::Full) => "det-full",
            Knob::Cuda => "cuda",
            Knob::Portable => "portable",
        }
    }
}

/// A set of knobs (at most one dtype and one determinism preset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Knobs(Vec<Knob>);

impl Knobs {
    /// Tokens separated by `,` or `+`; empty tokens are ignored.
    pub fn parse(spec: &str) -> Result<Knobs> {
        let mut knobs: Vec<Knob> = spec
            .split([',', '+'])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Knob::parse)
            .collect::<Result<_>>()?;
        knobs.sort();
        knobs.dedup();
        let count = |f: fn(&Knob) -> bool| knobs.iter().filter(|k| f(k)).count();
        if count(|k| matches!(k, Knob::Dtype(_))) > 1
            || count(|k| matches!(k, Knob::Determinism(_))) > 1
        {
            return Err(Error::InvalidArgument(format!(
                "knobs '{spec}': at most one dtype and one determinism preset"
            )));
        }
        Ok(Knobs(knobs))
    }

    /// The knobs `REPRODIFF_KNOBS` asks for (none when it is unset).
    pub fn from_env() -> Result<Knobs> {
        match std::env::var(ENV) {
            Ok(v) => Knobs::parse(&v).map_err(|e| Error::env(ENV, &v, e.to_string())),
            Err(_) => Ok(Knobs::default()),
        }
    }

    /// These knobs and `knob`.
    pub fn with(mut self, knob: Knob) -> Knobs {
        if !self.has(knob) {
            self.0.push(knob);
            self.0.sort();
        }
        self
    }

    /// These knobs for a run on `kernels`: portable kernels are the knob `portable` in force,
    /// so one switch decides the kernels and the fingerprint records them.
    pub fn for_kernels(self, kernels: crate::portable::Kernels) -> Knobs {
        match kernels {
            crate::portable::Kernels::Portable => self.with(Knob::Portable),
            crate::portable::Kernels::Native => self,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn tokens(&self) -> Vec<String> {
        self.0.iter().map(|k| k.token().to_string()).collect()
    }

    pub fn has(&self, k: Knob) -> bool {
        self.0.contains(&k)
    }

    pub fn dtype(&self) -> Option<DType> {
        self.0.iter().find_map(|k| match k {
            Knob::Dtype(d) => Some(*d),
            _ => None,
        })
    }

    pub fn determinism(&self) -> Option<Preset> {
        self.0.iter().find_map(|k| match k {
            Knob::Determinism(p) => Some(*p),
            _ => None,
        })
    }

    pub fn device(&self) -> Option<DeviceSpec> {
        self.has(Knob::Cuda).then_some(DeviceSpec::Cuda(0))
    }

    /// Why this host cannot run these knobs, if it cannot.
    pub fn unavailable(&self) -> Option<String> {
        let cuda = super::cuda_info().map(|i| i.available).unwrap_or(false);
        (self.has(Knob::Cuda) && !cuda).then(|| "no CUDA device on this host".to_string())
    }

    /// Sets the process-wide switches (oneDNN, the SDPA backends, channels_last weights) to
    /// these knobs, every one of them, so that a scenario never inherits the one before it.
    /// dtype, determinism and device are the harness's to apply to the scenario.
    pub fn apply(&self) -> Result<()> {
        ffi::check(unsafe {
            ffi::rd_set_backends(
                !self.has(Knob::OnednnOff) as i32,
                !self.has(Knob::MathAttention) as i32,
            )
        })
        .map_err(Error::Torch)?;
        CHANNELS_LAST.store(self.has(Knob::ChannelsLast), Ordering::SeqCst);
        crate::portable::set_enabled(self.has(Knob::Portable));
        if self.has(Knob::Portable) {
            // The portable path calls libtorch only for exact elementwise operations, whose bits
            // no thread count moves, while its own kernels split work over rayon's pool. An
            // OpenMP pool left spinning after each libtorch op beside rayon's took 28% of the
            // CPU time of a portable cifar10 run on 2 cores (perf): one libtorch thread.
            // (Determinism::apply, which every run calls first, sets the count again.)
            tch::set_num_threads(crate::portable::LIBTORCH_THREADS);
            crate::portable::join_the_pool();
        }
        *IN_FORCE.lock().expect("knobs lock") = self.clone();
        Ok(())
    }
}

static CHANNELS_LAST: AtomicBool = AtomicBool::new(false);
static IN_FORCE: Mutex<Knobs> = Mutex::new(Knobs(Vec::new()));

/// Whether models should lay their 4-D weights out channels-last.
pub fn channels_last() -> bool {
    CHANNELS_LAST.load(Ordering::SeqCst)
}

/// The knobs last applied in this process (the fingerprint's `knobs`).
pub fn in_force() -> Knobs {
    IN_FORCE.lock().expect("knobs lock").clone()
}

/// (oneDNN enabled, flash attention enabled) as libtorch reports them.
pub fn backends() -> Result<(bool, bool)> {
    let (mut onednn, mut flash) = (0, 0);
    ffi::check(unsafe { ffi::rd_get_backends(&mut onednn, &mut flash) }).map_err(Error::Torch)?;
    Ok((onednn != 0, flash != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_in_one_order() {
        let k = Knobs::parse("bf16+channels-last,,det-full").unwrap();
        assert_eq!(k.tokens(), ["channels-last", "bf16", "det-full"]);
        assert_eq!(Knobs::parse(&k.tokens().join("+")).unwrap(), k);
        assert_eq!(k.dtype(), Some(DType::Bf16));
        assert_eq!(k.determinism(), Some(Preset::Full));
    }

    #[test]
    fn applied_knobs_reach_libtorch_and_reset() {
        Knobs::parse("onednn-off,math-attention")
            .unwrap()
            .apply()
            .unwrap();
        assert_eq!(backends().unwrap(), (false, false));
        assert_eq!(in_force().tokens(), ["onednn-off", "math-attention"]);
        Knobs::default().apply().unwrap();
        assert_eq!(backends().unwrap(), (true, true));
        assert!(!channels_last());
    }

    #[test]
    fn unknown_and_conflicting_knobs_are_named() {
        let e = Knobs::parse("channels-last,fast").unwrap_err().to_string();
        assert!(e.contains("'fast'") && e.contains("known:"), "{e}");
        let e = Knobs::parse("bf16,f16").unwrap_err().to_string();
        assert!(e.contains("at most one dtype"), "{e}");
    }
}
