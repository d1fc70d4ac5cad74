//! `swa swag`, whole or one part of its samples.

use clap::Args;
use std::path::PathBuf;

use super::args::{part, CheckpointsArgs, DataArgs, EngineArgs, EvalBatchArgs, JsonArgs, PassArgs, SwagArgs};
use super::{output, render, Outcome};
use swa::part::Part;
use swa::swag::SwagOptions;
use swa::{Error, Result};

/// `swa swag`.
#[derive(Debug, Args)]
pub struct SwagCommandArgs {
    /// The model and the checkpoints SWAG's moments are taken over (the selection picks them).
    #[command(flatten)]
    pub ck: CheckpointsArgs,
    /// Training samples each sample's BatchNorm is refitted on (--bn-samples N of them).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub train_inputs: PathBuf,
    /// Held-out inputs.
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub eval_inputs: PathBuf,
    /// Held-out targets, typed by --task (not needed when the inputs carry them).
    #[arg(long, value_name = "Y.npy")]
    pub eval_labels: Option<PathBuf>,
    /// SWAG's settings.
    #[command(flatten)]
    pub swag: SwagArgs,
    /// Draw only samples I, I+N, … of the S (counting from 0), for `swa merge-eval`, which adds the
    /// parts' predictions into the model average; needs --partial-out.
    #[arg(long, value_name = "I/N", value_parser = part)]
    pub part: Option<Part>,
    /// Where a part writes its summed predictions (.npz).
    #[arg(long, value_name = "P.npz")]
    pub partial_out: Option<PathBuf>,
    /// How images are read.
    #[command(flatten)]
    pub data: DataArgs,
    /// The recalibration pass of every sample.
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

impl SwagArgs {
    /// The library options for these settings.
    pub fn options(
        &self,
        ck: &CheckpointsArgs,
        mut pass: swa::recalibrate::PassOptions,
        eval: swa::evaluate::EvalOptions,
        seed: u64,
        quiet: bool,
    ) -> SwagOptions {
        if self.bn_samples.is_some() {
            pass.max_samples = self.bn_samples;
        }
        SwagOptions {
            model: ck.model.clone(),
            checkpoints: ck.checkpoints.clone(),
            selection: ck.select.selection(),
            key: ck.bind.read.key.clone(),
            allow_missing_weights: ck.bind.allow_missing_weights,
            rank: self.rank,
            diagonal: self.diag,
            samples: self.swag_samples,
            scale: self.scale,
            seed,
            draws: self.draws.clone(),
            pass,
            eval,
            part: Part::WHOLE,
            save_moments: self.save_moments.clone(),
            save_samples: self.save_samples.clone(),
            part_output: None,
            quiet,
        }
    }
}

impl SwagCommandArgs {
    fn resolve(&self, quiet: bool) -> Result<SwagOptions> {
        let quiet = self.out.quiet(quiet);
        self.eval.no_select_split()?;
        if self.part.is_some() != self.partial_out.is_some() {
            return Err(Error::usage(
                "--part draws some of the samples: its result is partial, so it needs --partial-out (and --partial-out \
                 needs --part)",
            ));
        }
        let pass = self.pass.options(&self.train_inputs, &self.data, &self.engine, quiet)?;
        let eval =
            self.eval.held_out(&self.eval_inputs, self.eval_labels.as_deref(), &self.data, &self.engine, quiet)?;
        let mut opts = self.swag.options(&self.ck, pass, eval, self.pass.seed, quiet);
        opts.part = self.part.unwrap_or(Part::WHOLE);
        opts.part_output = self.partial_out.clone();
        Ok(opts)
    }

    /// Runs `swa swag`.
    pub fn run(&self, quiet: bool) -> Result<Outcome> {
        let s = swa::swag::swag(&self.resolve(quiet)?)?;
        Ok(Outcome { stdout: if self.out.json { output::json(&s) } else { render::swag(&s) }, code: 0, failure: None })
    }
}
