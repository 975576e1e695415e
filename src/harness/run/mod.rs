//! Running scenarios: one scenario into an [`observe::Observation`] (in this process, or in a
//! child when its determinism settings must be fixed before libtorch starts), and a suite under
//! each combination of CPU class, thread count and knob set ([`matrix`]).
pub mod local;
pub mod matrix;
pub mod observe;
