//! Element types: which are weights, and conversion between the stored bytes and f32/f64.
//!
//! Stored bytes are little-endian and may be unaligned (mmap'd safetensors data starts wherever the
//! header ends), so conversions read them through `from_le_bytes`, except where the hot averaging
//! loops can view aligned bf16 data as `u16` directly.

use half::f16;
use safetensors::Dtype;

use crate::simd::dispatch;

/// Bytes per element (0 for the sub-byte types, which are never averaged).
pub fn width(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

/// The bytes of a tensor of `dtype` and `shape`, or why there is no such number: a dtype whose
/// elements are not whole bytes (F4, F6…, which swa cannot read), or a size that overflows.
pub fn nbytes(dtype: Dtype, shape: &[usize]) -> Result<usize, String> {
    if dtype.bitsize() == 0 || !dtype.bitsize().is_multiple_of(8) {
        return Err(format!("dtype {dtype:?} is not supported (its elements are not whole bytes)"));
    }
    shape
        .iter()
        .try_fold(width(dtype), |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} of {dtype:?} is too large: its size overflows"))
}

/// True for the 8-bit floating-point types (FP8), which swa does not average: their scales live
/// in separate tensors, so averaging the codes would not average the weights.
pub fn is_fp8(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F8_E4M3 | Dtype::F8_E5M2 | Dtype::F8_E8M0)
}

/// True for the floating-point types that are averaged and converted.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// The safetensors name of a dtype (`F32`, `BF16`, ...).
pub fn name(dtype: Dtype) -> String {
    format!("{dtype:?}")
}

/// Parses `f32`, `f16`, `bf16`, `f64` (any case) into a float dtype.
pub fn parse_float(s: &str) -> Option<Dtype> {
    match s.to_ascii_lowercase().as_str() {
        "f16" | "float16" | "half" => Some(Dtype::F16),
        "bf16" | "bfloat16" => Some(Dtype::BF16),
        "f32" | "float32" | "float" => Some(Dtype::F32),
        "f64" | "float64" | "double" => Some(Dtype::F64),
        _ => None,
    }
}

macro_rules! each_float {
    ($dtype:expr, $bytes:expr, |$i:ident, $v:ident| $body:expr) => {
        match $dtype {
            Dtype::F32 => {
                for ($i, c) in $bytes.chunks_exact(4).enumerate() {
                    let $v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
                    $body
                }
            }
            Dtype::F64 => {
                for ($i, c) in $bytes.chunks_exact(8).enumerate() {
                    let $v = f64::from_le_bytes(c.try_into().unwrap());
                    $body
                }
            }
            Dtype::BF16 => {
                for ($i, c) in $bytes.chunks_exact(2).enumerate() {
                    let $v = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64;
                    $body
                }
            }
            Dtype::F16 => {
                for ($i, c) in $bytes.chunks_exact(2).enumerate() {
                    let $v = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64();
                    $body
                }
            }
            other => unreachable!("not a float dtype: {other:?}"),
        }
    };
}

/// One branch-free pass: add `weight ×` each value to the f64 accumulator (or, for the first
/// input, store it there). The loops vectorise.
macro_rules! fused {
    ($values:expr, $weight:expr, $acc:expr, $first:expr, |$v:ident| $decode:expr) => {{
        if $first {
            for (a, $v) in $acc.iter_mut().zip($values) {
                let x: f64 = $decode;
                *a = $weight * x;
            }
        } else {
            for (a, $v) in $acc.iter_mut().zip($values) {
                let x: f64 = $decode;
                *a += $weight * x;
            }
        }
    }};
}

/// The fused loop for 16-bit floats (bf16, f16).
macro_rules! fused_16bit {
    ($dtype:expr, $bytes:expr, $weight:expr, $acc:expr, $first:expr) => {
        match ($dtype, as_u16($bytes)) {
            (Dtype::BF16, Some(v)) => fused!(v, $weight, $acc, $first, |b| f32::from_bits((*b as u32) << 16) as f64),
            (Dtype::BF16, None) => fused!($bytes.chunks_exact(2), $weight, $acc, $first, |c| f32::from_bits(
                (u16::from_le_bytes([c[0], c[1]]) as u32) << 16
            ) as f64),
            (Dtype::F16, Some(v)) => fused!(v, $weight, $acc, $first, |h| f16_to_f32(*h) as f64),
            (Dtype::F16, None) => {
                fused!($bytes.chunks_exact(2), $weight, $acc, $first, |c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))
                    as f64)
            }
            (other, _) => unreachable!("not a 16-bit float dtype: {other:?}"),
        }
    };
}

/// An f16 as f32, exactly; branch-free, so that loops over it vectorise (`half`'s conversion
/// checks for F16C at every call). The exponent and mantissa bits shifted into place are the f32
/// 2^-112 times the value (subnormals included), so a multiplication by 2^112 rebiases them.
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let x = u32::from(h);
    let shifted = (x & 0x7fff) << 13;
    let magnitude = (f32::from_bits(shifted) * f32::from_bits(0x7780_0000)).to_bits();
    let magnitude = if shifted >= 0x0f80_0000 { shifted | 0x7f80_0000 } else { magnitude };
    f32::from_bits(magnitude | ((x & 0x8000) << 16))
}

/// The bytes as little-endian u16 values without copying, when aligned (as buffers from the
/// allocator are).
fn as_u16(bytes: &[u8]) -> Option<&[u16]> {
    // SAFETY: every bit pattern is a valid u16; `align_to` only yields the aligned middle part.
    let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
    (cfg!(target_endian = "little") && pre.is_empty() && post.is_empty()).then_some(mid)
}

#[inline(always)]
fn accumulate_any(dtype: Dtype, bytes: &[u8], weight: f64, acc: &mut [f64], first: bool) {
    match dtype {
        Dtype::BF16 | Dtype::F16 => fused_16bit!(dtype, bytes, weight, acc, first),
        Dtype::F32 => {
            fused!(bytes.chunks_exact(4), weight, acc, first, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        }
        Dtype::F64 => fused!(bytes.chunks_exact(8), weight, acc, first, |c| f64::from_le_bytes(c.try_into().unwrap())),
        other => unreachable!("not a float dtype: {other:?}"),
    }
}

dispatch! {
    /// `acc[i] += weight * x[i]` for the float tensor bytes `bytes`, or `acc[i] = weight * x[i]` for
    /// the `first` input. NaN and Inf carry through: a NaN or Inf input (even with weight zero)
    /// makes its sums NaN or Inf, so callers look for non-finite inputs only where a sum is one.
    /// Compiled for AVX-512 and AVX2 too, without FMA: every element sees the same multiply and
    /// add, so results are identical on every CPU.
    pub fn accumulate(dtype: Dtype, bytes: &[u8], weight: f64, acc: &mut [f64], first: bool) = accumulate_any;
    levels: avx512
}

/// `v` rounded once to the nearest bf16 (ties to even), as the f64 of that bf16: `as f32` is then
/// exact, and so are the top 16 bits of the f32 (NaN stays a quiet NaN; beyond bf16's range the
/// result is at least 2^128, which becomes Inf). Rounding through f32 instead would round twice
/// (an f64 just above a halfway point between two bf16 values can become that halfway point in
/// f32, then go to even), and `half`'s `bf16::from_f64` ignores the low 32 bits of the mantissa.
#[inline(always)]
fn round_bf16(v: f64) -> f64 {
    round_to::<7>(v, pow2(-126), pow2(130))
}

/// `v` rounded once to the nearest f16 (ties to even), as the f64 of that f16 (at least 2^16
/// beyond f16's range, which [`f16_bits`] makes Inf). `half`'s `f16::from_f64` rounds through f32
/// (twice) where the CPU has F16C.
#[inline(always)]
fn round_f16(v: f64) -> f64 {
    round_to::<10>(v, pow2(-14), pow2(18))
}

/// 2^e for a normal f64.
const fn pow2(e: i64) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// `v` rounded to nearest, ties to even, to a binary float with `MANTISSA` stored bits whose normal
/// numbers start at `min_normal`, for `v` up to `big` (beyond it, the result is beyond the format's
/// range too). Branch-free, so that loops over it vectorise: adding `C = ±2^(e + 52 − MANTISSA)`,
/// where 2^e is `v`'s binade (or `min_normal` below it), leaves exactly the bits the format keeps,
/// rounded by the FPU's own round-to-nearest-even; subtracting `C` again is exact. NaN and Inf come
/// through (the binade is clamped to `big`, so C stays finite).
#[inline(always)]
fn round_to<const MANTISSA: u32>(v: f64, min_normal: f64, big: f64) -> f64 {
    const SIGN: u64 = 1 << 63;
    let bits = v.to_bits();
    let binade = f64::from_bits(bits & 0x7ff0_0000_0000_0000);
    let binade = if binade < min_normal { min_normal } else { binade };
    let binade = if binade > big { big } else { binade };
    let c = f64::from_bits((binade * (1u64 << (52 - MANTISSA)) as f64).to_bits() | (bits & SIGN));
    // x − x is +0: the sign bit ORed back keeps −0 and the negative values that round to zero.
    f64::from_bits(((v + c) - c).to_bits() | (bits & SIGN))
}

/// The bf16 bits of an f64 that [`round_bf16`] returned.
#[inline(always)]
fn bf16_of_rounded(r: f64) -> u16 {
    ((r as f32).to_bits() >> 16) as u16
}

/// The f16 bits of an f64 that [`round_f16`] returned: an f16 value, or beyond f16's range (Inf),
/// or NaN.
#[inline(always)]
fn f16_bits(r: f64) -> u16 {
    let f = r as f32;
    let x = f.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let abs = x & 0x7fff_ffff;
    // Rebias the exponent from f32's 127 to f16's 15 and keep the top 10 mantissa bits.
    let normal = (abs >> 13).wrapping_sub(112 << 10) as u16;
    // Below 2^-14 (f32 bits 0x3880_0000), a whole number of 2^-24: added to 0.5 (whose unit in the
    // last place is 2^-24), that number is the low bits.
    let subnormal = (f32::from_bits(abs) + 0.5).to_bits().wrapping_sub(0x3f00_0000) as u16;
    let bits = if abs > 0x7f80_0000 {
        0x7e00
    } else if abs >= 0x4780_0000 {
        0x7c00
    } else if abs < 0x3880_0000 {
        subnormal
    } else {
        normal
    };
    sign | bits
}

/// Writes 16-bit values into `out`, as `u16` lanes when `out` is aligned.
#[inline(always)]
fn write_u16(out: &mut [u8], values: impl Iterator<Item = u16>) {
    // SAFETY: every bit pattern is a valid u16; `align_to_mut` only yields the aligned middle.
    match unsafe { out.align_to_mut::<u16>() } {
        ([], mid, []) if cfg!(target_endian = "little") => mid.iter_mut().zip(values).for_each(|(o, v)| *o = v),
        _ => out.chunks_exact_mut(2).zip(values).for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes())),
    }
}

/// Whether the exponent bits (`mask`) of any little-endian value are all ones; branch-free, so
/// that it vectorises.
macro_rules! any_exponent_all_ones {
    ($bytes:expr, $width:literal, $int:ty, $mask:expr) => {
        $bytes
            .chunks_exact($width)
            .fold(false, |bad, c| bad | (<$int>::from_le_bytes(c.try_into().unwrap()) & $mask == $mask))
    };
}

#[inline(always)]
fn any_nonfinite_any(dtype: Dtype, bytes: &[u8]) -> bool {
    match (dtype, as_u16(bytes)) {
        (Dtype::BF16, Some(v)) => v.iter().fold(false, |bad, x| bad | (x & 0x7f80 == 0x7f80)),
        (Dtype::F16, Some(v)) => v.iter().fold(false, |bad, x| bad | (x & 0x7c00 == 0x7c00)),
        (Dtype::BF16, None) => any_exponent_all_ones!(bytes, 2, u16, 0x7f80),
        (Dtype::F16, None) => any_exponent_all_ones!(bytes, 2, u16, 0x7c00),
        (Dtype::F32, _) => any_exponent_all_ones!(bytes, 4, u32, 0x7f80_0000),
        (Dtype::F64, _) => any_exponent_all_ones!(bytes, 8, u64, 0x7ff0_0000_0000_0000),
        _ => false,
    }
}

dispatch! {
    /// Whether float tensor bytes hold a non-finite value (vectorised: no early exit).
    fn any_nonfinite(dtype: Dtype, bytes: &[u8]) -> bool = any_nonfinite_any; levels: avx2
}

/// Index of the first non-finite value of a float tensor's bytes (a vectorised pass says whether
/// there is one before a scalar one finds it).
pub fn first_nonfinite(dtype: Dtype, bytes: &[u8]) -> Option<usize> {
    if !is_float(dtype) || !any_nonfinite(dtype, bytes) {
        return None;
    }
    each_float!(dtype, bytes, |i, v| {
        if !v.is_finite() {
            return Some(i);
        }
    });
    None
}

/// Decodes float tensor bytes into f32 values.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / width(dtype)];
    each_float!(dtype, bytes, |i, v| out[i] = v as f32);
    out
}

/// Decodes float tensor bytes into f64 values.
pub fn to_f64(dtype: Dtype, bytes: &[u8]) -> Vec<f64> {
    let mut out = vec![0f64; bytes.len() / width(dtype)];
    each_float!(dtype, bytes, |i, v| out[i] = v);
    out
}

#[inline(always)]
fn encode_any(dtype: Dtype, values: &[f64], divisor: impl Divisor, out: &mut [u8]) {
    let quotients = values.iter().map(|&v| divisor.divide(v));
    match dtype {
        Dtype::F32 => {
            out.chunks_exact_mut(4).zip(quotients).for_each(|(o, v)| o.copy_from_slice(&(v as f32).to_le_bytes()))
        }
        Dtype::F64 => out.chunks_exact_mut(8).zip(quotients).for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes())),
        Dtype::BF16 => write_u16(out, quotients.map(|v| bf16_of_rounded(round_bf16(v)))),
        Dtype::F16 => write_u16(out, quotients.map(|v| f16_bits(round_f16(v)))),
        other => unreachable!("not a float dtype: {other:?}"),
    }
}

dispatch! {
    /// [`encode_any`] compiled for the CPU.
    fn encode_with(dtype: Dtype, values: &[f64], divisor: impl Divisor, out: &mut [u8]) = encode_any;
    levels: avx512
}

/// Encodes `values` as `dtype` into `out` (which holds exactly `values.len()` elements), each
/// rounded once to the nearest value of `dtype`, ties to even (as IEEE 754 and `as f32` round).
pub fn encode(dtype: Dtype, values: &[f64], out: &mut [u8]) {
    encode_quotients(dtype, values, 1.0, out)
}

/// [`encode`] for `values[i] / divisor`: each quotient is rounded to f64, then once to `dtype`.
pub fn encode_quotients(dtype: Dtype, values: &[f64], divisor: f64, out: &mut [u8]) {
    // x / 1 is x (the sums are never signalling NaNs: widening and multiplying quiet them), and
    // the loop without the division (a vdivpd per 4 elements, the costliest instruction of an
    // average) is a fifth of the averaging time: uniform averages of 2^k checkpoints divide by 1.
    if divisor == 1.0 {
        encode_with(dtype, values, NoDivision, out)
    } else {
        encode_with(dtype, values, divisor, out)
    }
}

/// What [`encode_any`] divides by.
trait Divisor: Copy {
    fn divide(self, v: f64) -> f64;
}

impl Divisor for f64 {
    #[inline(always)]
    fn divide(self, v: f64) -> f64 {
        v / self
    }
}

/// Dividing by one, which the compiler then leaves out.
#[derive(Clone, Copy)]
struct NoDivision;

impl Divisor for NoDivision {
    #[inline(always)]
    fn divide(self, v: f64) -> f64 {
        v
    }
}

/// Converts float tensor bytes from one float dtype to another.
pub fn convert(from: Dtype, to: Dtype, bytes: &[u8]) -> Vec<u8> {
    if from == to {
        return bytes.to_vec();
    }
    let values = to_f64(from, bytes);
    let mut out = vec![0u8; values.len() * width(to)];
    encode(to, &values, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn round_trips_every_float_dtype() {
        let values = [0.0, 1.5, -2.25, 1024.0];
        for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
            let mut bytes = vec![0u8; values.len() * width(dtype)];
            encode(dtype, &values, &mut bytes);
            assert_eq!(to_f64(dtype, &bytes), values, "{dtype:?}");
        }
    }

    #[test]
    fn nonfinite_values_carry_through_and_are_found() {
        let mut bytes = Vec::new();
        for v in [1.0f32, f32::NAN, f32::INFINITY] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let mut acc = vec![0.0; 3];
        accumulate(Dtype::F32, &bytes, 0.5, &mut acc, true);
        assert_eq!(acc[0], 0.5);
        assert!(acc[1].is_nan() && acc[2].is_infinite());
        accumulate(Dtype::F32, &bytes, 0.0, &mut acc, true);
        assert!(acc[1].is_nan() && acc[2].is_nan(), "Inf times a zero weight is NaN: {acc:?}");
        assert_eq!(first_nonfinite(Dtype::F32, &bytes), Some(1));
        assert_eq!(first_nonfinite(Dtype::F32, &bytes[..4]), None);
        for (dtype, bits) in [(Dtype::BF16, 0xff80u16), (Dtype::F16, 0x7c01)] {
            // One byte more in front: the slice from it is unaligned for u16 whatever the buffer's address.
            let mut b = [0u8; 1 + 2 * 41];
            for from in [0, 1] {
                assert_eq!(first_nonfinite(dtype, &b[from..from + 2 * 41]), None);
                b[from + 2 * 37..from + 2 * 38].copy_from_slice(&bits.to_le_bytes());
                assert_eq!(first_nonfinite(dtype, &b[from..from + 2 * 41]), Some(37), "starting at byte {from}");
                b.fill(0);
            }
        }
    }

    #[test]
    fn every_f16_decodes_as_half_does() {
        for h in 0..=u16::MAX {
            let (ours, theirs) = (f16_to_f32(h), f16::from_bits(h).to_f32());
            assert!(ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()), "{h:#06x}");
        }
    }

    /// xorshift64*: enough randomness for sweeping bit patterns, without a dependency.
    fn bits(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn encoded(dtype: Dtype, v: f64) -> u16 {
        let mut out = [0u8; 2];
        encode(dtype, &[v], &mut out);
        u16::from_le_bytes(out)
    }

    #[test]
    fn f32_values_encode_as_half_rounds_them() {
        // `half` rounds f32 to bf16 and f16 correctly (subnormals, overflow to Inf included).
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for i in 0..200_000 {
            let x = match i {
                0 => 0.0,
                1 => -0.0,
                2 => f32::INFINITY,
                3 => f32::NEG_INFINITY,
                4 => 65520.0,
                5 => 65519.996,
                _ => f32::from_bits(bits(&mut state) as u32),
            };
            if x.is_nan() {
                assert!(bf16::from_bits(encoded(Dtype::BF16, x as f64)).is_nan());
                assert!(f16::from_bits(encoded(Dtype::F16, x as f64)).is_nan());
                continue;
            }
            assert_eq!(encoded(Dtype::BF16, x as f64), bf16::from_f32(x).to_bits(), "bf16 of {x:e}");
            assert_eq!(encoded(Dtype::F16, x as f64), f16::from_f32(x).to_bits(), "f16 of {x:e}");
        }
    }

    /// `v` rounded to `mantissa` bits, ties to even, by comparing its distances to the two
    /// neighbours (exact in f64: they are within a factor of two of `v`). Normal range only.
    fn nearest(v: f64, mantissa: u32) -> f64 {
        let drop = 52 - mantissa;
        let toward_zero = v.to_bits() & !((1u64 << drop) - 1);
        let (lo, hi) = (f64::from_bits(toward_zero), f64::from_bits(toward_zero + (1 << drop)));
        let (dl, dh) = ((v - lo).abs(), (hi - v).abs());
        if dl < dh || (dl == dh && toward_zero & (1 << drop) == 0) {
            lo
        } else {
            hi
        }
    }

    #[test]
    fn f64_values_round_once_to_16_bits() {
        // f64 values near halfway points, with bits below f32's precision: rounding through f32
        // (or ignoring those bits, as half's from_f64 does) gets these wrong.
        let above_halfway = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(encoded(Dtype::BF16, above_halfway), bf16::from_f32(1.0078125).to_bits());
        assert_eq!(encoded(Dtype::BF16, -above_halfway), bf16::from_f32(-1.0078125).to_bits());
        assert_eq!(encoded(Dtype::F16, 1.0 + 2f64.powi(-11) + 2f64.powi(-40)), f16::from_f32(1.0009766).to_bits());
        // Subnormal halfway points, with and without a little more; beyond the range; signed zeros.
        let p = |e: i32| 2f64.powi(e);
        for (dtype, half_min, max, inf) in
            [(Dtype::BF16, p(-134), 3.4e38, 0x7f80), (Dtype::F16, p(-25), 65504.0, 0x7c00)]
        {
            assert_eq!(encoded(dtype, half_min), 0, "{dtype:?}: a tie goes to even (zero)");
            assert_eq!(encoded(dtype, half_min * (1.0 + p(-40))), 1, "{dtype:?}");
            assert_eq!(encoded(dtype, -(half_min * (1.0 + p(-40)))), 0x8001, "{dtype:?}");
            assert_eq!(encoded(dtype, 3.0 * half_min), 2, "{dtype:?}: 1.5 units go to even (2)");
            assert_eq!(encoded(dtype, -1e-300), 0x8000, "{dtype:?}: negative values rounding to zero are -0");
            assert_eq!(encoded(dtype, -0.0), 0x8000, "{dtype:?}");
            for big in [max * 1.01, 1e300, f64::MAX, f64::INFINITY] {
                assert_eq!(encoded(dtype, big), inf, "{dtype:?} of {big:e}");
                assert_eq!(encoded(dtype, -big), 0x8000 | inf, "{dtype:?} of {:e}", -big);
            }
            assert!(to_f64(dtype, &encoded(dtype, f64::NAN).to_le_bytes())[0].is_nan());
        }
        let mut state = 0x2545_f491_4f6c_dd1d;
        for _ in 0..200_000 {
            let r = bits(&mut state);
            // A random exponent in each format's normal range, a random mantissa, sometimes one
            // just around a halfway point.
            for (dtype, mantissa, exponents) in [(Dtype::BF16, 7u32, -126..127i32), (Dtype::F16, 10, -14..16)] {
                let e = exponents.start + (r >> 56) as i32 % (exponents.end - exponents.start);
                let mut m = r & 0x000f_ffff_ffff_ffff;
                if r & (1 << 55) != 0 {
                    // keep the rounding bit set, and only a few bits below it (or none)
                    let drop = 52 - mantissa;
                    m = (m & !((1 << drop) - 1)) | (1 << (drop - 1)) | (((r >> 53) & 3) * (r & 1));
                }
                let v = f64::from_bits((((e + 1023) as u64) << 52) | m);
                let v = if r & (1 << 54) != 0 { -v } else { v };
                let want = nearest(v, mantissa);
                let want = if dtype == Dtype::BF16 {
                    bf16::from_f32(want as f32).to_bits()
                } else {
                    f16::from_f32(want as f32).to_bits()
                };
                assert_eq!(encoded(dtype, v), want, "{dtype:?} of {v:e} ({:#x})", v.to_bits());
            }
        }
    }

    #[test]
    fn bf16_decoding_is_exact_widening() {
        let x = bf16::from_f32(3.140625);
        assert_eq!(to_f32(Dtype::BF16, &x.to_le_bytes()), vec![3.140625]);
    }
}
