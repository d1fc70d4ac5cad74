//! `swa soup`.

use std::path::{Path, PathBuf};

use clap::Args;

use super::args::{
    eval_options, needs_labels, CheckpointsArgs, DataArgs, EngineArgs, EvalBatchArgs, JsonArgs, PassArgs,
    TemperatureArg, TemperatureArgs,
};
use super::{output, render, Outcome};
use swa::soup::{Method, SoupOptions, Statistics};
use swa::{Error, Result};

/// `swa soup`.
#[derive(Debug, Args)]
pub struct SoupArgs {
    /// The model and the candidate checkpoints.
    #[command(flatten)]
    pub ck: CheckpointsArgs,
    /// greedy (add candidates best first, keep each that does not lower the select accuracy),
    /// uniform (all), or top-k:K (the K best).
    #[arg(long, default_value = "greedy", value_parser = |s: &str| s.parse::<Method>())]
    pub method: Method,
    /// Training samples for BatchNorm recalibration (.npy, .npz, a folder of images, Parquet).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub train_inputs: Option<PathBuf>,
    /// The select split: held-out inputs the ingredients are chosen by.
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub select_inputs: PathBuf,
    /// Targets of the select split, typed by --task (not needed when the inputs carry them).
    #[arg(long, value_name = "Y.npy")]
    pub select_labels: Option<PathBuf>,
    /// A test split, reported for the soup and the best single checkpoint (never used to choose).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub eval_inputs: Option<PathBuf>,
    /// Targets of the test split, typed by --task.
    #[arg(long, value_name = "Y.npy", requires = "eval_inputs")]
    pub eval_labels: Option<PathBuf>,
    /// How images are read (training, select and test sets alike).
    #[command(flatten)]
    pub data: DataArgs,
    /// Recalibrate BatchNorm for every candidate and soup (the default when the model has BatchNorm).
    #[arg(long, conflicts_with = "no_recalibrate")]
    pub recalibrate: bool,
    /// Judge with the averaged stored statistics (for models without BatchNorm, or to compare);
    /// no training samples are needed then.
    #[arg(long)]
    pub no_recalibrate: bool,
    /// The recalibration pass.
    #[command(flatten)]
    pub pass: PassArgs,
    /// The evaluations.
    #[command(flatten)]
    pub eval: EvalBatchArgs,
    /// Device and threads.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The soup's weights, under the checkpoints' names.
    #[arg(short, long, value_name = "SOUP.safetensors")]
    pub output: PathBuf,
    /// Also the ONNX model with the soup's weights and statistics.
    #[arg(long, value_name = "SOUP.onnx")]
    pub onnx_out: Option<PathBuf>,
    /// Temperature scaling of the soup (`fit`: on --calibration-inputs, or else on the select
    /// split), reported on the test split.
    #[command(flatten)]
    pub temperature: TemperatureArgs,
    /// Divide the logits of --onnx-out by the temperature (a `Div` node named
    /// swa_temperature_scaling).
    #[arg(long, requires_all = ["temperature", "onnx_out"])]
    pub temperature_in_onnx: bool,
    /// Output format.
    #[command(flatten)]
    pub out: JsonArgs,
}

impl SoupArgs {
    /// The library options, every rule between flags checked.
    fn resolve(&self, quiet: bool) -> Result<SoupOptions> {
        let quiet = self.out.quiet(quiet);
        // Which statistics, before anything else: no training samples, no recalibration.
        let recalibrate = match (&self.train_inputs, self.no_recalibrate) {
            (_, true) => None,
            (Some(train), false) => Some(train),
            (None, false) => {
                return Err(Error::usage(
                    "--train-inputs is needed to recalibrate BatchNorm (pass --no-recalibrate to judge with the \
                     averaged stored statistics)",
                ))
            }
        };
        needs_labels(
            &self.select_inputs,
            self.select_labels.as_deref(),
            "--select-labels",
            &self.eval.task,
            self.eval.select_masks.as_deref(),
        )?;
        if let Some(e) = &self.eval_inputs {
            needs_labels(
                e,
                self.eval_labels.as_deref(),
                "--eval-labels",
                &self.eval.task,
                self.eval.task.masks.as_deref(),
            )?;
        }
        let statistics = match recalibrate {
            None => Statistics::Stored,
            Some(train) => {
                let pass = self.pass.options(train, &self.data, &self.engine, quiet)?;
                if self.recalibrate {
                    Statistics::Recalibrate(pass)
                } else {
                    Statistics::RecalibrateIfBatchNorm(pass)
                }
            }
        };
        let eval = |inputs: &Path, labels: Option<&Path>| {
            eval_options(inputs, labels, &self.data, self.eval.eval_batch_size, &self.eval.task, &self.engine, quiet)
        };
        let select = swa::evaluate::EvalOptions {
            masks: self.eval.select_masks.clone(),
            ..eval(&self.select_inputs, self.select_labels.as_deref())?
        };
        // `fit` without a calibration set fits on the select split (the ingredients' judge, never
        // the test split).
        let temperature = match (self.temperature.temperature, &self.temperature.calibration_inputs) {
            (Some(TemperatureArg::Fit), None) => Some(swa::evaluate::TemperatureSource::Fit(Box::new(select.clone()))),
            _ => self.temperature.source(&select, &self.eval.task)?,
        };
        Ok(SoupOptions {
            temperature,
            temperature_in_onnx: self.temperature_in_onnx,
            model: self.ck.model.clone(),
            checkpoints: self.ck.checkpoints.clone(),
            selection: self.ck.select.selection(),
            key: self.ck.bind.read.key.clone(),
            method: self.method,
            statistics,
            select,
            eval: self.eval_inputs.as_deref().map(|i| eval(i, self.eval_labels.as_deref())).transpose()?,
            allow_missing_weights: self.ck.bind.allow_missing_weights,
            output: self.output.clone(),
            onnx_output: self.onnx_out.clone(),
        })
    }

    /// Runs `swa soup`.
    pub fn run(&self, quiet: bool) -> Result<Outcome> {
        if self.no_recalibrate && self.train_inputs.is_some() {
            swa::error::warn("--no-recalibrate judges with the averaged stored statistics: --train-inputs is not used");
        }
        let (s, warnings) = swa::soup::soup(&self.resolve(quiet)?)?;
        for w in &warnings {
            swa::error::warn(w);
        }
        Ok(Outcome { stdout: if self.out.json { output::json(&s) } else { render::soup(&s) }, code: 0, failure: None })
    }
}
