//! `torch.save` files (the zip format of PyTorch ≥ 1.6): reading a state dict out of one without
//! running any pickled code, its tensors views into the mapped file; and [`TorchWriter`], which
//! writes what `torch.save(state_dict)` writes.
//!
//! The archive holds `NAME/data.pkl` (a pickle, protocol 2), one member `NAME/data/<key>` per
//! storage (raw little-endian bytes, 64-byte aligned) and `NAME/byteorder`. The pickle is run by a
//! restricted machine (`pickle`) that builds data only; tensors are
//! `_rebuild_tensor_v2(storage, offset, size, stride, …)` over persistent ids
//! `('storage', torch.FloatStorage, key, location, numel)`.
//!
//! A file holds one or more dicts of tensors ("state dicts"): a plain `torch.save(model.state_dict())`
//! is one; a training checkpoint nests them (`{"epoch": 3, "model": {...}, "optimizer": {...}}`,
//! Lightning's `state_dict`, an EMA callback's). They are named by dotted key paths, the top level
//! by the empty path.

mod globals;
mod ops;
mod pickle;
mod write;
mod zip;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

use safetensors::Dtype;

pub use write::{TorchWriter, METADATA_MEMBER};

use self::globals::Elem;
use self::pickle::{Machine, Obj, ObjId, Value};
use crate::checkpoint::format::{Claim, Format, Probe, TensorWriter};
use crate::checkpoint::{dtype, Checkpoint};
use crate::error::{Error, Result};
use crate::fs::map_input;

/// Keys that hold the model's state dict in common training checkpoints, tried in this order when
/// no key is given (then the top level, when it is itself a state dict).
pub const DEFAULT_KEYS: &[&str] = &["state_dict", "model", "model_state_dict", "module", "net", "ema"];

/// How deep [`contents`] looks for state dicts within nested dicts.
const MAX_DEPTH: usize = 8;

/// The metadata key naming the state dict read (its dotted path; empty for the top level).
pub const TORCH_KEY: &str = "torch_key";

/// True if `head` (a file's first bytes) looks like a torch.save zip (`PK\x03\x04`) — for dispatch.
pub fn is_torch_zip(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04")
}

/// What a torch.save file holds: candidate state dicts (dotted key path → tensor count; the top
/// level is the empty path), the other top-level keys, and the path [`open`] reads when given no key.
pub use crate::checkpoint::format::Contents;

/// `torch.save` files: PyTorch's `.pt` / `.pth`, timm's `.pth.tar`, Hugging Face's `.bin`, PyTorch
/// Lightning's `.ckpt`.
pub const SUFFIXES: &[&str] = &[".pth.tar", ".pth", ".pt", ".ckpt", ".bin"];

/// The name Hugging Face's Trainer gave a run directory's model file before safetensors.
const RUN_DIR_MODEL: &str = "pytorch_model.bin";

/// `torch.save` files and Lightning checkpoints.
pub struct Torch;

impl Format for Torch {
    fn name(&self) -> &'static str {
        "torch.save"
    }

    fn suffixes(&self) -> &'static [&'static str] {
        SUFFIXES
    }

    /// A file in PyTorch's zip format whatever its name, or one with a torch.save name unless it
    /// starts like safetensors (a `u64` header length, then `{`: some tools write safetensors as
    /// `.bin`).
    fn claim(&self, probe: &Probe) -> Option<Claim> {
        if probe.is_dir {
            return None;
        }
        let safetensors = probe.head.get(8) == Some(&b'{');
        match (probe.named(SUFFIXES), is_torch_zip(probe.head)) {
            (true, true) => Some(Claim::Certain),
            (false, true) => Some(Claim::Content),
            (true, false) if !safetensors => Some(Claim::Name),
            _ => None,
        }
    }

    fn open(&self, path: &Path, key: Option<&str>) -> Result<Checkpoint> {
        open(path, key)
    }

    fn model_in(&self, dir: &Path) -> Result<Option<std::path::PathBuf>> {
        Ok(Some(dir.join(RUN_DIR_MODEL)).filter(|p| p.is_file()))
    }

    fn contents(&self, path: &Path) -> Result<Option<Contents>> {
        contents(path).map(Some)
    }

    fn writes(&self, name: &str) -> bool {
        SUFFIXES.iter().any(|s| crate::checkpoint::format::has_suffix(name, s))
    }

    fn writer(
        &self,
        target: &Path,
        tensors: &[crate::checkpoint::TensorSpec],
        metadata: &BTreeMap<String, String>,
        _like: Option<&Path>,
    ) -> Result<Box<dyn TensorWriter>> {
        Ok(Box::new(TorchWriter::create(target, tensors, metadata)?))
    }
}

/// Lists a file's contents without reading tensor data.
pub fn contents(path: &Path) -> Result<Contents> {
    let map = map_input(path)?;
    let archive = Archive::parse(path, &map)?;
    let (machine, top) = archive.unpickle()?;
    let contents = list_contents(&machine, top);
    // Names outside the allow-list, said as reading the chosen state dict would.
    if let Some(value) = contents.chosen.as_deref().and_then(|k| resolve(&machine, top, k).ok()) {
        let label = match contents.chosen.as_deref().unwrap_or_default() {
            "" => "the top level".to_string(),
            k => format!("`{}`", pickle::shorten(k, pickle::MAX_KEY)),
        };
        match warnings_for(path, &machine, top, value, module(&machine, value).as_ref(), &label) {
            Ok(warnings) => warnings.into_iter().for_each(crate::error::warn),
            Err(e) => crate::error::warn(e.to_string()),
        }
    }
    Ok(contents)
}

/// Opens the state dict at `key` (a dotted path, e.g. `state_dict_ema` or
/// `callbacks.EMA.ema_state_dict`; at each level the longest key that matches is taken, so keys
/// that contain dots work; `""` is the top level), or, with None, the first of [`DEFAULT_KEYS`]
/// that is a state dict, or the top level when it is one.
///
/// Tensors are views into the mapped file, in the pickle's order; a non-contiguous one (saved
/// transposed or expanded) is copied into C order. Tied weights (two names over one storage) both
/// appear. The metadata holds the top level's simple values (`epoch`, `global_step`…) as text, and
/// [`TORCH_KEY`] the path read.
pub fn open(path: &Path, key: Option<&str>) -> Result<Checkpoint> {
    let map = map_input(path)?;
    let plan = plan(path, &map, key)?;
    let mut ck = Checkpoint::empty(path);
    let source = ck.add_input(path, map);
    for t in plan.tensors {
        match t.data {
            Data::View(range) => ck.push_view(t.name, t.dtype, t.shape, source, range)?,
            Data::Owned(bytes) => ck.push_owned(t.name, t.dtype, t.shape, bytes)?,
        }
    }
    *ck.metadata_mut() = plan.metadata;
    for w in plan.warnings {
        crate::error::warn(w);
    }
    if ck.tensors().is_empty() {
        return Err(Error::format(path, format!("state dict `{}` holds no tensors", plan.key)));
    }
    Ok(ck)
}

/// [`open`] on bytes in memory (for fuzzing): parses and checks everything `open` does, and
/// returns the number of tensors.
pub fn open_bytes(path_for_messages: &Path, bytes: &[u8], key: Option<&str>) -> Result<usize> {
    Ok(plan(path_for_messages, bytes, key)?.tensors.len())
}

// -------------------------------------------------------------------------------------------------
// The archive
// -------------------------------------------------------------------------------------------------

struct Archive<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    /// The pickle's bytes.
    pickle: &'a [u8],
    /// Storage members by key (`NAME/data/<key>`).
    storages: HashMap<String, zip::Member>,
    /// The metadata `swa` wrote beside the pickle ([`METADATA_MEMBER`]), if any.
    swa_metadata: BTreeMap<String, String>,
}

impl<'a> Archive<'a> {
    fn parse(path: &'a Path, bytes: &'a [u8]) -> Result<Self> {
        if !is_torch_zip(bytes) {
            return Err(Error::format(path, not_zip_message(bytes)));
        }
        let members = zip::read_members(bytes).map_err(|e| Error::format(path, e))?;
        let mut pickles = members.iter().filter(|m| m.name == "data.pkl" || m.name.ends_with("/data.pkl"));
        let Some(pkl) = pickles.next() else {
            let message = if members.iter().any(|m| m.name.ends_with("constants.pkl")) {
                "a TorchScript archive (torch.jit.save), not a torch.save file: save the model's \
                 state_dict() with torch.save instead"
            } else {
                "a zip archive without data.pkl: not a torch.save file"
            };
            return Err(Error::format(path, message));
        };
        if let Some(other) = pickles.next() {
            return Err(Error::format(
                path,
                format!(
                    "holds two pickles, `{}` and `{}`: torch.load and swa may read different ones; refusing an \
                     ambiguous file (re-save it with torch.save)",
                    pkl.name, other.name
                ),
            ));
        }
        let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
        stored(path, pkl)?;
        let byteorder_name = format!("{prefix}byteorder");
        if let Some(order) = members.iter().find(|m| m.name == byteorder_name) {
            stored(path, order)?;
            match &bytes[order.data.clone()] {
                b"little" => {}
                b"big" => {
                    return Err(Error::format(
                        path,
                        "saved on a big-endian machine (byteorder `big`): swa reads little-endian \
                         files only; load and re-save it with torch.save on a little-endian machine, \
                         or convert it to safetensors",
                    ))
                }
                other => {
                    return Err(Error::format(
                        path,
                        format!("unknown byteorder `{}`", String::from_utf8_lossy(&other[..other.len().min(16)])),
                    ))
                }
            }
        }
        let data_prefix = format!("{prefix}data/");
        let storages =
            members.iter().filter_map(|m| Some((m.name.strip_prefix(&data_prefix)?.to_string(), m.clone()))).collect();
        let meta_name = format!("{prefix}{METADATA_MEMBER}");
        let swa_metadata = match members.iter().find(|m| m.name == meta_name) {
            Some(m) => {
                stored(path, m)?;
                serde_json::from_slice(&bytes[m.data.clone()])
                    .map_err(|e| Error::format(path, format!("{meta_name}: not a JSON object of strings: {e}")))?
            }
            None => BTreeMap::new(),
        };
        Ok(Archive { path, bytes, pickle: &bytes[pkl.data.clone()], storages, swa_metadata })
    }

    fn unpickle(&self) -> Result<(Machine<'a>, Value)> {
        let mut machine = Machine::new(self.pickle);
        let top = machine.run().map_err(|e| Error::format(self.path, format!("data.pkl: {e}")))?;
        Ok((machine, top))
    }
}

fn stored(path: &Path, m: &zip::Member) -> Result<()> {
    if m.encrypted {
        return Err(Error::format(path, format!("member `{}` is encrypted", m.name)));
    }
    if m.method != 0 {
        return Err(Error::format(
            path,
            format!(
                "member `{}` is compressed (zip method {}): torch.save stores every member uncompressed \
                 and swa maps them; re-save the file with torch.save (or re-zip it with `zip -0`)",
                m.name, m.method
            ),
        ));
    }
    Ok(())
}

fn not_zip_message(bytes: &[u8]) -> String {
    if bytes.first() == Some(&0x80) {
        "a legacy torch.save file (PyTorch < 1.6, or _use_new_zipfile_serialization=False): re-save it \
         with a current PyTorch (torch.save(torch.load(path, weights_only=True), path)), or convert it \
         to safetensors"
            .into()
    } else if bytes.get(257..262) == Some(b"ustar") {
        "a legacy tar torch.save file (PyTorch < 0.4): re-save it with a current PyTorch, or convert it \
         to safetensors"
            .into()
    } else {
        "not a torch.save file (no zip header)".into()
    }
}

// -------------------------------------------------------------------------------------------------
// Finding state dicts
// -------------------------------------------------------------------------------------------------

/// A dict's entries if `v` is a dict.
fn dict(m: &Machine, v: Value) -> Option<(ObjId, Vec<(Value, Value)>)> {
    match (v, m.obj(v)) {
        (Value::Obj(id), Some(Obj::Dict(_))) => Some((id, m.entries(id))),
        _ => None,
    }
}

fn is_tensor(m: &Machine, v: Value) -> bool {
    matches!(m.obj(v), Some(Obj::Tensor(_)))
}

/// The number of tensors if `entries` are a state dict: not empty, string keys, tensor values.
fn state_dict_size(m: &Machine, entries: &[(Value, Value)]) -> Option<usize> {
    let all = !entries.is_empty() && entries.iter().all(|&(k, v)| m.str(k).is_some() && is_tensor(m, v));
    all.then_some(entries.len())
}

/// How deep a pickled module's submodules may nest.
const MAX_MODULE_DEPTH: usize = 256;
/// How many modules and entries of their state one pickled module may hold, counting a shared
/// submodule once per place it is held (as `state_dict()` counts it): a crafted file of modules
/// that share their submodules cannot make the walk exponential.
const MAX_MODULE_VISITS: usize = 1 << 19;

/// A pickled `nn.Module` (`torch.save(model)`, `{"model": model}`): an object of a class swa does
/// not import, whose pickled state holds `_parameters`, `_buffers` and `_modules`. Its tensors
/// are read out of that state, as its `state_dict()` names and orders them (each module's
/// parameters, then its persistent buffers, then its submodules'), without importing or running
/// any class.
struct Module {
    /// The class of the outermost module.
    class: String,
    /// `state_dict()`'s names and the tensors.
    tensors: Vec<(String, Value)>,
}

/// The class and pickled state (`__dict__`) of an object swa did not build.
fn object_state(m: &Machine, v: Value) -> Option<(String, Vec<(Value, Value)>)> {
    let class = object_class(m, v)?;
    let state = m.built_from(v).iter().rev().find_map(|&f| dict(m, f)).map(|(_, e)| e)?;
    Some((class, state))
}

/// `v` as a pickled module, if it is one whose tensors can all be read.
fn module(m: &Machine, v: Value) -> Option<Module> {
    let (class, _) = object_state(m, v)?;
    let mut tensors = Vec::new();
    let mut visits = 0;
    module_tensors(m, v, "", 0, &mut (HashSet::new(), &mut visits), &mut tensors)?;
    Some(Module { class, tensors })
}

/// The modules on the walk's path (a cycle is not a module) and the modules walked so far.
type Walk<'a> = (HashSet<ObjId>, &'a mut usize);

fn module_tensors(
    m: &Machine,
    v: Value,
    prefix: &str,
    depth: usize,
    walk: &mut Walk,
    out: &mut Vec<(String, Value)>,
) -> Option<()> {
    let Value::Obj(id) = v else { return None };
    *walk.1 += 1;
    if depth > MAX_MODULE_DEPTH || *walk.1 > MAX_MODULE_VISITS || !walk.0.insert(id) {
        return None;
    }
    let (_, state) = object_state(m, v)?;
    let field = |name: &str| state.iter().find(|&&(k, _)| m.str(k) == Some(name)).map(|&(_, v)| v);
    let (_, parameters) = dict(m, field("_parameters")?)?;
    let (_, buffers) = dict(m, field("_buffers")?)?;
    let (_, modules) = dict(m, field("_modules")?)?;
    *walk.1 += parameters.len() + buffers.len() + modules.len();
    if *walk.1 > MAX_MODULE_VISITS {
        return None;
    }
    let not_saved: HashSet<&str> = match field("_non_persistent_buffers_set").and_then(|v| m.obj(v)) {
        Some(Obj::List(items)) => items.iter().filter_map(|&i| m.str(i)).collect(),
        _ => HashSet::new(),
    };
    for (k, t) in parameters
        .into_iter()
        .chain(buffers.into_iter().filter(|&(k, _)| !m.str(k).is_some_and(|n| not_saved.contains(n))))
    {
        if t == Value::None {
            continue;
        }
        if !is_tensor(m, t) {
            return None;
        }
        out.push((format!("{prefix}{}", m.str(k)?), t));
    }
    for (k, child) in modules {
        if child != Value::None {
            module_tensors(m, child, &format!("{prefix}{}.", m.str(k)?), depth + 1, walk, out)?;
        }
    }
    walk.0.remove(&id);
    Some(())
}

/// A key as text (strings as they are, numbers in decimal) for paths and listings.
fn key_text(m: &Machine, k: Value) -> Option<String> {
    match k {
        Value::Int(i) => Some(i.to_string()),
        _ => m.str(k).map(str::to_string),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn list_contents(m: &Machine, top: Value) -> Contents {
    let mut contents =
        Contents { state_dicts: Vec::new(), other_keys: Vec::new(), chosen: None, what: Default::default() };
    if let Some(module) = module(m, top) {
        contents.state_dicts.push((String::new(), module.tensors.len()));
        contents.chosen = Some(String::new());
        contents.what.insert(String::new(), module_words(&module));
        return contents;
    }
    let Some((top_id, entries)) = dict(m, top) else { return contents };
    if let Some(n) = state_dict_size(m, &entries) {
        contents.state_dicts.push((String::new(), n));
        contents.chosen = Some(String::new());
        return contents;
    }
    let mut visited = HashSet::from([top_id]);
    for &(k, v) in &entries {
        let Some(key) = key_text(m, k) else { continue };
        let before = contents.state_dicts.len();
        if m.str(k).is_some() {
            find_state_dicts(m, &key, v, 1, &mut visited, &mut contents.state_dicts);
        }
        let is_one = contents.state_dicts.get(before).is_some_and(|(p, _)| *p == key);
        if !is_one {
            contents.other_keys.push(key);
        }
    }
    contents.chosen = default_key(m, &entries).map(str::to_string);
    contents.what = what_they_are(&contents);
    for (path, _) in &contents.state_dicts {
        if let Some(module) = resolve(m, top, path).ok().and_then(|v| module(m, v)) {
            contents.what.insert(path.clone(), module_words(&module));
        }
    }
    contents
}

/// What [`Contents::what`] says of a pickled module.
fn module_words(module: &Module) -> String {
    format!(
        "a pickled nn.Module ({}): its parameters and buffers, read as state_dict() names them, without running it",
        pickle::shorten(&module.class, pickle::MAX_KEY)
    )
}

/// What the state dicts of known training code are, by key.
fn what_they_are(c: &Contents) -> BTreeMap<String, String> {
    let has = |k: &str| c.state_dicts.iter().any(|(p, _)| p == k);
    let mut what = BTreeMap::new();
    let mut say = |k: &str, text: &str| {
        if has(k) {
            what.insert(k.to_string(), text.to_string());
        }
    };
    if has("current_model_state") {
        // Lightning's EMAWeightAveraging swaps the EMA into the model before saving.
        say("state_dict", "EMA weights: Lightning's EMAWeightAveraging saves them as the model's");
        say("current_model_state", "raw weights of the last step, kept by Lightning's EMAWeightAveraging");
    }
    say("state_dict_ema", "timm's EMA of the weights, ModelEmaV2/V3");
    say("model_ema", "torchvision's EMA, an AveragedModel: module.* weights and n_averaged");
    say("callbacks.EMA.ema_state_dict", "EMA callback's weights");
    say("ema_state_dict", "EMA of the weights");
    what
}

/// Every state dict at or under `v` (reached through string keys), each dict visited once.
fn find_state_dicts(
    m: &Machine,
    path: &str,
    v: Value,
    depth: usize,
    visited: &mut HashSet<ObjId>,
    out: &mut Vec<(String, usize)>,
) {
    if let Some(module) = module(m, v) {
        out.push((path.to_string(), module.tensors.len()));
        return;
    }
    let Some((id, entries)) = dict(m, v) else { return };
    if !visited.insert(id) {
        return;
    }
    if let Some(n) = state_dict_size(m, &entries) {
        out.push((path.to_string(), n));
        return;
    }
    if depth >= MAX_DEPTH {
        return;
    }
    for &(k, v) in &entries {
        // Only a dict not seen yet is worth its path (a key may be one long string used again and
        // again through the memo).
        let unseen_dict =
            matches!((v, m.obj(v)), (Value::Obj(id), Some(Obj::Dict(_) | Obj::Opaque(_))) if !visited.contains(&id));
        if let (true, Some(key)) = (unseen_dict, m.str(k)) {
            find_state_dicts(m, &join(path, key), v, depth + 1, visited, out);
        }
    }
}

/// The first of [`DEFAULT_KEYS`] whose value is a state dict, else the top level if it is one.
fn default_key<'k>(m: &Machine, top: &[(Value, Value)]) -> Option<&'k str> {
    for &name in DEFAULT_KEYS {
        let value = top.iter().find(|&&(k, _)| m.str(k) == Some(name)).map(|&(_, v)| v);
        if value.and_then(|v| dict(m, v)).is_some_and(|(_, e)| state_dict_size(m, &e).is_some())
            || value.is_some_and(|v| module(m, v).is_some())
        {
            return Some(name);
        }
    }
    state_dict_size(m, top).map(|_| "")
}

/// The value at dotted `path` under `top`: at each level, the longest key that is the whole rest
/// of the path or is followed by a dot in it.
fn resolve(m: &Machine, top: Value, path: &str) -> std::result::Result<Value, String> {
    let mut current = top;
    let mut rest = path;
    let mut walked = String::new();
    while !rest.is_empty() {
        let Some((_, entries)) = dict(m, current) else {
            let at = if walked.is_empty() { "the top level".to_string() } else { format!("`{walked}`") };
            return Err(format!("{at} is not a dict ({}): no key `{rest}` in it", m.describe(current)));
        };
        let mut best: Option<(usize, Value)> = None;
        for &(k, v) in &entries {
            let Some(key) = key_text(m, k) else { continue };
            let fits = rest == key || rest.strip_prefix(key.as_str()).is_some_and(|r| r.starts_with('.'));
            if fits && best.is_none_or(|(len, _)| key.len() > len) {
                best = Some((key.len(), v));
            }
        }
        let Some((len, v)) = best else {
            let keys: Vec<String> = entries.iter().filter_map(|&(k, _)| key_text(m, k)).take(20).collect();
            let at = if walked.is_empty() { "the top level".to_string() } else { format!("`{walked}`") };
            return Err(format!("no key `{rest}` in {at} (its keys: {})", keys.join(", ")));
        };
        walked = join(&walked, &rest[..len]);
        rest = rest[len..].strip_prefix('.').unwrap_or("");
        current = v;
    }
    Ok(current)
}

// -------------------------------------------------------------------------------------------------
// Tensors
// -------------------------------------------------------------------------------------------------

enum Data {
    /// Bytes of the file.
    View(Range<usize>),
    /// A non-contiguous tensor copied into C order.
    Owned(Vec<u8>),
}

struct PlannedTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Data,
}

struct Plan {
    key: String,
    tensors: Vec<PlannedTensor>,
    metadata: BTreeMap<String, String>,
    /// Names outside the allow-list found outside the state dict, in words.
    warnings: Vec<String>,
}

/// Everything [`open`] reads, checked: the state dict's tensors and the metadata.
fn plan(path: &Path, bytes: &[u8], key: Option<&str>) -> Result<Plan> {
    let archive = Archive::parse(path, bytes)?;
    let (m, top) = archive.unpickle()?;
    let key = match key {
        Some(k) => k.to_string(),
        None if module(&m, top).is_some() => String::new(),
        None => {
            let Some((_, entries)) = dict(&m, top) else {
                if object_class(&m, top).is_some() {
                    return Err(Error::format(path, not_a_dict_message(&m, top, "the top level")));
                }
                return Err(Error::format(
                    path,
                    format!("holds no dict of tensors (its top level: {})", m.describe(top)),
                ));
            };
            match default_key(&m, &entries) {
                Some(k) => k.to_string(),
                // A top level with tensors among other values: read it, to name what is wrong.
                None if entries.iter().any(|&(_, v)| is_tensor(&m, v)) => String::new(),
                None => return Err(Error::format(path, no_default_message(&m, top))),
            }
        }
    };
    let value = resolve(&m, top, &key).map_err(|e| Error::format(path, e))?;
    let label = if key.is_empty() { "the top level".to_string() } else { format!("`{key}`") };
    let pickled = module(&m, value);
    let named: Vec<(String, Value)> = match (&pickled, dict(&m, value)) {
        (Some(module), _) => module.tensors.clone(),
        (None, Some((_, entries))) => {
            let mut named = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let Some(name) = key_text(&m, k) else {
                    return Err(Error::format(
                        path,
                        format!("{label} has a key that is not a string ({})", m.describe(k)),
                    ));
                };
                named.push((name, v));
            }
            named
        }
        (None, None) => return Err(Error::format(path, not_a_dict_message(&m, value, &label))),
    };
    let mut tensors = Vec::with_capacity(named.len());
    // Copies of non-contiguous tensors may not add up to more than twice the file: a crafted file
    // cannot make many large copies of one storage.
    let mut owned_budget = bytes.len().saturating_mul(2);
    for (name, v) in named {
        let Some(Obj::Tensor(t)) = m.obj(v) else {
            return Err(Error::tensor(
                path,
                pickle::shorten(&name, pickle::MAX_KEY),
                format!("in {label}: not a tensor ({})", m.describe(v)),
            ));
        };
        let planned =
            archive.tensor(&m, t, &mut owned_budget).map_err(|message| Error::tensor(path, &name, message))?;
        let (dtype, shape, data) = planned;
        tensors.push(PlannedTensor { name, dtype, shape, data });
    }
    let warnings = warnings_for(path, &m, top, value, pickled.as_ref(), &label)?;
    let mut metadata = top_scalars(&m, top);
    metadata.extend(archive.swa_metadata.clone());
    metadata.insert(TORCH_KEY.to_string(), key.clone());
    Ok(Plan { key, tensors, metadata, warnings })
}

/// The warnings reading the state dict `value` (named `label`; a pickled module where `pickled`)
/// gives, or the refusal of a name outside the allow-list inside it.
fn warnings_for(
    path: &Path,
    m: &Machine,
    top: Value,
    value: Value,
    pickled: Option<&Module>,
    label: &str,
) -> Result<Vec<String>> {
    let Some(module) = pickled else { return foreign_names(path, m, top, &[value], None, label) };
    // A module's classes are what a pickled module is made of; its tensors must name nothing else.
    let roots: Vec<Value> = module.tensors.iter().map(|&(_, t)| t).collect();
    let mut warnings = foreign_names(path, m, top, &roots, Some(value), label)?;
    warnings.insert(
        0,
        format!(
            "{}: {label} is a pickled nn.Module ({}): swa read its {} parameters and buffers as its state_dict() \
             names them, without importing or running it",
            path.display(),
            pickle::shorten(&module.class, pickle::MAX_KEY),
            module.tensors.len()
        ),
    );
    Ok(warnings)
}

/// Refuses a name outside the allow-list inside the state dict `value` (a value, or anything one
/// of its tensors was built from); returns warnings naming those elsewhere under `top`, and
/// where they are (names known to be plain data aside).
fn foreign_names(
    path: &Path,
    m: &Machine,
    top: Value,
    values: &[Value],
    covered: Option<Value>,
    label: &str,
) -> Result<Vec<String>> {
    if m.foreign.is_empty() {
        return Ok(Vec::new());
    }
    for &value in values {
        check_inside(path, m, value, label)?;
    }
    // Names under `covered` (a pickled module's classes) are said by the caller.
    let said = covered.map(|v| m.reachable(v));
    let said = |id: &ObjId| said.as_ref().is_some_and(|r| r.contains_key(id));
    // The whole file is walked only where a name is worth a warning (a Lightning checkpoint's
    // AttributeDict alone is not).
    let mut everywhere = None;
    const SHOWN: usize = 3;
    // The first few names with where they are; the others only counted (by a set: a file may
    // name many).
    let mut found: Vec<(String, String)> = Vec::new();
    let mut names = HashSet::new();
    for &id in &m.foreign {
        let name = m.foreign_name(id);
        if globals::is_known_data(&name) || said(&id) || !names.insert(name.clone()) || found.len() >= SHOWN {
            continue;
        }
        let everywhere = everywhere.get_or_insert_with(|| m.reachable(top));
        let at = match everywhere.contains_key(&id) {
            true => format!("at `{}`", m.path(everywhere, id)),
            false => "in a value the pickle discarded".into(),
        };
        found.push((name, at));
    }
    let mut warnings: Vec<String> = found
        .iter()
        .take(SHOWN)
        .map(|(name, at)| {
            format!(
                "{}: holds the name {name} {at}, outside the names that build data: swa left it unread \
                 (torch.load(weights_only=False) would import it and may run it)",
                path.display()
            )
        })
        .collect();
    if names.len() > SHOWN {
        warnings.push(format!("{}: holds {} more such names", path.display(), names.len() - SHOWN));
    }
    Ok(warnings)
}

/// Refuses a name outside the allow-list inside `value` (the state dict, or one of a module's
/// tensors): as a value, or in anything it was built from.
fn check_inside(path: &Path, m: &Machine, value: Value, label: &str) -> Result<()> {
    let inside = m.reachable(value);
    if let Some(&id) = m.foreign.iter().find(|id| inside.contains_key(id)) {
        let at = m.path(&inside, id);
        let at = if at.is_empty() { String::new() } else { format!(" (at `{at}`)") };
        return Err(Error::format(
            path,
            format!(
                "{label} holds the name {}{at}, which is not one that builds tensor data: swa refuses a state \
                 dict that names anything else (do not load this file with torch.load(weights_only=False))",
                m.foreign_name(id)
            ),
        ));
    }
    Ok(())
}

/// Why `value` (named `label`) is not read: not a dict of tensors, and not a module swa can read.
fn not_a_dict_message(m: &Machine, value: Value, label: &str) -> String {
    let module_like =
        object_state(m, value).is_some_and(|(_, state)| state.iter().any(|&(k, _)| m.str(k) == Some("_parameters")));
    let load = "load the file there with torch.load(weights_only=False) (only if you trust it) and save";
    match object_class(m, value).map(|c| pickle::shorten(&c, pickle::MAX_KEY)) {
        Some(class) if module_like => format!(
            "{label} is a pickled nn.Module ({class}) whose tensors swa cannot read out of it: where {class} is \
             defined, {load} model.state_dict() with torch.save or safetensors"
        ),
        Some(class) => format!(
            "{label} is a pickled object of class {class} ({}), not a dict of tensors: if it holds the model, \
             where that class is defined {load} its state_dict()",
            m.describe(value)
        ),
        None => format!("{label} is not a dict of tensors ({})", m.describe(value)),
    }
}

/// The class an object swa did not build was made from, if a name outside the allow-list.
fn object_class(m: &Machine, v: Value) -> Option<String> {
    if !matches!(m.obj(v), Some(Obj::Opaque(_))) {
        return None;
    }
    m.built_from(v).iter().find_map(|&f| m.foreign_global(f)).map(str::to_string)
}

fn no_default_message(m: &Machine, top: Value) -> String {
    let contents = list_contents(m, top);
    let tried = DEFAULT_KEYS.join(", ");
    // A default key that holds a pickled object: say what it is, not that it is missing.
    if let Some(entries) = dict(m, top).map(|(_, e)| e) {
        for &name in DEFAULT_KEYS {
            let value = entries.iter().find(|&&(k, _)| m.str(k) == Some(name)).map(|&(_, v)| v);
            if let Some(v) = value.filter(|&v| object_class(m, v).is_some()) {
                return not_a_dict_message(m, v, &format!("`{name}`"));
            }
        }
    }
    if contents.state_dicts.is_empty() {
        format!("holds no dict of tensors (no {tried}; top-level keys: {})", contents.other_keys.join(", "))
    } else {
        let found: Vec<String> = contents.state_dicts.iter().map(|(p, n)| format!("`{p}` ({n} tensors)")).collect();
        format!("holds no state dict under {tried}; choose one by key: {}", found.join(", "))
    }
}

/// The top level's simple values (numbers, booleans, short strings) as text.
fn top_scalars(m: &Machine, top: Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some((_, entries)) = dict(m, top) else { return out };
    for (k, v) in entries {
        let Some(key) = m.str(k) else { continue };
        let text = match v {
            Value::Bool(b) => (if b { "True" } else { "False" }).to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format!("{f:?}"),
            _ => match m.str(v) {
                Some(s) if s.len() <= 256 => s.to_string(),
                _ => continue,
            },
        };
        out.insert(key.to_string(), text);
    }
    out
}

impl Archive<'_> {
    /// A tensor's dtype, shape and bytes, checked against its storage member.
    fn tensor(
        &self,
        m: &Machine,
        t: &pickle::Tensor,
        owned_budget: &mut usize,
    ) -> std::result::Result<(Dtype, Vec<usize>, Data), String> {
        let Obj::Storage(storage) = &m.objects[t.storage] else { unreachable!("checked when built") };
        let (storage_width, dtype) = match (&storage.elem, t.dtype) {
            (Elem::Typed(d), None) => (dtype::width(*d), *d),
            (Elem::Typed(d), Some(td)) if *d == td => (dtype::width(*d), *d),
            (Elem::Typed(d), Some(td)) => return Err(format!("a {td:?} tensor over a {d:?} storage")),
            (Elem::Untyped, Some(td)) => (1, td),
            (Elem::Untyped, None) => return Err("an untyped storage without a dtype".into()),
            (Elem::Unsupported(name), _) => return Err(format!("its storage type {name} is not supported")),
        };
        let member = self
            .storages
            .get(&storage.key)
            .ok_or_else(|| format!("its storage data/{} is missing from the archive", storage.key))?;
        stored(self.path, member).map_err(|e| e.to_string())?;
        let width = dtype::width(dtype);
        if width == 0 {
            return Err(format!("dtype {dtype:?} is not supported"));
        }
        let storage_bytes = member.data.len();
        let declared = usize::try_from(storage.numel).ok().and_then(|n| n.checked_mul(storage_width));
        if declared != Some(storage_bytes) {
            return Err(format!(
                "its storage data/{} holds {storage_bytes} bytes, the pickle says {} elements of {storage_width}",
                storage.key, storage.numel
            ));
        }
        let too_large = || format!("shape {:?} with stride {:?} does not fit in memory", t.size, t.stride);
        let shape: Vec<usize> =
            t.size.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>().ok_or_else(too_large)?;
        let stride: Vec<usize> =
            t.stride.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>().ok_or_else(too_large)?;
        let nbytes = dtype::nbytes(dtype, &shape)?;
        let numel = nbytes / width;
        let start = member.data.start;
        if numel == 0 {
            return Ok((dtype, shape, Data::View(start..start)));
        }
        // The last element's index: offset + Σ (size - 1) × stride, in elements of `dtype`.
        let last = shape
            .iter()
            .zip(&stride)
            .try_fold(usize::try_from(t.offset).ok(), |acc, (&n, &s)| Some(acc?.checked_add((n - 1).checked_mul(s)?)))
            .flatten()
            .ok_or_else(too_large)?;
        let end = last.checked_add(1).and_then(|e| e.checked_mul(width)).ok_or_else(too_large)?;
        if end > storage_bytes {
            return Err(format!(
                "offset {} with shape {shape:?} and stride {stride:?} reaches byte {end} of its storage \
                 data/{}, which holds {storage_bytes}",
                t.offset, storage.key
            ));
        }
        let offset = t.offset as usize * width; // ≤ end, so no overflow
        if is_contiguous(&shape, &stride) {
            return Ok((dtype, shape, Data::View(start + offset..start + offset + nbytes)));
        }
        if nbytes > *owned_budget {
            return Err(format!(
                "non-contiguous (shape {shape:?}, stride {stride:?}) and larger than swa copies: save \
                 it with .contiguous()"
            ));
        }
        *owned_budget -= nbytes;
        let storage = &self.bytes[member.data.clone()];
        Ok((dtype, shape.clone(), Data::Owned(gather(storage, t.offset as usize, &shape, &stride, width))))
    }
}

/// C order: each dimension's stride is the product of the sizes after it (dimensions of size 1 may
/// have any stride, as in PyTorch's `is_contiguous`).
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&n, &s) in shape.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

/// Copies a strided tensor into C order (its extent was checked against `storage`).
fn gather(storage: &[u8], offset: usize, shape: &[usize], stride: &[usize], width: usize) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel * width);
    let mut index = vec![0usize; shape.len()];
    let mut at = offset;
    for _ in 0..numel {
        out.extend_from_slice(&storage[at * width..(at + 1) * width]);
        // Next index, last dimension fastest.
        // Wrapping: stepping past the end of a dimension (of size 1 with any stride) may leave the
        // storage before stepping back; every element read is within it.
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            at = at.wrapping_add(stride[d]);
            if index[d] < shape[d] {
                break;
            }
            at = at.wrapping_sub(stride[d].wrapping_mul(shape[d]));
            index[d] = 0;
        }
    }
    out
}
