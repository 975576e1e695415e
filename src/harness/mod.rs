//! The harness: suites → scenarios → runs → records → comparisons → report.
pub mod metrics;
