//! A batch of samples as a sample source hands it to a pass: the model's inputs as typed tensors,
//! which samples they are, and the samples' targets where the source carries them. A leaf:
//! sample sources ([`crate::inputs`]) make batches, the runtime ([`crate::runtime`]) runs their
//! inputs, and evaluation tasks ([`crate::tasks`]) read their targets.

use std::ops::Range;

/// The values of a tensor, row-major, in one of the element types a model takes or a task reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// float32 (images, arrays, regression targets, multi-hot rows).
    F32(Vec<f32>),
    /// int64 (class indices, token ids, segmentation masks).
    I64(Vec<i64>),
    /// float32 or int64 values another owner keeps, read in place (a caller's C-contiguous
    /// array: the Python module's batches reach ONNX Runtime without a copy).
    Held(Held),
}

/// The element type of [`Held`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldType {
    /// float32.
    F32,
    /// int64.
    I64,
}

/// Values in memory that `owner` keeps alive and unchanged while any clone of this exists.
#[derive(Clone)]
pub struct Held {
    ptr: *const u8,
    len: usize,
    elem: HeldType,
    _owner: std::sync::Arc<dyn std::any::Any + Send + Sync>,
}

// SAFETY: `Held` only reads its memory, which `Held::new`'s caller guarantees stays valid and
// unchanged while the owner (itself Send + Sync) is alive, from any thread.
unsafe impl Send for Held {}
// SAFETY: as above: shared reads only.
unsafe impl Sync for Held {}

impl Held {
    /// `len` values of type `elem` at `ptr`, kept alive by `owner`.
    ///
    /// # Safety
    /// `ptr` must be aligned for `elem` and point to `len` initialised values that stay valid
    /// and are not written for as long as `owner` lives (every clone of it), from any thread.
    pub unsafe fn new(
        ptr: *const u8,
        len: usize,
        elem: HeldType,
        owner: std::sync::Arc<dyn std::any::Any + Send + Sync>,
    ) -> Held {
        Held { ptr, len, elem, _owner: owner }
    }

    /// The values if they are float32.
    pub fn f32(&self) -> Option<&[f32]> {
        // SAFETY: `new`'s contract: `len` aligned, initialised f32 values, valid while `self` lives.
        (self.elem == HeldType::F32).then(|| unsafe { std::slice::from_raw_parts(self.ptr as *const f32, self.len) })
    }

    /// The values if they are int64.
    pub fn i64(&self) -> Option<&[i64]> {
        // SAFETY: as for `f32`.
        (self.elem == HeldType::I64).then(|| unsafe { std::slice::from_raw_parts(self.ptr as *const i64, self.len) })
    }

    /// The values, copied.
    pub fn to_owned(&self) -> Values {
        match (self.f32(), self.i64()) {
            (Some(v), _) => Values::F32(v.to_vec()),
            (_, Some(v)) => Values::I64(v.to_vec()),
            _ => unreachable!("one element type"),
        }
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({:?} x {})", self.elem, self.len)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Held) -> bool {
        self.f32() == other.f32() && self.i64() == other.i64()
    }
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::Held(h) => h.len,
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values if they are float32.
    pub fn into_f32(self) -> Option<Vec<f32>> {
        match self {
            Values::F32(v) => Some(v),
            Values::I64(_) => None,
            Values::Held(h) => h.f32().map(<[f32]>::to_vec),
        }
    }

    /// The element type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Values::F32(_) | Values::Held(Held { elem: HeldType::F32, .. }) => "float32",
            Values::I64(_) | Values::Held(Held { elem: HeldType::I64, .. }) => "int64",
        }
    }
}

/// A tensor: its shape (rows first) and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Shape, the batch dimension first.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Values,
}

impl Tensor {
    /// A float32 tensor.
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Self {
        Tensor { shape, values: Values::F32(values) }
    }

    /// An int64 tensor.
    pub fn i64(shape: Vec<usize>, values: Vec<i64>) -> Self {
        Tensor { shape, values: Values::I64(values) }
    }
}

impl Tensor {
    /// Values per row (the product of the dimensions after the first).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// The rows `indices` (in this order), as a tensor of `indices.len()` rows.
    pub fn rows(&self, indices: &[usize]) -> Tensor {
        let k = self.row_len();
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = indices.len();
        }
        let owned;
        let values = match &self.values {
            Values::Held(h) => {
                owned = h.to_owned();
                &owned
            }
            other => other,
        };
        let values = match values {
            Values::Held(_) => unreachable!("copied above"),
            Values::F32(v) => {
                Values::F32(indices.iter().flat_map(|&i| v[i * k..(i + 1) * k].iter().copied()).collect())
            }
            Values::I64(v) => {
                Values::I64(indices.iter().flat_map(|&i| v[i * k..(i + 1) * k].iter().copied()).collect())
            }
        };
        Tensor { shape, values }
    }
}

/// One batch of a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The samples this batch stands for, in the set's numbering: the batch's range of the pass,
    /// samples skipped while reading it (images that could not be decoded) included.
    pub span: Range<usize>,
    /// The index in the set of each row (fewer than `span` holds when samples were skipped).
    pub indices: Vec<usize>,
    /// One tensor per model input, in the model's order, each with `indices.len()` rows.
    pub inputs: Vec<Tensor>,
    /// The rows' targets, where the source carries them.
    pub targets: Option<Tensor>,
}
