//! Command line (being written).
use std::process::ExitCode;
/// Run the command line.
pub fn main(_host: crate::Host) -> ExitCode { ExitCode::SUCCESS }
