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
//! - **Opaque** ([`Global::Other`]): any other name. The allow-list is the rule: such a name
//!   inside the chosen state dict (a value, or anything a tensor there was built from) stops the
//!   read, named; elsewhere (optimizer state, hyper-parameters, callbacks) what it builds stays an
//!   opaque value, so that the rest of a training checkpoint never stops the read of its state
//!   dict, and a warning names it and where it is ([`is_known_data`] names are the exception:
//!   the rest of `weights_only`'s allow-list (`collections.Counter`, `torch._utils._rebuild_qtensor`…)
//!   and plain data classes of training checkpoints (Lightning's `AttributeDict`,
//!   `argparse.Namespace`, numpy scalars, `pathlib` paths, OmegaConf containers) go unsaid).
//! - **Hostile** ([`hostile`]): names no checkpoint needs and only a pickle that runs code holds
//!   (`os`, `subprocess`, `builtins.eval`, `builtins.getattr`, `torch.load`…; a superset of
//!   `weights_only`'s `_blocklisted_modules`, `sys`, `os`, `posix` and `nt`): the read stops at
//!   once wherever they are, naming it. This is a verdict on the file, not what keeps swa safe
//!   (nothing is ever called): such a file must not be loaded by `torch.load(weights_only=False)`
//!   either.

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
        let (module, name) = (super::pickle::shorten(module, 80), super::pickle::shorten(name, 80));
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
        "_posixsubprocess",
        "_posixshmem",
        "signal",
        "threading",
        "_thread",
        "types",
        "zipimport",
        "torch.utils.cpp_extension",
        "torch._inductor",
        "torch._dynamo",
        "torch.fx",
        "cPickle",
        "thread",
        "cProfile",
        "profile",
        "doctest",
        "trace",
        "_osx_support",
        "imp",
        "distutils",
        "ensurepip",
        "pip",
        "pkgutil",
        "site",
        "urllib",
        "http",
        "ftplib",
        "smtplib",
        "torch.hub",
        "torch.package",
        "torch.multiprocessing",
    ];
    const BUILTINS: &[&str] = &[
        "eval",
        "exec",
        "execfile",
        "compile",
        "__import__",
        "open",
        "input",
        "breakpoint",
        "globals",
        "locals",
        "getattr",
        "setattr",
        "delattr",
        "vars",
        "exit",
        "quit",
        "__loader__",
    ];
    // Single names of otherwise ordinary modules that load files, pickles or code.
    const NAMES: &[(&str, &str)] = &[
        ("io", "open"),
        ("io", "FileIO"),
        ("io", "open_code"),
        ("_io", "open"),
        ("_io", "FileIO"),
        ("torch", "load"),
        ("torch.serialization", "load"),
        ("torch.storage", "_load_from_bytes"),
        ("torch.serialization", "_load"),
        ("sympy", "sympify"),
        ("sympy.core.sympify", "sympify"),
        ("numpy", "loads"),
        ("torch", "compile"),
        ("numpy", "load"),
        ("numpy.lib.npyio", "load"),
    ];
    let module_hit = MODULES.iter().any(|m| module == *m || module.strip_prefix(m).is_some_and(|r| r.starts_with('.')));
    module_hit
        || (matches!(module, "builtins" | "__builtin__") && BUILTINS.contains(&name))
        || NAMES.contains(&(module, name))
}

/// Names outside the data constructors that are plain data all the same: the rest of
/// `torch.load(weights_only=True)`'s allow-list and the data classes training checkpoints keep
/// beside their state dicts. They stay opaque (refused inside the state dict like any name swa
/// does not build) but are not worth a warning elsewhere.
pub(super) fn is_known_data(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "collections.Counter",
        "collections.defaultdict",
        "collections.deque",
        "collections.namedtuple",
        "torch.nn.parameter.Parameter",
        "torch.Tensor",
        "torch.serialization._get_layout",
        "torch._tensor._rebuild_from_type_v2",
        "torch.torch_version.TorchVersion",
        "builtins.slice",
        "builtins.complex",
        "builtins.range",
        "argparse.Namespace",
        "lightning.fabric.utilities.data.AttributeDict",
        "lightning_fabric.utilities.data.AttributeDict",
        "pytorch_lightning.utilities.parsing.AttributeDict",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "datetime.datetime",
        "datetime.date",
        "datetime.timedelta",
        "datetime.timezone",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "typing.Any",
    ];
    const PREFIXES: &[&str] = &[
        "torch._utils._rebuild_",
        "torch.return_types.",
        "numpy.dtypes.",
        "omegaconf.dictconfig.",
        "omegaconf.listconfig.",
        "omegaconf.base.",
        "omegaconf.nodes.",
    ];
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
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
/// name in `torch` (`torch.float_power` and `torch.int_repr` are functions: exact names only).
fn is_torch_dtype_name(name: &str) -> bool {
    const DTYPES: &[&str] = &[
        "complex128",
        "cdouble",
        "complex32",
        "chalf",
        "qint8",
        "quint8",
        "qint32",
        "quint4x2",
        "quint2x4",
        "bits1x8",
        "bits2x4",
        "bits4x2",
        "bits8",
        "bits16",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float4_e2m1fn_x2",
        "uint1",
        "uint2",
        "uint3",
        "uint4",
        "uint5",
        "uint6",
        "uint7",
        "int1",
        "int2",
        "int3",
        "int4",
        "int5",
        "int6",
        "int7",
    ];
    DTYPES.contains(&name)
}
