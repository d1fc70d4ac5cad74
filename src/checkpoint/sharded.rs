//! Hugging Face sharded checkpoints: `NAME.safetensors.index.json` maps each tensor to one of the
//! shard files beside it. Reading an index, planning the shards of an output, and writing its
//! index live together here so that what is written is what is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::format::{Claim, Format, Probe};
use super::{Checkpoint, TensorSpec};
use crate::error::{Error, Result};
use crate::fs::StagedFile;

/// Hugging Face sharded checkpoints: an index, or a directory holding one.
pub struct Sharded;

impl Format for Sharded {
    fn name(&self) -> &'static str {
        "sharded safetensors"
    }

    fn suffixes(&self) -> &'static [&'static str] {
        &[".safetensors.index.json"]
    }

    /// Any `*.index.json`, and directories (the one holding an index is read; any other is
    /// an error that says so).
    fn claim(&self, probe: &Probe) -> Option<Claim> {
        if probe.is_dir {
            Some(Claim::Name)
        } else {
            probe.named(&[".index.json"]).then_some(Claim::Certain)
        }
    }

    fn open(&self, path: &Path, _key: Option<&str>) -> Result<Checkpoint> {
        Checkpoint::open(path)
    }

    /// The index and its shards.
    fn files(&self, path: &Path) -> Result<Vec<PathBuf>> {
        let index = match path.is_dir() {
            true => {
                find_index(path)?.ok_or_else(|| Error::format(path, "directory holds no *.safetensors.index.json"))?
            }
            false => path.to_path_buf(),
        };
        let parsed = parse_index(&index, &crate::fs::read_regular(&index)?)?;
        let shards: Vec<PathBuf> = parsed.shards().into_iter().map(Path::to_path_buf).collect();
        Ok(std::iter::once(index).chain(shards).collect())
    }

    fn checkpoint_dir(&self, dir: &Path) -> Result<Option<PathBuf>> {
        find_index(dir)
    }

    fn model_in(&self, dir: &Path) -> Result<Option<PathBuf>> {
        find_index(dir)
    }
}

/// The default shard size when an output is named `*.index.json` without a size (5 GiB, as
/// `save_pretrained` writes).
pub const DEFAULT_SHARD_SIZE: u64 = 5 << 30;

/// A parsed `*.safetensors.index.json`: which shard holds each tensor, every shard's path checked
/// to lie in the index's directory (as far as can be told without the file system).
#[derive(Debug)]
pub struct ShardIndex {
    /// Tensor name → the shard's path (the index's directory joined with the name it gives).
    pub weight_map: BTreeMap<String, PathBuf>,
    /// The index's `metadata`, as strings.
    pub metadata: BTreeMap<String, String>,
}

impl ShardIndex {
    /// The shard files, sorted, each once.
    pub fn shards(&self) -> Vec<&Path> {
        let mut shards: Vec<&Path> = self.weight_map.values().map(PathBuf::as_path).collect();
        shards.sort();
        shards.dedup();
        shards
    }
}

/// Parses the index `json` read from `index_path`. A shard must be named by a relative path
/// inside the index's directory (`x.safetensors`, `sub/x.safetensors`): an absolute path or
/// one with `..` is refused before anything is opened.
pub fn parse_index(index_path: &Path, json: &[u8]) -> Result<ShardIndex> {
    #[derive(Deserialize)]
    struct Index {
        #[serde(default)]
        metadata: Option<serde_json::Value>,
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_slice(json)
        .map_err(|e| Error::format(index_path, format!("not a sharded-checkpoint index: {e}")))?;
    if index.weight_map.is_empty() {
        return Err(Error::format(index_path, "its weight_map lists no tensors"));
    }
    let dir = index_path.parent().unwrap_or(Path::new(""));
    let mut weight_map = BTreeMap::new();
    for (name, shard) in index.weight_map {
        if let Some(why) = not_inside(Path::new(&shard)) {
            return Err(Error::tensor(
                index_path,
                name,
                format!(
                    "its shard `{shard}` is outside the index's directory ({why}): a shard must be a file name or \
                     relative path inside that directory, without `..`"
                ),
            ));
        }
        weight_map.insert(name, dir.join(shard));
    }
    let mut metadata = BTreeMap::new();
    if let Some(serde_json::Value::Object(m)) = index.metadata {
        for (k, v) in m {
            metadata.insert(k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
        }
    }
    Ok(ShardIndex { weight_map, metadata })
}

/// Why `shard` (as an index names it) may lead outside the index's directory, if it may.
fn not_inside(shard: &Path) -> Option<&'static str> {
    use std::path::Component;
    if shard.as_os_str().is_empty() {
        return Some("an empty name");
    }
    for c in shard.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Some("it has a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Some("it is an absolute path"),
        }
    }
    None
}

/// Opens the sharded checkpoint whose index is `index_path`: every shard is mapped, and each
/// tensor must be in the shard the index names.
pub fn open(index_path: &Path) -> Result<Checkpoint> {
    let json = crate::fs::read_regular(index_path)?;
    let index = parse_index(index_path, &json)?;
    let dir = crate::fs::parent_dir(index_path);
    let canonical_dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let mut ck = Checkpoint::empty(index_path);
    for shard in index.shards() {
        // A symbolic link inside the directory may still lead out of it.
        let resolved = shard.canonicalize().map_err(|e| Error::io(shard, e))?;
        if !resolved.starts_with(&canonical_dir) {
            return Err(Error::format(
                index_path,
                format!(
                    "its shard {} is outside the index's directory (it resolves to {})",
                    shard.display(),
                    resolved.display()
                ),
            ));
        }
        let meta = ck.add_safetensors(shard)?;
        if ck.metadata().is_empty() {
            *ck.metadata_mut() = meta;
        }
    }
    for (name, shard) in &index.weight_map {
        let Some(actual) = ck.file_of_name(name) else {
            return Err(Error::tensor(
                index_path,
                name,
                format!("listed in the index but missing from {}", shard.display()),
            ));
        };
        if actual != shard {
            return Err(Error::tensor(
                index_path,
                name,
                format!("index says {}, found in {}", shard.display(), actual.display()),
            ));
        }
    }
    for (k, v) in index.metadata {
        ck.metadata_mut().entry(k).or_insert(v);
    }
    Ok(ck)
}

/// The `*.safetensors.index.json` in `dir`, if it holds exactly one.
pub fn find_index(dir: &Path) -> Result<Option<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".safetensors.index.json") {
            found.push(entry.path());
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::format(dir, "holds more than one *.safetensors.index.json")),
    }
}

/// One output file and the tensors it holds, in order.
#[derive(Debug, Clone)]
pub struct Shard {
    /// The file.
    pub path: PathBuf,
    /// Its tensors.
    pub specs: Vec<TensorSpec>,
}

/// The files of an output: one safetensors file, or shards and their index.
#[derive(Debug, Clone)]
pub struct OutputPlan {
    /// The files holding tensors, in tensor order.
    pub shards: Vec<Shard>,
    /// The index, for a sharded output.
    pub index: Option<PathBuf>,
}

/// Plans where `specs` go: one file at `output`, or — when `output` is named `*.index.json` or a
/// `shard_size` (bytes, > 0) is given — shards of at most `shard_size` bytes (a larger tensor gets
/// a shard of its own) named `STEM-00001-of-0000N.safetensors` beside `STEM.safetensors.index.json`.
pub fn plan(output: &Path, specs: &[TensorSpec], shard_size: Option<u64>) -> OutputPlan {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if shard_size.is_none() && !name.ends_with(".index.json") {
        return OutputPlan { shards: vec![Shard { path: output.to_path_buf(), specs: specs.to_vec() }], index: None };
    }
    let limit = shard_size.unwrap_or(DEFAULT_SHARD_SIZE);
    let stem = name.trim_end_matches(".index.json").trim_end_matches(".safetensors").to_string();
    let index = output.with_file_name(format!("{stem}.safetensors.index.json"));
    let mut groups: Vec<Vec<TensorSpec>> = vec![Vec::new()];
    let mut size = 0u64;
    for s in specs {
        let n = s.nbytes() as u64;
        if size > 0 && size + n > limit {
            groups.push(Vec::new());
            size = 0;
        }
        size += n;
        groups.last_mut().expect("never empty").push(s.clone());
    }
    let count = groups.len();
    let shards = groups
        .into_iter()
        .enumerate()
        .map(|(i, specs)| Shard {
            path: output.with_file_name(format!("{stem}-{:05}-of-{count:05}.safetensors", i + 1)),
            specs,
        })
        .collect();
    OutputPlan { shards, index: Some(index) }
}

/// Stages the index of `shards` (the weight map, `metadata`, and `total_size`: bytes of tensor
/// data), to be published after the shards.
pub fn stage_index(index: &Path, shards: &[Shard], metadata: &BTreeMap<String, String>) -> Result<StagedFile> {
    StagedFile::with_bytes(index, &index_bytes(shards, metadata))
}

/// The bytes [`stage_index`] writes.
pub fn index_bytes(shards: &[Shard], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for s in shards {
        let file = s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for spec in &s.specs {
            weight_map.insert(spec.name.clone(), file.clone().into());
            total += spec.nbytes() as u64;
        }
    }
    let mut meta: serde_json::Map<String, serde_json::Value> =
        metadata.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
    meta.insert("total_size".into(), total.into());
    let json = serde_json::json!({"metadata": meta, "weight_map": weight_map});
    serde_json::to_string_pretty(&json).expect("json").into_bytes()
}
