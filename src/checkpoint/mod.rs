//! Checkpoints as named tensors over memory-mapped bytes, and the formats they are read from and
//! written to, each behind [`format::Format`]: single safetensors files ([`safetensors`]), Hugging
//! Face sharded checkpoints (`*.safetensors.index.json`, [`sharded`]), `torch.save` files and
//! Lightning checkpoints ([`torch`]). A reader fills a [`Checkpoint`] with views into a mapped file
//! or with tensors it owns.

pub mod dtype;
pub mod format;
pub mod hdf5;
pub mod keras;
pub mod safetensors;
pub mod sharded;
pub mod tf_bundle;
pub mod torch;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use ::safetensors::Dtype;

pub use format::{Format, FORMATS};
pub use safetensors::SafetensorsWriter;
pub use sharded::find_index;
pub use write::{stage_tensors, stage_tensors_as, write_tensors, TensorSpec};

use crate::error::{Error, Result};
use crate::fs::{map_input, Input};

/// What a tensor is to averaging and inspection: a weight, or a buffer that averaging copies from
/// the newest checkpoint by default (BatchNorm statistics, counters, integer tensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A floating-point weight.
    Weight,
    /// A BatchNorm layer's running mean (the layer is named by what precedes `.running_mean`, or
    /// by the reader).
    RunningMean,
    /// A BatchNorm layer's running variance.
    RunningVar,
    /// Any other buffer: counters (`num_batches_tracked`), integer tensors.
    Buffer,
}

impl Role {
    /// The role PyTorch's names give a tensor: `*running_mean`, `*running_var`,
    /// `*num_batches_tracked` and integer tensors are buffers, other floats weights. Readers of
    /// formats that name them otherwise (Keras' positional variables) set roles themselves
    /// ([`Checkpoint::set_role`]).
    pub fn of(name: &str, dtype: Dtype) -> Role {
        if name.ends_with("running_mean") {
            Role::RunningMean
        } else if name.ends_with("running_var") {
            Role::RunningVar
        } else if !dtype::is_float(dtype) || name.ends_with("num_batches_tracked") {
            Role::Buffer
        } else {
            Role::Weight
        }
    }

    /// True for anything but a weight.
    pub fn is_buffer(self) -> bool {
        self != Role::Weight
    }
}

/// One tensor of a checkpoint: its name, type, shape, role and where its bytes are.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// The name under which the checkpoint stores it.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Weight or buffer ([`Role::of`] its name, unless the reader said otherwise).
    pub role: Role,
    source: usize,
    range: Range<usize>,
}

impl TensorEntry {
    /// Number of elements (checked against the bytes when the tensor was read, so it cannot
    /// overflow).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of bytes.
    pub fn nbytes(&self) -> usize {
        self.range.len()
    }
}

/// The bytes behind a checkpoint's tensors: an input file (mapped, or read), or bytes a reader
/// made.
enum Buffer {
    File(Input),
    Owned(Vec<u8>),
}

impl Buffer {
    fn bytes(&self) -> &[u8] {
        match self {
            Buffer::File(f) => f,
            Buffer::Owned(v) => v,
        }
    }
}

struct Source {
    path: PathBuf,
    buffer: Buffer,
}

/// A checkpoint opened for reading: tensors in file order, their bytes memory-mapped where the
/// format allows.
pub struct Checkpoint {
    path: PathBuf,
    sources: Vec<Source>,
    tensors: Vec<TensorEntry>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
    /// Files read into owned tensors besides `path` (an ONNX model's external data).
    also_read: Vec<PathBuf>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

impl Checkpoint {
    /// Opens a `.safetensors` file, or a sharded checkpoint (its `*.safetensors.index.json`, or a
    /// directory holding one).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return match find_index(path)? {
                Some(index) => sharded::open(&index),
                None => Err(Error::format(path, "directory holds no *.safetensors.index.json")),
            };
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let ck = if name.ends_with(".index.json") { sharded::open(path)? } else { Self::open_safetensors(path)? };
        ck.refuse_empty()
    }

    /// Parses safetensors `bytes` (read from `path`, which only names it in errors) as a
    /// checkpoint: the same validation as [`Checkpoint::open`], without a file.
    pub fn from_safetensors_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let mut ck = Checkpoint::empty(path);
        ck.metadata = ck.add_source(path, Buffer::Owned(bytes))?;
        ck.refuse_empty()
    }

    /// A checkpoint without tensors is of no use to any command (and averaging one would write
    /// an empty model): refuse it where it is read.
    fn refuse_empty(self) -> Result<Self> {
        if self.tensors.is_empty() {
            return Err(Error::format(&self.path, "holds no tensors"));
        }
        Ok(self)
    }

    fn open_safetensors(path: &Path) -> Result<Self> {
        let mut ck = Checkpoint::empty(path);
        let meta = ck.add_safetensors(path)?;
        ck.metadata = meta;
        Ok(ck)
    }

    /// A checkpoint with no tensors yet, named after `path`; [`Checkpoint::push_owned`] and
    /// [`Checkpoint::add_safetensors`] fill it.
    pub fn empty(path: &Path) -> Self {
        Checkpoint {
            path: path.to_path_buf(),
            sources: Vec::new(),
            tensors: Vec::new(),
            index: HashMap::new(),
            metadata: BTreeMap::new(),
            also_read: Vec::new(),
        }
    }

    /// Maps one safetensors file, validates its header and adds its tensors; returns its metadata.
    pub fn add_safetensors(&mut self, path: &Path) -> Result<BTreeMap<String, String>> {
        self.add_source(path, Buffer::File(map_input(path)?))
    }

    fn add_source(&mut self, path: &Path, buffer: Buffer) -> Result<BTreeMap<String, String>> {
        let bytes = buffer.bytes();
        let (header_len, meta) =
            ::safetensors::SafeTensors::read_metadata(bytes).map_err(|e| safetensors_error(path, bytes, e))?;
        // `read_metadata` checked that the header and every tensor's data lie within `bytes`.
        let data_start = 8 + header_len;
        let source = self.sources.len();
        let infos = meta.tensors();
        for name in meta.offset_keys() {
            let info = infos[&name];
            let (s, e) = info.data_offsets;
            self.push_from(
                path,
                TensorEntry {
                    role: Role::of(&name, info.dtype),
                    name,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    source,
                    range: data_start + s..data_start + e,
                },
            )?;
        }
        self.sources.push(Source { path: path.to_path_buf(), buffer });
        Ok(meta.metadata().clone().unwrap_or_default().into_iter().collect())
    }

    /// Adds an input file (of another format, mapped or read: [`map_input`]) as a source of
    /// tensor bytes, for [`Checkpoint::push_view`]; returns its source number.
    pub fn add_input(&mut self, path: &Path, input: Input) -> usize {
        self.sources.push(Source { path: path.to_path_buf(), buffer: Buffer::File(input) });
        self.sources.len() - 1
    }

    /// Adds a tensor whose bytes are `range` of source `source` (from [`Checkpoint::add_input`]),
    /// checking the range lies within it and holds the bytes of `shape`.
    pub fn push_view(
        &mut self,
        name: String,
        dtype: Dtype,
        shape: Vec<usize>,
        source: usize,
        range: Range<usize>,
    ) -> Result<()> {
        let Some(src) = self.sources.get(source) else {
            return Err(Error::tensor(&self.path, &name, format!("no source {source}")));
        };
        let file = src.path.clone();
        if range.start > range.end || range.end > src.buffer.bytes().len() {
            return Err(Error::tensor(
                &file,
                &name,
                format!("bytes {range:?} lie outside the file ({} bytes)", src.buffer.bytes().len()),
            ));
        }
        self.push_from(&file, TensorEntry { role: Role::of(&name, dtype), name, dtype, shape, source, range })
    }

    /// Adds a tensor whose bytes are owned (read out of another format).
    pub fn push_owned(&mut self, name: String, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) -> Result<()> {
        let source = self.sources.len();
        let range = 0..bytes.len();
        self.sources.push(Source { path: self.path.clone(), buffer: Buffer::Owned(bytes) });
        let path = self.path.clone();
        self.push_from(&path, TensorEntry { role: Role::of(&name, dtype), name, dtype, shape, source, range })
    }

    /// Adds a tensor read from `file` (named in errors), checking its bytes match its shape.
    fn push_from(&mut self, file: &Path, entry: TensorEntry) -> Result<()> {
        let expected =
            dtype::nbytes(entry.dtype, &entry.shape).map_err(|message| Error::tensor(file, &entry.name, message))?;
        if expected != entry.range.len() {
            return Err(Error::tensor(
                file,
                &entry.name,
                format!(
                    "holds {} bytes, shape {:?} of {:?} needs {expected}",
                    entry.range.len(),
                    entry.shape,
                    entry.dtype
                ),
            ));
        }
        if self.index.insert(entry.name.clone(), self.tensors.len()).is_some() {
            return Err(Error::tensor(file, &entry.name, "appears twice"));
        }
        self.tensors.push(entry);
        Ok(())
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// Sets the role of the tensor `name` (for formats whose names do not say it); false if there
    /// is no such tensor.
    pub fn set_role(&mut self, name: &str, role: Role) -> bool {
        match self.index.get(name) {
            Some(&i) => {
                self.tensors[i].role = role;
                true
            }
            None => false,
        }
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, tensor: &TensorEntry) -> &[u8] {
        &self.sources[tensor.source].buffer.bytes()[tensor.range.clone()]
    }

    /// The file holding a tensor (a shard, for sharded checkpoints).
    pub fn file_of(&self, tensor: &TensorEntry) -> &Path {
        &self.sources[tensor.source].path
    }

    /// The safetensors `__metadata__` (for a sharded checkpoint, the first shard's, plus the index's).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// True if its tensors are TensorFlow's or Keras' variables (read from their files, or an
    /// average of them: safetensors metadata `format` = `tf`): kernels in Keras' layouts and
    /// BatchNorm moving variances that are biased.
    pub fn is_tensorflow(&self) -> bool {
        self.metadata.get("format").is_some_and(|f| f == "tf")
    }

    /// Marks its tensors as TensorFlow's variables (for readers of TensorFlow's and Keras' files):
    /// [`Checkpoint::is_tensorflow`].
    pub fn mark_tensorflow(&mut self) {
        self.metadata.insert("format".into(), "tf".into());
    }

    /// The metadata, to fill in.
    pub fn metadata_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.metadata
    }

    /// Where the tensor called `name` comes from (a shard, for sharded checkpoints), if present.
    pub fn file_of_name(&self, name: &str) -> Option<&Path> {
        self.get(name).map(|t| self.file_of(t))
    }

    /// Records a file its owned tensors were read from (an ONNX model's external data), so that
    /// [`Checkpoint::files`] names it.
    pub fn add_file(&mut self, path: &Path) {
        self.also_read.push(path.to_path_buf());
    }

    /// Every file this checkpoint reads: the one it was opened from (a `.safetensors`, an index, a
    /// model), its shards and an ONNX model's external data. Outputs must never overwrite them.
    pub fn files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = Vec::new();
        let all = std::iter::once(&self.path).chain(self.sources.iter().map(|s| &s.path)).chain(&self.also_read);
        for f in all {
            if !files.contains(&f.as_path()) {
                files.push(f);
            }
        }
        files
    }

    /// A float tensor's values as f32, or an error naming it.
    pub fn f32_values(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.get(name).ok_or_else(|| Error::tensor(&self.path, name, "not in the checkpoint"))?;
        if !dtype::is_float(t.dtype) {
            return Err(Error::tensor(&self.path, name, format!("is {:?}, not floating point", t.dtype)));
        }
        Ok(dtype::to_f32(t.dtype, self.bytes(t)))
    }
}

fn safetensors_error(path: &Path, bytes: &[u8], e: ::safetensors::SafeTensorError) -> Error {
    use ::safetensors::SafeTensorError as E;
    let message = match &e {
        E::InvalidHeaderLength
        | E::HeaderTooSmall
        | E::HeaderTooLarge
        | E::InvalidHeaderStart
        | E::InvalidHeader(_) => {
            format!("not a safetensors file or truncated ({e})")
        }
        E::MetadataIncompleteBuffer => {
            "truncated or corrupt: the tensors' data does not end where the file ends".to_string()
        }
        E::InvalidOffset(name) => {
            return Error::tensor(path, name, "corrupt safetensors: data offsets overlap or lie outside the data")
        }
        E::TensorInvalidInfo | E::MisalignedSlice | E::ValidationOverflow => {
            if let Some((name, message)) = first_bad_tensor(bytes) {
                return Error::tensor(path, name, message);
            }
            format!("corrupt safetensors: a tensor's offsets do not match its shape and dtype ({e})")
        }
        _ => format!("corrupt safetensors header: {e}"),
    };
    Error::format(path, message)
}

/// The first tensor of a safetensors header whose data offsets disagree with its shape and dtype
/// (or whose dtype swa cannot read), and what is wrong with it: `safetensors` says only that one
/// does.
fn first_bad_tensor(bytes: &[u8]) -> Option<(String, String)> {
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(len)?)?).ok()?;
    #[derive(serde::Deserialize)]
    struct Info {
        dtype: Dtype,
        shape: Vec<usize>,
        data_offsets: (usize, usize),
    }
    header.into_iter().filter(|(k, _)| k != "__metadata__").find_map(|(name, v)| {
        let info: Info = serde_json::from_value(v).ok()?;
        let message = match dtype::nbytes(info.dtype, &info.shape) {
            Err(m) => m,
            Ok(n) if Some(n) != info.data_offsets.1.checked_sub(info.data_offsets.0) => format!(
                "data offsets {:?} hold {} bytes, shape {:?} of {:?} needs {n}",
                info.data_offsets,
                info.data_offsets.1.saturating_sub(info.data_offsets.0),
                info.shape,
                info.dtype
            ),
            Ok(_) => return None,
        };
        Some((name, message))
    })
}
