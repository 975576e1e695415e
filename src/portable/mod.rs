//! Portable kernels: computations whose every floating-point operation is fixed by
//! the shapes alone, so that one seed gives one result on every machine.
//!
//! A scenario chooses its [`Kernels`] (`kernels = "portable"` in a suite, `--kernels` on
//! `run`, the knob `portable`); a portable run's environment class is
//! [`crate::env::EnvClass::Portable`], whose key holds the order rule's version and no CPU
//! facts, so one expectation serves every host.
//!
//! The noise. [`randn`] is torch's CPU `randn` as ATen computes it under
//! `ATEN_CPU_CAPABILITY=default` (the scalar Box-Muller of `normal_fill_16`), with the C
//! library's `logf`, `sinf` and `cosf` replaced by ports of glibc's own ([`libm`]), so that its
//! bits do not depend on the CPU capability, the ISA or the C library of the host.
pub mod bench;
pub mod libm;
pub mod ops;
pub mod randn;

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

/// Which kernels a scenario runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// libtorch's: bit for bit diffusers' on the same libtorch and CPU class.
    #[default]
    Native,
    /// reprodiff's own kernels and noise: the same bits on every CPU, thread count and batch.
    Portable,
}

impl Kernels {
    pub fn is_native(&self) -> bool {
        *self == Kernels::Native
    }
}

/// libtorch's intra-op threads in a portable run (`torch::knobs::Knobs::apply`): the kernels'
/// threads are rayon's.
pub const LIBTORCH_THREADS: i32 = 1;

/// What a portable run's fingerprint records: the order rule its bits follow (the class key's
/// one component), and the ISA and thread count it ran on (which must not matter; recorded so
/// that a test or a reader can see which path ran).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PortableRun {
    pub order_rule: u32,
    pub isa: String,
    pub threads: usize,
}

impl PortableRun {
    /// This process's portable settings; `None` when it runs the native kernels.
    pub fn current() -> Option<PortableRun> {
        enabled().then(PortableRun::would_run)
    }

    /// The settings a portable run in this process would have.
    pub fn would_run() -> PortableRun {
        PortableRun {
            order_rule: ops::ORDER_RULE,
            isa: isa().map_or_else(|e| format!("unavailable ({e})"), |i| i.name().into()),
            threads: rayon::current_num_threads(),
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether the models and the noise run on the portable kernels in this process (one mode per
/// process: a run is native or portable as a whole).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Switches the process to the portable kernels (or back).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed)
}

/// Makes the calling thread worker 0 of rayon's global pool, once per process and only if the
/// pool does not exist yet. The kernels' parallel loops then start on the thread that calls them
/// and the other workers steal from it; otherwise each loop hands its work to the pool and the
/// caller sleeps until it is done, and those wake-ups took 30% of a portable cifar10 run's CPU
/// time on one kernel thread (perf, 2 cores). The pool's size stays rayon's
/// (`RAYON_NUM_THREADS`, else the CPUs); which thread computes an output changes no bit.
pub fn join_the_pool() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means the pool exists already: the loops then run as before.
        let _ = rayon::ThreadPoolBuilder::new()
            .use_current_thread()
            .build_global();
    });
}

/// The ISA the portable kernels run on: [`ops::ISA_ENV`] if set, else the widest available.
pub fn isa() -> crate::error::Result<ops::Isa> {
    ops::chosen_isa()
}
