//! The command line. One module per command holds its clap flags and one `resolve` step that
//! checks every rule between its flags and builds the library's typed options (as ripgrep turns
//! its low-level arguments into high-level ones); `run` calls the library and formats what it
//! returns. Flag groups several commands share are declared once in [`args`]; text for people is
//! in [`render`]. Flags exist only here: the library names settings, never flags.

pub mod args;
mod average;
pub mod doctor;
mod evaluate;
mod inspect;
mod merge;
mod output;
mod recalibrate;
pub mod render;
mod run;
mod soup;

use clap::{Parser, Subcommand};

use swa::Result;

/// What a command produced: text for stdout and the exit code (0, or 1 for a failed threshold).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Text for stdout.
    pub stdout: String,
    /// Exit code.
    pub code: u8,
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
    /// Accuracy, top-k and loss of a model on labelled held-out data.
    Evaluate(evaluate::EvaluateArgs),
    /// Average, recalibrate, evaluate every checkpoint and the SWA model, and write a report.
    Run(run::RunArgs),
    /// Choose checkpoints to average by held-out accuracy (greedy, uniform or top-k model soups),
    /// judging every candidate with BatchNorm statistics recalibrated for its own weights.
    Soup(soup::SoupArgs),
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

/// Runs `cli`.
pub fn execute(cli: &Cli) -> Result<Outcome> {
    let q = cli.quiet;
    match &cli.command {
        Command::Average(a) => a.run(q),
        Command::Recalibrate(a) => a.run(q),
        Command::Evaluate(a) => a.run(q),
        Command::Run(a) => a.run(q),
        Command::Soup(a) => a.run(q),
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
