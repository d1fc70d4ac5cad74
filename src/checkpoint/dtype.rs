//! Element types: which are weights, and conversion between the stored bytes and f32/f64.
//!
//! Stored bytes are little-endian and may be unaligned (mmap'd safetensors data starts wherever the
//! header ends), so every conversion reads them through `from_le_bytes`.

use half::{bf16, f16};
use safetensors::Dtype;

/// Bytes per element (0 for the sub-byte types, which are never averaged).
pub fn width(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
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

/// `acc[i] += weight * x[i]` for the float tensor bytes `bytes`; returns the index of the first
/// non-finite input value, if any.
pub fn accumulate(dtype: Dtype, bytes: &[u8], weight: f64, acc: &mut [f64]) -> Option<usize> {
    let mut bad = None;
    each_float!(dtype, bytes, |i, v| {
        if !v.is_finite() && bad.is_none() {
            bad = Some(i);
        }
        acc[i] += weight * v;
    });
    bad
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
        Dtype::BF16 => {
            out.chunks_exact_mut(2).zip(values).for_each(|(o, v)| o.copy_from_slice(&bf16::from_f64(*v).to_le_bytes()))
        }
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
    fn bf16_decoding_is_exact_widening() {
        let x = bf16::from_f32(3.140625);
        assert_eq!(to_f32(Dtype::BF16, &x.to_le_bytes()), vec![3.140625]);
    }
}
