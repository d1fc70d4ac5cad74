//! Uniform averages of bf16, f16 and f32 checkpoints (and averages with whole-number weights) are
//! the exact mean rounded once to nearest, ties to even: what `torch.stack(xs).double().mean(0)`
//! holds, rounded to the checkpoint's dtype. The expected values come from an exact oracle in
//! integer arithmetic, not from swa's own kernels or from `half`'s f64 conversions (which round
//! twice, or ignore low bits). The inputs are made so that most means are exact ties.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use proptest::prelude::*;
use swa::average::{average, AverageOptions, Weighting};
use swa::checkpoint::{write_tensors, Checkpoint, Dtype, TensorSpec};

/// Significant bits of a format (the stored ones and the implicit one).
fn precision(d: Dtype) -> u32 {
    match d {
        Dtype::BF16 => 8,
        Dtype::F16 => 11,
        _ => 24,
    }
}

/// The bits of a value of `d` (bf16, f16, f32), which it must hold exactly.
fn to_bits(d: Dtype, v: f64) -> u32 {
    let bits = roughly(d, v);
    assert_eq!(from_bits(d, bits), v, "{v} is not a {d:?} value");
    bits
}

/// The bits of the value of `d` nearest to `v`, give or take a unit (`half` rounds f64 through f32,
/// or ignores low bits).
fn roughly(d: Dtype, v: f64) -> u32 {
    match d {
        Dtype::BF16 => u32::from(bf16::from_f64(v).to_bits()),
        Dtype::F16 => u32::from(f16::from_f64(v).to_bits()),
        _ => (v as f32).to_bits(),
    }
}

fn from_bits(d: Dtype, bits: u32) -> f64 {
    match d {
        Dtype::BF16 => bf16::from_bits(bits as u16).to_f64(),
        Dtype::F16 => f16::from_bits(bits as u16).to_f64(),
        _ => f64::from(f32::from_bits(bits)),
    }
}

/// The sign bit and the largest finite magnitude's bits.
fn limits(d: Dtype) -> (u32, u32) {
    match d {
        Dtype::BF16 => (0x8000, 0x7f7f),
        Dtype::F16 => (0x8000, 0x7bff),
        _ => (0x8000_0000, 0x7f7f_ffff),
    }
}

/// A finite non-zero f64 as `m · 2^e` with a whole `m`.
fn dyadic(v: f64) -> (i128, i32) {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = (bits & 0xf_ffff_ffff_ffff) as i128;
    let (m, e) = if exp == 0 { (mantissa, -1074) } else { (mantissa | 1 << 52, exp - 1075) };
    (if v < 0.0 { -m } else { m }, e)
}

/// The bits of the value of `d` nearest to `Σ w·x / Σ w`, ties to even, in exact integer
/// arithmetic: the candidates around a rough answer are compared by their distances to the mean,
/// all in units of the finest power of two involved. The inputs' exponents must span less than
/// about 50 binades (i128).
fn nearest_mean(d: Dtype, xs: &[f64], ws: &[u64]) -> u32 {
    let terms: Vec<((i128, i32), i128)> =
        xs.iter().zip(ws).filter(|(x, _)| **x != 0.0).map(|(&x, &w)| (dyadic(x), i128::from(w))).collect();
    let den: i128 = ws.iter().map(|&w| i128::from(w)).sum();
    let (sign_bit, max_finite) = limits(d);
    let approx = xs.iter().zip(ws).map(|(x, &w)| x * w as f64).sum::<f64>() / den as f64;
    let guess = roughly(d, approx.abs()).min(max_finite);
    let candidates: Vec<u32> = (guess.saturating_sub(1)..=(guess + 1).min(max_finite)).collect();
    let unit = terms
        .iter()
        .map(|t| t.0 .1)
        .chain(candidates.iter().filter(|&&c| c != 0).map(|&c| dyadic(from_bits(d, c)).1))
        .min()
        .unwrap_or(0);
    // The weighted sum in units of 2^unit; its sign is the mean's.
    let num: i128 = terms.iter().map(|((m, e), w)| m * (1i128 << (e - unit)) * w).sum();
    if num == 0 {
        return 0;
    }
    let distance = |bits: u32| -> i128 {
        let c = from_bits(d, bits);
        let c = if c == 0.0 { 0 } else { dyadic(c).0 * (1i128 << (dyadic(c).1 - unit)) };
        (num.abs() - den * c).abs()
    };
    let mut pick = candidates[0];
    for &c in &candidates[1..] {
        let (dc, dp) = (distance(c), distance(pick));
        if dc < dp || (dc == dp && c % 2 == 0) {
            pick = c;
        }
    }
    if num < 0 {
        pick | sign_bit
    } else {
        pick
    }
}

/// Writes one checkpoint per input: a tensor `w` of `d` holding `values[k]`.
fn save(dir: &Path, d: Dtype, values: &[Vec<f64>]) -> Vec<PathBuf> {
    values
        .iter()
        .enumerate()
        .map(|(k, vals)| {
            let path = dir.join(format!("epoch_{k:03}.safetensors"));
            let bytes: Vec<u8> = vals
                .iter()
                .flat_map(|&v| {
                    let bits = to_bits(d, v);
                    if d == Dtype::F32 {
                        bits.to_le_bytes().to_vec()
                    } else {
                        (bits as u16).to_le_bytes().to_vec()
                    }
                })
                .collect();
            let spec = TensorSpec { name: "w".into(), dtype: d, shape: vec![vals.len()] };
            write_tensors(&path, &[(spec, bytes)], &BTreeMap::new()).unwrap();
            path
        })
        .collect()
}

fn averaged(inputs: Vec<PathBuf>, out: &Path, weighting: Weighting) -> Vec<u32> {
    average(&AverageOptions {
        checkpoints: inputs,
        output: out.to_path_buf(),
        weighting,
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let c = Checkpoint::open(out).unwrap();
    let t = c.get("w").unwrap();
    match t.dtype {
        Dtype::F32 => c.bytes(t).chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        _ => c.bytes(t).chunks_exact(2).map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]))).collect(),
    }
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Per input, per element: `n` values of `d` (bf16, f16, f32) whose mean is, for most elements, exactly halfway
/// between two neighbours of `d` (the others are plain random values). With `2^p` = 2^precision,
/// every whole number up to 2^p is a value of `d` and so is every even one up to 2^(p+1), whose
/// unit is 2: an odd mean between 2^p and 2^(p+1) is a tie. Each element is then scaled by its own
/// power of two and sign.
fn tie_inputs(d: Dtype, n: usize, elements: usize, rng: &mut Rng) -> (Vec<Vec<f64>>, usize) {
    let big = 1u64 << precision(d);
    let allowed = |x: i64| x >= 0 && (x as u64 <= big || (x as u64 <= 2 * big && x % 2 == 0));
    let pick = |rng: &mut Rng| loop {
        let x = (big / 2 + rng.below(3 * big / 2 + 1)) as i64;
        if allowed(x) {
            return x;
        }
    };
    let (scales, lowest) = match d {
        Dtype::BF16 => (200, -100),
        Dtype::F16 => (23, -20),
        _ => (100, -60),
    };
    let mut values = vec![Vec::with_capacity(elements); n];
    let mut ties = 0;
    for e in 0..elements {
        let xs: Vec<i64> = if e % 4 == 3 {
            (0..n).map(|_| pick(rng)).collect()
        } else {
            loop {
                let mean = (big + 1 + 2 * rng.below(big / 2 - 1)) as i64;
                let mut xs: Vec<i64> = (0..n - 1).map(|_| pick(rng)).collect();
                let last = n as i64 * mean - xs.iter().sum::<i64>();
                if allowed(last) {
                    xs.push(last);
                    ties += 1;
                    break xs;
                }
            }
        };
        let scale = 2f64.powi(lowest + rng.below(scales) as i32) * if rng.below(2) == 0 { 1.0 } else { -1.0 };
        for (k, x) in xs.into_iter().enumerate() {
            values[k].push(x as f64 * scale);
        }
    }
    (values, ties)
}

fn expected(d: Dtype, values: &[Vec<f64>], weights: &[u64]) -> Vec<u32> {
    (0..values[0].len()).map(|e| nearest_mean(d, &values.iter().map(|v| v[e]).collect::<Vec<_>>(), weights)).collect()
}

fn assert_same_bits(d: Dtype, what: &str, got: &[u32], want: &[u32], values: &[Vec<f64>]) {
    let wrong: Vec<usize> = (0..want.len()).filter(|&e| got[e] != want[e]).collect();
    if let Some(&e) = wrong.first() {
        let inputs: Vec<f64> = values.iter().map(|v| v[e]).collect();
        panic!(
            "{d:?} {what}: {} of {} elements differ from the exact mean rounded to nearest-even; element {e}: inputs \
             {inputs:?}, got {} ({:#x}), expected {} ({:#x})",
            wrong.len(),
            want.len(),
            from_bits(d, got[e]),
            got[e],
            from_bits(d, want[e]),
            want[e]
        );
    }
}

#[test]
fn oracle_rounds_ties_to_even() {
    // 1 + 2^-8 is halfway between the bf16 values 1 and 1 + 2^-7: even is 1.
    assert_eq!(nearest_mean(Dtype::BF16, &[1.0, 1.0 + 2f64.powi(-7)], &[1, 1]), to_bits(Dtype::BF16, 1.0));
    // 1 + 3·2^-8 between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
    let (a, b) = (1.0 + 2f64.powi(-7), 1.0 + 2f64.powi(-6));
    assert_eq!(nearest_mean(Dtype::BF16, &[a, b], &[1, 1]), to_bits(Dtype::BF16, b));
    // Three values whose mean is 257, halfway between 256 and 258: 256 (even mantissa).
    assert_eq!(nearest_mean(Dtype::BF16, &[256.0, 256.0, 259.0], &[1, 1, 1]), to_bits(Dtype::BF16, 256.0));
    assert_eq!(nearest_mean(Dtype::BF16, &[-256.0, -256.0, -259.0], &[1, 1, 1]), to_bits(Dtype::BF16, -256.0));
    // Slightly above the tie: up.
    assert_eq!(nearest_mean(Dtype::BF16, &[256.0, 256.0, 259.5], &[1, 1, 1]), to_bits(Dtype::BF16, 258.0));
}

#[test]
fn uniform_averages_of_ties_are_exact() {
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    for d in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        for n in [2, 3, 5, 6, 7, 8] {
            let dir = tempfile::tempdir().unwrap();
            let (values, ties) = tie_inputs(d, n, 3000, &mut rng);
            assert!(ties >= 2000, "{ties} ties");
            let inputs = save(dir.path(), d, &values);
            let got = averaged(inputs, &dir.path().join("avg.safetensors"), Weighting::Uniform);
            assert_same_bits(d, &format!("uniform average of {n}"), &got, &expected(d, &values, &vec![1; n]), &values);
        }
    }
}

#[test]
fn whole_number_weights_are_exact_too() {
    let mut rng = Rng(0x0bad_cafe_0000_0007);
    for d in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        for weights in [vec![1u64, 2, 1], vec![3, 1, 1, 1, 2], vec![5, 0, 7]] {
            let dir = tempfile::tempdir().unwrap();
            let (values, _) = tie_inputs(d, weights.len(), 2000, &mut rng);
            let inputs = save(dir.path(), d, &values);
            let w = Weighting::Explicit(weights.iter().map(|&w| w as f64).collect());
            let got = averaged(inputs, &dir.path().join("avg.safetensors"), w);
            assert_same_bits(d, &format!("weights {weights:?}"), &got, &expected(d, &values, &weights), &values);
        }
    }
}

#[test]
fn ema_averages_are_within_half_a_unit_and_the_rounding_of_their_weights() {
    let mut rng = Rng(0x00e3_a000_1111_2222);
    for d in [Dtype::BF16, Dtype::F16] {
        let dir = tempfile::tempdir().unwrap();
        let (values, _) = tie_inputs(d, 5, 2000, &mut rng);
        let inputs = save(dir.path(), d, &values);
        let got = averaged(inputs, &dir.path().join("avg.safetensors"), Weighting::Ema(0.9));
        let w = swa::average::normalise(&swa::average::relative_weights(5, &Weighting::Ema(0.9)).unwrap());
        for (e, &bits) in got.iter().enumerate() {
            let mean: f64 = values.iter().zip(&w).map(|(v, w)| v[e] * w).sum();
            let out = from_bits(d, bits);
            let (sign, magnitude) = (bits & 0x8000, bits & 0x7fff);
            for neighbour in [sign | magnitude.saturating_sub(1), sign | (magnitude + 1)] {
                let other = from_bits(d, neighbour);
                assert!(
                    (out - mean).abs() <= (other - mean).abs() * (1.0 + 1e-9) + mean.abs() * 1e-12,
                    "{d:?} element {e}: {out} for a mean of {mean}, but {other} is nearer"
                );
            }
        }
    }
}

/// Random 16-bit values (subnormals included) whose exponents lie within a window of 40 binades
/// somewhere in the format's range: every sum is exact in f64 there (the documented condition).
fn window(d: Dtype) -> impl Strategy<Value = (Dtype, Vec<Vec<u32>>)> {
    let (mantissa, exponents) = if d == Dtype::BF16 { (7u32, 0u16..=214) } else { (10, 0..=30) };
    let span = if d == Dtype::BF16 { 40u16 } else { 30 };
    (2usize..9, 1usize..40, exponents).prop_flat_map(move |(n, len, low)| {
        let high = (low + span).min(if d == Dtype::BF16 { 254 } else { 30 });
        let value = (any::<bool>(), low..=high, 0u16..(1 << mantissa))
            .prop_map(move |(neg, e, m)| u32::from((u16::from(neg) << 15) | (e << mantissa) | m));
        (Just(d), prop::collection::vec(prop::collection::vec(value, len), n))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn uniform_averages_of_random_16bit_values_are_exact(
        (d, bits) in prop_oneof![window(Dtype::BF16), window(Dtype::F16)]
    ) {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<Vec<f64>> = bits.iter().map(|v| v.iter().map(|&b| from_bits(d, b)).collect()).collect();
        let inputs = save(dir.path(), d, &values);
        let got = averaged(inputs, &dir.path().join("avg.safetensors"), Weighting::Uniform);
        let want = expected(d, &values, &vec![1; values.len()]);
        for e in 0..want.len() {
            prop_assert_eq!(got[e], want[e], "{:?} element {} of {:?}", d, e, values.iter().map(|v| v[e]).collect::<Vec<_>>());
        }
    }
}
