//! How batch statistics become running statistics: PreciseBN's pooled statistics (Chan's
//! parallel formula in f64) or `update_bn`'s mean over batches, each an [`Accumulator`] whose
//! state ([`Sufficient`]) a part of a pass writes and parts merge.

use serde::Serialize;

/// How batch statistics become running statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsMode {
    /// Count-weighted pooled statistics over all values, merged in f64 (PreciseBN).
    #[default]
    Precise,
    /// `torch.optim.swa_utils.update_bn`'s estimate: the mean over batches of the batch mean and of
    /// the unbiased batch variance. The pass runs only BatchNorm in training mode; `update_bn`
    /// runs the whole model in train mode, so where dropout or stochastic depth comes before a
    /// BatchNorm its statistics are those of a thinned network and differ from these.
    Torch,
}

impl std::str::FromStr for StatsMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "precise" => Ok(StatsMode::Precise),
            "torch" => Ok(StatsMode::Torch),
            _ => Err(format!("unknown statistics mode `{s}`: use precise or torch")),
        }
    }
}

impl std::fmt::Display for StatsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StatsMode::Precise => "precise",
            StatsMode::Torch => "torch",
        })
    }
}

/// Which variance a BatchNorm layer keeps as its running variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variance {
    /// PyTorch's (and ONNX exports of its models'): the unbiased variance, divided by n − 1.
    #[default]
    Unbiased,
    /// TensorFlow's and Keras': the biased variance, divided by n (`tf.nn.moments`).
    Biased,
}

impl Variance {
    /// The variance a checkpoint's BatchNorm layers keep: biased for TensorFlow's variables.
    pub fn of(checkpoint: &crate::checkpoint::Checkpoint) -> Variance {
        if checkpoint.is_tensorflow() {
            Variance::Biased
        } else {
            Variance::Unbiased
        }
    }
}

/// Aggregates one layer's batch statistics.
pub trait Accumulator: Send {
    /// Adds a batch: values per channel, per-channel mean and biased variance.
    fn add(&mut self, count: f64, mean: &[f32], var: &[f32]);
    /// The running mean and the unbiased running variance.
    fn finish(&self) -> (Vec<f64>, Vec<f64>);
    /// What has been accumulated, as a part of a pass writes it and parts merge.
    fn sufficient(&self) -> Sufficient;
}

/// Pooled statistics merged with Chan's parallel formula, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Precise {
    /// Values per channel so far.
    pub n: f64,
    /// Per-channel mean.
    pub mean: Vec<f64>,
    /// Per-channel sum of squared deviations from the mean.
    pub m2: Vec<f64>,
}

impl Precise {
    /// For `channels` channels.
    pub fn new(channels: usize) -> Self {
        Precise { n: 0.0, mean: vec![0.0; channels], m2: vec![0.0; channels] }
    }

    /// Chan et al.'s parallel update with a group of `count` values per channel whose mean and
    /// M2 channel `c` has are `mean(c)` and `m2(c)`: n = na + nb, δ = mb − ma,
    /// mean = ma + δ·nb/n, M2 = M2a + M2b + δ²·na·nb/n. An empty group changes nothing.
    fn chan(&mut self, count: f64, mean: impl Fn(usize) -> f64, m2: impl Fn(usize) -> f64) {
        if count == 0.0 {
            return;
        }
        let total = self.n + count;
        for c in 0..self.mean.len() {
            let delta = mean(c) - self.mean[c];
            self.mean[c] += delta * count / total;
            self.m2[c] += m2(c) + delta * delta * self.n * count / total;
        }
        self.n = total;
    }

    /// Merges another part's statistics (same channels) into these.
    pub fn merge(&mut self, other: &Precise) {
        self.chan(other.n, |c| other.mean[c], |c| other.m2[c]);
    }
}

impl Accumulator for Precise {
    fn add(&mut self, count: f64, mean: &[f32], var: &[f32]) {
        self.chan(count, |c| mean[c] as f64, |c| var[c] as f64 * count);
    }

    fn finish(&self) -> (Vec<f64>, Vec<f64>) {
        let denom = (self.n - 1.0).max(1.0);
        (self.mean.clone(), self.m2.iter().map(|m| m / denom).collect())
    }

    fn sufficient(&self) -> Sufficient {
        Sufficient::Precise(self.clone())
    }
}

/// `update_bn`'s cumulative average over batches (momentum=None).
#[derive(Debug, Clone, PartialEq)]
pub struct TorchCompat {
    /// Batches so far.
    pub batches: usize,
    /// Per-channel sum of the batch means.
    pub mean: Vec<f64>,
    /// Per-channel sum of the unbiased batch variances.
    pub var: Vec<f64>,
}

impl TorchCompat {
    /// For `channels` channels.
    pub fn new(channels: usize) -> Self {
        TorchCompat { batches: 0, mean: vec![0.0; channels], var: vec![0.0; channels] }
    }

    /// Merges another part's sums (same channels) into these.
    pub fn merge(&mut self, other: &TorchCompat) {
        for c in 0..self.mean.len() {
            self.mean[c] += other.mean[c];
            self.var[c] += other.var[c];
        }
        self.batches += other.batches;
    }
}

impl Accumulator for TorchCompat {
    fn add(&mut self, count: f64, mean: &[f32], var: &[f32]) {
        let unbias = count / (count - 1.0);
        for c in 0..self.mean.len() {
            self.mean[c] += mean[c] as f64;
            self.var[c] += var[c] as f64 * unbias;
        }
        self.batches += 1;
    }

    fn finish(&self) -> (Vec<f64>, Vec<f64>) {
        let k = self.batches.max(1) as f64;
        (self.mean.iter().map(|m| m / k).collect(), self.var.iter().map(|v| v / k).collect())
    }

    fn sufficient(&self) -> Sufficient {
        Sufficient::Torch(self.clone())
    }
}

/// One layer's accumulated statistics in either mode: what a part of a pass writes
/// ([`crate::parts::stats`]) and what the parts' merge adds up.
#[derive(Debug, Clone, PartialEq)]
pub enum Sufficient {
    /// `precise`: count, mean, M2.
    Precise(Precise),
    /// `torch`: batches, sums of batch means and of unbiased batch variances.
    Torch(TorchCompat),
}

impl Sufficient {
    /// The statistics mode.
    pub fn mode(&self) -> StatsMode {
        match self {
            Sufficient::Precise(_) => StatsMode::Precise,
            Sufficient::Torch(_) => StatsMode::Torch,
        }
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        match self {
            Sufficient::Precise(p) => p.mean.len(),
            Sufficient::Torch(t) => t.mean.len(),
        }
    }

    /// Merges `other` (same mode and channels, which the caller checks) into this.
    pub fn merge(&mut self, other: &Sufficient) {
        match (self, other) {
            (Sufficient::Precise(a), Sufficient::Precise(b)) => a.merge(b),
            (Sufficient::Torch(a), Sufficient::Torch(b)) => a.merge(b),
            _ => panic!("statistics of different modes are never merged"),
        }
    }

    /// The running mean and the unbiased running variance.
    pub fn finish(&self) -> (Vec<f64>, Vec<f64>) {
        self.finish_as(Variance::Unbiased)
    }

    /// The running mean and the running variance `variance` says (pooled statistics only: the
    /// biased variance of `update_bn`'s mean over batches is refused before a pass).
    pub fn finish_as(&self, variance: Variance) -> (Vec<f64>, Vec<f64>) {
        match (self, variance) {
            (Sufficient::Precise(p), Variance::Biased) => {
                (p.mean.clone(), p.m2.iter().map(|m| m / p.n.max(1.0)).collect())
            }
            (Sufficient::Precise(p), Variance::Unbiased) => p.finish(),
            (Sufficient::Torch(t), _) => t.finish(),
        }
    }
}

/// An accumulator for `mode`.
pub fn accumulator(mode: StatsMode, channels: usize) -> Box<dyn Accumulator> {
    match mode {
        StatsMode::Precise => Box::new(Precise::new(channels)),
        StatsMode::Torch => Box::new(TorchCompat::new(channels)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches() -> Vec<Vec<f32>> {
        vec![vec![1.0, 2.0, 3.0, 4.0], vec![10.0, 12.0], vec![-1.0, 0.5, 2.0]]
    }

    fn stats(b: &[f32]) -> (f64, f32, f32) {
        let n = b.len() as f32;
        let m = b.iter().sum::<f32>() / n;
        (n as f64, m, b.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / n)
    }

    #[test]
    fn precise_equals_pooled_statistics() {
        let mut acc = Precise::new(1);
        for b in batches() {
            let (n, m, v) = stats(&b);
            acc.add(n, &[m], &[v]);
        }
        let all: Vec<f64> = batches().concat().iter().map(|&x| x as f64).collect();
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        let var = all.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (all.len() - 1) as f64;
        let (m, v) = acc.finish();
        assert!((m[0] - mean).abs() < 1e-6 && (v[0] - var).abs() < 1e-5, "{m:?} {v:?} vs {mean} {var}");
    }

    #[test]
    fn torch_mode_averages_batches_equally_with_unbiased_variance() {
        let mut acc = TorchCompat::new(1);
        let mut means = Vec::new();
        let mut vars = Vec::new();
        for b in batches() {
            let (n, m, v) = stats(&b);
            acc.add(n, &[m], &[v]);
            means.push(m as f64);
            vars.push(v as f64 * n / (n - 1.0));
        }
        let (m, v) = acc.finish();
        assert!((m[0] - means.iter().sum::<f64>() / 3.0).abs() < 1e-9);
        assert!((v[0] - vars.iter().sum::<f64>() / 3.0).abs() < 1e-9);
    }
}
