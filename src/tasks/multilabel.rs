//! Multi-label classification: scores `[N, C]` (probabilities, or logits that a sigmoid turns into
//! them) against multi-hot targets `[N, C]` — macro and micro average precision, F1 at a threshold
//! (macro and micro), and the exact-match ratio, as torchmetrics' `MultilabelAveragePrecision`
//! (`thresholds=None`), `MultilabelF1Score` and `MultilabelExactMatch` compute them. The default
//! score is macro average precision.
//!
//! Average precision needs every sample's scores, so the state keeps them (N × C floats and
//! targets): parts merge exactly by putting their samples together. As torchmetrics does, the
//! scores are taken as probabilities when they all lie in [0, 1] and are put through a sigmoid
//! otherwise — decided once over the whole set (torchmetrics decides per `update` call). A
//! prediction is positive when its probability is above the threshold. A label without a positive
//! sample has an average precision of 0 that counts in the macro mean, as torchmetrics 1.9 computes
//! it (said in a warning). A sample whose scores are not all finite is counted in `nonfinite` and
//! left out.

use serde::{Deserialize, Serialize};

use super::{Context, Figure};
use crate::batch::Tensor;
use crate::error::{Error, Result};
use crate::runtime::Fetched;

/// Marks a multi-label file's settings, state and figures (`"task": "multilabel"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Tag {
    /// The one value.
    #[default]
    #[serde(rename = "multilabel")]
    Multilabel,
}

/// The figures a multi-label score or gate can name; the first is the default score.
pub const FIGURES: [Figure; 5] = [
    Figure { name: "ap_macro", label: "macro AP", higher_is_better: true, percent: false },
    Figure { name: "ap_micro", label: "micro AP", higher_is_better: true, percent: false },
    Figure { name: "f1_macro", label: "macro F1", higher_is_better: true, percent: false },
    Figure { name: "f1_micro", label: "micro F1", higher_is_better: true, percent: false },
    Figure { name: "exact_match", label: "exact match", higher_is_better: true, percent: true },
];

/// Multi-label classification, with the threshold of F1 and exact match, scored by one of
/// [`FIGURES`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Multilabel {
    /// Marks the task.
    pub task: Tag,
    /// A probability above it is a positive prediction.
    pub threshold: f64,
    /// The figure that scores a model.
    pub score: String,
}

impl Default for Multilabel {
    fn default() -> Self {
        Multilabel { task: Tag::Multilabel, threshold: 0.5, score: FIGURES[0].name.to_string() }
    }
}

impl Multilabel {
    /// A fresh state.
    pub fn state(&self) -> State {
        State { task: self.clone(), labels: None, samples: 0, nonfinite: 0, scores: Vec::new(), targets: Vec::new() }
    }

    /// Multi-hot targets from a `.npy`: `[N, C]` of 0 and 1 (integers, booleans or floats).
    pub fn read_targets(&self, path: &std::path::Path) -> Result<Tensor> {
        super::read_float_targets(path, "multi-hot targets (one row of C zeros and ones per sample)", 2..=2)
    }
}

/// Every sample's scores and targets over an evaluation or part of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The settings.
    #[serde(flatten)]
    pub task: Multilabel,
    /// Labels per sample (C), once a batch was seen.
    pub labels: Option<usize>,
    /// Samples counted (finite or not).
    pub samples: usize,
    /// Samples whose scores were not all finite: left out.
    pub nonfinite: usize,
    /// The finite samples' scores, C per sample, as the model gave them.
    pub scores: Vec<f32>,
    /// Their targets, C per sample, 0 or 1.
    pub targets: Vec<u8>,
}

impl State {
    /// Adds a batch: scores `[N, C]` and multi-hot targets `[N, C]`.
    pub fn update(
        &mut self,
        output: &Fetched,
        targets: Option<&Tensor>,
        indices: &[usize],
        at: &Context,
    ) -> Result<()> {
        let n = indices.len();
        let shape: Vec<usize> = output.shape.iter().map(|&d| d as usize).collect();
        let c = match shape.as_slice() {
            [m, c] if *m == n && *c > 0 => *c,
            _ => return Err(super::unfit_output(at, &shape, n, "multi-label evaluation needs scores [N, labels]")),
        };
        let Some(t) = targets else {
            return Err(Error::format(at.targets, "has no multi-hot targets"));
        };
        if t.shape.len() != 2 || t.shape[0] != n || t.shape[1] != c {
            let fits = if t.shape.len() == 1 {
                ": one class index per sample is the target of the task classification"
            } else {
                ""
            };
            return Err(Error::format(
                at.targets,
                format!(
                    "holds targets of shape {:?} for a batch of {n}, but the model gives scores for {c} labels: \
                     multi-label targets are [N, {c}] of zeros and ones{fits}",
                    t.shape
                ),
            ));
        }
        if self.labels.is_some_and(|l| l != c) {
            return Err(Error::format(at.model, format!("gives {c} labels after giving {}", self.labels.unwrap_or(0))));
        }
        self.labels = Some(c);
        let values = super::values_f64(&t.values);
        for (k, (row, target)) in output.data.chunks_exact(c).zip(values.chunks_exact(c)).enumerate() {
            if let Some(j) = target.iter().position(|&y| y != 0.0 && y != 1.0) {
                return Err(Error::format(
                    at.targets,
                    format!(
                        "target of label {j} of sample {} is {} (multi-hot targets are 0 or 1{})",
                        indices[k],
                        target[j],
                        if target[j].fract() == 0.0 && target[j] > 1.0 {
                            "; class indices are the targets of the task classification"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            self.samples += 1;
            if !row.iter().all(|v| v.is_finite()) {
                self.nonfinite += 1;
                continue;
            }
            self.scores.extend_from_slice(row);
            self.targets.extend(target.iter().map(|&y| y as u8));
        }
        Ok(())
    }

    /// Why these scores cannot have been kept (a damaged or edited partial file), if they cannot.
    fn impossible(&self) -> Option<String> {
        let rows = self.samples.checked_sub(self.nonfinite);
        let fits = match (self.labels, rows) {
            (None, _) => self.scores.is_empty() && self.targets.is_empty() && self.samples == 0,
            (Some(c), Some(rows)) => {
                c > 0 && self.scores.len() == self.targets.len() && rows.checked_mul(c) == Some(self.scores.len())
            }
            (Some(_), None) => false,
        };
        if !fits {
            return Some(format!(
                "{} scores and {} targets for {} samples ({} non-finite) of {:?} labels",
                self.scores.len(),
                self.targets.len(),
                self.samples,
                self.nonfinite,
                self.labels
            ));
        }
        if self.targets.iter().any(|&t| t > 1) || !(0.0..=1.0).contains(&self.task.threshold) {
            return Some("targets other than 0 and 1, or a threshold outside 0..=1".into());
        }
        self.scores.iter().any(|s| !s.is_finite()).then(|| "a score that is not finite".into())
    }

    /// Adds another part's samples.
    pub fn merge(&mut self, other: &State) -> std::result::Result<(), String> {
        if let Some(why) = other.impossible() {
            return Err(format!("the scores cannot have been kept: {why}"));
        }
        if self.task != other.task {
            return Err("multi-label evaluations with different thresholds or scores".into());
        }
        match (self.labels, other.labels) {
            (Some(a), Some(b)) if a != b => return Err(format!("scores for {a} and for {b} labels")),
            (None, b) => self.labels = b,
            _ => {}
        }
        self.samples += other.samples;
        self.nonfinite += other.nonfinite;
        self.scores.extend_from_slice(&other.scores);
        self.targets.extend_from_slice(&other.targets);
        Ok(())
    }

    /// The figures so far.
    pub fn finish(&self) -> Metrics {
        let c = self.labels.unwrap_or(0).max(1);
        let probabilities = self.scores.iter().all(|&s| (0.0..=1.0).contains(&s));
        let p: Vec<f64> = self
            .scores
            .iter()
            .map(|&s| if probabilities { s as f64 } else { 1.0 / (1.0 + (-(s as f64)).exp()) })
            .collect();
        let y = &self.targets;
        let rows = p.len() / c;
        let positive = |v: f64| v > self.task.threshold;
        let mut per_label = Vec::with_capacity(c);
        let (mut tp_all, mut fp_all, mut fn_all) = (0usize, 0usize, 0usize);
        for j in 0..c {
            let pairs: Vec<(f64, bool)> = (0..rows).map(|i| (p[i * c + j], y[i * c + j] == 1)).collect();
            let (mut tp, mut fp, mut fneg) = (0, 0, 0);
            for &(v, t) in &pairs {
                match (positive(v), t) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fneg += 1,
                    _ => {}
                }
            }
            tp_all += tp;
            fp_all += fp;
            fn_all += fneg;
            per_label.push(LabelFigures {
                label: j,
                positives: pairs.iter().filter(|x| x.1).count(),
                ap: average_precision(pairs),
                f1: f1(tp, fp, fneg),
            });
        }
        let empty: Vec<String> = per_label.iter().filter(|l| l.positives == 0).map(|l| l.label.to_string()).collect();
        if !empty.is_empty() && rows > 0 {
            crate::error::warn(format!(
                "no sample has label{} {}: {} average precision is 0 (as torchmetrics counts it), which lowers the macro \
                 average",
                if empty.len() == 1 { "" } else { "s" },
                empty.join(", "),
                if empty.len() == 1 { "its" } else { "their" }
            ));
        }
        let aps: Vec<f64> = per_label.iter().map(|l| l.ap).collect();
        let exact = (0..rows).filter(|&i| (0..c).all(|j| positive(p[i * c + j]) == (y[i * c + j] == 1))).count();
        let figures = Figures {
            ap_macro: if aps.is_empty() { f64::NAN } else { aps.iter().sum::<f64>() / aps.len() as f64 },
            ap_micro: average_precision(p.iter().copied().zip(y.iter().map(|&t| t == 1)).collect()),
            f1_macro: per_label.iter().map(|l| l.f1).sum::<f64>() / c as f64,
            f1_micro: f1(tp_all, fp_all, fn_all),
            exact_match: if rows == 0 { f64::NAN } else { exact as f64 / rows as f64 },
        };
        Metrics {
            task: self.task.clone(),
            samples: self.samples,
            nonfinite: self.nonfinite,
            labels: self.labels.unwrap_or(0),
            sigmoid: !probabilities,
            figures,
            per_label,
        }
    }
}

/// F1 from counts; 0 where there is nothing to count (torchmetrics' zero division).
fn f1(tp: usize, fp: usize, fneg: usize) -> f64 {
    match 2 * tp + fp + fneg {
        0 => 0.0,
        d => (2 * tp) as f64 / d as f64,
    }
}

/// Average precision of scores against binary targets: Σ (Rₖ − Rₖ₋₁) Pₖ over the distinct scores
/// from the highest down (tied scores are one threshold), as torchmetrics computes it with
/// `thresholds=None`; 0 without a positive (torchmetrics' value), NaN without a sample.
pub fn average_precision(mut pairs: Vec<(f64, bool)>) -> f64 {
    let positives = pairs.iter().filter(|p| p.1).count();
    if pairs.is_empty() {
        return f64::NAN;
    }
    if positives == 0 {
        return 0.0;
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp, mut ap, mut recall) = (0usize, 0usize, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < pairs.len() {
        let v = pairs[i].0;
        while i < pairs.len() && pairs[i].0 == v {
            if pairs[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let r = tp as f64 / positives as f64;
        ap += (r - recall) * (tp as f64 / (tp + fp) as f64);
        recall = r;
    }
    ap
}

/// The five figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Mean of the labels' average precision.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub ap_macro: f64,
    /// Average precision of every (sample, label) pair together.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub ap_micro: f64,
    /// Mean of the labels' F1 at the threshold.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub f1_macro: f64,
    /// F1 of every pair together.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub f1_micro: f64,
    /// Samples whose every label is predicted right.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub exact_match: f64,
}

impl super::FigureSet for Figures {
    const FIGURES: &'static [Figure] = &FIGURES;

    fn describe(&self, samples: usize) -> String {
        format!(
            "macro AP {:.4}, micro AP {:.4}, F1 {:.4} ({samples} samples)",
            self.ap_macro, self.ap_micro, self.f1_macro
        )
    }

    fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "ap_macro" => self.ap_macro,
            "ap_micro" => self.ap_micro,
            "f1_macro" => self.f1_macro,
            "f1_micro" => self.f1_micro,
            "exact_match" => self.exact_match,
            _ => return None,
        })
    }
}

/// One label's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelFigures {
    /// The label's index.
    pub label: usize,
    /// Samples that have it.
    pub positives: usize,
    /// Its average precision (0 without a positive sample).
    #[serde(deserialize_with = "super::null_is_nan")]
    pub ap: f64,
    /// Its F1 at the threshold.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub f1: f64,
}

/// A multi-label evaluation's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The settings.
    #[serde(flatten)]
    pub task: Multilabel,
    /// Samples evaluated.
    pub samples: usize,
    /// Samples whose scores were not all finite (left out).
    pub nonfinite: usize,
    /// Labels per sample.
    pub labels: usize,
    /// Whether the scores were logits put through a sigmoid.
    pub sigmoid: bool,
    /// Over all labels.
    #[serde(flatten)]
    pub figures: Figures,
    /// Per label.
    pub per_label: Vec<LabelFigures>,
}

/// A multilabel evaluation's compact figures (also the best checkpoint's in a report).
pub type Score = super::Compact<Multilabel, Figures>;

impl From<&Metrics> for Score {
    fn from(m: &Metrics) -> Self {
        Score { task: m.task.clone(), samples: m.samples, nonfinite: m.nonfinite, figures: m.figures }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn average_precision_groups_ties() {
        // Scores 0.9 (pos), 0.5 (pos), 0.5 (neg), 0.1 (neg): thresholds 0.9 → R 1/2 P 1; 0.5 → R 1, P 2/3.
        let ap = super::average_precision(vec![(0.9, true), (0.5, true), (0.5, false), (0.1, false)]);
        assert!((ap - (0.5 + 0.5 * 2.0 / 3.0)).abs() < 1e-12);
        assert_eq!(super::average_precision(vec![(0.3, false)]), 0.0);
        assert!(super::average_precision(Vec::new()).is_nan());
    }
}
