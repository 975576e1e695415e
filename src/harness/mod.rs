//! The harness: suites → scenarios → runs (observations) → comparisons with goldens → report.
//!
//! - [`suite`]: the suite files and their scenarios.
//! - [`workload`]: what a scenario runs.
//! - [`observe`]: running one scenario (in a child process when it must) into an observation.
//! - [`metrics`], [`check`]: comparing an observation with its golden.
//! - [`golden`]: the golden store: expectations per environment class, the float64 truth,
//!   provenance, atomic canonical writes; [`merge`]: bringing in the oracle's results and other
//!   hosts' goldens.
//! - [`session`]: `check` and `bless` over a selection; [`report`]: the table people read.
//! - [`drift`]: drift reports over check records from several hosts or runs; [`matrix`]: a
//!   suite under each CPU kernel class, thread count and knob one host can run; [`pictures`]:
//!   outputs as image grids and difference maps.
pub mod against;
pub mod calibrate;
pub mod check;
pub mod drift;
pub mod drift_html;
pub mod golden;
pub mod ingest;
pub mod localize;
pub mod matrix;
pub mod merge;
pub mod metrics;
pub mod observe;
pub mod oneoff;
pub mod pictures;
pub mod records;
pub mod report;
pub mod session;
pub mod suite;
pub mod workload;
