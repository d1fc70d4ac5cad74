//! Element types: which are weights, and conversion between the stored bytes and f32/f64.
//!
//! Stored bytes are little-endian and may be unaligned (mmap'd safetensors data starts wherever the
//! header ends), so conversions read them through `from_le_bytes`, except where the hot averaging
//! loops can view aligned bf16 data as `u16` directly.

use half::f16;
use safetensors::Dtype;

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

/// One branch-free pass: add `weight ×` each value to the f64 accumulator, and OR together
/// whether any exponent is all ones (Inf or NaN). The loops vectorise.
macro_rules! fused {
    ($values:expr, $weight:expr, $acc:expr, $float:ty, |$v:ident| $decode:expr) => {{
        let mut bad = false;
        for (a, $v) in $acc.iter_mut().zip($values) {
            let x: f32 = $decode;
            bad |= x.to_bits() & 0x7f80_0000 == 0x7f80_0000;
            *a += $weight * x as $float;
        }
        bad
    }};
}

/// Calls `$avx2` (the same loops compiled for AVX2) when the CPU has it, else `$any`.
macro_rules! dispatch {
    ($any:ident, $avx2:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        let result = if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { $avx2($($arg),*) }
        } else {
            $any($($arg),*)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let result = $any($($arg),*);
        result
    }};
}

/// The fused loop for 16-bit floats (bf16, f16), accumulating in `$float`.
macro_rules! fused_16bit {
    ($dtype:expr, $bytes:expr, $weight:expr, $acc:expr, $float:ty) => {
        match ($dtype, as_u16($bytes)) {
            (Dtype::BF16, Some(v)) => fused!(v, $weight, $acc, $float, |b| f32::from_bits((*b as u32) << 16)),
            (Dtype::BF16, None) => fused!($bytes.chunks_exact(2), $weight, $acc, $float, |c| f32::from_bits(
                (u16::from_le_bytes([c[0], c[1]]) as u32) << 16
            )),
            (Dtype::F16, _) => {
                fused!($bytes.chunks_exact(2), $weight, $acc, $float, |c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            }
            (other, _) => unreachable!("not a 16-bit float dtype: {other:?}"),
        }
    };
}

/// The bytes as little-endian u16 values without copying, when aligned (as buffers from the
/// allocator are).
fn as_u16(bytes: &[u8]) -> Option<&[u16]> {
    // SAFETY: every bit pattern is a valid u16; `align_to` only yields the aligned middle part.
    let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
    (cfg!(target_endian = "little") && pre.is_empty() && post.is_empty()).then_some(mid)
}

#[inline(always)]
fn accumulate_any(dtype: Dtype, bytes: &[u8], weight: f64, acc: &mut [f64]) -> bool {
    match dtype {
        Dtype::BF16 | Dtype::F16 => fused_16bit!(dtype, bytes, weight, acc, f64),
        Dtype::F32 => {
            fused!(bytes.chunks_exact(4), weight, acc, f64, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        }
        Dtype::F64 => {
            let mut bad = false;
            for (a, c) in acc.iter_mut().zip(bytes.chunks_exact(8)) {
                let x = f64::from_le_bytes(c.try_into().unwrap());
                bad |= !x.is_finite();
                *a += weight * x;
            }
            bad
        }
        other => unreachable!("not a float dtype: {other:?}"),
    }
}

/// The same loops compiled for AVX2 (no FMA: every element sees the same multiply and add, so
/// results are identical with and without it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn accumulate_avx2(dtype: Dtype, bytes: &[u8], weight: f64, acc: &mut [f64]) -> bool {
    accumulate_any(dtype, bytes, weight, acc)
}

/// `acc[i] += weight * x[i]` for the float tensor bytes `bytes`; returns the index of the first
/// non-finite input value, if any.
pub fn accumulate(dtype: Dtype, bytes: &[u8], weight: f64, acc: &mut [f64]) -> Option<usize> {
    let bad = dispatch!(accumulate_any, accumulate_avx2, dtype, bytes, weight, acc);
    bad.then(|| first_nonfinite(dtype, bytes)).flatten()
}

#[inline(always)]
fn accumulate_narrow_any(dtype: Dtype, bytes: &[u8], weight: f32, acc: &mut [f32]) -> bool {
    fused_16bit!(dtype, bytes, weight, acc, f32)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn accumulate_narrow_avx2(dtype: Dtype, bytes: &[u8], weight: f32, acc: &mut [f32]) -> bool {
    accumulate_narrow_any(dtype, bytes, weight, acc)
}

/// [`accumulate`] for 16-bit floats (bf16, f16) into an f32 accumulator: their 8 or 11 bits of
/// mantissa are far below f32's 24, and the narrower accumulator halves the memory traffic.
pub fn accumulate_narrow(dtype: Dtype, bytes: &[u8], weight: f32, acc: &mut [f32]) -> Option<usize> {
    let bad = dispatch!(accumulate_narrow_any, accumulate_narrow_avx2, dtype, bytes, weight, acc);
    bad.then(|| first_nonfinite(dtype, bytes)).flatten()
}

/// True for the dtypes averaged with an f32 accumulator ([`accumulate_narrow`]).
pub fn is_narrow(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::BF16 | Dtype::F16)
}

#[inline(always)]
fn encode_f32_any(dtype: Dtype, values: &[f32], out: &mut [u8]) {
    match dtype {
        Dtype::F32 => out.chunks_exact_mut(4).zip(values).for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes())),
        Dtype::F64 => {
            out.chunks_exact_mut(8).zip(values).for_each(|(o, v)| o.copy_from_slice(&(*v as f64).to_le_bytes()))
        }
        Dtype::F16 => {
            out.chunks_exact_mut(2).zip(values).for_each(|(o, v)| o.copy_from_slice(&f16::from_f32(*v).to_le_bytes()))
        }
        Dtype::BF16 => write_bf16(out, values.iter().copied()),
        other => unreachable!("not a float dtype: {other:?}"),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn encode_f32_avx2(dtype: Dtype, values: &[f32], out: &mut [u8]) {
    encode_f32_any(dtype, values, out)
}

/// Encodes f32 values as `dtype` into `out` (which holds exactly `values.len()` elements).
pub fn encode_f32(dtype: Dtype, values: &[f32], out: &mut [u8]) {
    dispatch!(encode_f32_any, encode_f32_avx2, dtype, values, out)
}

/// Writes `values` rounded to bf16 into `out`, as `u16` lanes when `out` is aligned.
#[inline(always)]
fn write_bf16(out: &mut [u8], values: impl Iterator<Item = f32>) {
    // SAFETY: every bit pattern is a valid u16; `align_to_mut` only yields the aligned middle.
    match unsafe { out.align_to_mut::<u16>() } {
        ([], mid, []) if cfg!(target_endian = "little") => {
            mid.iter_mut().zip(values).for_each(|(o, v)| *o = bf16_bits(v))
        }
        _ => out.chunks_exact_mut(2).zip(values).for_each(|(o, v)| o.copy_from_slice(&bf16_bits(v).to_le_bytes())),
    }
}

/// Rounds an f32 to the nearest bf16 (ties to even), keeping NaN a NaN; branch-free so it vectorises.
fn bf16_bits(f: f32) -> u16 {
    let x = f.to_bits();
    let nan = (x & 0x7fff_ffff) > 0x7f80_0000;
    let rounded = (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16;
    if nan {
        ((x >> 16) | 0x40) as u16
    } else {
        rounded
    }
}

/// Index of the first non-finite value of a float tensor's bytes.
pub fn first_nonfinite(dtype: Dtype, bytes: &[u8]) -> Option<usize> {
    if !is_float(dtype) {
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

/// Encodes `values` as `dtype` into `out` (which holds exactly `values.len()` elements).
pub fn encode(dtype: Dtype, values: &[f64], out: &mut [u8]) {
    match dtype {
        Dtype::F32 => {
            out.chunks_exact_mut(4).zip(values).for_each(|(o, v)| o.copy_from_slice(&(*v as f32).to_le_bytes()))
        }
        Dtype::F64 => out.chunks_exact_mut(8).zip(values).for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes())),
        Dtype::BF16 => write_bf16(out, values.iter().map(|&v| v as f32)),
        Dtype::F16 => {
            out.chunks_exact_mut(2).zip(values).for_each(|(o, v)| o.copy_from_slice(&f16::from_f64(*v).to_le_bytes()))
        }
        other => unreachable!("not a float dtype: {other:?}"),
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
    fn accumulate_reports_first_nonfinite() {
        let mut bytes = Vec::new();
        for v in [1.0f32, f32::NAN, f32::INFINITY] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let mut acc = vec![0.0; 3];
        assert_eq!(accumulate(Dtype::F32, &bytes, 0.5, &mut acc), Some(1));
        assert_eq!(acc[0], 0.5);
        assert_eq!(first_nonfinite(Dtype::F32, &bytes[..4]), None);
    }

    #[test]
    fn bf16_rounding_matches_half() {
        for x in [1.0f32, 1.003_906_2, 1.005_859_4, -3.3e-5, 65504.0, f32::INFINITY, f32::NAN, 1.0e38, 3.0e38] {
            let ours = bf16_bits(x);
            let theirs = bf16::from_f32(x).to_bits();
            assert!(ours == theirs || (x.is_nan() && bf16::from_bits(ours).is_nan()), "{x}: {ours:#x} vs {theirs:#x}");
        }
    }

    #[test]
    fn bf16_decoding_is_exact_widening() {
        let x = bf16::from_f32(3.140625);
        assert_eq!(to_f32(Dtype::BF16, &x.to_le_bytes()), vec![3.140625]);
    }
}
