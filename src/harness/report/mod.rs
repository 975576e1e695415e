//! What people read: the table `check` prints ([`table`]); drift reports over the records of
//! several hosts, runs or releases ([`drift`]: text and JSON; [`html`]: one self-contained page
//! with the outputs as pictures, [`pictures`]); and records judged against the goldens as they
//! were at a git revision ([`against`]); two recorded diffusers runs side by side ([`run_diff`]); folders of recorded runs as record
//! sets ([`recorded`]).
pub mod against;
pub mod drift;
pub mod html;
pub mod pictures;
pub mod recorded;
pub mod run_diff;
pub mod table;
