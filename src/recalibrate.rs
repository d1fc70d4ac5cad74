//! BatchNorm recalibration: run the statistics graph over training samples, aggregate each
//! layer's batch statistics, and write the model with the new running statistics.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::checkpoint::{dtype, Dtype, TensorSpec};
use crate::error::{Error, Hint, Result, Setting};
use crate::fs::{Outputs, StagedFile, Stamps};
use crate::inputs::{self, DataOptions, Samples};
use crate::onnx::bind::{Binder, Bound};
use crate::onnx::bn::{self, BnLayer};
use crate::onnx::Model;
use crate::part::Part;
use crate::progress;
use crate::runtime::{self, Engine};

/// How batch statistics become running statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsMode {
    /// Count-weighted pooled statistics over all values, merged in f64 (PreciseBN).
    #[default]
    Precise,
    /// `torch.optim.swa_utils.update_bn`'s estimate: the mean over batches of the batch mean and of
    /// the unbiased batch variance. The pass runs only BatchNorm in training mode; `update_bn`
    /// runs the whole model in train mode, so where dropout or stochastic depth comes before a
    /// BatchNorm its statistics are those of a thinned network and differ from these.
    Torch,
}

impl std::str::FromStr for StatsMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "precise" => Ok(StatsMode::Precise),
            "torch" => Ok(StatsMode::Torch),
            _ => Err(format!("unknown statistics mode `{s}`: use precise or torch")),
        }
    }
}

impl std::fmt::Display for StatsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StatsMode::Precise => "precise",
            StatsMode::Torch => "torch",
        })
    }
}

/// Aggregates one layer's batch statistics.
pub trait Accumulator: Send {
    /// Adds a batch: values per channel, per-channel mean and biased variance.
    fn add(&mut self, count: f64, mean: &[f32], var: &[f32]);
    /// The running mean and the unbiased running variance.
    fn finish(&self) -> (Vec<f64>, Vec<f64>);
    /// What has been accumulated, as a part of a pass writes it and parts merge.
    fn sufficient(&self) -> Sufficient;
}

/// Pooled statistics merged with Chan's parallel formula, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Precise {
    /// Values per channel so far.
    pub n: f64,
    /// Per-channel mean.
    pub mean: Vec<f64>,
    /// Per-channel sum of squared deviations from the mean.
    pub m2: Vec<f64>,
}

impl Precise {
    /// For `channels` channels.
    pub fn new(channels: usize) -> Self {
        Precise { n: 0.0, mean: vec![0.0; channels], m2: vec![0.0; channels] }
    }

    /// Chan et al.'s parallel update with a group of `count` values per channel whose mean and
    /// M2 channel `c` has are `mean(c)` and `m2(c)`: n = na + nb, δ = mb − ma,
    /// mean = ma + δ·nb/n, M2 = M2a + M2b + δ²·na·nb/n. An empty group changes nothing.
    fn chan(&mut self, count: f64, mean: impl Fn(usize) -> f64, m2: impl Fn(usize) -> f64) {
        if count == 0.0 {
            return;
        }
        let total = self.n + count;
        for c in 0..self.mean.len() {
            let delta = mean(c) - self.mean[c];
            self.mean[c] += delta * count / total;
            self.m2[c] += m2(c) + delta * delta * self.n * count / total;
        }
        self.n = total;
    }

    /// Merges another part's statistics (same channels) into these.
    pub fn merge(&mut self, other: &Precise) {
        self.chan(other.n, |c| other.mean[c], |c| other.m2[c]);
    }
}

impl Accumulator for Precise {
    fn add(&mut self, count: f64, mean: &[f32], var: &[f32]) {
        self.chan(count, |c| mean[c] as f64, |c| var[c] as f64 * count);
    }

    fn finish(&self) -> (Vec<f64>, Vec<f64>) {
        let denom = (self.n - 1.0).max(1.0);
        (self.mean.clone(), self.m2.iter().map(|m| m / denom).collect())
    }

    fn sufficient(&self) -> Sufficient {
        Sufficient::Precise(self.clone())
    }
}

/// `update_bn`'s cumulative average over batches (momentum=None).
#[derive(Debug, Clone, PartialEq)]
pub struct TorchCompat {
    /// Batches so far.
    pub batches: usize,
    /// Per-channel sum of the batch means.
    pub mean: Vec<f64>,
    /// Per-channel sum of the unbiased batch variances.
    pub var: Vec<f64>,
}

impl TorchCompat {
    /// For `channels` channels.
    pub fn new(channels: usize) -> Self {
        TorchCompat { batches: 0, mean: vec![0.0; channels], var: vec![0.0; channels] }
    }

    /// Merges another part's sums (same channels) into these.
    pub fn merge(&mut self, other: &TorchCompat) {
        for c in 0..self.mean.len() {
            self.mean[c] += other.mean[c];
            self.var[c] += other.var[c];
        }
        self.batches += other.batches;
    }
}

impl Accumulator for TorchCompat {
    fn add(&mut self, count: f64, mean: &[f32], var: &[f32]) {
        let unbias = count / (count - 1.0);
        for c in 0..self.mean.len() {
            self.mean[c] += mean[c] as f64;
            self.var[c] += var[c] as f64 * unbias;
        }
        self.batches += 1;
    }

    fn finish(&self) -> (Vec<f64>, Vec<f64>) {
        let k = self.batches.max(1) as f64;
        (self.mean.iter().map(|m| m / k).collect(), self.var.iter().map(|v| v / k).collect())
    }

    fn sufficient(&self) -> Sufficient {
        Sufficient::Torch(self.clone())
    }
}

/// One layer's accumulated statistics in either mode: what a part of a pass writes
/// ([`crate::parts::stats`]) and what the parts' merge adds up.
#[derive(Debug, Clone, PartialEq)]
pub enum Sufficient {
    /// `precise`: count, mean, M2.
    Precise(Precise),
    /// `torch`: batches, sums of batch means and of unbiased batch variances.
    Torch(TorchCompat),
}

impl Sufficient {
    /// The statistics mode.
    pub fn mode(&self) -> StatsMode {
        match self {
            Sufficient::Precise(_) => StatsMode::Precise,
            Sufficient::Torch(_) => StatsMode::Torch,
        }
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        match self {
            Sufficient::Precise(p) => p.mean.len(),
            Sufficient::Torch(t) => t.mean.len(),
        }
    }

    /// Merges `other` (same mode and channels, which the caller checks) into this.
    pub fn merge(&mut self, other: &Sufficient) {
        match (self, other) {
            (Sufficient::Precise(a), Sufficient::Precise(b)) => a.merge(b),
            (Sufficient::Torch(a), Sufficient::Torch(b)) => a.merge(b),
            _ => panic!("statistics of different modes are never merged"),
        }
    }

    /// The running mean and the unbiased running variance.
    pub fn finish(&self) -> (Vec<f64>, Vec<f64>) {
        match self {
            Sufficient::Precise(p) => p.finish(),
            Sufficient::Torch(t) => t.finish(),
        }
    }
}

/// An accumulator for `mode`.
pub fn accumulator(mode: StatsMode, channels: usize) -> Box<dyn Accumulator> {
    match mode {
        StatsMode::Precise => Box::new(Precise::new(channels)),
        StatsMode::Torch => Box::new(TorchCompat::new(channels)),
    }
}

/// How the pass over the data runs.
#[derive(Debug, Clone)]
pub struct PassOptions {
    /// Training samples: an `.npy` / `.npz`, an image folder, Parquet (see [`Samples::open`]).
    pub inputs: PathBuf,
    /// How they are read and preprocessed.
    pub data: DataOptions,
    /// Samples per batch.
    pub batch_size: NonZeroUsize,
    /// Stop after this many samples.
    pub max_samples: Option<usize>,
    /// Statistics mode.
    pub stats: StatsMode,
    /// Where and how to run.
    pub engine: Engine,
    /// Hide progress.
    pub quiet: bool,
}

impl PassOptions {
    /// A pass over `inputs` in batches of 64 with precise statistics on the CPU.
    pub fn new(inputs: impl Into<PathBuf>) -> Self {
        PassOptions {
            inputs: inputs.into(),
            data: DataOptions::default(),
            batch_size: NonZeroUsize::new(64).expect("non-zero"),
            max_samples: None,
            stats: StatsMode::Precise,
            engine: Engine::default(),
            quiet: false,
        }
    }
}

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

/// A model with weights bound and its BatchNorm layers found, ready to recalibrate.
#[derive(Debug)]
pub struct Prepared {
    /// The model, the checkpoint whose names saved weights use, and how it bound.
    pub bound: Bound,
    /// The BatchNorm layers.
    pub layers: Vec<BnLayer>,
}

impl Prepared {
    /// Finds the BatchNorm layers of a bound model; a model without any is an error.
    pub fn new(bound: Bound) -> Result<Self> {
        let layers = bn::find(&bound.model)?;
        Ok(Prepared { bound, layers })
    }
}

/// Result of a pass: per layer (mean, unbiased variance), and counts.
#[derive(Debug, Clone)]
pub struct PassResult {
    /// Per layer: running mean and unbiased running variance.
    pub stats: Vec<(Vec<f64>, Vec<f64>)>,
    /// Samples seen.
    pub samples: usize,
    /// Batches run.
    pub batches: usize,
    /// Seconds spent in the pass (after the session was created).
    pub seconds: f64,
    /// Seconds until the first batch's statistics were in: ONNX Runtime's and cuDNN's set-up on
    /// the first run, plus the batch itself.
    pub first_batch_seconds: f64,
    /// Images skipped because they could not be decoded, each with why.
    pub skipped: Vec<String>,
    /// How images were read and preprocessed (`None` for float arrays).
    pub preprocessing: Option<String>,
}

/// Fails on the first float weight of the bound model that holds NaN or Inf, naming it as the
/// checkpoint does (and its file), or as the model does for its own weights: such a weight makes
/// every activation after it non-finite, which the pass would otherwise blame on the first
/// BatchNorm layer downstream. The running statistics are skipped: the pass replaces them.
pub fn check_weights_finite(prepared: &Prepared) -> Result<()> {
    let model = &prepared.bound.model;
    let stats: std::collections::HashSet<&str> =
        prepared.layers.iter().flat_map(|l| [l.mean.as_str(), l.var.as_str()]).collect();
    let to_ck = prepared.bound.binding.as_ref().map(|b| b.checkpoint_names()).unwrap_or_default();
    for t in &model.graph().initializer {
        let Some(dt) = crate::onnx::dtype_of(t.data_type()).filter(|&d| dtype::is_float(d)) else { continue };
        if stats.contains(t.name()) {
            continue;
        }
        let at = match &t.raw_data {
            Some(raw) => dtype::first_nonfinite(dt, raw),
            None => dtype::first_nonfinite(dt, &crate::onnx::tensor_data(t)?.2),
        };
        let Some(at) = at else { continue };
        let message = format!(
            "holds a non-finite value (NaN or Inf) at element {at}; BatchNorm statistics cannot be computed with it"
        );
        let ck = &prepared.bound.checkpoint;
        return Err(match to_ck.get(t.name()) {
            Some(name) => Error::tensor(ck.file_of_name(name).unwrap_or(ck.path()), *name, message),
            None => Error::tensor(&model.path, t.name(), message),
        });
    }
    Ok(())
}

/// What a pass, or a part of one, accumulated.
#[derive(Debug, Clone)]
pub struct Accumulated {
    /// Per layer.
    pub layers: Vec<Sufficient>,
    /// Samples seen by this part.
    pub samples: usize,
    /// Batches run by this part.
    pub batches: usize,
    /// Samples of the whole pass (every part).
    pub total_samples: usize,
    /// Seconds spent in the pass (after the session was created).
    pub seconds: f64,
    /// Seconds until the first batch's statistics were in.
    pub first_batch_seconds: f64,
    /// Images skipped because they could not be decoded, each with why.
    pub skipped: Vec<String>,
    /// How images were read and preprocessed (`None` for float arrays).
    pub preprocessing: Option<String>,
}

impl Accumulated {
    /// The running statistics.
    pub fn finish(&self) -> PassResult {
        PassResult {
            stats: self.layers.iter().map(Sufficient::finish).collect(),
            samples: self.samples - self.skipped.len().min(self.samples),
            batches: self.batches,
            seconds: self.seconds,
            first_batch_seconds: self.first_batch_seconds,
            skipped: self.skipped.clone(),
            preprocessing: self.preprocessing.clone(),
        }
    }
}

/// Runs the statistics graph of `prepared` over the samples and aggregates the statistics.
pub fn compute(prepared: &Prepared, opts: &PassOptions) -> Result<PassResult> {
    Ok(accumulate(prepared, opts, Part::WHOLE)?.finish())
}

/// Runs the statistics graph over `part` of the pass's batches (contiguous, whole batches: see
/// [`Part::range`]) and returns the layers' accumulated statistics; with [`Part::WHOLE`], the
/// whole pass. A part that gets no batch is an error.
pub fn accumulate(prepared: &Prepared, opts: &PassOptions, part: Part) -> Result<Accumulated> {
    let batch_size = opts.batch_size.get();
    if batch_size == 1 && opts.stats == StatsMode::Torch {
        return Err(Error::setting(
            Setting::BatchSize,
            "of 1 with torch statistics: the unbiased batch variance of one sample is undefined (update_bn fails \
             the same way); use a larger batch or precise statistics",
        ));
    }
    let model = &prepared.bound.model;
    let specs = crate::onnx::input_specs(model)?;
    let data = Samples::open(&opts.inputs, &specs, &opts.data)?;
    // The samples of the pass where the source knows its length (a source that does not runs
    // until it ends, or until `max_samples`).
    let known = data.len().map(|n| opts.max_samples.map_or(n, |m| m.min(n)));
    let too_few = |samples: usize| {
        Error::format(&opts.inputs, format!("has {samples} samples, fewer than one batch of {batch_size}"))
            .hint(Hint::SmallerBatch { capped: opts.max_samples.is_some() })
    };
    if let Some(samples) = known.filter(|&n| n < batch_size) {
        return Err(too_few(samples));
    }
    runtime::check_batch(&specs, batch_size, known, false)?;
    let range = crate::part::pass_range(known, batch_size, part, Setting::Shard)?;
    let (first, end) = (range.samples.start, range.samples.end.min(opts.max_samples.unwrap_or(usize::MAX)));
    check_weights_finite(prepared)?;
    let (stats_model, layout) = bn::stats_model(model, &prepared.layers, opts.engine.reduction())?;
    let streams = runtime::concurrent_runs(&opts.engine, range.batches.len())?;
    let mut sessions = runtime::sessions_for(&stats_model, &opts.engine, false, streams)?;
    let started = Instant::now();
    let mut accs: Vec<Box<dyn Accumulator>> =
        prepared.layers.iter().map(|l| accumulator(opts.stats, l.channels)).collect();
    let bar = progress::samples_bar(known.map(|_| (end - first) as u64), "recalibrating", opts.quiet);
    // Batches are numbered in messages as in the whole pass.
    let mut batches = range.batches.start;
    let mut seen = 0;
    let reads = data.batches(first..end, batch_size)?;
    let ran = runtime::run_batches(&mut sessions, &specs, reads, &[&layout.output], &bar, |batch, out| {
        seen += batch.indices.len();
        let all = &out[0].data;
        let need = layout.offsets.last().zip(prepared.layers.last()).map_or(0, |(&at, l)| at + 2 * l.channels + 1);
        if all.len() < need {
            return Err(Error::Runtime(format!(
                "the statistics output holds {} values where the BatchNorm layers' channels need {need}",
                all.len()
            )));
        }
        for (k, (&at, l)) in layout.offsets.iter().zip(&prepared.layers).enumerate() {
            let c = l.channels;
            let (mean, var, count) = (&all[at..at + c], &all[at + c..at + 2 * c], all[at + 2 * c] as f64);
            if mean.iter().chain(var).any(|v| !v.is_finite()) {
                // Finite means and an infinite variance: the activations are finite but so large
                // (about 1e19 or more) that their variance exceeds float32's range.
                let overflow = mean.iter().all(|v| v.is_finite()) && !var.iter().any(|v| v.is_nan());
                let what = if overflow {
                    "its input's batch variance exceeds float32's range (activations of about 1e19 or more)"
                } else {
                    "its input holds NaN or Inf"
                };
                return Err(Error::node(
                    &l.name,
                    "BatchNormalization",
                    format!("{what} in batch {} (the first layer where it appears)", batches + 1),
                ));
            }
            if opts.stats == StatsMode::Torch && count < 2.0 {
                return Err(Error::node(
                    &l.name,
                    "BatchNormalization",
                    format!(
                        "batch {} has {count} value per channel: the unbiased variance is undefined with torch statistics",
                        batches + 1
                    ),
                ));
            }
            accs[k].add(count, mean, var);
        }
        batches += 1;
        Ok(())
    })?;
    bar.finish_and_clear();
    if known.is_none() && ran.samples < batch_size {
        return Err(too_few(ran.samples));
    }
    if seen == 0 || (opts.stats == StatsMode::Torch && seen < 2) {
        return Err(Error::format(
            &opts.inputs,
            format!(
                "left {seen} samples to run after skipping {} images that could not be decoded: there are no \
                 statistics to compute",
                data.skipped().len()
            ),
        ));
    }
    Ok(Accumulated {
        layers: accs.iter().map(|a| a.sufficient()).collect(),
        // The range covered, skipped images included: what a part stands for when parts merge.
        samples: ran.samples,
        batches: ran.batches,
        total_samples: known.unwrap_or(ran.samples),
        seconds: started.elapsed().as_secs_f64(),
        first_batch_seconds: ran.first_batch.as_secs_f64(),
        skipped: data.skipped(),
        preprocessing: data.preprocessing(),
    })
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
}

/// Per-layer movement of the statistics from `old` (the model's) to `new`.
pub fn layer_summaries(model: &Model, layers: &[BnLayer], new: &[(Vec<f64>, Vec<f64>)]) -> Vec<LayerSummary> {
    let values = |name: &str| -> Option<Vec<f64>> {
        let (dt, _, bytes) = crate::onnx::tensor_data(bn::constant(model.graph(), name)?).ok()?;
        dtype::is_float(dt).then(|| dtype::to_f64(dt, &bytes))
    };
    layers
        .iter()
        .zip(new)
        .map(|(l, (mean, var))| {
            let (old_mean, old_var) = (values(&l.mean), values(&l.var));
            let (mut shift, mut ratio) = (f64::NAN, f64::NAN);
            if let (Some(om), Some(ov)) = (old_mean, old_var) {
                if om.len() == mean.len() && ov.len() == var.len() && !mean.is_empty() {
                    shift = (0..mean.len())
                        .map(|c| (mean[c] - om[c]).abs() / (ov[c] + l.epsilon as f64).sqrt())
                        .fold(0.0, f64::max);
                    ratio =
                        (0..var.len()).map(|c| (var[c] + l.epsilon as f64) / (ov[c] + l.epsilon as f64)).sum::<f64>()
                            / var.len() as f64;
                }
            }
            LayerSummary {
                name: l.name.clone(),
                prefix: l.prefix.clone(),
                channels: l.channels,
                mean_shift: shift,
                var_ratio: ratio,
            }
        })
        .collect()
}

/// Writes the checkpoint's tensors under their own names with the new running statistics (and
/// `num_batches_tracked` = batches, as update_bn leaves it), atomically.
pub fn save_weights(
    prepared: &Prepared,
    stat_names: &[(String, String)],
    result: &PassResult,
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    crate::fs::check_output(path)?;
    stage_weights(prepared, stat_names, result, path, metadata)?.publish()
}

/// [`save_weights`] into a staged file, to publish with other outputs.
pub fn stage_weights(
    prepared: &Prepared,
    stat_names: &[(String, String)],
    result: &PassResult,
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<StagedFile> {
    let ck = &prepared.bound.checkpoint;
    let to_ck: std::collections::HashMap<&str, &str> =
        prepared.bound.binding.as_ref().map(|b| b.checkpoint_names()).unwrap_or_default();
    let ck_name = |graph: &str| to_ck.get(graph).map(|s| s.to_string()).unwrap_or_else(|| graph.to_string());
    let mut replaced: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut counters: Vec<String> = Vec::new();
    for (l, ((mean, var), (mean_name, var_name))) in prepared.layers.iter().zip(result.stats.iter().zip(stat_names)) {
        let (m, v) = (ck_name(&l.mean), ck_name(&l.var));
        let (m, v) = if ck.get(&m).is_some() { (m, v) } else { (ck_name(mean_name), ck_name(var_name)) };
        if let Some(prefix) = m.strip_suffix(".running_mean") {
            counters.push(format!("{prefix}.num_batches_tracked"));
        }
        replaced.insert(m, mean.clone());
        replaced.insert(v, var.clone());
    }
    let mut tensors = Vec::new();
    for t in ck.tensors() {
        let bytes = if let Some(values) = replaced.remove(&t.name) {
            let dt = if dtype::is_float(t.dtype) { t.dtype } else { Dtype::F32 };
            let mut out = vec![0u8; values.len() * dtype::width(dt)];
            dtype::encode(dt, &values, &mut out);
            tensors.push((TensorSpec { name: t.name.clone(), dtype: dt, shape: vec![values.len()] }, out));
            continue;
        } else if counters.contains(&t.name) && t.dtype == Dtype::I64 && t.numel() == 1 {
            (result.batches as i64).to_le_bytes().to_vec()
        } else {
            ck.bytes(t).to_vec()
        };
        tensors.push((TensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() }, bytes));
    }
    for (name, values) in replaced {
        let mut out = vec![0u8; values.len() * 4];
        dtype::encode(Dtype::F32, &values, &mut out);
        tensors.push((TensorSpec { name, dtype: Dtype::F32, shape: vec![values.len()] }, out));
    }
    crate::checkpoint::stage_tensors(path, &tensors, metadata)
}

/// Writes `result`'s statistics into the bound model and records `meta` in its metadata
/// (`swa.KEY`); returns the statistics' initializer names per layer.
pub fn apply(
    prepared: &mut Prepared,
    result: &PassResult,
    meta: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>> {
    let names = bn::apply(&mut prepared.bound.model, &prepared.layers, &result.stats)?;
    record_metadata(&mut prepared.bound.model, meta);
    Ok(names)
}

/// Records `meta` in the model's metadata properties as `swa.KEY`, replacing earlier values.
pub fn record_metadata(model: &mut Model, meta: &BTreeMap<String, String>) {
    let props = &mut model.proto.metadata_props;
    for (k, v) in meta {
        let key = format!("swa.{k}");
        props.retain(|p| p.key() != key);
        props.push(crate::onnx::proto::StringStringEntryProto { key: Some(key), value: Some(v.clone()) });
    }
}

/// Metadata recorded in recalibrated outputs.
pub fn metadata(pass: &PassOptions, result: &PassResult, sources: &[&Path]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("recalibration".into(), pass.stats.to_string());
    m.insert("batch_size".into(), pass.batch_size.to_string());
    m.insert("samples".into(), result.samples.to_string());
    m.insert(
        "sources".into(),
        serde_json::to_string(&sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()).unwrap(),
    );
    m.insert("swa_version".into(), crate::VERSION.into());
    m
}

/// Checks every output before any work: each can be written as a regular file (its missing
/// directories are created), none is an input (`read`), and no two are one file. The model's
/// external data (`X.data`) counts as an output.
fn check_outputs(opts: &RecalibrateOptions, read: &[&Path]) -> Result<crate::fs::OutputDirs> {
    let data = crate::onnx::data_file(&opts.output);
    let mut outputs: Vec<&Path> = vec![&opts.output, &data];
    outputs.extend(opts.save_weights.as_deref());
    let mut dirs = crate::fs::OutputDirs::default();
    for o in &outputs {
        dirs.create_parents(o)?;
        crate::fs::check_output(o)?;
        crate::fs::refuse_overwrite(o, read)?;
    }
    crate::fs::refuse_same_output(&outputs)?;
    Ok(dirs)
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
        staged.push(stage_weights(&prepared, &names, &result, w, &meta)?);
        outputs.push(w.clone());
    }
    staged.append(prepared.bound.model.stage(&opts.output, false)?);
    stamps.check()?;
    staged.publish()?;
    let binding = prepared.bound.binding.unwrap_or_default();
    Ok(RecalibrateSummary {
        outputs,
        created_dirs: dirs.keep(),
        stats: opts.pass.stats,
        device: opts.pass.engine.device.to_string(),
        samples: result.samples,
        batches: result.batches,
        batch_size: opts.pass.batch_size.get(),
        bound: binding.bound.len(),
        unmatched: binding.unmatched,
        layers,
        seconds: result.seconds,
        samples_per_second: result.samples as f64 / result.seconds.max(1e-9),
        seconds_first_batch: result.first_batch_seconds,
        samples_per_second_after_first: (result.batches > 1).then(|| {
            // A pass is never shorter than one full batch.
            (result.samples.saturating_sub(opts.pass.batch_size.get())) as f64
                / (result.seconds - result.first_batch_seconds).max(1e-9)
        }),
        preprocessing: result.preprocessing,
        skipped: result.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches() -> Vec<Vec<f32>> {
        vec![vec![1.0, 2.0, 3.0, 4.0], vec![10.0, 12.0], vec![-1.0, 0.5, 2.0]]
    }

    fn stats(b: &[f32]) -> (f64, f32, f32) {
        let n = b.len() as f32;
        let m = b.iter().sum::<f32>() / n;
        (n as f64, m, b.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / n)
    }

    #[test]
    fn precise_equals_pooled_statistics() {
        let mut acc = Precise::new(1);
        for b in batches() {
            let (n, m, v) = stats(&b);
            acc.add(n, &[m], &[v]);
        }
        let all: Vec<f64> = batches().concat().iter().map(|&x| x as f64).collect();
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        let var = all.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (all.len() - 1) as f64;
        let (m, v) = acc.finish();
        assert!((m[0] - mean).abs() < 1e-6 && (v[0] - var).abs() < 1e-5, "{m:?} {v:?} vs {mean} {var}");
    }

    #[test]
    fn torch_mode_averages_batches_equally_with_unbiased_variance() {
        let mut acc = TorchCompat::new(1);
        let mut means = Vec::new();
        let mut vars = Vec::new();
        for b in batches() {
            let (n, m, v) = stats(&b);
            acc.add(n, &[m], &[v]);
            means.push(m as f64);
            vars.push(v as f64 * n / (n - 1.0));
        }
        let (m, v) = acc.finish();
        assert!((m[0] - means.iter().sum::<f64>() / 3.0).abs() < 1e-9);
        assert!((v[0] - vars.iter().sum::<f64>() / 3.0).abs() < 1e-9);
    }
}
