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
//! Input: `X` (float, [N, C, ...], rank ≥ 2). Outputs: `mean` [C], `var` [C] (biased), and
//! `count` [1], the values per channel (N times the product of the other dimensions), as floats.
//! A non-finite value makes its channel's moments NaN, which the pass reports.

use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

/// The operator's domain, as the statistics graph imports it.
pub const DOMAIN: &str = "ai.swa";
/// The operator's name.
pub const NAME: &str = "BatchMoments";

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

// SAFETY: the tasks write disjoint elements (one channel each) of buffers that outlive them.
unsafe impl Send for Outputs {}
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

fn compute(ctx: &ComputeContext) -> ort::Result<()> {
    let input = ctx.input(0)?.ok_or_else(|| ort::Error::new("BatchMoments: no input"))?;
    let (shape, x) = input.try_extract_tensor::<f32>()?;
    if shape.len() < 2 || shape.iter().any(|&d| d < 0) {
        return Err(ort::Error::new(format!("BatchMoments: needs an input of rank 2 or more, got {shape:?}")));
    }
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let (n, c) = (dims[0], dims[1]);
    let r: usize = dims[2..].iter().product();
    if x.len() != n * c * r {
        return Err(ort::Error::new("BatchMoments: the input's length does not match its shape"));
    }
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
        Ok(())
    } else {
        ctx.par_for(c, 0, channel)
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

/// The mean and biased variance of a channel's values, accumulated in f64 as deviations from
/// its first value. (NaN, NaN) with a non-finite value, or with no values.
pub fn moments(x: &[f32], ch: Channel) -> (f64, f64) {
    crate::checkpoint::dtype::dispatch!(moments_any, moments_avx2, moments_avx512; x, ch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn moments_avx2(x: &[f32], ch: Channel) -> (f64, f64) {
    moments_any(x, ch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn moments_avx512(x: &[f32], ch: Channel) -> (f64, f64) {
    moments_any(x, ch)
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
}
