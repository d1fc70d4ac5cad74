//! The mean of several models' predictions — a checkpoint ensemble, SWAG's Bayesian model average
//! — scored as one model. Each member's outputs become the task's predictions (the softmax over
//! classes for classification and per pixel for segmentation, the sigmoid per label for
//! multilabel, the outputs themselves for regression), summed per sample in f64; the mean is then
//! scored through the task's own state from outputs that give it back: log-probabilities
//! (softmax(ln p̄) = p̄), log-odds (sigmoid(logit p̄) = p̄), the mean itself. A metric command has
//! no known prediction to average and is refused.
//!
//! The sums are what a part of a many-machine SWAG writes and parts merge by adding
//! ([`Mean::merge`]).

use serde::{Deserialize, Serialize};

use super::{Context, State, Task};
use crate::batch::Tensor;
use crate::error::{Error, Result};
use crate::runtime::Fetched;

/// How a member's outputs become the predictions averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A softmax over the first axis of a sample's outputs (classes; classes per pixel).
    Softmax,
    /// A sigmoid per output.
    Sigmoid,
    /// The outputs themselves.
    Identity,
}

impl Kind {
    /// The predictions a task averages; `None` for a metric command.
    pub fn of(task: &Task) -> Option<Kind> {
        match task {
            Task::Classification(_) | Task::Segmentation(_) => Some(Kind::Softmax),
            Task::Multilabel(_) => Some(Kind::Sigmoid),
            Task::Regression(_) => Some(Kind::Identity),
            Task::Command(_) => None,
        }
    }

    /// What the mean is called in messages and reports.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Softmax => "the mean of the softmax probabilities",
            Kind::Sigmoid => "the mean of the sigmoid probabilities",
            Kind::Identity => "the mean of the outputs",
        }
    }
}

/// The running sum of several models' predictions, per sample, and the targets of the samples.
#[derive(Debug, Clone)]
pub struct Mean {
    kind: Kind,
    /// A sample's output shape (without the batch axis), once seen.
    shape: Option<Vec<usize>>,
    /// Models added.
    members: usize,
    /// Per sample, the sum of its predictions over the members (`width` values each).
    sums: Vec<f64>,
    /// Per sample, how many members' outputs were added.
    counts: Vec<u32>,
    /// The batches of the first member: their sample indices and targets, to score the mean with.
    batches: Vec<(Vec<usize>, Option<Tensor>)>,
}

impl Mean {
    /// Nothing added yet, for `task`; a metric command is refused.
    pub fn new(task: &Task) -> std::result::Result<Mean, String> {
        let kind = Kind::of(task).ok_or_else(|| {
            "a metric command's outputs have no known probabilities to average: an ensemble or SWAG needs the \
             task classification, multilabel, regression or segmentation"
                .to_string()
        })?;
        Ok(Mean { kind, shape: None, members: 0, sums: Vec::new(), counts: Vec::new(), batches: Vec::new() })
    }

    /// How the predictions are made.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Models added so far.
    pub fn members(&self) -> usize {
        self.members
    }

    /// Starts adding the next model's outputs.
    pub fn begin_member(&mut self) {
        self.members += 1;
    }

    fn width(&self) -> usize {
        self.shape.as_ref().map_or(0, |s| s.iter().product())
    }

    /// Adds a batch of the current member's outputs, for samples `indices` with their `targets`.
    pub fn add(
        &mut self,
        indices: &[usize],
        output: &Fetched,
        targets: Option<&Tensor>,
    ) -> std::result::Result<(), String> {
        let shape: Vec<usize> = output.shape.iter().skip(1).map(|&d| d.max(0) as usize).collect();
        if output.shape.first().map(|&n| n as usize) != Some(indices.len()) {
            return Err(format!("outputs of shape {:?} for a batch of {}", output.shape, indices.len()));
        }
        match &self.shape {
            Some(s) if *s != shape => {
                return Err(format!(
                    "the models' outputs differ in shape ({s:?} and {shape:?}): they cannot be averaged"
                ))
            }
            None => self.shape = Some(shape),
            _ => {}
        }
        let width = self.width();
        if width == 0 {
            return Err("the outputs are empty".into());
        }
        if self.members == 1 {
            self.batches.push((indices.to_vec(), targets.cloned()));
        }
        let mut row = vec![0f64; width];
        for (&i, values) in indices.iter().zip(output.data.chunks_exact(width)) {
            if self.counts.len() <= i {
                self.counts.resize(i + 1, 0);
                self.sums.resize((i + 1) * width, 0.0);
            }
            self.counts[i] += 1;
            predictions(self.kind, values, self.shape.as_deref().unwrap_or_default(), &mut row);
            for (s, p) in self.sums[i * width..(i + 1) * width].iter_mut().zip(&row) {
                *s += p;
            }
        }
        Ok(())
    }

    /// The mean predictions, per sample in order (`width` values each); fails unless every
    /// member added every sample once.
    pub fn mean(&self) -> std::result::Result<Vec<f64>, String> {
        self.check()?;
        let m = self.members as f64;
        Ok(self.sums.iter().map(|s| s / m).collect())
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.members == 0 || self.counts.is_empty() {
            return Err("no model's predictions were added".into());
        }
        // A sample no member ran (an image skipped as undecodable) counts 0 for every member.
        if let Some(i) = self.counts.iter().position(|&c| c != 0 && c as usize != self.members) {
            return Err(format!(
                "sample {i} has the predictions of {} of the {} models: each model must run over every sample",
                self.counts[i], self.members
            ));
        }
        Ok(())
    }

    /// Scores the mean into `state`, batch by batch as the first member ran them.
    pub fn score(&self, state: &mut State, at: &Context) -> Result<()> {
        let mean = self.mean().map_err(|e| Error::format(at.model, e))?;
        let width = self.width();
        let shape = self.shape.clone().unwrap_or_default();
        for (indices, targets) in &self.batches {
            let mut data = Vec::with_capacity(indices.len() * width);
            for &i in indices {
                outputs_of(self.kind, &mean[i * width..(i + 1) * width], &mut data);
            }
            let mut out_shape = vec![indices.len() as i64];
            out_shape.extend(shape.iter().map(|&d| d as i64));
            state.update(&Fetched { shape: out_shape, data }, targets.as_ref(), indices, at)?;
        }
        Ok(())
    }

    /// Adds another part's sums (members drawn elsewhere, over the same samples).
    pub fn merge(&mut self, other: &Mean) -> std::result::Result<(), String> {
        if self.kind != other.kind {
            return Err(format!("{} and {} cannot be added", self.kind.describe(), other.kind.describe()));
        }
        if self.members == 0 {
            *self = other.clone();
            return Ok(());
        }
        if self.shape != other.shape || self.counts.len() != other.counts.len() || self.batches != other.batches {
            return Err("the parts' predictions are of different samples, targets or shapes".into());
        }
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a += b;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.members += other.members;
        Ok(())
    }

    /// The sums as a part writes them: the kind, the members, a sample's output shape, the sums
    /// `[samples, …shape]`, the per-sample counts and the first member's batches.
    pub fn to_parts(&self) -> MeanParts {
        MeanParts {
            kind: self.kind,
            members: self.members,
            shape: self.shape.clone().unwrap_or_default(),
            counts: self.counts.clone(),
            batches: self.batches.iter().map(|(i, _)| i.clone()).collect(),
        }
    }

    /// A mean read back from a part: `sums` and `targets` (per batch of `parts.batches`).
    pub fn from_parts(
        parts: MeanParts,
        sums: Vec<f64>,
        targets: Vec<Option<Tensor>>,
    ) -> std::result::Result<Mean, String> {
        let width: usize = parts.shape.iter().product();
        let n = parts.counts.len();
        if width == 0 || parts.members == 0 || sums.len() != n * width || targets.len() != parts.batches.len() {
            return Err("the sums do not match their shape and samples".into());
        }
        // Every sample counted is in exactly one batch, and no other.
        let mut seen = vec![false; n];
        for &i in parts.batches.iter().flatten() {
            if i >= n || std::mem::replace(&mut seen[i], true) {
                return Err(format!("sample {i} is out of range or in two batches"));
            }
        }
        if parts.counts.iter().zip(&seen).any(|(&c, &s)| (c != 0) != s || (c != 0 && c as usize != parts.members)) {
            return Err("the sums cannot have been summed: a sample's count differs from the models added".into());
        }
        let classes = match parts.kind {
            Kind::Softmax => parts.shape.first().copied().unwrap_or(1).max(1),
            _ => 1,
        };
        let m = parts.members as f64;
        let stride = width / classes;
        for (i, row) in sums.chunks_exact(width).enumerate().filter(|(i, _)| seen[*i]) {
            // NaN: a member's non-finite output, scored as such.
            let fine = match parts.kind {
                // Each pixel's (each sample's) probabilities sum to 1 per model.
                Kind::Softmax => (0..stride).all(|p| {
                    let total: f64 = (0..classes).map(|c| row[c * stride + p]).sum();
                    total.is_nan()
                        || ((total - m).abs() <= 1e-6 * m && (0..classes).all(|c| row[c * stride + p] >= 0.0))
                }),
                Kind::Sigmoid => row.iter().all(|&v| v.is_nan() || (0.0..=m).contains(&v)),
                Kind::Identity => row.iter().all(|v| !v.is_infinite()),
            };
            if !fine {
                return Err(format!(
                    "the sums of sample {i} cannot be {} of {} models",
                    parts.kind.describe(),
                    parts.members
                ));
            }
        }
        let batches = parts.batches.into_iter().zip(targets).collect();
        Ok(Mean {
            kind: parts.kind,
            shape: Some(parts.shape),
            members: parts.members,
            sums,
            counts: parts.counts,
            batches,
        })
    }

    /// The per-sample sums (for a part's file) and the targets of each batch.
    pub fn sums(&self) -> (&[f64], Vec<Option<&Tensor>>) {
        (&self.sums, self.batches.iter().map(|(_, t)| t.as_ref()).collect())
    }
}

/// What a part's file says about its sums besides the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeanParts {
    /// How the predictions were made.
    pub kind: Kind,
    /// Models added.
    pub members: usize,
    /// A sample's output shape.
    pub shape: Vec<usize>,
    /// Per sample, the models added.
    pub counts: Vec<u32>,
    /// The samples of each batch, in order.
    pub batches: Vec<Vec<usize>>,
}

/// One sample's predictions from its outputs (`shape`, the softmax over its first axis).
fn predictions(kind: Kind, values: &[f32], shape: &[usize], out: &mut [f64]) {
    match kind {
        Kind::Identity => out.iter_mut().zip(values).for_each(|(o, &v)| *o = v as f64),
        Kind::Sigmoid => out.iter_mut().zip(values).for_each(|(o, &v)| *o = 1.0 / (1.0 + (-(v as f64)).exp())),
        Kind::Softmax => {
            let classes = shape.first().copied().unwrap_or(1).max(1);
            let stride = values.len() / classes;
            for p in 0..stride {
                let at = |c: usize| values[c * stride + p] as f64;
                let max = (0..classes).map(at).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..classes).map(|c| (at(c) - max).exp()).sum();
                for c in 0..classes {
                    out[c * stride + p] = (at(c) - max).exp() / sum;
                }
            }
        }
    }
}

/// The outputs that give `mean` back through the task: ln p̄; logit p̄; the mean itself. A
/// probability that underflowed to 0 gives the log of the smallest normal f64 (−708), not −∞,
/// which the task would count as a non-finite output.
fn outputs_of(kind: Kind, mean: &[f64], out: &mut Vec<f32>) {
    const TINY: f64 = f64::MIN_POSITIVE;
    match kind {
        Kind::Identity => out.extend(mean.iter().map(|&v| v as f32)),
        // A member's non-finite output makes its sample's mean NaN: scored as non-finite, never
        // clamped into a probability.
        Kind::Softmax => out.extend(mean.iter().map(|&p| if p.is_nan() { f32::NAN } else { p.max(TINY).ln() as f32 })),
        Kind::Sigmoid => out.extend(mean.iter().map(|&p| {
            if p.is_nan() {
                return f32::NAN;
            }
            let p = p.clamp(TINY, 1.0);
            (p.ln() - (1.0 - p).max(TINY).ln()) as f32
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(rows: &[[f32; 3]]) -> Fetched {
        Fetched { shape: vec![rows.len() as i64, 3], data: rows.iter().flatten().copied().collect() }
    }

    #[test]
    fn the_mean_of_softmaxes_scores_as_its_own_log() {
        let task = Task::default();
        let mut mean = Mean::new(&task).unwrap();
        let labels = Tensor::i64(vec![2], vec![0, 2]);
        let a = fetched(&[[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]]);
        let b = fetched(&[[0.0, 1.0, 0.0], [1.0, 2.0, 0.5]]);
        for out in [&a, &b] {
            mean.begin_member();
            mean.add(&[0, 1], out, Some(&labels)).unwrap();
        }
        let softmax = |r: &[f32]| {
            let s: f64 = r.iter().map(|&v| (v as f64).exp()).sum();
            r.iter().map(|&v| (v as f64).exp() / s).collect::<Vec<f64>>()
        };
        let want: Vec<f64> = (0..2)
            .flat_map(|i| {
                let (pa, pb) = (softmax(&a.data[i * 3..i * 3 + 3]), softmax(&b.data[i * 3..i * 3 + 3]));
                pa.iter().zip(&pb).map(|(x, y)| (x + y) / 2.0).collect::<Vec<_>>()
            })
            .collect();
        let got = mean.mean().unwrap();
        assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-15));
        let mut state = task.state();
        let at = Context {
            model: std::path::Path::new("m.onnx"),
            output: "logits",
            inputs: std::path::Path::new("x.npy"),
            targets: std::path::Path::new("y.npy"),
            classes: None,
            names: None,
        };
        mean.score(&mut state, &at).unwrap();
        let nll = -(want[0].ln() + want[5].ln()) / 2.0;
        match state.finish().unwrap() {
            super::super::Metrics::Classification(m) => assert!((m.loss - nll).abs() < 1e-6, "{} {nll}", m.loss),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_member_that_missed_a_sample_is_refused_and_parts_add() {
        let task = Task::default();
        let mut mean = Mean::new(&task).unwrap();
        let out = fetched(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);
        mean.begin_member();
        mean.add(&[0, 1], &out, None).unwrap();
        mean.begin_member();
        mean.add(&[0], &fetched(&[[1.0, 0.0, 0.0]]), None).unwrap();
        assert!(mean.mean().unwrap_err().contains("sample 1 has the predictions of 1 of the 2"));
        let mut one = Mean::new(&task).unwrap();
        one.begin_member();
        one.add(&[0, 1], &out, None).unwrap();
        let mut two = one.clone();
        two.merge(&one).unwrap();
        assert_eq!(two.members(), 2);
        assert_eq!(two.mean().unwrap(), one.mean().unwrap());
        let command = Task::named("command", &Default::default());
        if let Ok(t) = command {
            assert!(Mean::new(&t).is_err());
        }
    }
}
