//! `swa evaluate`, whole or one part of an evaluation split over machines.

use std::fmt::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::Args;

use super::args::{
    at_least_one, eval_options, needs_labels, part, DataArgs, EngineArgs, GateArgs, JsonArgs, ModelArgs, TaskArgs,
    TemperatureArgs, SHARD_NEEDS_PARTIAL_OUT,
};
use super::{output, render, Outcome};
use swa::evaluate::EvaluateOptions;
use swa::part::Part;
use swa::parts::eval::PartialEvalOptions;
use swa::{Error, Result};

/// `swa evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The model and its weights.
    #[command(flatten)]
    pub m: ModelArgs,
    /// Held-out inputs: .npy, .npz, a folder of class folders of images (ImageFolder), or Parquet.
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub inputs: PathBuf,
    /// The targets, typed by --task: class indices [N] (not needed when the inputs carry them:
    /// class folders, a Parquet label column), float values [N] or [N, D] (regression), 0/1 rows
    /// [N, C] (multilabel), or masks [N, H, W] (segmentation; or --masks); for an image folder,
    /// also a CSV or Parquet table of file names and values.
    #[arg(long, value_name = "Y.npy|T.csv")]
    pub labels: Option<PathBuf>,
    /// How images are read.
    #[command(flatten)]
    pub data: DataArgs,
    /// Samples per batch.
    #[arg(long, default_value = "256", value_parser = at_least_one)]
    pub batch_size: NonZeroUsize,
    /// What the outputs are scored as.
    #[command(flatten)]
    pub task: TaskArgs,
    /// Device and threads.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The gate.
    #[command(flatten)]
    pub gate: GateArgs,
    /// Temperature scaling.
    #[command(flatten)]
    pub temperature: TemperatureArgs,
    /// Evaluate only part I of N of the batches (contiguous ranges of whole batches, counting
    /// from 0), for `swa merge-eval`; needs --partial-out.
    #[arg(long, value_name = "I/N", value_parser = part)]
    pub shard: Option<Part>,
    /// Write this part's counts (JSON) instead of metrics, for `swa merge-eval` (which applies
    /// --min-accuracy and --gate).
    #[arg(long, value_name = "E.json", conflicts_with_all = ["min_accuracy", "gate", "save_outputs"])]
    pub partial_out: Option<PathBuf>,
    /// Also write every sample's outputs with its id (file name or row number), prediction (class
    /// indices, 0/1 labels, per-pixel classes; none for regression and metric commands) and target,
    /// in sample order, as an .npz (`ids`, `outputs`, `predictions`, `targets`): to find the samples
    /// a change flipped, or to score them with your own code.
    #[arg(long, value_name = "OUT.npz")]
    pub save_outputs: Option<PathBuf>,
    /// Output format.
    #[command(flatten)]
    pub out: JsonArgs,
}

/// What a `swa evaluate` command line asks for.
enum Job {
    /// Metrics over every sample.
    Whole(EvaluateOptions, Vec<swa::tasks::Gate>),
    /// A part's counts, for a merge.
    Part(PartialEvalOptions),
}

impl EvaluateArgs {
    /// The library options, every rule between flags checked.
    fn resolve(&self, quiet: bool) -> Result<Job> {
        if self.shard.is_some() && self.partial_out.is_none() {
            return Err(Error::usage(SHARD_NEEDS_PARTIAL_OUT));
        }
        needs_labels(&self.inputs, self.labels.as_deref(), "--labels", &self.task, self.task.masks.as_deref())?;
        let mut eval = eval_options(
            &self.inputs,
            self.labels.as_deref(),
            &self.data,
            self.batch_size,
            &self.task,
            &self.engine,
            self.out.quiet(quiet),
        )?;
        let gates = self.gate.gates(&eval.task)?;
        if let Some(out) = &self.save_outputs {
            let detected = swa::inputs::samples::masks::detect(&self.inputs).map(|(dir, _)| dir);
            let mut inputs = vec![self.inputs.as_path(), self.m.model.as_path()];
            inputs.extend(self.labels.as_deref());
            inputs.extend(self.m.weights.as_deref());
            inputs.extend(self.task.masks.as_deref());
            inputs.extend(detected.as_deref());
            swa::fs::refuse_overwrite(out, &inputs)?;
            // An existing file is replaced only when it is an .npz (a zip), as an earlier
            // --save-outputs wrote: a checkpoint or a mask named by mistake is kept.
            if std::fs::metadata(out).is_ok_and(|m| m.is_file()) {
                let mut magic = [0u8; 4];
                let is_zip = std::fs::File::open(out)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                    .is_ok_and(|()| &magic == b"PK\x03\x04");
                if !is_zip {
                    return Err(Error::usage(format!(
                        "--save-outputs {} exists and is not an .npz: refusing to replace it",
                        out.display()
                    )));
                }
            }
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
                std::fs::create_dir_all(dir).map_err(|e| swa::Error::io(dir, e))?;
            }
            eval.save_outputs = Some(out.clone());
        }
        let temperature = self.temperature.source(&eval, &self.task)?;
        if temperature.is_some() && self.partial_out.is_some() {
            return Err(Error::usage(
                "--temperature scales a whole evaluation's logits: leave it out of a --shard part",
            ));
        }
        let whole = EvaluateOptions {
            temperature,
            model: self.m.model.clone(),
            weights: self.m.weights.clone(),
            key: self.m.bind.read.key.clone(),
            allow_missing_weights: self.m.bind.allow_missing_weights,
            eval,
        };
        Ok(match &self.partial_out {
            None => Job::Whole(whole, gates),
            Some(out) => Job::Part(PartialEvalOptions {
                evaluation: whole,
                part: self.shard.unwrap_or(Part::WHOLE),
                output: out.clone(),
            }),
        })
    }

    /// Runs `swa evaluate`.
    pub fn run(&self, quiet: bool) -> Result<Outcome> {
        match self.resolve(quiet)? {
            Job::Whole(opts, gates) => {
                let m = swa::evaluate::run(&opts)?;
                let mut outcome = output::metrics(&self.m.model, &m, &gates, self.gate.min_accuracy, self.out.json)?;
                if let (Some(out), false) = (&self.save_outputs, self.out.json) {
                    let _ = writeln!(outcome.stdout, "\nwrote {}", out.display());
                }
                Ok(outcome)
            }
            Job::Part(opts) => {
                let (p, created) = swa::parts::eval::write_part(&opts)?;
                let stdout = if self.out.json {
                    output::json(&p)
                } else {
                    let mut o = format!("part {}: {} samples from sample {}\n", p.shard, p.samples, p.first_sample);
                    render::created(&mut o, &created);
                    let _ = writeln!(o, "wrote {}", opts.output.display());
                    o
                };
                Ok(Outcome { stdout, code: 0, failure: None })
            }
        }
    }
}
