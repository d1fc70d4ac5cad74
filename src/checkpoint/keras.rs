//! Keras files: Keras 3 `.weights.h5` (`model.save_weights`, `ModelCheckpoint(save_weights_only=True)`),
//! the `model.weights.h5` inside a Keras 3 `.keras` zip, and Keras 2 (`tf-keras`) `.h5` files, whole
//! models (`model_weights/…`) or weights only. HDF5 is read by [`super::hdf5`] (pure Rust, the subset
//! h5py writes by default); contiguous datasets are views into the mapped file (a `.keras` zip
//! stores its members uncompressed, so those are too).
//!
//! Names are dataset paths: Keras 3's `layers/conv2d/vars/0` (a layer's variables by position),
//! Keras 2's `conv2d/conv2d/kernel:0` (below `model_weights/` for a whole model). The optimizer's
//! datasets (`optimizer/…`, `optimizer_weights/…`) are not weights and are not read. BatchNorm
//! statistics: Keras 2 names them (`moving_mean:0`, `moving_variance:0`); Keras 3's `vars/N` do not,
//! but Keras 3 names a layer's group after its class, whatever the layer's own name
//! (`layers/batch_normalization_1` for `BatchNormalization(name="bn2")`): a layer is a
//! BatchNormalization where its group says so, and then its last two variables are the moving mean
//! and variance (gamma and beta come first where the layer has them). A layer of another group name
//! that looks like one (four vectors of one length, a subclass) is taken for one with a warning
//! naming it.
//!
//! The writer writes a file like the newest input's HDF5 (its groups, the optimizer's datasets,
//! every byte of it), the output's tensors in place of the datasets of the same names, so Keras'
//! `model.load_weights` reads it as it read the input.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use safetensors::Dtype;

use super::format::{has_suffix, Claim, Format, Probe, TensorWriter};
use super::hdf5::{self, Storage, Type};
use super::{dtype, Checkpoint, Role, TensorSpec};
use crate::error::{Error, Result};
use crate::fs::{map_input, Input, Outputs, StagedFile};

/// HDF5's signature (a file without a user block).
const HDF5_SIGNATURE: &[u8] = b"\x89HDF\r\n\x1a\n";
/// The weights member of a `.keras` zip.
const KERAS_WEIGHTS: &str = "model.weights.h5";

/// Keras' files.
pub struct Keras;

const SUFFIXES: &[&str] = &[".weights.h5", ".keras", ".h5", ".hdf5"];

/// An HDF5 file's bytes: where they lie in the file read (a `.keras` zip's member is a range of it,
/// or decompressed).
struct H5 {
    input: Input,
    /// Where the HDF5 bytes start in `input`.
    base: usize,
    len: usize,
}

impl H5 {
    fn bytes(&self) -> &[u8] {
        &self.input[self.base..self.base + self.len]
    }
}

fn read_h5(path: &Path) -> Result<H5> {
    let input = map_input(path)?;
    if input.starts_with(HDF5_SIGNATURE) {
        let len = input.len();
        return Ok(H5 { input, base: 0, len });
    }
    if !input.starts_with(b"PK\x03\x04") {
        return Err(Error::format(path, "not an HDF5 file (no HDF5 signature) nor a .keras zip"));
    }
    let bad = |e: zip::result::ZipError| Error::format(path, format!("corrupt .keras zip: {e}"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&input[..])).map_err(bad)?;
    let mut member =
        zip.by_name(KERAS_WEIGHTS).map_err(|_| Error::format(path, format!("a .keras zip without {KERAS_WEIGHTS}")))?;
    let size = usize::try_from(member.size()).map_err(|_| Error::format(path, "a huge member"))?;
    if member.compression() == zip::CompressionMethod::Stored {
        let start = usize::try_from(member.data_start()).unwrap_or(usize::MAX);
        if start.checked_add(size).is_some_and(|end| end <= input.len()) {
            drop(member);
            drop(zip);
            return Ok(H5 { input, base: start, len: size });
        }
        return Err(Error::format(path, format!("{KERAS_WEIGHTS} lies outside the zip (truncated?)")));
    }
    let mut bytes = Vec::new();
    member.by_ref().take(size as u64).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    let len = bytes.len();
    drop(member);
    Ok(H5 { input: Input::Read(bytes), base: 0, len })
}

/// A dataset swa reads: its name, type, shape and bytes (range of the HDF5 bytes).
struct Var {
    name: String,
    path: String,
    dtype: Dtype,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

fn dtype_of(t: &Type) -> Option<Dtype> {
    Some(match t {
        Type::Float { bytes: 2 } => Dtype::F16,
        Type::Float { bytes: 4 } => Dtype::F32,
        Type::Float { bytes: 8 } => Dtype::F64,
        Type::Int { bytes: 1, signed: true } => Dtype::I8,
        Type::Int { bytes: 1, signed: false } => Dtype::U8,
        Type::Int { bytes: 2, signed: true } => Dtype::I16,
        Type::Int { bytes: 2, signed: false } => Dtype::U16,
        Type::Int { bytes: 4, signed: true } => Dtype::I32,
        Type::Int { bytes: 4, signed: false } => Dtype::U32,
        Type::Int { bytes: 8, signed: true } => Dtype::I64,
        Type::Int { bytes: 8, signed: false } => Dtype::U64,
        Type::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// The model's datasets of a parsed Keras file, named (see the module's docs).
fn vars(path: &Path, file: &hdf5::File, len: usize) -> Result<Vec<Var>> {
    let whole_model = file.datasets.iter().any(|d| d.path.starts_with("model_weights/"));
    let mut out = Vec::new();
    for d in &file.datasets {
        let name = if whole_model {
            match d.path.strip_prefix("model_weights/") {
                Some(n) => n.to_string(),
                None => continue,
            }
        } else if d.path.starts_with("optimizer/") || d.path.starts_with("optimizer_weights/") {
            continue;
        } else {
            d.path.clone()
        };
        let dt = dtype_of(&d.dtype).ok_or_else(|| {
            let what = match &d.dtype {
                Type::Other(s) => s.clone(),
                t => format!("{t:?}"),
            };
            Error::tensor(path, &d.path, format!("is {what}: swa reads little-endian numbers"))
        })?;
        let shape: Vec<usize> = d
            .shape
            .iter()
            .map(|&s| usize::try_from(s).map_err(|_| Error::tensor(path, &d.path, "has a huge dimension")))
            .collect::<Result<_>>()?;
        let range =
            match &d.storage {
                Storage::Contiguous { offset, len: n } | Storage::Compact { offset, len: n } => {
                    let start = usize::try_from(*offset).unwrap_or(usize::MAX);
                    let end = usize::try_from(*n).ok().and_then(|n| start.checked_add(n)).unwrap_or(usize::MAX);
                    if end > len {
                        return Err(Error::tensor(path, &d.path, "its data lies outside the file (truncated?)"));
                    }
                    start..end
                }
                Storage::Unallocated if shape.contains(&0) => 0..0,
                Storage::Unallocated => return Err(Error::tensor(path, &d.path, "has no data (never written)")),
                Storage::Chunked => return Err(Error::tensor(
                    path,
                    &d.path,
                    "is chunked: swa reads contiguous datasets, as Keras writes them (re-save the weights with Keras)",
                )),
                Storage::Filtered(f) => {
                    return Err(Error::tensor(
                        path,
                        &d.path,
                        format!("is compressed ({f}): swa reads uncompressed datasets, as Keras writes them"),
                    ))
                }
                Storage::Virtual => return Err(Error::tensor(path, &d.path, "is a virtual dataset: not read")),
            };
        if dtype::nbytes(dt, &shape).ok() != Some(range.len()) {
            return Err(Error::tensor(
                path,
                &d.path,
                format!("holds {} bytes, not those of {shape:?} {dt:?}", range.len()),
            ));
        }
        out.push(Var { name, path: d.path.clone(), dtype: dt, shape, range });
    }
    Ok(out)
}

/// The layer a Keras 3 variable belongs to (`layers/bn/vars/2` → `layers/bn`) and its position.
fn layer_of(name: &str) -> Option<(&str, usize)> {
    let (layer, n) = name.rsplit_once("/vars/")?;
    Some((layer, n.parse().ok()?))
}

fn is_default_bn_name(layer: &str) -> bool {
    let last = layer.rsplit('/').next().unwrap_or(layer);
    let stem = last.trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches('_');
    stem == "batch_normalization" || stem == "sync_batch_normalization"
}

/// The BatchNorm roles of a Keras file's weights: Keras 3's by layer ([`keras3_roles`]), Keras 2's
/// by name.
fn roles(path: &Path, vars: &[Var]) -> Vec<(String, Role)> {
    if vars.iter().any(|v| layer_of(&v.name).is_some()) {
        keras3_roles(path, vars)
    } else {
        vars.iter().filter_map(|v| Some((v.name.clone(), super::tf_bundle::role_of(&v.name)?))).collect()
    }
}

/// BatchNorm roles of Keras 3 positional variables: the last two of each BatchNormalization layer.
fn keras3_roles(path: &Path, vars: &[Var]) -> Vec<(String, Role)> {
    let mut layers: BTreeMap<&str, Vec<(usize, &Var)>> = BTreeMap::new();
    for v in vars {
        if let Some((layer, n)) = layer_of(&v.name) {
            layers.entry(layer).or_default().push((n, v));
        }
    }
    let mut roles = Vec::new();
    for (layer, mut vs) in layers {
        vs.sort_by_key(|(n, _)| *n);
        let looks = vs.len() == 4 && vs.iter().all(|(_, v)| v.shape.len() == 1 && v.shape == vs[0].1.shape);
        let is_bn = if is_default_bn_name(layer) {
            true
        } else if looks {
            crate::error::warn(format!(
                "{}: layer `{layer}` holds four vectors of one length, as a BatchNormalization does: \
                 its vars/2 and vars/3 are taken for the moving mean and variance",
                path.display()
            ));
            true
        } else {
            false
        };
        if is_bn && vs.len() >= 2 {
            roles.push((vs[vs.len() - 2].1.name.clone(), Role::RunningMean));
            roles.push((vs[vs.len() - 1].1.name.clone(), Role::RunningVar));
        }
    }
    roles
}

fn parse(path: &Path, h5: &H5) -> Result<Vec<Var>> {
    let file = hdf5::parse(h5.bytes()).map_err(|m| Error::format(path, format!("HDF5: {m}")))?;
    vars(path, &file, h5.len)
}

/// A weight as [`weights_of`] lists it: name, type, shape, byte range and BatchNorm role.
pub type Weight = (String, Dtype, Vec<usize>, std::ops::Range<usize>, Option<Role>);

/// The weights of a Keras HDF5 file's bytes (read from `path`, which names it in errors), as
/// reading it names and checks them: name, type, shape, byte range and BatchNorm role. For the fuzz
/// target and tests.
pub fn weights_of(path: &Path, bytes: &[u8]) -> Result<Vec<Weight>> {
    let file = hdf5::parse(bytes).map_err(|m| Error::format(path, format!("HDF5: {m}")))?;
    let vars = vars(path, &file, bytes.len())?;
    let roles: HashMap<String, Role> = roles(path, &vars).into_iter().collect();
    Ok(vars
        .into_iter()
        .map(|v| {
            let role = roles.get(&v.name).copied();
            (v.name, v.dtype, v.shape, v.range, role)
        })
        .collect())
}

fn open(path: &Path, key: Option<&str>) -> Result<Checkpoint> {
    if let Some(k) = key.filter(|k| !k.is_empty()) {
        return Err(Error::format(path, format!("no `{k}` in a Keras file: it holds one set of weights")));
    }
    let h5 = read_h5(path)?;
    let vars = parse(path, &h5)?;
    let roles = roles(path, &vars);
    let base = h5.base;
    let mut ck = Checkpoint::empty(path);
    let source = ck.add_input(path, h5.input);
    for v in vars {
        let range = v.range.start + base..v.range.end + base;
        ck.push_view(v.name, v.dtype, v.shape, source, range)?;
    }
    for (name, role) in roles {
        ck.set_role(&name, role);
    }
    ck.mark_tensorflow();
    Ok(ck)
}

impl Format for Keras {
    fn name(&self) -> &'static str {
        "Keras"
    }

    fn suffixes(&self) -> &'static [&'static str] {
        SUFFIXES
    }

    /// HDF5 files of any name (`Content`; `Certain` when also named so), `.keras` zips by name and
    /// signature (`Certain`, above `torch.save`'s claim of every zip).
    fn claim(&self, probe: &Probe) -> Option<Claim> {
        if probe.is_dir {
            return None;
        }
        let hdf5 = probe.head.starts_with(HDF5_SIGNATURE);
        let keras_zip = probe.named(&[".keras"]) && probe.head.starts_with(b"PK\x03\x04");
        match (probe.named(SUFFIXES), hdf5 || keras_zip) {
            (true, true) => Some(Claim::Certain),
            (false, true) => Some(Claim::Content),
            (true, false) => Some(Claim::Name),
            (false, false) => None,
        }
    }

    fn open(&self, path: &Path, key: Option<&str>) -> Result<Checkpoint> {
        open(path, key)
    }

    fn native_output(&self, like: &Path) -> Option<&'static str> {
        let name = like.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Some(if has_suffix(&name, ".weights.h5") || has_suffix(&name, ".keras") { "swa.weights.h5" } else { "swa.h5" })
    }

    fn writes(&self, name: &str) -> bool {
        [".weights.h5", ".h5", ".hdf5", ".keras"].iter().any(|s| has_suffix(name, s))
    }

    fn writer(
        &self,
        target: &Path,
        tensors: &[TensorSpec],
        _metadata: &BTreeMap<String, String>,
        like: Option<&Path>,
    ) -> Result<Box<dyn TensorWriter>> {
        let like = like.ok_or_else(|| no_template(target))?;
        if !is_keras(like) {
            return Err(no_template(target));
        }
        Ok(Box::new(KerasWriter::create(target, tensors, like)?))
    }
}

fn is_keras(path: &Path) -> bool {
    let head = super::format::head(path);
    head.starts_with(HDF5_SIGNATURE) || head.starts_with(b"PK\x03\x04") && has_suffix(&path.to_string_lossy(), ".keras")
}

fn no_template(target: &Path) -> Error {
    Error::format(
        target,
        "a Keras weights file is written like a Keras file read (its groups and optimizer): the newest \
         input is not one; write .safetensors",
    )
}

/// A Keras file being written like a template (see the module's docs).
struct KerasWriter {
    file: StagedFile,
    /// Per output tensor: where its bytes go.
    offsets: Vec<usize>,
}

impl KerasWriter {
    fn create(target: &Path, tensors: &[TensorSpec], like: &Path) -> Result<KerasWriter> {
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if has_suffix(&name, ".keras") {
            return Err(Error::format(
                target,
                "swa writes a Keras model's weights, not a .keras archive: name it NAME.weights.h5 \
                 (`model.load_weights` reads it)",
            ));
        }
        let h5 = read_h5(like)?;
        let vars = parse(like, &h5)?;
        let keras3 = vars.iter().any(|v| layer_of(&v.name).is_some());
        if keras3 != has_suffix(&name, ".weights.h5") {
            return Err(Error::format(
                target,
                if keras3 {
                    "the inputs are Keras 3 weights, which Keras 3 loads from a file named NAME.weights.h5"
                } else {
                    "the inputs are Keras 2 (tf-keras) weights: name the output NAME.h5 (Keras 3 reads \
                     NAME.weights.h5 files in its own layout)"
                },
            ));
        }
        let by_name: HashMap<&str, &Var> = vars.iter().map(|v| (v.name.as_str(), v)).collect();
        let mut offsets = Vec::with_capacity(tensors.len());
        for t in tensors {
            let v = by_name.get(t.name.as_str()).ok_or_else(|| {
                Error::tensor(
                    target,
                    &t.name,
                    format!("is not a dataset of {}, which the output is written like", like.display()),
                )
            })?;
            if v.dtype != t.dtype || v.shape != t.shape || dtype::nbytes(t.dtype, &t.shape).ok() != Some(v.range.len())
            {
                return Err(Error::tensor(
                    target,
                    &t.name,
                    format!(
                        "is {:?} {:?} but {:?} {:?} in {} ({})",
                        t.dtype,
                        t.shape,
                        v.dtype,
                        v.shape,
                        like.display(),
                        v.path
                    ),
                ));
            }
            offsets.push(v.range.start);
        }
        let file = StagedFile::with_bytes(target, h5.bytes())?;
        Ok(KerasWriter { file, offsets })
    }
}

impl TensorWriter for KerasWriter {
    fn write_at(&self, index: usize, at: usize, bytes: &[u8]) -> Result<()> {
        self.file.write_at(bytes, (self.offsets[index] + at) as u64)
    }

    fn finish(self: Box<Self>) -> Result<Outputs> {
        self.file.sync()?;
        Ok(vec![self.file].into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_batchnorm_names() {
        assert!(is_default_bn_name("layers/batch_normalization"));
        assert!(is_default_bn_name("layers/batch_normalization_12"));
        assert!(!is_default_bn_name("layers/conv2d"));
        assert_eq!(layer_of("layers/bn/vars/3"), Some(("layers/bn", 3)));
    }
}
