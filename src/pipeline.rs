//! `swa run`: average the selected checkpoints, recalibrate, evaluate every model, and write the
//! outputs and the report into one directory, which appears only when everything succeeded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::average::{self, AverageOptions};
use crate::error::{Error, Hint, Result, Setting};
use crate::evaluate::{self, EvalOptions, Metrics};
use crate::inputs::{self, CheckpointFile, Selection};
use crate::onnx::bind::Binder;
use crate::onnx::bn;
use crate::recalibrate::{self, PassOptions, PassResult, Prepared};
use crate::report::{self, CheckpointRow, Report, Score, Timing};

/// Everything `swa run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The ONNX model (any weights; the checkpoints' are bound into it).
    pub model: PathBuf,
    /// Checkpoint files or directories.
    pub checkpoints: Vec<PathBuf>,
    /// Which checkpoints go into the average (every found checkpoint is evaluated).
    pub selection: Selection,
    /// Recalibration pass (training inputs, batch size, mode, device, threads).
    pub pass: PassOptions,
    /// Held-out data.
    pub eval: EvalOptions,
    /// Also recalibrate every checkpoint (the "++" column).
    pub recalibrate_each: bool,
    /// Keep the model's own values for weights a checkpoint lacks.
    pub allow_partial: bool,
    /// Average even when a checkpoint holds NaN or Inf.
    pub allow_nonfinite: bool,
    /// Output directory.
    pub out: PathBuf,
    /// Replace a non-empty output directory.
    pub force: bool,
}

/// Checks that `out` may be written, before any work is done.
fn check_out(out: &Path, force: bool) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::setting(Setting::Out, format!("{} exists and is not a directory", out.display())));
        }
        let empty = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
        if !empty && !force {
            return Err(
                Error::setting(Setting::Out, format!("{} exists and is not empty", out.display())).hint(Hint::Force)
            );
        }
    }
    Ok(())
}

/// Times the stages of the run.
struct Stopwatch {
    lap: Instant,
    timings: Vec<Timing>,
}

impl Stopwatch {
    fn lap(&mut self, stage: &str) {
        self.timings.push(Timing { stage: stage.into(), seconds: self.lap.elapsed().as_secs_f64() });
        self.lap = Instant::now();
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// One row per checkpoint: its accuracy with stored statistics, and recalibrated if asked.
fn evaluate_checkpoints(binder: &Binder, found: &[CheckpointFile], opts: &RunOptions) -> Result<Vec<CheckpointRow>> {
    let mut rows = Vec::new();
    for f in found {
        let bound = binder.bind(Some(inputs::open_checkpoint(&f.path)?), opts.allow_partial)?;
        let mut prepared = Prepared::new(bound)?;
        let stored = evaluate::evaluate(&prepared.bound.model, &opts.eval)?;
        let recalibrated = if opts.recalibrate_each {
            let pass = recalibrate::compute(&prepared, &opts.pass)?;
            bn::apply(&mut prepared.bound.model, &prepared.layers, &pass.stats)?;
            Some(Score::from(&evaluate::evaluate(&prepared.bound.model, &opts.eval)?))
        } else {
            None
        };
        rows.push(CheckpointRow {
            name: file_name(&f.path),
            number: f.number,
            stored: Score::from(&stored),
            recalibrated,
        });
    }
    Ok(rows)
}

/// The SWA model before and after recalibration.
struct Swa {
    prepared: Prepared,
    pass: PassResult,
    names: Vec<(String, String)>,
    stored: Metrics,
    recalibrated: Metrics,
}

/// Averages `selected` into `work`, then evaluates, recalibrates and evaluates the average.
fn swa(
    binder: &Binder,
    selected: &[CheckpointFile],
    work: &Path,
    opts: &RunOptions,
    clock: &mut Stopwatch,
) -> Result<Swa> {
    let averaged = work.join("average.safetensors");
    average::average(&AverageOptions {
        checkpoints: selected.iter().map(|f| f.path.clone()).collect(),
        output: averaged.clone(),
        allow_nonfinite: opts.allow_nonfinite,
        quiet: opts.pass.quiet,
        ..Default::default()
    })?;
    clock.lap("average");
    let mut prepared = Prepared::new(binder.bind(Some(inputs::open_checkpoint(&averaged)?), opts.allow_partial)?)?;
    std::fs::remove_file(&averaged).map_err(|e| Error::io(&averaged, e))?;
    let stored = evaluate::evaluate(&prepared.bound.model, &opts.eval)?;
    clock.lap("evaluate SWA (stored statistics)");
    let pass = recalibrate::compute(&prepared, &opts.pass)?;
    let names = bn::apply(&mut prepared.bound.model, &prepared.layers, &pass.stats)?;
    clock.lap("recalibrate SWA");
    let recalibrated = evaluate::evaluate(&prepared.bound.model, &opts.eval)?;
    clock.lap("evaluate SWA (recalibrated)");
    Ok(Swa { prepared, pass, names, stored, recalibrated })
}

/// Writes the SWA weights, model and report into `work`.
fn write_outputs(
    work: &Path,
    swa: &Swa,
    report: &Report,
    selected: &[CheckpointFile],
    opts: &RunOptions,
) -> Result<()> {
    let mut sources: Vec<&Path> = vec![&opts.model];
    sources.extend(selected.iter().map(|f| f.path.as_path()));
    sources.push(&opts.pass.inputs);
    let mut meta = recalibrate::metadata(&opts.pass, &swa.pass, &sources);
    meta.insert("n_models".into(), selected.len().to_string());
    recalibrate::save_weights(&swa.prepared, &swa.names, &swa.pass, &work.join("swa.safetensors"), &meta)?;
    swa.prepared.bound.model.save(&work.join("model_swa.onnx"))?;
    for (name, text) in
        [("report.json", report.json()), ("report.md", report::markdown(report)), ("report.html", report::html(report))]
    {
        std::fs::write(work.join(name), text).map_err(|e| Error::io(work.join(name), e))?;
    }
    Ok(())
}

/// Renames the finished work directory to `out`, replacing what was there.
fn publish(work: tempfile::TempDir, out: &Path) -> Result<()> {
    let staged = work.keep();
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&staged, out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        Error::io(out, e)
    })
}

/// Runs the whole pipeline and returns the report.
pub fn run(opts: &RunOptions) -> Result<Report> {
    check_out(&opts.out, opts.force)?;
    let mut clock = Stopwatch { lap: Instant::now(), timings: Vec::new() };
    let binder = Binder::load(&opts.model)?;
    bn::find(binder.model())?;
    let found = inputs::discover(&opts.checkpoints)?.files;
    let selected = inputs::select(&found, &opts.selection)?;

    let parent = crate::fs::parent_dir(&opts.out).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let work = tempfile::Builder::new().prefix(".swa-run.").tempdir_in(&parent).map_err(|e| Error::io(&parent, e))?;

    let rows = evaluate_checkpoints(&binder, &found, opts)?;
    clock.lap("evaluate checkpoints");
    let swa = swa(&binder, &selected, work.path(), opts, &mut clock)?;
    let best = Report::best_of(&rows);
    let swa_recalibrated = Score::from(&swa.recalibrated);
    let report = Report {
        tool: crate::VERSION.into(),
        model: file_name(&opts.model),
        train_samples: swa.pass.samples,
        eval_samples: swa.stored.samples,
        stats: opts.pass.stats.to_string(),
        batch_size: opts.pass.batch_size.get(),
        k: opts.eval.top_k.get(),
        device: opts.pass.engine.device.to_string(),
        gain_top1: swa_recalibrated.top1 - best.top1,
        averaged: selected.iter().map(|f| file_name(&f.path)).collect(),
        checkpoints: rows,
        swa_stored: Score::from(&swa.stored),
        swa_recalibrated,
        best,
        timings: clock.timings,
    };
    write_outputs(work.path(), &swa, &report, &selected, opts)?;
    publish(work, &opts.out)?;
    Ok(report)
}
