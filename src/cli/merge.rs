//! `swa merge-stats` and `swa merge-eval`: what the parts of a job split over machines wrote,
//! merged into what one machine would have written.

use std::path::PathBuf;

use clap::Args;

use super::args::{GateArgs, JsonArgs, ModelArgs};
use super::{output, render, Outcome};
use swa::parts::stats::MergeStatsOptions;
use swa::Result;

/// `swa merge-stats`.
#[derive(Debug, Args)]
pub struct MergeStatsArgs {
    /// Partial statistics (`swa recalibrate --shard I/N --partial-out`), every part once, any order.
    #[arg(required = true, value_name = "P.safetensors")]
    pub partials: Vec<PathBuf>,
    /// The model and weights the parts ran (checked by content hash), read as the parts read them.
    #[command(flatten)]
    pub m: ModelArgs,
    /// Output ONNX model.
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Also write the tensors under the checkpoint's names, for model.load_state_dict.
    #[arg(long, value_name = "OUT.safetensors")]
    pub save_weights: Option<PathBuf>,
    /// Output format.
    #[command(flatten)]
    pub out: JsonArgs,
}

impl MergeStatsArgs {
    /// Runs `swa merge-stats`.
    pub fn run(&self) -> Result<Outcome> {
        let s = swa::parts::stats::merge_into_model(&MergeStatsOptions {
            partials: self.partials.clone(),
            model: self.m.model.clone(),
            weights: self.m.weights.clone(),
            key: self.m.bind.read.key.clone(),
            allow_missing_weights: self.m.bind.allow_missing_weights,
            output: self.output.clone(),
            save_weights: self.save_weights.clone(),
        })?;
        Ok(Outcome {
            stdout: if self.out.json { output::json(&s) } else { render::recalibrate(&s) },
            code: 0,
            failure: None,
        })
    }
}

/// `swa merge-eval`.
#[derive(Debug, Args)]
pub struct MergeEvalArgs {
    /// Partial evaluations (`swa evaluate --shard I/N --partial-out`), or the parts of a SWAG model
    /// average (`swa swag --part I/N --partial-out P.npz`): every part once, any order.
    #[arg(required = true, value_name = "E.json|P.npz")]
    pub partials: Vec<PathBuf>,
    /// The gate.
    #[command(flatten)]
    pub gate: GateArgs,
    /// The metric command the parts were scored by (`swa evaluate --metric-command`): it runs on
    /// the merged outputs. A command is never run because a partial file names it.
    #[arg(long, value_name = "CMD")]
    pub metric_command: Option<String>,
    /// Output format.
    #[command(flatten)]
    pub out: JsonArgs,
}

impl MergeEvalArgs {
    /// Runs `swa merge-eval`.
    pub fn run(&self) -> Result<Outcome> {
        let swag = |p: &PathBuf| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"));
        if self.partials.iter().any(swag) {
            if !self.partials.iter().all(swag) || self.metric_command.is_some() {
                return Err(swa::Error::usage(
                    "SWAG parts (.npz) merge only with each other, and are scored by their task (no --metric-command)",
                ));
            }
            let (infos, m) = swa::swag::merge_parts(&self.partials)?;
            let gates = self.gate.gates(&m.metrics.task())?;
            let name = PathBuf::from(format!("SWAG model average of {} samples", infos[0].samples));
            return output::metrics(&name, &m, &gates, self.gate.min_accuracy, self.out.json);
        }
        let eval: Vec<_> = self.partials.iter().map(|p| swa::parts::eval::read(p)).collect::<Result<_>>()?;
        let (identity, m) = swa::parts::eval::merge_scored_by(&self.partials, &eval, self.metric_command.as_deref())?;
        let gates = self.gate.gates(&m.metrics.task())?;
        output::metrics(&identity.model, &m, &gates, self.gate.min_accuracy, self.out.json)
    }
}
