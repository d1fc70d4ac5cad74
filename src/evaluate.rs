//! Evaluation: a model run over held-out samples, its outputs scored by a task
//! ([`crate::tasks`]: classification today) against the samples' targets, whole or one part of
//! the batches (for a merge, [`crate::parts::eval`]).

use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Setting};
use crate::inputs::samples::masks::{self, MaskMap, Masks};
use crate::inputs::samples::WithTargets;
use crate::inputs::{self, DataOptions, Samples};
use crate::onnx::Model;
use crate::part::Part;
use crate::progress;
use crate::runtime::{self, Engine};
pub use crate::tasks::{Metrics, Score, State, Task};

/// What an evaluation found: the task's figures, and what happened to the data.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evaluation {
    /// The task's figures.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Images skipped because they could not be decoded (`skip_bad_images`), each with why; not
    /// counted in the figures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// How images were read and preprocessed (absent for float arrays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<String>,
    /// The temperature the logits were divided by, and the figures before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Temperature>,
}

/// Temperature scaling as applied to an evaluation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Temperature {
    /// T: the logits were divided by it.
    pub value: f64,
    /// The fit, where T was fitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit: Option<crate::tasks::temperature::Fit>,
    /// The figures without it (T = 1).
    pub before: Score,
}

/// Where a temperature comes from.
#[derive(Debug, Clone)]
pub enum TemperatureSource {
    /// This value.
    Given(f64),
    /// Fitted on these held-out samples (never the evaluation's own).
    Fit(Box<EvalOptions>),
}

impl Evaluation {
    /// The compact figures.
    pub fn score(&self) -> Score {
        self.metrics.score()
    }
}

/// What an evaluation, or one part of it, counted: the task's state (exact under merge) and the
/// images skipped. This is what a part writes and parts merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// The task's state.
    #[serde(flatten)]
    pub state: State,
    /// Images skipped because they could not be decoded, each with why.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// How the samples were read and preprocessed (`None` for float arrays).
    #[serde(default)]
    pub preprocessing: Option<String>,
    /// The samples' names of their classes (class folders, a Parquet `ClassLabel`), by index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
}

impl Counts {
    /// Nothing counted yet, for `task`.
    pub fn new(task: &Task) -> Self {
        Counts { state: task.state(), skipped: Vec::new(), preprocessing: None, class_names: None }
    }

    /// Samples counted so far.
    pub fn samples(&self) -> usize {
        self.state.samples()
    }

    /// Images skipped so far (not counted in [`Counts::samples`]).
    pub fn skipped(&self) -> usize {
        self.skipped.len()
    }

    /// Adds another part's counts; fails when they cannot be parts of one evaluation.
    pub fn merge(&mut self, other: &Counts) -> std::result::Result<(), String> {
        self.state.merge(&other.state)?;
        if let (Some(a), Some(b)) = (&self.preprocessing, &other.preprocessing) {
            if a != b {
                return Err(format!("images preprocessed differently ({a} vs {b})"));
            }
        }
        if let (Some(a), Some(b)) = (&self.class_names, &other.class_names) {
            if a != b {
                return Err("classes named differently".into());
            }
        }
        self.skipped.extend(other.skipped.iter().cloned());
        if self.preprocessing.is_none() {
            self.preprocessing.clone_from(&other.preprocessing);
        }
        if self.class_names.is_none() {
            self.class_names.clone_from(&other.class_names);
        }
        Ok(())
    }

    /// The evaluation so far (a metric command runs here).
    pub fn finish(&self) -> Result<Evaluation> {
        let mut metrics = self.state.finish()?;
        if let Some(names) = &self.class_names {
            metrics.name_classes(names);
        }
        Ok(Evaluation {
            metrics,
            skipped: self.skipped.clone(),
            preprocessing: self.preprocessing.clone(),
            temperature: None,
        })
    }
}

/// Held-out data and how to run over it.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Inputs: an `.npy` / `.npz`, an image folder, Parquet (see [`Samples::open`]).
    pub inputs: PathBuf,
    /// The targets (`.npy`, typed by the task: class indices, float values, multi-hot rows,
    /// masks); `None` takes them from the inputs (class folders, a Parquet label column) or, for
    /// segmentation, from `masks` or the masks a known dataset layout keeps beside the images.
    pub labels: Option<PathBuf>,
    /// A folder of segmentation masks paired with the image files by name.
    pub masks: Option<PathBuf>,
    /// A remapping of mask values.
    pub mask_map: Option<MaskMap>,
    /// Where to write every sample's outputs, prediction and target (an `.npz`).
    pub save_outputs: Option<PathBuf>,
    /// Runs the model and drops its outputs unscored: a benchmark's measure of the forward pass
    /// alone, against which the cost of scoring is measured. The figures are then of no sample.
    pub unscored: bool,
    /// How the inputs are read and preprocessed.
    pub data: DataOptions,
    /// Samples per batch.
    pub batch_size: NonZeroUsize,
    /// What the outputs are scored as.
    pub task: Task,
    /// Where and how to run.
    pub engine: Engine,
    /// Hide progress.
    pub quiet: bool,
}

impl EvalOptions {
    /// Classification of `inputs` against `labels` in batches of 256, with top-5, on the CPU.
    pub fn new(inputs: impl Into<PathBuf>, labels: impl Into<PathBuf>) -> Self {
        EvalOptions {
            inputs: inputs.into(),
            labels: Some(labels.into()),
            masks: None,
            mask_map: None,
            save_outputs: None,
            unscored: false,
            data: DataOptions::default(),
            batch_size: NonZeroUsize::new(256).expect("non-zero"),
            task: Task::default(),
            engine: Engine::default(),
            quiet: false,
        }
    }
}

/// Everything `swa evaluate` needs: the model, the weights to bind into it first, the held-out data.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// The ONNX model.
    pub model: PathBuf,
    /// Tensors to bind into it first.
    pub weights: Option<PathBuf>,
    /// The state dict to read when the weights are a `torch.save` file.
    pub key: Option<String>,
    /// Keep the model's own values for weights the checkpoint lacks.
    pub allow_missing_weights: bool,
    /// The held-out data and how to run over it.
    pub eval: EvalOptions,
    /// Temperature scaling.
    pub temperature: Option<TemperatureSource>,
}

/// Binds the weights into the model and evaluates it, as `opts` says.
pub fn run(opts: &EvaluateOptions) -> Result<Evaluation> {
    let weights = opts.weights.as_deref().map(|w| inputs::open_checkpoint(w, opts.key.as_deref())).transpose()?;
    let bound = crate::onnx::bind::Binder::load(&opts.model)?.bind(weights, opts.allow_missing_weights)?;
    match &opts.temperature {
        None => evaluate(&bound.model, &opts.eval),
        Some(source) => evaluate_with_temperature(&bound.model, &opts.eval, source),
    }
}

/// The logits of `model` on `calibration` with their class indices: what a temperature is fitted on.
pub fn fit_temperature(model: &Model, calibration: &EvalOptions) -> Result<crate::tasks::temperature::Fit> {
    if !matches!(calibration.task, Task::Classification(_)) {
        return Err(Error::usage(format!(
            "temperature scaling divides a classifier's logits; it does not apply to {}",
            calibration.task.name()
        )));
    }
    let (mut logits, mut labels, mut classes) = (Vec::new(), Vec::new(), 0);
    let plain = EvalOptions { save_outputs: None, ..calibration.clone() };
    evaluate_into(model, &plain, &mut |_, out, targets| {
        classes = out.shape.get(1).copied().unwrap_or(0) as usize;
        logits.extend_from_slice(&out.data);
        if let Some(crate::batch::Values::I64(y)) = targets.map(|t| t.values.to_owned()) {
            labels.extend(y);
        }
        Ok(())
    })?;
    crate::tasks::temperature::fit(&logits, classes, &labels).map_err(|why| {
        Error::format(
            &calibration.inputs,
            format!("gives no temperature (the logits of {}): {why}", model.path.display()),
        )
    })
}

/// Evaluates `model` with its logits divided by a temperature (given, or fitted first), in one
/// pass that also counts the figures without it.
pub fn evaluate_with_temperature(model: &Model, opts: &EvalOptions, source: &TemperatureSource) -> Result<Evaluation> {
    let (t, fit) = match source {
        TemperatureSource::Given(t) => (*t, None),
        TemperatureSource::Fit(calibration) => {
            let fit = fit_temperature(model, calibration)?;
            (fit.temperature, Some(fit))
        }
    };
    Ok(evaluate_tempered(model, opts, t, fit)?.1)
}

/// One pass of `model` over `opts`' samples giving its figures without and with its logits
/// divided by `t` (`fit`: how T was found): `(before, after)`.
pub fn evaluate_tempered(
    model: &Model,
    opts: &EvalOptions,
    t: f64,
    fit: Option<crate::tasks::temperature::Fit>,
) -> Result<(Evaluation, Evaluation)> {
    if !(t.is_finite() && t > 0.0 && matches!(opts.task, Task::Classification(_))) {
        return Err(Error::setting(
            Setting::Temperature,
            format!(
                "{t} applies to a classifier's logits, with T a positive number (the task is {})",
                opts.task.name()
            ),
        ));
    }
    let mut tempered = Counts::new(&opts.task);
    let model_path = model.path.clone();
    let targets_path = opts.labels.clone().unwrap_or_else(|| opts.inputs.clone());
    let at = crate::tasks::Context {
        model: &model_path,
        output: "the logits divided by the temperature",
        inputs: &opts.inputs,
        targets: &targets_path,
        classes: None,
        names: None,
    };
    let before = evaluate_into(model, opts, &mut |indices, out, targets| {
        let scaled = runtime::Fetched {
            shape: out.shape.clone(),
            data: out.data.iter().map(|&v| (v as f64 / t) as f32).collect(),
        };
        tempered.state.update(&scaled, targets, indices, &at)
    })?;
    let mut after = tempered.finish()?;
    after.skipped.clone_from(&before.skipped);
    after.preprocessing.clone_from(&before.preprocessing);
    after.temperature = Some(Temperature { value: t, fit, before: before.score() });
    Ok((before, after))
}

/// The name of the model's first output, which must be float32 logits where its type is declared.
fn logits_output(model: &Model) -> Result<String> {
    use crate::onnx::proto::type_proto;
    let output = model.graph().output.first().ok_or_else(|| Error::format(&model.path, "has no output"))?;
    let declared = match output.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t.elem_type,
        _ => None,
    };
    match declared {
        Some(elem) if elem != crate::onnx::DataType::Float as i32 => Err(Error::format(
            &model.path,
            format!(
                "first output `{}` is {}; evaluation expects float32 logits [N, classes] as the first output",
                output.name(),
                crate::onnx::dtype_of(elem).map_or(format!("element type {elem}"), crate::checkpoint::dtype::name)
            ),
        )),
        _ => Ok(output.name().to_string()),
    }
}

/// The samples of an evaluation with their labels: the labels file's, or the samples' own (class
/// folders, a Parquet label column), and the path messages about them name. Both at once is an
/// error.
fn with_labels(samples: Samples, opts: &EvalOptions) -> Result<(Samples, PathBuf)> {
    // Batches made by the caller carry their masks themselves.
    let own_masks = samples.own_batches() && samples.has_targets() && opts.masks.is_none();
    let segmentation = matches!(opts.task, Task::Segmentation(_));
    // A metric command scores masks too, when given a folder of them.
    let wants_masks = segmentation || (matches!(opts.task, Task::Command(_)) && opts.masks.is_some());
    if let (Some(labels), Some(masks)) = (&opts.labels, &opts.masks) {
        return Err(Error::usage(format!(
            "masks are given twice, as the array {} and as the folder {}: give one",
            labels.display(),
            masks.display()
        )));
    }
    if opts.labels.is_none() && wants_masks && !own_masks {
        let (dir, layout) =
            match (&opts.masks, masks::detect(&opts.inputs)) {
                (Some(dir), _) => (dir.clone(), masks::Layout::Folder),
                (None, Some((dir, layout))) => {
                    crate::error::warn(format!(
                        "{}: masks from {} ({})",
                        opts.inputs.display(),
                        dir.display(),
                        layout.describe()
                    ));
                    (dir, layout)
                }
                (None, None) => return Err(Error::format(
                    &opts.inputs,
                    "has no masks: segmentation needs a mask per image (a folder of masks paired by file name, or a \
                     .npy of masks [N, H, W]); VOC, Cityscapes and ADE20K folders are found beside their images",
                )),
            };
        let ignore = match &opts.task {
            Task::Segmentation(t) => t.ignore_index,
            _ => crate::tasks::segmentation::IGNORE_INDEX,
        };
        let path = samples.path.clone();
        let masks = Masks::new(&*samples, &opts.inputs, &dir, layout, opts.mask_map.clone(), ignore)?;
        let source = WithTargets::new(samples.into_source(), masks);
        return Ok((Samples::from_source(path, Box::new(source)), dir));
    }
    if opts.mask_map.is_some() || opts.masks.is_some() {
        return Err(Error::usage(if own_masks || (segmentation && samples.own_batches()) {
            "the batches carry their own masks: a mask folder or a mask map does not apply to them".to_string()
        } else if segmentation {
            "a mask map applies to masks read from a folder, not to an array of masks".to_string()
        } else {
            format!("masks are the targets of segmentation (or of a metric command), not of {}", opts.task.name())
        }));
    }
    let own = samples.has_targets() && (opts.task.uses_source_targets() || own_masks);
    match (&opts.labels, own) {
        (Some(file), false) => {
            let targets = if inputs::table::is_table(file) {
                let n = samples.len().unwrap_or(0);
                let files: Option<Vec<PathBuf>> = (0..n).map(|i| samples.image_file(i)).collect();
                let files = files.filter(|f| !f.is_empty()).ok_or_else(|| {
                    Error::format(
                        file,
                        format!(
                            "is a table of targets by file name, but {} is not a folder of image files",
                            opts.inputs.display()
                        ),
                    )
                })?;
                inputs::table::targets_for(file, &opts.inputs, &files)?
            } else {
                opts.task.read_targets(file)?
            };
            let rows = targets.shape.first().copied().unwrap_or(0);
            if samples.len() != Some(rows) {
                let count = samples.len().map_or("an unknown number of".to_string(), |n| n.to_string());
                return Err(Error::format(
                    file,
                    format!("has {rows} labels for {count} samples in {}", opts.inputs.display()),
                ));
            }
            Ok((samples.with_targets(targets), file.clone()))
        }
        (Some(file), true) => Err(Error::usage(format!(
            "{} carries its own labels ({}), and labels were also given in {}: leave out the labels file",
            opts.inputs.display(),
            if samples.classes().is_some() { "class folders" } else { "a label column" },
            file.display()
        ))),
        (None, true) => Ok((samples, opts.inputs.clone())),
        (None, false) => match samples.why_no_targets() {
            Some(why) => Err(Error::format(
                &opts.inputs,
                format!("has no labels: {why}; give a labels file (.npy of class indices), or name the label column"),
            )
            .hint(crate::error::Hint::LabelColumn)),
            None => Err(Error::format(
                &opts.inputs,
                "has no labels: give a labels file (.npy of class indices), or use an image folder with one folder \
                 per class, or Parquet with a label column",
            )),
        },
    }
}

/// Evaluates `model` (weights already bound) on the labelled data; an empty set is an error.
/// Writes every sample's outputs where `opts.save_outputs` says, once the figures are known.
pub fn evaluate(model: &Model, opts: &EvalOptions) -> Result<Evaluation> {
    let staged = opts.save_outputs.as_deref().map(|p| {
        crate::fs::check_output(p)?;
        Ok::<_, Error>(p)
    });
    let staged = staged.transpose()?;
    let mut saved = staged.map(|_| Saved::default());
    let (counts, _) = pass(model, opts, Part::WHOLE, saved.as_mut(), None)?;
    let evaluation = counts.finish()?;
    if let (Some(path), Some(saved)) = (staged, saved) {
        let bytes = saved.npz(&opts.task)?;
        crate::fs::StagedFile::with_bytes(path, &bytes)?.publish()?;
    }
    Ok(evaluation)
}

/// What a pass hands every batch's outputs to besides the task: the batch's sample indices, the
/// outputs as scored (after any temperature) and the targets.
pub type Sink<'a> = &'a mut dyn FnMut(&[usize], &runtime::Fetched, Option<&crate::batch::Tensor>) -> Result<()>;

/// [`evaluate`], handing every batch's outputs to `sink` too (an ensemble's running sum of
/// predictions, the logits a temperature is fitted on).
pub fn evaluate_into(model: &Model, opts: &EvalOptions, sink: Sink) -> Result<Evaluation> {
    let (counts, _) = pass(model, opts, Part::WHOLE, None, Some(sink))?;
    counts.finish()
}

/// Every sample's outputs, name and target, in sample order, for `save_outputs`.
#[derive(Default)]
struct Saved {
    ids: Vec<String>,
    numbered: bool,
    shape: Vec<usize>,
    outputs: Vec<f32>,
    targets: Vec<crate::batch::Tensor>,
}

impl Saved {
    fn add(&mut self, samples: &Samples, batch: &crate::batch::Batch, out: &runtime::Fetched) {
        for &i in &batch.indices {
            match samples.sample_name(i) {
                Some(name) => self.ids.push(name),
                None => {
                    self.numbered = true;
                    self.ids.push(i.to_string());
                }
            }
        }
        self.shape = out.shape.iter().skip(1).map(|&d| d as usize).collect();
        self.outputs.extend_from_slice(&out.data);
        if let Some(t) = &batch.targets {
            self.targets.push(t.clone());
        }
    }

    /// The `.npz`: `ids` (file names, or row numbers as int64), `outputs`, `predictions` (where
    /// the task makes them), `targets`.
    fn npz(&self, task: &Task) -> Result<Vec<u8>> {
        use crate::inputs::npy::{npy_bytes, npz_bytes, Data};
        let n = self.ids.len();
        let mut arrays = Vec::new();
        if self.numbered {
            let rows: Vec<i64> = self.ids.iter().map(|i| i.parse().unwrap_or(-1)).collect();
            arrays.push(("ids", npy_bytes(&[n], Data::I64(&rows))));
        } else {
            arrays.push(("ids", npy_bytes(&[n], Data::Str(&self.ids))));
        }
        let shape = [&[n][..], &self.shape].concat();
        arrays.push(("outputs", npy_bytes(&shape, Data::F32(&self.outputs))));
        match crate::tasks::predictions(task, &self.outputs, &shape) {
            Some((shape, crate::tasks::Predictions::I64(v))) => {
                arrays.push(("predictions", npy_bytes(&shape, Data::I64(&v))))
            }
            Some((shape, crate::tasks::Predictions::U8(v))) => {
                arrays.push(("predictions", npy_bytes(&shape, Data::U8(&v))))
            }
            None => {}
        }
        let targets: Vec<&crate::batch::Tensor> = self.targets.iter().collect();
        if let Some(bytes) = crate::inputs::npy::tensors_npy(&targets) {
            arrays.push(("targets", bytes));
        }
        npz_bytes(&arrays)
    }
}

/// Evaluates `model` on `part` of the batches (contiguous, whole batches: see
/// [`crate::part::pass_range`]); returns the counts and the number of samples in the whole set.
pub fn accumulate(model: &Model, opts: &EvalOptions, part: Part) -> Result<(Counts, usize)> {
    pass(model, opts, part, None, None)
}

/// [`accumulate`], keeping every sample's outputs in `saved` where given.
fn pass(
    model: &Model,
    opts: &EvalOptions,
    part: Part,
    mut saved: Option<&mut Saved>,
    mut sink: Option<Sink>,
) -> Result<(Counts, usize)> {
    let batch_size = opts.batch_size.get();
    let specs = crate::onnx::input_specs(model)?;
    let samples = Samples::open(&opts.inputs, &specs, &opts.data)?;
    let (samples, labels_path) = with_labels(samples, opts)?;
    if samples.is_empty() {
        return Err(Error::format(&opts.inputs, "has no samples: there is nothing to evaluate"));
    }
    let output = logits_output(model)?;
    if !samples.own_batches() {
        runtime::check_batch(&specs, batch_size, samples.len(), true)?;
    }
    let range = crate::part::pass_range(samples.len(), batch_size, part, Setting::Shard)?;
    let streams = runtime::concurrent_runs(&opts.engine, range.batches.len())?;
    let mut sessions = runtime::sessions_for(model, &opts.engine, false, streams)?;
    let mut acc = Counts::new(&opts.task);
    acc.preprocessing = samples.preprocessing();
    acc.class_names = samples.classes().map(<[String]>::to_vec);
    let span = samples.len().map(|_| range.samples.len() as u64);
    let bar = progress::samples_bar(span, "evaluating", opts.quiet);
    let batches = samples.batches(range.samples.clone(), batch_size)?;
    let name_of = |i: usize| samples.target_name(i).or_else(|| samples.sample_name(i)).unwrap_or_else(|| i.to_string());
    let at = crate::tasks::Context {
        model: &model.path,
        output: &output,
        inputs: &opts.inputs,
        targets: &labels_path,
        classes: samples.classes(),
        names: Some(&name_of),
    };
    let ran = runtime::run_batches(&mut sessions, &specs, batches, &[&output], &bar, |batch, out| {
        if opts.unscored {
            return Ok(());
        }
        acc.state.update(&out[0], batch.targets.as_ref(), &batch.indices, &at)?;
        if let Some(sink) = sink.as_deref_mut() {
            sink(&batch.indices, &out[0], batch.targets.as_ref())?;
        }
        if let Some(saved) = saved.as_deref_mut() {
            saved.add(&samples, &batch, &out[0]);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    acc.skipped = samples.skipped();
    // A part of a sharded evaluation may have skipped all its images: it still stands for its
    // range, and the merge refuses parts that together counted nothing.
    if acc.samples() == 0 && part == Part::WHOLE && !opts.unscored {
        return Err(Error::format(
            &opts.inputs,
            format!(
                "left no samples to evaluate after skipping {} images that could not be decoded",
                acc.skipped.len()
            ),
        ));
    }
    Ok((acc, samples.len().unwrap_or(ran.samples)))
}
