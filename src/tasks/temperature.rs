//! Temperature scaling (Guo et al. 2017): the one T > 0 minimising the mean negative
//! log-likelihood of softmax(z / T) on held-out logits. The NLL is convex in β = 1/T:
//! f(β) = mean_i [logsumexp(β z_i) − β z_{i,y_i}], f′(β) = mean_i [E_{p_β}(z_i) − z_{i,y_i}],
//! f″(β) = mean_i Var_{p_β}(z_i) ≥ 0 — so a safeguarded Newton iteration on β (bisection inside a
//! bracket where f′ changes sign) finds it to machine precision in a few steps, with no learning
//! rate. There is no minimum when f′ keeps its sign: f′(0) ≥ 0 means no positive T does better
//! than uniform probabilities; f′ < 0 everywhere means every sample is already classified right
//! and the NLL falls without bound as T → 0.

use serde::{Deserialize, Serialize};

use super::classification::{Classification, Metrics};

/// A fitted temperature and what it did on the set it was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    /// The temperature: logits are divided by it.
    pub temperature: f64,
    /// Newton steps taken.
    pub iterations: usize,
    /// Samples it was fitted on.
    pub samples: usize,
    /// Mean NLL on them before (T = 1) and after.
    pub nll_before: f64,
    /// Mean NLL after.
    pub nll_after: f64,
    /// Expected calibration error before and after.
    pub ece_before: f64,
    /// ECE after.
    pub ece_after: f64,
}

/// f′(β) and f″(β) over the rows.
fn derivatives(logits: &[f64], classes: usize, labels: &[usize], beta: f64) -> (f64, f64) {
    let (mut d1, mut d2) = (0.0, 0.0);
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (mut s, mut sz, mut szz) = (0.0, 0.0, 0.0);
        for &z in row {
            let e = (beta * (z - max)).exp();
            s += e;
            sz += e * z;
            szz += e * z * z;
        }
        let mean = sz / s;
        d1 += mean - row[y];
        d2 += (szz / s - mean * mean).max(0.0);
    }
    let n = labels.len() as f64;
    (d1 / n, d2 / n)
}

/// Fits T on `logits` (`[n, classes]`, row-major) against `labels`; an error says why there is no
/// temperature to fit (non-finite logits, one class, no minimum).
pub fn fit(logits: &[f32], classes: usize, labels: &[i64]) -> Result<Fit, String> {
    let n = labels.len();
    if n == 0 || classes < 2 || logits.len() != n * classes {
        return Err(format!("{n} samples of {classes} classes: nothing to fit a temperature on"));
    }
    if let Some(i) = logits.chunks_exact(classes).position(|r| !r.iter().all(|v| v.is_finite())) {
        return Err(format!("the logits of sample {i} are not all finite"));
    }
    let ys: Vec<usize> = labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            usize::try_from(y)
                .ok()
                .filter(|&y| y < classes)
                .ok_or_else(|| format!("label {y} of sample {i} is out of range for {classes} classes"))
        })
        .collect::<Result<_, _>>()?;
    if ys.iter().all(|&y| y == ys[0]) {
        return Err(format!(
            "every one of the {n} samples is of class {}: a temperature fitted on one class says nothing about the \
             others (give a set with several classes)",
            ys[0]
        ));
    }
    let z: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    let d = |beta: f64| derivatives(&z, classes, &ys, beta);
    if d(0.0).0 >= 0.0 {
        return Err("no positive temperature does better than uniform probabilities: the logits do not rank the \
                    labels better than chance on this set"
            .into());
    }
    // f′(β) → mean (max_c z − z_y) as β → ∞: zero when every label holds its row's largest logit.
    let limit = z
        .chunks_exact(classes)
        .zip(&ys)
        .map(|(r, &y)| r.iter().copied().fold(f64::NEG_INFINITY, f64::max) - r[y])
        .sum::<f64>();
    if limit <= 0.0 {
        return Err(format!(
            "every one of the {n} samples is classified right, so the NLL keeps falling as T → 0 and there is no \
             temperature to fit (give a larger or harder calibration set)"
        ));
    }
    // A bracket [lo, hi] with f′(lo) < 0 < f′(hi).
    let (mut lo, mut hi) = (0.0, 1.0);
    while d(hi).0 < 0.0 {
        lo = hi;
        hi *= 2.0;
        if hi > 1e8 {
            return Err(format!(
                "the NLL keeps falling as T → 0 (below {:e}): every sample is classified with margin, so there is \
                 no finite temperature to fit (give a larger or harder calibration set)",
                1.0 / lo
            ));
        }
    }
    let mut beta = 1.0f64.clamp(lo, hi);
    let mut iterations = 0;
    loop {
        iterations += 1;
        let (g, h) = d(beta);
        if g == 0.0 {
            break;
        }
        if g < 0.0 {
            lo = beta;
        } else {
            hi = beta;
        }
        let newton = beta - g / h;
        let next = if h > 0.0 && newton > lo && newton < hi { newton } else { 0.5 * (lo + hi) };
        let done = (next - beta).abs() <= 1e-15 * beta.max(1e-300) || hi - lo <= 1e-15 * hi;
        beta = next;
        if done {
            break;
        }
        if iterations >= 200 {
            return Err(format!("the fit did not converge in 200 steps (T between {} and {})", 1.0 / hi, 1.0 / lo));
        }
    }
    let temperature = 1.0 / beta;
    let (before, after) = (figures(logits, classes, labels, 1.0), figures(logits, classes, labels, temperature));
    Ok(Fit {
        temperature,
        iterations,
        samples: n,
        nll_before: before.loss,
        nll_after: after.loss,
        ece_before: before.calibration.ece.unwrap_or(f64::NAN),
        ece_after: after.calibration.ece.unwrap_or(f64::NAN),
    })
}

/// The classification figures of `logits / t`.
fn figures(logits: &[f32], classes: usize, labels: &[i64], t: f64) -> Metrics {
    let scaled: Vec<f32> = logits.iter().map(|&v| (v as f64 / t) as f32).collect();
    let mut state = Classification { k: 1, score: None }.state();
    // The labels were checked above.
    let _ = state.add(&scaled, classes, labels, std::path::Path::new(""));
    state.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nll(logits: &[f32], classes: usize, labels: &[i64], t: f64) -> f64 {
        figures(logits, classes, labels, t).loss
    }

    #[test]
    fn the_fit_is_the_minimum_of_the_nll() {
        // Overconfident logits: right 70% of the time with a margin of 4.
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        for i in 0..100 {
            let y = i % 3;
            let predicted = if i % 10 < 7 { y } else { (y + 1) % 3 };
            let mut row = [0f32; 3];
            row[predicted] = 4.0 + (i % 7) as f32 * 0.1;
            logits.extend(row);
            labels.push(y as i64);
        }
        let fit = fit(&logits, 3, &labels).unwrap();
        assert!(fit.temperature > 1.0, "{fit:?}");
        let best = nll(&logits, 3, &labels, fit.temperature);
        for t in [fit.temperature * 0.999, fit.temperature * 1.001] {
            assert!(nll(&logits, 3, &labels, t) > best);
        }
        assert!(fit.nll_after < fit.nll_before && fit.iterations < 30);
    }

    #[test]
    fn no_minimum_one_class_and_chance_are_refused() {
        let separable = [3.0f32, 0.0, 0.0, 3.0];
        assert!(fit(&separable, 2, &[0, 1]).unwrap_err().contains("T → 0"));
        assert!(fit(&[1.0f32, 0.0, 2.0, 0.0], 2, &[0, 0]).unwrap_err().contains("one class"));
        assert!(fit(&[0.0f32, 3.0, 3.0, 0.0], 2, &[0, 1]).unwrap_err().contains("chance"));
        assert!(fit(&[f32::NAN, 0.0, 1.0, 0.0], 2, &[0, 1]).unwrap_err().contains("not all finite"));
    }
}
