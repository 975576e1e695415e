//! The harness: suites → scenarios → runs (observations) → comparisons with goldens → report.
//!
//! - [`suite`]: the suite files and their scenarios.
//! - [`workload`]: what a scenario runs.
//! - [`observe`]: running one scenario (in a child process when it must) into an observation.
//! - [`metrics`], [`check`]: comparing an observation with its golden.
//! - [`golden`]: the golden store (atomic writes, provenance).
//! - [`session`]: `check` and `bless` over a selection; [`report`]: the table people read.
pub mod check;
pub mod golden;
pub mod metrics;
pub mod observe;
pub mod report;
pub mod session;
pub mod suite;
pub mod workload;
