//! Binding checkpoint tensors into an ONNX graph by name: [`Binder`] holds a model prepared once,
//! and [`Binder::bind`] gives a [`Bound`] model per checkpoint.
//!
//! The PyTorch exporter deduplicates equal initializers (a fresh model's BatchNorm weights are all
//! ones), so `layer1.0.bn1.weight` may be an `Identity` of `bn1.weight`. `unshare` first gives
//! every such name an initializer of its own; binding then matches names exactly, then with the
//! usual wrapper prefixes (`module.`, `_orig_mod.`, `model.`) stripped on either side.
//!
//! A TensorFlow or Keras checkpoint's names and layouts are not its exported graph's: it binds
//! through the [`layout`] map kept beside the model, derived by value from the checkpoint bound
//! when there is none yet (or, in `swa run`, from the run's checkpoints: [`Binder::prepare_map`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use super::layout::{self, LayoutMap};
use super::{is_float_elem, tensor, tensor_data, Model};
use crate::checkpoint::{dtype, Checkpoint};
use crate::error::{Error, Hint, Result};

/// A model ready to take checkpoints: read once, every shared initializer given its own copy
/// (`unshare`) once.
#[derive(Debug, Clone)]
pub struct Binder {
    model: Model,
    /// The layout map derived in this process, where one was (kept here too: the model's folder
    /// may not take the file).
    map: std::sync::OnceLock<LayoutMap>,
}

/// A model with a checkpoint's tensors bound into it.
#[derive(Debug)]
pub struct Bound {
    /// The model, weights bound.
    pub model: Model,
    /// The checkpoint whose names saved weights use: the one bound, or the model's own
    /// initializers when none was.
    pub checkpoint: Checkpoint,
    /// How the checkpoint bound, if one was.
    pub binding: Option<BindReport>,
}

impl Binder {
    /// Prepares `model` for binding.
    pub fn new(mut model: Model) -> Self {
        unshare(&mut model);
        Binder { model, map: std::sync::OnceLock::new() }
    }

    /// Reads the ONNX model at `path` and prepares it.
    pub fn load(path: &Path) -> Result<Self> {
        Ok(Binder::new(Model::load(path)?))
    }

    /// The model, with its own weights.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model with `checkpoint` bound into a copy of it (shapes must agree; floats are converted
    /// to the initializer's dtype). Weights of the model that the checkpoint lacks are an error
    /// unless `allow_missing_weights`. With no checkpoint, the model keeps its own weights and its
    /// initializers stand for the checkpoint.
    pub fn bind(&self, checkpoint: Option<Checkpoint>, allow_missing_weights: bool) -> Result<Bound> {
        let mut model = self.model.clone();
        match checkpoint {
            Some(ck) => {
                let binding = match self.layout_for(&ck)? {
                    Some(map) => bind_mapped(&mut model, &ck, &map, allow_missing_weights)?,
                    None => bind_into(&mut model, &ck, allow_missing_weights)?,
                };
                Ok(Bound { model, checkpoint: ck, binding: Some(binding) })
            }
            None => Ok(Bound { checkpoint: model.checkpoint()?, model, binding: None }),
        }
    }

    /// How `checkpoint` would bind, without failing on weights it lacks (for `inspect`).
    pub fn report(&self, checkpoint: &Checkpoint) -> Result<BindReport> {
        match self.layout_for(checkpoint)? {
            Some(map) => bind_mapped(&mut self.model.clone(), checkpoint, &map, true),
            None => bind_into(&mut self.model.clone(), checkpoint, true),
        }
    }

    /// The layout map `ck` binds through: none where its names are the model's; the map kept beside
    /// the model; else, for a TensorFlow checkpoint, one derived from `ck` by value when it binds
    /// every weight of the model (and then kept beside the model).
    fn layout_for(&self, ck: &Checkpoint) -> Result<Option<LayoutMap>> {
        if names_match(&self.model, ck) {
            return Ok(None);
        }
        // A map names one checkpoint layout's variables (Keras 3's `layers/…/vars/N`, a bundle's
        // object-graph paths): one that names none of these is another layout's, derived anew.
        if let Some(map) = self.map.get().filter(|m| layout::applies(m, ck)) {
            return Ok(Some(map.clone()));
        }
        if let Some(map) = layout::load(&self.model.path)?.filter(|m| layout::applies(m, ck)) {
            if map.model == layout::fingerprint(&self.model) {
                layout::check(&map, &self.model, ck)?;
                return Ok(Some(map));
            }
            crate::error::warn(format!(
                "{} was derived for another model: deriving it anew",
                layout::map_path(&self.model.path).display()
            ));
        }
        if !ck.is_tensorflow() {
            return Ok(None);
        }
        let map = layout::derive(&self.model, ck)?;
        let weights = weight_initializers(&self.model);
        let missing: Vec<&String> =
            map.unbound.iter().filter(|u| weights.contains(*u) && !map.constants.contains(u)).collect();
        if missing.is_empty() && !map.unmatched.is_empty() {
            return Err(Error::Mismatch(format!(
                "{}: {} of its variables match no initializer of the model under any layout swa knows (first: {}): \
                 their values would not reach the model. Was the model exported from this architecture?",
                ck.path().display(),
                map.unmatched.len(),
                map.unmatched.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        layout::check(&map, &self.model, ck)?;
        if !missing.is_empty() {
            let unmatched: Vec<&str> = map.unmatched.iter().take(5).map(String::as_str).collect();
            return Err(Error::Mismatch(format!(
                "{}: TensorFlow names and layouts are bound by value, through a map derived from the checkpoint \
                 the model was exported from (kept beside the model as {}); this checkpoint's values are not the \
                 model's: {} of its weights match no variable under any layout (first: {}){}",
                ck.path().display(),
                layout::map_path(&self.model.path).display(),
                missing.len(),
                missing.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                if unmatched.is_empty() {
                    String::new()
                } else {
                    format!("; variables that matched nothing: {}", unmatched.join(", "))
                }
            ))
            .hint(Hint::LayoutMap));
        }
        match layout::save(&self.model.path, &map) {
            Ok(path) => crate::error::warn(format!(
                "bound {} by value ({} variables; {} of them transposed): the map is kept as {}",
                ck.path().display(),
                map.bound.len(),
                map.bound.iter().filter(|m| m.permutation.is_some()).count(),
                path.display()
            )),
            Err(e) => crate::error::warn(format!("the layout map was not kept beside the model: {e}")),
        }
        let _ = self.map.set(map.clone());
        Ok(Some(map))
    }

    /// Before binding a TensorFlow run's checkpoints (whose values are not the model's, but for the
    /// one it was exported from): derives the layout map from the first of `candidates` (newest
    /// first) that binds every weight, if there is no map yet and the names are not the model's.
    pub fn prepare_map(&self, candidates: impl IntoIterator<Item = Result<Checkpoint>>) -> Result<()> {
        let mut first_error = None;
        for ck in candidates {
            // Binding needs no map, one is kept, or one is derived from this checkpoint: done.
            match self.layout_for(&ck?) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// True if some float tensor of `ck` has the name of an initializer of `model` (exactly or with
/// wrapper prefixes stripped).
fn names_match(model: &Model, ck: &Checkpoint) -> bool {
    let g = model.graph();
    let names: HashSet<&str> = g.initializer.iter().map(|t| strip_prefixes(t.name())).collect();
    ck.tensors().iter().any(|t| dtype::is_float(t.dtype) && names.contains(strip_prefixes(&t.name)))
}

/// Binds `ck` into `model` through `map`: each mapped variable converted to its initializer's type
/// and permuted to its layout.
fn bind_mapped(model: &mut Model, ck: &Checkpoint, map: &LayoutMap, allow_missing_weights: bool) -> Result<BindReport> {
    let weights = weight_initializers(model);
    let mapped = layout::by_variable(map);
    let map_file = layout::map_path(&model.path);
    let g = model.graph_mut();
    let index: HashMap<String, usize> =
        g.initializer.iter().enumerate().map(|(i, t)| (t.name().to_string(), i)).collect();
    let mut report = BindReport::default();
    for entry in ck.tensors() {
        if !dtype::is_float(entry.dtype) {
            report.skipped.push(entry.name.clone());
            continue;
        }
        let Some(m) = mapped.get(entry.name.as_str()) else {
            report.unmatched.push(entry.name.clone());
            continue;
        };
        let i = *index.get(&m.initializer).ok_or_else(|| {
            Error::tensor(
                ck.path(),
                &entry.name,
                format!(
                    "maps to `{}`, which the model lacks: the layout map {} is another model's",
                    m.initializer,
                    map_file.display()
                ),
            )
        })?;
        let init = &mut g.initializer[i];
        let (init_dtype, shape, _) = tensor_data(init)?;
        let perm: Vec<usize> = m.permutation.clone().unwrap_or_else(|| (0..entry.shape.len()).collect());
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        if sorted != (0..entry.shape.len()).collect::<Vec<_>>() || entry.numel() != shape.iter().product::<usize>() {
            return Err(Error::tensor(
                ck.path(),
                &entry.name,
                format!("has shape {:?}, which does not map to `{}` of shape {shape:?}", entry.shape, m.initializer),
            ));
        }
        let bytes = dtype::convert(entry.dtype, init_dtype, ck.bytes(entry));
        let bytes = layout::permute(&bytes, dtype::width(init_dtype), &entry.shape, &perm);
        let name = init.name().to_string();
        *init = tensor(&name, init_dtype, &shape, bytes);
        report.bound.push((entry.name.clone(), name));
    }
    let bound: HashSet<&str> = report.bound.iter().map(|(_, g)| g.as_str()).collect();
    report.unbound =
        weights.iter().filter(|w| !bound.contains(w.as_str()) && !map.constants.contains(w)).cloned().collect();
    if !report.unbound.is_empty() && !allow_missing_weights {
        return Err(Error::Mismatch(format!(
            "{}: {} of the model's weights are bound by no variable through the layout map (first: {})",
            ck.path().display(),
            report.unbound.len(),
            report.unbound.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ))
        .hint(Hint::AllowMissingWeights));
    }
    Ok(report)
}

/// The prefixes that training wrappers add to parameter names: `module.` (DataParallel / DDP),
/// `_orig_mod.` (torch.compile), `model.` (PyTorch Lightning, timm wrappers).
pub const PREFIXES: [&str; 3] = ["module.", "_orig_mod.", "model."];

/// Operators whose non-data inputs are weights that a checkpoint must provide.
const WEIGHT_OPS: [&str; 6] = ["Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization"];

/// A name with the wrapper prefixes removed.
pub fn strip_prefixes(mut name: &str) -> &str {
    while let Some(rest) = PREFIXES.iter().find_map(|p| name.strip_prefix(p)) {
        name = rest;
    }
    name
}

/// Replaces every `Identity` of an initializer by an initializer of its own (a copy), so each
/// name can be bound and recalibrated separately. Returns how many were resolved.
fn unshare(model: &mut Model) -> usize {
    let mut resolved = 0;
    loop {
        let g = model.graph_mut();
        let inits: HashMap<String, usize> =
            g.initializer.iter().enumerate().map(|(i, t)| (t.name().to_string(), i)).collect();
        let outputs: HashSet<String> = g.output.iter().map(|o| o.name().to_string()).collect();
        let pos = g.node.iter().position(|n| {
            n.op_type() == "Identity"
                && n.input.len() == 1
                && n.output.len() == 1
                && inits.contains_key(&n.input[0])
                && !outputs.contains(&n.output[0])
                && !inits.contains_key(&n.output[0])
        });
        let Some(pos) = pos else { return resolved };
        let node = g.node.remove(pos);
        let mut copy = g.initializer[inits[&node.input[0]]].clone();
        copy.name = Some(node.output[0].clone());
        g.initializer.push(copy);
        resolved += 1;
    }
}

/// How a checkpoint bound to a graph (fields in the order of `inspect --json`'s keys).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BindReport {
    /// Checkpoint name → graph initializer name, for every bound tensor.
    pub bound: Vec<(String, String)>,
    /// Integer checkpoint tensors (step counters, `num_batches_tracked`): not weights, not bound.
    pub skipped: Vec<String>,
    /// Weight initializers of the graph (inputs of Conv, Gemm, MatMul, BatchNormalization…) that
    /// no checkpoint tensor bound.
    pub unbound: Vec<String>,
    /// Floating-point checkpoint tensors with no initializer of that name in the graph.
    pub unmatched: Vec<String>,
}

impl BindReport {
    /// Graph name → checkpoint name.
    pub fn checkpoint_names(&self) -> HashMap<&str, &str> {
        self.bound.iter().map(|(c, g)| (g.as_str(), c.as_str())).collect()
    }
}

/// Initializer names that feed the weight inputs of `WEIGHT_OPS` nodes.
pub fn weight_initializers(model: &Model) -> BTreeSet<String> {
    let g = model.graph();
    let inits: HashSet<&str> =
        g.initializer.iter().filter(|t| is_float_elem(t.data_type())).map(|t| t.name()).collect();
    let mut out = BTreeSet::new();
    for n in &g.node {
        if WEIGHT_OPS.contains(&n.op_type()) {
            for input in n.input.iter().skip(1) {
                if inits.contains(input.as_str()) {
                    out.insert(input.clone());
                }
            }
        }
    }
    out
}

/// Binds `ck`'s tensors into the initializers of `model` (already [`unshare`]d).
fn bind_into(model: &mut Model, ck: &Checkpoint, allow_missing_weights: bool) -> Result<BindReport> {
    let weights = weight_initializers(model);
    let g = model.graph_mut();
    let exact: HashMap<String, usize> =
        g.initializer.iter().enumerate().map(|(i, t)| (t.name().to_string(), i)).collect();
    let mut stripped: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, t) in g.initializer.iter().enumerate() {
        stripped.entry(strip_prefixes(t.name())).or_default().push(i);
    }
    let mut targets: Vec<(usize, &crate::checkpoint::TensorEntry)> = Vec::new();
    let mut report = BindReport::default();
    let mut taken: HashMap<usize, &str> = HashMap::new();
    for entry in ck.tensors() {
        if !dtype::is_float(entry.dtype) {
            report.skipped.push(entry.name.clone());
            continue;
        }
        let index = exact.get(&entry.name).copied().or_else(|| match stripped.get(strip_prefixes(&entry.name)) {
            Some(v) if v.len() == 1 => Some(v[0]),
            _ => None,
        });
        let Some(index) = index else {
            report.unmatched.push(entry.name.clone());
            continue;
        };
        if let Some(other) = taken.insert(index, &entry.name) {
            return Err(Error::tensor(
                ck.path(),
                &entry.name,
                format!("binds to the same graph initializer as `{other}`"),
            ));
        }
        targets.push((index, entry));
    }
    for (index, entry) in targets {
        let init = &mut g.initializer[index];
        let (init_dtype, shape, _) = tensor_data(init)?;
        if shape != entry.shape {
            return Err(Error::tensor(
                ck.path(),
                &entry.name,
                format!(
                    "has shape {:?} but the graph's initializer `{}` has shape {shape:?}",
                    entry.shape,
                    init.name()
                ),
            ));
        }
        if !dtype::is_float(init_dtype) {
            return Err(Error::tensor(
                ck.path(),
                &entry.name,
                format!("is floating point but `{}` is {init_dtype:?}", init.name()),
            ));
        }
        let bytes = dtype::convert(entry.dtype, init_dtype, ck.bytes(entry));
        let name = init.name().to_string();
        *init = tensor(&name, init_dtype, &shape, bytes);
        report.bound.push((entry.name.clone(), name));
    }
    let bound: HashSet<&str> = report.bound.iter().map(|(_, g)| g.as_str()).collect();
    report.unbound = weights.iter().filter(|w| !bound.contains(w.as_str())).cloned().collect();
    // Nothing bound is never a partial binding to allow: the model would keep all its own weights.
    if report.bound.is_empty() && !report.unmatched.is_empty() {
        let first = |names: &mut dyn Iterator<Item = &String>| names.take(3).cloned().collect::<Vec<_>>().join(", ");
        let prefix = report.unmatched[0].split_once('.').map(|(p, _)| format!("{p}."));
        let common = prefix.filter(|p| {
            report.unmatched.iter().all(|n| n.starts_with(p.as_str()))
                && report.unmatched.iter().any(|n| exact.contains_key(&n[p.len()..]))
        });
        let message = format!(
            "{}: none of its {} floating-point tensors matches a weight of the model (its names: {}; the model's: \
             {}){}",
            ck.path().display(),
            report.unmatched.len(),
            first(&mut report.unmatched.iter()),
            first(&mut weights.iter()),
            common.as_deref().map_or(String::new(), |p| format!(": every name of the checkpoint starts with `{p}`"))
        );
        let e = Error::Mismatch(message);
        return Err(if common.is_some() { e.hint(Hint::StripPrefix) } else { e });
    }
    if !report.unbound.is_empty() && !allow_missing_weights {
        let shown: Vec<&str> = report.unbound.iter().take(5).map(String::as_str).collect();
        return Err(Error::Mismatch(format!(
            "{}: {} of the model's weights have no tensor of that name in the checkpoint (first: {}); {} checkpoint tensors matched nothing{}. \
             Was the model exported from the same architecture, with BatchNorm kept?",
            ck.path().display(),
            report.unbound.len(),
            shown.join(", "),
            report.unmatched.len(),
            if report.unmatched.is_empty() { String::new() } else { format!(" (first: {})", report.unmatched.iter().take(3).cloned().collect::<Vec<_>>().join(", ")) }
        ))
        .hint(Hint::AllowMissingWeights));
    }
    Ok(report)
}
