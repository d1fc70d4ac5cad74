//! Checkpoint ensembles (fast geometric ensembles, Garipov et al. 2018): the mean of the selected
//! checkpoints' predictions on the held-out set ([`crate::tasks::mean`]), scored as one model —
//! with each checkpoint's stored BatchNorm statistics, and, where training samples are given,
//! with each checkpoint's statistics recalibrated first (two rows, as SWA has). Each member is one
//! evaluation pass whose outputs are added to a running sum of predictions per sample (N × C
//! values), so `swa run` gets the ensemble from the checkpoint passes it runs anyway.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::evaluate::{self, Counts, EvalOptions, Evaluation};
use crate::inputs::{self, Selection};
use crate::onnx::bind::Binder;
use crate::onnx::Model;
use crate::recalibrate::{self, PassOptions, Prepared};
use crate::tasks::mean::Mean;
use crate::tasks::{Context, Score};

/// Everything `swa ensemble` needs.
#[derive(Debug, Clone)]
pub struct EnsembleOptions {
    /// The ONNX model (any weights; each checkpoint's are bound into it).
    pub model: PathBuf,
    /// Checkpoint files or directories.
    pub checkpoints: Vec<PathBuf>,
    /// Which checkpoints are members.
    pub selection: Selection,
    /// The state dict to read in `torch.save` checkpoints.
    pub key: Option<String>,
    /// Keep the model's own values for weights a checkpoint lacks.
    pub allow_missing_weights: bool,
    /// The held-out data.
    pub eval: EvalOptions,
    /// Training samples: each member is also evaluated with recalibrated statistics.
    pub pass: Option<PassOptions>,
}

/// One member: its name and its own figures.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// The checkpoint (as reports name it).
    pub name: String,
    /// With its stored statistics.
    pub stored: Score,
    /// With recalibrated statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recalibrated: Option<Score>,
}

/// What `swa ensemble` found.
#[derive(Debug, Clone, Serialize)]
pub struct EnsembleSummary {
    /// The members, each alone.
    pub members: Vec<Member>,
    /// What was averaged.
    pub prediction: &'static str,
    /// The ensemble with the members' stored statistics.
    pub stored: Evaluation,
    /// The ensemble with the members' statistics recalibrated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recalibrated: Option<Evaluation>,
    /// Forward passes over the data (evaluations and recalibrations).
    pub passes: usize,
    /// Seconds in all.
    pub seconds: f64,
}

/// Evaluates `model` as the next member of `mean`.
pub fn member(model: &Model, eval: &EvalOptions, mean: &mut Mean) -> Result<Evaluation> {
    mean.begin_member();
    let path = model.path.clone();
    evaluate::evaluate_into(model, eval, &mut |indices, out, targets| {
        mean.add(indices, out, targets).map_err(|e| Error::format(&path, e))
    })
}

/// The mean of `mean`'s members scored like one model on `eval`'s samples; `first` is a
/// member's evaluation (what was skipped and how images were read).
pub fn score(mean: &Mean, model: &Path, eval: &EvalOptions, first: &Evaluation) -> Result<Evaluation> {
    let mut counts = Counts::new(&eval.task);
    let at = Context {
        model,
        output: "the mean of the models' predictions",
        inputs: &eval.inputs,
        targets: eval.labels.as_deref().or(eval.masks.as_deref()).unwrap_or(&eval.inputs),
        classes: None,
        names: None,
    };
    mean.score(&mut counts.state, &at)?;
    counts.skipped.clone_from(&first.skipped);
    counts.preprocessing.clone_from(&first.preprocessing);
    counts.finish()
}

/// A fresh running sum for `eval`'s task (a metric command's is refused).
pub fn mean_for(eval: &EvalOptions) -> Result<Mean> {
    Mean::new(&eval.task).map_err(Error::usage)
}

/// Evaluates every selected checkpoint and their ensemble, as `opts` says.
pub fn ensemble(opts: &EnsembleOptions) -> Result<EnsembleSummary> {
    let started = Instant::now();
    let binder = Binder::load(&opts.model)?;
    let found = inputs::discover(&opts.checkpoints)?.files;
    let selected = inputs::select(&found, &opts.selection)?;
    if selected.len() < 2 {
        return Err(Error::usage(format!("an ensemble needs at least two checkpoints; {} selected", selected.len())));
    }
    let names = inputs::labels(&selected);
    let mut stored_mean = mean_for(&opts.eval)?;
    let mut recalibrated_mean = opts.pass.as_ref().map(|_| mean_for(&opts.eval)).transpose()?;
    let mut members = Vec::new();
    let mut first: Option<(Evaluation, Option<Evaluation>)> = None;
    let mut passes = 0;
    for (f, name) in selected.iter().zip(names) {
        let bound =
            binder.bind(Some(inputs::open_checkpoint(&f.path, opts.key.as_deref())?), opts.allow_missing_weights)?;
        let stored = member(&bound.model, &opts.eval, &mut stored_mean)?;
        passes += 1;
        let recalibrated = match (&opts.pass, recalibrated_mean.as_mut()) {
            (Some(pass), Some(mean)) => {
                // Only recalibration needs BatchNorm: a model without it is an ensemble too.
                let mut prepared = Prepared::new(bound)?;
                let result = recalibrate::compute(&prepared, pass)?;
                crate::onnx::bn::apply(&mut prepared.bound.model, &prepared.layers, &result.stats)?;
                passes += 2;
                Some(member(&prepared.bound.model, &opts.eval, mean)?)
            }
            _ => None,
        };
        members.push(Member {
            name,
            stored: stored.score(),
            recalibrated: recalibrated.as_ref().map(Evaluation::score),
        });
        first.get_or_insert((stored, recalibrated));
    }
    let (first_stored, first_recalibrated) = first.expect("two members at least");
    let stored = score(&stored_mean, &opts.model, &opts.eval, &first_stored)?;
    let recalibrated = match (recalibrated_mean, first_recalibrated) {
        (Some(mean), Some(first)) => Some(score(&mean, &opts.model, &opts.eval, &first)?),
        _ => None,
    };
    Ok(EnsembleSummary {
        members,
        prediction: stored_mean.kind().describe(),
        stored,
        recalibrated,
        passes,
        seconds: started.elapsed().as_secs_f64(),
    })
}
