//! Classification: logits `[N, classes]` against class indices — top-1, top-k, mean
//! cross-entropy (the NLL), per-class accuracy, and calibration: the expected calibration error
//! over [`BINS`] equal-width confidence bins (Guo et al. 2017: a sample of top-1 confidence c is in
//! bin ⌈c·M⌉, i.e. bins (i/M, (i+1)/M]; ECE = Σ_b |hits_b − Σ_b c| / N) and the Brier score (the
//! mean over samples of Σ_c (p_c − 1[c = y])²), from the softmax of the logits in f64. The score is
//! top-1 accuracy.
//!
//! A sample whose logits are not all finite (NaN or ±Inf anywhere in its row) is never a correct
//! prediction: it counts as wrong for top-1 and top-k, is counted in [`Metrics::nonfinite`], and is
//! left out of the mean cross-entropy (which is NaN when no sample has finite logits). Comparisons
//! with NaN are false, so without this rule an all-NaN model would be "100% correct".

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::{Column, Context, Figure};
use crate::batch::{Tensor, Values};
use crate::error::{Error, Result};
use crate::runtime::Fetched;

/// Classification, and k of its top-k accuracy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    /// k of top-k.
    pub k: usize,
    /// The figure that scores a model, where not top-1 (`topk`, `loss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
}

/// The figures a classification score or gate can name (`topk` is also named `top5` for k = 5);
/// the first is the default score.
/// `nll` names the loss too.
pub const FIGURES: [Figure; 5] = [
    Figure { name: "top1", label: "top-1", higher_is_better: true, percent: true },
    Figure { name: "topk", label: "top-k", higher_is_better: true, percent: true },
    Figure { name: "loss", label: "loss", higher_is_better: false, percent: false },
    Figure { name: "ece", label: "ECE", higher_is_better: false, percent: false },
    Figure { name: "brier", label: "Brier", higher_is_better: false, percent: false },
];

/// Confidence bins of the expected calibration error (Guo et al. 2017 use 15).
pub const BINS: usize = 15;

/// One confidence bin: the samples whose top-1 confidence fell in it, how many of them were
/// right, and the sum of their confidences (a sum, so that parts add exactly).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    /// Samples in the bin.
    pub samples: usize,
    /// Of them, correct top-1 predictions.
    pub correct: usize,
    /// The sum of their top-1 confidences.
    pub confidence: f64,
}

impl Bin {
    /// The bin of confidence `c` ∈ (0, 1]: ⌈c·M⌉ − 1.
    pub fn index(c: f64) -> usize {
        ((c * BINS as f64).ceil() as usize).clamp(1, BINS) - 1
    }
}

/// The expected calibration error of `bins` over `samples` samples (NaN for none).
pub fn ece(bins: &[Bin], samples: usize) -> f64 {
    if samples == 0 {
        return f64::NAN;
    }
    bins.iter().map(|b| (b.correct as f64 - b.confidence).abs()).sum::<f64>() / samples as f64
}

impl Classification {
    /// A fresh state.
    pub fn state(&self) -> State {
        State {
            score: self.score.clone(),
            k: self.k.max(1),
            classes: None,
            samples: 0,
            correct: 0,
            correct_k: 0,
            loss: 0.0,
            nonfinite: 0,
            per_class: Vec::new(),
            calibration: Some(Calibration::default()),
        }
    }

    /// Class indices from a labels file: a 1-D integer `.npy`.
    pub fn read_targets(&self, path: &std::path::Path) -> Result<Tensor> {
        let array = crate::inputs::npy::open_npy(path)?;
        if array.shape.len() != 1 {
            return Err(Error::format(
                path,
                format!(
                    "holds an array of shape {:?}; class indices are one integer per sample{}",
                    array.shape,
                    super::which_targets_fit(&array.shape)
                ),
            ));
        }
        let labels = crate::inputs::open_labels(path)?;
        Ok(Tensor::i64(vec![labels.len()], labels))
    }

    /// The columns of a score, as table headers: `top-1`, `top-k`, `loss`, `ECE`, `Brier`.
    pub fn headers(&self) -> Vec<Column> {
        vec![
            Column::new("top-1", true),
            Column::new(format!("top-{}", self.k), false),
            Column::new("loss", true),
            Column::new("ECE", false),
            Column::new("Brier", false),
        ]
    }
}

/// The calibration counts of a state: the confidence bins and the Brier sum, over the samples with
/// finite logits. Absent in partial evaluations written before they existed (a merge with one
/// has no calibration figures).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    bins: Vec<Bin>,
    brier: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration { bins: vec![Bin::default(); BINS], brier: 0.0 }
    }
}

impl Calibration {
    /// What a count keeps true, given the finite samples and top-1 hits of the state.
    fn check(&self, finite: usize, correct: usize) -> Option<String> {
        let n = self.bins.iter().fold(0usize, |a, b| a.saturating_add(b.samples));
        let hits = self.bins.iter().fold(0usize, |a, b| a.saturating_add(b.correct));
        if self.bins.len() != BINS {
            Some(format!("{} confidence bins, not {BINS}", self.bins.len()))
        } else if n != finite || hits != correct {
            Some(format!("the confidence bins count {n} samples and {hits} hits, the totals {finite} and {correct}"))
        } else if let Some((i, b)) = self.bins.iter().enumerate().find(|(i, b)| {
            // Each confidence in bin i lies in (i/M, (i+1)/M]; NaN fails both bounds.
            let (lo, hi) = (*i as f64 / BINS as f64, (*i + 1) as f64 / BINS as f64);
            let n = b.samples as f64;
            let within = (lo * n * (1.0 - 1e-9)..=hi * n * (1.0 + 1e-9)).contains(&b.confidence);
            b.correct > b.samples || !within
        }) {
            Some(format!(
                "confidence bin {i} holds {} samples, {} hits and a confidence sum of {}",
                b.samples, b.correct, b.confidence
            ))
        } else if !(self.brier >= 0.0 && self.brier <= 2.0 * finite as f64 * (1.0 + 1e-9)) {
            Some(format!("a Brier sum of {} over {finite} samples", self.brier))
        } else {
            None
        }
    }

    fn merge(&mut self, other: &Calibration) {
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            a.samples += b.samples;
            a.correct += b.correct;
            a.confidence += b.confidence;
        }
        self.brier += other.brier;
    }
}

/// Counts and an f64 sum of the losses, batch by batch: what a part of an evaluation writes and
/// parts merge by adding. Read back only if the counts could have been counted (`StateFields`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StateFields")]
pub struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    score: Option<String>,
    k: usize,
    classes: Option<usize>,
    samples: usize,
    correct: usize,
    correct_k: usize,
    loss: f64,
    nonfinite: usize,
    per_class: Vec<(usize, usize)>,
    #[serde(default)]
    calibration: Option<Calibration>,
}

/// [`State`] as a partial evaluation file holds it, before its counts are checked against each
/// other: a damaged or edited file must not merge into a top-1 above 100 % (which passes any
/// gate) or overflow the sums.
#[derive(Deserialize)]
struct StateFields {
    #[serde(default)]
    score: Option<String>,
    k: usize,
    classes: Option<usize>,
    samples: usize,
    correct: usize,
    correct_k: usize,
    loss: f64,
    nonfinite: usize,
    per_class: Vec<(usize, usize)>,
    #[serde(default)]
    calibration: Option<Calibration>,
}

impl TryFrom<StateFields> for State {
    type Error = String;

    /// What [`State::add`] keeps true: k ≥ 1; a top-1 hit is a top-k hit; a sample with
    /// non-finite logits is neither; the classes' counts add up to the totals, each with no more
    /// hits than samples; one class count per class; a loss sum ≥ 0.
    fn try_from(f: StateFields) -> std::result::Result<Self, String> {
        let StateFields { score, k, classes, samples, correct, correct_k, loss, nonfinite, per_class, calibration } = f;
        // Saturating: a sum that overflows cannot equal a total that fits.
        let class_samples = per_class.iter().fold(0usize, |a, &(n, _)| a.saturating_add(n));
        let class_correct = per_class.iter().fold(0usize, |a, &(_, hits)| a.saturating_add(hits));
        let why = if k == 0 {
            Some("k is 0".to_string())
        } else if correct > correct_k || correct_k.checked_add(nonfinite).is_none_or(|n| n > samples) {
            Some(format!(
                "{correct} top-1 and {correct_k} top-{k} hits and {nonfinite} non-finite of {samples} samples"
            ))
        } else if let Some((class, (n, hits))) = per_class.iter().enumerate().find(|(_, (n, hits))| hits > n) {
            Some(format!("class {class} has {hits} hits of {n} samples"))
        } else if class_samples != samples || class_correct != correct {
            Some(format!(
                "the classes count {class_samples} samples and {class_correct} hits, the totals {samples} and {correct}"
            ))
        } else if classes.is_some_and(|c| k >= c) && correct_k + nonfinite != samples {
            Some(format!(
                "top-{k} of {} classes holds every sample, but counts {correct_k} of {samples} ({nonfinite} non-finite)",
                classes.unwrap_or_default()
            ))
        } else if per_class.len() != classes.unwrap_or(0) {
            let of = classes.map_or("no classes".to_string(), |c| format!("{c} classes"));
            Some(format!("{} class counts for {of}", per_class.len()))
        } else if loss.is_nan() || loss < 0.0 {
            Some(format!("a loss sum of {loss}"))
        } else {
            calibration.as_ref().and_then(|c| c.check(samples - nonfinite, correct))
        };
        match why {
            Some(why) => Err(format!("the counts cannot have been counted: {why}")),
            None => {
                Ok(State { score, k, classes, samples, correct, correct_k, loss, nonfinite, per_class, calibration })
            }
        }
    }
}

impl State {
    /// Adds a batch of logits [n, classes] (row-major) and their labels; `labels_path` names
    /// the labels in messages.
    pub fn add(&mut self, logits: &[f32], classes: usize, labels: &[i64], labels_path: &std::path::Path) -> Result<()> {
        let first = self.samples;
        self.add_rows(logits, classes, labels, &mut (first..), labels_path)
    }

    /// [`State::add`] for rows that are samples `indices` of the set (messages name them so).
    fn add_rows(
        &mut self,
        logits: &[f32],
        classes: usize,
        labels: &[i64],
        indices: &mut dyn Iterator<Item = usize>,
        labels_path: &std::path::Path,
    ) -> Result<()> {
        self.classes.get_or_insert(classes);
        self.per_class.resize(classes, (0, 0));
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            let at = indices.next().unwrap_or(self.samples);
            if label < 0 || label as usize >= classes {
                return Err(Error::format(
                    labels_path,
                    format!("label {label} at sample {at} is out of range for {classes} classes (the model's logits)"),
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
            let sum = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>();
            self.loss += max + sum.ln() - target as f64;
            if let Some(c) = &mut self.calibration {
                // p_j = e^(z_j − max) / sum; the top-1 confidence is 1 / sum.
                let squares = row.iter().map(|&v| ((v as f64 - max).exp() / sum).powi(2)).sum::<f64>();
                let p_y = (target as f64 - max).exp() / sum;
                c.brier += squares - 2.0 * p_y + 1.0;
                let confidence = 1.0 / sum;
                let bin = &mut c.bins[Bin::index(confidence)];
                bin.samples += 1;
                bin.correct += usize::from(above == 0);
                bin.confidence += confidence;
            }
        }
        Ok(())
    }

    /// Adds a batch: the model's first output (logits `[N, classes]`) and the batch's targets
    /// (class indices).
    pub fn update(
        &mut self,
        output: &Fetched,
        targets: Option<&Tensor>,
        indices: &[usize],
        at: &Context,
    ) -> Result<()> {
        let n = targets.map_or(0, |t| t.shape.first().copied().unwrap_or(0));
        let shape = &output.shape;
        if shape.len() != 2 || shape[0] as usize != n || shape[1] <= 0 {
            return Err(Error::format(
                at.model,
                format!(
                    "output `{}` has shape {shape:?} for a batch of {n}; evaluation needs logits [N, classes]",
                    at.output
                ),
            ));
        }
        if let Some(classes) = at.classes.filter(|c| c.len() > shape[1] as usize) {
            return Err(Error::format(
                at.inputs,
                format!(
                    "has {} class folders, but the model gives logits for {} classes: the folders must be the \
                     model's classes (sorted by name, as torchvision's ImageFolder indexes them)",
                    classes.len(),
                    shape[1]
                ),
            ));
        }
        let labels = match targets.map(|t| (&t.values, t.shape.len())) {
            Some((Values::I64(labels), 1)) => labels,
            other => {
                let fits = match other {
                    Some((Values::I64(_), 1)) | None => "",
                    Some((_, 1)) => " (floats, one per sample, fit the task regression)",
                    Some((_, _)) => super::which_targets_fit(targets.map_or(&[][..], |t| &t.shape)),
                };
                return Err(Error::format(
                    at.targets,
                    format!("holds targets that are not class indices (one integer per sample){fits}"),
                ));
            }
        };
        self.add_rows(&output.data, shape[1] as usize, labels, &mut indices.iter().copied(), at.targets)
    }

    /// Adds another part's counts and loss sum (the same k); fails when the parts' models give
    /// different numbers of classes.
    pub fn merge(&mut self, other: &State) -> std::result::Result<(), String> {
        match (self.classes, other.classes) {
            (Some(a), Some(b)) if a != b => return Err(format!("logits of {a} and of {b} classes")),
            (None, Some(b)) => self.classes = Some(b),
            _ => {}
        }
        // Top-12 and top-10 of 10 classes are one count: every sample.
        let effective = |k: usize| self.classes.map_or(k, |c| k.min(c));
        if effective(self.k) != effective(other.k) {
            return Err(format!("top-{} and top-{} counts cannot be added", self.k, other.k));
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
        match (&mut self.calibration, &other.calibration) {
            (Some(a), Some(b)) => a.merge(b),
            _ => self.calibration = None,
        }
        Ok(())
    }

    /// Samples counted so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The task these counts are for.
    pub fn task(&self) -> Classification {
        Classification { k: self.k, score: self.score.clone() }
    }

    /// The k of the top-k reported: k, capped at the model's classes (every sample is in the
    /// top `classes`, so a larger k means the same), said in a warning when k reaches them.
    fn reported_k(&self) -> usize {
        match self.classes {
            Some(classes) if self.k >= classes && self.k > 1 => {
                crate::error::warn(format!(
                    "the model gives logits for {classes} classes: top-{} is reported as top-{classes}, which every \
                     sample is in (choose a k below {classes} for a figure that tells models apart)",
                    self.k
                ));
                classes
            }
            _ => self.k,
        }
    }

    /// The metrics so far.
    pub fn finish(&self) -> Metrics {
        let n = self.samples.max(1) as f64;
        let finite = self.samples - self.nonfinite;
        let calibration = self.calibration.as_ref().filter(|_| finite > 0);
        Metrics {
            calibration: Calibrated {
                ece: calibration.map(|c| ece(&c.bins, finite)),
                brier: calibration.map(|c| c.brier / finite as f64),
                reliability: calibration.map(|c| c.bins.clone()).unwrap_or_default(),
            },
            score: self.score.clone(),
            samples: self.samples,
            correct: self.correct,
            top1: self.correct as f64 / n,
            k: self.reported_k(),
            topk: self.correct_k as f64 / n,
            loss: match self.samples - self.nonfinite {
                0 => f64::NAN,
                finite => self.loss / finite as f64,
            },
            per_class: self
                .per_class
                .iter()
                .enumerate()
                .filter(|(_, (total, _))| *total > 0)
                .map(|(class, &(total, ok))| ClassAccuracy {
                    class,
                    name: None,
                    samples: total,
                    accuracy: ok as f64 / total as f64,
                })
                .collect(),
            nonfinite: self.nonfinite,
        }
    }
}

/// Metrics over a labelled set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// The figure that scores a model, where not top-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
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
    #[serde(deserialize_with = "super::null_is_nan")]
    pub loss: f64,
    /// Accuracy per class (classes with samples).
    pub per_class: Vec<ClassAccuracy>,
    /// Samples whose logits were not all finite (NaN or Inf): counted wrong, left out of `loss`.
    pub nonfinite: usize,
    /// ECE, Brier score and the reliability bins.
    #[serde(flatten)]
    pub calibration: Calibrated,
}

/// The calibration figures of a classification evaluation, over the samples with finite logits;
/// absent in reports and parts written before they existed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Calibrated {
    /// The expected calibration error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
    /// The Brier score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brier: Option<f64>,
    /// The confidence bins of the ECE: the reliability diagram.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reliability: Vec<Bin>,
}

/// One class's accuracy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassAccuracy {
    /// Class index.
    pub class: usize,
    /// Its name (the class folder, the Parquet `ClassLabel` name), where the data names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Samples of that class.
    pub samples: usize,
    /// Top-1 accuracy on them.
    pub accuracy: f64,
}

impl Metrics {
    /// The JSON `swa evaluate` prints: these fields, and `topK` for the k asked (`top5`).
    pub fn json_extras(&self) -> Vec<(String, serde_json::Value)> {
        vec![(format!("top{}", self.k), self.topk.into())]
    }
}

/// One model's figures on a held-out set, as reports and soups list them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Score {
    /// The figure that scores a model, where not top-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Samples.
    pub samples: usize,
    /// Top-1 accuracy.
    pub top1: f64,
    /// Top-k accuracy.
    pub topk: f64,
    /// Mean cross-entropy over the samples with finite logits (NaN, `null` in JSON, when none).
    #[serde(deserialize_with = "super::null_is_nan")]
    pub loss: f64,
    /// Samples whose logits were not all finite: counted wrong, left out of `loss` (absent in
    /// reports written before it existed).
    #[serde(default)]
    pub nonfinite: usize,
    /// ECE, Brier score and the reliability bins.
    #[serde(flatten)]
    pub calibration: Calibrated,
}

impl From<&Metrics> for Score {
    fn from(m: &Metrics) -> Self {
        Score {
            score: m.score.clone(),
            correct: m.correct,
            samples: m.samples,
            top1: m.top1,
            topk: m.topk,
            loss: m.loss,
            nonfinite: m.nonfinite,
            calibration: m.calibration.clone(),
        }
    }
}

/// A loss for comparisons: NaN (every logit non-finite) is the worst.
fn comparable_loss(loss: f64) -> f64 {
    if loss.is_nan() {
        f64::INFINITY
    } else {
        loss
    }
}

impl Score {
    /// The figure named `name` (`topk` for the top-k).
    pub fn figure(&self, name: &str) -> Option<f64> {
        Some(match name {
            "top1" => self.top1,
            "topk" => self.topk,
            "loss" | "nll" => self.loss,
            "ece" => self.calibration.ece?,
            "brier" => self.calibration.brier?,
            _ => return None,
        })
    }

    /// Better first: more correct predictions, then a lower loss (NaN, when every logit was
    /// non-finite, is the worst). A total order.
    pub fn compare(&self, other: &Score) -> Ordering {
        other.correct.cmp(&self.correct).then(comparable_loss(self.loss).total_cmp(&comparable_loss(other.loss)))
    }

    /// Table cells under [`Classification::headers`].
    pub fn cells(&self) -> Vec<Option<String>> {
        vec![
            Some(super::pct(self.top1)),
            Some(super::pct(self.topk)),
            Some(loss(self.loss)),
            self.calibration.ece.map(loss),
            self.calibration.brier.map(loss),
        ]
    }

    /// `95.33% (143/150), loss 0.3075, ECE 0.0213`.
    pub fn describe(&self) -> String {
        let ece = self.calibration.ece.map_or(String::new(), |e| format!(", ECE {e:.4}"));
        format!("{:.2}% ({}/{}), loss {:.4}{ece}", self.top1 * 100.0, self.correct, self.samples, self.loss)
    }

    /// `95.33% / 0.3075`.
    pub fn brief(&self) -> String {
        format!("{:.2}% / {:.4}", self.top1 * 100.0, self.loss)
    }
}

fn loss(x: f64) -> String {
    format!("{x:.4}")
}

/// The best checkpoint's figures in a report: top-1, and top-k and loss where the report has them
/// (reports written before they existed do not).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Best {
    /// Its top-1.
    pub top1: f64,
    /// Its top-k.
    #[serde(default, deserialize_with = "super::null_is_nan_opt")]
    pub topk: Option<f64>,
    /// Its loss.
    #[serde(default, deserialize_with = "super::null_is_nan_opt")]
    pub loss: Option<f64>,
    /// Its ECE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
    /// Its Brier score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brier: Option<f64>,
}

impl From<&Score> for Best {
    fn from(s: &Score) -> Self {
        let c = &s.calibration;
        Best { top1: s.top1, topk: Some(s.topk), loss: Some(s.loss), ece: c.ece, brier: c.brier }
    }
}

impl Best {
    /// Table cells under [`Classification::headers`].
    pub fn cells(&self) -> Vec<Option<String>> {
        vec![
            Some(super::pct(self.top1)),
            self.topk.map(super::pct),
            self.loss.map(loss),
            self.ece.map(loss),
            self.brier.map(loss),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn metrics_from_logits() {
        let logits = [2.0, 1.0, 0.0, 0.0, 1.0, 2.0, 5.0, 4.0, 6.0];
        let mut acc = Classification { k: 2, score: None }.state();
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
        let mut acc = Classification { k: 2, score: None }.state();
        let logits = [f32::NAN, f32::NAN, 0.0, 1.0, f32::INFINITY, 0.0, 3.0, 1.0, 0.0];
        acc.add(&logits, 3, &[0, 0, 0], Path::new("y.npy")).unwrap();
        let m = acc.finish();
        assert_eq!((m.samples, m.correct, m.nonfinite), (3, 1, 2));
        assert!((m.topk - 1.0 / 3.0).abs() < 1e-12);
        let ce = [3.0f64, 1.0, 0.0].iter().map(|v| v.exp()).sum::<f64>().ln() - 3.0;
        assert!((m.loss - ce).abs() < 1e-9, "{}", m.loss);
        assert_eq!(m.per_class, [ClassAccuracy { class: 0, name: None, samples: 3, accuracy: 1.0 / 3.0 }]);
        let mut all_nan = Classification { k: 1, score: None }.state();
        all_nan.add(&[f32::NAN; 2], 2, &[1], Path::new("y.npy")).unwrap();
        let m = all_nan.finish();
        assert_eq!((m.correct, m.nonfinite, m.top1), (0, 1, 0.0));
        assert!(m.loss.is_nan());
    }

    #[test]
    fn the_order_of_scores_is_total_when_a_loss_is_nan() {
        let s = |loss: f64| Score {
            score: None,
            correct: 3,
            samples: 10,
            top1: 0.3,
            topk: 0.3,
            loss,
            nonfinite: 0,
            calibration: Calibrated::default(),
        };
        let all = [s(1.0), s(f64::NAN), s(2.0)];
        for a in &all {
            for b in &all {
                for c in &all {
                    if a.compare(b).is_lt() && b.compare(c).is_lt() {
                        assert!(a.compare(c).is_lt());
                    }
                }
            }
        }
        assert!(s(2.0).compare(&s(f64::NAN)).is_lt() && s(1.0).compare(&s(2.0)).is_lt());
    }
}
