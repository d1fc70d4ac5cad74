//! Streaming writer of what `torch.save(state_dict)` writes: an `OrderedDict` of tensors in a zip
//! archive, loadable by `torch.load(weights_only=True)` and `model.load_state_dict`.
//!
//! [`TorchWriter::create`] lays out the whole archive (stored members, each storage's data
//! 64-byte aligned as PyTorch aligns it) and writes everything but the tensor data; tensor data is
//! written at known offsets from any thread; [`TorchWriter::finish`] computes the storages' CRC-32s
//! from the file (in parallel chunks, combined) and fills them into the headers. The archive is a
//! staged file beside its target, published by the caller as with the safetensors writer.
//!
//! Metadata goes into a separate member `NAME/swa_metadata.json`, which `torch.load` ignores: the
//! pickle holds only the tensors, exactly what `torch.save(state_dict)` holds, so loading needs no
//! global beyond those of every state dict (an `OrderedDict` attribute such as `_metadata` would
//! change what `load_state_dict` sees).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safetensors::Dtype;

use super::ops::Op;
use super::zip;
use crate::checkpoint::{dtype, TensorSpec};
use crate::error::{Error, Result};
use crate::fs::StagedFile;

/// The member holding the metadata, beside `data.pkl`.
pub const METADATA_MEMBER: &str = "swa_metadata.json";

/// Bytes hashed per task when computing CRC-32s.
const CRC_CHUNK: u64 = 16 << 20;

/// A torch.save archive being written into a temporary file beside its target.
pub struct TorchWriter {
    target: PathBuf,
    file: StagedFile,
    members: Vec<zip::Planned>,
    /// CRC-32 of each member, known for all but the tensors' (None until `finish`).
    crcs: Vec<Option<u32>>,
    /// The member holding each tensor's data.
    tensor_member: Vec<usize>,
    central_at: u64,
    force_zip64: bool,
}

/// The storage a tensor of `dtype` is saved with: a typed storage class, or (for dtypes that
/// PyTorch saves as bytes with `_rebuild_tensor_v3`) the dtype's name.
enum StorageOf {
    Typed(&'static str),
    Untyped(&'static str),
}

fn storage_of(dtype: Dtype) -> Option<StorageOf> {
    use StorageOf::{Typed, Untyped};
    Some(match dtype {
        Dtype::F64 => Typed("DoubleStorage"),
        Dtype::F32 => Typed("FloatStorage"),
        Dtype::F16 => Typed("HalfStorage"),
        Dtype::BF16 => Typed("BFloat16Storage"),
        Dtype::I64 => Typed("LongStorage"),
        Dtype::I32 => Typed("IntStorage"),
        Dtype::I16 => Typed("ShortStorage"),
        Dtype::I8 => Typed("CharStorage"),
        Dtype::U8 => Typed("ByteStorage"),
        Dtype::BOOL => Typed("BoolStorage"),
        Dtype::C64 => Typed("ComplexFloatStorage"),
        Dtype::U16 => Untyped("uint16"),
        Dtype::U32 => Untyped("uint32"),
        Dtype::U64 => Untyped("uint64"),
        Dtype::F8_E4M3 => Untyped("float8_e4m3fn"),
        Dtype::F8_E5M2 => Untyped("float8_e5m2"),
        Dtype::F8_E8M0 => Untyped("float8_e8m0fnu"),
        _ => return None,
    })
}

impl TorchWriter {
    /// Lays out the archive for `tensors` (in this order) and writes all but their data.
    pub fn create(target: &Path, tensors: &[TensorSpec], metadata: &BTreeMap<String, String>) -> Result<Self> {
        Self::create_with(target, tensors, metadata, false)
    }

    /// [`TorchWriter::create`]; `force_zip64` writes zip64 records whatever the sizes (to test
    /// them without 4 GiB files).
    pub(super) fn create_with(
        target: &Path,
        tensors: &[TensorSpec],
        metadata: &BTreeMap<String, String>,
        force_zip64: bool,
    ) -> Result<Self> {
        let mut names = HashSet::with_capacity(tensors.len());
        let mut sizes = Vec::with_capacity(tensors.len());
        for t in tensors {
            if storage_of(t.dtype).is_none() {
                return Err(Error::tensor(target, &t.name, format!("dtype {:?} cannot be saved for PyTorch", t.dtype)));
            }
            sizes.push(dtype::nbytes(t.dtype, &t.shape).map_err(|m| Error::tensor(target, &t.name, m))?);
            if !names.insert(t.name.as_str()) {
                return Err(Error::tensor(target, &t.name, "appears twice"));
            }
        }
        let archive = archive_name(target);
        let mut small: Vec<(String, Vec<u8>)> = vec![
            (format!("{archive}/data.pkl"), state_dict_pickle(tensors)),
            (format!("{archive}/.format_version"), b"1".to_vec()),
            (format!("{archive}/.storage_alignment"), zip::ALIGNMENT.to_string().into_bytes()),
            (format!("{archive}/byteorder"), b"little".to_vec()),
        ];
        let mut after = vec![(format!("{archive}/version"), b"3\n".to_vec())];
        if !metadata.is_empty() {
            let json = serde_json::to_vec_pretty(metadata).expect("a string map serialises");
            after.push((format!("{archive}/{METADATA_MEMBER}"), json));
        }
        let mut list: Vec<(String, u64)> = small.iter().map(|(n, b)| (n.clone(), b.len() as u64)).collect();
        let first_tensor = list.len();
        list.extend(sizes.iter().enumerate().map(|(i, &n)| (format!("{archive}/data/{i}"), n as u64)));
        list.extend(after.iter().map(|(n, b)| (n.clone(), b.len() as u64)));
        let (members, central_at) = zip::plan(&list, force_zip64).map_err(|e| Error::format(target, e))?;
        let tensor_member: Vec<usize> = (first_tensor..first_tensor + tensors.len()).collect();
        small.extend(after);
        let mut crcs = vec![None; members.len()];
        let file = StagedFile::beside(target)?;
        // The whole archive's space up front, as the safetensors writer reserves it: a full disk
        // fails here, not after the tensors were computed.
        let central_len = zip::central(&members, &vec![0; members.len()], central_at, force_zip64).len() as u64;
        file.reserve(central_at + central_len)?;
        let io = |e| Error::io(target, e);
        let f = file.as_file();
        for (i, m) in members.iter().enumerate() {
            f.write_all_at(&m.local, m.header).map_err(io)?;
            if !(first_tensor..first_tensor + tensors.len()).contains(&i) {
                let (_, bytes) = small.iter().find(|(n, _)| *n == m.name).expect("a small member");
                f.write_all_at(bytes, m.data).map_err(io)?;
                crcs[i] = Some(crc32fast::hash(bytes));
            }
        }
        for &i in &tensor_member {
            if members[i].size == 0 {
                crcs[i] = Some(0);
            }
        }
        let provisional: Vec<u32> = crcs.iter().map(|c| c.unwrap_or(0)).collect();
        let central = zip::central(&members, &provisional, central_at, force_zip64);
        f.write_all_at(&central, central_at).map_err(io)?;
        f.set_len(central_at + central.len() as u64).map_err(io)?;
        Ok(TorchWriter { target: target.to_path_buf(), file, members, crcs, tensor_member, central_at, force_zip64 })
    }

    /// Writes `bytes` at byte `at` of tensor number `index`'s data. Safe to call from many threads.
    pub fn write_at(&self, index: usize, at: usize, bytes: &[u8]) -> Result<()> {
        let member = self.tensor_member.get(index).map(|&i| &self.members[i]);
        let fits = member.is_some_and(|m| (at as u64).checked_add(bytes.len() as u64).is_some_and(|e| e <= m.size));
        let Some(member) = member.filter(|_| fits) else {
            return Err(Error::format(
                &self.target,
                format!("write of {} bytes at byte {at} of tensor {index} lies outside its data", bytes.len()),
            ));
        };
        self.file.write_at(bytes, member.data + at as u64)
    }

    /// Computes the storages' CRC-32s from the file, fills them into the headers and flushes to
    /// disk; the file is complete, ready to publish (alone or with others).
    pub fn finish(self) -> Result<StagedFile> {
        let f = self.file.as_file();
        // Chunks of every member whose CRC is unknown, hashed in parallel then combined in order.
        let chunks: Vec<(usize, u64, u64)> = self
            .crcs
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_none())
            .flat_map(|(i, _)| {
                let m = &self.members[i];
                (0..m.size.div_ceil(CRC_CHUNK)).map(move |c| {
                    let start = c * CRC_CHUNK;
                    (i, m.data + start, (m.size - start).min(CRC_CHUNK))
                })
            })
            .collect();
        let hashed: Vec<(usize, crc32fast::Hasher)> = chunks
            .par_iter()
            .map(|&(i, at, len)| {
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, at).map_err(|e| Error::io(&self.target, e))?;
                let mut h = crc32fast::Hasher::new();
                h.update(&buf);
                Ok((i, h))
            })
            .collect::<Result<_>>()?;
        let mut combined: HashMap<usize, crc32fast::Hasher> = HashMap::new();
        for (i, h) in hashed {
            match combined.get_mut(&i) {
                Some(acc) => acc.combine(&h),
                None => {
                    combined.insert(i, h);
                }
            }
        }
        let io = |e| Error::io(&self.target, e);
        let central_crcs = zip::central_crc_offsets(&self.members, self.central_at, self.force_zip64);
        for (i, h) in combined {
            let crc = h.finalize().to_le_bytes();
            f.write_all_at(&crc, self.members[i].header + zip::CRC_AT).map_err(io)?;
            f.write_all_at(&crc, central_crcs[i]).map_err(io)?;
        }
        self.file.sync()?;
        Ok(self.file)
    }
}

/// The archive's top directory: the target's stem, as PyTorch names it, when it is plain ASCII;
/// else `archive` (what PyTorch uses for in-memory saves).
fn archive_name(target: &Path) -> String {
    let stem = target.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let plain =
        !stem.is_empty() && stem.len() <= 100 && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if plain && !stem.starts_with('.') {
        stem.to_string()
    } else {
        "archive".to_string()
    }
}

// -------------------------------------------------------------------------------------------------
// The pickle
// -------------------------------------------------------------------------------------------------

/// Builds protocol-2 pickles from the opcodes `torch.save` uses.
#[derive(Default)]
pub(super) struct PickleOut {
    pub bytes: Vec<u8>,
    globals: HashMap<String, u32>,
    memo: u32,
}

impl PickleOut {
    pub fn new() -> Self {
        let mut p = PickleOut::default();
        p.op(Op::Proto).arg(&[2]);
        p
    }

    pub fn op(&mut self, op: Op) -> &mut Self {
        self.bytes.push(op as u8);
        self
    }

    /// An opcode's argument, after it.
    pub fn arg(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    pub fn mark(&mut self) -> &mut Self {
        self.op(Op::Mark)
    }

    /// A global, written once and then fetched from the memo.
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        let key = format!("{module}\n{name}\n");
        if let Some(&id) = self.globals.get(&key) {
            self.op(Op::LongBinGet).arg(&id.to_le_bytes());
        } else {
            self.op(Op::Global).arg(key.as_bytes());
            let id = self.memo;
            self.op(Op::LongBinPut).arg(&id.to_le_bytes());
            self.globals.insert(key, id);
            self.memo += 1;
        }
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.op(Op::BinUnicode).arg(&(s.len() as u32).to_le_bytes()).arg(s.as_bytes())
    }

    pub fn int(&mut self, v: u64) -> &mut Self {
        if v < 0x100 {
            self.op(Op::BinInt1).arg(&[v as u8]);
        } else if v < 0x1_0000 {
            self.op(Op::BinInt2).arg(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as u64 {
            self.op(Op::BinInt).arg(&(v as i32).to_le_bytes());
        } else {
            // LONG1 of 9 bytes: little-endian, with a zero byte keeping it positive.
            self.op(Op::Long1).arg(&[9]).arg(&v.to_le_bytes()).arg(&[0]);
        }
        self
    }

    /// A tuple of integers.
    pub fn ints(&mut self, values: &[u64]) -> &mut Self {
        self.mark();
        for &v in values {
            self.int(v);
        }
        self.op(Op::Tuple)
    }

    /// `OrderedDict()`.
    pub fn ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(Op::EmptyTuple).op(Op::Reduce)
    }

    /// A tensor over all of storage `key`: `_rebuild_tensor_v2(storage, 0, shape, stride, False,
    /// OrderedDict())`, or `_v3` with the dtype for dtypes saved as untyped storages.
    pub fn tensor(&mut self, key: &str, dtype: Dtype, shape: &[usize]) -> &mut Self {
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut stride = vec![0u64; shape.len()];
        let mut s = 1u64;
        for (d, &n) in shape.iter().enumerate().rev() {
            stride[d] = s;
            s = s.saturating_mul(n);
        }
        let numel = shape.iter().product::<u64>();
        let storage = storage_of(dtype).expect("checked by create");
        let v3 = matches!(storage, StorageOf::Untyped(_));
        self.global("torch._utils", if v3 { "_rebuild_tensor_v3" } else { "_rebuild_tensor_v2" });
        self.mark().mark().str("storage");
        let storage_numel = match storage {
            StorageOf::Typed(class) => {
                self.global("torch", class);
                numel
            }
            StorageOf::Untyped(_) => {
                self.global("torch.storage", "UntypedStorage");
                numel * dtype::width(dtype) as u64
            }
        };
        self.str(key).str("cpu").int(storage_numel).op(Op::Tuple).op(Op::BinPersId);
        self.int(0).ints(&shape).ints(&stride).op(Op::NewFalse).ordered_dict();
        if let StorageOf::Untyped(name) = storage {
            self.global("torch", name);
        }
        self.op(Op::Tuple).op(Op::Reduce)
    }
}

/// `OrderedDict(name → tensor)`, tensor `i` over storage `data/<i>`, items in batches of 1000 as
/// Python's pickler writes them.
fn state_dict_pickle(tensors: &[TensorSpec]) -> Vec<u8> {
    let mut p = PickleOut::new();
    p.ordered_dict();
    for (batch, chunk) in tensors.chunks(1000).enumerate() {
        p.mark();
        for (j, t) in chunk.iter().enumerate() {
            p.str(&t.name).tensor(&(batch * 1000 + j).to_string(), t.dtype, &t.shape);
        }
        p.op(Op::SetItems);
    }
    p.op(Op::Stop);
    p.bytes
}

impl crate::checkpoint::format::TensorWriter for TorchWriter {
    fn write_at(&self, index: usize, at: usize, bytes: &[u8]) -> Result<()> {
        TorchWriter::write_at(self, index, at, bytes)
    }

    fn finish(self: Box<Self>) -> Result<crate::fs::Outputs> {
        Ok(vec![TorchWriter::finish(*self)?].into())
    }
}
