//! The command line. One module per command holds its clap flags and one `resolve` step that
//! checks every rule between its flags and builds the library's typed options (as ripgrep turns
//! its low-level arguments into high-level ones); `run` calls the library and formats what it
//! returns. Flag groups several commands share are declared once in [`args`]; text for people is
//! in [`render`]. Flags exist only here: the library names settings, never flags.

/// `eprintln!` that ignores a failed write: a closed or broken stderr (`swa … 2>&1 | head -1`)
/// must not turn a result or a verdict into a panic (exit 101).
macro_rules! warn {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod args;
mod average;
pub mod doctor;
mod ensemble;
mod evaluate;
mod inspect;
mod merge;
mod output;
mod recalibrate;
pub mod render;
mod run;
mod soup;
mod swag;

use std::io::Write as _;

use clap::{Parser, Subcommand};

use swa::Result;

/// What a command produced: text for stdout and the exit code (0, or 1 for a failed threshold).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Text for stdout.
    pub stdout: String,
    /// Exit code.
    pub code: u8,
    /// Why the exit code is 1 (a threshold not met), for stderr (the Python module raises it).
    pub failure: Option<String>,
}

/// Offline Stochastic Weight Averaging and BatchNorm recalibration for saved checkpoints.
#[derive(Debug, Parser)]
#[command(name = "swa", version, about, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// Hide progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Average checkpoints into one SWA model (safetensors, streamed, out of core).
    Average(average::AverageArgs),
    /// Recalibrate BatchNorm statistics by running the ONNX model over training samples.
    Recalibrate(recalibrate::RecalibrateArgs),
    /// Score a model on held-out data: accuracy, top-k and loss, or the figures of --task
    /// (segmentation mIoU, regression R²/RMSE, multi-label AP/F1) or of your --metric-command.
    Evaluate(evaluate::EvaluateArgs),
    /// Average, recalibrate, evaluate every checkpoint and the SWA model, and write a report.
    Run(run::RunArgs),
    /// Choose checkpoints to average by their held-out score (greedy, uniform or top-k model soups),
    /// judging every candidate with BatchNorm statistics recalibrated for its own weights.
    Soup(soup::SoupArgs),
    /// Evaluate a checkpoint ensemble: the mean of the checkpoints' predictions (softmax; sigmoid
    /// for multilabel; outputs for regression), with stored and (given --train-inputs)
    /// recalibrated BatchNorm statistics, beside each checkpoint alone.
    Ensemble(ensemble::EnsembleArgs),
    /// SWAG: a Gaussian over the weights from the checkpoints (SWA's mean, their variance and last
    /// K deviations); the model average of S samples, each with BatchNorm refitted.
    Swag(swag::SwagCommandArgs),
    /// List a checkpoint's or model's tensors and BatchNorm layers.
    Inspect(inspect::InspectArgs),
    /// Merge the partial statistics of `swa recalibrate --shard I/N --partial-out P` into the
    /// recalibrated model (what one `swa recalibrate` over all samples writes).
    MergeStats(merge::MergeStatsArgs),
    /// Merge the partial results of `swa evaluate --shard I/N --partial-out E.json` and report
    /// (and gate) as `swa evaluate` does.
    MergeEval(merge::MergeEvalArgs),
    /// Which ONNX Runtime swa finds (and how), its version and providers, and the CUDA and cuDNN
    /// libraries `--device cuda` would load: the first thing a bug report needs.
    Doctor(doctor::DoctorArgs),
}

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

/// The `swa` command: parses `args` (the program name first), runs it, prints its output and
/// warnings, and returns the exit code. The binary and the Python module's `swa` entry point both
/// call this.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> u8 {
    let args = Cli::parse_from(args);
    // SAFETY: swa's inputs must not change while it runs (docs/formats.md, "Inputs"): swa never
    // writes them (every output is checked not to be an input), and a run whose inputs' sizes or
    // times changed writes nothing (`fs::Stamps`). What is left is another process truncating an
    // input mid-run, which the user is told not to do, as for every mmap-based reader.
    unsafe { swa::fs::allow_maps() };
    discard_staged_on_signals();
    let result = execute(&args);
    for w in swa::error::take_warnings() {
        warn!("swa: warning: {w}");
    }
    match result {
        Ok(outcome) => {
            if let Some(failure) = &outcome.failure {
                warn!("swa: {failure}");
            }
            let mut out = std::io::stdout().lock();
            match out.write_all(outcome.stdout.as_bytes()).and_then(|_| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    warn!("swa: writing output: {e}");
                    2
                }
                _ => outcome.code,
            }
        }
        Err(e) => {
            warn!("swa: error: {}", render::error(&e));
            2
        }
    }
}

impl Cli {
    /// Parses `args` (the program name first), returning clap's error rather than exiting.
    #[allow(dead_code)] // the Python module compiles this module too, and calls it
    pub fn try_parse_from_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> clap::error::Result<Cli> {
        Cli::try_parse_from(args)
    }

    /// The command's output switched to JSON, with progress shown unless `quiet` (the Python
    /// module reads its results from the JSON; the bar is its user's, on stderr).
    #[allow(dead_code)] // the Python module compiles this module too, and calls it
    pub fn json_with_progress(&mut self) -> &mut Self {
        let out = match &mut self.command {
            Command::Average(a) => &mut a.out,
            Command::Recalibrate(a) => &mut a.out,
            Command::Evaluate(a) => &mut a.out,
            Command::Run(a) => &mut a.format,
            Command::Soup(a) => &mut a.out,
            Command::Ensemble(a) => &mut a.out,
            Command::Swag(a) => &mut a.out,
            Command::Inspect(a) => &mut a.out,
            Command::MergeStats(a) => &mut a.out,
            Command::MergeEval(a) => &mut a.out,
            Command::Doctor(a) => &mut a.out,
        };
        out.json = true;
        out.progress = true;
        self
    }
}

/// Runs `cli`.
pub fn execute(cli: &Cli) -> Result<Outcome> {
    let q = cli.quiet;
    match &cli.command {
        Command::Average(a) => a.run(q),
        Command::Recalibrate(a) => a.run(q),
        Command::Evaluate(a) => a.run(q),
        Command::Run(a) => a.run(q),
        Command::Soup(a) => a.run(q),
        Command::Ensemble(a) => a.run(q),
        Command::Swag(a) => a.run(q),
        Command::Inspect(a) => a.run(),
        Command::MergeStats(a) => a.run(),
        Command::MergeEval(a) => a.run(),
        Command::Doctor(a) => Ok(doctor::run(a)),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        super::Cli::command().debug_assert();
    }
}
