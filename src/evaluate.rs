//! Classification metrics from logits: top-1, top-k, mean cross-entropy, per-class accuracy.
//!
//! A sample whose logits are not all finite (NaN or ±Inf anywhere in its row) is never a correct
//! prediction: it counts as wrong for top-1 and top-k, is counted in [`Metrics::nonfinite`], and is
//! left out of the mean cross-entropy (which is NaN when no sample has finite logits). Comparisons
//! with NaN are false, so without this rule an all-NaN model would be "100% correct".

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::{Tensor, Values};
use crate::error::{Error, Result, Setting};
use crate::inputs::{self, DataOptions, Samples};
use crate::onnx::Model;
use crate::part::Part;
use crate::progress;
use crate::runtime::{self, Engine};

/// Metrics over a labelled set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    /// Samples evaluated.
    pub samples: usize,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Top-1 accuracy.
    pub top1: f64,
    /// k of top-k.
    pub k: usize,
    /// Top-k accuracy.
    pub topk: f64,
    /// Mean cross-entropy over the samples with finite logits (NaN when there are none).
    pub loss: f64,
    /// Accuracy per class (classes with samples).
    pub per_class: Vec<ClassAccuracy>,
    /// Samples whose logits were not all finite (NaN or Inf): counted wrong, left out of `loss`.
    pub nonfinite: usize,
    /// Images skipped because they could not be decoded (`skip_bad_images`), each with why; not
    /// counted in `samples`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// How images were read and preprocessed (absent for float arrays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<String>,
}

/// Metrics of one model on the held-out set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Score {
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Samples.
    pub samples: usize,
    /// Top-1 accuracy.
    pub top1: f64,
    /// Top-k accuracy.
    pub topk: f64,
    /// Mean cross-entropy over the samples with finite logits (NaN, `null` in JSON, when none).
    #[serde(deserialize_with = "null_is_nan")]
    pub loss: f64,
    /// Samples whose logits were not all finite: counted wrong, left out of `loss` (absent in
    /// reports written before it existed).
    #[serde(default)]
    pub nonfinite: usize,
}

/// Reads a number that JSON wrote as `null` because it was NaN.
fn null_is_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl From<&Metrics> for Score {
    fn from(m: &Metrics) -> Self {
        Score {
            correct: m.correct,
            samples: m.samples,
            top1: m.top1,
            topk: m.topk,
            loss: m.loss,
            nonfinite: m.nonfinite,
        }
    }
}

/// One class's accuracy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassAccuracy {
    /// Class index.
    pub class: usize,
    /// Samples of that class.
    pub samples: usize,
    /// Top-1 accuracy on them.
    pub accuracy: f64,
}

/// Accumulates metrics batch by batch: exact counts and an f64 sum of the losses, which is what a
/// part of an evaluation writes ([`crate::parts::eval`]) and parts merge by adding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsAccumulator {
    k: usize,
    classes: Option<usize>,
    samples: usize,
    correct: usize,
    correct_k: usize,
    loss: f64,
    nonfinite: usize,
    per_class: Vec<(usize, usize)>,
    /// Images skipped because they could not be decoded, each with why.
    #[serde(default)]
    skipped: Vec<String>,
    /// How the samples were read and preprocessed (`None` for float arrays).
    #[serde(default)]
    preprocessing: Option<String>,
}

impl MetricsAccumulator {
    /// Counting top-`k`.
    pub fn new(k: usize) -> Self {
        MetricsAccumulator {
            k: k.max(1),
            classes: None,
            samples: 0,
            correct: 0,
            correct_k: 0,
            loss: 0.0,
            nonfinite: 0,
            per_class: Vec::new(),
            skipped: Vec::new(),
            preprocessing: None,
        }
    }

    /// Adds a batch of logits [n, classes] (row-major) and their labels.
    pub fn add(&mut self, logits: &[f32], classes: usize, labels: &[i64], labels_path: &Path) -> Result<()> {
        self.classes.get_or_insert(classes);
        self.per_class.resize(classes, (0, 0));
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            if label < 0 || label as usize >= classes {
                return Err(Error::format(
                    labels_path,
                    format!(
                        "label {label} at sample {} is out of range for {classes} classes (the model's logits)",
                        self.samples
                    ),
                ));
            }
            let y = label as usize;
            self.per_class[y].0 += 1;
            self.samples += 1;
            if !row.iter().all(|v| v.is_finite()) {
                self.nonfinite += 1;
                continue;
            }
            let target = row[y];
            let above = row.iter().enumerate().filter(|&(j, &v)| v > target || (v == target && j < y)).count();
            if above == 0 {
                self.correct += 1;
                self.per_class[y].1 += 1;
            }
            if above < self.k {
                self.correct_k += 1;
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            self.loss += lse - target as f64;
        }
        Ok(())
    }

    /// Adds another part's counts and loss sum (the same k); fails when the parts' models give
    /// different numbers of classes.
    pub fn merge(&mut self, other: &MetricsAccumulator) -> std::result::Result<(), String> {
        if self.k != other.k {
            return Err(format!("top-{} and top-{} counts cannot be added", self.k, other.k));
        }
        match (self.classes, other.classes) {
            (Some(a), Some(b)) if a != b => return Err(format!("logits of {a} and of {b} classes")),
            (None, Some(b)) => self.classes = Some(b),
            _ => {}
        }
        self.samples += other.samples;
        self.correct += other.correct;
        self.correct_k += other.correct_k;
        self.loss += other.loss;
        self.nonfinite += other.nonfinite;
        if self.per_class.len() < other.per_class.len() {
            self.per_class.resize(other.per_class.len(), (0, 0));
        }
        for (mine, theirs) in self.per_class.iter_mut().zip(&other.per_class) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
        if let (Some(a), Some(b)) = (&self.preprocessing, &other.preprocessing) {
            if a != b {
                return Err(format!("images preprocessed differently ({a} vs {b})"));
            }
        }
        self.skipped.extend(other.skipped.iter().cloned());
        if self.preprocessing.is_none() {
            self.preprocessing.clone_from(&other.preprocessing);
        }
        Ok(())
    }

    /// Samples counted so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Images skipped so far (not counted in [`Self::samples`]).
    pub fn skipped(&self) -> usize {
        self.skipped.len()
    }

    /// The metrics so far.
    pub fn finish(&self) -> Metrics {
        let n = self.samples.max(1) as f64;
        Metrics {
            samples: self.samples,
            correct: self.correct,
            top1: self.correct as f64 / n,
            k: self.k,
            topk: self.correct_k as f64 / n,
            loss: match self.samples - self.nonfinite {
                0 => f64::NAN,
                finite => self.loss / finite as f64,
            },
            nonfinite: self.nonfinite,
            per_class: self
                .per_class
                .iter()
                .enumerate()
                .filter(|(_, (total, _))| *total > 0)
                .map(|(class, &(total, ok))| ClassAccuracy {
                    class,
                    samples: total,
                    accuracy: ok as f64 / total as f64,
                })
                .collect(),
            skipped: self.skipped.clone(),
            preprocessing: self.preprocessing.clone(),
        }
    }
}

/// Held-out data and how to run over it.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Inputs: an `.npy` / `.npz`, an image folder, Parquet (see [`Samples::open`]).
    pub inputs: PathBuf,
    /// Integer labels (`.npy`); `None` takes them from the inputs (class folders, a Parquet
    /// label column).
    pub labels: Option<PathBuf>,
    /// How the inputs are read and preprocessed.
    pub data: DataOptions,
    /// Samples per batch.
    pub batch_size: NonZeroUsize,
    /// k of top-k.
    pub top_k: NonZeroUsize,
    /// Where and how to run.
    pub engine: Engine,
    /// Hide progress.
    pub quiet: bool,
}

impl EvalOptions {
    /// Evaluation of `inputs` against `labels` in batches of 256, with top-5, on the CPU.
    pub fn new(inputs: impl Into<PathBuf>, labels: impl Into<PathBuf>) -> Self {
        EvalOptions {
            inputs: inputs.into(),
            labels: Some(labels.into()),
            data: DataOptions::default(),
            batch_size: NonZeroUsize::new(256).expect("non-zero"),
            top_k: NonZeroUsize::new(5).expect("non-zero"),
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
}

/// Binds the weights into the model and evaluates it, as `opts` says.
pub fn run(opts: &EvaluateOptions) -> Result<Metrics> {
    let weights = opts.weights.as_deref().map(|w| inputs::open_checkpoint(w, opts.key.as_deref())).transpose()?;
    let bound = crate::onnx::bind::Binder::load(&opts.model)?.bind(weights, opts.allow_missing_weights)?;
    evaluate(&bound.model, &opts.eval)
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
    match (&opts.labels, samples.has_targets()) {
        (Some(file), false) => {
            let labels = inputs::open_labels(file)?;
            if samples.len() != Some(labels.len()) {
                let count = samples.len().map_or("an unknown number of".to_string(), |n| n.to_string());
                return Err(Error::format(
                    file,
                    format!("has {} labels for {count} samples in {}", labels.len(), opts.inputs.display()),
                ));
            }
            Ok((samples.with_targets(Tensor::i64(vec![labels.len()], labels)), file.clone()))
        }
        (Some(file), true) => Err(Error::usage(format!(
            "{} carries its own labels ({}), and labels were also given in {}: leave out the labels file",
            opts.inputs.display(),
            if samples.classes().is_some() { "class folders" } else { "a label column" },
            file.display()
        ))),
        (None, true) => Ok((samples, opts.inputs.clone())),
        (None, false) => Err(Error::format(
            &opts.inputs,
            "has no labels: give a labels file (.npy of class indices), or use an image folder with one folder per \
             class, or Parquet with a label column",
        )),
    }
}

/// Evaluates `model` (weights already bound) on the labelled data; an empty set is an error.
pub fn evaluate(model: &Model, opts: &EvalOptions) -> Result<Metrics> {
    Ok(accumulate(model, opts, Part::WHOLE)?.0.finish())
}

/// Evaluates `model` on `part` of the batches (contiguous, whole batches: see
/// [`crate::part::pass_range`]); returns the counts and the number of samples in the whole set.
pub fn accumulate(model: &Model, opts: &EvalOptions, part: Part) -> Result<(MetricsAccumulator, usize)> {
    let batch_size = opts.batch_size.get();
    let specs = crate::onnx::input_specs(model)?;
    let samples = Samples::open(&opts.inputs, &specs, &opts.data)?;
    let (samples, labels_path) = with_labels(samples, opts)?;
    if samples.is_empty() {
        return Err(Error::format(&opts.inputs, "has no samples: there is nothing to evaluate"));
    }
    let output = logits_output(model)?;
    runtime::check_batch(&specs, batch_size, samples.len(), true)?;
    let range = crate::part::pass_range(samples.len(), batch_size, part, Setting::Shard)?;
    let streams = runtime::concurrent_runs(&opts.engine, range.batches.len())?;
    let mut sessions = runtime::sessions_for(model, &opts.engine, false, streams)?;
    let mut acc = MetricsAccumulator::new(opts.top_k.get());
    acc.preprocessing = samples.preprocessing();
    let span = samples.len().map(|_| range.samples.len() as u64);
    let bar = progress::samples_bar(span, "evaluating", opts.quiet);
    let batches = samples.batches(range.samples.clone(), batch_size)?;
    let ran = runtime::run_batches(&mut sessions, &specs, batches, &[&output], &bar, |batch, out| {
        let n = batch.indices.len();
        let runtime::Fetched { shape, data: logits } = &out[0];
        if shape.len() != 2 || shape[0] as usize != n {
            return Err(Error::format(
                &model.path,
                format!(
                    "output `{output}` has shape {shape:?} for a batch of {n}; evaluation needs logits [N, classes]"
                ),
            ));
        }
        if let Some(classes) = samples.classes().filter(|c| c.len() > shape[1] as usize) {
            return Err(Error::format(
                &opts.inputs,
                format!(
                    "has {} class folders, but the model gives logits for {} classes: the folders must be the \
                     model's classes (sorted by name, as torchvision's ImageFolder indexes them)",
                    classes.len(),
                    shape[1]
                ),
            ));
        }
        let labels = match batch.targets.as_ref().map(|t| (&t.values, t.shape.len())) {
            Some((Values::I64(labels), 1)) => labels,
            _ => {
                return Err(Error::format(
                    &labels_path,
                    "holds targets that are not class indices (one integer per sample)",
                ))
            }
        };
        acc.add(logits, shape[1] as usize, labels, &labels_path)?;
        Ok(())
    })?;
    bar.finish_and_clear();
    acc.skipped = samples.skipped();
    if acc.samples() == 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_logits() {
        let logits = [2.0, 1.0, 0.0, 0.0, 1.0, 2.0, 5.0, 4.0, 6.0];
        let mut acc = MetricsAccumulator::new(2);
        acc.add(&logits, 3, &[0, 1, 1], Path::new("y.npy")).unwrap();
        let m = acc.finish();
        assert_eq!((m.samples, m.correct), (3, 1));
        assert!((m.topk - 2.0 / 3.0).abs() < 1e-12);
        let ce = |row: &[f64], y: usize| row.iter().map(|v| v.exp()).sum::<f64>().ln() - row[y];
        let expected = (ce(&[2.0, 1.0, 0.0], 0) + ce(&[0.0, 1.0, 2.0], 1) + ce(&[5.0, 4.0, 6.0], 1)) / 3.0;
        assert!((m.loss - expected).abs() < 1e-9);
        assert!(acc.add(&logits[..3], 3, &[3], Path::new("y.npy")).unwrap_err().to_string().contains("out of range"));
        assert_eq!(m.nonfinite, 0);
    }

    #[test]
    fn non_finite_logits_are_wrong_counted_and_left_out_of_the_loss() {
        let mut acc = MetricsAccumulator::new(2);
        let logits = [f32::NAN, f32::NAN, 0.0, 1.0, f32::INFINITY, 0.0, 3.0, 1.0, 0.0];
        acc.add(&logits, 3, &[0, 0, 0], Path::new("y.npy")).unwrap();
        let m = acc.finish();
        assert_eq!((m.samples, m.correct, m.nonfinite), (3, 1, 2));
        assert!((m.topk - 1.0 / 3.0).abs() < 1e-12);
        let ce = [3.0f64, 1.0, 0.0].iter().map(|v| v.exp()).sum::<f64>().ln() - 3.0;
        assert!((m.loss - ce).abs() < 1e-9, "{}", m.loss);
        assert_eq!(m.per_class, [ClassAccuracy { class: 0, samples: 3, accuracy: 1.0 / 3.0 }]);
        let mut all_nan = MetricsAccumulator::new(1);
        all_nan.add(&[f32::NAN; 2], 2, &[1], Path::new("y.npy")).unwrap();
        let m = all_nan.finish();
        assert_eq!((m.correct, m.nonfinite, m.top1), (0, 1, 0.0));
        assert!(m.loss.is_nan());
    }
}
