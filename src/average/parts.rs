//! An output split over machines (`part`): which shards a part writes, and whether every part's
//! shards are written, with this average's tensors and metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::sharded::{self, Shard};
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
pub(super) fn shards_written<'a>(
    shards: impl IntoIterator<Item = &'a Shard>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<PathBuf>> {
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

/// For a part: what it would publish beside must be this average's — the other parts' shards that
/// are already written, and the index if there is one — or the part would leave a set that mixes
/// two averages (an old index serving new shards beside old ones). Checked before the part
/// averages anything, and again just before it publishes, so that an error changes nothing.
pub(super) fn others_are_this_average(
    shards: &[Shard],
    own: &[bool],
    index: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    shards_written(shards.iter().zip(own).filter(|(_, &mine)| !mine).map(|(s, _)| s), metadata)?;
    let planned = sharded::index_bytes(shards, metadata);
    // Read only a file of the planned length (whatever else is there differs, however large).
    let existing = std::fs::metadata(index).and_then(|m| match m.len() == planned.len() as u64 && m.is_file() {
        true => std::fs::read(index),
        false => Ok(Vec::new()),
    });
    match existing {
        Ok(bytes) if bytes != planned => Err(Error::format(
            index,
            "is the index of another average (other shards, tensors or inputs): this part's shards would \
             mix with that average's; remove it or write the parts under another name",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(index, e)),
    }
}
