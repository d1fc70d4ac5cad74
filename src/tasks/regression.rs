//! Regression: outputs `[N, D]` (or `[N]`) against float targets of the same shape — mean squared
//! error, its root, mean absolute error and R², over all outputs and per output, as torchmetrics'
//! `MeanSquaredError`, `MeanAbsoluteError` and `R2Score` compute them (R² over outputs is the mean of
//! the per-output R², `multioutput="uniform_average"`). The default score is R².
//!
//! The state is sums in f64 per output (targets, their squares, squared and absolute errors), so
//! parts add exactly up to the rounding of f64 additions. A sample whose outputs are not all finite
//! is counted in `nonfinite` and left out of the sums: the gate fails on it whatever the figures.

use serde::{Deserialize, Serialize};

use super::{Context, Figure};
use crate::batch::{Tensor, Values};
use crate::error::{Error, Result};
use crate::runtime::Fetched;

/// Marks a regression file's settings, state and figures (`"task": "regression"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Tag {
    /// The one value.
    #[default]
    #[serde(rename = "regression")]
    Regression,
}

/// The figures a regression score or gate can name; the first is the default score.
pub const FIGURES: [Figure; 4] = [
    Figure { name: "r2", label: "R²", higher_is_better: true, percent: false },
    Figure { name: "mse", label: "MSE", higher_is_better: false, percent: false },
    Figure { name: "rmse", label: "RMSE", higher_is_better: false, percent: false },
    Figure { name: "mae", label: "MAE", higher_is_better: false, percent: false },
];

/// Regression, scored by one of [`FIGURES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regression {
    /// Marks the task.
    pub task: Tag,
    /// The figure that scores a model.
    pub score: String,
}

impl Default for Regression {
    fn default() -> Self {
        Regression { task: Tag::Regression, score: FIGURES[0].name.to_string() }
    }
}

impl Regression {
    /// A fresh state.
    pub fn state(&self) -> State {
        State { task: self.clone(), samples: 0, nonfinite: 0, outputs: Vec::new() }
    }

    /// Float targets from a `.npy`: `[N]` or `[N, D]`, any float or integer type.
    pub fn read_targets(&self, path: &std::path::Path) -> Result<Tensor> {
        super::read_float_targets(path, "regression targets (one value per sample, or one row of D per sample)", 1..=2)
    }
}

/// Sums over the samples of one output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sums {
    /// Σ y.
    pub target: f64,
    /// Σ y².
    pub target_sq: f64,
    /// Σ (ŷ − y)².
    pub squared_error: f64,
    /// Σ |ŷ − y|.
    pub absolute_error: f64,
}

/// Regression sums over an evaluation or part of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The settings.
    #[serde(flatten)]
    pub task: Regression,
    /// Samples counted (finite or not).
    pub samples: usize,
    /// Samples whose outputs were not all finite: left out of the sums.
    pub nonfinite: usize,
    /// Sums per output (empty before the first batch).
    pub outputs: Vec<Sums>,
}

impl State {
    /// Adds a batch: outputs `[N, D]` or `[N]` and targets of the same number of values per sample.
    pub fn update(
        &mut self,
        output: &Fetched,
        targets: Option<&Tensor>,
        indices: &[usize],
        at: &Context,
    ) -> Result<()> {
        let n = indices.len();
        let shape: Vec<usize> = output.shape.iter().map(|&d| d as usize).collect();
        let d = match shape.as_slice() {
            [m] if *m == n => 1,
            [m, d] if *m == n && *d > 0 => *d,
            _ => return Err(super::unfit_output(at, &shape, n, "regression needs outputs [N] or [N, D]")),
        };
        let Some(t) = targets else {
            return Err(Error::format(at.targets, "has no regression targets"));
        };
        let values: Vec<f64> = match &t.values {
            Values::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Values::I64(v) => v.iter().map(|&x| x as f64).collect(),
            other => other.to_owned().into_f32().unwrap_or_default().into_iter().map(f64::from).collect(),
        };
        if t.shape.first() != Some(&n) || t.row_len() != d {
            return Err(Error::format(
                at.targets,
                format!(
                    "holds targets of shape {:?} per batch of {n} ({} values per sample), but the model gives {d} output{} \
                     per sample: regression targets need one value per output",
                    t.shape,
                    t.row_len(),
                    if d == 1 { "" } else { "s" }
                ),
            ));
        }
        if self.outputs.is_empty() {
            self.outputs = vec![Sums::default(); d];
        } else if self.outputs.len() != d {
            return Err(Error::format(
                at.model,
                format!("gives {d} outputs per sample after giving {}", self.outputs.len()),
            ));
        }
        for (k, (row, target)) in output.data.chunks_exact(d).zip(values.chunks_exact(d)).enumerate() {
            self.samples += 1;
            if let Some(j) = target.iter().position(|y| !y.is_finite()) {
                return Err(Error::format(
                    at.targets,
                    format!("target {j} of sample {} is {} (targets must be finite)", indices[k], target[j]),
                ));
            }
            if !row.iter().all(|v| v.is_finite()) {
                self.nonfinite += 1;
                continue;
            }
            for ((s, &p), &y) in self.outputs.iter_mut().zip(row).zip(target) {
                let e = p as f64 - y;
                s.target += y;
                s.target_sq += y * y;
                s.squared_error += e * e;
                s.absolute_error += e.abs();
            }
        }
        Ok(())
    }

    /// Adds another part's sums.
    pub fn merge(&mut self, other: &State) -> std::result::Result<(), String> {
        let sums_ok = other.outputs.iter().all(|s| {
            [s.target, s.target_sq, s.squared_error, s.absolute_error].iter().all(|v| v.is_finite())
                && s.target_sq >= 0.0
                && s.squared_error >= 0.0
                && s.absolute_error >= 0.0
        });
        if other.nonfinite > other.samples || !sums_ok || (other.outputs.is_empty() && other.samples > other.nonfinite)
        {
            return Err("the sums cannot have been summed: non-finite or negative sums of squares, or more \
                        non-finite samples than samples"
                .into());
        }
        if self.task != other.task {
            return Err(format!("regression scored by {} and by {}", self.task.score, other.task.score));
        }
        match (self.outputs.len(), other.outputs.len()) {
            (a, b) if a > 0 && b > 0 && a != b => return Err(format!("{a} and {b} outputs per sample")),
            (0, _) => self.outputs = vec![Sums::default(); other.outputs.len()],
            _ => {}
        }
        for (a, b) in self.outputs.iter_mut().zip(&other.outputs) {
            a.target += b.target;
            a.target_sq += b.target_sq;
            a.squared_error += b.squared_error;
            a.absolute_error += b.absolute_error;
        }
        self.samples = self.samples.checked_add(other.samples).ok_or("more samples than can be counted")?;
        self.nonfinite += other.nonfinite;
        Ok(())
    }

    /// The figures so far.
    pub fn finish(&self) -> Metrics {
        let n = (self.samples - self.nonfinite) as f64;
        let per_output: Vec<OutputFigures> = self
            .outputs
            .iter()
            .enumerate()
            .map(|(output, s)| {
                let total = s.target_sq - s.target * s.target / n;
                OutputFigures {
                    output,
                    mse: s.squared_error / n,
                    mae: s.absolute_error / n,
                    r2: if n < 2.0 { f64::NAN } else { 1.0 - s.squared_error / total },
                }
            })
            .collect();
        let d = per_output.len().max(1) as f64;
        let mse = self.outputs.iter().map(|s| s.squared_error).sum::<f64>() / (n * d);
        let figures = Figures {
            mse,
            rmse: mse.sqrt(),
            mae: self.outputs.iter().map(|s| s.absolute_error).sum::<f64>() / (n * d),
            r2: per_output.iter().map(|o| o.r2).sum::<f64>() / d,
        };
        Metrics {
            task: self.task.clone(),
            samples: self.samples,
            nonfinite: self.nonfinite,
            figures,
            per_output: if per_output.len() > 1 { per_output } else { Vec::new() },
        }
    }
}

/// The four figures, over all outputs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Mean squared error over every output of every sample.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub mse: f64,
    /// Its square root.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub rmse: f64,
    /// Mean absolute error.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub mae: f64,
    /// R², the mean of the per-output R² (NaN with fewer than 2 samples).
    #[serde(deserialize_with = "super::null_is_nan")]
    pub r2: f64,
}

impl super::FigureSet for Figures {
    const FIGURES: &'static [Figure] = &FIGURES;

    fn describe(&self, samples: usize) -> String {
        format!("R² {:.4}, RMSE {:.4}, MAE {:.4} ({samples} samples)", self.r2, self.rmse, self.mae)
    }

    fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "r2" => self.r2,
            "mse" => self.mse,
            "rmse" => self.rmse,
            "mae" => self.mae,
            _ => return None,
        })
    }
}

/// One output's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OutputFigures {
    /// The output's index.
    pub output: usize,
    /// Its mean squared error.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub mse: f64,
    /// Its mean absolute error.
    #[serde(deserialize_with = "super::null_is_nan")]
    pub mae: f64,
    /// Its R².
    #[serde(deserialize_with = "super::null_is_nan")]
    pub r2: f64,
}

/// A regression's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The settings.
    #[serde(flatten)]
    pub task: Regression,
    /// Samples evaluated.
    pub samples: usize,
    /// Samples whose outputs were not all finite (left out of the figures).
    pub nonfinite: usize,
    /// Over all outputs.
    #[serde(flatten)]
    pub figures: Figures,
    /// Per output, when there are several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_output: Vec<OutputFigures>,
}

/// A regression evaluation's compact figures (also the best checkpoint's in a report).
pub type Score = super::Compact<Regression, Figures>;

impl From<&Metrics> for Score {
    fn from(m: &Metrics) -> Self {
        Score { task: m.task.clone(), samples: m.samples, nonfinite: m.nonfinite, figures: m.figures }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_match_their_definitions() {
        let mut s = Regression::default().state();
        let out = Fetched { shape: vec![3, 2], data: vec![1.0, 2.0, 2.0, 1.0, 4.0, 0.0] };
        let t = Tensor::f32(vec![3, 2], vec![1.5, 2.0, 2.0, 0.0, 3.0, 1.0]);
        let p = std::path::Path::new("x");
        let at = Context { model: p, output: "y", inputs: p, targets: p, classes: None, names: None };
        s.update(&out, Some(&t), &[0, 1, 2], &at).unwrap();
        let m = s.finish();
        let mse = (0.25 + 0.0 + 0.0 + 1.0 + 1.0 + 1.0) / 6.0;
        assert!((m.figures.mse - mse).abs() < 1e-12);
        // Output 0: targets 1.5, 2, 3 (mean 13/6); residuals 0.25, 0, 1.
        let tss0 = [1.5f64, 2.0, 3.0].iter().map(|y| (y - 13.0 / 6.0).powi(2)).sum::<f64>();
        assert!((m.per_output[0].r2 - (1.0 - 1.25 / tss0)).abs() < 1e-12);
    }
}
