//! Partial BatchNorm statistics: a part of a recalibration pass writes each layer's sufficient
//! statistics in f64 to a safetensors file; the merge checks that the partials are one split of
//! one pass over one model and weights, merges them in part order, and writes the model as
//! `recalibrate` does.
//!
//! File layout: per BatchNorm layer (the ONNX node's name), `precise`: `<layer>.count` `[1]`,
//! `<layer>.mean` `[C]`, `<layer>.m2` `[C]`; `torch`: `<layer>.batches` `[1]`, `<layer>.sum_mean` `[C]`,
//! `<layer>.sum_var` `[C]`; all F64. `__metadata__`: `format` = `swa-partial-stats`, the
//! [`Identity`] (`model`, `model_sha256`, `weights`, `weights_sha256`, `key`), `stats`,
//! `batch_size`, `shard` (`I/N`), `samples` and `batches` of this part, `total_samples` of the
//! pass, `inputs` (the path, recorded in the merged model's sources), `device`, `layers` (JSON
//! list), `swa_version`; with images, `preprocessing` and `skipped` (a JSON list of the images
//! that could not be decoded, each with why); where the samples were drawn at random or shuffled,
//! `sampling` (JSON: `drawn`, `of`, `seed`, `shuffled`).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{complete_order, Disagreement, Identity};
use crate::checkpoint::{dtype, Checkpoint, Dtype, TensorSpec};
use crate::error::{Error, Result};
use crate::inputs;
use crate::onnx::bind::Binder;
use crate::part::Part;
use crate::recalibrate::{
    self, Accumulated, PassOptions, PassResult, Precise, Prepared, RecalibrateOptions, RecalibrateSummary, StatsMode,
    Sufficient, TorchCompat,
};

/// The `format` of a partial statistics file.
pub const FORMAT: &str = "swa-partial-stats";

/// Everything one part of a recalibration pass needs.
#[derive(Debug, Clone)]
pub struct PartialStatsOptions {
    /// The ONNX model.
    pub model: PathBuf,
    /// Tensors to bind into it first.
    pub weights: Option<PathBuf>,
    /// The state dict to read when the weights are a `torch.save` file.
    pub key: Option<String>,
    /// Keep the model's own values for weights the checkpoint lacks.
    pub allow_missing_weights: bool,
    /// The whole pass.
    pub pass: PassOptions,
    /// This process's part of it.
    pub part: Part,
    /// The partial statistics file to write.
    pub output: PathBuf,
}

/// What one part of a pass did.
#[derive(Debug, Clone, Serialize)]
pub struct PartialStatsSummary {
    /// The file written.
    pub output: PathBuf,
    /// The missing directories created for it, parents first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub created_dirs: Vec<PathBuf>,
    /// The part.
    pub shard: Part,
    /// Statistics mode.
    pub stats: StatsMode,
    /// BatchNorm layers.
    pub layers: usize,
    /// Samples of this part.
    pub samples: usize,
    /// Batches of this part.
    pub batches: usize,
    /// Samples of the whole pass.
    pub total_samples: usize,
    /// Seconds in the pass.
    pub seconds: f64,
    /// Samples per second in the pass.
    pub samples_per_second: f64,
}

/// Runs `opts.part` of the pass and writes its statistics atomically.
pub fn write(opts: &PartialStatsOptions) -> Result<PartialStatsSummary> {
    let weights = opts.weights.as_deref().map(|w| inputs::open_checkpoint(w, opts.key.as_deref())).transpose()?;
    let binder = Binder::load(&opts.model)?;
    let mut read: Vec<&Path> = binder.model().files().iter().map(PathBuf::as_path).collect();
    read.extend(weights.iter().flat_map(|w| w.files()));
    read.push(&opts.pass.inputs);
    let mut dirs = crate::fs::OutputDirs::default();
    dirs.create_parents(&opts.output)?;
    crate::fs::check_output(&opts.output)?;
    crate::fs::refuse_overwrite(&opts.output, &read)?;
    let stamps = crate::fs::Stamps::of(&read)?;
    let identity = Identity::of(binder.model(), weights.as_ref(), opts.key.as_deref())?;
    let prepared = Prepared::new(binder.bind(weights, opts.allow_missing_weights)?)?;
    let acc = recalibrate::accumulate(&prepared, &opts.pass, opts.part)?;
    let names: Vec<&str> = prepared.layers.iter().map(|l| l.name.as_str()).collect();
    let mut meta = metadata(&identity, &opts.pass, opts.part, &acc);
    meta.insert("layers".into(), serde_json::to_string(&names).expect("strings"));
    let mut tensors = Vec::new();
    for (name, layer) in names.iter().zip(&acc.layers) {
        let (scalar, a, b) = match layer {
            Sufficient::Precise(p) => (("count", p.n), ("mean", &p.mean), ("m2", &p.m2)),
            Sufficient::Torch(t) => (("batches", t.batches as f64), ("sum_mean", &t.mean), ("sum_var", &t.var)),
        };
        tensors.push(f64_tensor(format!("{name}.{}", scalar.0), &[scalar.1]));
        tensors.push(f64_tensor(format!("{name}.{}", a.0), a.1));
        tensors.push(f64_tensor(format!("{name}.{}", b.0), b.1));
    }
    // Safetensors whatever the name (docs/scale-out.md): `read` and `swa merge-stats` read this
    // format only, so `--partial-out stats-0.pt` must not become a torch.save file.
    let staged = crate::checkpoint::stage_tensors_as(
        &crate::checkpoint::safetensors::Safetensors,
        &opts.output,
        &tensors,
        &meta,
        None,
    )?;
    stamps.check()?;
    staged.publish()?;
    Ok(PartialStatsSummary {
        output: opts.output.clone(),
        created_dirs: dirs.keep(),
        shard: opts.part,
        stats: opts.pass.stats,
        layers: names.len(),
        samples: acc.samples,
        batches: acc.batches,
        total_samples: acc.total_samples,
        seconds: acc.seconds,
        samples_per_second: acc.samples as f64 / acc.seconds.max(1e-9),
    })
}

fn f64_tensor(name: String, values: &[f64]) -> (TensorSpec, Vec<u8>) {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    (TensorSpec { name, dtype: Dtype::F64, shape: vec![values.len()] }, bytes)
}

fn metadata(identity: &Identity, pass: &PassOptions, part: Part, acc: &Accumulated) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = BTreeMap::from([
        ("format".into(), FORMAT.into()),
        ("model".into(), identity.model.display().to_string()),
        ("model_sha256".into(), identity.model_sha256.clone()),
        ("weights_sha256".into(), identity.weights_sha256.clone()),
        ("stats".into(), pass.stats.to_string()),
        ("batch_size".into(), pass.batch_size.to_string()),
        ("shard".into(), part.to_string()),
        ("samples".into(), acc.samples.to_string()),
        ("batches".into(), acc.batches.to_string()),
        ("total_samples".into(), acc.total_samples.to_string()),
        ("inputs".into(), pass.inputs.display().to_string()),
        ("device".into(), pass.engine.device.to_string()),
        ("swa_version".into(), crate::VERSION.into()),
    ]);
    if let Some(w) = &identity.weights {
        m.insert("weights".into(), w.display().to_string());
    }
    if let Some(k) = &identity.key {
        m.insert("key".into(), k.clone());
    }
    if !acc.skipped.is_empty() {
        m.insert("skipped".into(), serde_json::to_string(&acc.skipped).expect("strings"));
    }
    if let Some(p) = &acc.preprocessing {
        m.insert("preprocessing".into(), p.clone());
    }
    if let Some(s) = &acc.sampling {
        m.insert("sampling".into(), serde_json::to_string(s).expect("numbers"));
    }
    m
}

/// One partial statistics file, read and checked for internal consistency.
#[derive(Debug, Clone)]
pub struct PartialStats {
    /// The file.
    pub path: PathBuf,
    /// The model and weights it was computed for.
    pub identity: Identity,
    /// Statistics mode.
    pub stats: StatsMode,
    /// Batch size of the pass.
    pub batch_size: NonZeroUsize,
    /// Which part.
    pub part: Part,
    /// Samples and batches of this part.
    pub samples: usize,
    /// Batches of this part.
    pub batches: usize,
    /// Samples of the whole pass.
    pub total_samples: usize,
    /// The training samples, as the part was given them.
    pub inputs: PathBuf,
    /// Where it ran.
    pub device: String,
    /// Layer names, in graph order, and their statistics.
    pub layers: Vec<(String, Sufficient)>,
    /// Images of this part skipped because they could not be decoded, each with why.
    pub skipped: Vec<String>,
    /// How images were read and preprocessed (`None` for float arrays).
    pub preprocessing: Option<String>,
    /// How the samples were drawn and ordered, where not all of them in order.
    pub sampling: Option<inputs::Sampling>,
}

/// Reads a partial statistics file.
pub fn read(path: &Path) -> Result<PartialStats> {
    let ck = Checkpoint::open(path)?;
    let meta = ck.metadata();
    let bad = |what: String| Error::format(path, what);
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!(
            "is not a partial statistics file (its metadata has no `format: {FORMAT}`; write one with `swa \
             recalibrate` and a partial output)"
        )));
    }
    let get = |k: &str| meta.get(k).ok_or_else(|| bad(format!("its metadata lacks `{k}`")));
    let num = |k: &str| -> Result<usize> {
        get(k)?.parse().map_err(|_| bad(format!("its metadata `{k}` is not a whole number: {:?}", meta[k])))
    };
    let stats: StatsMode = get("stats")?.parse().map_err(bad)?;
    let part: Part = get("shard")?.parse().map_err(bad)?;
    let batch_size = NonZeroUsize::new(num("batch_size")?).ok_or_else(|| bad("its batch_size is 0".into()))?;
    let names: Vec<String> = serde_json::from_str(get("layers")?)
        .map_err(|e| bad(format!("its metadata `layers` is not a JSON list of names: {e}")))?;
    let values = |name: String| -> Result<Vec<f64>> {
        let t = ck.get(&name).ok_or_else(|| bad(format!("lacks the tensor `{name}`")))?;
        if t.dtype != Dtype::F64 {
            return Err(Error::tensor(path, &name, "is not F64"));
        }
        Ok(dtype::to_f64(t.dtype, ck.bytes(t)))
    };
    let mut layers = Vec::new();
    for name in names {
        let (s, a, b) = match stats {
            StatsMode::Precise => ("count", "mean", "m2"),
            StatsMode::Torch => ("batches", "sum_mean", "sum_var"),
        };
        let (scalar, a, b) =
            (values(format!("{name}.{s}"))?, values(format!("{name}.{a}"))?, values(format!("{name}.{b}"))?);
        if scalar.len() != 1 || a.len() != b.len() {
            return Err(bad(format!("layer `{name}`: `{s}` must hold one value and the per-channel tensors agree")));
        }
        let layer = match stats {
            StatsMode::Precise => Sufficient::Precise(Precise { n: scalar[0], mean: a, m2: b }),
            StatsMode::Torch => {
                Sufficient::Torch(TorchCompat { batches: count(scalar[0]).unwrap_or(usize::MAX), mean: a, var: b })
            }
        };
        check_layer(&layer, scalar[0], num("batches")?)
            .map_err(|why| bad(format!("layer `{name}`: the statistics cannot have been computed: {why}")))?;
        // Every layer runs in every batch that runs: `torch` layers count the same batches.
        if let (Some((first, Sufficient::Torch(a))), Sufficient::Torch(b)) = (layers.first(), &layer) {
            if a.batches != b.batches {
                return Err(bad(format!(
                    "layers `{first}` and `{name}` count {} and {} batches: every layer runs in every batch",
                    a.batches, b.batches
                )));
            }
        }
        layers.push((name, layer));
    }
    Ok(PartialStats {
        path: path.to_path_buf(),
        identity: Identity {
            model: get("model")?.into(),
            model_sha256: get("model_sha256")?.clone(),
            weights: meta.get("weights").map(PathBuf::from),
            weights_sha256: get("weights_sha256")?.clone(),
            key: meta.get("key").cloned(),
        },
        stats,
        batch_size,
        part,
        samples: num("samples")?,
        batches: num("batches")?,
        total_samples: num("total_samples")?,
        inputs: get("inputs")?.into(),
        device: meta.get("device").cloned().unwrap_or_default(),
        layers,
        skipped: match meta.get("skipped") {
            Some(list) => serde_json::from_str(list)
                .map_err(|e| bad(format!("its metadata `skipped` is not a JSON list of names: {e}")))?,
            None => Vec::new(),
        },
        preprocessing: meta.get("preprocessing").cloned(),
        sampling: match meta.get("sampling") {
            Some(j) => Some(
                serde_json::from_str(j)
                    .map_err(|e| bad(format!("its metadata `sampling` is not the JSON swa writes: {e}")))?,
            ),
            None => None,
        },
    })
}

/// `v` as a count, when it is a whole number ≥ 0 that fits.
fn count(v: f64) -> Option<usize> {
    (v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= usize::MAX as f64 / 2.0).then_some(v as usize)
}

/// What a pass keeps true of a layer's statistics (`scalar` as stored; `batches` the part's):
/// counts are whole numbers (a `torch` layer ran in at most the part's batches), means finite,
/// sums of squared deviations and of variances finite and ≥ 0.
fn check_layer(layer: &Sufficient, scalar: f64, batches: usize) -> std::result::Result<(), String> {
    let (what, first, second, second_name) = match layer {
        Sufficient::Precise(p) => ("count", &p.mean, &p.m2, "M2"),
        Sufficient::Torch(t) => ("batch count", &t.mean, &t.var, "variance sum"),
    };
    let Some(n) = count(scalar) else { return Err(format!("a {what} of {scalar}")) };
    if matches!(layer, Sufficient::Torch(_)) && n > batches {
        return Err(format!("{n} batches in a part of {batches}"));
    }
    if let Some((c, v)) = first.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(format!("channel {c} has a mean of {v}"));
    }
    if let Some((c, v)) = second.iter().enumerate().find(|(_, v)| !v.is_finite() || **v < 0.0) {
        return Err(format!("channel {c} has a {second_name} of {v}"));
    }
    if n == 0 && first.iter().chain(second).any(|&v| v != 0.0) {
        return Err(format!("a {what} of 0 with statistics that are not 0"));
    }
    Ok(())
}

/// Partials that belong together, merged in part order.
#[derive(Debug, Clone)]
pub struct Merged {
    /// The first part's file (its identity, stats mode, batch size and inputs are everyone's).
    pub first: PartialStats,
    /// The merged statistics, per layer.
    pub layers: Vec<Sufficient>,
    /// Samples of all parts.
    pub samples: usize,
    /// Batches of all parts.
    pub batches: usize,
    /// The devices the parts ran on.
    pub devices: Vec<String>,
    /// The images every part skipped, in part order.
    pub skipped: Vec<String>,
}

/// Checks that `partials` are every part of one pass over one model and weights (same model and
/// weights hashes, state dict key, statistics mode, batch size, samples, input file name and
/// layers; every part once, each with the batches its part gets) and merges them in part order,
/// whatever order they are given in.
pub fn merge(partials: Vec<PartialStats>) -> Result<Merged> {
    let files: Vec<PathBuf> = partials.iter().map(|p| p.path.clone()).collect();
    let parts: Vec<Part> = partials.iter().map(|p| p.part).collect();
    let order = complete_order(&files, &parts)?;
    let mut sorted: Vec<Option<PartialStats>> = partials.into_iter().map(Some).collect();
    let sorted: Vec<PartialStats> = order.iter().map(|&k| sorted[k].take().expect("each once")).collect();
    let first = &sorted[0];
    let total_batches = first.total_samples.div_ceil(first.batch_size.get());
    for p in &sorted {
        let mut why = Disagreement::new(&first.identity, &p.identity);
        why.field("statistics modes", first.stats, p.stats);
        why.field("batch sizes", first.batch_size, p.batch_size);
        why.field("passes' sample counts", first.total_samples, p.total_samples);
        let sampling = |s: &Option<inputs::Sampling>| s.map_or("all samples in order".into(), |s| s.describe());
        why.field("samplings", sampling(&first.sampling), sampling(&p.sampling));
        let name = |i: &Path| i.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        why.field("input files", name(&first.inputs), name(&p.inputs));
        why.field(
            "preprocessing",
            first.preprocessing.as_deref().unwrap_or("none"),
            p.preprocessing.as_deref().unwrap_or("none"),
        );
        let layer_names =
            |q: &PartialStats| q.layers.iter().map(|(n, s)| format!("{n}[{}]", s.channels())).collect::<Vec<_>>();
        why.field("layers", layer_names(first).join(","), layer_names(p).join(","));
        why.check(&first.path, &p.path, "pass")?;
        let range = p.part.range(total_batches);
        let samples =
            range.end.saturating_mul(p.batch_size.get()).min(p.total_samples) - (range.start * p.batch_size.get());
        if p.batches != range.len() || p.samples != samples {
            return Err(Error::format(
                &p.path,
                format!(
                    "part {} holds {} batches ({} samples) where part {} of {} samples in batches of {} has {} ({})",
                    p.part,
                    p.batches,
                    p.samples,
                    p.part,
                    p.total_samples,
                    p.batch_size,
                    range.len(),
                    samples
                ),
            ));
        }
    }
    let mut layers: Vec<Sufficient> = first.layers.iter().map(|(_, s)| s.clone()).collect();
    for p in &sorted[1..] {
        for (acc, (_, s)) in layers.iter_mut().zip(&p.layers) {
            acc.merge(s);
        }
    }
    // Finite parts whose sums are not (values near f64::MAX in each).
    for (layer, (name, _)) in layers.iter().zip(&first.layers) {
        let (mean, var) = layer.finish();
        if mean.iter().chain(&var).any(|v| !v.is_finite()) {
            return Err(Error::Mismatch(format!(
                "the merged statistics of layer `{name}` are not finite: the parts' values are too large to add \
                 (no pass over float32 activations computes them)"
            )));
        }
    }
    let mut devices: Vec<String> = sorted.iter().map(|p| p.device.clone()).collect();
    devices.sort();
    devices.dedup();
    Ok(Merged {
        layers,
        samples: sorted.iter().map(|p| p.samples).sum(),
        batches: sorted.iter().map(|p| p.batches).sum(),
        devices,
        skipped: sorted.iter().flat_map(|p| p.skipped.iter().cloned()).collect(),
        first: sorted.into_iter().next().expect("at least one"),
    })
}

/// Everything `swa merge-stats` needs.
#[derive(Debug, Clone)]
pub struct MergeStatsOptions {
    /// Partial statistics files, in any order.
    pub partials: Vec<PathBuf>,
    /// The ONNX model the partials were computed for.
    pub model: PathBuf,
    /// The weights they were computed with.
    pub weights: Option<PathBuf>,
    /// The state dict to read when the weights are a `torch.save` file.
    pub key: Option<String>,
    /// Keep the model's own values for weights the checkpoint lacks.
    pub allow_missing_weights: bool,
    /// Output ONNX.
    pub output: PathBuf,
    /// Output safetensors with the checkpoint's names.
    pub save_weights: Option<PathBuf>,
}

/// Merges partial statistics and writes the recalibrated model (and weights) exactly as
/// `recalibrate` over the whole pass would, after checking that the model and weights given are
/// the ones the partials were computed for.
pub fn merge_into_model(opts: &MergeStatsOptions) -> Result<RecalibrateSummary> {
    let merged = merge(opts.partials.iter().map(|p| read(p)).collect::<Result<_>>()?)?;
    let first = &merged.first;
    let pass = PassOptions {
        inputs: first.inputs.clone(),
        data: Default::default(),
        batch_size: first.batch_size,
        max_samples: None,
        seed: first.sampling.map_or(0, |s| s.seed),
        shuffle: first.sampling.is_some_and(|s| s.shuffled),
        stats: first.stats,
        engine: Default::default(),
        quiet: true,
    };
    let rec = RecalibrateOptions {
        model: opts.model.clone(),
        weights: opts.weights.clone(),
        key: opts.key.clone(),
        allow_missing_weights: opts.allow_missing_weights,
        pass,
        output: opts.output.clone(),
        save_weights: opts.save_weights.clone(),
    };
    let read: Vec<&Path> = opts.partials.iter().map(PathBuf::as_path).collect();
    let mut summary = recalibrate::recalibrate_from(&rec, &read, |prepared| {
        let given = Identity::of(
            &prepared.bound.model,
            opts.weights.is_some().then_some(&prepared.bound.checkpoint),
            opts.key.as_deref(),
        )?;
        let why = first.identity.differences(&given);
        if !why.is_empty() {
            return Err(Error::Mismatch(format!(
                "the partials ({} ...) were not computed for the model and weights given: {}",
                first.path.display(),
                why.join("; ")
            )));
        }
        let layers: Vec<&str> = prepared.layers.iter().map(|l| l.name.as_str()).collect();
        let theirs: Vec<&str> = first.layers.iter().map(|(n, _)| n.as_str()).collect();
        if layers != theirs {
            return Err(Error::Mismatch(format!(
                "{} lists BatchNorm layers {theirs:?}, the model has {layers:?}",
                first.path.display()
            )));
        }
        Ok(PassResult {
            stats: merged
                .layers
                .iter()
                .map(|l| l.finish_as(crate::recalibrate::Variance::of(&prepared.bound.checkpoint)))
                .collect(),
            // As a single pass counts them: the images decoded, not those skipped.
            samples: merged.samples - merged.skipped.len().min(merged.samples),
            batches: merged.batches,
            seconds: 0.0,
            first_batch_seconds: 0.0,
            skipped: merged.skipped.clone(),
            preprocessing: first.preprocessing.clone(),
            sampling: first.sampling,
            own_batch_size: None,
        })
    })?;
    summary.device = merged.devices.join(", ");
    // The parts ran the pass; the merge ran none.
    (summary.samples_per_second, summary.samples_per_second_after_first) = (0.0, None);
    Ok(summary)
}
