//! Samples from a Python iterable (a `DataLoader`, a `datasets` iterator, a generator, a list).
//!
//! Python code runs on the thread that called swa, as in a plain `for batch in loader` loop: the
//! command runs on a worker thread, and the caller's thread is the [`Pump`], which holds the
//! iterables and answers the worker's requests (open an iterable, give its next batch) while
//! waiting with the GIL released. So the user's loader runs where it expects to, Ctrl-C raises
//! `KeyboardInterrupt` in it at once (a stuck loader included), and a `DataLoader`'s iterator is
//! closed (its workers shut down) on that thread. The pass's reading thread asks for the next
//! batch as soon as it has handed on the last, so the loader makes it while ONNX Runtime runs.
//!
//! A batch is an array or tensor (the model's one input), a dict keyed by the model's input names
//! (other keys are left out; `label` or `labels` holds the labels), or a tuple or list: nested,
//! `(inputs, labels, ...)` with inputs a dict or a tuple of arrays; flat, the model's inputs in
//! its order and then the labels (a `TensorDataset(x, y)` or `TensorDataset(ids, x, y)` batch),
//! further elements left out. Float inputs must be float32; integer inputs (token ids) of any
//! integer type are widened to int64.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use swa::batch::{Batch, HeldType, Tensor, Values};
use swa::inputs::samples::{Batches, Provider};
use swa::inputs::{DataOptions, SampleSource};
use swa::onnx::{InputSpec, InputType};
use swa::{Error, Result};

/// What the worker asks of the pump.
pub enum Message {
    /// Open iterable `.0` for a model with inputs `.1`: the new iterator's id.
    Open(usize, Vec<InputSpec>, Sender<Result<usize>>),
    /// The next batch of iterator `.0`, stopping after sample `.1`.
    Next(usize, usize, Sender<Result<Option<Batch>>>),
    /// Iterator `.0` is no longer read.
    Close(usize),
    /// The command has ended.
    Finished,
}

/// A Python iterable as the library sees it: the pump that holds it, and its index there.
pub struct Iterable {
    /// Its index in the pump.
    pub index: usize,
    /// Whether its batches carry labels (an evaluation's).
    pub labelled: bool,
    /// The pump's mailbox.
    pub pump: Sender<Message>,
}

/// The pump stopped (the call is ending): the pass stops as if interrupted.
fn gone() -> Error {
    Error::Interrupted
}

impl Provider for Iterable {
    fn open(&self, specs: &[InputSpec], _data: &DataOptions) -> Result<Box<dyn SampleSource>> {
        let (tx, rx) = mpsc::channel();
        self.pump.send(Message::Open(self.index, specs.to_vec(), tx)).map_err(|_| gone())?;
        let id = rx.recv().map_err(|_| gone())??;
        Ok(Box::new(Source { id, labelled: self.labelled, pump: self.pump.clone() }))
    }
}

/// One pass over an [`Iterable`]: the pump's iterator `id`.
struct Source {
    id: usize,
    labelled: bool,
    pump: Sender<Message>,
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self.pump.send(Message::Close(self.id));
    }
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
        if range.start != 0 {
            return Err(Error::usage(
                "batches from Python are read once, from their first: a pass cannot start elsewhere",
            ));
        }
        let (id, end, pump) = (self.id, range.end, self.pump.clone());
        let mut done = false;
        Ok(Box::new(std::iter::from_fn(move || {
            if done {
                return None;
            }
            let (tx, rx) = mpsc::channel();
            let answer =
                pump.send(Message::Next(id, end, tx)).map_err(|_| gone()).and_then(|_| rx.recv().map_err(|_| gone()));
            match answer.and_then(|r| r) {
                Ok(Some(b)) => Some(Ok(b)),
                Ok(None) => {
                    done = true;
                    None
                }
                Err(e) => {
                    done = true;
                    Some(Err(e))
                }
            }
        })))
    }
}

/// An iterable the pump holds.
struct Holding {
    object: Py<PyAny>,
    name: PathBuf,
    labelled: bool,
    /// Whether its arrays may be read in place: only where each batch is new memory (a
    /// DataLoader's default collation). A pass reads ahead while ONNX Runtime runs, so an
    /// iterable that refills one array for the next batch would change a batch being read.
    in_place: bool,
    opened: usize,
}

/// An iterator the pump reads: batch `k` next, `seen` samples so far.
struct Reading {
    iterator: Py<PyAny>,
    from: usize,
    specs: Vec<InputSpec>,
    k: usize,
    seen: usize,
    done: bool,
}

/// The caller's side of a call: the iterables, their iterators, and the Python exception behind
/// the first failure (`raise ... from`, or the `KeyboardInterrupt` itself).
pub struct Pump {
    held: Vec<Holding>,
    reading: HashMap<usize, Reading>,
    next_id: usize,
    /// The Python exception behind an error, kept for the caller.
    pub cause: Option<PyErr>,
    /// The `KeyboardInterrupt` raised in the caller's thread, if one was.
    pub interrupt: Option<PyErr>,
}

impl Pump {
    pub fn new() -> Pump {
        Pump { held: Vec::new(), reading: HashMap::new(), next_id: 0, cause: None, interrupt: None }
    }

    /// Iterables held so far: the index the next one gets.
    pub fn count(&self) -> usize {
        self.held.len()
    }

    /// Holds `object` under `name`; returns its index for [`Iterable::index`].
    pub fn hold(&mut self, object: Py<PyAny>, name: PathBuf, labelled: bool, in_place: bool) -> usize {
        self.held.push(Holding { object, name, labelled, in_place, opened: 0 });
        self.held.len() - 1
    }

    /// Whether `e` is the user's Ctrl-C: it stops the call and is raised again at its end.
    fn interrupted(&mut self, py: Python<'_>, e: PyErr) -> Option<Error> {
        if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) {
            swa::progress::request_stop();
            self.interrupt.get_or_insert(e);
            return Some(Error::Interrupted);
        }
        None
    }

    /// A KeyboardInterrupt from `check_signals` (Ctrl-C while no Python code ran).
    pub fn signal(&mut self, py: Python<'_>, e: PyErr) {
        if self.interrupted(py, e).is_none() {
            // Another exception from a signal handler: the call stops, and it is raised.
            swa::progress::request_stop();
        }
    }

    pub fn handle(&mut self, py: Python<'_>, message: Message) {
        match message {
            Message::Open(index, specs, reply) => {
                let _ = reply.send(self.open(py, index, specs));
            }
            Message::Next(id, end, reply) => {
                let answer = match swa::progress::check_stop() {
                    Err(e) => Err(e),
                    Ok(()) => self.next(py, id, end),
                };
                let _ = reply.send(answer);
            }
            Message::Close(id) => {
                // The iterator's `__del__` (a DataLoader's shuts its workers down) runs here.
                drop(self.reading.remove(&id));
            }
            Message::Finished => {}
        }
    }

    /// Drops every iterator, here on the caller's thread with the GIL.
    pub fn close(&mut self) {
        self.reading.clear();
    }

    fn open(&mut self, py: Python<'_>, index: usize, specs: Vec<InputSpec>) -> Result<usize> {
        let held = &mut self.held[index];
        held.opened += 1;
        let object = held.object.bind(py);
        let it = match object.try_iter() {
            Ok(it) => it,
            Err(e) => {
                let kind = object.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                let name = held.name.clone();
                if let Some(stop) = self.interrupted(py, e.clone_ref(py)) {
                    return Err(stop);
                }
                self.cause.get_or_insert(e);
                return Err(Error::format(
                    &name,
                    format!("is a {kind}, which is not iterable: give a DataLoader, a list or a generator of batches"),
                ));
            }
        };
        if it.is(object) && held.opened > 1 {
            return Err(Error::format(&held.name, READ_ONCE));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.reading
            .insert(id, Reading { iterator: it.into_any().unbind(), from: index, specs, k: 0, seen: 0, done: false });
        Ok(id)
    }

    fn next(&mut self, py: Python<'_>, id: usize, end: usize) -> Result<Option<Batch>> {
        let Some(r) = self.reading.get(&id) else { return Ok(None) };
        if r.done || r.seen >= end {
            return Ok(None);
        }
        let (iterator, specs, k, seen) = (r.iterator.clone_ref(py), r.specs.clone(), r.k, r.seen);
        let held = &self.held[r.from];
        let (name, labelled, in_place) = (held.name.clone(), held.labelled, held.in_place);
        let at = Place { name: &name, k, labelled, in_place, specs: &specs };
        let pulled = iterator.bind(py).call_method0("__next__");
        let converted = match pulled {
            Ok(item) => at.convert(&item).map(Some),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => Ok(None),
            Err(e) => Err(at.failed(e, py, "reading it")),
        };
        let r = self.reading.get_mut(&id).expect("read above");
        let mut batch = match converted {
            Ok(Some(b)) => b,
            Ok(None) => {
                r.done = true;
                if k == 0 {
                    return Err(Error::format(&name, "yielded no batches: there are no samples to run"));
                }
                return Ok(None);
            }
            Err((error, cause)) => {
                r.done = true;
                return Err(match cause {
                    Some(e) => self.keep(py, e, error),
                    None => error,
                });
            }
        };
        let rows = batch.indices.len();
        if seen + rows > end {
            // `max_samples` ends inside this batch: its first rows.
            let keep: Vec<usize> = (0..end - seen).collect();
            batch.inputs = batch.inputs.iter().map(|t| t.rows(&keep)).collect();
            batch.targets = batch.targets.map(|t| t.rows(&keep));
            batch.indices.truncate(keep.len());
        }
        let n = batch.indices.len();
        batch.span = seen..seen + n;
        batch.indices = batch.span.clone().collect();
        r.seen += n;
        r.k += 1;
        Ok(Some(batch))
    }

    /// Keeps `e` as the cause of `error` (or, for Ctrl-C, stops the call).
    fn keep(&mut self, py: Python<'_>, e: PyErr, error: Error) -> Error {
        if let Some(stop) = self.interrupted(py, e.clone_ref(py)) {
            return stop;
        }
        self.cause.get_or_insert(e);
        error
    }
}

impl Default for Pump {
    fn default() -> Self {
        Pump::new()
    }
}

/// The message for an iterator read a second time.
pub const READ_ONCE: &str = "is an iterator (a generator), which can be read once, and it is read again here (each \
                             model evaluated reads its samples): give a re-iterable object (a DataLoader, a list of \
                             batches)";

/// Where a batch is being read, for its conversion and messages.
struct Place<'a> {
    name: &'a PathBuf,
    k: usize,
    labelled: bool,
    in_place: bool,
    specs: &'a [InputSpec],
}

/// A failed conversion: the error, and the Python exception behind it.
type Failed = (Error, Option<PyErr>);

/// A batch's inputs with the declarations they are for, and its labels.
type Parts<'py, 'a> = (Vec<(Bound<'py, PyAny>, &'a InputSpec)>, Option<Bound<'py, PyAny>>);

// A failure is the cold path of a conversion, taken once per call at most: not worth a box.
#[allow(clippy::result_large_err)]
impl Place<'_> {
    /// An error about this batch, counted from 1 as the command's messages count batches.
    fn fail(&self, message: impl std::fmt::Display) -> Error {
        Error::format(self.name, format!("batch {}: {message}", self.k + 1))
    }

    fn python(&self, e: &PyErr, py: Python<'_>, doing: &str) -> Error {
        let text = e.value(py).to_string();
        let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_default();
        self.fail(format!("{doing} raised {kind}: {text}"))
    }

    fn failed(&self, e: PyErr, py: Python<'_>, doing: &str) -> Failed {
        (self.python(&e, py, doing), Some(e))
    }

    fn names(&self) -> String {
        self.specs.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ")
    }

    /// The batch `item` as the model's inputs (and labels, for an evaluation).
    fn convert<'py>(&self, item: &Bound<'py, PyAny>) -> std::result::Result<Batch, Failed> {
        let py = item.py();
        let specs = self.specs;
        let n = specs.len();
        let sequence = |x: &Bound<'py, PyAny>| -> std::result::Result<Vec<Bound<'py, PyAny>>, Failed> {
            x.try_iter().and_then(|i| i.collect()).map_err(|e| self.failed(e, py, "reading it"))
        };
        let is_seq = |x: &Bound<'py, PyAny>| x.is_instance_of::<PyTuple>() || x.is_instance_of::<PyList>();
        let (inputs, labels): Parts<'py, '_> = if let Ok(d) = item.cast::<PyDict>() {
            (self.by_name(d)?, label_of(d))
        } else if is_seq(item) {
            let seq = sequence(item)?;
            let first = seq.first().cloned().ok_or_else(|| (self.fail("is an empty tuple"), None))?;
            if let Ok(d) = first.cast::<PyDict>() {
                // ({inputs by name}, labels, ...)
                (self.by_name(d)?, seq.get(1).cloned())
            } else if is_seq(&first) {
                // ((input, input...), labels, ...)
                let inner = sequence(&first)?;
                if inner.len() != n {
                    return Err((
                        self.fail(format!(
                            "holds {} inputs where the model takes {n} ({}): one array per input, in this order",
                            inner.len(),
                            self.names()
                        )),
                        None,
                    ));
                }
                (inner.into_iter().zip(specs).collect(), seq.get(1).cloned())
            } else {
                // (input, input..., labels, ...): the model's inputs in order, then the labels
                if seq.len() < n {
                    return Err((
                        self.fail(format!(
                            "holds {} arrays where the model takes {n} inputs ({}): give them in this order (then \
                                 the labels), or a dict keyed by the input names",
                            seq.len(),
                            self.names()
                        )),
                        None,
                    ));
                }
                (seq[..n].iter().cloned().zip(specs).collect(), seq.get(n).cloned())
            }
        } else {
            if n != 1 {
                return Err((
                    self.fail(format!(
                        "is one array, but the model takes {n} inputs ({}): yield a dict keyed by the input names, \
                             or the arrays in this order in a tuple",
                        self.names()
                    )),
                    None,
                ));
            }
            (vec![(item.clone(), &specs[0])], None)
        };
        let tensors = inputs.iter().map(|(v, spec)| self.input(v, spec)).collect::<std::result::Result<Vec<_>, _>>()?;
        let rows = tensors.first().and_then(|t| t.shape.first().copied()).unwrap_or(0);
        for (t, spec) in tensors.iter().zip(specs) {
            if t.shape.first() != Some(&rows) {
                return Err((
                    self.fail(format!(
                        "input `{}` has {} rows and input `{}` {rows}: every input of a batch holds the same samples",
                        spec.name,
                        t.shape.first().copied().unwrap_or(0),
                        specs[0].name
                    )),
                    None,
                ));
            }
        }
        let targets = match (self.labelled, labels) {
            (false, _) => None,
            (true, None) => return Err((
                self.fail(
                    "has no labels: an evaluation needs (inputs, labels) pairs, or dicts with a `label` or `labels` \
                         key",
                ),
                None,
            )),
            (true, Some(l)) => Some(self.labels(&l, rows)?),
        };
        Ok(Batch { span: 0..rows, indices: (0..rows).collect(), inputs: tensors, targets })
    }

    /// The model's inputs from a dict batch.
    fn by_name<'py>(
        &self,
        d: &Bound<'py, PyDict>,
    ) -> std::result::Result<Vec<(Bound<'py, PyAny>, &InputSpec)>, Failed> {
        self.specs
            .iter()
            .map(|spec| {
                let value = d.get_item(&spec.name).ok().flatten().ok_or_else(|| {
                    let keys: Vec<String> = d.keys().iter().map(|k| k.to_string()).collect();
                    (
                        self.fail(format!(
                            "has no key `{}`: the model's inputs are {}, the batch's keys {}",
                            spec.name,
                            self.names(),
                            keys.join(", ")
                        )),
                        None,
                    )
                })?;
                Ok((value, spec))
            })
            .collect()
    }

    /// One input of the batch, checked against the model's declaration of it.
    fn input(&self, value: &Bound<'_, PyAny>, spec: &InputSpec) -> std::result::Result<Tensor, Failed> {
        let what = format!("input `{}`", spec.name);
        let a =
            crate::arrays::read(value, &what).map_err(|e| self.failed(e, value.py(), &format!("reading {what}")))?;
        let fail = |m: String| (self.fail(m), None);
        let want: Vec<String> = spec.dims.iter().map(|&d| if d < 0 { "?".into() } else { d.to_string() }).collect();
        let want = format!("[{}]", want.join(", "));
        if !spec.dims.is_empty() {
            let fits = a.shape.len() == spec.dims.len()
                && spec.dims.iter().zip(&a.shape).all(|(&d, &s)| d < 0 || d as usize == s);
            if !fits {
                let one_sample = a.shape.len() + 1 == spec.dims.len();
                return Err(fail(format!(
                    "{what} has shape {:?}, but the model expects {want}{}",
                    a.shape,
                    if one_sample {
                        " (one sample, not a batch? batch them: DataLoader(dataset, batch_size=...), or `datasets`' \
                         .with_format(\"torch\").iter(batch_size=...))"
                    } else {
                        ""
                    }
                )));
            }
        }
        if a.shape.first().copied().unwrap_or(0) == 0 {
            return Err(fail(format!("{what} has shape {:?}: a batch holds at least one sample", a.shape)));
        }
        let (shape, dtype) = (a.shape.clone(), a.dtype);
        let values = match spec.elem {
            InputType::Float => a.into_values(HeldType::F32, self.in_place).ok_or_else(|| {
                fail(format!(
                    "{what} is {}, but the model takes float32 (convert with `.float()` or `.astype(np.float32)`)",
                    dtype.name()
                ))
            })?,
            InputType::Int64 => a.into_values(HeldType::I64, self.in_place).ok_or_else(|| {
                fail(format!(
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
            return Err(fail(format!(
                "{what} holds {} at element {at} (sample {} of the batch): inputs must be finite",
                floats.map_or(0.0, |v| v[at]),
                at / row
            )));
        }
        Ok(Tensor { shape, values })
    }

    /// The batch's labels: one class index per sample.
    fn labels(&self, value: &Bound<'_, PyAny>, rows: usize) -> std::result::Result<Tensor, Failed> {
        let a =
            crate::arrays::read(value, "the labels").map_err(|e| self.failed(e, value.py(), "reading the labels"))?;
        if a.shape.first() != Some(&rows) {
            return Err((
                self.fail(format!(
                    "has {rows} samples but labels of shape {:?}: one label per sample (a row of targets: a mask, multi-hot labels or values)",
                    a.shape
                )),
                None,
            ));
        }
        // Typed as they come; the task checks they are its targets (class indices, float values,
        // multi-hot rows, masks).
        if let Some(v) = a.to_i64() {
            return Ok(Tensor::i64(a.shape, v));
        }
        let floats = match a.dtype {
            crate::arrays::DType::F32 => a.to_f32(),
            crate::arrays::DType::F64 => Some(
                a.bytes().chunks_exact(8).map(|c| f64::from_ne_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
            ),
            crate::arrays::DType::F16 => Some(
                a.bytes()
                    .chunks_exact(2)
                    .map(|c| half::f16::from_ne_bytes(c.try_into().expect("2 bytes")).to_f32())
                    .collect(),
            ),
            crate::arrays::DType::BF16 => Some(
                a.bytes()
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_ne_bytes(c.try_into().expect("2 bytes")).to_f32())
                    .collect(),
            ),
            _ => None,
        };
        match floats {
            Some(v) => Ok(Tensor::f32(a.shape, v)),
            None => Err((self.fail(format!("has {} labels: give integers or floats", a.dtype.name())), None)),
        }
    }
}

/// The labels of a dict batch: its `label` or `labels` key.
fn label_of<'py>(d: &Bound<'py, PyDict>) -> Option<Bound<'py, PyAny>> {
    ["label", "labels"].iter().find_map(|k| d.get_item(k).ok().flatten())
}
