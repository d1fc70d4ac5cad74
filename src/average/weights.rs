//! How the selected checkpoints are weighted, and the weights the averaging kernel uses.

use crate::error::{Error, Result, Setting};

/// How the selected checkpoints are weighted.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Weighting {
    /// Equal weights (SWA).
    #[default]
    Uniform,
    /// Given weights, one per selected checkpoint, normalised to sum to one.
    Explicit(Vec<f64>),
    /// Exponential moving average over the checkpoints in order with this decay: the newest weighs most.
    Ema(f64),
}

/// Relative weights for `count` checkpoints in order (not normalised: the average divides by their sum).
pub fn relative_weights(count: usize, weighting: &Weighting) -> Result<Vec<f64>> {
    match weighting {
        Weighting::Uniform => Ok(vec![1.0; count]),
        Weighting::Explicit(w) => {
            if w.len() != count {
                return Err(Error::setting(
                    Setting::Weights,
                    format!("has {} values for {count} selected checkpoints", w.len()),
                ));
            }
            if let Some(bad) = w.iter().find(|v| !v.is_finite() || **v < 0.0) {
                return Err(Error::setting(Setting::Weights, format!("must be finite and non-negative, got {bad}")));
            }
            if w.iter().sum::<f64>() <= 0.0 {
                return Err(Error::setting(Setting::Weights, "sum to zero"));
            }
            Ok(w.clone())
        }
        Weighting::Ema(decay) => {
            if !(*decay > 0.0 && *decay < 1.0) {
                return Err(Error::setting(Setting::Ema, format!("decay must be in (0, 1), got {decay}")));
            }
            // θ ← d·θ + (1−d)·θ_new, starting from the oldest.
            Ok((0..count)
                .map(|i| {
                    if i == 0 {
                        decay.powi(count as i32 - 1)
                    } else {
                        (1.0 - decay) * decay.powi((count - 1 - i) as i32)
                    }
                })
                .collect())
        }
    }
}

/// Relative weights (finite, non-negative, not all zero) scaled to sum to one. They are divided by
/// the largest first, so weights near `f64::MAX` do not sum to infinity (which would make every
/// weight zero) and tiny ones do not lose precision.
pub fn normalise(relative: &[f64]) -> Vec<f64> {
    let max = relative.iter().copied().fold(0.0, f64::max);
    let scaled: Vec<f64> = relative.iter().map(|w| w / max).collect();
    let total: f64 = scaled.iter().sum();
    scaled.iter().map(|w| w / total).collect()
}

/// The weights the averaging kernel multiplies the inputs by, and what it divides their sum by.
///
/// They are the relative weights scaled by a power of two (exact, unlike dividing by their sum),
/// so that they sum to at most one: no partial sum of weighted inputs exceeds the largest input.
/// The output is `Σ scaled[i]·x[i] / divisor`, each input added in f64 in checkpoint order and
/// divided once. With equal weights, and with whole-number weights (a resumed average's `n, 1, 1…`,
/// `--weights 1,2,1`), every product and partial sum is exact in f64 while `Σ w·|x|` of an element
/// stays below 2^53 units in the last place of its finest input (always, for up to 8192 f16
/// inputs); the quotient, rounded once to the output dtype, is then the exact weighted mean rounded
/// to nearest, ties to even (docs/formats.md says when that holds, and what holds otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelWeights {
    /// One per input, in order: the relative weight times a power of two.
    pub scaled: Vec<f64>,
    /// Their sum (at most one).
    pub divisor: f64,
}

impl KernelWeights {
    /// Scales relative weights (finite, non-negative, not all zero).
    pub fn of(relative: &[f64]) -> Self {
        let max = relative.iter().copied().fold(0.0, f64::max);
        // Divide by the power of two at or below the largest weight (the smallest positive f64 when
        // that is subnormal)…
        let exponent = f64::from_bits(max.to_bits() & 0x7ff0_0000_0000_0000);
        let first = if exponent > 0.0 { exponent } else { f64::from_bits(1) };
        let once: Vec<f64> = relative.iter().map(|w| w / first).collect();
        // … then by the power of two at or above their sum (at least one now, at most 2n).
        let total: f64 = once.iter().sum();
        let second = f64::from_bits((total.to_bits() + 0x000f_ffff_ffff_ffff) & 0x7ff0_0000_0000_0000);
        let scaled: Vec<f64> = once.iter().map(|w| w / second).collect();
        KernelWeights { divisor: scaled.iter().sum(), scaled }
    }
}

pub(super) fn weighting_name(weighting: &Weighting) -> String {
    match weighting {
        Weighting::Uniform => "uniform".to_string(),
        Weighting::Explicit(_) => "explicit".to_string(),
        Weighting::Ema(d) => format!("ema({d})"),
    }
}
