//! Evaluation tasks: what a model's outputs are scored against, and how.
//!
//! A task has settings ([`Task`]), a state that batches of outputs and targets update and that
//! merges exactly with another part's ([`State`]: counts and sums, or whatever the task needs —
//! per-sample scores for average precision, the outputs handed to a user's metric command), its
//! full figures ([`Metrics`], what `swa evaluate --json` prints), and the compact figures reports
//! and soups list ([`Score`], [`Best`]), each with one "higher is better" scalar, the score. The
//! evaluation, partial evaluations and their merge, the soup's ranking, `swa run` and the report
//! use these without knowing which task it is; each enum has one variant per task, serialised as
//! the task's own type (untagged), so a task's files read as they were written.
//!
//! Adding a task is one module (its settings, state, metrics, score and best figures) and one
//! variant in each enum of this module, with its arm in each `match`.

pub mod classification;

use std::cmp::Ordering;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::batch::Tensor;
use crate::error::Result;
use crate::runtime::Fetched;

pub use classification::Classification;

/// `Deserialize` for an enum with one variant per task, each serialised as the task's own type
/// (untagged, as `#[serde(untagged)]` reads it): the variants are tried in order, and when none
/// reads, the error is the last one's own (`missing field `correct``, `invalid value: integer
/// `-1``), which serde's derived untagged enums replace with "data did not match any variant".
macro_rules! untagged_deserialize {
    ($enum:ident { $($variant:ident($ty:ty)),+ $(,)? }) => {
        impl<'de> Deserialize<'de> for $enum {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                type Read = fn(&serde_json::Value) -> std::result::Result<$enum, serde_json::Error>;
                let value = serde_json::Value::deserialize(d)?;
                let variants: &[Read] = &[$(|v| <$ty>::deserialize(v).map($enum::$variant)),+];
                let mut last = None;
                for read in variants {
                    match read(&value) {
                        Ok(v) => return Ok(v),
                        Err(e) => last = Some(e),
                    }
                }
                Err(serde::de::Error::custom(last.expect("an enum has a variant")))
            }
        }
    };
}

/// The task an evaluation scores, with its settings. Serialised as the settings alone
/// (classification: `{"k": 5}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Task {
    /// Logits against class indices.
    Classification(Classification),
}

untagged_deserialize!(Task { Classification(Classification) });

impl Default for Task {
    fn default() -> Self {
        Task::Classification(Classification { k: 5 })
    }
}

/// A column of a task's figures in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its header (`top-1`).
    pub header: String,
    /// Whether compact tables (the recalibrated "++" columns) show it too.
    pub compact: bool,
}

impl Column {
    fn new(header: impl Into<String>, compact: bool) -> Self {
        Column { header: header.into(), compact }
    }
}

/// What a task is told besides the outputs and targets: names for its messages.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The model.
    pub model: &'a Path,
    /// The output scored.
    pub output: &'a str,
    /// The inputs.
    pub inputs: &'a Path,
    /// Where the targets come from (a labels file, or the inputs).
    pub targets: &'a Path,
    /// The inputs' own class names (class folders), by index.
    pub classes: Option<&'a [String]>,
}

impl Task {
    /// The task's name.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Classification(_) => "classification",
        }
    }

    /// A fresh state.
    pub fn state(&self) -> State {
        match self {
            Task::Classification(t) => State::Classification(t.state()),
        }
    }

    /// Reads a targets file given beside samples that carry none (`--labels`): one row per
    /// sample, typed as the task needs (classification: class indices from an integer `.npy`).
    pub fn read_targets(&self, path: &Path) -> Result<Tensor> {
        match self {
            Task::Classification(t) => t.read_targets(path),
        }
    }

    /// Whether the task takes the targets samples carry themselves (class folders, a Parquet
    /// label column) when no targets file is given; a task whose targets are never in the samples
    /// (segmentation masks) answers false, and the evaluation then needs its targets file.
    pub fn uses_source_targets(&self) -> bool {
        match self {
            Task::Classification(_) => true,
        }
    }

    /// What the score is called (`top-1`).
    pub fn score_name(&self) -> &'static str {
        match self {
            Task::Classification(_) => "top-1",
        }
    }

    /// What the score is, in words (`top-1 accuracy`).
    pub fn score_label(&self) -> &'static str {
        match self {
            Task::Classification(_) => "top-1 accuracy",
        }
    }

    /// A score as people read it (`95.33%`).
    pub fn format_score(&self, score: f64) -> String {
        match self {
            Task::Classification(_) => pct(score),
        }
    }

    /// A difference of scores as people read it (`+1.25 pp`).
    pub fn format_gain(&self, gain: f64) -> String {
        match self {
            Task::Classification(_) => points(gain),
        }
    }

    /// The columns of [`Score::cells`] and [`Best::cells`].
    pub fn columns(&self) -> Vec<Column> {
        match self {
            Task::Classification(t) => t.headers(),
        }
    }
}

/// A task's running state over an evaluation or one part of it. Serialised as the task's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum State {
    /// Classification counts.
    Classification(classification::State),
}

untagged_deserialize!(State { Classification(classification::State) });

impl State {
    /// The task it counts for.
    pub fn task(&self) -> Task {
        match self {
            State::Classification(s) => Task::Classification(s.task()),
        }
    }

    /// Adds a batch: the model's first output and the batch's targets (`None` where the samples
    /// carry none: the task says whether it needs them), which are samples `indices` of the set.
    pub fn update(
        &mut self,
        output: &Fetched,
        targets: Option<&Tensor>,
        indices: &[usize],
        at: &Context,
    ) -> Result<()> {
        match self {
            State::Classification(s) => s.update(output, targets, indices, at),
        }
    }

    /// Adds another part's state; fails when the two are not parts of one task's evaluation.
    pub fn merge(&mut self, other: &State) -> std::result::Result<(), String> {
        match (self, other) {
            (State::Classification(a), State::Classification(b)) => a.merge(b),
            #[allow(unreachable_patterns)]
            (a, b) => Err(format!("{} and {} counts cannot be added", a.task().name(), b.task().name())),
        }
    }

    /// Samples counted.
    pub fn samples(&self) -> usize {
        match self {
            State::Classification(s) => s.samples(),
        }
    }

    /// The figures so far.
    pub fn finish(&self) -> Metrics {
        match self {
            State::Classification(s) => Metrics::Classification(s.finish()),
        }
    }
}

/// A task's full figures for one model. Serialised as the task's own metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Metrics {
    /// Classification metrics.
    Classification(classification::Metrics),
}

untagged_deserialize!(Metrics { Classification(classification::Metrics) });

impl Metrics {
    /// The task.
    pub fn task(&self) -> Task {
        match self {
            Metrics::Classification(m) => Task::Classification(Classification { k: m.k }),
        }
    }

    /// The compact figures.
    pub fn score(&self) -> Score {
        match self {
            Metrics::Classification(m) => Score::Classification(m.into()),
        }
    }

    /// Keys `swa evaluate --json` adds to the metrics (classification: `top5` for k = 5).
    pub fn json_extras(&self) -> Vec<(String, serde_json::Value)> {
        match self {
            Metrics::Classification(m) => m.json_extras(),
        }
    }
}

/// One model's compact figures, as reports and soups list them. Serialised as the task's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Score {
    /// Classification figures.
    Classification(classification::Score),
}

untagged_deserialize!(Score { Classification(classification::Score) });

impl Score {
    /// The one figure that says how good the model is, higher is better (top-1).
    pub fn value(&self) -> f64 {
        match self {
            Score::Classification(s) => s.top1,
        }
    }

    /// Samples scored.
    pub fn samples(&self) -> usize {
        match self {
            Score::Classification(s) => s.samples,
        }
    }

    /// Samples whose outputs were not all finite.
    pub fn nonfinite(&self) -> usize {
        match self {
            Score::Classification(s) => s.nonfinite,
        }
    }

    /// Better first: a total order (ties broken by the task's second figure, the loss).
    pub fn compare(&self, other: &Score) -> Ordering {
        match (self, other) {
            (Score::Classification(a), Score::Classification(b)) => a.compare(b),
            // Scores of different tasks are never ranked together (one evaluation, one task).
            #[allow(unreachable_patterns)]
            _ => Ordering::Equal,
        }
    }

    /// Cells under [`Task::columns`].
    pub fn cells(&self) -> Vec<Option<String>> {
        match self {
            Score::Classification(s) => s.cells(),
        }
    }

    /// The figures in one phrase (`95.33% (143/150), loss 0.3075`).
    pub fn describe(&self) -> String {
        match self {
            Score::Classification(s) => s.describe(),
        }
    }

    /// The score and the second figure, briefly (`95.33% / 0.3075`).
    pub fn brief(&self) -> String {
        match self {
            Score::Classification(s) => s.brief(),
        }
    }

    /// As the best checkpoint's figures.
    pub fn best(&self) -> Best {
        match self {
            Score::Classification(s) => Best::Classification(s.into()),
        }
    }
}

/// The best checkpoint's figures in a report. Serialised as the task's own.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Best {
    /// Classification figures.
    Classification(classification::Best),
}

untagged_deserialize!(Best { Classification(classification::Best) });

impl Best {
    /// The score.
    pub fn value(&self) -> f64 {
        match self {
            Best::Classification(b) => b.top1,
        }
    }

    /// Cells under [`Task::columns`] (empty where an older report lacks a figure).
    pub fn cells(&self) -> Vec<Option<String>> {
        match self {
            Best::Classification(b) => b.cells(),
        }
    }
}

/// The gain of one model's score over another's. Unlike the other enums it is externally tagged:
/// flattened into the report, it is serialised as one key of the task's own (`"gain_top1": …`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Gain {
    /// Top-1 accuracy gained, as a fraction.
    #[serde(rename = "gain_top1")]
    Classification(f64),
}

impl Gain {
    /// A gain of `value` in `task`'s score.
    pub fn of(task: &Task, value: f64) -> Gain {
        match task {
            Task::Classification(_) => Gain::Classification(value),
        }
    }

    /// The gain.
    pub fn value(&self) -> f64 {
        match self {
            Gain::Classification(v) => *v,
        }
    }
}

/// A fraction as a percentage with two decimals.
pub fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// A signed difference of fractions in percentage points.
pub fn points(x: f64) -> String {
    format!("{:+.2} pp", x * 100.0)
}

/// Reads a number that JSON wrote as `null` because it was NaN.
pub(crate) fn null_is_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// An optional number that JSON may have written as `null` because it was NaN.
pub(crate) fn null_is_nan_opt<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    Ok(Some(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN)))
}
