//! `swa recalibrate`, whole or one part of a pass split over machines.

use std::path::PathBuf;

use clap::Args;

use super::args::{part, DataArgs, EngineArgs, JsonArgs, ModelArgs, PassArgs, SHARD_NEEDS_PARTIAL_OUT};
use super::{output, render, Outcome};
use swa::part::Part;
use swa::parts::stats::PartialStatsOptions;
use swa::recalibrate::RecalibrateOptions;
use swa::{Error, Result};

/// `swa recalibrate`.
#[derive(Debug, Args)]
pub struct RecalibrateArgs {
    /// The model and its weights.
    #[command(flatten)]
    pub m: ModelArgs,
    /// Training samples: .npy for a one-input model, .npz with arrays named after the inputs, a
    /// folder of images (class folders or flat), or Parquet with an image column.
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub inputs: PathBuf,
    /// How images are read.
    #[command(flatten)]
    pub data: DataArgs,
    /// The pass.
    #[command(flatten)]
    pub pass: PassArgs,
    /// Device and threads.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Output ONNX model.
    #[arg(short, long, value_name = "OUT.onnx", required_unless_present = "partial_out")]
    pub output: Option<PathBuf>,
    /// Also write the tensors under the checkpoint's names, for model.load_state_dict.
    #[arg(long, value_name = "OUT.safetensors")]
    pub save_weights: Option<PathBuf>,
    /// Run only part I of N of the batches (contiguous ranges of whole batches, counting from 0),
    /// for `swa merge-stats`; needs --partial-out.
    #[arg(long, value_name = "I/N", value_parser = part)]
    pub shard: Option<Part>,
    /// Write the per-layer statistics (f64) of this part instead of a model, for `swa merge-stats`.
    #[arg(long, value_name = "P.safetensors", conflicts_with_all = ["output", "save_weights"])]
    pub partial_out: Option<PathBuf>,
    /// Output format.
    #[command(flatten)]
    pub out: JsonArgs,
}

/// What a `swa recalibrate` command line asks for.
enum Job {
    /// A pass over every sample, writing the recalibrated model.
    Whole(RecalibrateOptions),
    /// A part of a pass, writing its partial statistics.
    Part(PartialStatsOptions),
}

impl RecalibrateArgs {
    /// The library options, every rule between flags checked.
    fn resolve(&self, quiet: bool) -> Result<Job> {
        let quiet = self.out.quiet(quiet);
        let (model, weights) = (self.m.model.clone(), self.m.weights.clone());
        let (key, allow_missing_weights) = (self.m.bind.read.key.clone(), self.m.bind.allow_missing_weights);
        match (&self.partial_out, &self.output) {
            (Some(out), _) => Ok(Job::Part(PartialStatsOptions {
                model,
                weights,
                key,
                allow_missing_weights,
                pass: self.pass.options(&self.inputs, &self.data, &self.engine, quiet)?,
                part: self.shard.unwrap_or(Part::WHOLE),
                output: out.clone(),
            })),
            (None, _) if self.shard.is_some() => Err(Error::usage(SHARD_NEEDS_PARTIAL_OUT)),
            (None, Some(output)) => Ok(Job::Whole(RecalibrateOptions {
                model,
                weights,
                key,
                allow_missing_weights,
                pass: self.pass.options(&self.inputs, &self.data, &self.engine, quiet)?,
                output: output.clone(),
                save_weights: self.save_weights.clone(),
            })),
            (None, None) => Err(Error::usage("-o OUT.onnx is needed (or --partial-out for a part of the pass)")),
        }
    }

    /// Runs `swa recalibrate`.
    pub fn run(&self, quiet: bool) -> Result<Outcome> {
        let stdout = match self.resolve(quiet)? {
            Job::Part(opts) => {
                let s = swa::parts::stats::write(&opts)?;
                if self.out.json {
                    output::json(&s)
                } else {
                    render::partial_stats(&s)
                }
            }
            Job::Whole(opts) => {
                let s = swa::recalibrate::recalibrate(&opts)?;
                if self.out.json {
                    output::json(&s)
                } else {
                    render::recalibrate(&s)
                }
            }
        };
        Ok(Outcome { stdout, code: 0, failure: None })
    }
}
