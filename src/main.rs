//! The `swa` command: parse the command line, run it, print the result, exit with its code.

/// `eprintln!` that ignores a failed write: a closed or broken stderr (`swa … 2>&1 | head -1`)
/// must not turn a result or a verdict into a panic (exit 101).
macro_rules! warn {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// On SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal closed): remove the outputs being staged
/// (after a rename in progress ends), then exit with 128 + the signal (130, 143, 129). Without
/// this, the signal would kill the process with its temporary files in place.
/// A signal that was ignored when `swa` started (`nohup` ignores SIGHUP; a shell ignores SIGINT in
/// its background jobs) stays ignored: catching it would end a run that was meant to go on.
fn discard_staged_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let caught: Vec<i32> = [SIGINT, SIGTERM, SIGHUP].into_iter().filter(|&s| !ignored(s)).collect();
    if caught.is_empty() {
        return;
    }
    let Ok(mut signals) = signal_hook::iterator::Signals::new(caught) else { return };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            swa::fs::discard_staged();
            // `_exit`: no destructors or atexit handlers run while other threads still work.
            signal_hook::low_level::exit(128 + signal);
        }
    });
}

/// True if `signal` is ignored (`SIG_IGN`), as inherited from the parent.
fn ignored(signal: i32) -> bool {
    // SAFETY: with a null new action, sigaction only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // SAFETY: swa's inputs must not change while it runs (docs/formats.md, "Inputs"): swa never
    // writes them (every output is checked not to be an input), and a run whose inputs' sizes or
    // times changed writes nothing (`fs::Stamps`). What is left is another process truncating an
    // input mid-run, which the user is told not to do, as for every mmap-based reader.
    unsafe { swa::fs::allow_maps() };
    discard_staged_on_signals();
    let result = cli::execute(&args);
    for w in swa::error::take_warnings() {
        warn!("swa: warning: {w}");
    }
    match result {
        Ok(outcome) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(outcome.stdout.as_bytes()).and_then(|_| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    warn!("swa: writing output: {e}");
                    ExitCode::from(2)
                }
                _ => ExitCode::from(outcome.code),
            }
        }
        Err(e) => {
            warn!("swa: error: {}", cli::render::error(&e));
            ExitCode::from(2)
        }
    }
}
