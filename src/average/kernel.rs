//! The averaging kernel: every output tensor cut into chunks, each computed on any thread from
//! the mapped inputs (accumulated in f64 in checkpoint order, divided once, rounded once) and
//! written at its offset.

use std::path::Path;

use super::inputs::Inputs;
use super::plan::{Kind, TensorPlan};
use crate::checkpoint::format::TensorWriter;
use crate::checkpoint::sharded::Shard;
use crate::checkpoint::{dtype, Dtype, TensorEntry, TensorSpec};
use crate::error::{Error, Hint, Result};

/// Elements per work item: 32 Ki elements keep the f64 accumulator (256 KiB) in L2.
pub const CHUNK: usize = 32 * 1024;

/// Elements of a chunk averaged at a time: their f64 sums (8 KiB) stay in L1 while every input is
/// added to them and while they are encoded.
const BLOCK: usize = 1024;

/// One chunk of one output tensor: [`CHUNK`] elements at most.
pub(super) struct Item {
    shard: usize,
    slot: usize,
    tensor: usize,
    start: usize,
    len: usize,
}

/// Splits every tensor of the shards `own` says are this process's into chunks (an empty tensor is
/// one empty chunk).
pub(super) fn chunks(shards: &[Shard], own: &[bool]) -> Vec<Item> {
    let mut items = Vec::new();
    let mut tensor = 0;
    for (shard, s) in shards.iter().enumerate() {
        if !own[shard] {
            tensor += s.specs.len();
            continue;
        }
        for (slot, spec) in s.specs.iter().enumerate() {
            let numel: usize = spec.shape.iter().product();
            let mut start = 0;
            while start < numel || (numel == 0 && start == 0) {
                let len = CHUNK.min(numel - start);
                items.push(Item { shard, slot, tensor, start, len });
                start += len.max(1);
            }
            tensor += 1;
        }
    }
    items
}

/// Computes output chunks from the inputs and writes them.
pub(super) struct Kernel<'a> {
    pub(super) inputs: &'a Inputs,
    /// Per checkpoint, its entry for each output tensor, in output order.
    pub(super) entries: Vec<Vec<&'a TensorEntry>>,
    pub(super) plan: &'a TensorPlan,
    /// Per output shard, its writer when this process writes it.
    pub(super) writers: &'a [Option<Box<dyn TensorWriter>>],
    /// The output the user named (for errors about output values).
    pub(super) output: &'a Path,
    pub(super) allow_nonfinite: bool,
    pub(super) bar: &'a indicatif::ProgressBar,
}

/// Per-thread buffers of the kernel.
#[derive(Default)]
pub(super) struct Scratch {
    wide: Vec<f64>,
    out: Vec<u8>,
}

impl Kernel<'_> {
    /// Bytes the inputs give for output tensor `i`.
    pub(super) fn bytes_read(&self, i: usize) -> u64 {
        match self.plan.kinds[i] {
            Kind::Average => self.entries.iter().map(|e| e[i].nbytes() as u64).sum(),
            Kind::Copy => self.entries.last().expect("inputs")[i].nbytes() as u64,
        }
    }

    /// The bytes of `item` in checkpoint `c`'s tensor.
    fn slice(&self, c: usize, item: &Item) -> (&TensorEntry, &[u8]) {
        let e = self.entries[c][item.tensor];
        let size = dtype::width(e.dtype);
        (e, &self.inputs.checkpoints[c].bytes(e)[item.start * size..(item.start + item.len) * size])
    }

    fn nonfinite(&self, c: usize, e: &TensorEntry, at: usize) -> Error {
        let ck = &self.inputs.checkpoints[c];
        Error::tensor(ck.file_of(e), &e.name, format!("holds a non-finite value (NaN or Inf) at element {at}"))
            .hint(Hint::AllowNonfinite)
    }

    /// Fails when the encoded chunk `s.out` holds a value that was finite before encoding: a
    /// value beyond the output dtype's range (above 65504 in f16) that became Inf. `value` gives
    /// the value before encoding. With `allow_nonfinite`, Inf is written.
    fn check_encoded(&self, item: &Item, spec: &TensorSpec, out: &[u8], value: impl Fn(usize) -> f64) -> Result<()> {
        if self.allow_nonfinite || spec.dtype == Dtype::F64 {
            return Ok(());
        }
        let Some(at) = dtype::first_nonfinite(spec.dtype, out) else { return Ok(()) };
        Err(Error::tensor(
            self.output,
            &spec.name,
            format!(
                "element {} is {} in the output, beyond the range of {} (it would be written as Inf)",
                item.start + at,
                value(at),
                dtype::name(spec.dtype)
            ),
        )
        .hint(Hint::AllowNonfinite))
    }

    /// The weighted mean of `item` over the inputs, encoded in the output dtype into `s.out`: the
    /// sum of each input times its [`KernelWeights::scaled`] weight, accumulated in f64 in checkpoint
    /// order, divided once by the weights' sum, and rounded once to the output dtype.
    fn average(&self, item: &Item, spec: &TensorSpec, s: &mut Scratch) -> Result<()> {
        s.wide.resize(item.len, 0.0);
        let inputs: Vec<(&TensorEntry, &[u8])> =
            (0..self.inputs.checkpoints.len()).map(|c| self.slice(c, item)).collect();
        let divisor = self.inputs.kernel.divisor;
        let out_width = dtype::width(spec.dtype);
        // Block by block, so that the block's sums stay in L1 while every input adds to it and
        // while they are encoded (the same additions in the same order as a whole chunk at once).
        for start in (0..item.len).step_by(BLOCK) {
            let end = (start + BLOCK).min(item.len);
            let wide = &mut s.wide[start..end];
            for (c, (e, bytes)) in inputs.iter().enumerate() {
                let w = dtype::width(e.dtype);
                dtype::accumulate(e.dtype, &bytes[start * w..end * w], self.inputs.kernel.scaled[c], wide, c == 0);
            }
            dtype::encode_quotients(spec.dtype, wide, divisor, &mut s.out[start * out_width..end * out_width]);
        }
        self.bar.inc(inputs.iter().map(|(_, b)| b.len() as u64).sum());
        // NaN and Inf inputs carry through the sum (an Inf times a zero weight is NaN), so a
        // finite output means finite inputs, and only a non-finite one needs a closer look.
        if self.allow_nonfinite || dtype::first_nonfinite(spec.dtype, &s.out).is_none() {
            return Ok(());
        }
        for c in 0..self.inputs.checkpoints.len() {
            let (e, bytes) = self.slice(c, item);
            if let Some(at) = dtype::first_nonfinite(e.dtype, bytes) {
                return Err(self.nonfinite(c, e, item.start + at));
            }
        }
        self.check_encoded(item, spec, &s.out, |i| s.wide[i] / divisor)
    }

    /// `item` of the newest checkpoint, converted to the output dtype into `s.out`.
    fn copy(&self, item: &Item, spec: &TensorSpec, s: &mut Scratch) -> Result<()> {
        let newest = self.inputs.checkpoints.len() - 1;
        let (e, bytes) = self.slice(newest, item);
        if let (Some(at), false) = (dtype::first_nonfinite(e.dtype, bytes), self.allow_nonfinite) {
            return Err(self.nonfinite(newest, e, item.start + at));
        }
        if e.dtype == spec.dtype {
            s.out.copy_from_slice(bytes);
        } else {
            s.out.copy_from_slice(&dtype::convert(e.dtype, spec.dtype, bytes));
            self.check_encoded(item, spec, &s.out, |i| {
                dtype::to_f64(e.dtype, &bytes[i * dtype::width(e.dtype)..][..dtype::width(e.dtype)])[0]
            })?;
        }
        self.bar.inc(bytes.len() as u64);
        Ok(())
    }

    /// Computes and writes one chunk.
    pub(super) fn run(&self, item: &Item, s: &mut Scratch) -> Result<()> {
        crate::progress::check_stop()?;
        let spec = &self.plan.specs[item.tensor];
        s.out.resize(item.len * dtype::width(spec.dtype), 0);
        match self.plan.kinds[item.tensor] {
            Kind::Average => self.average(item, spec, s)?,
            Kind::Copy => self.copy(item, spec, s)?,
        }
        let writer = self.writers[item.shard].as_ref().expect("chunks of own shards only");
        writer.write_at(item.slot, item.start * dtype::width(spec.dtype), &s.out)
    }
}
