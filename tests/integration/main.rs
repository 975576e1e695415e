//! The integration tests, one binary: properties of the torch seam, the command line's contract
//! (exit codes, errors that name the file and field at fault, bless never losing a golden),
//! verdicts across CPU classes, reports, and snapshots of what people read. Each module below is
//! one area; the setup they share (running `reprodiff`, fixture copies, JSON edits) is `common`.
mod common;

mod architecture;
mod authority;
mod bless;
mod classes;
mod cli;
mod ddim;
mod determinism;
mod drift;
mod flags_doc;
mod generators;
mod goldens;
mod hostile;
mod local;
mod localize;
mod portable;
mod readme;
mod sd;
mod seam;
mod snapshots;
