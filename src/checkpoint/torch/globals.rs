//! Which globals a pickle may name, and what each one is to swa: the policy of the restricted
//! pickle machine ([`super::pickle`]). A `GLOBAL` only names something: nothing named is ever
//! imported or called. Every name is one of three kinds, decided by [`resolve`]:
//!
//! - **Data**: the names swa builds data with ([`classify`]): `collections.OrderedDict`,
//!   `torch._utils._rebuild_tensor_v2` / `_v3` and `_rebuild_parameter(_with_state)`, the storage
//!   classes (`torch.FloatStorage`…, `torch.storage.UntypedStorage`), the dtypes (`torch.float32`…),
//!   `torch.Size`, `torch.device`, `builtins.set` / `frozenset`, and bytes (`_codecs.encode`,
//!   `builtins.bytearray`). This is the part of `torch.load(weights_only=True)`'s allow-list that a
//!   state dict uses: `_get_allowed_globals()` in PyTorch's `torch/_weights_only_unpickler.py`.
//! - **Opaque** ([`Global::Other`]): any other name, the rest of that allow-list included
//!   (`collections.Counter`, `torch.nn.parameter.Parameter`, `torch._utils._rebuild_qtensor`,
//!   `_rebuild_sparse_tensor`…). Where `weights_only=True` refuses a name outside its list, swa goes on: what it
//!   builds is an opaque value, an error only where it is read as a tensor, so that the optimizer
//!   state, hyper-parameters or callbacks of a training checkpoint never stop the read of its
//!   state dict.
//! - **Hostile** ([`hostile`]): names no checkpoint needs and only a pickle that runs code holds
//!   (`os`, `subprocess`, `builtins.eval`…; a superset of `weights_only`'s `_blocklisted_modules`,
//!   `sys`, `os`, `posix` and `nt`): the read stops at once, naming it. This is a verdict on the
//!   file, not what keeps swa safe (nothing is ever called): such a file must not be loaded by
//!   `torch.load(weights_only=False)` either.

use safetensors::Dtype;

/// Element type of a storage class.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Elem {
    /// A typed storage (`torch.FloatStorage`…): elements of this dtype.
    Typed(Dtype),
    /// `torch.storage.UntypedStorage` (bytes; the tensor's dtype comes with `_rebuild_tensor_v3`).
    Untyped,
    /// A storage class swa cannot read (quantized, complex double…), by name.
    Unsupported(String),
}

/// What a global is to swa: a data constructor, or [`Global::Other`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    Storage(Elem),
    /// A `torch` dtype (`torch.float8_e4m3fn`…); None for one swa cannot read.
    Dtype(Option<Dtype>, String),
    /// `torch.Size`, `builtins.set` / `frozenset`: their argument, as a tuple or list.
    Identity,
    /// `torch.device`: its name.
    Device,
    /// `_codecs.encode` (bytes in protocol 2) and `builtins.bytearray`.
    Bytes,
    /// Any other name (`module.name`): never called.
    Other(String),
}

/// What `module.name` is to swa; an error, which stops the read, for a hostile name.
pub(super) fn resolve(module: &str, name: &str) -> Result<Global, String> {
    if hostile(module, name) {
        return Err(format!(
            "refusing global {module}.{name}: no checkpoint needs it, only a pickle that runs code \
             (swa never runs pickled code; do not load this file with torch.load(weights_only=False))"
        ));
    }
    Ok(classify(module, name))
}

/// Module prefixes and names no checkpoint needs and only a hostile pickle calls: their presence
/// stops the read (any other name outside [`classify`]'s is opaque).
fn hostile(module: &str, name: &str) -> bool {
    const MODULES: &[&str] = &[
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "runpy",
        "pty",
        "socket",
        "shutil",
        "importlib",
        "ctypes",
        "pickle",
        "_pickle",
        "marshal",
        "code",
        "codeop",
        "webbrowser",
        "commands",
        "multiprocessing",
        "asyncio",
        "pydoc",
        "timeit",
        "bdb",
        "pdb",
        "torch.jit",
        "torch._C",
        "torch.ops",
        "numpy.testing",
        "platform",
    ];
    const BUILTINS: &[&str] =
        &["eval", "exec", "execfile", "compile", "__import__", "open", "input", "breakpoint", "globals", "locals"];
    let module_hit = MODULES.iter().any(|m| module == *m || module.strip_prefix(m).is_some_and(|r| r.starts_with('.')));
    module_hit || (matches!(module, "builtins" | "__builtin__") && BUILTINS.contains(&name))
}

/// What a name that is not hostile is to swa: a data constructor, or [`Global::Other`].
fn classify(module: &str, name: &str) -> Global {
    let typed = |d| Global::Storage(Elem::Typed(d));
    match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Global::RebuildParameter,
        ("torch", "DoubleStorage") => typed(Dtype::F64),
        ("torch", "FloatStorage") => typed(Dtype::F32),
        ("torch", "HalfStorage") => typed(Dtype::F16),
        ("torch", "BFloat16Storage") => typed(Dtype::BF16),
        ("torch", "LongStorage") => typed(Dtype::I64),
        ("torch", "IntStorage") => typed(Dtype::I32),
        ("torch", "ShortStorage") => typed(Dtype::I16),
        ("torch", "CharStorage") => typed(Dtype::I8),
        ("torch", "ByteStorage") => typed(Dtype::U8),
        ("torch", "BoolStorage") => typed(Dtype::BOOL),
        ("torch", "ComplexFloatStorage") => typed(Dtype::C64),
        ("torch.storage" | "torch", "UntypedStorage") => Global::Storage(Elem::Untyped),
        ("torch", n) if n.ends_with("Storage") => Global::Storage(Elem::Unsupported(format!("torch.{n}"))),
        ("torch", "Size") | ("builtins" | "__builtin__", "set" | "frozenset") => Global::Identity,
        ("torch", "device") => Global::Device,
        ("_codecs", "encode") | ("builtins" | "__builtin__", "bytearray") => Global::Bytes,
        ("torch", n) => match torch_dtype(n) {
            Some(d) => Global::Dtype(Some(d), n.to_string()),
            None if is_torch_dtype_name(n) => Global::Dtype(None, n.to_string()),
            None => Global::Other(format!("torch.{n}")),
        },
        _ => Global::Other(format!("{module}.{name}")),
    }
}

/// The dtype of a `torch.<name>` dtype object.
fn torch_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "float64" | "double" => Dtype::F64,
        "float32" | "float" => Dtype::F32,
        "float16" | "half" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "int64" | "long" => Dtype::I64,
        "int32" | "int" => Dtype::I32,
        "int16" | "short" => Dtype::I16,
        "int8" => Dtype::I8,
        "uint8" => Dtype::U8,
        "uint16" => Dtype::U16,
        "uint32" => Dtype::U32,
        "uint64" => Dtype::U64,
        "bool" => Dtype::BOOL,
        "complex64" | "cfloat" => Dtype::C64,
        "float8_e4m3fn" => Dtype::F8_E4M3,
        "float8_e5m2" => Dtype::F8_E5M2,
        "float8_e8m0fnu" => Dtype::F8_E8M0,
        _ => return None,
    })
}

/// A `torch.<name>` that is a dtype swa cannot read (complex128, qint8, bits16…), not some other
/// name in `torch`.
fn is_torch_dtype_name(name: &str) -> bool {
    ["float", "int", "uint", "complex", "bits", "qint", "quint", "bcomplex"].iter().any(|p| name.starts_with(p))
}
