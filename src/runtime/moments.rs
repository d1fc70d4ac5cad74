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
//! With `scale` and `B` given and a fourth output `Y`, the operator also does the work of the
//! inference-mode BatchNormalization that would follow it: `Y = (X − μ) / √(σ² + ε) · scale + B`
//! with its own moments, plus `R` where that input is given (the other input of an Add that was
//! the BatchNormalization's only consumer, numpy-broadcast), and `max(Y, 0)` as well with
//! `relu=1` (a Relu that was the only consumer of either). That second pass runs on all threads
//! where ONNX Runtime's BatchNormalization kernel runs on one, over the values just read, and `Y`
//! may overwrite `X`. It computes `(X − s)·a + b` in one FMA, with a = scale/√(σ² + ε) and
//! b = B − (μ − s)·a from the f64 moments, rounded once each, and s = 0, or μ in f32 where
//! |μ| > 2σ (so that no digits of μ are lost to `X·a − μ·a`): fewer roundings than ONNX Runtime's
//! kernel, whose coefficients are computed in f32 and applied with a multiply and an add.
//!
//! Inputs: `X` (float, `[N, C, ...]`, rank ≥ 2), optionally `scale` and `B` (`[C]`) and `R`.
//! Outputs: `mean` `[C]`, `var` `[C]` (biased), `count` `[1]`, the values per channel (N times the
//! product of the other dimensions), as floats, and optionally `Y` (X's shape, or the broadcast
//! one with R). Attributes: `epsilon` (float, default 1e-5), `relu` (int, default 0). A non-finite
//! value makes its channel's moments NaN, which the pass reports.

use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{TensorElementType, ValueType};

use crate::onnx::bn::{MOMENTS_DOMAIN as DOMAIN, MOMENTS_OP as NAME};

/// Lanes of the f64 accumulators: the loop then vectorises (the lanes are added in a fixed order,
/// so the result does not depend on the thread count).
const LANES: usize = 8;

struct BatchMoments;

impl Operator for BatchMoments {
    type Kernel<'attr> = BoxedKernel<'attr>;

    /// `Y` may overwrite `X` (the normalisation reads each value once, then writes it).
    const INPLACES: &[(u32, u32)] = &[(0, 3)];

    fn name(&self) -> &str {
        NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [
            OperatorOutput::required(TensorElementType::Float32),
            OperatorOutput::required(TensorElementType::Float32),
            OperatorOutput::required(TensorElementType::Float32),
            OperatorOutput::optional(TensorElementType::Float32),
        ]
    }

    /// `Y` has `X`'s type and shape: ONNX Runtime lets an output overwrite an input only when it
    /// knows both to be of one size. Only a shape whose every dimension is a number or a name is
    /// passed on (an unknown one reads as -1 here, which ONNX Runtime would take for a size, and an
    /// unknown rank as no dimensions), and only with no residual or one of the very same shape.
    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let inputs = ctx.inputs();
        if let Some(x @ ValueType::Tensor { shape, dimension_symbols, .. }) = inputs.first() {
            let known = shape.iter().zip(dimension_symbols.iter()).all(|(&d, name)| d >= 0 || !name.is_empty());
            // A residual of another (or an unknown) shape may broadcast Y to a larger one.
            let residual_fits = inputs.get(3).is_none_or(|r| r == x);
            if known && residual_fits && shape.len() >= 2 && dimension_symbols.len() == shape.len() {
                // A node without `Y` has no output 3: nothing to set there.
                let _ = ctx.set_output(3, x);
            }
        }
        Ok(())
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let epsilon = info.get::<f32>("epsilon").unwrap_or(1e-5);
        let relu = info.get::<i64>("relu").unwrap_or(0) != 0;
        Ok(Box::new(move |ctx: &ComputeContext| compute(ctx, epsilon, relu)))
    }
}

/// The domain to register on a CPU session whose graph uses the operator.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(BatchMoments)
}

/// A buffer that the tasks of one `par_for` write at disjoint indices.
struct Shared<T>(*mut T);

// SAFETY: the pointer is only written through `Shared::set`, by tasks that write disjoint
// elements of a buffer that outlives them.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as for `Send`: shared between tasks, each writing its own elements only.
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
fn compute(ctx: &ComputeContext, epsilon: f32, relu: bool) -> ort::Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compute_unguarded(ctx, epsilon, relu)))
        .unwrap_or_else(|p| Err(ort::Error::new(format!("BatchMoments: {}", panic_message(&*p)))))
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

/// Runs `task(t)` for every t below `tasks`: on ONNX Runtime's threads when `parallel`, else in
/// order on this one. On ONNX Runtime's threads a panic cannot unwind: each task catches its own,
/// and the first one's message becomes the error.
fn run_tasks(
    ctx: &ComputeContext,
    tasks: usize,
    parallel: bool,
    task: impl Fn(usize) + Sync + Send,
) -> ort::Result<()> {
    if !parallel {
        (0..tasks).for_each(task);
        return Ok(());
    }
    let panicked = std::sync::Mutex::new(None);
    ctx.par_for(tasks, 0, |t| {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(t))) {
            panicked.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| panic_message(&*p));
        }
    })?;
    match panicked.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(m) => Err(ort::Error::new(format!("BatchMoments: {m}"))),
        None => Ok(()),
    }
}

/// A `[C]` input of the operator, checked.
fn channel_input<'a>(ctx: &'a ComputeContext, i: usize, name: &str, c: usize) -> ort::Result<ort::value::ValueRef<'a>> {
    let v = ctx.input(i)?.ok_or_else(|| ort::Error::new(format!("BatchMoments: Y needs the {name} input")))?;
    let len = v.try_extract_tensor::<f32>()?.1.len();
    if len != c {
        return Err(ort::Error::new(format!("BatchMoments: {name} holds {len} values for {c} channels")));
    }
    Ok(v)
}

fn compute_unguarded(ctx: &ComputeContext, epsilon: f32, relu: bool) -> ort::Result<()> {
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
    let normalize = ctx.num_outputs()? > 3;
    let (scale, bias) = if normalize {
        (Some(channel_input(ctx, 1, "scale", c)?), Some(channel_input(ctx, 2, "B", c)?))
    } else {
        (None, None)
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
    let parallel = x.len() >= 1 << 15 && plan.tasks() > 1;
    let mut sums = vec![Sums::default(); plan.blocks * c];
    if !x.is_empty() {
        let out = Shared(sums.as_mut_ptr());
        // SAFETY: task t writes only the sums of its own rows and channels (`Plan::task`).
        run_tasks(ctx, plan.tasks(), parallel, |t| plan.task(x, t, |i, s| unsafe { out.set(i, s) }))?;
    }
    let moments = plan.finish(x, &sums);
    for (k, m) in moments.iter().enumerate() {
        mean[k] = m.mean() as f32;
        var[k] = m.var as f32;
    }
    let (Some(scale), Some(bias)) = (scale, bias) else { return Ok(()) };
    let (scale, bias) = (scale.try_extract_tensor::<f32>()?.1, bias.try_extract_tensor::<f32>()?.1);
    let coefficients: Vec<Affine> = moments
        .iter()
        .zip(scale.iter().zip(bias))
        .map(|(m, (&g, &b))| {
            let a = f64::from(g) / (m.var + f64::from(epsilon)).sqrt();
            Affine::new(m, a, f64::from(b))
        })
        .collect();
    // R, added before the Relu: an Add's other input (`Reduction::Moments` fuses `BN + R`).
    let residual = if ctx.num_inputs()? > 3 { ctx.input(3)? } else { None };
    let residual = match &residual {
        Some(v) => Some(v.try_extract_tensor::<f32>()?),
        None => None,
    };
    if let Some((r_shape, r)) = residual.filter(|(r_shape, _)| **r_shape != *shape) {
        // Not X's shape: numpy broadcasting, on this thread (no model of torchvision's has it).
        return broadcast_residual(ctx, (shape, x), (r_shape, r), &coefficients, relu);
    }
    // X's last use: ONNX Runtime may hand its buffer over to Y (`INPLACES`), and from here on
    // only Y's slice, or the raw pointer to X, touches it.
    let (src, total, shape) = (x.as_ptr(), x.len(), shape.to_vec());
    let mut y = ctx.output(3, shape)?.ok_or_else(|| ort::Error::new("BatchMoments: no Y output"))?;
    let (_, y) = y.try_extract_tensor_mut::<f32>()?;
    if y.len() != total {
        return Err(ort::Error::new("BatchMoments: Y of the wrong length"));
    }
    let residual = residual.map(|(_, r)| r.as_ptr());
    if residual.is_some_and(|r| std::ptr::eq(r, src) || std::ptr::eq(r, y.as_ptr())) {
        return Err(ort::Error::new("BatchMoments: the residual is X or Y"));
    }
    let pass = Normalize {
        src,
        dst: y.as_mut_ptr(),
        in_place: std::ptr::eq(src, y.as_ptr()),
        residual,
        coefficients: &coefficients,
        relu,
    };
    run_tasks(ctx, plan.tasks(), parallel, |t| {
        // SAFETY: X, Y and R hold N·C·R values (checked above), Y is X's buffer or disjoint from
        // it, R is neither; task t reads and writes only the values of its own rows and channels,
        // and when Y is X's buffer nothing else reads X meanwhile.
        unsafe { plan.normalize(t, &pass) }
    })
}

/// `Y = max(normalised X + R, 0)` (or without the max) for a residual R of another shape than X's,
/// numpy-broadcast together; Y has the broadcast shape.
fn broadcast_residual(
    ctx: &ComputeContext,
    (x_shape, x): (&[i64], &[f32]),
    (r_shape, r): (&[i64], &[f32]),
    coefficients: &[Affine],
    relu: bool,
) -> ort::Result<()> {
    let rank = x_shape.len().max(r_shape.len());
    let pad = |s: &[i64]| -> Vec<usize> {
        std::iter::repeat_n(1, rank - s.len()).chain(s.iter().map(|&d| d.max(0) as usize)).collect()
    };
    let (xd, rd) = (pad(x_shape), pad(r_shape));
    let mut out = Vec::with_capacity(rank);
    for (&a, &b) in xd.iter().zip(&rd) {
        if a != b && a != 1 && b != 1 {
            return Err(ort::Error::new(format!(
                "BatchMoments: a residual of shape {r_shape:?} does not broadcast with {x_shape:?}"
            )));
        }
        out.push(if a == 1 { b } else { a });
    }
    // Strides of X and R over the output's indices (0 along a broadcast dimension).
    let strides = |d: &[usize]| -> Vec<usize> {
        let mut s = vec![0; rank];
        let mut acc = 1usize;
        for k in (0..rank).rev() {
            s[k] = if d[k] == 1 { 0 } else { acc };
            acc *= d[k];
        }
        s
    };
    let (xs, rs) = (strides(&xd), strides(&rd));
    let total = out.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(total) = total.filter(|&t| t <= isize::MAX as usize / 4) else {
        return Err(ort::Error::new("BatchMoments: the broadcast output is too large"));
    };
    // X's values per channel and sample: X's channel is its linear index / inner mod C.
    let inner = x_shape[2..].iter().product::<i64>().max(1) as usize;
    let shape: Vec<i64> = out.iter().map(|&d| d as i64).collect();
    let mut y = ctx.output(3, shape)?.ok_or_else(|| ort::Error::new("BatchMoments: no Y output"))?;
    let (_, y) = y.try_extract_tensor_mut::<f32>()?;
    if y.len() != total || std::ptr::eq(y.as_ptr(), x.as_ptr()) {
        return Err(ort::Error::new("BatchMoments: Y of the wrong length"));
    }
    let mut index = vec![0usize; rank];
    let (mut xi, mut ri) = (0usize, 0usize);
    for v in y.iter_mut() {
        // X's channel, from its own linear index.
        let k = xi / inner % coefficients.len().max(1);
        *v = clamp(affine(x[xi], coefficients[k]) + r[ri], relu);
        for d in (0..rank).rev() {
            index[d] += 1;
            xi += xs[d];
            ri += rs[d];
            if index[d] < out[d] {
                break;
            }
            xi -= xs[d] * out[d];
            ri -= rs[d] * out[d];
            index[d] = 0;
        }
    }
    Ok(())
}

/// How a channel is normalised: `y = (x − shift)·a + b`, with one rounding (FMA).
#[derive(Clone, Copy, Debug)]
struct Affine {
    shift: f32,
    a: f32,
    b: f32,
}

impl Affine {
    /// For moments `m`, a = scale/√(σ² + ε) and B: `(x − μ)·a + B` as `(x − shift)·a + b`. The
    /// shift is 0 where |μ| ≤ 2σ, and μ in f32 beyond, where `x − shift` is then exact for most
    /// values and `b = B − (μ − shift)·a` keeps μ's digits that `x·a + (B − μ·a)` would lose.
    fn new(m: &Moments, a: f64, bias: f64) -> Affine {
        let mean = m.mean();
        let shift = if mean.abs() <= 2.0 * m.var.sqrt() { 0.0 } else { mean as f32 };
        Affine { shift, a: a as f32, b: (bias - (m.shift - f64::from(shift) + m.dev) * a) as f32 }
    }
}

/// A channel's moments: its first value, the mean's deviation from it, and the biased variance
/// (all NaN for a channel with a non-finite value, or with no values).
#[derive(Clone, Copy, Debug)]
struct Moments {
    shift: f64,
    dev: f64,
    var: f64,
}

impl Moments {
    const NAN: Moments = Moments { shift: f64::NAN, dev: f64::NAN, var: f64::NAN };

    fn mean(&self) -> f64 {
        self.shift + self.dev
    }
}

/// Values per task: a task reads about this many (256 KiB), in memory order.
const TASK: usize = 1 << 16;

/// A channel's sums of deviations from its shift (its first value) and of their squares.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Sums {
    s1: f64,
    s2: f64,
}

/// How the `[N, C, R]` input is cut into tasks: blocks of consecutive rows (samples) times groups of
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
    fn task(&self, x: &[f32], t: usize, put: impl FnMut(usize, Sums)) {
        task(self, x, t, put)
    }

    /// Each channel's moments from the blocks' sums, added in block order.
    fn finish(&self, x: &[f32], sums: &[Sums]) -> Vec<Moments> {
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
                    return Moments::NAN;
                }
                let shift = f64::from(x[k * r]);
                let dev = total[k].s1 / count;
                let var = total[k].s2 / count - dev * dev;
                if !shift.is_finite() || !var.is_finite() {
                    return Moments::NAN;
                }
                // Rounding can leave a constant channel's variance a hair below zero.
                Moments { shift, dev, var: var.max(0.0) }
            })
            .collect()
    }

    /// Task `t` of the normalisation (see [`Normalize`]) over the task's rows and channels.
    ///
    /// # Safety
    /// `pass`'s buffers are valid as [`Normalize`] says, and no other task reads or writes this
    /// task's values meanwhile.
    unsafe fn normalize(&self, t: usize, pass: &Normalize) {
        // SAFETY: as the caller promises.
        unsafe { normalize(self, t, pass) }
    }
}

/// The second pass: `Y = (X − shift)·a + b`, plus `R` where there is a residual, then `max(·, 0)`
/// with `relu`, each channel with its coefficients.
struct Normalize<'a> {
    /// X: N·C·R values.
    src: *const f32,
    /// Y: as many values, X's buffer itself when `in_place`, else disjoint from it.
    dst: *mut f32,
    in_place: bool,
    /// R: as many values, disjoint from both.
    residual: Option<*const f32>,
    coefficients: &'a [Affine],
    relu: bool,
}

// SAFETY: the tasks read X and R and write disjoint parts of Y (`Plan::normalize`'s promise).
unsafe impl Send for Normalize<'_> {}
// SAFETY: as for `Send`: shared between tasks, each writing its own values of Y only.
unsafe impl Sync for Normalize<'_> {}

crate::simd::dispatch! {
    /// [`normalize_any`], with FMA where the CPU has it (`mul_add` is exact either way: the same
    /// bits everywhere, only faster).
    ///
    /// # Safety
    /// As [`Plan::normalize`].
    unsafe fn normalize(plan: &Plan, t: usize, pass: &Normalize) = normalize_any; levels: avx512_fma
}

/// One value normalised, with one rounding after the shift (exact where it is not 0).
#[inline(always)]
fn affine(x: f32, f: Affine) -> f32 {
    (x - f.shift).mul_add(f.a, f.b)
}

/// `max(y, 0)` with `relu`; not `max`: a NaN stays NaN, as the pass reports it.
#[inline(always)]
fn clamp(y: f32, relu: bool) -> f32 {
    if relu && y < 0.0 {
        0.0
    } else {
        y
    }
}

/// Normalises one span of values: `out` from `input` (or in place), plus `residual`, with the
/// coefficients of value j `coefficient(j)`.
#[inline(always)]
fn span(
    out: &mut [f32],
    input: Option<&[f32]>,
    residual: Option<&[f32]>,
    coefficient: impl Fn(usize) -> Affine,
    relu: bool,
) {
    match (input, residual) {
        (Some(x), None) => {
            for (j, (y, &x)) in out.iter_mut().zip(x).enumerate() {
                *y = clamp(affine(x, coefficient(j)), relu);
            }
        }
        (None, None) => {
            for (j, y) in out.iter_mut().enumerate() {
                *y = clamp(affine(*y, coefficient(j)), relu);
            }
        }
        (Some(x), Some(r)) => {
            for (j, ((y, &x), &r)) in out.iter_mut().zip(x).zip(r).enumerate() {
                *y = clamp(affine(x, coefficient(j)) + r, relu);
            }
        }
        (None, Some(r)) => {
            for (j, (y, &r)) in out.iter_mut().zip(r).enumerate() {
                *y = clamp(affine(*y, coefficient(j)) + r, relu);
            }
        }
    }
}

/// See [`Plan::normalize`].
///
/// # Safety
/// As [`Plan::normalize`].
#[inline(always)]
unsafe fn normalize_any(plan: &Plan, t: usize, pass: &Normalize) {
    let Plan { n, c, r, rows, channels, groups, .. } = *plan;
    let (block, group) = (t / groups, t % groups);
    let (k0, k1) = (group * channels, ((group + 1) * channels).min(c));
    let (i0, i1) = (block * rows, ((block + 1) * rows).min(n));
    let coefficients = &pass.coefficients[k0..k1];
    for i in i0..i1 {
        // Row i's values of channels k0..k1 are contiguous.
        let (start, len) = ((i * c + k0) * r, (k1 - k0) * r);
        // SAFETY: the span lies within the N·C·R values of each buffer and belongs to this task
        // alone (the caller's promise); in place, only `out` refers to it.
        let (out, input, residual) = unsafe {
            (
                std::slice::from_raw_parts_mut(pass.dst.add(start), len),
                (!pass.in_place).then(|| std::slice::from_raw_parts(pass.src.add(start), len)),
                pass.residual.map(|p| std::slice::from_raw_parts(p.add(start), len)),
            )
        };
        if r == 1 {
            span(out, input, residual, |j| coefficients[j], pass.relu);
            continue;
        }
        for (j, &f) in coefficients.iter().enumerate() {
            let (from, to) = (j * r, (j + 1) * r);
            let (input, residual) = (input.map(|x| &x[from..to]), residual.map(|x| &x[from..to]));
            span(&mut out[from..to], input, residual, |_| f, pass.relu);
        }
    }
}

crate::simd::dispatch! {
    /// Task `t`'s sums (see [`Plan::task`]), vectorised as wide as the CPU allows.
    fn task(plan: &Plan, x: &[f32], t: usize, put: impl FnMut(usize, Sums)) = task_any; levels: avx512
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

/// The mean and biased variance of each channel of an `[N, C, R]` input (`x` of N·C·R values),
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
    plan.finish(x, &sums).iter().map(|m| (m.mean(), m.var)).collect()
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
        run_graph(shape, x, threads, None).map(|(m, v, n, _)| (m, v, n))
    }

    /// mean, var, count and Y (empty without [`Norm`]).
    type Outputs = (Vec<f32>, Vec<f32>, f32, Vec<f32>);

    /// The normalising form, which returns Y as well.
    #[derive(Clone, Copy)]
    struct Norm<'a> {
        scale: &'a [f32],
        bias: &'a [f32],
        epsilon: f32,
        relu: bool,
        /// X computed by an Add node and Y consumed by another, so that ONNX Runtime may hand
        /// X's buffer over to Y (never a graph input's or output's).
        computed: bool,
        /// R, a graph input of this shape.
        residual: Option<(&'a [i64], &'a [f32])>,
    }

    fn run_graph(shape: &[i64], x: Vec<f32>, threads: usize, norm: Option<Norm>) -> crate::error::Result<Outputs> {
        use crate::onnx::proto::tensor_shape_proto::{dimension::Value, Dimension};
        use crate::onnx::proto::{type_proto, GraphProto, ModelProto, OperatorSetIdProto, TypeProto, ValueInfoProto};
        use crate::onnx::{float_attr, int_attr, node, tensor};
        use prost::Message;
        use safetensors::Dtype;
        let typed = |name: &str, dims: Option<&[i64]>| ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(crate::onnx::DataType::Float as i32),
                    shape: dims.map(|dims| crate::onnx::proto::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension { value: Some(Value::DimValue(d)), ..Default::default() })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = |name: &str| typed(name, None);
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (mut nodes, mut initializer) = (Vec::new(), Vec::new());
        let mut outputs = vec![value("mean"), value("var"), value("count")];
        let mut op = match norm {
            None => node(super::NAME, "m".into(), &["x"], &["mean", "var", "count"], vec![]),
            Some(Norm { scale, bias, epsilon, relu, computed, residual }) => {
                let c = scale.len();
                initializer.push(tensor("scale", Dtype::F32, &[c], f32s(scale)));
                initializer.push(tensor("bias", Dtype::F32, &[c], f32s(bias)));
                // A graph output never takes an input's buffer: with `computed`, X comes from an
                // Add node and Y goes to another.
                let input = if computed {
                    initializer.push(tensor("zero", Dtype::F32, &[], f32s(&[0.0])));
                    nodes.push(node("Add", "add".into(), &["x", "zero"], &["x1"], vec![]));
                    "x1"
                } else {
                    "x"
                };
                let y = if computed { "y1" } else { "y" };
                outputs.push(value("y"));
                let attrs = vec![float_attr("epsilon", epsilon), int_attr("relu", relu as i64)];
                let inputs: &[&str] =
                    if residual.is_some() { &[input, "scale", "bias", "r"] } else { &[input, "scale", "bias"] };
                node(super::NAME, "m".into(), inputs, &["mean", "var", "count", y], attrs)
            }
        };
        op.domain = Some(super::DOMAIN.into());
        nodes.push(op);
        if norm.is_some_and(|n| n.computed) {
            nodes.push(node("Add", "add_y".into(), &["y1", "zero"], &["y"], vec![]));
        }
        let opset = |d: &str, v| OperatorSetIdProto { domain: Some(d.into()), version: Some(v) };
        let model = ModelProto {
            ir_version: Some(8),
            opset_import: vec![opset("", 17), opset(super::DOMAIN, 1)],
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: nodes,
                initializer,
                // With its shape known, ONNX Runtime can hand a computed X's buffer over to Y.
                input: std::iter::once(typed("x", Some(shape)))
                    .chain(norm.and_then(|n| n.residual).map(|(dims, _)| typed("r", Some(dims))))
                    .collect(),
                output: outputs,
                ..Default::default()
            }),
            ..Default::default()
        };
        let engine = crate::runtime::Engine { threads: std::num::NonZeroUsize::new(threads), ..Default::default() };
        let mut session = crate::runtime::session(&model.encode_to_vec(), &engine)?;
        let x = ort::value::Tensor::from_array((shape.to_vec(), x))?;
        let out = match norm.and_then(|n| n.residual) {
            Some((dims, r)) => {
                let r = ort::value::Tensor::from_array((dims.to_vec(), r.to_vec()))?;
                session.run(ort::inputs!["x" => x, "r" => r])?
            }
            None => session.run(ort::inputs!["x" => x])?,
        };
        let get = |name: &str| out[name].try_extract_tensor::<f32>().map(|(_, v)| v.to_vec());
        let y = if norm.is_some() { get("y")? } else { Vec::new() };
        Ok((get("mean")?, get("var")?, get("count")?[0], y))
    }

    #[test]
    fn the_operator_normalises_as_batchnorm_would_with_its_moments() {
        // Channels far from zero (|μ| ≫ σ), past the size at which the tasks go to ONNX Runtime's
        // threads, as [N, C, R] and as [N, C] (one value per channel).
        for (n, c, r) in [(64usize, 6usize, 97usize), (4096, 24, 1)] {
            let x: Vec<f32> = (0..n * c * r)
                .map(|i| ((i * 7919) % 1013) as f32 * 0.01 + (i / r % c) as f32 * 100.0 - 250.0)
                .collect();
            let scale: Vec<f32> = (0..c).map(|k| 0.5 + k as f32 * 0.25).collect();
            let bias: Vec<f32> = (0..c).map(|k| k as f32 * 0.1 - 0.3).collect();
            let shape = [n as i64, c as i64, r as i64];
            let shape = if r == 1 { &shape[..2] } else { &shape[..] };
            let exact = reference(&x, n, c, r);
            for relu in [false, true] {
                for computed in [false, true] {
                    let norm = Some(Norm { scale: &scale, bias: &bias, epsilon: 1e-3, relu, computed, residual: None });
                    let one = run_graph(shape, x.clone(), 1, norm).unwrap();
                    // Byte-identical on any number of threads, the moments as without Y.
                    assert_eq!(run_graph(shape, x.clone(), 2, norm).unwrap(), one);
                    let plain = run_op(shape, x.clone(), 2).unwrap();
                    assert_eq!((&one.0, &one.1, one.2), (&plain.0, &plain.1, plain.2));
                    for (i, (&y, &v)) in one.3.iter().zip(&x).enumerate() {
                        let k = i / r % c;
                        let (m, var) = exact[k];
                        let want = (f64::from(v) - m) / (var + 1e-3).sqrt() * f64::from(scale[k]) + f64::from(bias[k]);
                        let want = if relu { want.max(0.0) } else { want };
                        assert!(
                            (f64::from(y) - want).abs() < 2e-6 * want.abs().max(1.0),
                            "{n}x{c}x{r} value {i}: {y} {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_operator_adds_a_residual_before_the_relu() {
        let (n, c, r) = (64usize, 6usize, 97usize);
        let x: Vec<f32> = (0..n * c * r).map(|i| ((i * 7919) % 1013) as f32 * 0.01 + (i / r % c) as f32).collect();
        let (scale, bias) = (vec![1.5f32; c], vec![-0.25f32; c]);
        let exact = reference(&x, n, c, r);
        let normalised = |i: usize| {
            let (m, var) = exact[i / r % c];
            (f64::from(x[i]) - m) / (var + 1e-5).sqrt() * 1.5 - 0.25
        };
        let shape = [n as i64, c as i64, r as i64];
        // R of X's shape (the fast path, in place or not), and R broadcast to it.
        let full: Vec<f32> = (0..n * c * r).map(|i| ((i * 31) % 17) as f32 * 0.1 - 0.8).collect();
        let per_channel: Vec<f32> = (0..c).map(|k| k as f32 * 0.3 - 0.9).collect();
        let expanded: Vec<f32> = (0..n * c * r).map(|i| per_channel[i / r % c]).collect();
        for (dims, values, at) in [(&shape[..], &full, &full), (&[1, c as i64, 1], &per_channel, &expanded)] {
            for computed in [false, true] {
                let norm = Norm {
                    scale: &scale,
                    bias: &bias,
                    epsilon: 1e-5,
                    relu: true,
                    computed,
                    residual: Some((dims, values)),
                };
                let one = run_graph(&shape, x.clone(), 1, Some(norm)).unwrap();
                assert_eq!(run_graph(&shape, x.clone(), 2, Some(norm)).unwrap(), one);
                for (i, &y) in one.3.iter().enumerate() {
                    let want = (normalised(i) + f64::from(at[i])).max(0.0);
                    assert!((f64::from(y) - want).abs() < 2e-6 * want.abs().max(1.0), "{dims:?} value {i}: {y} {want}");
                }
            }
        }
        // R that broadcasts Y up to its own shape: [N, C, 1] + [N, C, 5].
        let (x1, r5): (Vec<f32>, Vec<f32>) =
            ((0..8 * 3).map(|i| i as f32).collect(), (0..8 * 3 * 5).map(|i| i as f32 * 0.01).collect());
        let norm = Norm {
            scale: &scale[..3],
            bias: &bias[..3],
            epsilon: 1e-5,
            relu: false,
            computed: false,
            residual: Some((&[8, 3, 5], &r5)),
        };
        let y = run_graph(&[8, 3, 1], x1.clone(), 1, Some(norm)).unwrap().3;
        let exact = reference(&x1, 8, 3, 1);
        assert_eq!(y.len(), 120);
        for (i, &v) in y.iter().enumerate() {
            let (m, var) = exact[i / 5 % 3];
            let want = (f64::from(x1[i / 5]) - m) / (var + 1e-5).sqrt() * 1.5 - 0.25 + f64::from(r5[i]);
            assert!((f64::from(v) - want).abs() < 2e-6 * want.abs().max(1.0), "value {i}: {v} {want}");
        }
        // And one that does not broadcast at all.
        let norm = Norm { residual: Some((&[4, 1, 1], &[0.0; 4])), ..norm };
        let e = crate::error::chain(&run_graph(&[8, 3, 1], x1, 1, Some(norm)).unwrap_err());
        assert!(e.contains("does not broadcast"), "{e}");
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
