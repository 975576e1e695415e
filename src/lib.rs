//! reprodiff: a reproducibility harness and conformance suite for diffusion pipelines.
//!
//! Data flows one way: a suite (fixtures/suites/*.toml) lists scenarios; each scenario runs a
//! workload (random draws or a pipeline call) through the torch seam; its output is compared
//! with a golden fixture (fixtures/golden/), the comparison becomes a record, and records become
//! reports.
//!
//! The modules, in layers from the bottom up; a module uses only the layers below it
//! (tests/integration/architecture.rs keeps it so):
//!
//! 1. [`error`] (errors and exit codes) and [`metrics`] (the numbers compared, in exactly
//!    rounded f64).
//! 2. [`paths`]: which values from data (names, array paths) may become part of a path.
//! 3. [`portable`]: reprodiff's own kernels, whose summation order the shapes alone fix.
//! 4. [`torch`]: generators, `randn_tensor`, determinism switches and knobs (the C++ extension
//!    lives here): which kernels, which noise, which settings.
//! 5. [`env`](mod@env) (the environment fingerprint and class every record and golden carries),
//!    [`models`], [`schedulers`] and [`tokenizer`]: diffusers' building blocks.
//! 6. [`loading`]: model folders, the Hugging Face cache, derived architectures.
//! 7. [`pipelines`]: diffusers' `__call__` loops, one folder per pipeline behind one seam.
//! 8. [`harness`]: suites, runs, comparisons, records, reports and the commands over them.
//!
//! 9. [`cli`]: the command line (the flags and one function per command); src/main.rs only
//!    calls [`cli::main`].
pub mod cli;
pub mod env;
pub mod error;
pub mod harness;
pub mod loading;
pub mod metrics;
pub mod models;
pub mod paths;
pub mod pipelines;
pub mod portable;
pub mod schedulers;
pub mod tokenizer;
pub mod torch;

pub use error::{Error, Result};
