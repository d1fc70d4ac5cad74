//! `swa ensemble`.

use clap::Args;
use std::path::PathBuf;

use super::args::{CheckpointsArgs, DataArgs, EngineArgs, EvalBatchArgs, JsonArgs, PassArgs};
use super::{output, render, Outcome};
use swa::ensemble::EnsembleOptions;
use swa::Result;

/// `swa ensemble`.
#[derive(Debug, Args)]
pub struct EnsembleArgs {
    /// The model and the member checkpoints (the selection picks them).
    #[command(flatten)]
    pub ck: CheckpointsArgs,
    /// Held-out inputs (.npy, .npz, a folder of class folders of images, Parquet).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub eval_inputs: PathBuf,
    /// Held-out targets, typed by --task (not needed when the inputs carry them).
    #[arg(long, value_name = "Y.npy")]
    pub eval_labels: Option<PathBuf>,
    /// Training samples: also the ensemble of the members with BatchNorm recalibrated on them.
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub train_inputs: Option<PathBuf>,
    /// How images are read.
    #[command(flatten)]
    pub data: DataArgs,
    /// The recalibration pass.
    #[command(flatten)]
    pub pass: PassArgs,
    /// The evaluations.
    #[command(flatten)]
    pub eval: EvalBatchArgs,
    /// Device and threads.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Output format.
    #[command(flatten)]
    pub out: JsonArgs,
}

impl EnsembleArgs {
    fn resolve(&self, quiet: bool) -> Result<EnsembleOptions> {
        let quiet = self.out.quiet(quiet);
        self.eval.no_select_split()?;
        let eval =
            self.eval.held_out(&self.eval_inputs, self.eval_labels.as_deref(), &self.data, &self.engine, quiet)?;
        Ok(EnsembleOptions {
            model: self.ck.model.clone(),
            checkpoints: self.ck.checkpoints.clone(),
            selection: self.ck.select.selection(),
            key: self.ck.bind.read.key.clone(),
            allow_missing_weights: self.ck.bind.allow_missing_weights,
            eval,
            pass: self
                .train_inputs
                .as_deref()
                .map(|t| self.pass.options(t, &self.data, &self.engine, quiet))
                .transpose()?,
        })
    }

    /// Runs `swa ensemble`.
    pub fn run(&self, quiet: bool) -> Result<Outcome> {
        let s = swa::ensemble::ensemble(&self.resolve(quiet)?)?;
        Ok(Outcome {
            stdout: if self.out.json { output::json(&s) } else { render::ensemble(&s) },
            code: 0,
            failure: None,
        })
    }
}
