//! `ai.swa.BatchMoments`, the CPU operator that gives the statistics graph each BatchNorm's batch
//! mean and biased variance (see [`crate::onnx::bn::Reduction::Moments`]).
//!
//! ONNX has no node that computes both moments with their digits intact on all threads: the
//! reductions (`ReduceL2` then `E[x²] − μ²`) cancel digits, and ONNX Runtime's training-mode
//! BatchNormalization kernel is exact enough but single-threaded. This one reads each channel once
//! and accumulates in f64 the deviations from the channel's first value (a shift that keeps
//! `Σd² − (Σd)²/n` free of cancellation: its relative error is about 2⁻⁵³·((μ − x₀)/σ)²), with the
//! channels spread over the session's intra-op threads.
//!
//! Input: `X` (float, `[N, C, ...]`, rank ≥ 2). Outputs: `mean` `[C]`, `var` `[C]` (biased), and
//! `count` `[1]`, the values per channel (N times the product of the other dimensions), as floats.
//! A non-finite value makes its channel's moments NaN, which the pass reports.

use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

use crate::onnx::bn::{MOMENTS_DOMAIN as DOMAIN, MOMENTS_OP as NAME};

/// Lanes of the f64 accumulators: the loop then vectorises (the lanes are added in a fixed order,
/// so the result does not depend on the thread count).
const LANES: usize = 8;

struct BatchMoments;

impl Operator for BatchMoments {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [
            OperatorOutput::required(TensorElementType::Float32),
            OperatorOutput::required(TensorElementType::Float32),
            OperatorOutput::required(TensorElementType::Float32),
        ]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(compute))
    }
}

/// The domain to register on a CPU session whose graph uses the operator.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(BatchMoments)
}

/// Output pointers shared by the channel tasks, each of which writes only its own channel.
struct Outputs {
    mean: *mut f32,
    var: *mut f32,
}

// SAFETY: the pointers are only written through `Outputs::set`, by tasks that write disjoint
// elements (one channel each) of buffers that outlive them.
unsafe impl Send for Outputs {}
// SAFETY: as for `Send`: shared between tasks, each writing its own channel only.
unsafe impl Sync for Outputs {}

impl Outputs {
    /// Writes channel `k`'s moments.
    ///
    /// # Safety
    /// `k` is below the outputs' length, and no other task writes channel `k`.
    unsafe fn set(&self, k: usize, (mean, var): (f64, f64)) {
        // SAFETY: as the caller promises.
        unsafe {
            *self.mean.add(k) = mean as f32;
            *self.var.add(k) = var as f32;
        }
    }
}

/// The kernel. ONNX Runtime calls it, and the channel tasks, through `extern "C"` functions that
/// `ort` does not guard: a panic there would abort the process (Rust does not unwind across them),
/// so any panic becomes the node's error here.
fn compute(ctx: &ComputeContext) -> ort::Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compute_unguarded(ctx)))
        .unwrap_or_else(|p| Err(ort::Error::new(format!("BatchMoments: {}", panic_message(&*p)))))
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

fn compute_unguarded(ctx: &ComputeContext) -> ort::Result<()> {
    let input = ctx.input(0)?.ok_or_else(|| ort::Error::new("BatchMoments: no input"))?;
    let (shape, x) = input.try_extract_tensor::<f32>()?;
    if shape.len() < 2 || shape.iter().any(|&d| d < 0) {
        return Err(ort::Error::new(format!("BatchMoments: needs an input of rank 2 or more, got {shape:?}")));
    }
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let (n, c) = (dims[0], dims[1]);
    // Checked: a shape with a 0 dimension can have other dimensions whose product overflows.
    let r = dims[2..].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let len = r.and_then(|r| n.checked_mul(c)?.checked_mul(r)).filter(|&len| len == x.len());
    let (Some(r), Some(_)) = (r, len) else {
        return Err(ort::Error::new(format!("BatchMoments: the input's length does not match its shape {shape:?}")));
    };
    let mut mean = ctx.output(0, vec![c as i64])?.ok_or_else(|| ort::Error::new("BatchMoments: no mean output"))?;
    let mut var = ctx.output(1, vec![c as i64])?.ok_or_else(|| ort::Error::new("BatchMoments: no var output"))?;
    let mut count = ctx.output(2, vec![1i64])?.ok_or_else(|| ort::Error::new("BatchMoments: no count output"))?;
    count.try_extract_tensor_mut::<f32>()?.1[0] = (n * r) as f32;
    let (_, mean) = mean.try_extract_tensor_mut::<f32>()?;
    let (_, var) = var.try_extract_tensor_mut::<f32>()?;
    if mean.len() != c || var.len() != c {
        return Err(ort::Error::new("BatchMoments: outputs of the wrong length"));
    }
    let out = Outputs { mean: mean.as_mut_ptr(), var: var.as_mut_ptr() };
    let channel = |k: usize| {
        let m = moments(x, Channel { start: k * r, rows: n, stride: c * r, len: r });
        // SAFETY: k < c, the outputs' length; this task alone writes channel k.
        unsafe { out.set(k, m) }
    };
    if n * c * r < 1 << 15 {
        (0..c).for_each(channel);
        return Ok(());
    }
    // On ONNX Runtime's threads a panic cannot unwind: each task catches its own, and the first
    // one's message becomes the error.
    let panicked = std::sync::Mutex::new(None);
    ctx.par_for(c, 0, |k| {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| channel(k))) {
            panicked.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| panic_message(&*p));
        }
    })?;
    match panicked.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(m) => Err(ort::Error::new(format!("BatchMoments: {m}"))),
        None => Ok(()),
    }
}

/// Where a channel's values lie in the input: `rows` rows of `len` contiguous values, `stride`
/// apart, the first at `start`.
#[derive(Clone, Copy)]
pub struct Channel {
    /// Index of the first value.
    pub start: usize,
    /// Rows (the batch size).
    pub rows: usize,
    /// Distance between two rows' starts.
    pub stride: usize,
    /// Values per row.
    pub len: usize,
}

crate::simd::dispatch! {
    /// The mean and biased variance of a channel's values, accumulated in f64 as deviations from
    /// its first value. (NaN, NaN) with a non-finite value, or with no values.
    pub fn moments(x: &[f32], ch: Channel) -> (f64, f64) = moments_any; levels: avx512
}

#[inline(always)]
fn moments_any(x: &[f32], ch: Channel) -> (f64, f64) {
    if ch.rows == 0 || ch.len == 0 {
        return (f64::NAN, f64::NAN);
    }
    let shift = f64::from(x[ch.start]);
    let (mut s1, mut s2) = ([0f64; LANES], [0f64; LANES]);
    for i in 0..ch.rows {
        let row = &x[ch.start + i * ch.stride..][..ch.len];
        let mut blocks = row.chunks_exact(LANES);
        for block in &mut blocks {
            for j in 0..LANES {
                let d = f64::from(block[j]) - shift;
                s1[j] += d;
                s2[j] += d * d;
            }
        }
        for (j, &v) in blocks.remainder().iter().enumerate() {
            let d = f64::from(v) - shift;
            s1[j] += d;
            s2[j] += d * d;
        }
    }
    let (s1, s2): (f64, f64) = (s1.iter().sum(), s2.iter().sum());
    let n = (ch.rows * ch.len) as f64;
    let d = s1 / n;
    let var = s2 / n - d * d;
    if !shift.is_finite() || !var.is_finite() {
        return (f64::NAN, f64::NAN);
    }
    // Rounding can leave a constant channel's variance a hair below zero.
    (shift + d, var.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::{moments, Channel};

    fn all(x: &[f32], rows: usize) -> (f64, f64) {
        moments(x, Channel { start: 0, rows, stride: x.len() / rows, len: x.len() / rows })
    }

    #[test]
    fn moments_hold_their_digits_far_from_zero() {
        // Values around 1e4 with a spread of 1e-2: E[x²] − μ² in f32 would lose everything.
        let xs: Vec<f32> = (0..97 * 43).map(|i| 1.0e4 + ((i * 37) % 101) as f32 * 1e-2 - 0.5).collect();
        let (m, v) = all(&xs, 43);
        let exact_m = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64;
        let exact_v = xs.iter().map(|&x| (f64::from(x) - exact_m).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!((m - exact_m).abs() < 1e-9, "{m} {exact_m}");
        assert!(((v - exact_v) / exact_v).abs() < 1e-9, "{v} {exact_v}");
    }

    #[test]
    fn a_channel_is_its_strided_rows_only() {
        // [N=2, C=3, R=2]: channel 1 is [2, 3] and [8, 9].
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(moments(&x, Channel { start: 2, rows: 2, stride: 6, len: 2 }), (5.5, 9.25));
    }

    #[test]
    fn non_finite_values_and_empty_channels_give_nan() {
        assert!(all(&[1.0, f32::NAN, 2.0], 1).1.is_nan());
        assert!(all(&[f32::INFINITY, 2.0], 1).0.is_nan());
        assert!(moments(&[], Channel { start: 0, rows: 0, stride: 0, len: 0 }).0.is_nan());
        assert_eq!(all(&[3.0, 3.0, 3.0, 3.0], 2), (3.0, 0.0));
    }

    /// Runs a graph of one BatchMoments node on `x` (of `shape`) with `threads` intra-op threads.
    fn run_op(shape: &[i64], x: Vec<f32>, threads: usize) -> crate::error::Result<(Vec<f32>, Vec<f32>, f32)> {
        use crate::onnx::proto::{type_proto, GraphProto, ModelProto, OperatorSetIdProto, TypeProto, ValueInfoProto};
        use prost::Message;
        let value = |name: &str| ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(crate::onnx::DataType::Float as i32),
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut op = crate::onnx::node(super::NAME, "m".into(), &["x"], &["mean", "var", "count"], vec![]);
        op.domain = Some(super::DOMAIN.into());
        let opset = |d: &str, v| OperatorSetIdProto { domain: Some(d.into()), version: Some(v) };
        let model = ModelProto {
            ir_version: Some(8),
            opset_import: vec![opset("", 17), opset(super::DOMAIN, 1)],
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: vec![op],
                input: vec![value("x")],
                output: vec![value("mean"), value("var"), value("count")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let engine = crate::runtime::Engine { threads: std::num::NonZeroUsize::new(threads), ..Default::default() };
        let mut session = crate::runtime::session(&model.encode_to_vec(), &engine)?;
        let out = session.run(ort::inputs!["x" => ort::value::Tensor::from_array((shape.to_vec(), x))?])?;
        let get = |name: &str| out[name].try_extract_tensor::<f32>().map(|(_, v)| v.to_vec());
        Ok((get("mean")?, get("var")?, get("count")?[0]))
    }

    #[test]
    fn the_operator_gives_each_channels_moments_on_any_number_of_threads() {
        // [N=64, C=6, R=97]: past the size at which the channels go to ONNX Runtime's threads.
        let (n, c, r) = (64, 6, 97);
        let x: Vec<f32> = (0..n * c * r).map(|i| ((i * 7919) % 1013) as f32 * 0.01 + (i / r % c) as f32).collect();
        let one = run_op(&[n as i64, c as i64, r as i64], x.clone(), 1).unwrap();
        assert_eq!(run_op(&[n as i64, c as i64, r as i64], x.clone(), 2).unwrap(), one);
        assert_eq!(one.2, (n * r) as f32);
        for k in 0..c {
            let (m, v) = moments(&x, Channel { start: k * r, rows: n, stride: c * r, len: r });
            assert_eq!((one.0[k], one.1[k]), (m as f32, v as f32), "channel {k}");
        }
    }

    #[test]
    fn a_shape_whose_size_overflows_is_an_error_not_an_abort() {
        // No values, but the trailing dimensions' product overflows usize: this used to panic
        // inside the kernel, which unwinds into ONNX Runtime's C++ and aborts the process.
        let e = crate::error::chain(&run_op(&[0, 1, 1 << 32, 1 << 32], vec![], 1).unwrap_err());
        assert!(e.contains("BatchMoments"), "{e}");
    }
}
