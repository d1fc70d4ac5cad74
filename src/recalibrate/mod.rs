//! BatchNorm recalibration: run the statistics graph over training samples, aggregate each
//! layer's batch statistics, and write the model with the new running statistics.

mod outputs;
mod pass;
mod stats;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use outputs::{apply, layer_summaries, metadata, record_metadata, save_weights, stage_weights};
pub use pass::{accumulate, check_weights_finite, compute, Accumulated, PassOptions, PassResult, Prepared};
pub use stats::{accumulator, Accumulator, Precise, StatsMode, Sufficient, TorchCompat, Variance};

use crate::error::{Error, Result};
use crate::fs::{Outputs, Stamps};
use crate::inputs;
use crate::onnx::bind::Binder;

/// Everything `swa recalibrate` needs.
#[derive(Debug, Clone)]
pub struct RecalibrateOptions {
    /// The ONNX model.
    pub model: PathBuf,
    /// Tensors to bind into it first.
    pub weights: Option<PathBuf>,
    /// The state dict to read when the weights are a `torch.save` file.
    pub key: Option<String>,
    /// Keep the model's own values for weights the checkpoint lacks.
    pub allow_missing_weights: bool,
    /// The pass.
    pub pass: PassOptions,
    /// Output ONNX.
    pub output: PathBuf,
    /// Output safetensors with the checkpoint's names.
    pub save_weights: Option<PathBuf>,
}

/// How one layer's statistics moved.
#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    /// BN node.
    pub name: String,
    /// Its checkpoint prefix.
    pub prefix: String,
    /// Channels.
    pub channels: usize,
    /// Largest |new − old| mean over channels, in units of the old standard deviation.
    pub mean_shift: f64,
    /// Mean over channels of new variance / old variance.
    pub var_ratio: f64,
}

/// What `swa recalibrate` did.
#[derive(Debug, Clone, Serialize)]
pub struct RecalibrateSummary {
    /// Outputs written.
    pub outputs: Vec<PathBuf>,
    /// The missing directories created for them, parents first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub created_dirs: Vec<PathBuf>,
    /// Statistics mode.
    pub stats: StatsMode,
    /// Device.
    pub device: String,
    /// Samples seen.
    pub samples: usize,
    /// Batches run.
    pub batches: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Checkpoint tensors bound into the graph.
    pub bound: usize,
    /// Checkpoint tensors that matched no initializer.
    pub unmatched: Vec<String>,
    /// Per layer.
    pub layers: Vec<LayerSummary>,
    /// Seconds in the pass (after the session was created).
    pub seconds: f64,
    /// Samples per second in the pass.
    pub samples_per_second: f64,
    /// Seconds of the first batch, which include the runtime's set-up on its first run.
    pub seconds_first_batch: f64,
    /// Samples per second after the first batch: the steady rate a longer pass approaches.
    pub samples_per_second_after_first: Option<f64>,
    /// How images were read and preprocessed (absent for float arrays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<String>,
    /// Images skipped because they could not be decoded, each with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// How the samples were drawn and ordered (`max_samples` at random, `shuffle`), where not all
    /// of them in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<crate::inputs::Sampling>,
}

/// Checks every output before any work: each can be written as a regular file (its missing
/// directories are created), none is an input (`read`), and no two are one file. The model's
/// external data (`X.data`) counts as an output.
fn check_outputs(opts: &RecalibrateOptions, read: &[&Path]) -> Result<crate::fs::OutputDirs> {
    check_onnx_name(&opts.output)?;
    let data = crate::onnx::data_file(&opts.output);
    let mut outputs: Vec<&Path> = vec![&opts.output, &data];
    // Every file the weights are written to (a TensorFlow bundle's index and data).
    let weights: Vec<PathBuf> = opts
        .save_weights
        .iter()
        .flat_map(|w| crate::checkpoint::format::for_output(w, opts.weights.as_deref()).output_files(w))
        .collect();
    outputs.extend(weights.iter().map(PathBuf::as_path));
    let mut dirs = crate::fs::OutputDirs::default();
    for o in &outputs {
        dirs.create_parents(o)?;
        crate::fs::check_output(o)?;
        crate::fs::refuse_overwrite(o, read)?;
    }
    crate::fs::refuse_same_output(&outputs)?;
    Ok(dirs)
}

/// Refuses an ONNX output named like a checkpoint (`-o swa.safetensors` wrote an ONNX model
/// under a name every reader takes for safetensors).
pub fn check_onnx_name(output: &Path) -> Result<()> {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match crate::checkpoint::FORMATS.iter().find(|f| f.writes(&name)) {
        Some(format) => Err(Error::usage(format!(
            "output {} is named like a {} checkpoint, but it is the ONNX model: name it NAME.onnx (the \
             recalibrated weights can be saved as a checkpoint beside it)",
            output.display(),
            format.name()
        ))),
        None => Ok(()),
    }
}

/// Recalibrates as `opts` says: nothing is written unless every step succeeds.
pub fn recalibrate(opts: &RecalibrateOptions) -> Result<RecalibrateSummary> {
    recalibrate_from(opts, &[&opts.pass.inputs], |prepared| compute(prepared, &opts.pass))
}

/// Binds `opts.weights` into `opts.model`, takes the running statistics from `pass` (a pass over
/// `opts.pass.inputs`, or merged partial statistics) and writes the outputs as [`recalibrate`]
/// does; `read` are the files the statistics come from (checked not to be outputs, nor to change
/// meanwhile). `opts.pass` describes the pass for the metadata and summary.
pub fn recalibrate_from(
    opts: &RecalibrateOptions,
    read: &[&Path],
    pass: impl FnOnce(&Prepared) -> Result<PassResult>,
) -> Result<RecalibrateSummary> {
    let weights = opts.weights.as_deref().map(|w| inputs::open_checkpoint(w, opts.key.as_deref())).transpose()?;
    let binder = Binder::load(&opts.model)?;
    let mut all_read: Vec<&Path> = binder.model().files().iter().map(PathBuf::as_path).collect();
    all_read.extend(weights.iter().flat_map(|w| w.files()));
    all_read.extend(read);
    let dirs = check_outputs(opts, &all_read)?;
    let stamps = Stamps::of(&all_read)?;
    let mut sources: Vec<&Path> = vec![&opts.model];
    sources.extend(opts.weights.as_deref());
    sources.push(&opts.pass.inputs);
    let mut prepared = Prepared::new(binder.bind(weights, opts.allow_missing_weights)?)?;
    let result = pass(&prepared)?;
    let layers = layer_summaries(&prepared.bound.model, &prepared.layers, &result.stats);
    let meta = metadata(&opts.pass, &result, &sources);
    let names = apply(&mut prepared, &result, &meta)?;
    // Everything is staged before anything is published (the weights, then the model last), so a
    // failure leaves no file behind.
    let mut staged = Outputs::default();
    let mut outputs = vec![opts.output.clone()];
    if let Some(w) = &opts.save_weights {
        staged.append(stage_weights(&prepared, &names, &result, w, &meta, None)?);
        outputs.push(w.clone());
    }
    staged.append(prepared.bound.model.stage(&opts.output, false)?);
    stamps.check()?;
    staged.publish()?;
    let binding = prepared.bound.binding.unwrap_or_default();
    let batch_size = result.own_batch_size.unwrap_or(opts.pass.batch_size.get());
    Ok(RecalibrateSummary {
        outputs,
        created_dirs: dirs.keep(),
        stats: opts.pass.stats,
        device: opts.pass.engine.device.to_string(),
        samples: result.samples,
        batches: result.batches,
        batch_size,
        bound: binding.bound.len(),
        unmatched: binding.unmatched,
        layers,
        seconds: result.seconds,
        samples_per_second: result.samples as f64 / result.seconds.max(1e-9),
        seconds_first_batch: result.first_batch_seconds,
        samples_per_second_after_first: (result.batches > 1).then(|| {
            // A pass is never shorter than one full batch.
            (result.samples.saturating_sub(batch_size)) as f64 / (result.seconds - result.first_batch_seconds).max(1e-9)
        }),
        preprocessing: result.preprocessing,
        sampling: result.sampling,
        skipped: result.skipped,
    })
}
