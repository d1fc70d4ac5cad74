use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = swa::cli::Cli::parse();
    match swa::commands::execute(&cli) {
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
            let mut message = format!("swa: error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let text = s.to_string();
                if !message.contains(&text) {
                    message.push_str(&format!("\n  caused by: {text}"));
                }
                source = s.source();
            }
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}
