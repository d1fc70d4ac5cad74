//! An output split over machines (`part`): which shards a part writes, and whether every part's
//! shards are written, with this average's tensors and metadata.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::checkpoint::sharded::Shard;
use crate::checkpoint::{Checkpoint, Dtype};
use crate::error::{Error, Result, Setting};
use crate::part::Part;

/// Which of `shards` this process writes: all, or those of `part` (shard `s` goes to part
/// `s mod N`, so that the plan, which depends only on the tensors and the shard size, decides
/// every part's shards alike); a part needs a sharded output and at least one shard.
pub(super) fn own_shards(shards: &[Shard], sharded: bool, part: Option<Part>) -> Result<Vec<bool>> {
    let Some(part) = part else { return Ok(vec![true; shards.len()]) };
    if !sharded {
        return Err(Error::setting(
            Setting::Part,
            "splits a sharded output: name the output NAME.safetensors.index.json or give a shard size",
        ));
    }
    let own: Vec<bool> = (0..shards.len()).map(|s| s % part.count.get() == part.index).collect();
    if !own.contains(&true) {
        return Err(Error::setting(
            Setting::Part,
            format!(
                "{part} gets none of the output's {} shards (shard s goes to part s mod {}): split into at most {} \
                 parts, or give a smaller shard size",
                shards.len(),
                part.count,
                shards.len()
            ),
        ));
    }
    Ok(own)
}

/// Whether every shard of a parted output is written, each with the tensors (names, dtypes,
/// shapes, in order) and the metadata (inputs, weights) this run plans: `Ok(false)` while some are
/// missing; an error for one that holds anything else.
pub(super) fn shards_written(shards: &[Shard], metadata: &BTreeMap<String, String>) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    for s in shards {
        if std::fs::symlink_metadata(&s.path).is_err() {
            missing.push(s.path.clone());
            continue;
        }
        let ck = Checkpoint::open(&s.path)?;
        let planned: Vec<(&str, Dtype, &[usize])> =
            s.specs.iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice())).collect();
        let found: Vec<(&str, Dtype, &[usize])> =
            ck.tensors().iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice())).collect();
        if planned != found {
            return Err(Error::format(
                &s.path,
                "does not hold the tensors this average plans for it (names, dtypes, shapes): it was written by \
                 another run",
            ));
        }
        if ck.metadata() != metadata {
            return Err(Error::format(
                &s.path,
                "was written for other inputs or weights (its metadata differs from this average's): it is another \
                 run's shard",
            ));
        }
    }
    Ok(missing)
}
