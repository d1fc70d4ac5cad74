//! ONNX models: reading and writing (`prost` over the official `onnx.proto`, external data
//! included), initializers as tensors, weight binding ([`bind`]) and the BatchNorm rewrite ([`bn`]).

pub mod bind;
pub mod bn;
pub mod layout;
#[allow(missing_docs, clippy::all)]
pub mod proto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;
use safetensors::Dtype;

pub use proto::attribute_proto::AttributeType;
pub use proto::tensor_proto::{DataLocation, DataType};
pub use proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

use crate::checkpoint::{dtype, Checkpoint};
use crate::error::{Error, Result};
use crate::fs::{map_input, Input, Outputs, StagedFile};

/// An ONNX model's initializers, read as a checkpoint under their ONNX names (for averaging
/// exported models, and for `inspect`).
pub struct Initializers;

impl crate::checkpoint::Format for Initializers {
    fn name(&self) -> &'static str {
        "ONNX"
    }

    fn suffixes(&self) -> &'static [&'static str] {
        &[".onnx"]
    }

    fn claim(&self, probe: &crate::checkpoint::format::Probe) -> Option<crate::checkpoint::format::Claim> {
        (!probe.is_dir && probe.named(self.suffixes())).then_some(crate::checkpoint::format::Claim::Certain)
    }

    fn open(&self, path: &Path, _key: Option<&str>) -> Result<Checkpoint> {
        Model::load(path)?.checkpoint()
    }

    /// The model and its external data.
    fn files(&self, path: &Path) -> Result<Vec<PathBuf>> {
        Ok(Model::load(path)?.files().to_vec())
    }
}

/// Initializers larger than this are written as external data when the model would not fit in a
/// protobuf message (2 GiB).
const EXTERNAL_THRESHOLD: usize = 1024;
const PROTOBUF_LIMIT: usize = 1 << 31;

/// An ONNX model in memory, with external data resolved into the initializers.
#[derive(Debug, Clone)]
pub struct Model {
    /// Where it was read from.
    pub path: PathBuf,
    /// The decoded protobuf.
    pub proto: ModelProto,
    /// The files it was read from: the model and its external data.
    files: Vec<PathBuf>,
}

/// The element types that have a safetensors dtype, and that dtype.
const DTYPES: [(DataType, Dtype); 13] = [
    (DataType::Float, Dtype::F32),
    (DataType::Uint8, Dtype::U8),
    (DataType::Int8, Dtype::I8),
    (DataType::Uint16, Dtype::U16),
    (DataType::Int16, Dtype::I16),
    (DataType::Int32, Dtype::I32),
    (DataType::Int64, Dtype::I64),
    (DataType::Bool, Dtype::BOOL),
    (DataType::Float16, Dtype::F16),
    (DataType::Double, Dtype::F64),
    (DataType::Uint32, Dtype::U32),
    (DataType::Uint64, Dtype::U64),
    (DataType::Bfloat16, Dtype::BF16),
];

/// Where a model written to `path` puts its external data: `<name>.data` beside it.
pub fn data_file(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{name}.data"))
}

/// The safetensors dtype of an ONNX element type (`TensorProto.data_type`).
pub fn dtype_of(elem_type: i32) -> Option<Dtype> {
    DTYPES.iter().find(|(e, _)| *e as i32 == elem_type).map(|&(_, d)| d)
}

/// The ONNX element type of a safetensors dtype.
pub fn elem_of(dtype: Dtype) -> Option<i32> {
    DTYPES.iter().find(|(_, d)| *d == dtype).map(|&(e, _)| e as i32)
}

/// True for the floating-point ONNX element types that hold weights (float, double, float16, bfloat16).
pub fn is_float_elem(elem_type: i32) -> bool {
    dtype_of(elem_type).is_some_and(dtype::is_float)
}

/// The node's name, or its first output where it has none: what errors call it.
pub fn node_label(node: &NodeProto) -> String {
    if !node.name().is_empty() {
        node.name().to_string()
    } else {
        node.output.first().cloned().unwrap_or_default()
    }
}

/// An attribute of a node, by name.
pub fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

/// The attribute `name` of `node` if present, checked to be of type `kind` (an attribute without a
/// type is taken at its word); an error names the node, its operator and the attribute.
fn typed_attribute<'a>(node: &'a NodeProto, name: &str, kind: AttributeType) -> Result<Option<&'a AttributeProto>> {
    let Some(a) = attribute(node, name) else { return Ok(None) };
    if a.r#type.is_some() && a.r#type() != kind {
        return Err(Error::node(
            node_label(node),
            node.op_type(),
            format!("attribute `{name}` is {:?}, expected {kind:?}", a.r#type()),
        ));
    }
    Ok(Some(a))
}

/// A float attribute, with its default.
pub fn attr_f(node: &NodeProto, name: &str, default: f32) -> Result<f32> {
    Ok(typed_attribute(node, name, AttributeType::Float)?.and_then(|a| a.f).unwrap_or(default))
}

/// An integer attribute, with its default.
pub fn attr_i(node: &NodeProto, name: &str, default: i64) -> Result<i64> {
    Ok(typed_attribute(node, name, AttributeType::Int)?.and_then(|a| a.i).unwrap_or(default))
}

/// The element types of model inputs swa feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputType {
    /// float32: images, features.
    Float,
    /// int64: token ids, indices.
    Int64,
}

/// A model input: name, element type, and the shape it declares (−1 for symbolic dimensions).
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// Input name.
    pub name: String,
    /// Declared shape.
    pub dims: Vec<i64>,
    /// Element type.
    pub elem: InputType,
}

impl InputSpec {
    /// A float32 input.
    pub fn float(name: impl Into<String>, dims: Vec<i64>) -> Self {
        InputSpec { name: name.into(), dims, elem: InputType::Float }
    }

    /// Fails unless the input takes float32 values (what `path` gives, such as images, is float).
    pub fn check_float(&self, path: &Path) -> Result<()> {
        match self.elem {
            InputType::Float => Ok(()),
            InputType::Int64 => Err(Error::format(
                path,
                format!("holds images (float32 values), but model input `{}` takes int64 values", self.name),
            )),
        }
    }
}

/// The model's inputs; element types other than float32 and int64 are rejected.
pub fn input_specs(model: &Model) -> Result<Vec<InputSpec>> {
    use proto::{tensor_shape_proto::dimension::Value, type_proto};
    let mut specs = Vec::new();
    for input in model.inputs() {
        let Some(type_proto::Value::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return Err(Error::format(&model.path, format!("input `{}` is not a tensor", input.name())));
        };
        let elem = match t.elem_type() {
            e if e == DataType::Float as i32 => InputType::Float,
            e if e == DataType::Int64 as i32 => InputType::Int64,
            e => {
                return Err(Error::format(
                    &model.path,
                    format!(
                        "input `{}` has element type {}; swa feeds float32 and int64 inputs",
                        input.name(),
                        dtype_of(e).map_or(format!("{e}"), dtype::name)
                    ),
                ))
            }
        };
        let dims = t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Value::DimValue(v)) => v,
                        _ => -1,
                    })
                    .collect()
            })
            .unwrap_or_default();
        specs.push(InputSpec { name: input.name().to_string(), dims, elem });
    }
    Ok(specs)
}

/// Builds a node.
pub fn node(op: &str, name: String, inputs: &[&str], outputs: &[&str], attributes: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attributes,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn ints_attr(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto { name: Some(name.into()), ints: values.to_vec(), ..Default::default() };
    a.set_type(AttributeType::Ints);
    a
}

/// An integer attribute.
pub fn int_attr(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto { name: Some(name.into()), i: Some(value), ..Default::default() };
    a.set_type(AttributeType::Int);
    a
}

/// A float attribute.
pub fn float_attr(name: &str, value: f32) -> AttributeProto {
    let mut a = AttributeProto { name: Some(name.into()), f: Some(value), ..Default::default() };
    a.set_type(AttributeType::Float);
    a
}

/// A tensor initializer from raw little-endian bytes.
pub fn tensor(name: &str, dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: elem_of(dtype),
        dims: shape.iter().map(|&d| d as i64).collect(),
        raw_data: Some(bytes),
        ..Default::default()
    }
}

/// The little-endian bytes of an initializer (whichever field holds them), its dtype and shape.
pub fn tensor_data(t: &TensorProto) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
    let name = t.name();
    let dtype = dtype_of(t.data_type())
        .ok_or_else(|| Error::node(name, "initializer", format!("unsupported element type {}", t.data_type())))?;
    let (shape, nbytes) = shape_bytes(t, dtype)?;
    let bytes: Vec<u8> = if let Some(raw) = &t.raw_data {
        raw.clone()
    } else {
        match dtype {
            Dtype::F32 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F64 => t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::I64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::U32 | Dtype::U64 => {
                let w = dtype::width(dtype);
                t.uint64_data.iter().flat_map(|v| v.to_le_bytes()[..w].to_vec()).collect()
            }
            _ => {
                let w = dtype::width(dtype);
                t.int32_data.iter().flat_map(|v| v.to_le_bytes()[..w].to_vec()).collect()
            }
        }
    };
    if bytes.len() != nbytes {
        return Err(Error::node(
            name,
            "initializer",
            format!("holds {} bytes, shape {shape:?} needs {nbytes}", bytes.len()),
        ));
    }
    Ok((dtype, shape, bytes))
}

/// An initializer's shape and its size in bytes: negative dimensions and sizes that overflow
/// are errors naming it.
fn shape_bytes(t: &TensorProto, dtype: Dtype) -> Result<(Vec<usize>, usize)> {
    let bad = |m: String| Error::node(t.name(), "initializer", m);
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("has a negative dimension in {:?}", t.dims))))
        .collect::<Result<Vec<usize>>>()?;
    let nbytes = dtype::nbytes(dtype, &shape).map_err(bad)?;
    Ok((shape, nbytes))
}

fn external_info(t: &TensorProto) -> HashMap<&str, &str> {
    t.external_data.iter().map(|kv| (kv.key(), kv.value())).collect()
}

/// The model file and the external-data files its initializers name (beside it), each once.
fn files_read(path: &Path, proto: &ModelProto) -> Vec<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = vec![path.to_path_buf()];
    for t in proto.graph.iter().flat_map(|g| &g.initializer) {
        if let Some(location) = external_info(t).get("location").filter(|_| t.data_location() == DataLocation::External)
        {
            let file = dir.join(location);
            if !files.contains(&file) {
                files.push(file);
            }
        }
    }
    files
}

/// The external-data field `key` (`offset`, `length`) if present: a non-negative integer.
fn external_number(info: &HashMap<&str, &str>, key: &str) -> std::result::Result<Option<usize>, String> {
    let Some(text) = info.get(key) else { return Ok(None) };
    text.trim()
        .parse::<usize>()
        .map(Some)
        .map_err(|_| format!("external data {key} `{text}` is not a non-negative integer"))
}

/// Why an external-data `location` may lead outside the model's directory, if it may (as the
/// ONNX checker, the location must be relative and stay below the directory).
fn escapes(location: &Path) -> Option<&'static str> {
    use std::path::Component;
    if location.as_os_str().is_empty() {
        return Some("an empty location");
    }
    let mut depth = 0usize;
    for c in location.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return Some("its `..` leads above the directory"),
            },
            Component::RootDir | Component::Prefix(_) => return Some("an absolute path"),
        }
    }
    (depth == 0).then_some("it names the directory itself")
}

/// Checks what the rest of the code takes for granted of every node: it has an output (every
/// ONNX operator has at least one).
fn check_nodes(graph: &GraphProto) -> Result<()> {
    for (i, n) in graph.node.iter().enumerate() {
        if n.output.iter().all(|o| o.is_empty()) {
            let label = if n.name().is_empty() { format!("#{i}") } else { n.name().to_string() };
            return Err(Error::node(label, n.op_type(), "has no outputs"));
        }
    }
    Ok(())
}

impl Model {
    /// Reads and decodes an ONNX file, loading external-data initializers into memory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_bytes(path, &crate::fs::read_regular(path)?)
    }

    /// Decodes the ONNX model `bytes` read from `path` (external data is looked for beside it)
    /// and checks the graph's structure.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let proto = ModelProto::decode(bytes)
            .map_err(|e| Error::format(path, format!("not a valid ONNX model (protobuf decoding failed: {e})")))?;
        let Some(graph) = &proto.graph else {
            return Err(Error::format(path, "not a valid ONNX model: it has no graph"));
        };
        check_nodes(graph)?;
        let files = files_read(path, &proto);
        let mut model = Model { path: path.to_path_buf(), proto, files };
        model.resolve_external()?;
        Ok(model)
    }

    fn resolve_external(&mut self) -> Result<()> {
        let dir = crate::fs::parent_dir(&self.path).to_path_buf();
        let mut canonical_dir = None;
        let mut maps: HashMap<PathBuf, Input> = HashMap::new();
        for t in &mut self.proto.graph.as_mut().expect("checked").initializer {
            if t.data_location() != DataLocation::External {
                continue;
            }
            let info = external_info(t);
            let bad = |m: String| Error::tensor(&self.path, t.name(), m);
            let Some(location) = info.get("location") else {
                return Err(bad("external data without a location".into()));
            };
            if let Some(why) = escapes(Path::new(location)) {
                return Err(bad(format!(
                    "its external data `{location}` is outside the model's directory ({why}): the location must be \
                     a relative path inside that directory"
                )));
            }
            let offset = external_number(&info, "offset").map_err(bad)?.unwrap_or(0);
            let length = match external_number(&info, "length").map_err(bad)? {
                Some(n) => n,
                None => {
                    let dtype = dtype_of(t.data_type()).ok_or_else(|| {
                        bad(format!("external data of unsupported element type {} without a length", t.data_type()))
                    })?;
                    shape_bytes(t, dtype)?.1
                }
            };
            let end = offset
                .checked_add(length)
                .ok_or_else(|| bad(format!("external data offset {offset} + length {length} overflows")))?;
            let file = dir.join(location);
            // What the location resolves to, symbolic links followed, must still lie in the directory.
            let resolved = file.canonicalize().map_err(|e| Error::io(&file, e))?;
            if canonical_dir.is_none() {
                canonical_dir = Some(dir.canonicalize().map_err(|e| Error::io(&dir, e))?);
            }
            if !resolved.starts_with(canonical_dir.as_ref().expect("just set")) {
                return Err(bad(format!(
                    "its external data `{location}` is outside the model's directory (it resolves to {})",
                    resolved.display()
                )));
            }
            if !maps.contains_key(&resolved) {
                maps.insert(resolved.clone(), map_input(&file)?);
            }
            let map = &maps[&resolved];
            let data = map.get(offset..end).ok_or_else(|| {
                Error::tensor(
                    &file,
                    t.name(),
                    format!("external data {offset}..{end} lies beyond the end of the file ({} bytes)", map.len()),
                )
            })?;
            t.raw_data = Some(data.to_vec());
            t.data_location = None;
            t.external_data.clear();
        }
        Ok(())
    }

    /// The files it was read from: the model and its external data. Outputs must never
    /// overwrite them.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The graph.
    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("a loaded model has a graph")
    }

    /// The graph, mutably.
    pub fn graph_mut(&mut self) -> &mut GraphProto {
        self.proto.graph.as_mut().expect("a loaded model has a graph")
    }

    /// Imports operator set `domain` at `version`, unless the model imports it already.
    pub fn import_domain(&mut self, domain: &str, version: i64) {
        if !self.proto.opset_import.iter().any(|o| o.domain() == domain) {
            self.proto
                .opset_import
                .push(proto::OperatorSetIdProto { domain: Some(domain.into()), version: Some(version) });
        }
    }

    /// The opset version of the default ONNX domain.
    pub fn opset(&self) -> i64 {
        self.proto
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map_or(1, |o| o.version())
    }

    /// The initializers as a checkpoint, under their ONNX names.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut ck = Checkpoint::empty(&self.path);
        for f in &self.files[1..] {
            ck.add_file(f);
        }
        for t in &self.graph().initializer {
            let (dtype, shape, bytes) = tensor_data(t)?;
            ck.push_owned(t.name().to_string(), dtype, shape, bytes)?;
        }
        Ok(ck)
    }

    /// Graph inputs that are not initializers: what the caller must feed.
    pub fn inputs(&self) -> Vec<&ValueInfoProto> {
        let g = self.graph();
        let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
        g.input.iter().filter(|i| !inits.contains(i.name())).collect()
    }

    /// Serialises the model; initializers go to external data when the model would not fit in
    /// one protobuf message. Returns the model bytes and the external data, if any.
    pub fn encode(&self, data_file_name: &str) -> (Vec<u8>, Option<Vec<u8>>) {
        self.encode_with(data_file_name, false)
    }

    /// [`Model::encode`], with the initializers in external data also when `external` is set.
    pub fn encode_with(&self, data_file_name: &str, external: bool) -> (Vec<u8>, Option<Vec<u8>>) {
        let total: usize = self.graph().initializer.iter().map(|t| t.raw_data.as_ref().map_or(0, |r| r.len())).sum();
        if !external && total < PROTOBUF_LIMIT - (64 << 20) {
            return (self.proto.encode_to_vec(), None);
        }
        let mut proto = self.proto.clone();
        let mut data = Vec::new();
        for t in &mut proto.graph.as_mut().expect("graph").initializer {
            let Some(raw) = t.raw_data.take_if(|r| r.len() > EXTERNAL_THRESHOLD) else { continue };
            data.resize(data.len().div_ceil(4096) * 4096, 0);
            let kv = |k: &str, v: String| proto::StringStringEntryProto { key: Some(k.into()), value: Some(v) };
            t.external_data = vec![
                kv("location", data_file_name.to_string()),
                kv("offset", data.len().to_string()),
                kv("length", raw.len().to_string()),
            ];
            t.set_data_location(DataLocation::External);
            data.extend_from_slice(&raw);
        }
        (proto.encode_to_vec(), Some(data))
    }

    /// Writes the model into temporary files beside `path` (with its initializers in
    /// [`data_file`] when the model would not fit in one protobuf message, or when `external` is
    /// set); nothing appears under the final names until [`Outputs::publish`], which renames the
    /// external data first and the model last.
    pub fn stage(&self, path: &Path, external: bool) -> Result<Outputs> {
        let data_path = data_file(path);
        let data_name = data_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (bytes, data) = self.encode_with(&data_name, external);
        let mut files = Outputs::default();
        if let Some(data) = data {
            files.push(StagedFile::with_bytes(&data_path, &data)?);
        }
        files.push(StagedFile::with_bytes(path, &bytes)?);
        Ok(files)
    }

    /// Writes the model atomically to `path` (see [`Model::stage`]).
    pub fn save_with(&self, path: &Path, external: bool) -> Result<()> {
        crate::fs::check_output(path)?;
        self.stage(path, external)?.publish()
    }

    /// Writes the model atomically to `path` (with `<name>.data` beside it for large models).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_with(path, false)
    }

    /// Which nodes consume each value name.
    pub fn consumers(&self) -> HashMap<String, Vec<usize>> {
        let mut map: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in self.graph().node.iter().enumerate() {
            for input in &n.input {
                map.entry(input.clone()).or_default().push(i);
            }
        }
        map
    }
}

/// The node temperature scaling adds, and its initializer: `logits / T` under the first output's
/// own name, so deployment gets calibrated probabilities from the output it already reads.
pub const TEMPERATURE_NODE: &str = "swa_temperature_scaling";
/// The scalar initializer holding T.
pub const TEMPERATURE: &str = "swa_temperature";

/// Divides the model's first output by `t` (a `Div` node named [`TEMPERATURE_NODE`]); a model
/// that already has one has its T replaced.
pub fn divide_first_output(model: &mut Model, t: f32) -> Result<()> {
    let path = model.path.clone();
    let graph = model.graph_mut();
    let bytes = t.to_le_bytes().to_vec();
    if let Some(init) = graph.initializer.iter_mut().find(|i| i.name() == TEMPERATURE) {
        *init = tensor(TEMPERATURE, Dtype::F32, &[], bytes);
        return Ok(());
    }
    let output = graph.output.first().ok_or_else(|| Error::format(&path, "has no output"))?.name().to_string();
    let before = format!("{output}_before_temperature");
    let mut renamed = false;
    for node in &mut graph.node {
        for o in node.output.iter_mut().filter(|o| **o == output) {
            *o = before.clone();
            renamed = true;
        }
        for i in node.input.iter_mut().filter(|i| **i == output) {
            *i = before.clone();
        }
    }
    if !renamed {
        return Err(Error::format(
            &path,
            format!("no node makes its output `{output}`: it cannot be divided by a temperature"),
        ));
    }
    graph.initializer.push(tensor(TEMPERATURE, Dtype::F32, &[], bytes));
    graph.node.push(node("Div", TEMPERATURE_NODE.to_string(), &[&before, TEMPERATURE], &[&output], Vec::new()));
    Ok(())
}
