//! The `swa` command: parse the command line, run it, print the result, exit with its code.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::commands::execute(&args) {
        Ok(outcome) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(outcome.stdout.as_bytes()).and_then(|_| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("swa: writing output: {e}");
                    ExitCode::from(2)
                }
                _ => ExitCode::from(outcome.code),
            }
        }
        Err(e) => {
            eprintln!("swa: error: {}", cli::render::error(&e));
            ExitCode::from(2)
        }
    }
}
