//! Keeping the goldens: bringing in what the oracle and other hosts made ([`merge`]), judging
//! another release's outputs as a check would ([`ingest`], `golden compare`), and calibrating a
//! suite's cross-class rule from the committed records ([`calibrate`]). The store itself is
//! [`crate::harness::store`]; writing into it is only ever an explicit command.
pub mod calibrate;
pub mod ingest;
pub mod merge;
