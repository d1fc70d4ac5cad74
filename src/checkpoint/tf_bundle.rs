//! TensorFlow tensor bundles (`tf.train.Saver`, `tf.train.Checkpoint`, `CheckpointManager`):
//! `PREFIX.index` is an SSTable (LevelDB's table format: data blocks of prefix-compressed
//! entries, an index block, a 48-byte footer) whose entry `""` is a `BundleHeaderProto` and every
//! other key a tensor name → `BundleEntryProto` (dtype, shape, shard, offset, size, crc32c);
//! `PREFIX.data-0000S-of-0000N` hold the raw little-endian bytes at those offsets, which are
//! mapped, not copied.
//!
//! Names: a TF2 checkpoint's keys (`optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE`)
//! are named by the variable's path in the object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`), found
//! breadth first from the root's children other than `optimizer` and `save_counter` first — Keras 3
//! tracks a model's trainable variables both under `model/…` and under the shorter
//! `optimizer/_trainable_variables/N`. A variable whose path goes through an `optimizer`,
//! `save_counter` and slot variables are not the model's. TF1 `Saver` keys are variable names;
//! optimizer slots (`…/Momentum`, `…/Adam`, `beta1_power`, …) and `global_step` are not the model's,
//! and `…/ExponentialMovingAverage` shadows are read under their variable's name with the key
//! `ema` (the variables without a shadow, BatchNorm statistics among them, as they are:
//! `ExponentialMovingAverage.variables_to_restore()`). `moving_mean` / `moving_variance` are the
//! BatchNorm statistics.
//!
//! The writer writes a bundle like the newest input's: every entry it holds (optimizer slots, the
//! object graph, counters) with the same offsets, the output's tensors in place of the model's
//! variables, and each entry's crc32c (combined from the pieces the averaging threads write).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prost::Message;
use safetensors::Dtype;

use super::format::{has_suffix, Claim, Contents, Format, Probe, TensorWriter};
use super::{Checkpoint, Role, TensorSpec};
use crate::error::{Error, Result};
use crate::fs::{map_input, Input, Outputs, StagedFile};

/// The SSTable footer's magic number (LevelDB's `kTableMagicNumber`).
const MAGIC: u64 = 0xdb47_7524_8b80_fb57;
/// Footer length: two block handles padded to 40 bytes, then the magic.
const FOOTER: usize = 48;
/// A block's trailer: compression type and masked crc32c.
const TRAILER: usize = 5;
/// The entry holding the object graph of a TF2 checkpoint.
pub const OBJECT_GRAPH: &str = "_CHECKPOINTABLE_OBJECT_GRAPH";
/// The suffix of a TF2 variable's key.
const VARIABLE_VALUE: &str = "/.ATTRIBUTES/VARIABLE_VALUE";
/// The suffix of an ExponentialMovingAverage shadow's name.
const EMA: &str = "/ExponentialMovingAverage";
/// TF1 optimizer slots and counters: names ending so are not the model's.
const TF1_SLOTS: &[&str] = &[
    "/Momentum",
    "/Adam",
    "/Adam_1",
    "/RMSProp",
    "/RMSProp_1",
    "/Adagrad",
    "/AdagradDA",
    "/Ftrl",
    "/Ftrl_1",
    "/Adadelta",
    "/Adadelta_1",
    "/Nadam",
    "/Nadam_1",
    "/Adamax",
    "/Adamax_1",
    "/LARS",
];
const TF1_COUNTERS: &[&str] = &["global_step", "beta1_power", "beta2_power"];

/// TensorFlow tensor bundles.
pub struct TfBundle;

#[derive(Clone, PartialEq, Message)]
struct BundleHeaderProto {
    #[prost(int32, tag = "1")]
    num_shards: i32,
    #[prost(int32, tag = "2")]
    endianness: i32,
    #[prost(bytes = "vec", tag = "3")]
    version: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct BundleEntryProto {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
    #[prost(int32, tag = "3")]
    shard_id: i32,
    #[prost(int64, tag = "4")]
    offset: i64,
    #[prost(int64, tag = "5")]
    size: i64,
    #[prost(fixed32, tag = "6")]
    crc32c: u32,
    #[prost(bytes = "vec", repeated, tag = "7")]
    slices: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<Dim>,
    #[prost(bool, tag = "3")]
    unknown_rank: bool,
}

#[derive(Clone, PartialEq, Message)]
struct Dim {
    #[prost(int64, tag = "1")]
    size: i64,
    #[prost(string, tag = "2")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct TrackableObjectGraph {
    #[prost(message, repeated, tag = "1")]
    nodes: Vec<TrackableObject>,
}

#[derive(Clone, PartialEq, Message)]
struct TrackableObject {
    #[prost(message, repeated, tag = "1")]
    children: Vec<ObjectReference>,
    #[prost(message, repeated, tag = "2")]
    attributes: Vec<SerializedTensor>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectReference {
    #[prost(int32, tag = "1")]
    node_id: i32,
    #[prost(string, tag = "2")]
    local_name: String,
}

#[derive(Clone, PartialEq, Message)]
struct SerializedTensor {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "3")]
    checkpoint_key: String,
}

/// TensorFlow's `DataType` → safetensors' dtype, for the types a checkpoint's variables have.
fn dtype_of(dt: i32) -> Option<Dtype> {
    Some(match dt {
        1 => Dtype::F32,
        2 => Dtype::F64,
        3 => Dtype::I32,
        4 => Dtype::U8,
        5 => Dtype::I16,
        6 => Dtype::I8,
        9 => Dtype::I64,
        10 => Dtype::BOOL,
        14 => Dtype::BF16,
        17 => Dtype::U16,
        19 => Dtype::F16,
        22 => Dtype::U32,
        23 => Dtype::U64,
        _ => return None,
    })
}

fn type_name(dt: i32) -> String {
    match dt {
        7 => "string".into(),
        8 | 18 => "complex".into(),
        20 => "resource".into(),
        21 => "variant".into(),
        11..=13 | 15 | 16 => "quantized".into(),
        _ => format!("DataType {dt}"),
    }
}

/// LevelDB's masking of a stored crc32c.
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Reads a varint of at most 10 bytes at `*at`, moving past it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An SSTable's entries: key → value.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The key → value entries of an SSTable, in key order; an error says what is wrong.
pub fn read_table(bytes: &[u8]) -> std::result::Result<Entries, String> {
    if bytes.len() < FOOTER {
        return Err(format!("{} bytes: shorter than an SSTable footer (truncated?)", bytes.len()));
    }
    let footer = &bytes[bytes.len() - FOOTER..];
    if u64::from_le_bytes(footer[40..].try_into().expect("8 bytes")) != MAGIC {
        return Err("not a TensorFlow bundle index (no SSTable magic at its end: truncated?)".into());
    }
    let mut at = 0;
    let handle = |at: &mut usize| -> Option<(u64, u64)> { Some((varint(footer, at)?, varint(footer, at)?)) };
    let _meta = handle(&mut at).ok_or("corrupt footer")?;
    let index = handle(&mut at).ok_or("corrupt footer")?;
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (_, value) in block(bytes, index)? {
        let mut at = 0;
        let data = (varint(&value, &mut at), varint(&value, &mut at));
        let (Some(offset), Some(size)) = data else { return Err("corrupt index block entry".into()) };
        for (key, value) in block(bytes, (offset, size))? {
            if entries.last().is_some_and(|(last, _)| *last >= key) {
                return Err(format!("keys out of order at `{}`", String::from_utf8_lossy(&key)));
            }
            entries.push((key, value));
        }
    }
    Ok(entries)
}

/// The entries of the block at `handle` (offset, size without the trailer).
fn block(bytes: &[u8], (offset, size): (u64, u64)) -> std::result::Result<Entries, String> {
    let range = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(size).ok())
        .and_then(|(o, s)| Some(o..o.checked_add(s)?))
        .filter(|r| r.end.checked_add(TRAILER).is_some_and(|e| e <= bytes.len()))
        .ok_or_else(|| format!("a block at {offset} of {size} bytes lies outside the file (truncated?)"))?;
    let trailer = &bytes[range.end..range.end + TRAILER];
    if trailer[0] != 0 {
        return Err(format!("a block is compressed (type {}): swa reads uncompressed bundle indexes", trailer[0]));
    }
    let stored = u32::from_le_bytes(trailer[1..].try_into().expect("4 bytes"));
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[range.clone()]), &trailer[..1]);
    if mask(crc) != stored {
        return Err(format!("a block at {offset} fails its checksum (corrupt)"));
    }
    let data = &bytes[range];
    if data.len() < 4 {
        return Err("a block is too short".into());
    }
    let restarts = u32::from_le_bytes(data[data.len() - 4..].try_into().expect("4 bytes")) as usize;
    let end = restarts
        .checked_mul(4)
        .and_then(|r| data.len().checked_sub(4 + r))
        .ok_or("a block's restart array is longer than the block")?;
    let (mut at, mut key, mut out) = (0usize, Vec::new(), Vec::new());
    while at < end {
        let fields = (varint(data, &mut at), varint(data, &mut at), varint(data, &mut at));
        let (Some(shared), Some(own), Some(len)) = fields else { return Err("corrupt block entry".into()) };
        let (shared, own, len) = (shared as usize, own as usize, len as usize);
        let bad = || "corrupt block entry: lengths run past the block".to_string();
        if shared > key.len() {
            return Err(bad());
        }
        let key_end = at.checked_add(own).filter(|&e| e <= end).ok_or_else(bad)?;
        let value_end = key_end.checked_add(len).filter(|&e| e <= end).ok_or_else(bad)?;
        key.truncate(shared);
        key.extend_from_slice(&data[at..key_end]);
        out.push((key.clone(), data[key_end..value_end].to_vec()));
        at = value_end;
    }
    Ok(out)
}

/// An SSTable of `entries` (sorted by key), written as TensorFlow's `TableBuilder` does without
/// compression: 4 KiB data blocks, restarts every 16 entries, an index block, an empty metaindex.
pub fn write_table(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    fn finish_block(out: &mut Vec<u8>, block: &mut Vec<u8>, restarts: &mut Vec<u32>) -> (u64, u64) {
        if restarts.is_empty() {
            restarts.push(0);
        }
        for r in restarts.iter() {
            block.extend_from_slice(&r.to_le_bytes());
        }
        block.extend_from_slice(&(restarts.len() as u32).to_le_bytes());
        let handle = (out.len() as u64, block.len() as u64);
        let crc = mask(crc32c::crc32c_append(crc32c::crc32c(block), &[0]));
        out.append(block);
        out.push(0);
        out.extend_from_slice(&crc.to_le_bytes());
        restarts.clear();
        handle
    }
    fn add(block: &mut Vec<u8>, restarts: &mut Vec<u32>, count: &mut usize, last: &[u8], key: &[u8], value: &[u8]) {
        let shared = if count.is_multiple_of(16) {
            restarts.push(block.len() as u32);
            0
        } else {
            last.iter().zip(key).take_while(|(a, b)| a == b).count()
        };
        put_varint(block, shared as u64);
        put_varint(block, (key.len() - shared) as u64);
        put_varint(block, value.len() as u64);
        block.extend_from_slice(&key[shared..]);
        block.extend_from_slice(value);
        *count += 1;
    }
    let (mut out, mut blk, mut restarts, mut count) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
    let mut index: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut last: &[u8] = &[];
    for (i, (key, value)) in entries.iter().enumerate() {
        add(&mut blk, &mut restarts, &mut count, last, key, value);
        last = key;
        if blk.len() >= 4096 || i + 1 == entries.len() {
            let (o, s) = finish_block(&mut out, &mut blk, &mut restarts);
            let mut h = Vec::new();
            put_varint(&mut h, o);
            put_varint(&mut h, s);
            index.push((key.clone(), h));
            count = 0;
            last = &[];
        }
    }
    let meta = finish_block(&mut out, &mut Vec::new(), &mut Vec::new());
    let (mut iblk, mut irestarts, mut icount, mut ilast) = (Vec::new(), Vec::new(), 0usize, Vec::new());
    for (key, value) in &index {
        add(&mut iblk, &mut irestarts, &mut icount, &ilast, key, value);
        ilast = key.clone();
    }
    let idx = finish_block(&mut out, &mut iblk, &mut irestarts);
    let mut footer = Vec::new();
    for v in [meta.0, meta.1, idx.0, idx.1] {
        put_varint(&mut footer, v);
    }
    footer.resize(40, 0);
    footer.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&footer);
    out
}

/// A bundle's index, parsed: its header and entries by key.
struct Index {
    header: BundleHeaderProto,
    entries: Vec<(String, BundleEntryProto)>,
}

impl Index {
    fn read(path: &Path, bytes: &[u8]) -> Result<Index> {
        let table = read_table(bytes).map_err(|m| Error::format(path, m))?;
        let mut header = None;
        let mut entries = Vec::with_capacity(table.len());
        for (key, value) in table {
            if key.is_empty() {
                header = Some(
                    BundleHeaderProto::decode(value.as_slice())
                        .map_err(|e| Error::format(path, format!("corrupt bundle header: {e}")))?,
                );
                continue;
            }
            let name = String::from_utf8(key).map_err(|_| Error::format(path, "a tensor name is not UTF-8"))?;
            let entry = BundleEntryProto::decode(value.as_slice())
                .map_err(|e| Error::tensor(path, &name, format!("corrupt bundle entry: {e}")))?;
            entries.push((name, entry));
        }
        let header = header.ok_or_else(|| Error::format(path, "no bundle header (the entry \"\")"))?;
        if header.endianness != 0 {
            return Err(Error::format(path, "a big-endian bundle: swa reads little-endian ones"));
        }
        if !(1..=100_000).contains(&header.num_shards) {
            return Err(Error::format(path, format!("a bundle of {} shards", header.num_shards)));
        }
        Ok(Index { header, entries })
    }
}

/// One entry of a bundle's index: its name, type (`None`: not a number type swa reads), shape,
/// shard and byte range in that shard.
pub type IndexEntry = (String, Option<Dtype>, Vec<usize>, usize, std::ops::Range<usize>);

/// The entries of the bundle index `bytes` (read from `path`, which names it in errors), checked
/// as reading it checks them: what `inspect` and the fuzz target see without the data shards.
pub fn index_entries(path: &Path, bytes: &[u8]) -> Result<Vec<IndexEntry>> {
    let index = Index::read(path, bytes)?;
    let shards = index.header.num_shards as usize;
    index
        .entries
        .iter()
        .map(|(name, e)| {
            let shard = usize::try_from(e.shard_id)
                .ok()
                .filter(|&s| s < shards)
                .ok_or_else(|| Error::tensor(path, name, format!("is in shard {} of {shards}", e.shard_id)))?;
            let r = range(e).ok_or_else(|| Error::tensor(path, name, "has a negative or huge offset"))?;
            let dt = dtype_of(e.dtype);
            let shape = shape_of(path, name, e)?;
            if let Some(dt) = dt {
                if super::dtype::nbytes(dt, &shape).ok() != Some(r.len()) {
                    return Err(Error::tensor(
                        path,
                        name,
                        format!("holds {} bytes, not those of {shape:?} {dt:?}", r.len()),
                    ));
                }
            }
            Ok((name.clone(), dt, shape, shard, r))
        })
        .collect()
}

/// The name of the state file `tf.train.CheckpointManager` and `Saver` keep beside their bundles.
pub const STATE_FILE: &str = "checkpoint";

/// The bundle a `checkpoint` state file names as the latest (`model_checkpoint_path: "ckpt-6"`,
/// relative to the file's folder or absolute).
pub fn latest(state: &Path) -> Result<PathBuf> {
    let text = crate::fs::read_regular(state)?;
    let text = String::from_utf8_lossy(&text);
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("model_checkpoint_path:"))
        .ok_or_else(|| Error::format(state, "a checkpoint state file without model_checkpoint_path"))?;
    let name = line.trim().trim_matches('"');
    let prefix =
        if Path::new(name).is_absolute() { PathBuf::from(name) } else { crate::fs::parent_dir(state).join(name) };
    Ok(index_of(&prefix))
}

/// The bundle `path` names: itself, or for a `checkpoint` state file, the latest it names.
fn resolve(path: &Path) -> Result<PathBuf> {
    if path.file_name().is_some_and(|n| n == STATE_FILE) && path.is_file() {
        return latest(path);
    }
    Ok(path.to_path_buf())
}

/// The prefix a path names: `model.ckpt-30` for `model.ckpt-30.index` (or itself).
pub fn prefix_of(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match super::format::strip_suffix(&name, ".index") {
        Some(stem) => path.with_file_name(stem),
        None => path.to_path_buf(),
    }
}

/// The index file of the bundle `path` names (the index itself, or its prefix).
pub fn index_of(path: &Path) -> PathBuf {
    let prefix = prefix_of(path);
    let mut name = prefix.file_name().unwrap_or_default().to_os_string();
    name.push(".index");
    prefix.with_file_name(name)
}

/// The data shard `shard` of `n` of the bundle with prefix `prefix`.
pub fn shard_path(prefix: &Path, shard: usize, n: usize) -> PathBuf {
    let mut name = prefix.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".data-{shard:05}-of-{n:05}"));
    prefix.with_file_name(name)
}

/// Which of a bundle's variables a read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// The model's variables.
    Model,
    /// ExponentialMovingAverage shadows in place of the variables that have one.
    Ema,
}

fn key_of(path: &Path, key: Option<&str>) -> Result<Key> {
    match key {
        None | Some("" | "model") => Ok(Key::Model),
        Some("ema" | "ExponentialMovingAverage") => Ok(Key::Ema),
        Some(k) => Err(Error::format(
            path,
            format!("no `{k}` in a TensorFlow bundle: its keys are `model` (default) and `ema` (ExponentialMovingAverage shadows)"),
        )),
    }
}

/// What each entry of a bundle is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A model variable, named so.
    Model(String),
    /// The EMA shadow of the model variable named so.
    Shadow(String),
    /// An optimizer slot or counter, or the checkpoint's own counter.
    Optimizer,
    /// Not a tensor swa reads (strings, the object graph).
    Other,
}

/// Names every entry (see the module's docs).
fn kinds(path: &Path, index: &Index, data: &Shards) -> Result<Vec<Kind>> {
    let graph = match index.entries.iter().find(|(k, _)| k == OBJECT_GRAPH) {
        Some((_, e)) => Some(object_graph(path, e, data)?),
        None => None,
    };
    Ok(index
        .entries
        .iter()
        .map(|(key, e)| {
            if dtype_of(e.dtype).is_none() {
                return Kind::Other;
            }
            if let Some(names) = &graph {
                return match names.get(key.as_str()) {
                    Some(name) if name.split('/').any(|c| c == "optimizer") || name == "save_counter" => {
                        Kind::Optimizer
                    }
                    Some(name) => match name.strip_suffix(EMA) {
                        Some(base) => Kind::Shadow(base.to_string()),
                        None => Kind::Model(name.clone()),
                    },
                    None if key.contains("/.OPTIMIZER_SLOT/") || key.starts_with("optimizer/") => Kind::Optimizer,
                    None => Kind::Model(key.strip_suffix(VARIABLE_VALUE).unwrap_or(key).to_string()),
                };
            }
            if TF1_COUNTERS.contains(&key.as_str()) || TF1_SLOTS.iter().any(|s| key.ends_with(s)) {
                Kind::Optimizer
            } else if let Some(base) = key.strip_suffix(EMA) {
                Kind::Shadow(base.to_string())
            } else {
                Kind::Model(key.clone())
            }
        })
        .collect())
}

/// Checkpoint key → the variable's path in the object graph.
fn object_graph(path: &Path, entry: &BundleEntryProto, data: &Shards) -> Result<HashMap<String, String>> {
    object_graph_names(data.bytes(path, OBJECT_GRAPH, entry)?).map_err(|m| Error::tensor(path, OBJECT_GRAPH, m))
}

/// The object graph entry's bytes (a scalar string tensor: varint length, a 4-byte checksum of the
/// lengths, the `TrackableObjectGraph` proto) → checkpoint key → the variable's path (see the
/// module's docs).
pub fn object_graph_names(bytes: &[u8]) -> std::result::Result<HashMap<String, String>, String> {
    let mut at = 0;
    let proto = varint(bytes, &mut at)
        .and_then(|len| usize::try_from(len).ok())
        .and_then(|len| bytes.get(at + 4..(at + 4).checked_add(len)?))
        .ok_or("corrupt string tensor")?;
    let graph = TrackableObjectGraph::decode(proto).map_err(|e| format!("corrupt object graph: {e}"))?;
    let nodes = &graph.nodes;
    let mut paths: HashMap<usize, String> = HashMap::new();
    paths.insert(0, String::new());
    let later = ["optimizer", "save_counter"];
    let Some(root) = nodes.first() else { return Ok(HashMap::new()) };
    for first_pass in [true, false] {
        let mut queue = VecDeque::new();
        for c in &root.children {
            let id = c.node_id as usize;
            if (!first_pass || !later.contains(&c.local_name.as_str())) && id < nodes.len() && !paths.contains_key(&id)
            {
                paths.insert(id, c.local_name.clone());
                queue.push_back(id);
            }
        }
        while let Some(node) = queue.pop_front() {
            for c in &nodes[node].children {
                let id = c.node_id as usize;
                if id < nodes.len() && !paths.contains_key(&id) {
                    let p = format!("{}/{}", paths[&node], c.local_name);
                    paths.insert(id, p);
                    queue.push_back(id);
                }
            }
        }
    }
    let mut names = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for a in &node.attributes {
            if a.name == "VARIABLE_VALUE" {
                if let Some(p) = paths.get(&i) {
                    names.insert(a.checkpoint_key.clone(), p.clone());
                }
            }
        }
    }
    Ok(names)
}

/// A bundle's data shards, mapped when first needed.
struct Shards {
    prefix: PathBuf,
    n: usize,
    maps: Vec<Option<(PathBuf, Input)>>,
}

impl Shards {
    fn new(prefix: &Path, n: usize) -> Shards {
        Shards { prefix: prefix.to_path_buf(), n, maps: (0..n).map(|_| None).collect() }
    }

    fn path(&self, shard: usize) -> PathBuf {
        shard_path(&self.prefix, shard, self.n)
    }

    fn map(&mut self, index: &Path, name: &str, shard: i32) -> Result<()> {
        let s = usize::try_from(shard)
            .ok()
            .filter(|&s| s < self.n)
            .ok_or_else(|| Error::tensor(index, name, format!("is in shard {shard} of {}", self.n)))?;
        if self.maps[s].is_none() {
            let path = self.path(s);
            if !path.exists() {
                return Err(Error::tensor(
                    index,
                    name,
                    format!("is in the data shard {}, which is missing", path.display()),
                ));
            }
            let input = map_input(&path)?;
            self.maps[s] = Some((path, input));
        }
        Ok(())
    }

    /// The bytes of an entry whose shard is mapped.
    fn bytes(&self, index: &Path, name: &str, e: &BundleEntryProto) -> Result<&[u8]> {
        let (path, input) = usize::try_from(e.shard_id)
            .ok()
            .and_then(|s| self.maps.get(s)?.as_ref())
            .ok_or_else(|| Error::tensor(index, name, "its shard is not read"))?;
        range(e)
            .and_then(|r| input.get(r))
            .ok_or_else(|| Error::tensor(path, name, "its bytes lie outside the data file (truncated?)"))
    }
}

fn range(e: &BundleEntryProto) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(e.offset).ok()?;
    Some(start..start.checked_add(usize::try_from(e.size).ok()?)?)
}

fn shape_of(path: &Path, name: &str, e: &BundleEntryProto) -> Result<Vec<usize>> {
    let shape = e.shape.clone().unwrap_or_default();
    if shape.unknown_rank {
        return Err(Error::tensor(path, name, "has an unknown rank"));
    }
    shape
        .dim
        .iter()
        .map(|d| usize::try_from(d.size).map_err(|_| Error::tensor(path, name, format!("has a dimension {}", d.size))))
        .collect()
}

/// Refuses entries of one shard whose bytes overlap (TensorFlow never writes them; a writer would
/// write the shared bytes twice).
fn refuse_overlaps(path: &Path, index: &Index) -> Result<()> {
    let mut ranges: Vec<(i32, std::ops::Range<usize>, &str)> = index
        .entries
        .iter()
        .filter_map(|(k, e)| Some((e.shard_id, range(e)?, k.as_str())))
        .filter(|(_, r, _)| !r.is_empty())
        .collect();
    ranges.sort_by_key(|(s, r, _)| (*s, r.start));
    for w in ranges.windows(2) {
        if w[0].0 == w[1].0 && w[1].1.start < w[0].1.end {
            return Err(Error::tensor(
                path,
                w[1].2,
                format!("shares bytes with `{}` in its data file (corrupt index)", w[0].2),
            ));
        }
    }
    Ok(())
}

/// A bundle opened: its index and shards, and what each entry is.
struct Bundle {
    index_path: PathBuf,
    index: Index,
    shards: Shards,
    kinds: Vec<Kind>,
}

impl Bundle {
    fn open(path: &Path) -> Result<Bundle> {
        let index_path = index_of(path);
        if !index_path.exists() {
            return Err(Error::format(path, format!("no bundle index {}", index_path.display())));
        }
        let bytes = crate::fs::read_regular(&index_path)?;
        let index = Index::read(&index_path, &bytes)?;
        let mut shards = Shards::new(&prefix_of(path), index.header.num_shards as usize);
        if let Some((_, e)) = index.entries.iter().find(|(k, _)| k == OBJECT_GRAPH) {
            shards.map(&index_path, OBJECT_GRAPH, e.shard_id)?;
        }
        let kinds = kinds(&index_path, &index, &shards)?;
        Ok(Bundle { index_path, index, shards, kinds })
    }

    /// The entries a read with `key` takes, by the name each is read under, in key order.
    fn chosen(&self, key: Key) -> Vec<(String, usize)> {
        let shadowed: HashSet<&str> =
            self.kinds.iter().filter_map(|k| if let Kind::Shadow(b) = k { Some(b.as_str()) } else { None }).collect();
        self.kinds
            .iter()
            .enumerate()
            .filter_map(|(i, k)| match (k, key) {
                (Kind::Model(n), Key::Model) => Some((n.clone(), i)),
                (Kind::Model(n), Key::Ema) if !shadowed.contains(n.as_str()) => Some((n.clone(), i)),
                (Kind::Shadow(n), Key::Ema) => Some((n.clone(), i)),
                _ => None,
            })
            .collect()
    }
}

/// The BatchNorm role a TensorFlow variable's name gives it.
pub fn role_of(name: &str) -> Option<Role> {
    let last = name.rsplit('/').next().unwrap_or(name);
    let last = last.split(':').next().unwrap_or(last);
    match last {
        "moving_mean" => Some(Role::RunningMean),
        "moving_variance" => Some(Role::RunningVar),
        _ => None,
    }
}

fn open(path: &Path, key: Option<&str>) -> Result<Checkpoint> {
    let which = key_of(path, key)?;
    let mut b = Bundle::open(path)?;
    let mut ck = Checkpoint::empty(path);
    if which == Key::Ema && !b.kinds.iter().any(|k| matches!(k, Kind::Shadow(_))) {
        return Err(Error::format(
            &b.index_path,
            "holds no ExponentialMovingAverage shadows (no `…/ExponentialMovingAverage` entries): read it without the key `ema`",
        ));
    }
    let chosen = b.chosen(which);
    if chosen.is_empty() {
        let what = if which == Key::Ema { "ExponentialMovingAverage shadows" } else { "model variables" };
        return Err(Error::format(&b.index_path, format!("holds no {what}")));
    }
    refuse_overlaps(&b.index_path, &b.index)?;
    let mut sources: HashMap<i32, usize> = HashMap::new();
    let mut checks: Vec<(String, u32)> = Vec::new();
    for (name, i) in chosen {
        let (key, e) = &b.index.entries[i];
        let key = key.clone();
        let e = e.clone();
        let key = key.as_str();
        if !e.slices.is_empty() {
            return Err(Error::tensor(&b.index_path, key, "is a partitioned variable (saved in slices): not read"));
        }
        let dt = dtype_of(e.dtype).expect("kinds() keeps known types");
        let shape = shape_of(&b.index_path, key, &e)?;
        let source = match sources.get(&e.shard_id) {
            Some(&s) => s,
            None => {
                b.shards.map(&b.index_path, key, e.shard_id)?;
                let (p, input) = b.shards.maps[e.shard_id as usize].take().expect("mapped above; taken once per shard");
                let s = ck.add_input(&p, input);
                sources.insert(e.shard_id, s);
                s
            }
        };
        let r = range(&e).ok_or_else(|| Error::tensor(&b.index_path, key, "has a negative or huge offset"))?;
        ck.push_view(name.clone(), dt, shape, source, r)?;
        if let Some(role) = role_of(&name) {
            ck.set_role(&name, role);
        }
        checks.push((name, e.crc32c));
    }
    // TensorFlow checks each entry's crc32c when it reads it; so does swa, in parallel (a few
    // GB/s per core with the CPU's crc32 instruction, and the pages are then warm for averaging).
    use rayon::prelude::*;
    let tensors: HashMap<&str, &super::TensorEntry> = ck.tensors().iter().map(|t| (t.name.as_str(), t)).collect();
    checks.par_iter().try_for_each(|(name, stored)| {
        let t = tensors[name.as_str()];
        if mask(crc32c::crc32c(ck.bytes(t))) != *stored {
            return Err(Error::tensor(
                ck.file_of(t),
                name,
                "fails its checksum (crc32c): the data file is corrupt (TensorFlow refuses it too)",
            ));
        }
        Ok(())
    })?;
    ck.add_file(&b.index_path);
    ck.mark_tensorflow();
    Ok(ck)
}

impl Format for TfBundle {
    fn name(&self) -> &'static str {
        "TensorFlow bundle"
    }

    fn suffixes(&self) -> &'static [&'static str] {
        &[".index"]
    }

    /// `*.index` (not `*.index.json`), or a prefix whose `.index` exists.
    fn claim(&self, probe: &Probe) -> Option<Claim> {
        if probe.is_dir {
            return None;
        }
        if probe.name == STATE_FILE && probe.head.starts_with(b"model_checkpoint") {
            return Some(Claim::Certain);
        }
        if probe.named(&[".index"]) {
            // An SSTable starts with its first entry, the header's: shared 0, key length 0.
            return Some(if probe.head.starts_with(&[0, 0]) { Claim::Certain } else { Claim::Name });
        }
        (!probe.path.exists() && index_of(probe.path).is_file()).then_some(Claim::Certain)
    }

    fn open(&self, path: &Path, key: Option<&str>) -> Result<Checkpoint> {
        open(&resolve(path)?, key)
    }

    fn files(&self, path: &Path) -> Result<Vec<PathBuf>> {
        let path = &resolve(path)?;
        let index_path = index_of(path);
        let bytes = crate::fs::read_regular(&index_path)?;
        let index = Index::read(&index_path, &bytes)?;
        let n = index.header.num_shards as usize;
        let prefix = prefix_of(path);
        Ok(std::iter::once(index_path).chain((0..n).map(|s| shard_path(&prefix, s, n))).collect())
    }

    fn contents(&self, path: &Path) -> Result<Option<Contents>> {
        let b = Bundle::open(&resolve(path)?)?;
        let count = |f: fn(&Kind) -> bool| b.kinds.iter().filter(|k| f(k)).count();
        let mut state_dicts = vec![(String::new(), count(|k| matches!(k, Kind::Model(_))))];
        let shadows = count(|k| matches!(k, Kind::Shadow(_)));
        let mut what = BTreeMap::new();
        if shadows > 0 {
            state_dicts.push(("ema".into(), b.chosen(Key::Ema).len()));
            what.insert(
                "ema".into(),
                format!("ExponentialMovingAverage shadows ({shadows}), with the variables that have none"),
            );
        }
        let other_keys = b
            .index
            .entries
            .iter()
            .zip(&b.kinds)
            .filter(|(_, k)| matches!(k, Kind::Optimizer | Kind::Other))
            .map(|((key, e), k)| match k {
                Kind::Other => format!("{key} ({})", type_name(e.dtype)),
                _ if key.starts_with("save_counter") || key == "global_step" => format!("{key} (counter)"),
                _ => format!("{key} (optimizer)"),
            })
            .collect();
        Ok(Some(Contents { state_dicts, other_keys, chosen: Some(String::new()), what }))
    }

    fn native_output(&self, _like: &Path) -> Option<&'static str> {
        Some("swa.ckpt")
    }

    fn writes(&self, name: &str) -> bool {
        has_suffix(name, ".index") || has_suffix(name, ".ckpt") || name.contains(".ckpt-")
    }

    fn writes_like(&self, name: &str) -> bool {
        // A bundle's bare prefix (`ckpt-3`, `swa`): a name without an extension, for bundle inputs.
        !name.contains('.')
    }

    fn output_files(&self, target: &Path) -> Vec<PathBuf> {
        let prefix = prefix_of(target);
        vec![index_of(&prefix), shard_path(&prefix, 0, 1)]
    }

    fn writer(
        &self,
        target: &Path,
        tensors: &[TensorSpec],
        _metadata: &BTreeMap<String, String>,
        like: Option<&Path>,
    ) -> Result<Box<dyn TensorWriter>> {
        let like = like.filter(|l| index_of(l).is_file()).ok_or_else(|| {
            Error::format(
                target,
                "a TensorFlow bundle is written like a bundle read (its other entries, its object graph): \
                 the newest input is not one; write .safetensors",
            )
        })?;
        Ok(Box::new(BundleWriter::create(target, tensors, like)?))
    }
}

/// A piece of a tensor written: where it starts, its crc32c, its length.
type Piece = (usize, u32, usize);

/// A bundle being written like a template bundle (see the module's docs).
struct BundleWriter {
    index_target: PathBuf,
    index: Index,
    data: Vec<StagedFile>,
    /// Per output tensor: its entry in `index` and the crc32c pieces written so far (at, crc, len).
    written: Vec<(usize, Mutex<Vec<Piece>>)>,
}

impl BundleWriter {
    fn create(target: &Path, tensors: &[TensorSpec], like: &Path) -> Result<BundleWriter> {
        let mut template = Bundle::open(like)?;
        let names: HashMap<String, usize> = template.chosen(Key::Model).into_iter().collect();
        let prefix = prefix_of(target);
        let n = template.index.header.num_shards as usize;
        let mut written = Vec::with_capacity(tensors.len());
        let mut outputs: HashSet<usize> = HashSet::new();
        for t in tensors {
            let i = *names.get(&t.name).ok_or_else(|| {
                Error::tensor(
                    target,
                    &t.name,
                    format!("is not a variable of the bundle {} it is written like", like.display()),
                )
            })?;
            let (key, e) = &template.index.entries[i];
            let shape = shape_of(like, key, e)?;
            if dtype_of(e.dtype) != Some(t.dtype) || shape != t.shape {
                return Err(Error::tensor(
                    target,
                    &t.name,
                    format!(
                        "is {:?} {:?} but {} {:?} in {} (an output written like a bundle keeps its types and shapes)",
                        t.dtype,
                        t.shape,
                        dtype_of(e.dtype).map_or_else(|| type_name(e.dtype), |d| format!("{d:?}")),
                        shape,
                        like.display()
                    ),
                ));
            }
            outputs.insert(i);
            written.push((i, Mutex::new(Vec::new())));
        }
        // Every shard the template has, its entries that are not outputs copied.
        let mut data = Vec::with_capacity(n);
        for s in 0..n {
            let staged = StagedFile::beside(&shard_path(&prefix, s, n))?;
            let mut end = 0usize;
            for (key, e) in template.index.entries.iter().filter(|(_, e)| e.shard_id as usize == s) {
                end = end.max(range(e).ok_or_else(|| Error::tensor(like, key, "has a negative or huge offset"))?.end);
            }
            staged.reserve(end as u64)?;
            for (i, (key, e)) in template.index.entries.iter().enumerate() {
                if e.shard_id as usize != s {
                    continue;
                }
                let r = range(e).expect("checked above");
                if !outputs.contains(&i) {
                    template.shards.map(&template.index_path, key, e.shard_id)?;
                    let bytes = template.shards.bytes(&template.index_path, key, e)?;
                    // Copied with its crc32c: a corrupt entry would make the output one TensorFlow
                    // refuses. (A string tensor's crc32c covers its lengths as TensorFlow encodes
                    // them, not its bytes: not checked.)
                    if dtype_of(e.dtype).is_some() && mask(crc32c::crc32c(bytes)) != e.crc32c {
                        return Err(Error::tensor(
                            &template.index_path,
                            key,
                            "fails its checksum (crc32c): the bundle the output is written like is corrupt",
                        ));
                    }
                    staged.write_at(bytes, r.start as u64)?;
                }
            }
            data.push(staged);
        }
        Ok(BundleWriter { index_target: index_of(&prefix), index: template.index, data, written })
    }
}

impl TensorWriter for BundleWriter {
    fn write_at(&self, index: usize, at: usize, bytes: &[u8]) -> Result<()> {
        let (entry, pieces) = &self.written[index];
        let e = &self.index.entries[*entry].1;
        self.data[e.shard_id as usize].write_at(bytes, e.offset as u64 + at as u64)?;
        pieces.lock().expect("not poisoned").push((at, crc32c::crc32c(bytes), bytes.len()));
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Outputs> {
        let BundleWriter { index_target, mut index, data, written } = *self;
        for (entry, pieces) in written {
            let mut pieces = pieces.into_inner().expect("not poisoned");
            pieces.sort_unstable_by_key(|p| p.0);
            let (key, e) = &mut index.entries[entry];
            let (mut crc, mut end) = (0u32, 0usize);
            for (at, c, len) in pieces {
                if at != end {
                    return Err(Error::tensor(&index_target, key.as_str(), "was not written whole"));
                }
                crc = if end == 0 { c } else { crc32c::crc32c_combine(crc, c, len) };
                end += len;
            }
            if end as i64 != e.size {
                return Err(Error::tensor(&index_target, key.as_str(), "was not written whole"));
            }
            e.crc32c = mask(crc);
        }
        let mut entries = vec![(Vec::new(), index.header.encode_to_vec())];
        entries.extend(index.entries.iter().map(|(k, e)| (k.as_bytes().to_vec(), e.encode_to_vec())));
        let mut outputs = Outputs::default();
        for d in data {
            d.sync()?;
            outputs.push(d);
        }
        outputs.push(StagedFile::with_bytes(&index_target, &write_table(&entries))?);
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            (0..300).map(|i| (format!("layer_{i:04}/kernel").into_bytes(), vec![i as u8; i % 50])).collect();
        let mut all = vec![(Vec::new(), b"header".to_vec())];
        all.extend(entries);
        assert_eq!(read_table(&write_table(&all)).unwrap(), all);
        let bytes = write_table(&all);
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(read_table(&bytes[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn roles_and_prefixes() {
        assert_eq!(role_of("batch_normalization/moving_mean"), Some(Role::RunningMean));
        assert_eq!(role_of("model/_operations/2/moving_variance"), Some(Role::RunningVar));
        assert_eq!(role_of("conv2d/kernel"), None);
        assert_eq!(prefix_of(Path::new("a/model.ckpt-30.index")), Path::new("a/model.ckpt-30"));
        assert_eq!(index_of(Path::new("a/ckpt-3")), Path::new("a/ckpt-3.index"));
        assert_eq!(shard_path(Path::new("a/ckpt-3"), 0, 1), Path::new("a/ckpt-3.data-00000-of-00001"));
    }
}
