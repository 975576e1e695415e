//! The harness, in the order the data flows; each stage uses only the stages before it
//! (tests/integration/architecture.rs keeps it so):
//!
//! 1. [`store`]: the golden store: expectations per environment class, the float64 truth,
//!    provenance, atomic canonical writes (what a run is compared with).
//! 2. [`suite`]: the suite files and their scenarios, the [`suite::workload`] each runs, and the
//!    [`suite::Fixtures`] tree they are read from.
//! 3. [`run`]: running one scenario, in a child process when it must, into an observation
//!    ([`run::observe`]); the same suite under each CPU class, thread count and knob
//!    ([`run::matrix`]).
//! 4. [`compare`]: an observation against its golden: which expectation judges it, per-metric
//!    checks, the scenario's verdict.
//! 5. [`records`]: what a check leaves behind (records.jsonl), written and read back typed;
//!    [`run_record`]: a diffusers run recorded outside reprodiff (python/reprodiff-record).
//! 6. [`report`]: what people read: the check table, drift reports over records and recorded
//!    runs (text, JSON, one HTML page with [`report::pictures`]), records against the goldens of
//!    a git revision, two recorded runs side by side; [`own_record`]: what a run record says of
//!    reprodiff's own run (`run --trace`).
//! 7. [`golden`]: keeping the goldens: `golden merge` (the oracle's results and other hosts'),
//!    `golden compare` (outputs of another release judged as a check would), `calibrate` (a
//!    suite's cross-class rule from the records).
//! 8. The commands that put the stages together: [`session`] (`check` and `bless` over a
//!    selection), [`oneoff`] (`run`: one pipeline call from flags) and [`localize`] (where two
//!    runs part).
pub mod compare;
pub mod golden;
pub mod localize;
pub mod oneoff;
pub mod own_record;
pub mod records;
pub mod report;
pub mod run;
pub mod run_record;
pub mod session;
pub mod store;
pub mod suite;
