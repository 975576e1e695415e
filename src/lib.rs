//! reprodiff: a reproducibility harness and conformance suite for diffusion pipelines.
//!
//! Data flows one way: a suite (fixtures/suites/*.toml) lists scenarios; each scenario runs a
//! workload (random draws now, pipelines later) through the torch seam; its output becomes a
//! record of metrics that is compared with a golden fixture (fixtures/golden/), and the
//! comparisons become the report.
//!
//! - [`torch`]: generators, `randn_tensor`, determinism switches (the C++ extension lives here).
//! - [`env`]: the environment fingerprint every record and golden carries.
//! - [`harness`]: suites, workloads, metrics, goldens, check, bless, reports.
pub mod env;
pub mod error;
pub mod harness;
pub mod loading;
pub mod models;
pub mod pipelines;
pub mod portable;
pub mod schedulers;
pub mod tokenizer;
pub mod torch;

pub use error::{Error, Result};
