//! Suites: data files listing named scenarios (fixtures/suites/*.toml).
//!
//! A suite has `[defaults]` merged into every `[[scenario]]` (scenario keys win), and a scenario
//! with a `matrix` expands into one scenario per combination: the string "$key" anywhere in it
//! becomes the matrix value, "{key}" in its name the value's label. This is the only
//! implementation of the expansion: the oracle reads the expanded scenarios from
//! `reprodiff list --json`. docs/reference.md ("Suite format") documents the format.
//!
//! - `file.rs`: reading a suite file, merging its defaults and expanding its matrices
//!   ([`Suite`], [`SuiteFile`]);
//! - `scenario.rs`: one scenario, how its output is judged, and the check that it can run
//!   ([`Scenario`]);
//! - `slice.rs`: the numpy-style slice of an output a scenario may compare ([`parse_slice`]);
//! - [`workload`]: what a scenario runs;
//! - [`fixtures`]: the tree suites and goldens live in, and the selection a command makes.
mod file;
pub mod fixtures;
mod scenario;
mod slice;
pub mod workload;

pub use file::{Suite, SuiteFile, MAX_SCENARIOS, SCHEMA};
pub use fixtures::{Fixtures, Selection};
pub use scenario::{CrossClass, PerDtype, Scenario, Tolerance};
pub use slice::{apply_slice, parse_slice, Axis};
