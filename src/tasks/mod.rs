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
pub mod command;
pub mod mean;
pub mod multilabel;
pub mod regression;
pub mod segmentation;
pub mod temperature;

use std::cmp::Ordering;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::batch::Tensor;
use crate::error::Result;
use crate::runtime::Fetched;

pub use classification::Classification;
pub use command::Command;
pub use multilabel::Multilabel;
pub use regression::Regression;
pub use segmentation::Segmentation;

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
                let mut errors = Vec::new();
                for read in variants {
                    match read(&value) {
                        Ok(v) => return Ok(v),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                Err(serde::de::Error::custom(reported(&value, errors)))
            }
        }
    };
}

/// Which of the variants' errors says what is wrong with `value`: the first variant's
/// (classification, whose files name no `"task"`) for a value without a `"task"`, else the first
/// whose task it names (the others fail on the name: "unknown variant").
fn reported(value: &serde_json::Value, errors: Vec<String>) -> String {
    let named = value.get("task").is_some_and(|t| t.is_string());
    let pick = if named { errors.iter().skip(1).find(|e| !e.contains("unknown variant `")) } else { errors.first() };
    pick.or(errors.last()).cloned().unwrap_or_default()
}

/// A figure of a task that a score or a gate can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figure {
    /// Its name in scores and gates (`miou`).
    pub name: &'static str,
    /// What tables call it (`mIoU`).
    pub label: &'static str,
    /// Whether a higher value is better (R²) or a lower one (RMSE).
    pub higher_is_better: bool,
    /// Whether it is a fraction shown as a percentage.
    pub percent: bool,
}

/// A task's figures over all samples (not classification's, whose files predate this), named as
/// scores and gates name them.
pub trait FigureSet: Copy + PartialEq + std::fmt::Debug {
    /// The figures, the default score first.
    const FIGURES: &'static [Figure];
    /// The figure named `name` (one of [`FigureSet::FIGURES`]).
    fn get(&self, name: &str) -> Option<f64>;
    /// The figures in one phrase, for `samples` samples.
    fn describe(&self, samples: usize) -> String;
}

/// One model's compact figures for a task other than classification (also its best checkpoint's
/// in a report): the settings, the samples and the task's figures, flattened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compact<T, F> {
    /// The settings.
    #[serde(flatten)]
    pub task: T,
    /// Samples.
    pub samples: usize,
    /// Samples whose outputs were not all finite.
    pub nonfinite: usize,
    /// The figures.
    #[serde(flatten)]
    pub figures: F,
}

impl<T, F: FigureSet> Compact<T, F> {
    /// The figure named `name`.
    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures.get(name)
    }

    /// Cells under the task's columns: every figure.
    pub fn cells(&self) -> Vec<Option<String>> {
        F::FIGURES.iter().map(|f| Some(format_figure(f, self.figures.get(f.name).unwrap_or(f64::NAN)))).collect()
    }

    /// The figures in one phrase.
    pub fn describe(&self) -> String {
        self.figures.describe(self.samples)
    }
}

/// A figure's value as tables show it: a percentage, or four decimals.
pub fn format_figure(f: &Figure, v: f64) -> String {
    if f.percent {
        pct(v)
    } else {
        format!("{v:.4}")
    }
}

/// The task an evaluation scores, with its settings. Serialised as the settings alone
/// (classification: `{"k": 5}`; the others with their `"task"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Task {
    /// Logits against class indices.
    Classification(Classification),
    /// Outputs against float targets.
    Regression(Regression),
    /// Scores against multi-hot targets.
    Multilabel(Multilabel),
    /// Per-pixel logits against masks.
    Segmentation(Segmentation),
    /// Whatever the user's metric command computes.
    Command(Command),
}

untagged_deserialize!(Task {
    Classification(Classification),
    Regression(Regression),
    Multilabel(Multilabel),
    Segmentation(Segmentation),
    Command(Command),
});

impl Default for Task {
    fn default() -> Self {
        Task::Classification(Classification { k: 5, score: None })
    }
}

/// The names `--task` takes, in the order help lists them.
pub const TASK_NAMES: [&str; 4] = ["classification", "multilabel", "regression", "segmentation"];

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
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The model.
    pub model: &'a Path,
    /// The output scored.
    pub output: &'a str,
    /// The inputs.
    pub inputs: &'a Path,
    /// Where the targets come from (a labels file, a mask folder, or the inputs).
    pub targets: &'a Path,
    /// The inputs' own class names (class folders), by index.
    pub classes: Option<&'a [String]>,
    /// What messages call sample `i` (its file), where the samples name them.
    pub names: Option<&'a (dyn Fn(usize) -> String + Sync)>,
}

/// Settings of a task other than its kind: what scores it and how it counts. `None` leaves each
/// to the task's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// k of top-k (classification).
    pub k: Option<usize>,
    /// The figure that scores a model (`--score`).
    pub score: Option<String>,
    /// The probability above which a label is predicted (multilabel).
    pub threshold: Option<f64>,
    /// The mask value of pixels left out (segmentation).
    pub ignore_index: Option<i64>,
}

impl Task {
    /// The task named `name` (one of [`TASK_NAMES`]) with `settings`; fails naming what does not
    /// apply to it or is not one of its figures.
    pub fn named(name: &str, settings: &Settings) -> std::result::Result<Task, String> {
        let not_for = |what: &str| Err(format!("{what} does not apply to {name}"));
        if settings.threshold.is_some() && name != "multilabel" {
            return not_for("a threshold");
        }
        if settings.ignore_index.is_some() && name != "segmentation" {
            return not_for("an ignore index");
        }
        let task = match name {
            "classification" => Task::Classification(Classification { k: settings.k.unwrap_or(5), score: None }),
            "regression" => Task::Regression(Regression::default()),
            "multilabel" => {
                let threshold = settings.threshold.unwrap_or(0.5);
                if !(0.0..=1.0).contains(&threshold) {
                    return Err(format!("the threshold must be a probability (0..=1), got {threshold}"));
                }
                Task::Multilabel(Multilabel { threshold, ..Multilabel::default() })
            }
            "segmentation" => Task::Segmentation(Segmentation {
                ignore_index: settings.ignore_index.unwrap_or(segmentation::IGNORE_INDEX),
                ..Segmentation::default()
            }),
            other => return Err(format!("unknown task `{other}`: use one of {}", TASK_NAMES.join(", "))),
        };
        match &settings.score {
            Some(score) => task.scored_by(score),
            None => Ok(task),
        }
    }

    /// The same task scored by the figure `name`.
    pub fn scored_by(mut self, name: &str) -> std::result::Result<Task, String> {
        let figure = self.figure(name).ok_or_else(|| self.unknown_figure(name))?;
        let name = figure.name.to_string();
        match &mut self {
            Task::Classification(t) => t.score = (name != "top1").then_some(name),
            Task::Regression(t) => t.score = name,
            Task::Multilabel(t) => t.score = name,
            Task::Segmentation(t) => t.score = name,
            Task::Command(_) => {}
        }
        Ok(self)
    }

    /// Why `name` is none of this task's figures.
    pub fn unknown_figure(&self, name: &str) -> String {
        let names: Vec<&str> = self.figures().iter().map(|f| f.name).collect();
        let elsewhere: Vec<&str> = TASK_NAMES
            .iter()
            .copied()
            .filter(|t| *t != self.name())
            .filter(|t| Task::named(t, &Settings::default()).is_ok_and(|task| task.figure(name).is_some()))
            .collect();
        let hint = match elsewhere.first() {
            Some(t) => format!(" (`{name}` is a figure of the task {t})"),
            None => String::new(),
        };
        if matches!(self, Task::Command(_)) {
            return format!("`{name}` is not a number the metric command printed");
        }
        format!("{} has no figure `{name}`: use one of {}{hint}", self.name(), names.join(", "))
    }

    /// The task's name.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Classification(_) => "classification",
            Task::Regression(_) => "regression",
            Task::Multilabel(_) => "multilabel",
            Task::Segmentation(_) => "segmentation",
            Task::Command(_) => "metric command",
        }
    }

    /// The figures a score or gate can name (a metric command's are what it prints: none known
    /// before it runs).
    pub fn figures(&self) -> Vec<Figure> {
        match self {
            Task::Classification(_) => classification::FIGURES.to_vec(),
            Task::Regression(_) => regression::FIGURES.to_vec(),
            Task::Multilabel(_) => multilabel::FIGURES.to_vec(),
            Task::Segmentation(_) => segmentation::FIGURES.to_vec(),
            Task::Command(_) => vec![command::SCORE],
        }
    }

    /// The figure named `name` (any case, `-` for `_`; classification's `top5` is its top-k for
    /// k = 5); a metric command's only figure known before it runs is `score`.
    pub fn figure(&self, name: &str) -> Option<Figure> {
        let name = name.to_lowercase().replace('-', "_");
        let name = match self {
            Task::Classification(c) if name == format!("top{}", c.k) && c.k != 1 => "topk".to_string(),
            Task::Classification(_) if name == "nll" => "loss".to_string(),
            _ => name,
        };
        match self {
            Task::Command(_) => (name == "score").then_some(command::SCORE),
            _ => self.figures().into_iter().find(|f| f.name == name),
        }
    }

    /// The figure that scores a model.
    pub fn score_figure(&self) -> Figure {
        let name = match self {
            Task::Classification(c) => c.score.as_deref().unwrap_or("top1"),
            Task::Regression(t) => &t.score,
            Task::Multilabel(t) => &t.score,
            Task::Segmentation(t) => &t.score,
            Task::Command(_) => "score",
        };
        self.figure(name).unwrap_or(self.figures()[0])
    }

    /// A fresh state.
    pub fn state(&self) -> State {
        match self {
            Task::Classification(t) => State::Classification(t.state()),
            Task::Regression(t) => State::Regression(t.state()),
            Task::Multilabel(t) => State::Multilabel(t.state()),
            Task::Segmentation(t) => State::Segmentation(t.state()),
            Task::Command(t) => State::Command(t.state()),
        }
    }

    /// Reads a targets file given beside samples that carry none (`--labels`): one row per
    /// sample, typed as the task needs (classification: class indices from an integer `.npy`).
    pub fn read_targets(&self, path: &Path) -> Result<Tensor> {
        match self {
            Task::Classification(t) => t.read_targets(path),
            Task::Regression(t) => t.read_targets(path),
            Task::Multilabel(t) => t.read_targets(path),
            Task::Segmentation(t) => t.read_targets(path),
            Task::Command(t) => t.read_targets(path),
        }
    }

    /// Whether the task takes the targets samples carry themselves (class folders, a Parquet
    /// label column) when no targets file is given; a task whose targets are never in the samples
    /// (segmentation masks) answers false, and the evaluation then needs its targets file.
    pub fn uses_source_targets(&self) -> bool {
        match self {
            Task::Classification(_) | Task::Command(_) => true,
            // A Parquet list or float column is read as these targets (the source types them).
            Task::Regression(_) | Task::Multilabel(_) => true,
            Task::Segmentation(_) => false,
        }
    }

    /// What the score is called (`top-1`, `mIoU`).
    pub fn score_name(&self) -> &'static str {
        match self {
            Task::Classification(c) if c.score.is_none() => "top-1",
            _ => self.score_figure().label,
        }
    }

    /// What the score is, in words (`top-1 accuracy`).
    pub fn score_label(&self) -> &'static str {
        match self {
            Task::Classification(c) if c.score.is_none() => "top-1 accuracy",
            Task::Command(_) => "the metric command's score",
            _ => self.score_figure().label,
        }
    }

    /// A score (as [`Score::value`] gives it: higher is better) as people read it (`95.33%`,
    /// `0.1234` for an RMSE, whose score is its negation).
    pub fn format_score(&self, score: f64) -> String {
        let f = self.score_figure();
        format_figure(&f, if f.higher_is_better { score } else { -score })
    }

    /// A difference of scores ([`Score::value`]s: higher is better) as people read it: `+1.25 pp`
    /// for a percentage, else the figure's own change and which way that is (`-0.0123 (better)`
    /// for an RMSE that dropped).
    pub fn format_gain(&self, gain: f64) -> String {
        let f = self.score_figure();
        let way = if gain > 0.0 {
            " (better)"
        } else if gain < 0.0 {
            " (worse)"
        } else {
            ""
        };
        match (f.percent, f.higher_is_better) {
            (true, true) => points(gain),
            (true, false) => format!("{}{way}", points(-gain)),
            (false, true) => format!("{gain:+.4}{way}"),
            (false, false) => format!("{:+.4}{way}", -gain),
        }
    }

    /// Which of [`Task::columns`] holds the score.
    pub fn score_column(&self) -> usize {
        let name = self.score_figure().name;
        self.figures().iter().position(|f| f.name == name).unwrap_or(0)
    }

    /// The columns of [`Score::cells`] and [`Best::cells`].
    pub fn columns(&self) -> Vec<Column> {
        let score = self.score_figure().name;
        match self {
            Task::Classification(t) => t.headers(),
            Task::Command(_) => vec![Column::new("score", true)],
            _ => self.figures().iter().map(|f| Column::new(f.label, f.name == score)).collect(),
        }
    }
}

/// Predictions made from outputs, as `--save-outputs` writes them.
pub enum Predictions {
    /// Class indices (classification: `[N]`; segmentation: `[N, H, W]`).
    I64(Vec<i64>),
    /// Labels predicted present (multilabel: `[N, C]` of 0 and 1).
    U8(Vec<u8>),
}

/// What `task` predicts from `outputs` of `shape` (N first), with the predictions' shape; `None`
/// where the outputs are the predictions (regression, a metric command).
pub fn predictions(task: &Task, outputs: &[f32], shape: &[usize]) -> Option<(Vec<usize>, Predictions)> {
    let argmax = |row: &[f32]| {
        let mut best = 0;
        for (k, &v) in row.iter().enumerate() {
            if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
                best = k;
            }
        }
        best as i64
    };
    match (task, shape) {
        (Task::Classification(_), [n, c]) if *c > 0 => {
            Some((vec![*n], Predictions::I64(outputs.chunks_exact(*c).map(argmax).collect())))
        }
        (Task::Multilabel(t), [_, _]) => {
            let probabilities = outputs.iter().all(|&s| (0.0..=1.0).contains(&s));
            let p = |s: f32| if probabilities { s as f64 } else { 1.0 / (1.0 + (-(s as f64)).exp()) };
            Some((shape.to_vec(), Predictions::U8(outputs.iter().map(|&s| (p(s) > t.threshold) as u8).collect())))
        }
        (Task::Segmentation(_), [n, c, h, w]) if *c > 0 => {
            let hw = h * w;
            let mut out = Vec::with_capacity(n * hw);
            for sample in outputs.chunks_exact(c * hw) {
                out.extend((0..hw).map(|p| argmax(&(0..*c).map(|k| sample[k * hw + p]).collect::<Vec<_>>())));
            }
            Some((vec![*n, *h, *w], Predictions::I64(out)))
        }
        _ => None,
    }
}

/// Values as f64, whatever their element type.
pub(crate) fn values_f64(values: &crate::batch::Values) -> Vec<f64> {
    use crate::batch::Values;
    match values {
        Values::F32(v) => v.iter().map(|&x| x as f64).collect(),
        Values::I64(v) => v.iter().map(|&x| x as f64).collect(),
        Values::Held(h) => match (h.f32(), h.i64()) {
            (Some(v), _) => v.iter().map(|&x| x as f64).collect(),
            (_, Some(v)) => v.iter().map(|&x| x as f64).collect(),
            _ => Vec::new(),
        },
    }
}

/// Which task targets of `shape` would fit, as a clause of a message.
pub(crate) fn which_targets_fit(shape: &[usize]) -> &'static str {
    match shape.len() {
        1 => " (one value per sample fits the tasks classification and regression)",
        2 => " (rows [N, D] fit the tasks regression and multilabel)",
        3 => " (masks [N, H, W] fit the task segmentation)",
        _ => "",
    }
}

/// Float targets from a `.npy` (any numeric type, read as float32) of `ranks` dimensions.
pub(crate) fn read_float_targets(path: &Path, what: &str, ranks: std::ops::RangeInclusive<usize>) -> Result<Tensor> {
    let array = crate::inputs::npy::open_npy(path)?;
    if !ranks.contains(&array.shape.len()) {
        return Err(crate::Error::format(
            path,
            format!("holds an array of shape {:?}; expected {what}{}", array.shape, which_targets_fit(&array.shape)),
        ));
    }
    Ok(Tensor::f32(array.shape.clone(), array.f32_rows(0, array.len())))
}

/// The error for an output of `shape` for a batch of `n` that is not what the task needs (`what`:
/// `regression needs outputs [N] or [N, D]`), saying which task it would fit.
pub(crate) fn unfit_output(at: &Context, shape: &[usize], n: usize, what: &str) -> crate::Error {
    crate::Error::format(
        at.model,
        format!("output `{}` has shape {shape:?} for a batch of {n}; {what}{}", at.output, which_task_fits(shape, n)),
    )
}

/// Which task an output of `shape` for a batch of `n` would fit, as a clause of a message.
pub(crate) fn which_task_fits(shape: &[usize], n: usize) -> &'static str {
    match shape {
        [m, _] if *m == n => " (outputs [N, C] fit the tasks classification, multilabel and regression)",
        [m, _, _, _] if *m == n => " (logits [N, C, H, W] fit the task segmentation)",
        [m] if *m == n => " (outputs [N] fit the task regression)",
        _ => "",
    }
}

/// A task's running state over an evaluation or one part of it. Serialised as the task's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum State {
    /// Classification counts.
    Classification(classification::State),
    /// Regression sums.
    Regression(regression::State),
    /// Multi-label scores.
    Multilabel(multilabel::State),
    /// A confusion matrix.
    Segmentation(segmentation::State),
    /// Outputs for a command.
    Command(command::State),
}

untagged_deserialize!(State {
    Classification(classification::State),
    Regression(regression::State),
    Multilabel(multilabel::State),
    Segmentation(segmentation::State),
    Command(command::State),
});

impl State {
    /// The task it counts for.
    pub fn task(&self) -> Task {
        match self {
            State::Classification(s) => Task::Classification(s.task()),
            State::Regression(s) => Task::Regression(s.task.clone()),
            State::Multilabel(s) => Task::Multilabel(s.task.clone()),
            State::Segmentation(s) => Task::Segmentation(s.task.clone()),
            State::Command(s) => Task::Command(s.task.clone()),
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
            State::Regression(s) => s.update(output, targets, indices, at),
            State::Multilabel(s) => s.update(output, targets, indices, at),
            State::Segmentation(s) => s.update(output, targets, indices, at),
            State::Command(s) => s.update(output, targets, indices, at),
        }
    }

    /// Adds another part's state; fails when the two are not parts of one task's evaluation.
    pub fn merge(&mut self, other: &State) -> std::result::Result<(), String> {
        match (self, other) {
            (State::Classification(a), State::Classification(b)) => a.merge(b),
            (State::Regression(a), State::Regression(b)) => a.merge(b),
            (State::Multilabel(a), State::Multilabel(b)) => a.merge(b),
            (State::Segmentation(a), State::Segmentation(b)) => a.merge(b),
            (State::Command(a), State::Command(b)) => a.merge(b),
            (a, b) => Err(format!("{} and {} counts cannot be added", a.task().name(), b.task().name())),
        }
    }

    /// Samples counted.
    pub fn samples(&self) -> usize {
        match self {
            State::Classification(s) => s.samples(),
            State::Regression(s) => s.samples,
            State::Multilabel(s) => s.samples,
            State::Segmentation(s) => s.samples,
            State::Command(s) => s.samples,
        }
    }

    /// The figures so far (a metric command runs here).
    pub fn finish(&self) -> Result<Metrics> {
        Ok(match self {
            State::Classification(s) => Metrics::Classification(s.finish()),
            State::Regression(s) => Metrics::Regression(s.finish()),
            State::Multilabel(s) => Metrics::Multilabel(s.finish()),
            State::Segmentation(s) => Metrics::Segmentation(s.finish()),
            State::Command(s) => Metrics::Command(s.finish()?),
        })
    }
}

/// A task's full figures for one model. Serialised as the task's own metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Metrics {
    /// Classification metrics.
    Classification(classification::Metrics),
    /// Regression metrics.
    Regression(regression::Metrics),
    /// Multi-label metrics.
    Multilabel(multilabel::Metrics),
    /// Segmentation metrics.
    Segmentation(segmentation::Metrics),
    /// What the metric command printed.
    Command(command::Metrics),
}

untagged_deserialize!(Metrics {
    Classification(classification::Metrics),
    Regression(regression::Metrics),
    Multilabel(multilabel::Metrics),
    Segmentation(segmentation::Metrics),
    Command(command::Metrics),
});

impl Metrics {
    /// The task.
    pub fn task(&self) -> Task {
        match self {
            Metrics::Classification(m) => Task::Classification(Classification { k: m.k, score: m.score.clone() }),
            Metrics::Regression(m) => Task::Regression(m.task.clone()),
            Metrics::Multilabel(m) => Task::Multilabel(m.task.clone()),
            Metrics::Segmentation(m) => Task::Segmentation(m.task.clone()),
            Metrics::Command(m) => Task::Command(m.task.clone()),
        }
    }

    /// The compact figures.
    pub fn score(&self) -> Score {
        match self {
            Metrics::Classification(m) => Score::Classification(m.into()),
            Metrics::Regression(m) => Score::Regression(m.into()),
            Metrics::Multilabel(m) => Score::Multilabel(m.into()),
            Metrics::Segmentation(m) => Score::Segmentation(m.into()),
            Metrics::Command(m) => Score::Command(m.clone()),
        }
    }

    /// Keys `swa evaluate --json` adds to the metrics (classification: `top5` for k = 5).
    pub fn json_extras(&self) -> Vec<(String, serde_json::Value)> {
        match self {
            Metrics::Classification(m) => m.json_extras(),
            _ => Vec::new(),
        }
    }

    /// Names the classes of per-class rows (class folders, a Parquet `ClassLabel`).
    pub fn name_classes(&mut self, names: &[String]) {
        match self {
            Metrics::Classification(m) => {
                for c in &mut m.per_class {
                    c.name = names.get(c.class).cloned();
                }
            }
            Metrics::Segmentation(m) => {
                for c in &mut m.per_class {
                    c.name = names.get(c.class).cloned();
                }
            }
            _ => {}
        }
    }
}

/// One model's compact figures, as reports and soups list them. Serialised as the task's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Score {
    /// Classification figures.
    Classification(classification::Score),
    /// Regression figures.
    Regression(regression::Score),
    /// Multi-label figures.
    Multilabel(multilabel::Score),
    /// Segmentation figures.
    Segmentation(segmentation::Score),
    /// A metric command's figures.
    Command(command::Score),
}

untagged_deserialize!(Score {
    Classification(classification::Score),
    Regression(regression::Score),
    Multilabel(multilabel::Score),
    Segmentation(segmentation::Score),
    Command(command::Score),
});

/// A figure to compare: higher is better, NaN the worst.
fn comparable(v: f64) -> f64 {
    if v.is_nan() {
        f64::NEG_INFINITY
    } else {
        v
    }
}

impl Score {
    /// The confidence bins of a classification score (its reliability diagram); `None` for other
    /// tasks and for reports written before they existed.
    pub fn reliability(&self) -> Option<&[classification::Bin]> {
        match self {
            Score::Classification(s) if !s.calibration.reliability.is_empty() => Some(&s.calibration.reliability),
            _ => None,
        }
    }

    /// The task these figures are of.
    pub fn task(&self) -> Task {
        match self {
            Score::Classification(s) => Task::Classification(Classification { k: 0, score: s.score.clone() }),
            Score::Regression(s) => Task::Regression(s.task.clone()),
            Score::Multilabel(s) => Task::Multilabel(s.task.clone()),
            Score::Segmentation(s) => Task::Segmentation(s.task.clone()),
            Score::Command(s) => Task::Command(s.task.clone()),
        }
    }

    /// The figure named `name`, as computed (an RMSE is an RMSE, not its negation).
    pub fn figure(&self, name: &str) -> Option<f64> {
        match self {
            Score::Classification(s) => s.figure(name),
            Score::Regression(s) => s.figure(name),
            Score::Multilabel(s) => s.figure(name),
            Score::Segmentation(s) => s.figure(name),
            Score::Command(s) => s.figure(name),
        }
    }

    /// The one figure that says how good the model is, higher is better: the task's score figure,
    /// negated where lower is better (an RMSE of 0.12 scores −0.12).
    pub fn value(&self) -> f64 {
        let f = self.task().score_figure();
        let v = self.figure(f.name).unwrap_or(f64::NAN);
        if f.higher_is_better {
            v
        } else {
            -v
        }
    }

    /// Samples scored.
    pub fn samples(&self) -> usize {
        match self {
            Score::Classification(s) => s.samples,
            Score::Regression(s) => s.samples,
            Score::Multilabel(s) => s.samples,
            Score::Segmentation(s) => s.samples,
            Score::Command(s) => s.samples,
        }
    }

    /// Samples whose outputs were not all finite.
    pub fn nonfinite(&self) -> usize {
        match self {
            Score::Classification(s) => s.nonfinite,
            Score::Regression(s) => s.nonfinite,
            Score::Multilabel(s) => s.nonfinite,
            Score::Segmentation(s) => s.nonfinite,
            Score::Command(s) => s.nonfinite,
        }
    }

    /// Better first: a total order (classification breaks ties by its loss; NaN is the worst).
    pub fn compare(&self, other: &Score) -> Ordering {
        match (self, other) {
            (Score::Classification(a), Score::Classification(b)) if a.score.is_none() => a.compare(b),
            _ => comparable(other.value()).total_cmp(&comparable(self.value())),
        }
    }

    /// Cells under [`Task::columns`].
    pub fn cells(&self) -> Vec<Option<String>> {
        match self {
            Score::Classification(s) => s.cells(),
            Score::Regression(s) => s.cells(),
            Score::Multilabel(s) => s.cells(),
            Score::Segmentation(s) => s.cells(),
            Score::Command(s) => s.cells(),
        }
    }

    /// The figures in one phrase (`95.33% (143/150), loss 0.3075`).
    pub fn describe(&self) -> String {
        match self {
            Score::Classification(s) => s.describe(),
            Score::Regression(s) => s.describe(),
            Score::Multilabel(s) => s.describe(),
            Score::Segmentation(s) => s.describe(),
            Score::Command(s) => s.describe(),
        }
    }

    /// The score and the second figure, briefly (`95.33% / 0.3075`).
    pub fn brief(&self) -> String {
        match self {
            Score::Classification(s) => s.brief(),
            _ => self.task().format_score(self.value()),
        }
    }

    /// As the best checkpoint's figures.
    pub fn best(&self) -> Best {
        match self {
            Score::Classification(s) if s.score.is_none() => Best::Classification(s.into()),
            other => Best::Other(other.clone()),
        }
    }
}

/// The best checkpoint's figures in a report. Serialised as the task's own.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Best {
    /// Classification figures.
    Classification(classification::Best),
    /// Any other task's figures: its score.
    Other(Score),
}

// A classification score read back as `Other` keeps its chosen figure; one with the default
// figure is written and read as `Classification`.
untagged_deserialize!(Best { Classification(classification::Best), Other(Score) });

impl Best {
    /// The score.
    pub fn value(&self) -> f64 {
        match self {
            Best::Classification(b) => b.top1,
            Best::Other(s) => s.value(),
        }
    }

    /// Cells under [`Task::columns`] (empty where an older report lacks a figure).
    pub fn cells(&self) -> Vec<Option<String>> {
        match self {
            Best::Classification(b) => b.cells(),
            Best::Other(s) => s.cells(),
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
    /// The score gained (higher is better: an RMSE that dropped by 0.01 gains 0.01).
    #[serde(rename = "gain")]
    Other(f64),
}

impl Gain {
    /// A gain of `value` in `task`'s score.
    pub fn of(task: &Task, value: f64) -> Gain {
        match task {
            Task::Classification(c) if c.score.is_none() => Gain::Classification(value),
            _ => Gain::Other(value),
        }
    }

    /// The gain.
    pub fn value(&self) -> f64 {
        match self {
            Gain::Classification(v) | Gain::Other(v) => *v,
        }
    }
}

/// A threshold on one figure (`miou>=0.72`, `rmse<=0.1`): what `--gate` checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// The figure.
    pub figure: String,
    /// `>=` (true) or `<=`.
    pub at_least: bool,
    /// The bound.
    pub bound: f64,
}

impl std::str::FromStr for Gate {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Gate, String> {
        let (at, at_least) = match (s.find(">="), s.find("<=")) {
            (Some(i), None) => (i, true),
            (None, Some(i)) => (i, false),
            _ => return Err(format!("`{s}` is not FIGURE>=VALUE or FIGURE<=VALUE (such as miou>=0.72, rmse<=0.1)")),
        };
        let figure = s[..at].trim().to_string();
        let value = s[at + 2..].trim();
        if figure.is_empty() || figure.contains(['<', '>', '=']) {
            return Err(format!("`{s}` names no figure before the comparison (such as miou>=0.72)"));
        }
        let bound: f64 = value.parse().map_err(|_| format!("`{value}` in `{s}` is not a number"))?;
        if !bound.is_finite() {
            return Err(format!("the bound of `{s}` must be finite"));
        }
        Ok(Gate { figure, at_least, bound })
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.figure, if self.at_least { ">=" } else { "<=" }, self.bound)
    }
}

/// A gate's verdict on one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The gate.
    pub gate: Gate,
    /// The figure's value (NaN when the model had none).
    pub value: f64,
    /// Whether it passed: the value within the bound (NaN never is), and every output finite.
    pub passed: bool,
}

impl Gate {
    /// Fails when `task` has no figure of this name (a metric command's are checked when it has
    /// run: [`Gate::unknown_in`]), or bounds a fraction by more than 1.
    pub fn check(&self, task: &Task) -> std::result::Result<(), String> {
        if matches!(task, Task::Command(_)) {
            return Ok(());
        }
        let f = task.figure(&self.figure).ok_or_else(|| task.unknown_figure(&self.figure))?;
        if f.percent && !(0.0..=1.0).contains(&self.bound) {
            return Err(format!("{} is a fraction: write {} for {}%", f.name, self.bound / 100.0, self.bound));
        }
        Ok(())
    }

    /// Why `score` has no figure of this name (a metric command that did not print it), if it has
    /// none.
    pub fn unknown_in(&self, score: &Score) -> Option<String> {
        match score {
            Score::Command(m) if m.figure(&self.figure).is_none() => Some(format!(
                "the metric command printed no number `{}` (it printed {})",
                self.figure,
                m.figures.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            )),
            _ => None,
        }
    }

    /// The verdict on `score`.
    pub fn verdict(&self, score: &Score) -> Verdict {
        let lower = self.figure.to_lowercase();
        let name = match score.task().figure(&self.figure) {
            // A classification's score does not keep k: its gates were checked against the task.
            _ if matches!(score, Score::Classification(_))
                && lower.len() > 3
                && lower.starts_with("top")
                && lower[3..].chars().all(|c| c.is_ascii_digit())
                && lower != "top1" =>
            {
                "topk".to_string()
            }
            Some(f) if !matches!(score, Score::Command(_)) => f.name.to_string(),
            _ => self.figure.clone(),
        };
        let value = score.figure(&name).unwrap_or(f64::NAN);
        let within = if self.at_least { value >= self.bound } else { value <= self.bound };
        Verdict { gate: self.clone(), value, passed: within && score.nonfinite() == 0 }
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
