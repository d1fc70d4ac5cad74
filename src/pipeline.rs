//! `swa run`: average the selected checkpoints, recalibrate, evaluate every model, and write the
//! outputs and the report into one directory, which appears only when everything succeeded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::average::{self, AverageOptions, Selection};
use crate::error::{Error, Result};
use crate::evaluate::{self, EvalOptions};
use crate::onnx::{bind, bn, Model};
use crate::recalibrate::{self, PassOptions, Prepared};
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
    /// Output directory.
    pub out: PathBuf,
    /// Replace a non-empty output directory.
    pub force: bool,
}

/// Checks that `out` may be written, before any work is done.
fn check_out(out: &Path, force: bool) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::usage(format!("--out {} exists and is not a directory", out.display())));
        }
        let empty = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
        if !empty && !force {
            return Err(Error::usage(format!(
                "--out {} exists and is not empty: pass --force to replace it",
                out.display()
            )));
        }
    }
    Ok(())
}

fn bind_into(base: &Model, weights: &Path, allow_partial: bool) -> Result<Prepared> {
    let mut model = base.clone();
    let ck = crate::checkpoint::Checkpoint::open(weights)?;
    let binding = bind::bind(&mut model, &ck, allow_partial)?;
    let layers = bn::find(&model)?;
    Ok(Prepared { model, checkpoint: ck, binding: Some(binding), layers })
}

/// Runs the whole pipeline and returns the report.
pub fn run(opts: &RunOptions) -> Result<Report> {
    check_out(&opts.out, opts.force)?;
    let mut timings: Vec<Timing> = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |stage: &str, timings: &mut Vec<Timing>| {
        timings.push(Timing { stage: stage.into(), seconds: clock.elapsed().as_secs_f64() });
        clock = Instant::now();
    };

    let mut base = Model::load(&opts.model)?;
    bind::unshare(&mut base);
    bn::find(&base)?;
    let found = average::discover(&opts.checkpoints)?;
    let selected = average::select(&found, &opts.selection)?;

    let parent = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let work = tempfile::Builder::new().prefix(".swa-run.").tempdir_in(&parent).map_err(|e| Error::io(&parent, e))?;

    let mut rows = Vec::new();
    for f in &found {
        let mut prepared = bind_into(&base, &f.path, opts.allow_partial)?;
        let stored = evaluate::evaluate(&prepared.model, &opts.eval)?;
        let recalibrated = if opts.recalibrate_each {
            let pass = recalibrate::compute(&prepared, &opts.pass)?;
            bn::apply(&mut prepared.model, &prepared.layers, &pass.stats)?;
            Some(Score::from(&evaluate::evaluate(&prepared.model, &opts.eval)?))
        } else {
            None
        };
        rows.push(CheckpointRow {
            name: f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            number: f.number,
            stored: Score::from(&stored),
            recalibrated,
        });
    }
    lap("evaluate checkpoints", &mut timings);

    let averaged_path = work.path().join("average.safetensors");
    average::average(&AverageOptions {
        checkpoints: selected.iter().map(|f| f.path.clone()).collect(),
        output: averaged_path.clone(),
        quiet: opts.pass.quiet,
        ..Default::default()
    })?;
    lap("average", &mut timings);

    let mut prepared = bind_into(&base, &averaged_path, opts.allow_partial)?;
    let swa_stored = evaluate::evaluate(&prepared.model, &opts.eval)?;
    lap("evaluate SWA (stored statistics)", &mut timings);
    let pass = recalibrate::compute(&prepared, &opts.pass)?;
    let names = bn::apply(&mut prepared.model, &prepared.layers, &pass.stats)?;
    lap("recalibrate SWA", &mut timings);
    let swa_recalibrated = evaluate::evaluate(&prepared.model, &opts.eval)?;
    lap("evaluate SWA (recalibrated)", &mut timings);

    let mut sources: Vec<&Path> = vec![&opts.model];
    sources.extend(selected.iter().map(|f| f.path.as_path()));
    sources.push(&opts.pass.inputs);
    let mut meta = recalibrate::metadata(&opts.pass, &pass, &sources);
    meta.insert("n_models".into(), selected.len().to_string());
    recalibrate::save_weights(&prepared, &names, &pass, &work.path().join("swa.safetensors"), &meta)?;
    std::fs::remove_file(&averaged_path).map_err(|e| Error::io(&averaged_path, e))?;
    prepared.model.save(&work.path().join("model_swa.onnx"))?;

    let best = Report::best_of(&rows);
    let swa_recalibrated = Score::from(&swa_recalibrated);
    let report = Report {
        tool: crate::VERSION.into(),
        model: opts.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        train_samples: pass.samples,
        eval_samples: swa_stored.samples,
        stats: opts.pass.stats.to_string(),
        batch_size: opts.pass.batch_size,
        k: opts.eval.top_k,
        device: opts.pass.engine.device.to_string(),
        gain_top1: swa_recalibrated.top1 - best.top1,
        averaged: selected
            .iter()
            .map(|f| f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            .collect(),
        checkpoints: rows,
        swa_stored: Score::from(&swa_stored),
        swa_recalibrated,
        best,
        timings,
    };
    let write = |name: &str, text: String| {
        std::fs::write(work.path().join(name), text).map_err(|e| Error::io(work.path().join(name), e))
    };
    write("report.json", report.json())?;
    write("report.md", report::markdown(&report))?;
    write("report.html", report::html(&report))?;

    let staged = work.keep();
    if opts.out.exists() {
        std::fs::remove_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    }
    std::fs::rename(&staged, &opts.out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        Error::io(&opts.out, e)
    })?;
    Ok(report)
}
