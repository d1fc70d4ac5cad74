//! Binding a checkpoint whose names and layouts are not the ONNX graph's (Keras' `layers/conv2d/vars/0`
//! HWIO kernels against tf2onnx's `…/convolution/ReadVariableOp:0` OIHW initializers) through a
//! [`LayoutMap`]: variable → initializer and the axis permutation between them.
//!
//! A map is derived once, by value, from the checkpoint the model was exported from (its variables
//! hold exactly the model's initializers): each float variable, under each layout permutation of
//! its rank (the identity; a kernel's HWIO → OIHW and its 1-D and 3-D kin; a Dense kernel's
//! transpose), is looked up among the initializers of that shape with equal bytes. Variables with
//! equal values (a fresh layer's ones and zeros) match several initializers: they are told apart
//! by graph position — the initializers of the node their layer's other variables bound to, and
//! for a BatchNormalization node the input its role names (scale, bias, mean, variance) — and
//! where that does not settle it, by order (the checkpoint's order against the graph's, with a
//! warning naming them). The map is kept as JSON beside the model (`MODEL.onnx.swa-map.json`), so
//! that checkpoints whose values are not the model's (an average) bind through it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{is_float_elem, tensor_data, Model};
use crate::checkpoint::{dtype, Checkpoint, Role};
use crate::error::{Error, Result};

/// What a map file says it is.
const MAP_FORMAT: &str = "swa layout map 1";

/// How a checkpoint's variables bind to a model's initializers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutMap {
    /// `swa layout map 1`.
    pub format: String,
    /// The model's structure it was derived for (a hash of its initializers' names, types and
    /// shapes): a map of another model is not used.
    #[serde(default)]
    pub model: String,
    /// The checkpoint it was derived from.
    pub derived_from: String,
    /// Each bound variable.
    pub bound: Vec<Mapped>,
    /// Float initializers of the model that no variable matched (constants of the graph, or
    /// weights the checkpoint lacks).
    pub unbound: Vec<String>,
    /// Of those, BatchNormalization scales of ones and biases of zeros: a layer's missing gamma or
    /// beta (`center=False`, `scale=False`), constants rather than weights.
    #[serde(default)]
    pub constants: Vec<String>,
    /// Float variables of the checkpoint that matched no initializer.
    pub unmatched: Vec<String>,
}

/// One variable's binding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mapped {
    /// The checkpoint's name.
    pub variable: String,
    /// The initializer's name.
    pub initializer: String,
    /// Output axis `i` is the variable's axis `permutation[i]` (absent: the same layout); the
    /// result is then read in the initializer's shape (a depthwise kernel's (C, M, H, W) as
    /// (C·M, 1, H, W)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permutation: Option<Vec<usize>>,
}

/// Where the map of the model at `model` is kept.
pub fn map_path(model: &Path) -> PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(".swa-map.json");
    model.with_file_name(name)
}

/// The map kept beside `model`, if there is one.
pub fn load(model: &Path) -> Result<Option<LayoutMap>> {
    let path = map_path(model);
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = crate::fs::read_regular(&path)?;
    let map: LayoutMap =
        serde_json::from_slice(&bytes).map_err(|e| Error::format(&path, format!("not a swa layout map: {e}")))?;
    if map.format != MAP_FORMAT {
        return Err(Error::format(&path, format!("format `{}`, not `{MAP_FORMAT}`", map.format)));
    }
    Ok(Some(map))
}

/// A hash of `model`'s initializers' names, types and shapes: what a map depends on (a model
/// exported again from another checkpoint keeps it).
pub fn fingerprint(model: &Model) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for t in &model.graph().initializer {
        h.update(t.name().as_bytes());
        h.update([0]);
        h.update(t.data_type().to_le_bytes());
        for d in &t.dims {
            h.update(d.to_le_bytes());
        }
        h.update([1]);
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Each value's readers in `g`: node index and input position.
fn consumers(g: &super::GraphProto) -> HashMap<&str, Vec<(usize, usize)>> {
    let mut out: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (n, node) in g.node.iter().enumerate() {
        for (k, input) in node.input.iter().enumerate() {
            out.entry(input.as_str()).or_default().push((n, k));
        }
    }
    out
}

/// Checks that `map` fits `model` and `ck`: every variable's role is the BatchNormalization input
/// its initializer feeds (a moving mean feeds input 3, a variance input 4, gamma 1, beta 2), and
/// the sizes agree. An error names the entry and the map's file.
pub fn check(map: &LayoutMap, model: &Model, ck: &Checkpoint) -> Result<()> {
    let g = model.graph();
    let consumers = consumers(g);
    let file = map_path(&model.path);
    for m in &map.bound {
        let Some(v) = ck.get(&m.variable) else { continue };
        let Some(slot) = bn_input(v.role, &v.name) else { continue };
        let feeds = consumers.get(m.initializer.as_str()).into_iter().flatten();
        let bn: Vec<usize> =
            feeds.filter(|(n, _)| g.node[*n].op_type() == "BatchNormalization").map(|(_, k)| *k).collect();
        if !bn.is_empty() && !bn.contains(&slot) {
            return Err(Error::format(
                &file,
                format!(
                    "binds `{}` to `{}`, which is a BatchNormalization's input {} but the variable is its input {slot}: \
                     the map is wrong (delete it: swa derives it anew)",
                    m.variable, m.initializer, bn[0]
                ),
            ));
        }
    }
    Ok(())
}

/// Writes `map` beside `model`, atomically.
pub fn save(model: &Path, map: &LayoutMap) -> Result<PathBuf> {
    let path = map_path(model);
    let mut json = serde_json::to_vec_pretty(map).expect("serialises");
    json.push(b'\n');
    crate::fs::check_output(&path)?;
    crate::fs::StagedFile::with_bytes(&path, &json)?.publish()?;
    Ok(path)
}

/// The layout permutations tried for a variable of rank `rank` (output axis i = input axis p[i]).
fn permutations(rank: usize) -> Vec<Vec<usize>> {
    let identity: Vec<usize> = (0..rank).collect();
    let mut out = vec![identity];
    match rank {
        2 => out.push(vec![1, 0]),
        // Keras/TF kernels are (spatial…, in, out); ONNX's are (out, in, spatial…); a depthwise
        // kernel (spatial…, in, multiplier) becomes (in·multiplier, 1, spatial…).
        3..=5 => {
            let mut p = vec![rank - 1, rank - 2];
            p.extend(0..rank - 2);
            out.push(p);
            let mut p = vec![rank - 2, rank - 1];
            p.extend(0..rank - 2);
            out.push(p);
        }
        _ => {}
    }
    out
}

/// `bytes` (elements of `width` bytes, shape `shape`) with its axes permuted: output axis i is
/// input axis `perm[i]`.
pub fn permute(bytes: &[u8], width: usize, shape: &[usize], perm: &[usize]) -> Vec<u8> {
    let rank = shape.len();
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return bytes.to_vec();
    }
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let out_strides: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n * width);
    let mut index = vec![0usize; rank];
    for _ in 0..n {
        let at: usize = index.iter().zip(&out_strides).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&bytes[at * width..(at + 1) * width]);
        for axis in (0..rank).rev() {
            index[axis] += 1;
            if index[axis] < out_shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}

/// The layer a variable belongs to: its name without its last component (Keras 3: without `/vars/N`).
fn layer(name: &str) -> &str {
    if let Some((l, _)) = name.rsplit_once("/vars/") {
        return l;
    }
    name.rsplit_once('/').map_or(name, |(l, _)| l)
}

/// The BatchNormalization input a variable's role names, where it names one.
fn bn_input(role: Role, name: &str) -> Option<usize> {
    match role {
        Role::RunningMean => Some(3),
        Role::RunningVar => Some(4),
        _ => {
            let last = name.rsplit('/').next().unwrap_or(name);
            let last = last.split(':').next().unwrap_or(last);
            match last {
                "gamma" => Some(1),
                "beta" => Some(2),
                _ => None,
            }
        }
    }
}

/// Derives the map of `ck`'s variables onto `model`'s initializers by value (see the module's docs).
pub fn derive(model: &Model, ck: &Checkpoint) -> Result<LayoutMap> {
    let g = model.graph();
    struct Init {
        name: String,
        dtype: crate::checkpoint::Dtype,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    }
    // Initializers no node reads (a graph's leftovers) bind nothing.
    let read: HashSet<&str> = g.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let mut inits: Vec<Init> = Vec::new();
    for t in &g.initializer {
        if !is_float_elem(t.data_type()) || !read.contains(t.name()) {
            continue;
        }
        let (dtype, shape, bytes) = tensor_data(t)?;
        inits.push(Init { name: t.name().to_string(), dtype, shape, bytes });
    }
    let mut by_value: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, init) in inits.iter().enumerate() {
        by_value.entry(init.bytes.as_slice()).or_default().push(i);
    }
    // Which nodes consume each initializer, at which input.
    let consumers = consumers(g);
    // Every (initializer, permutation) each float variable's values equal.
    let vars: Vec<&crate::checkpoint::TensorEntry> = ck.tensors().iter().filter(|t| dtype::is_float(t.dtype)).collect();
    let mut candidates: Vec<Vec<(usize, Vec<usize>)>> = Vec::with_capacity(vars.len());
    for v in &vars {
        let mut found = Vec::new();
        let numel = v.numel();
        for perm in permutations(v.shape.len()) {
            let mut seen_dtypes = Vec::new();
            for init in inits.iter().filter(|i| i.shape.iter().product::<usize>() == numel) {
                if seen_dtypes.contains(&init.dtype) {
                    continue;
                }
                seen_dtypes.push(init.dtype);
                let converted = dtype::convert(v.dtype, init.dtype, ck.bytes(v));
                let bytes = permute(&converted, dtype::width(init.dtype), &v.shape, &perm);
                for &i in by_value.get(bytes.as_slice()).into_iter().flatten() {
                    if inits[i].dtype != init.dtype {
                        continue;
                    }
                    if !found.iter().any(|(j, _)| *j == i) {
                        found.push((i, perm.clone()));
                    }
                }
            }
        }
        candidates.push(found);
    }
    // Settle: unique matches first, then by graph position, then by order.
    let mut chosen: Vec<Option<(usize, Vec<usize>)>> = vec![None; vars.len()];
    let mut taken: HashSet<usize> = HashSet::new();
    loop {
        let mut progress = false;
        for vi in 0..vars.len() {
            if chosen[vi].is_some() {
                continue;
            }
            let mut left: Vec<&(usize, Vec<usize>)> =
                candidates[vi].iter().filter(|(i, _)| !taken.contains(i)).collect();
            if left.len() > 1 {
                // The nodes the layer's bound variables feed.
                let my_layer = layer(&vars[vi].name);
                let nodes: HashSet<usize> = (0..vars.len())
                    .filter(|&o| o != vi && layer(&vars[o].name) == my_layer)
                    .filter_map(|o| chosen[o].as_ref())
                    .flat_map(|(i, _)| consumers.get(inits[*i].name.as_str()).into_iter().flatten().map(|(n, _)| *n))
                    .collect();
                if !nodes.is_empty() {
                    let slot = bn_input(vars[vi].role, &vars[vi].name);
                    left.retain(|(i, _)| {
                        consumers.get(inits[*i].name.as_str()).into_iter().flatten().any(|(n, k)| {
                            nodes.contains(n)
                                && (g.node[*n].op_type() != "BatchNormalization" || slot.is_none_or(|s| s == *k))
                        })
                    });
                }
            }
            if left.len() == 1 {
                chosen[vi] = Some(left[0].clone());
                taken.insert(left[0].0);
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    let mut ambiguous = Vec::new();
    for vi in 0..vars.len() {
        if chosen[vi].is_some() {
            continue;
        }
        let left: Vec<&(usize, Vec<usize>)> = candidates[vi].iter().filter(|(i, _)| !taken.contains(i)).collect();
        if let Some(first) = left.iter().min_by_key(|(i, _)| *i) {
            ambiguous.push(format!(
                "{} ({} initializers hold its values; bound to {})",
                vars[vi].name,
                left.len(),
                inits[first.0].name
            ));
            chosen[vi] = Some((*first).clone());
            taken.insert(first.0);
        }
    }
    if !ambiguous.is_empty() {
        crate::error::warn(format!(
            "{}: variables with equal values bound by order, checkpoint against graph (derive the map from a \
             trained checkpoint to bind them by value): {}",
            ck.path().display(),
            ambiguous.join("; ")
        ));
    }
    let mut bound = Vec::new();
    let mut unmatched = Vec::new();
    let shared: Vec<String> = vars
        .iter()
        .zip(&chosen)
        .zip(&candidates)
        .filter(|((_, c), cands)| c.is_none() && !cands.is_empty())
        .map(|((v, _), cands)| {
            format!("{} (its values are {}'s, bound to another variable)", v.name, inits[cands[0].0].name)
        })
        .collect();
    if !shared.is_empty() {
        return Err(Error::Mismatch(format!(
            "{}: the model holds one initializer for several variables of equal values (tf2onnx merges equal \
             initializers, as a model exported before training has them): {}. Export the model from a trained \
             checkpoint",
            ck.path().display(),
            shared.join("; ")
        )));
    }
    for (v, c) in vars.iter().zip(chosen) {
        match c {
            Some((i, perm)) => bound.push(Mapped {
                variable: v.name.clone(),
                initializer: inits[i].name.clone(),
                permutation: perm.iter().enumerate().any(|(a, &b)| a != b).then_some(perm),
            }),
            None => unmatched.push(v.name.clone()),
        }
    }
    let bound_inits: BTreeSet<&str> = bound.iter().map(|m| m.initializer.as_str()).collect();
    let unbound: Vec<String> =
        inits.iter().filter(|i| !bound_inits.contains(i.name.as_str())).map(|i| i.name.clone()).collect();
    let constants = unbound
        .iter()
        .filter(|name| {
            let init = inits.iter().find(|i| &i.name == *name).expect("an initializer");
            let values = dtype::to_f64(init.dtype, &init.bytes);
            consumers.get(name.as_str()).into_iter().flatten().all(|&(n, k)| {
                g.node[n].op_type() == "BatchNormalization"
                    && ((k == 1 && values.iter().all(|&x| x == 1.0)) || (k == 2 && values.iter().all(|&x| x == 0.0)))
            }) && consumers.contains_key(name.as_str())
        })
        .cloned()
        .collect();
    Ok(LayoutMap {
        format: MAP_FORMAT.to_string(),
        model: fingerprint(model),
        derived_from: ck.path().display().to_string(),
        bound,
        unbound,
        constants,
        unmatched,
    })
}

/// True if `map` names a float tensor of `ck` (it is of `ck`'s layout of names).
pub fn applies(map: &LayoutMap, ck: &Checkpoint) -> bool {
    let names = by_variable(map);
    ck.tensors().iter().any(|t| dtype::is_float(t.dtype) && names.contains_key(t.name.as_str()))
}

/// Variable name → its binding, for binding through the map.
pub fn by_variable(map: &LayoutMap) -> BTreeMap<&str, &Mapped> {
    map.bound.iter().map(|m| (m.variable.as_str(), m)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwio_becomes_oihw() {
        // A (2, 1, 1, 3) HWIO kernel: values h*3 + o.
        let shape = [2usize, 1, 1, 3];
        let values: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let perm = &permutations(4)[1];
        assert_eq!(perm, &vec![3, 2, 0, 1]);
        let out: Vec<f32> =
            permute(&bytes, 4, &shape, perm).chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        // OIHW[o][0][h][0] = HWIO[h][0][0][o] = h*3 + o.
        assert_eq!(out, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // A depthwise kernel (H=1, W=2, C=2, M=1) becomes (C·M, 1, H, W): [c][0][h][w] = [h][w][c][0].
        let dw: Vec<u8> = (0..4).flat_map(|x| (x as f32).to_le_bytes()).collect();
        let out: Vec<f32> = permute(&dw, 4, &[1, 2, 2, 1], &permutations(4)[2])
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(out, vec![0.0, 2.0, 1.0, 3.0]);
        assert_eq!(layer("layers/bn/vars/2"), "layers/bn");
        assert_eq!(layer("conv2d/kernel"), "conv2d");
    }
}
