//! `swa run`: every stage, and the report.

use std::fmt::Write;
use std::path::PathBuf;

use clap::Args;

use super::args::{
    eval_options, needs_labels, CheckpointsArgs, DataArgs, EngineArgs, EvalBatchArgs, GateArgs, JsonArgs, PassArgs,
    SwagArgs, TemperatureArgs,
};
use super::{output, render, Outcome};
use swa::pipeline::{RunOptions, RunSoup, RunSwag, RunTemperature};
use swa::soup::Method;
use swa::Result;

/// `swa run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The model and its checkpoints.
    #[command(flatten)]
    pub ck: CheckpointsArgs,
    /// Training samples for recalibration (.npy, .npz, a folder of images, Parquet).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub train_inputs: PathBuf,
    /// Held-out inputs (.npy, .npz, a folder of class folders of images, Parquet).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet")]
    pub eval_inputs: PathBuf,
    /// Held-out targets, typed by --task (class indices, values, 0/1 rows, masks; a CSV table of
    /// file names and values for an image folder; not needed when the inputs carry them).
    #[arg(long, value_name = "Y.npy")]
    pub eval_labels: Option<PathBuf>,
    /// How images are read (training, select and held-out sets alike).
    #[command(flatten)]
    pub data: DataArgs,
    /// Also recalibrate every checkpoint (the "++" column).
    #[arg(long)]
    pub recalibrate_each: bool,
    /// Also make a model soup of every checkpoint found (greedy, uniform or top-k:K), chosen on
    /// --select-inputs, and report it beside SWA.
    #[arg(long, value_name = "METHOD", value_parser = |s: &str| s.parse::<Method>(), requires = "select_inputs")]
    pub soup: Option<Method>,
    /// The soup's select split (held out, and not the --eval-inputs the report is measured on).
    #[arg(long, value_name = "X.npy|X.npz|DIR|X.parquet", requires = "soup")]
    pub select_inputs: Option<PathBuf>,
    /// Targets of the select split, typed by --task.
    #[arg(long, value_name = "Y.npy", requires = "soup")]
    pub select_labels: Option<PathBuf>,
    /// Also evaluate the ensemble of the selected checkpoints (the mean of their predictions), with
    /// stored and recalibrated statistics, from the checkpoints' own evaluation passes.
    #[arg(long)]
    pub ensemble: bool,
    /// Also SWAG over the selected checkpoints: the model average of --swag-samples samples, each
    /// with BatchNorm refitted; reported beside SWA and the ensemble.
    #[arg(long)]
    pub swag: bool,
    /// SWAG's settings (with --swag).
    #[command(flatten)]
    pub swag_settings: SwagArgs,
    /// Temperature scaling of the recalibrated SWA model (a row of its own).
    #[command(flatten)]
    pub temperature: TemperatureArgs,
    /// Divide the logits of model_swa.onnx by the temperature (a `Div` node named
    /// swa_temperature_scaling), so deployment gets calibrated probabilities.
    #[arg(long, requires = "temperature")]
    pub temperature_in_onnx: bool,
    /// The recalibration pass.
    #[command(flatten)]
    pub pass: PassArgs,
    /// The evaluations.
    #[command(flatten)]
    pub eval: EvalBatchArgs,
    /// Device and threads.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Average even when a checkpoint holds NaN or Inf (recalibration still refuses non-finite
    /// weights; BatchNorm statistics are replaced, so non-finite ones are fine).
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// The gate.
    #[command(flatten)]
    pub gate: GateArgs,
    /// Output directory (created; must be empty unless --force).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an output directory that an earlier `swa run` wrote (it holds `.swa-run`); no other
    /// directory is ever replaced.
    #[arg(long)]
    pub force: bool,
    /// Output format (--json: report.json on stdout).
    #[command(flatten)]
    pub format: JsonArgs,
}

impl RunArgs {
    /// The library options, every rule between flags checked.
    fn resolve(&self, quiet: bool) -> Result<RunOptions> {
        let quiet = self.format.quiet(quiet);
        let eval =
            self.eval.held_out(&self.eval_inputs, self.eval_labels.as_deref(), &self.data, &self.engine, quiet)?;
        if let Some(select) = &self.select_inputs {
            needs_labels(
                select,
                self.select_labels.as_deref(),
                "--select-labels",
                &self.eval.task,
                self.eval.select_masks.as_deref(),
            )?;
        }
        let (batch, k) = (self.eval.eval_batch_size, &self.eval.task);
        let sw = &self.swag_settings;
        if !self.swag
            && (sw.rank.is_some()
                || sw.diag
                || sw.draws.is_some()
                || sw.bn_samples.is_some()
                || sw.swag_samples != 30
                || sw.scale != 0.5)
        {
            return Err(swa::Error::usage(
                "SWAG's settings (--rank, --diag, --swag-samples, --scale, --draws, --bn-samples) apply with --swag",
            ));
        }
        if sw.save_moments.is_some() || sw.save_samples.is_some() {
            return Err(swa::Error::usage(
                "--save-moments and --save-samples are `swa swag`'s: `swa run --swag` reports SWAG beside SWA and writes \
                 only its own directory",
            ));
        }
        let temperature = self
            .temperature
            .source(&eval, k)?
            .map(|source| RunTemperature { source, in_onnx: self.temperature_in_onnx });
        Ok(RunOptions {
            ensemble: self.ensemble,
            swag: self.swag.then(|| RunSwag {
                rank: sw.rank,
                diagonal: sw.diag,
                samples: sw.swag_samples,
                scale: sw.scale,
                draws: sw.draws.clone(),
                bn_samples: sw.bn_samples,
            }),
            temperature,
            model: self.ck.model.clone(),
            checkpoints: self.ck.checkpoints.clone(),
            selection: self.ck.select.selection(),
            pass: self.pass.options(&self.train_inputs, &self.data, &self.engine, quiet)?,
            eval,
            recalibrate_each: self.recalibrate_each,
            allow_missing_weights: self.ck.bind.allow_missing_weights,
            key: self.ck.bind.read.key.clone(),
            allow_nonfinite: self.allow_nonfinite,
            out: self.out.clone(),
            force: self.force,
            soup: match (self.soup, &self.select_inputs) {
                (Some(method), Some(inputs)) => Some(RunSoup {
                    method,
                    select: swa::evaluate::EvalOptions {
                        masks: self.eval.select_masks.clone(),
                        ..eval_options(
                            inputs,
                            self.select_labels.as_deref(),
                            &self.data,
                            batch,
                            k,
                            &self.engine,
                            quiet,
                        )?
                    },
                }),
                _ => None,
            },
        })
    }

    /// Runs `swa run`.
    pub fn run(&self, quiet: bool) -> Result<Outcome> {
        if let Some(select) = self.soup.and(self.select_inputs.as_ref()) {
            if let Some(w) = swa::soup::same_split_warning(select, &self.eval_inputs) {
                swa::error::warn(w);
            }
        }
        let opts = self.resolve(quiet)?;
        let gates = self.gate.gates(&opts.eval.task)?;
        let (r, created) = swa::pipeline::run(&opts)?;
        for (model, n) in r.nonfinite() {
            output::warn_nonfinite(&model, n, r.eval_samples, &r.task);
        }
        let gated = &r.swa_recalibrated;
        output::check_gates(gated, &gates)?;
        let code = !render::passes(gated, &gates) as u8;
        let mut stdout = if self.format.json { r.json() + "\n" } else { swa::report::markdown(&r) };
        if !self.format.json {
            stdout.push('\n');
            for v in render::verdicts(gated, &gates) {
                let op = if v.gate.at_least { "≥" } else { "≤" };
                let verdict = if v.passed { "passed" } else { "FAILED" };
                let _ = writeln!(
                    stdout,
                    "gate (recalibrated SWA): {} {op} {} ({:.4}) — {verdict}",
                    v.gate.figure, v.gate.bound, v.value
                );
            }
            render::created(&mut stdout, &created);
            // The folder is swa's own (published whole): what it holds is what the run wrote
            // (with `swa.weights.h5` or `swa.ckpt.*` for a Keras or TensorFlow run).
            let mut names: Vec<String> = std::fs::read_dir(&self.out)
                .map(|d| {
                    d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                        .filter(|n| !n.starts_with('.'))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            let out = self.out.display().to_string();
            let _ = writeln!(stdout, "wrote {}/{{{}}}", out.trim_end_matches('/'), names.join(","));
        }
        output::step_summary(&swa::report::markdown(&r));
        let failure =
            (code == 1).then(|| render::gate_failure(Some("recalibrated SWA"), gated, &gates, self.gate.min_accuracy));
        Ok(Outcome { stdout, code, failure })
    }
}
