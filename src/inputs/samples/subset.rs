//! The samples of a pass in another order, or fewer of them: `max_samples` drawn uniformly at
//! random from a source that knows its length (not its first N, which in an image folder are the
//! first classes only), and the batch order shuffled, as a training loader's is, both from a seed.
//!
//! The draw is reproducible anywhere: SplitMix64 seeded with the seed, then a Fisher–Yates
//! shuffle of `0..n` (for `i` from 0, swap `i` with `i + next() % (n - i)`); the subset is the
//! first `max_samples` of the shuffle, read in ascending order unless the order is shuffled too.
//! The same seed and length give the same subset and order on every machine, so every part of a
//! pass split with `--shard` reads its share of the same batches. In Python:
//!
//! ```python
//! def order(n, take, seed, shuffle):
//!     m = (1 << 64) - 1
//!     s = seed & m
//!     def next():
//!         nonlocal s
//!         s = (s + 0x9E3779B97F4A7C15) & m
//!         z = s
//!         z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
//!         z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
//!         return z ^ (z >> 31)
//!     p = list(range(n))
//!     for i in range(min(take, n - 1)):
//!         j = i + next() % (n - i)
//!         p[i], p[j] = p[j], p[i]
//!     return p[:take] if shuffle else sorted(p[:take])
//! ```

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::{Batches, SampleSource};
use crate::batch::{Batch, Tensor};
use crate::error::{Error, Result};

/// How the samples of a pass were chosen and ordered, where not all of them in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sampling {
    /// Samples read.
    pub drawn: usize,
    /// Samples in the set.
    pub of: usize,
    /// The seed of the draw and of the order.
    pub seed: u64,
    /// Whether the batches are in shuffled order (else ascending).
    pub shuffled: bool,
}

impl Sampling {
    /// For a set of `n` samples, `take` of them (all where `None`), shuffled or not: `None` where
    /// that is every sample in order.
    pub fn new(n: usize, take: Option<usize>, seed: u64, shuffled: bool) -> Option<Sampling> {
        let drawn = take.map_or(n, |t| t.min(n));
        (drawn < n || shuffled).then_some(Sampling { drawn, of: n, seed, shuffled })
    }

    /// The indices read, in the order read. The shuffle is kept sparse (the positions it moved),
    /// so drawing a few samples of a huge set costs memory for the few.
    pub fn order(&self) -> Result<Vec<usize>> {
        let n = self.of;
        let mut state = self.seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        // Fisher–Yates over `0..n`, each position holding itself until a swap moves it.
        let mut moved: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        let mut p: Vec<usize> = Vec::new();
        // A set whose size is a lie (a damaged file's row count) must not abort the process.
        p.try_reserve_exact(self.drawn).map_err(|_| {
            Error::usage(format!("cannot hold the order of {} samples in memory (the set has {n})", self.drawn))
        })?;
        for i in 0..self.drawn.min(n) {
            let j = if i + 1 < n { i + (next() % (n - i) as u64) as usize } else { i };
            let (at_i, at_j) = (moved.get(&i).copied().unwrap_or(i), moved.get(&j).copied().unwrap_or(j));
            moved.insert(j, at_i);
            moved.remove(&i);
            p.push(at_j);
        }
        if !self.shuffled {
            p.sort_unstable();
        }
        Ok(p)
    }

    /// What summaries say: `128 of 480 samples drawn at random (seed 0)`, `in shuffled order
    /// (seed 0)`.
    pub fn describe(&self) -> String {
        match (self.drawn < self.of, self.shuffled) {
            (true, true) => {
                format!("{} of {} samples drawn at random, in shuffled order (seed {})", self.drawn, self.of, self.seed)
            }
            (true, false) => format!("{} of {} samples drawn at random (seed {})", self.drawn, self.of, self.seed),
            _ => format!("in shuffled order (seed {})", self.seed),
        }
    }
}

/// A source's samples at `order` (indices into it), read in that order.
pub struct Subset {
    inner: Box<dyn SampleSource>,
    sampling: Sampling,
    order: Vec<usize>,
    targets: Option<Tensor>,
}

impl Subset {
    /// `inner`'s samples as `sampling` chooses and orders them.
    pub fn new(inner: Box<dyn SampleSource>, sampling: Sampling) -> Result<Self> {
        let order = sampling.order()?;
        let targets = inner.targets().map(|t| t.rows(&order));
        Ok(Subset { inner, sampling, order, targets })
    }
}

impl SampleSource for Subset {
    fn len(&self) -> Option<usize> {
        Some(self.order.len())
    }

    fn sample_shapes(&self) -> Vec<Vec<usize>> {
        self.inner.sample_shapes()
    }

    /// Batches of the subset's positions `range`: each reads its samples from the source at
    /// once (in any order), and is numbered in the subset's positions.
    fn batches(&self, range: Range<usize>, batch: usize) -> Result<Batches<'_>> {
        let end = range.end.min(self.order.len());
        Ok(Box::new((range.start..end).step_by(batch.max(1)).map(move |from| {
            let to = (from + batch).min(end);
            let chunk = &self.order[from..to];
            let mut b = self.inner.batch_at(chunk)?;
            // The source numbers rows by its own indices; the pass numbers them by position.
            b.indices = b.indices.iter().map(|i| from + chunk.iter().position(|c| c == i).unwrap_or(0)).collect();
            b.span = from..to;
            Ok(b)
        })))
    }

    fn batch_at(&self, indices: &[usize]) -> Result<Batch> {
        let mapped: Vec<usize> = indices.iter().map(|&i| self.order[i]).collect();
        let mut b = self.inner.batch_at(&mapped)?;
        b.indices = b.indices.iter().map(|i| indices[mapped.iter().position(|m| m == i).unwrap_or(0)]).collect();
        Ok(b)
    }

    fn targets(&self) -> Option<&Tensor> {
        self.targets.as_ref()
    }

    fn has_targets(&self) -> bool {
        self.inner.has_targets()
    }

    fn classes(&self) -> Option<&[String]> {
        self.inner.classes()
    }

    fn why_no_targets(&self) -> Option<String> {
        self.inner.why_no_targets()
    }

    fn preprocessing(&self) -> Option<String> {
        let how = self.sampling.describe();
        Some(match self.inner.preprocessing() {
            Some(p) => format!("{p}; {how}"),
            None => how,
        })
    }

    fn skipped(&self) -> Vec<String> {
        self.inner.skipped()
    }

    fn own_batches(&self) -> bool {
        self.inner.own_batches()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draw_is_uniform_reproducible_and_the_python_recipes() {
        let s = Sampling::new(10, Some(4), 0, false).unwrap();
        let a = s.order().unwrap();
        assert_eq!(a, s.order().unwrap());
        assert_eq!(a.len(), 4);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        // The values the Python recipe in the module's documentation gives.
        assert_eq!(a, [1, 5, 7, 9]);
        assert_eq!(Sampling::new(10, None, 0, true).unwrap().order().unwrap(), [5, 1, 9, 7, 0, 4, 3, 2, 6, 8]);
        assert_eq!(Sampling::new(10, Some(10), 0, false), None);
        assert_eq!(Sampling::new(10, Some(20), 3, false), None);
        // Uniform: over many seeds every index is drawn about as often.
        let mut seen = [0usize; 20];
        for seed in 0..4000 {
            for i in Sampling::new(20, Some(5), seed, false).unwrap().order().unwrap() {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&c| (900..1100).contains(&c)), "{seen:?}");
    }
}
