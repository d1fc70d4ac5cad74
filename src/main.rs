//! The `swa` command: parse the command line, run it, print the result, exit with its code.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(cli::main(std::env::args_os()))
}
