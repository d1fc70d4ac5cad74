//! Partial evaluations: a part of an evaluation writes its counts (correct, top-k, non-finite,
//! per class) and its f64 loss sum as JSON; the merge checks that the partials are one split of
//! one labelled set evaluated with one model and weights, and adds them up in part order.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{complete_order, Disagreement, Identity};
use crate::error::{Error, Result};
use crate::evaluate::{self, Counts, EvalOptions, EvaluateOptions, Evaluation};
use crate::onnx::bind::Binder;
use crate::onnx::Model;
use crate::part::Part;

/// The `format` of a partial evaluation file.
pub const FORMAT: &str = "swa-partial-eval";

/// One part of an evaluation, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialEval {
    /// Always [`FORMAT`].
    pub format: String,
    /// The version of swa that wrote it.
    pub swa_version: String,
    /// The model and weights evaluated.
    #[serde(flatten)]
    pub identity: Identity,
    /// The inputs' file name.
    pub inputs: String,
    /// The labels' file name.
    pub labels: String,
    /// Samples in the whole set.
    pub total_samples: usize,
    /// Batch size (the split is by whole batches).
    pub batch_size: usize,
    /// Which part.
    pub shard: Part,
    /// The first sample of this part.
    pub first_sample: usize,
    /// Samples of this part.
    pub samples: usize,
    /// What the part counted (classification: the counts and the loss sum).
    pub counts: Counts,
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Evaluates `part` of the labelled set with `model` (weights bound; `identity` says which).
pub fn evaluate_part(model: &Model, identity: Identity, opts: &EvalOptions, part: Part) -> Result<PartialEval> {
    let (counts, total) = evaluate::accumulate(model, opts, part)?;
    let batches = part.range(total.div_ceil(opts.batch_size.get()));
    Ok(PartialEval {
        format: FORMAT.into(),
        swa_version: crate::VERSION.into(),
        identity,
        inputs: file_name(&opts.inputs),
        labels: opts.labels.as_deref().or(opts.masks.as_deref()).map(file_name).unwrap_or_default(),
        total_samples: total,
        batch_size: opts.batch_size.get(),
        shard: part,
        first_sample: batches.start * opts.batch_size.get(),
        // The range covered: the samples counted plus the images skipped.
        samples: counts.samples() + counts.skipped(),
        counts,
    })
}

/// Everything one part of an evaluation needs.
#[derive(Debug, Clone)]
pub struct PartialEvalOptions {
    /// The whole evaluation.
    pub evaluation: EvaluateOptions,
    /// This process's part of it.
    pub part: Part,
    /// The partial evaluation file to write.
    pub output: PathBuf,
}

/// Binds the weights, evaluates `opts.part` of the batches and writes its counts atomically;
/// returns them and the missing directories created for the file, parents first.
pub fn write_part(opts: &PartialEvalOptions) -> Result<(PartialEval, Vec<PathBuf>)> {
    let e = &opts.evaluation;
    let weights = e.weights.as_deref().map(|w| crate::inputs::open_checkpoint(w, e.key.as_deref())).transpose()?;
    let binder = Binder::load(&e.model)?;
    let identity = Identity::of(binder.model(), weights.as_ref(), e.key.as_deref())?;
    let mut read: Vec<PathBuf> = binder.model().files().to_vec();
    read.extend(weights.iter().flat_map(|w| w.files()).map(PathBuf::from));
    read.push(e.eval.inputs.clone());
    read.extend(e.eval.labels.clone());
    let read: Vec<&Path> = read.iter().map(PathBuf::as_path).collect();
    let bound = binder.bind(weights, e.allow_missing_weights)?;
    let p = evaluate_part(&bound.model, identity, &e.eval, opts.part)?;
    let created = write(&p, &opts.output, &read)?;
    Ok((p, created))
}

/// Writes `partial` to `path` atomically (pretty JSON); returns the missing directories it created
/// for it, parents first.
pub fn write(partial: &PartialEval, path: &Path, read: &[&Path]) -> Result<Vec<PathBuf>> {
    let mut dirs = crate::fs::OutputDirs::default();
    dirs.create_parents(path)?;
    crate::fs::check_output(path)?;
    crate::fs::refuse_overwrite(path, read)?;
    let json = serde_json::to_string_pretty(partial).expect("serialisable") + "\n";
    crate::fs::StagedFile::with_bytes(path, json.as_bytes())?.publish()?;
    Ok(dirs.keep())
}

/// Reads a partial evaluation file.
pub fn read(path: &Path) -> Result<PartialEval> {
    let bytes = crate::fs::read_regular(path)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(path, format!("is not a partial evaluation (JSON): {e}")))?;
    if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(Error::format(
            path,
            format!("is not a partial evaluation (no `format: {FORMAT}`; write one with `swa evaluate` and a partial output)"),
        ));
    }
    serde_json::from_value(v).map_err(|e| Error::format(path, format!("is not a valid partial evaluation: {e}")))
}

/// Checks that `partials` (read from `files`) are every part of one evaluation (same model and
/// weights hashes and key, input and label file names, sample count, batch size and k; every part
/// once, each with the samples its part gets) and adds their counts in part order.
///
/// Parts scored by a metric command are merged only when `command` is that command: a command is
/// run when its caller gives it, never because a file names it.
pub fn merge(files: &[PathBuf], partials: &[PartialEval]) -> Result<(Identity, Evaluation)> {
    merge_scored_by(files, partials, None)
}

/// [`merge`], running `command` where the parts were scored by that metric command.
pub fn merge_scored_by(
    files: &[PathBuf],
    partials: &[PartialEval],
    command: Option<&str>,
) -> Result<(Identity, Evaluation)> {
    for (file, p) in files.iter().zip(partials) {
        match (p.counts.state.task(), command) {
            (crate::tasks::Task::Command(c), Some(given)) if c.command == given => {}
            (crate::tasks::Task::Command(c), Some(given)) => {
                return Err(Error::format(
                    file,
                    format!("was scored by the metric command `{}`, not by `{given}`", c.command),
                ))
            }
            (crate::tasks::Task::Command(c), None) => {
                return Err(Error::format(
                    file,
                    format!(
                        "was scored by the metric command `{}`: a metric command runs only when the merge is given it \
                         again, never because a file names it",
                        c.command
                    ),
                )
                .hint(crate::error::Hint::MetricCommand))
            }
            (_, Some(_)) => {
                return Err(Error::format(
                    file,
                    "was not scored by a metric command: leave the command out of the merge",
                ))
            }
            _ => {}
        }
    }
    let parts: Vec<Part> = partials.iter().map(|p| p.shard).collect();
    let order = complete_order(files, &parts)?;
    let (f0, first) = (&files[order[0]], &partials[order[0]]);
    let total_batches = first.total_samples.div_ceil(first.batch_size.max(1));
    let mut acc = Counts::new(&first.counts.state.task());
    for &k in &order {
        let (file, p) = (&files[k], &partials[k]);
        let mut why = Disagreement::new(&first.identity, &p.identity);
        why.field("inputs", &first.inputs, &p.inputs);
        why.field("labels", &first.labels, &p.labels);
        why.field("sample counts", first.total_samples, p.total_samples);
        why.field("batch sizes", first.batch_size, p.batch_size);
        why.check(f0, file, "evaluation")?;
        let range = p.shard.range(total_batches);
        let (start, end) = (range.start * p.batch_size, range.end.saturating_mul(p.batch_size).min(p.total_samples));
        if p.first_sample != start
            || p.samples != end - start
            || p.counts.samples().checked_add(p.counts.skipped()) != Some(p.samples)
        {
            return Err(Error::format(
                file,
                format!(
                    "part {} covers samples {}..{} where part {} of {} samples in batches of {} covers {start}..{end}",
                    p.shard,
                    p.first_sample,
                    p.first_sample.saturating_add(p.counts.samples()),
                    p.shard,
                    p.total_samples,
                    p.batch_size
                ),
            ));
        }
        if let crate::tasks::State::Command(c) = &p.counts.state {
            if let Some(i) = c.indices.iter().find(|&&i| !(start..end).contains(&i)) {
                return Err(Error::format(
                    file,
                    format!("part {} holds sample {i}, outside its samples {start}..{end}", p.shard),
                ));
            }
        }
        acc.merge(&p.counts)
            .map_err(|e| Error::Mismatch(format!("{} and {} cannot be added: {e}", f0.display(), file.display())))?;
    }
    if acc.samples() == 0 {
        return Err(Error::Mismatch(format!(
            "the parts left no samples to evaluate after skipping {} images that could not be decoded",
            acc.skipped()
        )));
    }
    Ok((first.identity.clone(), acc.finish()?))
}
