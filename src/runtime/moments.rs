//! `ai.swa.BatchMoments`, the CPU operator that gives the statistics graph each BatchNorm's batch
//! mean and biased variance (see [`crate::onnx::bn::Reduction::Moments`]).
//!
//! ONNX has no node that computes both moments with their digits intact on all threads: the
//! reductions (`ReduceL2` then `E[x²] − μ²`) cancel digits, and ONNX Runtime's training-mode
//! BatchNormalization kernel is exact enough but single-threaded. This one reads the input once, in
//! memory order, and accumulates in f64 each channel's deviations from its first value (a shift
//! that keeps `Σd² − (Σd)²/n` free of cancellation: its relative error is about
//! 2⁻⁵³·((μ − x₀)/σ)²). The input is cut into tasks of about 64 Ki values — blocks of whole
//! samples, or groups of channels of one sample — spread over the session's intra-op threads; the
//! cut depends on the shape alone and the blocks' sums are added in order, so the result is the
//! same on any number of threads. (Reading channel by channel instead, rows of R values a whole
//! sample apart, was 5× slower: a new page, and for small R a cache miss, every row.)
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

/// A buffer that the tasks of one `par_for` write at disjoint indices.
struct Shared<T>(*mut T);

// SAFETY: the tasks write disjoint elements of a buffer that outlives them.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Writes element `i`.
    ///
    /// # Safety
    /// `i` is within the buffer, and no other task writes or reads element `i` meanwhile.
    unsafe fn set(&self, i: usize, v: T) {
        // SAFETY: as the caller promises.
        unsafe { *self.0.add(i) = v }
    }
}

/// The kernel. ONNX Runtime calls it, and the tasks, through `extern "C"` functions that
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
    let plan = Plan::new(n, c, r);
    let mut sums = vec![Sums::default(); plan.blocks * c];
    if x.is_empty() {
        // No values (or no channels): every channel's moments are NaN.
    } else if x.len() < 1 << 15 || plan.tasks() == 1 {
        for t in 0..plan.tasks() {
            plan.task(x, t, |i, s| sums[i] = s);
        }
    } else {
        // On ONNX Runtime's threads a panic cannot unwind: each task catches its own, and the
        // first one's message becomes the error.
        let panicked = std::sync::Mutex::new(None);
        let out = Shared(sums.as_mut_ptr());
        ctx.par_for(plan.tasks(), 0, |t| {
            // SAFETY: task t writes only the sums of its own rows and channels (`Plan::task`).
            let run = || plan.task(x, t, |i, s| unsafe { out.set(i, s) });
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                panicked.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| panic_message(&*p));
            }
        })?;
        if let Some(m) = panicked.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(ort::Error::new(format!("BatchMoments: {m}")));
        }
    }
    for (k, (m, v)) in plan.finish(x, &sums).into_iter().enumerate() {
        mean[k] = m as f32;
        var[k] = v as f32;
    }
    Ok(())
}

/// Values per task: a task reads about this many (256 KiB), in memory order.
const TASK: usize = 1 << 16;

/// A channel's sums of deviations from its shift (its first value) and of their squares.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Sums {
    s1: f64,
    s2: f64,
}

/// How the [N, C, R] input is cut into tasks: blocks of consecutive rows (samples) times groups of
/// consecutive channels, each task reading its part in memory order (a channel's rows alone are
/// R values a whole sample apart). The cut depends on the shape only, and the sums of the blocks
/// are added in block order, so the moments do not depend on the number of threads.
#[derive(Clone, Copy, Debug)]
struct Plan {
    n: usize,
    c: usize,
    r: usize,
    rows: usize,
    blocks: usize,
    channels: usize,
    groups: usize,
}

impl Plan {
    fn new(n: usize, c: usize, r: usize) -> Plan {
        let sample = c * r;
        let (rows, channels) = if sample >= TASK {
            (1, TASK.div_ceil(r.max(1)).min(c))
        } else {
            ((TASK / sample.max(1)).clamp(1, n.max(1)), c)
        };
        let channels = channels.max(1);
        Plan { n, c, r, rows, blocks: n.div_ceil(rows), channels, groups: c.div_ceil(channels) }
    }

    fn tasks(&self) -> usize {
        self.blocks * self.groups
    }

    /// Task `t`: the sums of its channels over its rows, handed to `put` at index
    /// `block · C + channel`.
    #[inline(always)]
    fn task(&self, x: &[f32], t: usize, put: impl FnMut(usize, Sums)) {
        crate::checkpoint::dtype::dispatch!(task_any, task_avx2, task_avx512; self, x, t, put)
    }

    /// Each channel's mean and biased variance from the blocks' sums, added in block order.
    fn finish(&self, x: &[f32], sums: &[Sums]) -> Vec<(f64, f64)> {
        let Plan { n, c, r, .. } = *self;
        let mut total = vec![Sums::default(); c];
        for block in sums.chunks_exact(c.max(1)) {
            for (t, s) in total.iter_mut().zip(block) {
                t.s1 += s.s1;
                t.s2 += s.s2;
            }
        }
        let count = (n * r) as f64;
        (0..c)
            .map(|k| {
                if count == 0.0 {
                    return (f64::NAN, f64::NAN);
                }
                let shift = f64::from(x[k * r]);
                let d = total[k].s1 / count;
                let var = total[k].s2 / count - d * d;
                if !shift.is_finite() || !var.is_finite() {
                    return (f64::NAN, f64::NAN);
                }
                // Rounding can leave a constant channel's variance a hair below zero.
                (shift + d, var.max(0.0))
            })
            .collect()
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn task_avx2(plan: &Plan, x: &[f32], t: usize, put: impl FnMut(usize, Sums)) {
    task_any(plan, x, t, put)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn task_avx512(plan: &Plan, x: &[f32], t: usize, put: impl FnMut(usize, Sums)) {
    task_any(plan, x, t, put)
}

#[inline(always)]
fn task_any(plan: &Plan, x: &[f32], t: usize, mut put: impl FnMut(usize, Sums)) {
    let Plan { n, c, r, rows, channels, groups, .. } = *plan;
    let (block, group) = (t / groups, t % groups);
    let (k0, k1) = (group * channels, ((group + 1) * channels).min(c));
    let (i0, i1) = (block * rows, ((block + 1) * rows).min(n));
    let width = k1 - k0;
    if r == 1 {
        // [N, C]: a sample's channels are contiguous, one value each.
        let shift: Vec<f64> = x[k0..k1].iter().map(|&v| f64::from(v)).collect();
        let (mut s1, mut s2) = (vec![0f64; width], vec![0f64; width]);
        for i in i0..i1 {
            let row = &x[i * c + k0..][..width];
            for (((&v, &m), a), b) in row.iter().zip(&shift).zip(&mut s1).zip(&mut s2) {
                let d = f64::from(v) - m;
                *a += d;
                *b += d * d;
            }
        }
        for j in 0..width {
            put(block * c + k0 + j, Sums { s1: s1[j], s2: s2[j] });
        }
        return;
    }
    let mut acc = vec![([0f64; LANES], [0f64; LANES]); width];
    for i in i0..i1 {
        for (j, (s1, s2)) in acc.iter_mut().enumerate() {
            let k = k0 + j;
            let shift = f64::from(x[k * r]);
            let row = &x[(i * c + k) * r..][..r];
            let mut chunks = row.chunks_exact(LANES);
            for chunk in &mut chunks {
                for l in 0..LANES {
                    let d = f64::from(chunk[l]) - shift;
                    s1[l] += d;
                    s2[l] += d * d;
                }
            }
            for (l, &v) in chunks.remainder().iter().enumerate() {
                let d = f64::from(v) - shift;
                s1[l] += d;
                s2[l] += d * d;
            }
        }
    }
    for (j, (s1, s2)) in acc.iter().enumerate() {
        put(block * c + k0 + j, Sums { s1: s1.iter().sum(), s2: s2.iter().sum() });
    }
}

/// The mean and biased variance of each channel of an [N, C, R] input (`x` of N·C·R values),
/// computed as the operator computes them, on one thread. (NaN, NaN) for a channel with a
/// non-finite value, or with no values.
pub fn batch_moments(x: &[f32], n: usize, c: usize, r: usize) -> Vec<(f64, f64)> {
    assert_eq!(Some(x.len()), n.checked_mul(c).and_then(|nc| nc.checked_mul(r)), "shape and length differ");
    let plan = Plan::new(n, c, r);
    let mut sums = vec![Sums::default(); plan.blocks * c];
    if !x.is_empty() {
        for t in 0..plan.tasks() {
            plan.task(x, t, |i, s| sums[i] = s);
        }
    }
    plan.finish(x, &sums)
}

#[cfg(test)]
mod tests {
    use super::batch_moments;

    fn all(x: &[f32], rows: usize) -> (f64, f64) {
        batch_moments(x, rows, 1, x.len() / rows)[0]
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
        assert_eq!(batch_moments(&x, 2, 3, 2)[1], (5.5, 9.25));
    }

    #[test]
    fn non_finite_values_and_empty_channels_give_nan() {
        assert!(all(&[1.0, f32::NAN, 2.0], 1).1.is_nan());
        assert!(all(&[f32::INFINITY, 2.0], 1).0.is_nan());
        assert!(batch_moments(&[], 0, 1, 0)[0].0.is_nan());
        assert!(batch_moments(&[], 2, 3, 0).iter().all(|m| m.0.is_nan() && m.1.is_nan()));
        assert!(batch_moments(&[], 2, 0, 5).is_empty());
        assert_eq!(all(&[3.0, 3.0, 3.0, 3.0], 2), (3.0, 0.0));
    }

    /// Each channel's mean and biased variance, two-pass in f64.
    fn reference(x: &[f32], n: usize, c: usize, r: usize) -> Vec<(f64, f64)> {
        (0..c)
            .map(|k| {
                let vals = || (0..n).flat_map(move |i| x[(i * c + k) * r..][..r].iter().map(|&v| f64::from(v)));
                let m = vals().sum::<f64>() / (n * r) as f64;
                (m, vals().map(|v| (v - m).powi(2)).sum::<f64>() / (n * r) as f64)
            })
            .collect()
    }

    #[test]
    fn every_cut_of_the_input_gives_each_channels_moments() {
        // Shapes cut into blocks of rows (small samples), groups of channels (large samples), one
        // value per channel ([N, C]), and rows shorter than, equal to and longer than the lanes.
        for (n, c, r) in [(300, 10, 30), (5, 3, 40_000), (3, 70, 1000), (1000, 70, 1), (64, 9, 16), (7, 5, 3)] {
            let x: Vec<f32> =
                (0..n * c * r).map(|i| ((i * 7919) % 1013) as f32 * 0.01 + (i / r % c) as f32 * 3.0).collect();
            for (k, (got, want)) in batch_moments(&x, n, c, r).into_iter().zip(reference(&x, n, c, r)).enumerate() {
                assert!(
                    (got.0 - want.0).abs() <= 1e-12 * want.0.abs().max(1.0),
                    "{n}x{c}x{r} channel {k}: {got:?} {want:?}"
                );
                assert!((got.1 - want.1).abs() <= 1e-12 * want.1, "{n}x{c}x{r} channel {k}: {got:?} {want:?}");
            }
        }
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
        for (k, (m, v)) in batch_moments(&x, n, c, r).into_iter().enumerate() {
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
