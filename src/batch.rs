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
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
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
        }
    }

    /// The element type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Values::F32(_) => "float32",
            Values::I64(_) => "int64",
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
        let values = match &self.values {
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
