//! A part `I/N` of a job split over machines: of a pass's or an evaluation's batches (contiguous
//! ranges of whole batches) or of an average's output shards (shard `s` goes to part `s mod N`).
//! A leaf: the stages take a part, [`crate::parts`] merges what the parts wrote.

use std::num::NonZeroUsize;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Setting};

/// Part `index` of `count` (0-based, as Slurm's `SLURM_ARRAY_TASK_ID` and Kubernetes'
/// `JOB_COMPLETION_INDEX` number them); written `I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Part {
    /// Which part, `0..count`.
    pub index: usize,
    /// How many parts.
    pub count: NonZeroUsize,
}

impl Part {
    /// The whole: part 0 of 1.
    pub const WHOLE: Part = Part { index: 0, count: NonZeroUsize::MIN };

    /// Part `index` of `count`; `None` unless `index < count`.
    pub fn new(index: usize, count: usize) -> Option<Part> {
        let count = NonZeroUsize::new(count)?;
        (index < count.get()).then_some(Part { index, count })
    }

    /// The contiguous range of `0..total` items that this part gets: part `i` of `n` gets
    /// `[⌊i·total/n⌋, ⌊(i+1)·total/n⌋)`, so sizes differ by one at most and the parts together are
    /// `0..total` in order. (Contiguous ranges keep each part's reads sequential; the partial last
    /// batch simply goes to the last part.)
    pub fn range(self, total: usize) -> Range<usize> {
        let n = self.count.get() as u128;
        let at = |i: usize| (i as u128 * total as u128 / n) as usize;
        at(self.index)..at(self.index + 1)
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Part {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not I/N (part I of N, counting from 0: 0/4, 1/4, 2/4, 3/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if n == 0 {
            return Err(format!("`{s}`: the number of parts must be at least 1"));
        }
        Part::new(i, n).ok_or_else(|| format!("`{s}`: parts of {n} are numbered 0 to {}", n - 1))
    }
}

impl Serialize for Part {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Fails with `setting` named unless `part` gets at least one of `total` items (`what`: "batches",
/// "shards").
pub fn check_nonempty(part: Part, total: usize, what: &str, setting: Setting) -> Result<Range<usize>> {
    let range = part.range(total);
    if range.is_empty() {
        return Err(Error::setting(
            setting,
            format!(
                "{part} gets none of the {total} {what}: split into at most {total} parts{}",
                if what == "batches" { " (or use a smaller batch)" } else { "" }
            ),
        ));
    }
    Ok(range)
}

/// What `part` of a pass over a set of samples runs, in batches: its batches and its samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassRange {
    /// The part's batches, numbered in the whole pass.
    pub batches: Range<usize>,
    /// The part's samples (the last batch of the pass may be partial).
    pub samples: Range<usize>,
}

/// The batches and samples `part` of a pass over `len` samples runs, `batch` at a time; with `len`
/// unknown (a source that does not know its length until it is read) only the whole pass, which
/// runs until the samples end. A part that gets no batch is an error naming `setting`.
pub fn pass_range(len: Option<usize>, batch: usize, part: Part, setting: Setting) -> Result<PassRange> {
    match len {
        Some(n) => {
            let batches = check_nonempty(part, n.div_ceil(batch), "batches", setting)?;
            Ok(PassRange { samples: batches.start * batch..(batches.end * batch).min(n), batches })
        }
        None if part == Part::WHOLE => Ok(PassRange { batches: 0..usize::MAX, samples: 0..usize::MAX }),
        None => Err(Error::setting(
            setting,
            format!("{part} splits the samples by their count, and these samples do not say how many they are"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse_and_tile_the_range() {
        assert_eq!("2/4".parse::<Part>().unwrap(), Part::new(2, 4).unwrap());
        for bad in ["4/4", "1/0", "x/2", "1", "-1/2", "1/2/3"] {
            assert!(bad.parse::<Part>().is_err(), "{bad}");
        }
        for total in [0, 1, 7, 8, 100] {
            for n in 1..=9 {
                let ranges: Vec<_> = (0..n).map(|i| Part::new(i, n).unwrap().range(total)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[n - 1].end, total);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len().abs_diff(w[1].len()) <= 1);
                }
            }
        }
    }

    #[test]
    fn a_pass_of_unknown_length_runs_whole_and_a_known_one_splits_by_batches() {
        let r = pass_range(Some(10), 4, Part::new(1, 2).unwrap(), Setting::Shard).unwrap();
        assert_eq!((r.batches, r.samples), (1..3, 4..10));
        let whole = pass_range(None, 4, Part::WHOLE, Setting::Shard).unwrap();
        assert_eq!(whole.samples.start, 0);
        let err = pass_range(None, 4, Part::new(0, 2).unwrap(), Setting::Shard).unwrap_err().to_string();
        assert!(err.contains("do not say how many they are"), "{err}");
    }
}
