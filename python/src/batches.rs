//! Samples from a Python iterable (a `DataLoader`, a `datasets` iterator, a generator, a list):
//! a [`Provider`] registered under the keyword's name (`<batches>`), opened once per pass by
//! calling `iter()` on it, each batch pulled under the GIL on the pass's reader thread while
//! ONNX Runtime runs the one before on others.
//!
//! A batch is an array or tensor (the model's one input), a dict keyed by the model's input names
//! (other keys are left out; `label` or `labels` holds the targets), a tuple or list of arrays
//! (one per input, in the model's order), or a pair `(inputs, labels)` with inputs as any of
//! these (further elements, as a `TensorDataset` gives, are left out). Float inputs must be
//! float32; integer inputs (token ids) of any integer type are widened to int64.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use swa::batch::{Batch, HeldType, Tensor, Values};
use swa::inputs::samples::{Batches, Provider};
use swa::inputs::{DataOptions, SampleSource};
use swa::onnx::{InputSpec, InputType};
use swa::{Error, Result};

/// A Python iterable of batches, and what the call said of it.
pub struct Iterable {
    /// The iterable.
    pub object: Py<PyAny>,
    /// The name it is registered under (`<batches>`), which messages name.
    pub name: PathBuf,
    /// Whether its batches must carry labels (an evaluation's).
    pub labelled: bool,
    /// Whether its arrays may be read in place: only where each batch is new memory (a
    /// DataLoader's default collation). A pass reads ahead while ONNX Runtime runs, so an
    /// iterable that refills one array for the next batch would change a batch being read.
    pub in_place: bool,
    /// Times it was opened (an iterator is read once).
    pub opened: Mutex<usize>,
    /// The Python exception behind the last error, for `raise ... from`.
    pub cause: Arc<Mutex<Option<PyErr>>>,
}

impl Provider for Iterable {
    fn open(&self, specs: &[InputSpec], _data: &DataOptions) -> Result<Box<dyn SampleSource>> {
        let mut opened = self.opened.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *opened += 1;
        let name = self.name.clone();
        let iterator = Python::attach(|py| -> Result<Py<PyAny>> {
            let object = self.object.bind(py);
            let it = object.try_iter().map_err(|e| {
                let kind = object.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                self.keep(e);
                Error::format(
                    &name,
                    format!("is a {kind}, which is not iterable: give a DataLoader, a list or a generator of batches"),
                )
            })?;
            if it.is(object) && *opened > 1 {
                return Err(Error::format(
                    &name,
                    "is an iterator (a generator), which can be read once, and it is read again here (each model \
                     evaluated reads its samples): give a re-iterable object (a DataLoader, a list, a `datasets` \
                     dataset)",
                ));
            }
            Ok(it.into_any().unbind())
        })?;
        Ok(Box::new(Source {
            iterator: Mutex::new(Some(iterator)),
            specs: specs.to_vec(),
            name,
            labelled: self.labelled,
            in_place: self.in_place,
            cause: self.cause.clone(),
        }))
    }
}

impl Iterable {
    fn keep(&self, e: PyErr) {
        *self.cause.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
    }
}

/// One pass over an [`Iterable`].
struct Source {
    iterator: Mutex<Option<Py<PyAny>>>,
    specs: Vec<InputSpec>,
    name: PathBuf,
    labelled: bool,
    in_place: bool,
    cause: Arc<Mutex<Option<PyErr>>>,
}

impl SampleSource for Source {
    fn len(&self) -> Option<usize> {
        None
    }

    fn reads_by_range(&self) -> bool {
        false
    }

    fn sample_shapes(&self) -> Vec<Vec<usize>> {
        Vec::new()
    }

    fn own_batches(&self) -> bool {
        true
    }

    fn has_targets(&self) -> bool {
        self.labelled
    }

    fn batches(&self, range: Range<usize>, _batch: usize) -> Result<Batches<'_>> {
        let iterator = self.iterator.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some(iterator) = iterator else {
            return Err(Error::format(&self.name, "was already read in this pass"));
        };
        if range.start != 0 {
            return Err(Error::format(&self.name, "is read once from its first batch: it cannot start elsewhere"));
        }
        let mut pull = Pull { source: self, iterator, end: range.end, seen: 0, k: 0, done: false };
        Ok(Box::new(std::iter::from_fn(move || pull.next())))
    }
}

/// The reading of one pass: batch `k` next, `seen` samples so far, `end` at most.
struct Pull<'a> {
    source: &'a Source,
    iterator: Py<PyAny>,
    end: usize,
    seen: usize,
    k: usize,
    done: bool,
}

impl Pull<'_> {
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done || self.seen >= self.end {
            return None;
        }
        let out = Python::attach(|py| self.pull(py));
        match out {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn fail(&self, message: impl std::fmt::Display) -> Error {
        Error::format(&self.source.name, format!("batch {}: {message}", self.k))
    }

    fn python(&self, e: PyErr, py: Python<'_>, doing: &str) -> Error {
        let text = e.value(py).to_string();
        let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_default();
        *self.source.cause.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
        self.fail(format!("{doing} raised {kind}: {text}"))
    }

    fn pull(&mut self, py: Python<'_>) -> Result<Option<Batch>> {
        swa::progress::check_stop()?;
        let it = self.iterator.bind(py);
        let item = match it.call_method0("__next__") {
            Ok(item) => item,
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => {
                if self.k == 0 {
                    return Err(Error::format(&self.source.name, "yielded no batches: there are no samples to run"));
                }
                return Ok(None);
            }
            Err(e) => {
                swa::progress::check_stop()?;
                return Err(self.python(e, py, "reading it"));
            }
        };
        let mut batch = self.convert(&item)?;
        let rows = batch.indices.len();
        if self.seen + rows > self.end {
            // `max_samples` ends inside this batch: its first rows.
            let keep: Vec<usize> = (0..self.end - self.seen).collect();
            batch.inputs = batch.inputs.iter().map(|t| t.rows(&keep)).collect();
            batch.targets = batch.targets.map(|t| t.rows(&keep));
            batch.indices.truncate(keep.len());
        }
        let n = batch.indices.len();
        batch.span = self.seen..self.seen + n;
        batch.indices = batch.span.clone().collect();
        self.seen += n;
        self.k += 1;
        Ok(Some(batch))
    }

    /// The batch `item` as the model's inputs (and labels, for an evaluation).
    fn convert(&self, item: &Bound<'_, PyAny>) -> Result<Batch> {
        let specs = &self.source.specs;
        let names = || specs.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ");
        let (inputs, labels) = if let Ok(d) = item.cast::<PyDict>() {
            (item.clone(), label_of(d))
        } else if item.is_instance_of::<PyTuple>() || item.is_instance_of::<PyList>() {
            let seq: Vec<Bound<'_, PyAny>> =
                item.try_iter().and_then(|i| i.collect()).map_err(|e| self.python(e, item.py(), "reading it"))?;
            let arrays_only = seq.iter().all(crate::arrays::is_array);
            if arrays_only && seq.len() == specs.len() && !self.source.labelled && specs.len() > 1 {
                // One array per input, in the model's order.
                (item.clone(), None)
            } else {
                let first = seq.first().cloned().ok_or_else(|| self.fail("is an empty tuple"))?;
                (first, seq.get(1).cloned())
            }
        } else {
            (item.clone(), None)
        };
        let mut tensors = Vec::with_capacity(specs.len());
        if let Ok(d) = inputs.cast::<PyDict>() {
            for spec in specs {
                let value = d.get_item(&spec.name).ok().flatten().ok_or_else(|| {
                    let keys: Vec<String> = d.keys().iter().map(|k| k.to_string()).collect();
                    self.fail(format!(
                        "has no key `{}`: the model's inputs are {}, the batch's keys {}",
                        spec.name,
                        names(),
                        keys.join(", ")
                    ))
                })?;
                tensors.push(self.input(&value, spec)?);
            }
        } else if inputs.is_instance_of::<PyTuple>() || inputs.is_instance_of::<PyList>() {
            let seq: Vec<Bound<'_, PyAny>> =
                inputs.try_iter().and_then(|i| i.collect()).map_err(|e| self.python(e, inputs.py(), "reading it"))?;
            if seq.len() != specs.len() {
                return Err(self.fail(format!(
                    "holds {} inputs where the model takes {} ({}): yield one array per input, in this order, or a \
                     dict keyed by the input names",
                    seq.len(),
                    specs.len(),
                    names()
                )));
            }
            for (value, spec) in seq.iter().zip(specs) {
                tensors.push(self.input(value, spec)?);
            }
        } else {
            if specs.len() != 1 {
                return Err(self.fail(format!(
                    "is one array, but the model takes {} inputs ({}): yield a dict keyed by the input names (or a \
                     tuple of arrays in this order)",
                    specs.len(),
                    names()
                )));
            }
            tensors.push(self.input(&inputs, &specs[0])?);
        }
        let rows = tensors.first().and_then(|t| t.shape.first().copied()).unwrap_or(0);
        for (t, spec) in tensors.iter().zip(specs) {
            if t.shape.first() != Some(&rows) {
                return Err(self.fail(format!(
                    "input `{}` has {} rows and input `{}` {rows}: every input of a batch holds the same samples",
                    spec.name,
                    t.shape.first().copied().unwrap_or(0),
                    specs[0].name
                )));
            }
        }
        let targets = match (self.source.labelled, labels) {
            (false, _) => None,
            (true, None) => return Err(self.fail(
                "has no labels: an evaluation needs (inputs, labels) pairs, or dicts with a `label` or `labels` key",
            )),
            (true, Some(l)) => Some(self.labels(&l, rows)?),
        };
        Ok(Batch { span: 0..rows, indices: (0..rows).collect(), inputs: tensors, targets })
    }

    /// One input of the batch, checked against the model's declaration of it.
    fn input(&self, value: &Bound<'_, PyAny>, spec: &InputSpec) -> Result<Tensor> {
        let what = format!("input `{}`", spec.name);
        let a =
            crate::arrays::read(value, &what).map_err(|e| self.python(e, value.py(), &format!("reading {what}")))?;
        let want: Vec<String> = spec.dims.iter().map(|&d| if d < 0 { "?".into() } else { d.to_string() }).collect();
        let want = format!("[{}]", want.join(", "));
        if !spec.dims.is_empty() {
            let fits = a.shape.len() == spec.dims.len()
                && spec.dims.iter().zip(&a.shape).all(|(&d, &s)| d < 0 || d as usize == s);
            if !fits {
                let one_sample = a.shape.len() + 1 == spec.dims.len();
                return Err(self.fail(format!(
                    "{what} has shape {:?}, but the model expects {want}{}",
                    a.shape,
                    if one_sample {
                        " (one sample, not a batch? batch them: DataLoader(dataset, batch_size=...), or `datasets`' \
                         .iter(batch_size=...))"
                    } else {
                        ""
                    }
                )));
            }
        }
        if a.shape.first().copied().unwrap_or(0) == 0 {
            return Err(self.fail(format!("{what} has shape {:?}: a batch holds at least one sample", a.shape)));
        }
        let (shape, dtype) = (a.shape.clone(), a.dtype);
        let values = match spec.elem {
            InputType::Float => a.into_values(HeldType::F32, self.source.in_place).ok_or_else(|| {
                self.fail(format!(
                    "{what} is {}, but the model takes float32 (convert with `.float()` or `.astype(np.float32)`)",
                    dtype.name()
                ))
            })?,
            InputType::Int64 => a.into_values(HeldType::I64, self.source.in_place).ok_or_else(|| {
                self.fail(format!(
                    "{what} is {}, but the model takes int64 (token ids, indices): give integers",
                    dtype.name()
                ))
            })?,
        };
        let floats = match &values {
            Values::F32(v) => Some(v.as_slice()),
            Values::Held(h) => h.f32(),
            Values::I64(_) => None,
        };
        if let Some(at) = floats.and_then(|v| v.iter().position(|v| !v.is_finite())) {
            let row = shape.iter().skip(1).product::<usize>().max(1);
            return Err(self.fail(format!(
                "{what} holds {} at element {at} (sample {} of the batch): inputs must be finite",
                floats.map_or(0.0, |v| v[at]),
                at / row
            )));
        }
        Ok(Tensor { shape, values })
    }

    /// The batch's labels: one per sample.
    fn labels(&self, value: &Bound<'_, PyAny>, rows: usize) -> Result<Tensor> {
        let a =
            crate::arrays::read(value, "the labels").map_err(|e| self.python(e, value.py(), "reading the labels"))?;
        if a.shape.first() != Some(&rows) {
            return Err(
                self.fail(format!("has {rows} samples but labels of shape {:?}: one label per sample", a.shape))
            );
        }
        if let Some(v) = a.to_i64() {
            return Ok(Tensor::i64(a.shape, v));
        }
        match a.to_f32() {
            Some(v) => Ok(Tensor::f32(a.shape, v)),
            None => Err(self.fail(format!("labels are {}: give integer class indices (int64)", a.dtype.name()))),
        }
    }
}

/// The labels of a dict batch: its `label` or `labels` key.
fn label_of<'py>(d: &Bound<'py, PyDict>) -> Option<Bound<'py, PyAny>> {
    ["label", "labels"].iter().find_map(|k| d.get_item(k).ok().flatten())
}
