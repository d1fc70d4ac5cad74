//! What a pass gives: the statistics written into the model (and its metadata), the
//! checkpoint's tensors with them under their own names, and how each layer's statistics moved.

use std::collections::BTreeMap;
use std::path::Path;

use super::pass::{PassOptions, PassResult, Prepared};
use super::LayerSummary;
use crate::checkpoint::{dtype, Dtype, TensorSpec};
use crate::error::Result;
use crate::onnx::bn::{self, BnLayer};
use crate::onnx::Model;

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
/// `num_batches_tracked` = batches, as update_bn leaves it), atomically; in the format `path`
/// names, written like `like` (default: the checkpoint bound) where the format takes more than
/// tensors from its input (Keras' `.weights.h5`, a TensorFlow bundle).
pub fn save_weights(
    prepared: &Prepared,
    stat_names: &[(String, String)],
    result: &PassResult,
    path: &Path,
    metadata: &BTreeMap<String, String>,
    like: Option<&Path>,
) -> Result<()> {
    crate::fs::check_output(path)?;
    stage_weights(prepared, stat_names, result, path, metadata, like)?.publish()
}

/// [`save_weights`] into a staged file, to publish with other outputs.
pub fn stage_weights(
    prepared: &Prepared,
    stat_names: &[(String, String)],
    result: &PassResult,
    path: &Path,
    metadata: &BTreeMap<String, String>,
    like: Option<&Path>,
) -> Result<crate::fs::Outputs> {
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
    let mut metadata = metadata.clone();
    if ck.is_tensorflow() {
        metadata.insert("format".into(), "tf".into());
    }
    crate::checkpoint::stage_tensors(path, &tensors, &metadata, Some(like.unwrap_or(ck.path())))
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
    m.insert("batch_size".into(), result.own_batch_size.unwrap_or(pass.batch_size.get()).to_string());
    m.insert("samples".into(), result.samples.to_string());
    m.insert(
        "sources".into(),
        serde_json::to_string(&sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()).unwrap(),
    );
    if let Some(s) = &result.sampling {
        m.insert("sampling".into(), serde_json::to_string(s).expect("numbers"));
    }
    m.insert("swa_version".into(), crate::VERSION.into());
    m
}
