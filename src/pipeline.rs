//! `swa run`: average the selected checkpoints, recalibrate, evaluate every model, and write the
//! outputs and the report into one directory, which appears only when everything succeeded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::average::{self, AverageOptions};
use crate::error::{Error, Hint, Result, Setting};
use crate::evaluate::{self, EvalOptions, Evaluation};
use crate::fs::{DirPublishError, Replace, StagedDir, Stamps};
use crate::inputs::{self, CheckpointFile, Selection};
use crate::onnx::bind::Binder;
use crate::onnx::bn;
use crate::recalibrate::{self, PassOptions, PassResult, Prepared};
use crate::report::{self, CheckpointRow, Report, Timing};

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
    pub allow_missing_weights: bool,
    /// The state dict to read in `torch.save` checkpoints.
    pub key: Option<String>,
    /// Average even when a checkpoint holds NaN or Inf.
    pub allow_nonfinite: bool,
    /// Output directory.
    pub out: PathBuf,
    /// Replace an output directory that an earlier `swa run` wrote (it holds [`MARKER`]); no
    /// other directory is ever replaced.
    pub force: bool,
    /// Also make a model soup of every checkpoint found, chosen on a select split.
    pub soup: Option<RunSoup>,
    /// Also the ensemble of the selected checkpoints, with stored and recalibrated statistics.
    pub ensemble: bool,
    /// Also SWAG over the selected checkpoints.
    pub swag: Option<RunSwag>,
    /// Temperature scaling of the recalibrated SWA model.
    pub temperature: Option<RunTemperature>,
}

/// SWAG in `swa run`: [`crate::swag::SwagOptions`]' settings (its checkpoints are the selected
/// ones, its data the run's).
#[derive(Debug, Clone)]
pub struct RunSwag {
    /// K (`None`: min(20, checkpoints)).
    pub rank: Option<usize>,
    /// SWAG-diagonal.
    pub diagonal: bool,
    /// S.
    pub samples: usize,
    /// The covariance scale.
    pub scale: f64,
    /// Standard-normal draws to use instead of the pass's seed's.
    pub draws: Option<PathBuf>,
    /// Training samples each sample's BatchNorm is refitted on (`None`: the pass's).
    pub bn_samples: Option<usize>,
}

/// Temperature scaling in `swa run`.
#[derive(Debug, Clone)]
pub struct RunTemperature {
    /// Given, or fitted on a calibration set.
    pub source: evaluate::TemperatureSource,
    /// Divide the logits of `model_swa.onnx` by it.
    pub in_onnx: bool,
}

/// The running sums of the ensemble's members' predictions, and what they cost beyond the
/// checkpoints' own rows.
struct Ensembles {
    stored: crate::tasks::mean::Mean,
    recalibrated: crate::tasks::mean::Mean,
    first: Option<(Evaluation, Evaluation)>,
    seconds_stored: f64,
    seconds_recalibrated: f64,
}

/// The model soup of `swa run`.
#[derive(Debug, Clone)]
pub struct RunSoup {
    /// How ingredients are chosen.
    pub method: crate::soup::Method,
    /// The select split (never the held-out set of the report).
    pub select: EvalOptions,
}

/// Makes the soup of every checkpoint found (`soup.safetensors` and `model_soup.onnx` in `work`)
/// and its report section, with the report's names for the checkpoints.
fn make_soup(
    found: &[CheckpointFile],
    names: &[String],
    work: &Path,
    soup: &RunSoup,
    opts: &RunOptions,
) -> Result<report::SoupReport> {
    let (s, _) = crate::soup::soup(&crate::soup::SoupOptions {
        model: opts.model.clone(),
        checkpoints: found.iter().map(|f| f.path.clone()).collect(),
        selection: Selection::default(),
        key: opts.key.clone(),
        method: soup.method,
        statistics: crate::soup::Statistics::RecalibrateIfBatchNorm(opts.pass.clone()),
        select: soup.select.clone(),
        eval: Some(opts.eval.clone()),
        allow_missing_weights: opts.allow_missing_weights,
        output: work.join("soup.safetensors"),
        onnx_output: Some(work.join("model_soup.onnx")),
        temperature: None,
        temperature_in_onnx: false,
    })?;
    let label =
        |path: &Path| found.iter().position(|f| f.path == path).map_or_else(|| file_name(path), |i| names[i].clone());
    Ok(report::SoupReport {
        method: s.method.clone(),
        recalibrated: s.recalibrated,
        // By path: file names alone are all `model.safetensors` in the Hugging Face layout. The
        // ingredients were added in the candidates' order.
        ingredients: s.candidates.iter().filter(|c| c.kept).map(|c| label(&c.path)).collect(),
        candidates: s
            .candidates
            .iter()
            .map(|c| report::SoupStep {
                name: label(&c.path),
                select_alone: c.select_alone.value(),
                select_in_soup: c.select_in_soup.as_ref().map(|x| x.value()),
                kept: c.kept,
            })
            .collect(),
        select: s.select.clone(),
        eval: s.eval.clone().expect("the soup is evaluated on the held-out set"),
    })
}

/// The file `swa run` writes into its output directory: what `force` looks for before it replaces
/// a directory. It holds `{"written_by": "swa run", "version": …}` (docs/formats.md).
pub const MARKER: &str = ".swa-run";

fn marker() -> String {
    serde_json::json!({"written_by": "swa run", "version": env!("CARGO_PKG_VERSION")}).to_string() + "\n"
}

/// True if `dir` holds the marker of an earlier `swa run` (a regular file, any version).
pub fn written_by_swa_run(dir: &Path) -> bool {
    let path = dir.join(MARKER);
    std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file())
        && std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["written_by"] == "swa run")
}

fn never_replaced(out: &Path, why: &str) -> Error {
    Error::setting(Setting::Out, format!("{} {why}", out.display())).hint(Hint::NeverReplaced)
}

/// Checks that `out` may be written, before any work is done: it does not exist (its parent, if
/// there, is a directory), or it is an empty directory, or — with `force` only — one that an
/// earlier `swa run` wrote. Never a symbolic link, the working directory or one of its parents.
/// Returns whether publishing replaces a directory.
fn check_out(out: &Path, force: bool) -> Result<bool> {
    let meta = match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = crate::fs::parent_dir(out);
            if parent.exists() && !parent.is_dir() {
                return Err(Error::setting(
                    Setting::Out,
                    format!("{}: {} is not a directory", out.display(), parent.display()),
                ));
            }
            return Ok(false);
        }
        Err(e) => return Err(Error::io(out, e)),
        Ok(m) => m,
    };
    if meta.file_type().is_symlink() {
        return Err(never_replaced(out, "is a symbolic link"));
    }
    if !meta.is_dir() {
        return Err(Error::setting(Setting::Out, format!("{} exists and is not a directory", out.display())));
    }
    let canonical = out.canonicalize().map_err(|e| Error::io(out, e))?;
    if std::env::current_dir().is_ok_and(|cwd| cwd.starts_with(&canonical)) {
        return Err(never_replaced(out, "is the working directory or one of its parents"));
    }
    let empty = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
    if empty {
        return Ok(false);
    }
    if !written_by_swa_run(out) {
        return Err(never_replaced(out, &format!("exists and was not written by swa run (it has no {MARKER} file)")));
    }
    if !force {
        return Err(
            Error::setting(Setting::Out, format!("{} exists and is not empty", out.display())).hint(Hint::Force)
        );
    }
    Ok(true)
}

/// Refuses an `out` that is one of `inputs` or holds one (canonical paths compared).
fn refuse_holding_inputs(out: &Path, inputs: &[&Path]) -> Result<()> {
    let Some(canonical) = crate::fs::resolved(out) else { return Ok(()) };
    for input in inputs {
        let Ok(input_at) = input.canonicalize() else { continue };
        if input_at.starts_with(&canonical) {
            return Err(never_replaced(out, &format!("holds the input {}", input.display())));
        }
    }
    Ok(())
}

/// Every file the run reads: the model and its external data, the checkpoints (a sharded one's
/// index and shards), the samples and the labels.
fn files_read(binder: &Binder, found: &[CheckpointFile], opts: &RunOptions) -> Result<Vec<PathBuf>> {
    let mut files = binder.model().files().to_vec();
    for f in found {
        files.extend(inputs::format_of(&f.path).files(&f.path)?);
    }
    files.extend([opts.pass.inputs.clone(), opts.eval.inputs.clone()]);
    files.extend(opts.eval.labels.clone());
    if let Some(evaluate::TemperatureSource::Fit(c)) = opts.temperature.as_ref().map(|t| &t.source) {
        files.push(c.inputs.clone());
        files.extend(c.labels.clone());
    }
    files.extend(opts.swag.as_ref().and_then(|s| s.draws.clone()));
    if let Some(soup) = &opts.soup {
        files.push(soup.select.inputs.clone());
        files.extend(soup.select.labels.clone());
    }
    Ok(files)
}

/// The report's lines on how each set was read (image sets only) and the images skipped.
fn data_lines(swa: &Swa) -> Vec<String> {
    let mut lines = Vec::new();
    let sets = [
        ("training", swa.pass.preprocessing.as_ref(), &swa.pass.skipped),
        ("held-out", swa.stored.preprocessing.as_ref(), &swa.stored.skipped),
    ];
    for (set, how, skipped) in sets {
        if let Some(how) = how {
            lines.push(format!("{set} samples: {how}"));
        }
        if !skipped.is_empty() {
            lines.push(format!("{set} samples: skipped {} images that could not be decoded", skipped.len()));
        }
    }
    lines
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

/// One row per checkpoint (named by `names`): its accuracy with stored statistics, and
/// recalibrated if asked (and for the ensemble's members, whose outputs are added to `ensembles`
/// from these passes).
fn evaluate_checkpoints(
    binder: &Binder,
    found: &[CheckpointFile],
    names: &[String],
    selected: &[CheckpointFile],
    mut ensembles: Option<&mut Ensembles>,
    opts: &RunOptions,
) -> Result<Vec<CheckpointRow>> {
    let mut rows = Vec::new();
    for (f, name) in found.iter().zip(names) {
        let bound =
            binder.bind(Some(inputs::open_checkpoint(&f.path, opts.key.as_deref())?), opts.allow_missing_weights)?;
        let mut prepared = Prepared::new(bound)?;
        let member = ensembles.as_deref_mut().filter(|_| selected.iter().any(|s| s.path == f.path));
        let started = Instant::now();
        let (stored, recalibrated) = match member {
            None => {
                let stored = evaluate::evaluate(&prepared.bound.model, &opts.eval)?;
                let recalibrated = if opts.recalibrate_each {
                    let pass = recalibrate::compute(&prepared, &opts.pass)?;
                    bn::apply(&mut prepared.bound.model, &prepared.layers, &pass.stats)?;
                    Some(evaluate::evaluate(&prepared.bound.model, &opts.eval)?.score())
                } else {
                    None
                };
                (stored, recalibrated)
            }
            Some(e) => {
                let stored = crate::ensemble::member(&prepared.bound.model, &opts.eval, &mut e.stored)?;
                e.seconds_stored += started.elapsed().as_secs_f64();
                let again = Instant::now();
                let pass = recalibrate::compute(&prepared, &opts.pass)?;
                bn::apply(&mut prepared.bound.model, &prepared.layers, &pass.stats)?;
                let recalibrated = crate::ensemble::member(&prepared.bound.model, &opts.eval, &mut e.recalibrated)?;
                e.seconds_recalibrated += again.elapsed().as_secs_f64();
                let score = recalibrated.score();
                e.first.get_or_insert((stored.clone(), recalibrated));
                (stored, Some(score))
            }
        };
        rows.push(CheckpointRow { name: name.clone(), number: f.number, stored: stored.score(), recalibrated });
    }
    Ok(rows)
}

/// The comparison table's rows: the best checkpoint, SWA, the soup, the ensembles, SWAG and the
/// temperature-scaled SWA model, each with its passes, seconds and models to deploy.
fn comparison(
    report: &Report,
    ensembles: Option<(&Ensembles, Evaluation, Evaluation, usize)>,
    swag: Option<&crate::swag::SwagSummary>,
    tempered: Option<&(Evaluation, f64)>,
) -> Vec<report::Compared> {
    use report::Compared;
    let seconds = |stages: &[&str]| {
        Some(report.timings.iter().filter(|t| stages.iter().any(|s| t.stage.starts_with(s))).map(|t| t.seconds).sum())
    };
    let best = report.checkpoints.iter().find(|c| c.name == report.best.name);
    let mut rows = Vec::new();
    if let Some(c) = best {
        let recalibrated = report.best.statistics == "recalibrated";
        let score = if recalibrated { c.recalibrated.clone().unwrap_or(c.stored.clone()) } else { c.stored.clone() };
        rows.push(Compared {
            name: format!("best checkpoint: {} ({} statistics)", c.name, report.best.statistics),
            score,
            passes: if recalibrated { 2 } else { 1 },
            seconds: None,
            models: 1,
        });
    }
    rows.push(Compared {
        name: "SWA, newest checkpoint's statistics".into(),
        score: report.swa_stored.clone(),
        passes: 1,
        seconds: seconds(&["average", "evaluate SWA (stored"]),
        models: 1,
    });
    rows.push(Compared {
        name: "SWA, recalibrated".into(),
        score: report.swa_recalibrated.clone(),
        passes: 2,
        seconds: seconds(&["average", "recalibrate SWA", "evaluate SWA (recalibrated"]),
        models: 1,
    });
    if let Some((t, extra)) = tempered {
        let temperature = t.temperature.as_ref().map_or(1.0, |x| x.value);
        rows.push(Compared {
            name: format!("SWA, recalibrated, temperature {temperature:.4}"),
            score: t.score(),
            // Recalibration and evaluation (the pass that scores SWA too), and the fit.
            passes: 2 + usize::from(t.temperature.as_ref().is_some_and(|x| x.fit.is_some())),
            seconds: Some(
                seconds(&["average", "recalibrate SWA", "evaluate SWA (recalibrated"]).unwrap_or(0.0) + extra,
            ),
            models: 1,
        });
    }
    if let Some(soup) = &report.soup {
        rows.push(Compared {
            name: format!("{} soup of {}", soup.method, soup.ingredients.len()),
            score: soup.eval.clone(),
            passes: 0,
            seconds: seconds(&["soup"]),
            models: 1,
        });
    }
    if let Some((e, stored, recalibrated, n)) = ensembles {
        rows.push(Compared {
            name: format!("ensemble of {n}, stored statistics"),
            score: stored.score(),
            passes: n,
            seconds: Some(e.seconds_stored),
            models: n,
        });
        rows.push(Compared {
            name: format!("ensemble of {n}, recalibrated"),
            score: recalibrated.score(),
            passes: 2 * n,
            seconds: Some(e.seconds_recalibrated),
            models: n,
        });
    }
    if let Some(s) = swag {
        if let Some(e) = &s.evaluation {
            let kind = if s.rank == 0 { "SWAG-diagonal".to_string() } else { format!("SWAG (rank {})", s.rank) };
            rows.push(Compared {
                name: format!("{kind}, {} samples", s.samples),
                score: e.score(),
                passes: s.passes,
                seconds: Some(s.seconds),
                models: s.samples,
            });
        }
    }
    rows
}

/// The SWA model before and after recalibration.
struct Swa {
    prepared: Prepared,
    pass: PassResult,
    names: Vec<(String, String)>,
    stored: Evaluation,
    recalibrated: Evaluation,
    /// With temperature scaling: the recalibrated model's logits divided by T (from the same
    /// held-out pass as `recalibrated`), and the seconds fitting T took.
    tempered: Option<(Evaluation, f64)>,
}

/// Averages `selected` into `work`, then evaluates, recalibrates and evaluates the average (and
/// fits its temperature, where asked, before that last pass, which then scores both).
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
        key: opts.key.clone(),
        quiet: opts.pass.quiet,
        ..Default::default()
    })?;
    clock.lap("average");
    let mut prepared =
        Prepared::new(binder.bind(Some(inputs::open_checkpoint(&averaged, None)?), opts.allow_missing_weights)?)?;
    std::fs::remove_file(&averaged).map_err(|e| Error::io(&averaged, e))?;
    let stored = evaluate::evaluate(&prepared.bound.model, &opts.eval)?;
    clock.lap("evaluate SWA (stored statistics)");
    let pass = recalibrate::compute(&prepared, &opts.pass)?;
    let names = bn::apply(&mut prepared.bound.model, &prepared.layers, &pass.stats)?;
    clock.lap("recalibrate SWA");
    let (recalibrated, tempered) = match &opts.temperature {
        None => (evaluate::evaluate(&prepared.bound.model, &opts.eval)?, None),
        Some(t) => {
            let started = Instant::now();
            let (value, fit) = match &t.source {
                evaluate::TemperatureSource::Given(value) => (*value, None),
                evaluate::TemperatureSource::Fit(calibration) => {
                    let fit = evaluate::fit_temperature(&prepared.bound.model, calibration)?;
                    (fit.temperature, Some(fit))
                }
            };
            let fitting = started.elapsed().as_secs_f64();
            clock.lap("temperature");
            let (before, after) = evaluate::evaluate_tempered(&prepared.bound.model, &opts.eval, value, fit)?;
            if t.in_onnx {
                crate::onnx::divide_first_output(&mut prepared.bound.model, value as f32)?;
            }
            (before, Some((after, fitting)))
        }
    };
    clock.lap("evaluate SWA (recalibrated)");
    Ok(Swa { prepared, pass, names, stored, recalibrated, tempered })
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
    recalibrate::save_weights(&swa.prepared, &swa.names, &swa.pass, &work.join("swa.safetensors"), &meta, None)?;
    // The run's own format too, where it is not PyTorch's (Keras' `swa.weights.h5`, a TensorFlow
    // bundle `swa.ckpt`): written like the newest checkpoint, loadable where it was.
    if let Some(newest) = selected.last() {
        if let Some(name) = inputs::format_of(&newest.path).native_output(&newest.path) {
            let path = work.join(name);
            recalibrate::save_weights(&swa.prepared, &swa.names, &swa.pass, &path, &meta, Some(&newest.path))?;
        }
    }
    swa.prepared.bound.model.save(&work.join("model_swa.onnx"))?;
    for (name, text) in [
        ("report.json", report.json()),
        ("report.md", report::markdown(report)),
        ("report.html", report::html(report)),
        (MARKER, marker()),
    ] {
        std::fs::write(work.join(name), text).map_err(|e| Error::io(work.join(name), e))?;
    }
    Ok(())
}

/// Renames the finished work directory to `out`. A directory there is replaced only if `replace`
/// (it held the marker at the start) and it still holds the marker once moved aside; a directory
/// that another process made meanwhile is never touched: the run fails instead.
fn publish(work: StagedDir, out: &Path, replace: bool) -> Result<()> {
    let check = |dir: &Path| written_by_swa_run(dir);
    let how = if replace { Replace::If(&check) } else { Replace::Nothing };
    work.publish(out, how).map_err(|e| match e {
        DirPublishError::Io(e) => Error::io(out, e),
        other => Error::setting(Setting::Out, format!("{} was not replaced: {other}", out.display())),
    })
}

/// Runs the whole pipeline; returns the report and the missing directories created above
/// `opts.out`, parents first.
pub fn run(opts: &RunOptions) -> Result<(Report, Vec<PathBuf>)> {
    // `out/` and `out/.` make the kernel follow a symbolic link at `out`: check and publish `out`
    // itself, so that a link there is refused before any work.
    let out: PathBuf = opts.out.components().collect();
    let replace = check_out(&out, opts.force)?;
    let mut clock = Stopwatch { lap: Instant::now(), timings: Vec::new() };
    let binder = Binder::load(&opts.model)?;
    bn::find(binder.model())?;
    inputs::check_same_classes(&opts.pass.inputs, &opts.eval.inputs)?;
    if let Some(soup) = &opts.soup {
        inputs::check_same_classes(&soup.select.inputs, &opts.eval.inputs)?;
    }
    let found = inputs::discover(&opts.checkpoints)?.files;
    let selected = inputs::select(&found, &opts.selection)?;
    // A TensorFlow run binds through a layout map derived from the checkpoint the model was
    // exported from: tried newest first.
    binder.prepare_map(found.iter().rev().map(|f| inputs::open_checkpoint(&f.path, opts.key.as_deref())))?;
    let read = files_read(&binder, &found, opts)?;
    let mut named: Vec<&Path> = read.iter().map(PathBuf::as_path).collect();
    named.extend(opts.checkpoints.iter().map(PathBuf::as_path));
    refuse_holding_inputs(&out, &named)?;
    // Nor inside a folder of samples (`read` holds no checkpoint directory: a run may be written
    // beside its checkpoints).
    let read_paths: Vec<&Path> = read.iter().map(PathBuf::as_path).collect();
    crate::fs::refuse_overwrite(&out, &read_paths)?;
    let stamps = Stamps::of(&read)?;

    let mut dirs = crate::fs::OutputDirs::default();
    dirs.create_parents(&out)?;
    let work = StagedDir::beside(&out, "swa-run")?;

    let names = inputs::labels(&found);
    let mut ensembles = if opts.ensemble {
        if selected.len() < 2 {
            return Err(Error::usage(format!(
                "an ensemble needs at least two checkpoints; {} selected",
                selected.len()
            )));
        }
        Some(Ensembles {
            stored: crate::ensemble::mean_for(&opts.eval)?,
            recalibrated: crate::ensemble::mean_for(&opts.eval)?,
            first: None,
            seconds_stored: 0.0,
            seconds_recalibrated: 0.0,
        })
    } else {
        None
    };
    let rows = evaluate_checkpoints(&binder, &found, &names, &selected, ensembles.as_mut(), opts)?;
    clock.lap("evaluate checkpoints");
    let ensemble_rows = match &ensembles {
        Some(e) => {
            let (first_stored, first_recalibrated) = e.first.as_ref().expect("two members");
            let stored = crate::ensemble::score(&e.stored, &opts.model, &opts.eval, first_stored)?;
            let recalibrated = crate::ensemble::score(&e.recalibrated, &opts.model, &opts.eval, first_recalibrated)?;
            Some((stored, recalibrated))
        }
        None => None,
    };
    let swa = swa(&binder, &selected, work.path(), opts, &mut clock)?;
    let soup = match &opts.soup {
        Some(soup) => {
            let report = make_soup(&found, &names, work.path(), soup, opts)?;
            clock.lap("soup");
            Some(report)
        }
        None => None,
    };
    let swag = match &opts.swag {
        Some(s) => {
            let mut pass = opts.pass.clone();
            if s.bn_samples.is_some() {
                pass.max_samples = s.bn_samples;
            }
            let summary = crate::swag::swag(&crate::swag::SwagOptions {
                model: opts.model.clone(),
                checkpoints: selected.iter().map(|f| f.path.clone()).collect(),
                selection: Selection::default(),
                key: opts.key.clone(),
                allow_missing_weights: opts.allow_missing_weights,
                rank: s.rank,
                diagonal: s.diagonal,
                samples: s.samples,
                scale: s.scale,
                seed: opts.pass.seed,
                draws: s.draws.clone(),
                pass,
                eval: opts.eval.clone(),
                part: crate::part::Part::WHOLE,
                save_moments: None,
                save_samples: None,
                part_output: None,
                quiet: opts.pass.quiet,
            })?;
            clock.lap("SWAG");
            Some(summary)
        }
        None => None,
    };
    let best = Report::best_of(&rows).expect("discovery finds at least one checkpoint");
    let swa_recalibrated = swa.recalibrated.score();
    // The task as scored: top-k capped at the model's classes.
    let task = swa.recalibrated.metrics.task();
    let report = Report {
        tool: crate::VERSION.into(),
        model: file_name(&opts.model),
        train_samples: swa.pass.samples,
        eval_samples: swa_recalibrated.samples(),
        stats: opts.pass.stats.to_string(),
        batch_size: opts.pass.batch_size.get(),
        task: task.clone(),
        device: opts.pass.engine.device.to_string(),
        gain: crate::tasks::Gain::of(&task, swa_recalibrated.value() - best.figures.value()),
        averaged: selected
            .iter()
            .filter_map(|s| found.iter().position(|f| f.path == s.path).map(|i| names[i].clone()))
            .collect(),
        checkpoints: rows,
        swa_stored: swa.stored.score(),
        swa_recalibrated,
        best,
        timings: clock.timings,
        data: data_lines(&swa),
        soup,
        comparison: Vec::new(),
        temperature: swa.tempered.as_ref().and_then(|(e, _)| e.temperature.as_ref()).and_then(|t| t.fit.clone()),
    };
    let mut report = report;
    if opts.ensemble || opts.swag.is_some() || opts.temperature.is_some() {
        let ensembles = match (&ensembles, ensemble_rows) {
            (Some(e), Some((stored, recalibrated))) => Some((e, stored, recalibrated, selected.len())),
            _ => None,
        };
        report.comparison = comparison(&report, ensembles, swag.as_ref(), swa.tempered.as_ref());
    }
    write_outputs(work.path(), &swa, &report, &selected, opts)?;
    stamps.check()?;
    publish(work, &out, replace)?;
    Ok((report, dirs.keep()))
}
