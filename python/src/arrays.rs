//! Arrays from Python without numpy or torch: any object with `__dlpack__` (torch tensors, numpy
//! arrays, JAX, CuPy after `.cpu()`-like moves) or `__array_interface__` (numpy arrays DLPack
//! refuses: read-only ones), read into one contiguous copy in C order (strided arrays gathered).

use std::ffi::{c_void, CStr};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyTuple};
use swa::batch::{Held, HeldType, Values};

/// Element types an array can hold, as swa names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
}

impl DType {
    pub fn width(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U64 => "uint64",
            DType::U32 => "uint32",
            DType::U16 => "uint16",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    pub fn safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            DType::F64 => S::F64,
            DType::F32 => S::F32,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::I64 => S::I64,
            DType::I32 => S::I32,
            DType::I16 => S::I16,
            DType::I8 => S::I8,
            DType::U64 => S::U64,
            DType::U32 => S::U32,
            DType::U16 => S::U16,
            DType::U8 => S::U8,
            DType::Bool => S::BOOL,
        }
    }
}

/// An array read from Python: C-order values in the machine's (little-endian) byte order, held
/// where they are when the array was C-contiguous, else gathered into a copy.
#[derive(Debug)]
pub struct Array {
    pub dtype: DType,
    pub shape: Vec<usize>,
    data: Data,
}

#[derive(Debug)]
enum Data {
    Owned(Vec<u8>),
    /// The array's own memory, which `owner` (the array, or its DLPack capsule) keeps alive.
    Held {
        ptr: *const u8,
        owner: Py<PyAny>,
    },
}

// SAFETY: held memory is only read, and stays valid while `owner` (Send) lives; the caller
// promises not to write the array while swa reads it (the guide says so).
unsafe impl Send for Array {}
// SAFETY: as above: shared reads only.
unsafe impl Sync for Array {}

impl Array {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values' bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Owned(v) => v,
            // SAFETY: a held array's `len` elements are readable while `owner` lives.
            Data::Held { ptr, .. } => unsafe { std::slice::from_raw_parts(*ptr, self.len() * self.dtype.width()) },
        }
    }

    /// Whether the values are read in place.
    pub fn is_held(&self) -> bool {
        matches!(self.data, Data::Held { .. })
    }

    /// The values widened to int64 (any integer type).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        let d = self.bytes();
        Some(match self.dtype {
            DType::I64 => d.chunks_exact(8).map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes"))).collect(),
            DType::I32 => {
                d.chunks_exact(4).map(|c| i32::from_ne_bytes(c.try_into().expect("4 bytes")) as i64).collect()
            }
            DType::I16 => {
                d.chunks_exact(2).map(|c| i16::from_ne_bytes(c.try_into().expect("2 bytes")) as i64).collect()
            }
            DType::I8 => d.iter().map(|&b| b as i8 as i64).collect(),
            DType::U64 => d
                .chunks_exact(8)
                .map(|c| i64::try_from(u64::from_ne_bytes(c.try_into().expect("8 bytes"))).ok())
                .collect::<Option<Vec<i64>>>()?,
            DType::U32 => {
                d.chunks_exact(4).map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")) as i64).collect()
            }
            DType::U16 => {
                d.chunks_exact(2).map(|c| u16::from_ne_bytes(c.try_into().expect("2 bytes")) as i64).collect()
            }
            DType::U8 | DType::Bool => d.iter().map(|&b| b as i64).collect(),
            _ => return None,
        })
    }

    /// The values if they are float32.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DType::F32)
            .then(|| self.bytes().chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().expect("4 bytes"))).collect())
    }

    /// The values as a batch's: read in place when `in_place` allows it and they are held, of
    /// the type asked for and aligned for it (zero-copy), else converted into a copy; `None` when
    /// they are not of that kind (floats for `I64`, anything but float32 for `F32`).
    pub fn into_values(self, want: HeldType, in_place: bool) -> Option<Values> {
        let exact = matches!((self.dtype, want), (DType::F32, HeldType::F32) | (DType::I64, HeldType::I64));
        let aligned = match &self.data {
            Data::Held { ptr, .. } => (*ptr as usize).is_multiple_of(self.dtype.width()),
            Data::Owned(_) => false,
        };
        if !(exact && aligned && in_place) {
            return match want {
                HeldType::F32 => self.to_f32().map(Values::F32),
                HeldType::I64 => self.to_i64().map(Values::I64),
            };
        }
        let len = self.len();
        let Data::Held { ptr, owner } = self.data else { unreachable!("held, checked above") };
        let owner: std::sync::Arc<dyn std::any::Any + Send + Sync> = std::sync::Arc::new(owner);
        // SAFETY: `ptr` is aligned and holds `len` values of this type, which the array's owner
        // (kept by `owner`) keeps valid; the caller does not write them meanwhile.
        Some(Values::Held(unsafe { Held::new(ptr, len, want, owner) }))
    }
}

// DLPack's C structures (dlpack.h, the unversioned `dltensor` capsule every producer still gives
// when `__dlpack__` is called without `max_version`).
#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *const i64,
    strides: *const i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

const DLTENSOR: &CStr = c"dltensor";
const KDL_CPU: i32 = 1;

fn dlpack_dtype(t: &DLDataType) -> Option<DType> {
    Some(match (t.code, t.bits, t.lanes) {
        (2, 64, 1) => DType::F64,
        (2, 32, 1) => DType::F32,
        (2, 16, 1) => DType::F16,
        (4, 16, 1) => DType::BF16,
        (0, 64, 1) => DType::I64,
        (0, 32, 1) => DType::I32,
        (0, 16, 1) => DType::I16,
        (0, 8, 1) => DType::I8,
        (1, 64, 1) => DType::U64,
        (1, 32, 1) => DType::U32,
        (1, 16, 1) => DType::U16,
        (1, 8, 1) => DType::U8,
        (6, 8, 1) | (1, 1, 1) => DType::Bool,
        _ => return None,
    })
}

/// The byte strides of a C-contiguous array of `shape` with elements of `width` bytes.
fn c_strides(shape: &[usize], width: usize) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut acc = width as isize;
    for k in (0..shape.len()).rev() {
        strides[k] = acc;
        acc *= shape[k] as isize;
    }
    strides
}

/// The `shape` elements of `width` bytes at `base`, element `i` at `base + Σ i_k·strides_k`
/// (strides in bytes): held in place (kept by `owner`) when they are C-contiguous, else copied
/// into C order.
///
/// # Safety
/// Every element so addressed must be readable while `owner` lives.
unsafe fn gather(base: *const u8, shape: &[usize], strides: &[isize], width: usize, owner: Py<PyAny>) -> Data {
    let n: usize = shape.iter().product();
    // C order, where a dimension of one may have any stride
    let contiguous = shape.iter().zip(strides).zip(c_strides(shape, width)).all(|((&d, &s), c)| d <= 1 || s == c);
    if n == 0 {
        return Data::Owned(Vec::new());
    }
    if contiguous {
        return Data::Held { ptr: base, owner };
    }
    let mut out = Vec::with_capacity(n * width);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..n {
        let offset: isize = index.iter().zip(strides).map(|(&i, &s)| i as isize * s).sum();
        // SAFETY: `index` is within `shape`, so the element is one the caller guarantees readable.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(base.offset(offset), width) });
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    Data::Owned(out)
}

/// Reads a DLPack capsule (kept alive, and so its producer's memory, while copying; its owner
/// frees it when the capsule goes).
fn from_dlpack(capsule: &Bound<'_, PyAny>, what: &str) -> PyResult<Array> {
    let capsule = capsule
        .cast::<PyCapsule>()
        .map_err(|_| PyTypeError::new_err(format!("{what}: __dlpack__() did not return a capsule")))?;
    // SAFETY: a `dltensor` capsule holds a DLManagedTensor (the DLPack protocol), alive as long as
    // the capsule, which `capsule` keeps.
    let managed =
        unsafe { pyo3::ffi::PyCapsule_GetPointer(capsule.as_ptr(), DLTENSOR.as_ptr()) } as *const DLManagedTensor;
    if managed.is_null() {
        return Err(PyErr::fetch(capsule.py()));
    }
    // SAFETY: as above.
    let t = unsafe { &(*managed).dl_tensor };
    if t.device.device_type != KDL_CPU {
        return Err(PyValueError::new_err(format!(
            "{what} is not in CPU memory (DLPack device type {})",
            t.device.device_type
        )));
    }
    let dtype = dlpack_dtype(&t.dtype).ok_or_else(|| {
        let kind = match t.dtype.code {
            0 => "int",
            1 => "uint",
            2 => "float",
            4 => "bfloat",
            5 => "complex",
            6 => "bool",
            _ => "opaque",
        };
        let lanes = if t.dtype.lanes > 1 { format!(" x{}", t.dtype.lanes) } else { String::new() };
        PyTypeError::new_err(format!("{what} is {kind}{}{lanes}, which swa does not read", t.dtype.bits))
    })?;
    let ndim = usize::try_from(t.ndim).unwrap_or(0);
    // SAFETY: DLPack gives `ndim` dimensions (and strides, where not null).
    let dims: &[i64] = if ndim == 0 { &[] } else { unsafe { std::slice::from_raw_parts(t.shape, ndim) } };
    let shape: Vec<usize> = dims.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
    let width = dtype.width();
    let strides: Vec<isize> = if t.strides.is_null() || ndim == 0 {
        c_strides(&shape, width)
    } else {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(t.strides, ndim) }.iter().map(|&s| s as isize * width as isize).collect()
    };
    // SAFETY: the producer's memory holds the array's elements at these strides while the
    // capsule, kept as the owner, lives.
    let base = unsafe { (t.data as *const u8).add(t.byte_offset as usize) };
    // SAFETY: as above.
    let data = unsafe { gather(base, &shape, &strides, width, capsule.clone().into_any().unbind()) };
    Ok(Array { dtype, shape, data })
}

fn typestr_dtype(s: &str) -> Option<DType> {
    let (order, rest) = s.split_at(1);
    if order == ">" && !rest.ends_with('1') {
        return None;
    }
    Some(match rest {
        "f8" => DType::F64,
        "f4" => DType::F32,
        "f2" => DType::F16,
        "i8" => DType::I64,
        "i4" => DType::I32,
        "i2" => DType::I16,
        "i1" => DType::I8,
        "u8" => DType::U64,
        "u4" => DType::U32,
        "u2" => DType::U16,
        "u1" => DType::U8,
        "b1" => DType::Bool,
        _ => return None,
    })
}

/// Reads an object through numpy's `__array_interface__` (the object, held, keeps its memory).
fn from_array_interface(obj: &Bound<'_, PyAny>, iface: &Bound<'_, PyAny>, what: &str) -> PyResult<Array> {
    let iface = iface
        .cast::<PyDict>()
        .map_err(|_| PyTypeError::new_err(format!("{what}: __array_interface__ is not a dict")))?;
    let get = |k: &str| iface.get_item(k).ok().flatten();
    let typestr: String = get("typestr").map(|t| t.extract()).transpose()?.unwrap_or_default();
    let dtype = typestr_dtype(&typestr)
        .ok_or_else(|| PyTypeError::new_err(format!("{what} has an element type swa does not read ({typestr})")))?;
    let shape: Vec<usize> = get("shape").map(|s| s.extract()).transpose()?.unwrap_or_default();
    let data =
        get("data").ok_or_else(|| PyTypeError::new_err(format!("{what}: its memory is not exposed (no `data`)")))?;
    let data =
        data.cast::<PyTuple>().map_err(|_| PyTypeError::new_err(format!("{what}: its memory is not exposed")))?;
    let ptr: usize = data.get_item(0)?.extract()?;
    let width = dtype.width();
    let strides: Vec<isize> = match get("strides").filter(|s| !s.is_none()) {
        Some(s) => s.extract()?,
        None => c_strides(&shape, width),
    };
    // SAFETY: numpy's array interface describes memory the object owns (`obj`, the owner).
    let data = unsafe { gather(ptr as *const u8, &shape, &strides, width, obj.clone().unbind()) };
    Ok(Array { dtype, shape, data })
}

/// Reads `obj` (a tensor, an array) as an array; `what` names it in errors (`batch 3, input x`).
/// A torch tensor that requires grad is detached, and one on a GPU copied to the CPU, as the
/// user would do by hand.
pub fn read(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Array> {
    let py = obj.py();
    if let Ok(f) = obj.getattr("__dlpack__") {
        match f.call0() {
            Ok(capsule) => match from_dlpack(&capsule, what) {
                Err(e) if e.is_instance_of::<PyValueError>(py) && obj.hasattr("cpu")? => {
                    return read(&obj.call_method0("cpu")?, what)
                }
                other => return other,
            },
            Err(e) => {
                if obj.getattr("requires_grad").and_then(|r| r.extract::<bool>()).unwrap_or(false) {
                    return read(&obj.call_method0("detach")?, what);
                }
                if !obj.hasattr("__array_interface__")? {
                    return Err(e);
                }
            }
        }
    }
    if let Ok(iface) = obj.getattr("__array_interface__") {
        return from_array_interface(obj, &iface, what);
    }
    let kind = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into());
    let hint = if kind == "list" || kind == "tuple" {
        " (a `datasets` dataset gives lists unless formatted: .with_format(\"torch\") or \"numpy\")"
    } else {
        ""
    };
    Err(PyTypeError::new_err(format!(
        "{what} is of type {kind}, not an array or tensor (swa reads objects with __dlpack__ or \
         __array_interface__: torch tensors, numpy arrays){hint}"
    )))
}

/// Writes `tensors` (name → tensor/array, in the dict's order: a `state_dict()`) to `path` as
/// safetensors, for the stages that read checkpoints from files.
#[pyfunction]
pub fn save_tensors(py: Python<'_>, tensors: &Bound<'_, PyDict>, path: std::path::PathBuf, what: &str) -> PyResult<()> {
    let mut arrays = Vec::with_capacity(tensors.len());
    for (k, v) in tensors.iter() {
        let name: String = k.extract().map_err(|_| PyTypeError::new_err(format!("{what}: a key is not a str: {k}")))?;
        arrays.push((name.clone(), read(&v, &format!("{what}[{name:?}]"))?));
    }
    py.detach(|| {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = arrays
            .iter()
            .map(|(n, a)| {
                safetensors::tensor::TensorView::new(a.dtype.safetensors(), a.shape.clone(), a.bytes())
                    .map(|v| (n.clone(), v))
                    .map_err(|e| PyValueError::new_err(format!("{what}[{n:?}]: {e}")))
            })
            .collect::<PyResult<_>>()?;
        safetensors::serialize_to_file(views, None, &path)
            .map_err(|e| PyValueError::new_err(format!("{what}: writing {}: {e}", path.display())))
    })
}

/// Whether `obj` would be read in place (C-contiguous, aligned, in CPU memory): for the tests.
#[pyfunction]
pub fn reads_in_place(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    let a = read(obj, "the array")?;
    let aligned = (a.bytes().as_ptr() as usize).is_multiple_of(a.dtype.width());
    Ok(a.is_held() && aligned)
}
