//! Work split over machines: the partial results a part `I/N` ([`Part`]) of a pass or an evaluation
//! writes, and the merges that check the parts belong together and combine them exactly.
//!
//! - [`stats`]: per-layer sufficient statistics of a recalibration pass (safetensors, f64), merged
//!   with Chan's parallel formula (`precise`) or by summing (`torch`).
//! - [`eval`]: evaluation counts and f64 loss sums (JSON), merged by adding.
//!
//! Partials are merged in shard order whatever order they are given in, so a merge is
//! reproducible to the bit; [`Identity`] (content hashes of the model and weights files) says
//! which model a partial belongs to.

pub mod eval;
pub mod stats;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::part::Part;

/// The SHA-256 of `files`' bytes, read in order as one stream (each file's length first, so that
/// moving bytes from one file to the next changes the hash), as lowercase hex. Files are streamed
/// in 1 MiB reads: hashing costs one sequential read of each file.
pub fn sha256_files<P: AsRef<Path>>(files: &[P]) -> Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in files {
        let path = path.as_ref();
        let mut f = crate::fs::open_regular(path)?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        hasher.update(len.to_le_bytes());
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Which model a partial result belongs to: the model and weights as given, and the SHA-256 of
/// their files' bytes (an ONNX model with external data: the `.onnx` and its data files; a
/// sharded checkpoint: its index and shards). Partials merge only when the hashes and the state
/// dict key agree; the paths are for messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The ONNX model as given.
    pub model: PathBuf,
    /// SHA-256 of the model's files.
    pub model_sha256: String,
    /// The weights bound into it, if any.
    pub weights: Option<PathBuf>,
    /// SHA-256 of the weights' files (empty without weights).
    pub weights_sha256: String,
    /// The state dict read in a `torch.save` file.
    pub key: Option<String>,
}

impl Identity {
    /// Hashes the files of `model` and of `weights` (as [`crate::inputs::open_checkpoint`]
    /// opened them).
    pub fn of(
        model: &crate::onnx::Model,
        weights: Option<&crate::checkpoint::Checkpoint>,
        key: Option<&str>,
    ) -> Result<Identity> {
        Ok(Identity {
            model: model.path.clone(),
            model_sha256: sha256_files(model.files())?,
            weights: weights.map(|w| w.path().to_path_buf()),
            weights_sha256: weights.map(|w| sha256_files(&w.files())).transpose()?.unwrap_or_default(),
            key: key.map(str::to_owned),
        })
    }

    /// Differences from `other` in words (empty when they are one model with one set of weights).
    pub fn differences(&self, other: &Identity) -> Vec<String> {
        let mut d = Vec::new();
        if self.model_sha256 != other.model_sha256 {
            d.push(format!(
                "the model files differ ({} has SHA-256 {}…, {} has {}…)",
                self.model.display(),
                &self.model_sha256[..12.min(self.model_sha256.len())],
                other.model.display(),
                &other.model_sha256[..12.min(other.model_sha256.len())]
            ));
        }
        if self.weights_sha256 != other.weights_sha256 {
            let name = |w: &Option<PathBuf>| w.as_ref().map_or("no weights".to_string(), |p| p.display().to_string());
            d.push(format!("the weights differ ({} vs {})", name(&self.weights), name(&other.weights)));
        }
        if self.key != other.key {
            d.push(format!("the state dict keys differ ({:?} vs {:?})", self.key, other.key));
        }
        d
    }
}

/// What two partials disagree on, collected field by field, for one error naming both files.
#[derive(Debug)]
pub(crate) struct Disagreement(Vec<String>);

impl Disagreement {
    /// Starts with the differences of the two identities.
    pub(crate) fn new(a: &Identity, b: &Identity) -> Self {
        Disagreement(a.differences(b))
    }

    /// Notes `what` (plural: "batch sizes") when `a` and `b` differ.
    pub(crate) fn field(&mut self, what: &str, a: impl std::fmt::Display, b: impl std::fmt::Display) {
        let (a, b) = (a.to_string(), b.to_string());
        if a != b {
            self.0.push(format!("the {what} differ ({a} vs {b})"));
        }
    }

    /// Fails, naming both files, when anything differs: they are not parts of one `whole`.
    pub(crate) fn check(self, a: &Path, b: &Path, whole: &str) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(Error::Mismatch(format!(
            "{} and {} are not parts of one {whole}: {}",
            a.display(),
            b.display(),
            self.0.join("; ")
        )))
    }
}

/// Checks that `parts` (one per partial file, in the order of `files`) are every part of one
/// split exactly once; returns the order that sorts them by part index.
pub fn complete_order(files: &[PathBuf], parts: &[Part]) -> Result<Vec<usize>> {
    let Some(first) = parts.first() else {
        return Err(Error::usage("no partial results to merge"));
    };
    let n = first.count.get();
    // By index, never sized by the count a file claims (a part `0/18446744073709551615`).
    let mut seen: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
    for (k, p) in parts.iter().enumerate() {
        if p.count.get() != n {
            return Err(Error::Mismatch(format!(
                "{} is part {p} but {} is part {first}: the partials come from splits into different numbers of parts",
                files[k].display(),
                files[0].display()
            )));
        }
        if let Some(earlier) = seen.insert(p.index, k) {
            return Err(Error::Mismatch(format!(
                "part {p} is given twice: {} and {}",
                files[earlier].display(),
                files[k].display()
            )));
        }
    }
    if seen.len() != n {
        // The first few missing parts, found among the given ones' gaps.
        const SHOWN: usize = 5;
        let mut missing = Vec::new();
        let mut next = 0;
        for &i in seen.keys().chain(std::iter::once(&n)) {
            missing.extend((next..i).take(SHOWN - missing.len().min(SHOWN)).map(|m| format!("{m}/{n}")));
            next = i.saturating_add(1);
        }
        let more = n - seen.len() - missing.len();
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        return Err(Error::Mismatch(format!(
            "the partials are incomplete: part(s) {}{more} of {n} missing (given {})",
            missing.join(", "),
            parts.len()
        )));
    }
    Ok(seen.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_or_repeated_parts_are_named() {
        let files: Vec<PathBuf> = (0..3).map(|i| PathBuf::from(format!("p{i}"))).collect();
        let p = |i, n| Part::new(i, n).unwrap();
        assert_eq!(complete_order(&files, &[p(2, 3), p(0, 3), p(1, 3)]).unwrap(), [1, 2, 0]);
        let twice = complete_order(&files, &[p(0, 3), p(1, 3), p(1, 3)]).unwrap_err().to_string();
        assert!(twice.contains("part 1/3 is given twice: p1 and p2"), "{twice}");
        let missing = complete_order(&files[..2], &[p(0, 3), p(2, 3)]).unwrap_err().to_string();
        assert!(missing.contains("part(s) 1/3 of 3 missing"), "{missing}");
        let mixed = complete_order(&files[..2], &[p(0, 2), p(1, 3)]).unwrap_err().to_string();
        assert!(mixed.contains("different numbers of parts"), "{mixed}");
    }
}
