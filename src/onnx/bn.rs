//! The BatchNormalization layers of a graph, the rewrite that exposes their batch statistics, and
//! writing recalibrated statistics back.
//!
//! Each BN must normalise with its batch statistics, as in training mode, and the statistics of
//! every layer become one graph output. The ways to get them ([`Reduction`]):
//!
//! - On the CPU (`Moments`), swa's own operator `ai.swa.BatchMoments` (whose kernel is
//!   `crate::runtime::moments`) takes the BN's place: it reads the input once and accumulates
//!   each channel's mean and squared deviations in f64, then normalises with them, on all of the
//!   session's threads, and also does the work of the Add (a residual connection) and the Relu
//!   after the BN where they were its only consumers.
//! - `Training`: the BN itself in training mode with momentum 0, so that its "running" outputs
//!   are the batch mean and the biased batch variance (ONNX Runtime's CPU kernel is exact enough
//!   but single-threaded: up to 18 % slower passes on two threads).
//! - The CUDA provider rejects `training_mode=1`, so there the statistics come from reductions
//!   (`Split`, `Flat`, `Square`, `Centered`): `Xr = Reshape(X, [0, 0, -1])` (any rank ≥ 2 becomes
//!   [N, C, R]), `μ = ReduceMean(Xr, [0, 2])`, `σ² = ReduceL2(Xr, [0, 2])² / n − μ²` (or the
//!   squared deviations from μ, `Centered`), and an inference-mode BatchNormalization normalises
//!   with (μ, σ²).
//!
//! Either way μ, the biased σ² and n = N·R leave as one vector per batch.

use std::collections::HashSet;

use safetensors::Dtype;
use serde::Serialize;

use super::{attr_f, attr_i, attribute, float_attr, int_attr, ints_attr, node, node_label, tensor, tensor_data};
use super::{proto, DataType, GraphProto, TensorProto, ValueInfoProto};
use super::{Model, NodeProto};
use crate::checkpoint::dtype;
use crate::error::{Error, Result};

/// The domain of swa's own statistics operator, as the statistics graph imports it (the runtime
/// registers the operator's CPU kernel under it: `crate::runtime::moments`).
pub const MOMENTS_DOMAIN: &str = "ai.swa";
/// The operator's name: `BatchMoments(X) -> (mean [C], biased variance [C], count [1])`.
pub const MOMENTS_OP: &str = "BatchMoments";

/// One BatchNormalization node.
#[derive(Debug, Clone, Serialize)]
pub struct BnLayer {
    /// Index of the node in the graph.
    pub node: usize,
    /// The node's name (or first output).
    pub name: String,
    /// The checkpoint-style prefix (`layer1.0.bn1`), from the scale's name.
    pub prefix: String,
    /// Input value.
    pub input: String,
    /// Running-mean initializer.
    pub mean: String,
    /// Running-variance initializer.
    pub var: String,
    /// Channels.
    pub channels: usize,
    /// Epsilon.
    pub epsilon: f32,
}

/// Where each layer's statistics lie in the statistics model's one output, a flat f32 vector
/// holding, per layer, the batch mean `[C]`, the biased batch variance `[C]`, and the number of values
/// per channel (N·H·W).
#[derive(Debug, Clone)]
pub struct StatsLayout {
    /// The output's name.
    pub output: String,
    /// Per layer: offset of its mean (its variance follows, then its count).
    pub offsets: Vec<usize>,
}

/// How the per-channel statistics are computed in the statistics graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// swa's own CPU operator (`ai.swa.BatchMoments`, whose kernel is `crate::runtime::moments`)
    /// replaces each BatchNormalization: it gives the layer's mean and biased variance, accumulated in f64, and normalises with them —
    /// the Add and the Relu after it too, where they were the BN's only consumers — on all of the
    /// session's threads (ONNX Runtime's inference-mode BatchNormalization kernel runs on one).
    Moments,
    /// The BatchNormalization itself in training mode (momentum 0): ONNX Runtime's CPU kernel
    /// computes the mean and the mean squared deviation from it, in one node, faster than the
    /// rewrites below and without their loss of digits. The CUDA provider rejects it.
    Training,
    /// `ReduceMean` and `ReduceL2` over axes [0, 2] of the [N, C, R] view at once. On the CPU,
    /// `ReduceL2` adds the squares one after the other over all N·R values of a channel, and
    /// `E[x²] − μ²` then cancels most of the digits that are left: up to 500× PyTorch's own f32
    /// error on torchvision models with 224×224 inputs (docs/compatibility.md).
    Flat,
    /// `ReduceMean` and `ReduceL2` over the contiguous axis 2, then over axis 0 of the small [N, C]
    /// results.
    Split,
    /// As `Split`, with the sum of squares taken by `Mul` and `ReduceSum` rather than `ReduceL2`
    /// (ONNX Runtime's CUDA provider has fast kernels only for `ReduceSum` and `ReduceMean`).
    Square,
    /// Two passes, as `Split` for the mean, then the squared deviations from it:
    /// `σ² = ReduceSumSquare(Xr − μ) / n`, which keeps the variance's digits like `Training` while
    /// every node runs on all of the provider's threads.
    Centered,
}

impl Reduction {
    /// The layout for a device: `Moments` on the CPU, `Split` on CUDA (see docs/performance.md).
    pub fn for_device(cuda: bool) -> Self {
        if cuda {
            Reduction::Split
        } else {
            Reduction::Moments
        }
    }
}

impl std::str::FromStr for Reduction {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "moments" => Ok(Reduction::Moments),
            "training" => Ok(Reduction::Training),
            "flat" => Ok(Reduction::Flat),
            "split" => Ok(Reduction::Split),
            "square" => Ok(Reduction::Square),
            "centered" => Ok(Reduction::Centered),
            _ => Err(format!(
                "unknown statistics reduction `{s}`: use moments, training, centered, flat, split or square"
            )),
        }
    }
}

const HOW_TO_EXPORT: &str = "it was probably folded into the preceding Conv by the exporter or an optimiser (onnxsim, \
    constant folding). Export with BatchNorm kept: torch.onnx.export(model.eval(), x, \"model.onnx\", dynamo=False, \
    training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False), or with dynamo=True, optimize=False";

/// Finds every BatchNormalization node; errors if there is none or one is in training mode.
pub fn find(model: &Model) -> Result<Vec<BnLayer>> {
    let g = model.graph();
    let mut layers = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        if n.op_type() != "BatchNormalization" {
            continue;
        }
        let name = node_label(n);
        if attr_i(n, "training_mode", 0)? != 0 || n.output.iter().filter(|o| !o.is_empty()).count() > 1 {
            // Mean and variance computed in the graph (ReduceMean…), not stored: a BatchNorm built
            // with track_running_stats=False, which exports this way whatever model.eval() says.
            let computed = n.input.get(3).is_some_and(|m| !m.is_empty() && constant(g, m).is_none());
            if computed {
                return Err(Error::node(
                    name,
                    "BatchNormalization",
                    "normalises every batch with its own statistics, computed in the graph: a BatchNorm built with \
                     track_running_stats=False, which keeps no running statistics (it exports in training mode \
                     whatever model.eval() says). There is nothing to recalibrate in it: build it with \
                     track_running_stats=True to use SWA's refit, or evaluate the model as it is",
                ));
            }
            return Err(Error::node(
                name,
                "BatchNormalization",
                "is in training mode (training_mode=1 or running-statistics outputs); export the model in eval mode \
                 (model.eval(), training=TrainingMode.PRESERVE)",
            ));
        }
        if n.input.len() < 5 {
            return Err(Error::node(name, "BatchNormalization", "has fewer than 5 inputs"));
        }
        // The channels, from the running mean's shape: the statistics are always stored tensors
        // (buffers), while the scale and bias may be computed (`affine=False` exports them as
        // `Constant` nodes, or as ones expanded to the input's channels).
        let mean = constant(g, &n.input[3]).ok_or_else(|| {
            Error::node(
                &name,
                "BatchNormalization",
                format!("its running mean `{}` is neither an initializer nor a Constant", n.input[3]),
            )
        })?;
        // From the tensor's checked shape, whose size its bytes bound (a dimension read from the
        // file is otherwise any i64).
        let channels = match tensor_data(mean)?.1[..] {
            [c] => c,
            ref shape => {
                return Err(Error::node(
                    &name,
                    "BatchNormalization",
                    format!("its running mean `{}` has shape {shape:?}, not one dimension (channels)", n.input[3]),
                ))
            }
        };
        let prefix = [(&n.input[1], ".weight"), (&n.input[3], ".running_mean")]
            .iter()
            .find_map(|(name, suffix)| name.strip_suffix(suffix))
            .map_or_else(|| name.clone(), str::to_owned);
        layers.push(BnLayer {
            node: i,
            name,
            prefix,
            input: n.input[0].clone(),
            mean: n.input[3].clone(),
            var: n.input[4].clone(),
            channels,
            epsilon: attr_f(n, "epsilon", 1e-5)?,
        });
    }
    if layers.is_empty() {
        return Err(Error::format(
            &model.path,
            format!("has no BatchNormalization node, so there is nothing to recalibrate: {HOW_TO_EXPORT}"),
        ));
    }
    Ok(layers)
}

/// The tensor named `name` if it is a constant: an initializer, or the `value` of a `Constant` node.
pub fn constant<'a>(g: &'a GraphProto, name: &str) -> Option<&'a TensorProto> {
    g.initializer.iter().find(|t| t.name() == name).or_else(|| {
        let c = g.node.iter().find(|c| c.op_type() == "Constant" && c.output.first().is_some_and(|o| o == name))?;
        attribute(c, "value")?.t.as_ref()
    })
}

fn output(name: &str, dims: &[i64]) -> ValueInfoProto {
    use proto::tensor_shape_proto::{dimension::Value, Dimension};
    let shape = proto::TensorShapeProto {
        dim: dims.iter().map(|&d| Dimension { value: Some(Value::DimValue(d)), ..Default::default() }).collect(),
    };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(proto::type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(shape),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Names of the constants the statistics nodes share.
const SHAPE_NCR: &str = "swa_stats/reshape_to_ncr";
const INDEX_1: &str = "swa_stats/index_1";
/// [1]: the shape [1], or a slice's end 1.
const VEC_1: &str = "swa_stats/vec_1";
const ALL: &str = "swa_stats/all";
const SHAPE_FLAT: &str = "swa_stats/shape_flat";
/// [0]: a slice's start 0.
const VEC_0: &str = "swa_stats/vec_0";
const ZERO: &str = "swa_stats/zero";
/// [-1, 1]: a [C] vector as [C, 1], which broadcasts over [N, C, R].
const SHAPE_C1: &str = "swa_stats/shape_c1";

/// The name of the [1] constant that holds `channels`.
fn channels_name(channels: usize) -> String {
    format!("swa_stats/channels_{channels}")
}

fn axes_name(axes: &[i64]) -> String {
    format!("swa_stats/axes_{axes:?}")
}

/// Adds the constants of [`SHAPE_NCR`], [`INDEX_1`], [`VEC_1`], [`SHAPE_FLAT`], [`VEC_0`], [`ZERO`]
/// and the reduction axes.
fn add_constants(g: &mut GraphProto) {
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    g.initializer.push(tensor(SHAPE_NCR, Dtype::I64, &[3], i64s(&[0, 0, -1])));
    g.initializer.push(tensor(INDEX_1, Dtype::I64, &[], i64s(&[1])));
    g.initializer.push(tensor(VEC_1, Dtype::I64, &[1], i64s(&[1])));
    g.initializer.push(tensor(SHAPE_FLAT, Dtype::I64, &[1], i64s(&[-1])));
    g.initializer.push(tensor(VEC_0, Dtype::I64, &[1], i64s(&[0])));
    g.initializer.push(tensor(ZERO, Dtype::F32, &[], 0f32.to_le_bytes().to_vec()));
    g.initializer.push(tensor(SHAPE_C1, Dtype::I64, &[2], i64s(&[-1, 1])));
    for axes in [&[0, 2][..], &[2], &[0]] {
        g.initializer.push(tensor(&axes_name(axes), Dtype::I64, &[axes.len()], i64s(axes)));
    }
}

/// Builds the statistics nodes of one layer, named `swa_stats/K/...`.
struct LayerNodes<'a> {
    k: usize,
    opset: i64,
    layer: &'a BnLayer,
    nodes: Vec<NodeProto>,
}

impl LayerNodes<'_> {
    fn v(&self, s: &str) -> String {
        format!("swa_stats/{}/{s}", self.k)
    }

    /// An operator whose output is named like the node.
    fn op(&mut self, op: &str, name: &str, inputs: &[&str]) {
        let out = self.v(name);
        self.nodes.push(node(op, out.clone(), inputs, &[&out], vec![]));
    }

    /// A reduction without kept dims; the axes are an input from opset 13 (ReduceSum) or 18 (the others).
    fn reduce(&mut self, op: &str, input: &str, name: &str, axes: &[i64]) {
        let out = self.v(name);
        let axes_input = axes_name(axes);
        let mut attrs = vec![int_attr("keepdims", 0)];
        let mut inputs = vec![input];
        if self.opset >= if op == "ReduceSum" { 13 } else { 18 } {
            inputs.push(&axes_input);
        } else {
            attrs.push(ints_attr("axes", axes));
        }
        self.nodes.push(node(op, out.clone(), &inputs, &[&out], attrs));
    }

    /// `mean` [C] and `sumsq` [C] (the sum of squares) of the [N, C, R] view `xr`.
    fn moments(&mut self, reduction: Reduction) {
        let (xr, l2, l2n, sq, sumsq_n, mean_n) =
            (self.v("xr"), self.v("l2"), self.v("l2_n"), self.v("sq"), self.v("sumsq_n"), self.v("mean_n"));
        match reduction {
            Reduction::Flat => {
                self.reduce("ReduceMean", &xr, "mean", &[0, 2]);
                self.reduce("ReduceL2", &xr, "l2", &[0, 2]);
                self.op("Mul", "sumsq", &[&l2, &l2]);
            }
            Reduction::Split => {
                self.reduce("ReduceMean", &xr, "mean_n", &[2]);
                self.reduce("ReduceMean", &mean_n, "mean", &[0]);
                self.reduce("ReduceL2", &xr, "l2_n", &[2]);
                self.op("Mul", "sumsq_n", &[&l2n, &l2n]);
                self.reduce("ReduceSum", &sumsq_n, "sumsq", &[0]);
            }
            Reduction::Training | Reduction::Moments => unreachable!("computed by a node of their own"),
            Reduction::Centered => {
                let (mean, mean_c1, dev, ssd_n) = (self.v("mean"), self.v("mean_c1"), self.v("dev"), self.v("ssd_n"));
                self.reduce("ReduceMean", &xr, "mean_n", &[2]);
                self.reduce("ReduceMean", &mean_n, "mean", &[0]);
                self.op("Reshape", "mean_c1", &[&mean, SHAPE_C1]);
                self.op("Sub", "dev", &[&xr, &mean_c1]);
                self.reduce("ReduceSumSquare", &dev, "ssd_n", &[2]);
                self.reduce("ReduceSum", &ssd_n, "ssd", &[0]);
            }
            Reduction::Square => {
                self.reduce("ReduceMean", &xr, "mean_n", &[2]);
                self.reduce("ReduceMean", &mean_n, "mean", &[0]);
                self.op("Mul", "sq", &[&xr, &xr]);
                self.reduce("ReduceSum", &sq, "sumsq_n", &[2]);
                self.reduce("ReduceSum", &sumsq_n, "sumsq", &[0]);
            }
        }
    }

    /// `count` (values per channel, N·H·W, as a float) and `count_1` (as a [1] vector).
    fn count(&mut self) {
        let input = self.layer.input.clone();
        let v = |s: &str| self.v(s);
        let (size, shape, channels, count_i, count) = (v("size"), v("shape"), v("channels"), v("count_i"), v("count"));
        self.op("Size", "size", &[&input]);
        self.op("Shape", "shape", &[&input]);
        self.op("Gather", "channels", &[&shape, INDEX_1]);
        self.op("Div", "count_i", &[&size, &channels]);
        let to_float = int_attr("to", DataType::Float as i64);
        self.nodes.push(node("Cast", count.clone(), &[&count_i], &[&count], vec![to_float]));
        self.op("Reshape", "count_1", &[&count, VEC_1]);
    }

    /// The biased `var` from `sumsq` and `mean`: `sumsq / count − mean²`; or `ssd / count` from the
    /// sum of squared deviations (`Centered`).
    fn variance(&mut self, reduction: Reduction) {
        let v = |s: &str| self.v(s);
        if reduction == Reduction::Centered {
            let (ssd, count) = (v("ssd"), v("count"));
            self.op("Div", "var", &[&ssd, &count]);
            return;
        }
        let (count, sumsq, meansq, mean, mean2, var_raw) =
            (v("count"), v("sumsq"), v("meansq"), v("mean"), v("mean2"), v("var_raw"));
        self.op("Div", "meansq", &[&sumsq, &count]);
        self.op("Mul", "mean2", &[&mean, &mean]);
        self.op("Sub", "var_raw", &[&meansq, &mean2]);
        self.op("Relu", "var", &[&var_raw]);
    }

    /// `bn` in training mode with momentum 0: its second and third outputs are the batch `mean`
    /// and biased `var`. Opsets before 14 have no `training_mode`; there the statistics outputs
    /// alone ask for training mode (with two more, the saved statistics).
    ///
    /// ONNX Runtime writes those outputs over the buffers of the running-statistics inputs, so each
    /// input must be a buffer of this layer and slot alone. Initializers are not: ONNX Runtime
    /// merges initializers of equal contents (the zeros of two layers with as many channels, or
    /// the stored statistics of a fresh model), which would hand every such layer the last one's
    /// statistics, and the stored values themselves may be non-finite (0·NaN is NaN). So the
    /// inputs are zeros computed from this layer's input, which nothing can fold or merge:
    /// `x0 · 0` and `x0 − x0` expanded to [C], where x0 is the input's first value (a non-finite
    /// x0 makes the statistics non-finite, which the pass reports, as it would anyway).
    fn training(&mut self, bn: &mut NodeProto) {
        let (flat, x0, zero_mean_1, zero_var_1) = (self.v("x_flat"), self.v("x0"), self.v("zm1"), self.v("zv1"));
        self.op("Reshape", "x_flat", &[&self.layer.input.clone(), SHAPE_FLAT]);
        self.op("Slice", "x0", &[&flat, VEC_0, VEC_1]);
        self.op("Mul", "zm1", &[&x0, ZERO]);
        self.op("Sub", "zv1", &[&x0, &x0]);
        let channels = channels_name(self.layer.channels);
        self.op("Expand", "zero_mean", &[&zero_mean_1, &channels]);
        self.op("Expand", "zero_var", &[&zero_var_1, &channels]);
        let y = bn.output[0].clone();
        bn.input[3] = self.v("zero_mean");
        bn.input[4] = self.v("zero_var");
        bn.attribute.retain(|a| a.name() == "epsilon");
        bn.attribute.push(float_attr("momentum", 0.0));
        bn.output = vec![y, self.v("mean"), self.v("var")];
        if self.opset >= 14 {
            bn.attribute.push(int_attr("training_mode", 1));
        } else {
            bn.output.extend([self.v("saved_mean"), self.v("saved_inv_std")]);
        }
    }
}

/// A copy of `model` in which every BN normalises with its batch statistics, and the statistics
/// of all layers are concatenated into the only graph output (one copy back per batch).
///
/// `Training` needs opset 10 (`Slice` with inputs); older models get `Split`.
pub fn stats_model(model: &Model, layers: &[BnLayer], reduction: Reduction) -> Result<(Model, StatsLayout)> {
    let mut out = model.clone();
    let opset = model.opset();
    let reduction = if reduction == Reduction::Training && opset < 10 { Reduction::Split } else { reduction };
    let mut channel_shapes = HashSet::new();
    let g = out.graph_mut();
    add_constants(g);
    let by_node: std::collections::HashMap<usize, usize> =
        layers.iter().enumerate().map(|(k, l)| (l.node, k)).collect();
    // With `Moments` the operator normalises too, and takes in the Add and the Relu that follow a
    // layer where it is their only input from that layer (see `fusable_tails`).
    let tails =
        if reduction == Reduction::Moments && opset >= 7 { fusable_tails(g, layers) } else { Default::default() };
    let old_nodes = std::mem::take(&mut g.node);
    // The nodes taken in: a Relu's place stays empty, an Add's gets the operator.
    let mut fused: std::collections::HashMap<usize, Option<NodeProto>> =
        tails.values().flat_map(|t| t.add.into_iter().chain(t.relu)).map(|i| (i, None)).collect();
    let (mut parts, mut offsets, mut len) = (Vec::new(), Vec::new(), 0);
    for (i, n) in old_nodes.into_iter().enumerate() {
        if let Some(deferred) = fused.get_mut(&i) {
            // The layer's operator takes the Add's place (its residual is defined by then).
            g.node.extend(deferred.take());
            continue;
        }
        let Some(&k) = by_node.get(&i) else {
            g.node.push(n);
            continue;
        };
        let layer = &layers[k];
        let mut b = LayerNodes { k, opset, layer, nodes: Vec::new() };
        let mut bn: NodeProto = n;
        if reduction == Reduction::Moments {
            // The operator replaces the BN: same inputs but the statistics (and the Add's other
            // input), the output of the last node it takes in.
            let tail = tails.get(&i);
            let y = tail.map_or(&bn.output[0], |t| &t.output);
            let outputs = [b.v("mean"), b.v("var"), b.v("count_1"), y.clone()];
            let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
            let mut attributes = vec![float_attr("epsilon", layer.epsilon)];
            if tail.is_some_and(|t| t.relu.is_some()) {
                attributes.push(int_attr("relu", 1));
            }
            let mut inputs = vec![layer.input.as_str(), &bn.input[1], &bn.input[2]];
            inputs.extend(tail.and_then(|t| t.residual.as_deref()));
            let mut moments = node(MOMENTS_OP, b.v("moments"), &inputs, &outputs, attributes);
            moments.domain = Some(MOMENTS_DOMAIN.into());
            match tail.and_then(|t| t.add) {
                Some(add) => {
                    fused.insert(add, Some(moments));
                }
                None => g.node.push(moments),
            }
            parts.extend([b.v("mean"), b.v("var"), b.v("count_1")]);
            offsets.push(len);
            len += 2 * layer.channels + 1;
            continue;
        } else if reduction == Reduction::Training {
            b.count();
            if channel_shapes.insert(layer.channels) {
                let c = layer.channels as i64;
                g.initializer.push(tensor(&channels_name(layer.channels), Dtype::I64, &[1], c.to_le_bytes().to_vec()));
            }
            b.training(&mut bn);
        } else {
            b.count();
            b.op("Reshape", "xr", &[&layer.input, SHAPE_NCR]);
            b.moments(reduction);
            b.variance(reduction);
            bn.input[3] = b.v("mean");
            bn.input[4] = b.v("var");
            bn.attribute.retain(|a| a.name() == "epsilon");
        }
        parts.extend([b.v("mean"), b.v("var"), b.v("count_1")]);
        g.node.extend(b.nodes);
        g.node.push(bn);
        offsets.push(len);
        len += 2 * layer.channels + 1;
    }
    let inputs: Vec<&str> = parts.iter().map(String::as_str).collect();
    g.node.push(node("Concat", ALL.into(), &inputs, &[ALL], vec![int_attr("axis", 0)]));
    g.output.clear();
    g.output.push(output(ALL, &[len as i64]));
    g.value_info.clear();
    prune(g, ALL);
    if reduction == Reduction::Moments {
        out.import_domain(MOMENTS_DOMAIN, 1);
    }
    Ok((out, StatsLayout { output: ALL.into(), offsets }))
}

/// What a layer's `BatchMoments` takes in besides its BN: the Add after it, if the BN's output is
/// the Add's only input from the layer and that Add's other input is another value (the residual,
/// added to the normalised values), then the Relu after that (or after the BN), if it is the only
/// consumer. Nothing whose value is a graph output, and nothing in a graph with subgraphs (their
/// nodes may read any value of the graph).
#[derive(Debug, Clone)]
struct Tail {
    /// The Add's node and its other input.
    add: Option<usize>,
    residual: Option<String>,
    /// The Relu's node.
    relu: Option<usize>,
    /// The output of the last node taken in.
    output: String,
}

/// The [`Tail`] of each layer that has one, by BN node.
fn fusable_tails(g: &GraphProto, layers: &[BnLayer]) -> std::collections::HashMap<usize, Tail> {
    let has_subgraphs = g.node.iter().any(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()));
    if has_subgraphs {
        return Default::default();
    }
    let mut consumers: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for input in &n.input {
            consumers.entry(input.as_str()).or_default().push(i);
        }
    }
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    // The only consumer of `v`, if it is a plain `op` (one output, no attributes, `inputs` inputs).
    let only = |v: &str, op: &str, inputs: usize| {
        let &[i] = consumers.get(v)?.as_slice() else { return None };
        let n = &g.node[i];
        let plain = n.op_type() == op && n.domain().is_empty() && n.attribute.is_empty() && n.input.len() == inputs;
        (plain && n.output.len() == 1 && !n.output[0].is_empty() && !outputs.contains(v)).then_some(i)
    };
    let mut claimed = HashSet::new();
    let mut tails = std::collections::HashMap::new();
    for l in layers {
        let Some(y) = g.node[l.node].output.first().map(String::as_str) else { continue };
        let add = only(y, "Add", 2).filter(|&a| {
            let other = g.node[a].input.iter().find(|v| v.as_str() != y);
            other.is_some_and(|o| !o.is_empty() && *o != l.input) && !claimed.contains(&a)
        });
        claimed.extend(add);
        let relu = only(add.map_or(y, |a| g.node[a].output[0].as_str()), "Relu", 1);
        if let Some(last) = relu.or(add) {
            let residual = add.and_then(|a| g.node[a].input.iter().find(|v| v.as_str() != y).cloned());
            tails.insert(l.node, Tail { add, residual, relu, output: g.node[last].output[0].clone() });
        }
    }
    tails
}

/// Removes the nodes that do not contribute to `output` (the classifier head after the last BN),
/// and the initializers only they used.
fn prune(g: &mut GraphProto, output: &str) {
    let mut needed: HashSet<String> = HashSet::from([output.to_string()]);
    let mut keep = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().cloned());
        }
    }
    let mut k = keep.into_iter();
    g.node.retain(|_| k.next().unwrap_or(true));
    g.initializer.retain(|t| needed.contains(t.name()));
}

/// Writes new running statistics into the BN nodes' initializers. A statistics initializer shared
/// with another node gets a copy of its own named `<prefix>.running_mean` / `.running_var`.
/// Returns the initializer names used, per layer.
pub fn apply(model: &mut Model, layers: &[BnLayer], stats: &[(Vec<f64>, Vec<f64>)]) -> Result<Vec<(String, String)>> {
    let consumers = model.consumers();
    let mut used: HashSet<String> = model.graph().initializer.iter().map(|t| t.name().to_string()).collect();
    used.extend(model.graph().node.iter().flat_map(|n| n.output.iter().cloned()));
    let mut names = Vec::new();
    for (l, (mean, var)) in layers.iter().zip(stats) {
        let mut pair = Vec::new();
        for (slot, current, values, suffix) in [(3, &l.mean, mean, "running_mean"), (4, &l.var, var, "running_var")] {
            let g = model.graph_mut();
            let existing = g.initializer.iter().position(|t| t.name() == current.as_str());
            let shared = consumers.get(current.as_str()).is_some_and(|c| c.len() > 1);
            let dt = match existing {
                Some(i) => tensor_data(&g.initializer[i])?.0,
                None => Dtype::F32,
            };
            let dt = if dtype::is_float(dt) { dt } else { Dtype::F32 };
            let mut bytes = vec![0u8; values.len() * dtype::width(dt)];
            dtype::encode(dt, values, &mut bytes);
            let name = match existing {
                Some(i) if !shared => {
                    g.initializer[i] = tensor(current, dt, &[values.len()], bytes);
                    current.clone()
                }
                _ => {
                    let mut name = format!("{}.{suffix}", l.prefix);
                    let mut k = 1;
                    while used.contains(&name) {
                        name = format!("{}.{suffix}_{k}", l.prefix);
                        k += 1;
                    }
                    used.insert(name.clone());
                    g.initializer.push(tensor(&name, dt, &[values.len()], bytes));
                    g.node[l.node].input[slot] = name.clone();
                    name
                }
            };
            pair.push(name);
        }
        names.push((pair[0].clone(), pair[1].clone()));
    }
    Ok(names)
}
