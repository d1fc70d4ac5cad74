//! Stochastic Weight Averaging, offline: choose checkpoints, weight them, and stream their average
//! into a new safetensors file.
//!
//! Inputs are memory-mapped and the output is written chunk by chunk at known offsets, so memory
//! is bounded by threads × [`CHUNK`] whatever the model size or the number of checkpoints. Every
//! element is accumulated in checkpoint order (in f64, or in f32 for bf16/f16 inputs), so the
//! output is byte-identical whatever the thread count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::checkpoint::{dtype, Checkpoint, Dtype, SafetensorsWriter, TensorEntry, TensorSpec};
use crate::error::{Error, Result};
use crate::progress;

/// Elements per work item: 32 Ki elements keep the f64 accumulator (256 KiB) in L2.
pub const CHUNK: usize = 32 * 1024;

/// A checkpoint file found on the command line or in a directory, with the number in its name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointFile {
    /// Its path.
    pub path: PathBuf,
    /// The epoch / step number in its name (`epoch_015` → 15), if any.
    pub number: Option<u64>,
}

/// Which of the found checkpoints to use; applied in this order: `from`/`to`, `every`, `last`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Smallest number kept (inclusive).
    pub from: Option<u64>,
    /// Largest number kept (inclusive).
    pub to: Option<u64>,
    /// Keep every k-th, starting with the first.
    pub every: Option<usize>,
    /// Keep only the last N.
    pub last: Option<usize>,
}

/// How the selected checkpoints are weighted.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Weighting {
    /// Equal weights (SWA).
    #[default]
    Uniform,
    /// Given weights, one per selected checkpoint, normalised to sum to one.
    Explicit(Vec<f64>),
    /// Exponential moving average over the checkpoints in order with this decay: the newest weighs most.
    Ema(f64),
}

/// What happens to BatchNorm running statistics and integer tensors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferPolicy {
    /// Copy them from the newest selected checkpoint (what `AveragedModel` does).
    #[default]
    Newest,
    /// Average the floating-point ones too (integers are still copied from the newest).
    Average,
}

/// Everything `swa average` needs.
#[derive(Debug, Clone, Default)]
pub struct AverageOptions {
    /// Checkpoint files and directories.
    pub checkpoints: Vec<PathBuf>,
    /// Which ones to use.
    pub selection: Selection,
    /// How to weight them.
    pub weighting: Weighting,
    /// An earlier average to continue.
    pub resume: Option<PathBuf>,
    /// Output dtype of the floating-point tensors (default: each input's own).
    pub dtype: Option<Dtype>,
    /// What to do with buffers.
    pub buffers: BufferPolicy,
    /// Proceed when an input holds NaN or Inf.
    pub allow_nonfinite: bool,
    /// Output: a `.safetensors` file, or a `*.index.json` for a sharded output.
    pub output: PathBuf,
    /// Shard the output into files of at most this many bytes.
    pub shard_size: Option<u64>,
    /// Hide the progress bar.
    pub quiet: bool,
}

/// One input of the average and its weight.
#[derive(Debug, Clone, Serialize)]
pub struct SelectedInput {
    /// The file.
    pub path: PathBuf,
    /// The number in its name.
    pub number: Option<u64>,
    /// Its normalised weight in the output.
    pub weight: f64,
}

/// What `swa average` did.
#[derive(Debug, Clone, Serialize)]
pub struct AverageSummary {
    /// The files written (one, or the shards and the index).
    pub outputs: Vec<PathBuf>,
    /// The inputs and their weights, the resumed average first.
    pub inputs: Vec<SelectedInput>,
    /// Models in the average, counting those of a resumed average.
    pub n_models: u64,
    /// `uniform`, `explicit` or `ema(DECAY)`.
    pub weighting: String,
    /// Tensors written.
    pub tensors: usize,
    /// Tensors averaged.
    pub averaged: usize,
    /// Buffers (BatchNorm statistics, integers) and what was done with them.
    pub buffers: BufferSummary,
    /// Bytes read from the inputs.
    pub bytes_read: u64,
    /// Bytes of tensor data written.
    pub bytes_written: u64,
    /// Wall time.
    pub seconds: f64,
}

/// What happened to the buffers.
#[derive(Debug, Clone, Serialize)]
pub struct BufferSummary {
    /// The policy.
    pub policy: BufferPolicy,
    /// How many were copied from `copied_from`.
    pub copied: usize,
    /// How many floating-point buffers were averaged.
    pub averaged: usize,
    /// The checkpoint they were copied from.
    pub copied_from: PathBuf,
}

/// True for tensors that are not weights: BatchNorm running statistics and integer tensors.
pub fn is_buffer(name: &str, dtype: Dtype) -> bool {
    !dtype::is_float(dtype)
        || name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

const NAME_SUFFIXES: [&str; 4] = [".safetensors.index.json", ".index.json", ".safetensors", ".onnx"];
const NUMBER_KEYS: [&str; 7] = ["epoch", "step", "ckpt", "checkpoint", "iter", "it", "e"];

/// The epoch or step number in a checkpoint's name: the number after `epoch`, `step`, `ckpt`,
/// `checkpoint` or `iter` if there is one, else the last number in the name.
pub fn name_number(name: &str) -> Option<u64> {
    let stem = NAME_SUFFIXES.iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
    let bytes = stem.as_bytes();
    let (mut keyed, mut last) = (None, None);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let Ok(n) = stem[start..i].parse::<u64>() else { continue };
            let word: String = stem[..start]
                .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
                .to_ascii_lowercase();
            if NUMBER_KEYS.contains(&word.as_str()) {
                keyed = Some(n);
            }
            last = Some(n);
        } else {
            i += 1;
        }
    }
    keyed.or(last)
}

/// Compares names so that digit runs compare by value (`epoch_2` before `epoch_10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
                let ord = na.len().cmp(&nb.len()).then(na.cmp(nb));
                if ord.is_ne() {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z.min(d.len().saturating_sub(1))..]
}

fn is_checkpoint_name(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json") || name.ends_with(".onnx")
}

/// Expands directories into the checkpoints they hold and orders everything by the number in
/// each name (natural order, never lexical).
pub fn discover(paths: &[PathBuf]) -> Result<Vec<CheckpointFile>> {
    let mut found = Vec::new();
    for path in paths {
        if !path.is_dir() {
            if !path.exists() {
                return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
            }
            found.push(path.clone());
            continue;
        }
        if let Some(index) = crate::checkpoint::find_index(path)? {
            found.push(index);
            continue;
        }
        let mut inside = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            let p = entry.map_err(|e| Error::io(path, e))?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                if let Some(index) = crate::checkpoint::find_index(&p)? {
                    inside.push(index);
                } else if p.join("model.safetensors").is_file() {
                    inside.push(p.join("model.safetensors"));
                }
            } else if is_checkpoint_name(&name) {
                inside.push(p);
            }
        }
        if inside.is_empty() {
            return Err(Error::format(
                path,
                "directory holds no checkpoint (*.safetensors, *.safetensors.index.json, *.onnx)",
            ));
        }
        found.extend(inside);
    }
    let mut files: Vec<CheckpointFile> =
        found.into_iter().map(|path| CheckpointFile { number: number_of(&path), path }).collect();
    let display = |f: &CheckpointFile| f.path.to_string_lossy().into_owned();
    if files.iter().all(|f| f.number.is_some()) {
        files.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| natural_cmp(&display(a), &display(b))));
    } else {
        files.sort_by(|a, b| natural_cmp(&display(a), &display(b)));
    }
    files.dedup_by(|a, b| a.path == b.path);
    Ok(files)
}

/// The number of a checkpoint: from its file name, or for generic names (`model.safetensors`,
/// `model.safetensors.index.json`) inside a run directory (`checkpoint-500/`), from the directory.
fn number_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_string_lossy();
    let generic = name.starts_with("model") || name.contains("pytorch_model");
    name_number(&name)
        .or_else(|| if generic { name_number(&path.parent()?.file_name()?.to_string_lossy()) } else { None })
}

/// Applies a selection; the result is never empty.
pub fn select(files: &[CheckpointFile], sel: &Selection) -> Result<Vec<CheckpointFile>> {
    let mut out: Vec<CheckpointFile> = Vec::new();
    for f in files {
        if sel.from.is_some() || sel.to.is_some() {
            let Some(n) = f.number else {
                return Err(Error::format(
                    &f.path,
                    "--from/--to select by the number in the file name, and this one has none",
                ));
            };
            if sel.from.is_some_and(|from| n < from) || sel.to.is_some_and(|to| n > to) {
                continue;
            }
        }
        out.push(f.clone());
    }
    if let Some(k) = sel.every {
        if k == 0 {
            return Err(Error::usage("--every must be at least 1"));
        }
        out = out.into_iter().step_by(k).collect();
    }
    if let Some(n) = sel.last {
        if n == 0 {
            return Err(Error::usage("--last must be at least 1"));
        }
        out = out.split_off(out.len().saturating_sub(n));
    }
    if out.is_empty() {
        let range = match (sel.from, sel.to) {
            (None, None) => String::new(),
            (f, t) => {
                format!(" in {}..={}", f.map_or("".into(), |v| v.to_string()), t.map_or("".into(), |v| v.to_string()))
            }
        };
        let numbers: Vec<String> = files.iter().filter_map(|f| f.number.map(|n| n.to_string())).collect();
        return Err(Error::usage(format!(
            "no checkpoint selected{range}: {} found{}",
            files.len(),
            if numbers.is_empty() { String::new() } else { format!(" (numbers {})", numbers.join(", ")) }
        )));
    }
    Ok(out)
}

/// Relative weights for `count` checkpoints in order (not normalised: the average divides by their sum).
pub fn relative_weights(count: usize, weighting: &Weighting) -> Result<Vec<f64>> {
    match weighting {
        Weighting::Uniform => Ok(vec![1.0; count]),
        Weighting::Explicit(w) => {
            if w.len() != count {
                return Err(Error::usage(format!("--weights has {} values for {count} selected checkpoints", w.len())));
            }
            if let Some(bad) = w.iter().find(|v| !v.is_finite() || **v < 0.0) {
                return Err(Error::usage(format!("--weights must be finite and non-negative, got {bad}")));
            }
            if w.iter().sum::<f64>() <= 0.0 {
                return Err(Error::usage("--weights sum to zero"));
            }
            Ok(w.clone())
        }
        Weighting::Ema(decay) => {
            if !(*decay > 0.0 && *decay < 1.0) {
                return Err(Error::usage(format!("--ema decay must be in (0, 1), got {decay}")));
            }
            // θ ← d·θ + (1−d)·θ_new, starting from the oldest.
            Ok((0..count)
                .map(|i| {
                    if i == 0 {
                        decay.powi(count as i32 - 1)
                    } else {
                        (1.0 - decay) * decay.powi((count - 1 - i) as i32)
                    }
                })
                .collect())
        }
    }
}

/// Lists the differences between two checkpoints' tensor names, shapes and dtypes (float dtypes
/// may differ when `any_float` is set).
fn differences(a: &Checkpoint, b: &Checkpoint, any_float: bool) -> Vec<String> {
    let (an, bn) = (a.path().display(), b.path().display());
    let mut diffs = Vec::new();
    for t in a.tensors() {
        match b.get(&t.name) {
            None => diffs.push(format!("`{}` is in {an} but not in {bn}", t.name)),
            Some(u) if u.shape != t.shape => {
                diffs.push(format!("`{}` has shape {:?} in {an} but {:?} in {bn}", t.name, t.shape, u.shape))
            }
            Some(u) if u.dtype != t.dtype && !(any_float && dtype::is_float(u.dtype) && dtype::is_float(t.dtype)) => {
                diffs.push(format!("`{}` is {:?} in {an} but {:?} in {bn}", t.name, t.dtype, u.dtype))
            }
            _ => {}
        }
    }
    for t in b.tensors() {
        if a.get(&t.name).is_none() {
            diffs.push(format!("`{}` is in {bn} but not in {an}", t.name));
        }
    }
    diffs
}

/// Fails unless every checkpoint has the same tensors (names, shapes, dtypes) as the last.
/// A resumed average (`resumed`: the first checkpoint) may hold its floats in another dtype.
pub fn check_compatible(checkpoints: &[&Checkpoint], resumed: bool) -> Result<()> {
    let mut all = Vec::new();
    let (last, others) = checkpoints.split_last().expect("at least one checkpoint");
    for (i, other) in others.iter().enumerate() {
        all.extend(differences(other, last, resumed && i == 0));
    }
    if all.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = all.iter().take(5).map(|d| format!("  {d}")).collect();
    let more = if all.len() > 5 { format!("\n  … and {} more", all.len() - 5) } else { String::new() };
    Err(Error::Mismatch(format!("checkpoints disagree ({} differences):\n{}{more}", all.len(), shown.join("\n"))))
}

fn canonical_target(path: &Path) -> Option<PathBuf> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(path.file_name()?))
}

/// Refuses to write `output` over one of `inputs`.
pub fn refuse_overwrite(output: &Path, inputs: &[&Path]) -> Result<()> {
    let Some(target) = canonical_target(output) else { return Ok(()) };
    for input in inputs {
        if input.canonicalize().ok().as_deref() == Some(target.as_path()) {
            return Err(Error::usage(format!(
                "output {} is also an input: refusing to overwrite it",
                output.display()
            )));
        }
    }
    Ok(())
}

struct Shard {
    path: PathBuf,
    specs: Vec<TensorSpec>,
}

/// Splits the output into shards in the Hugging Face layout, or one file.
fn plan_outputs(output: &Path, specs: &[TensorSpec], shard_size: Option<u64>) -> Result<(Vec<Shard>, Option<PathBuf>)> {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if shard_size.is_none() && !name.ends_with(".index.json") {
        return Ok((vec![Shard { path: output.to_path_buf(), specs: specs.to_vec() }], None));
    }
    let limit = shard_size.unwrap_or(5 << 30);
    if limit == 0 {
        return Err(Error::usage("--shard-size must be positive"));
    }
    let stem = name.trim_end_matches(".index.json").trim_end_matches(".safetensors").to_string();
    let index = output.with_file_name(format!("{stem}.safetensors.index.json"));
    let mut groups: Vec<Vec<TensorSpec>> = vec![Vec::new()];
    let mut size = 0u64;
    for s in specs {
        let n = s.nbytes() as u64;
        if size > 0 && size + n > limit {
            groups.push(Vec::new());
            size = 0;
        }
        size += n;
        groups.last_mut().unwrap().push(s.clone());
    }
    let count = groups.len();
    let shards = groups
        .into_iter()
        .enumerate()
        .map(|(i, specs)| Shard {
            path: output.with_file_name(format!("{stem}-{:05}-of-{count:05}.safetensors", i + 1)),
            specs,
        })
        .collect();
    Ok((shards, Some(index)))
}

/// Adds one input's chunk (dtype, bytes, weight) to an accumulator; returns the index of a
/// non-finite value, if any.
type Accumulate<'a> = dyn FnMut(Dtype, &[u8], f64) -> Option<usize> + 'a;

#[derive(Clone, Copy)]
enum Kind {
    Average,
    Copy,
}

struct Item {
    shard: usize,
    slot: usize,
    tensor: usize,
    start: usize,
    len: usize,
}

/// Averages checkpoints as `opts` says and writes the result atomically.
pub fn average(opts: &AverageOptions) -> Result<AverageSummary> {
    let started = Instant::now();
    let found = discover(&opts.checkpoints)?;
    let selected = select(&found, &opts.selection)?;
    let mut rel = relative_weights(selected.len(), &opts.weighting)?;

    let mut checkpoints = Vec::new();
    let mut inputs_meta = Vec::new();
    let mut n_models = selected.len() as u64;
    let mut sources: Vec<String> = Vec::new();
    if let Some(prior) = &opts.resume {
        if opts.weighting != Weighting::Uniform {
            return Err(Error::usage(
                "--resume continues a uniform average; it cannot be combined with --weights or --ema",
            ));
        }
        let ck = Checkpoint::open(prior)?;
        let n: u64 =
            ck.metadata().get("n_models").and_then(|v| v.parse().ok()).filter(|&n| n > 0).ok_or_else(|| {
                Error::format(prior, "has no `n_models` in its metadata: was it written by `swa average`?")
            })?;
        if let Some(s) = ck.metadata().get("sources").and_then(|s| serde_json::from_str::<Vec<String>>(s).ok()) {
            sources.extend(s);
        }
        rel.insert(0, n as f64);
        n_models += n;
        inputs_meta.push(CheckpointFile { path: prior.clone(), number: None });
        checkpoints.push(ck);
    }
    for f in &selected {
        checkpoints.push(Checkpoint::open(&f.path)?);
        sources.push(f.path.to_string_lossy().into_owned());
        inputs_meta.push(f.clone());
    }
    let refs: Vec<&Checkpoint> = checkpoints.iter().collect();
    check_compatible(&refs, opts.resume.is_some())?;
    let all_files: Vec<&Path> = checkpoints.iter().flat_map(|c| c.files()).collect();

    let total: f64 = rel.iter().sum();
    let weights: Vec<f64> = rel.iter().map(|w| w / total).collect();
    let newest = checkpoints.len() - 1;
    let reference = &checkpoints[newest];

    let mut specs = Vec::new();
    let mut kinds = Vec::new();
    let mut buffers =
        BufferSummary { policy: opts.buffers, copied: 0, averaged: 0, copied_from: reference.path().to_path_buf() };
    for t in reference.tensors() {
        let float = dtype::is_float(t.dtype);
        let kind = if !is_buffer(&t.name, t.dtype) {
            Kind::Average
        } else if float && opts.buffers == BufferPolicy::Average {
            buffers.averaged += 1;
            Kind::Average
        } else {
            buffers.copied += 1;
            Kind::Copy
        };
        let out_dtype = if float { opts.dtype.unwrap_or(t.dtype) } else { t.dtype };
        specs.push(TensorSpec { name: t.name.clone(), dtype: out_dtype, shape: t.shape.clone() });
        kinds.push(kind);
    }
    // Per checkpoint, its entry for each output tensor, in output order.
    let entries: Vec<Vec<&TensorEntry>> = checkpoints
        .iter()
        .map(|c| specs.iter().map(|s| c.get(&s.name).expect("checked compatible")).collect())
        .collect();

    let (shards, index_path) = plan_outputs(&opts.output, &specs, opts.shard_size)?;
    for shard in &shards {
        refuse_overwrite(&shard.path, &all_files)?;
    }
    if let Some(index) = &index_path {
        refuse_overwrite(index, &all_files)?;
    }

    let weighting = match &opts.weighting {
        Weighting::Uniform => "uniform".to_string(),
        Weighting::Explicit(_) => "explicit".to_string(),
        Weighting::Ema(d) => format!("ema({d})"),
    };
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert("n_models".to_string(), n_models.to_string());
    metadata.insert("sources".to_string(), serde_json::to_string(&sources).expect("strings"));
    metadata.insert("weighting".to_string(), weighting.clone());
    metadata.insert("weights".to_string(), serde_json::to_string(&weights).expect("floats"));
    metadata.insert(
        "buffers".to_string(),
        match opts.buffers {
            BufferPolicy::Newest => format!("copied from {}", reference.path().display()),
            BufferPolicy::Average => {
                format!("float buffers averaged, integers copied from {}", reference.path().display())
            }
        },
    );
    metadata.insert("swa_version".to_string(), crate::VERSION.to_string());

    let writers: Vec<SafetensorsWriter> =
        shards.iter().map(|s| SafetensorsWriter::create(&s.path, &s.specs, &metadata)).collect::<Result<_>>()?;

    let mut items = Vec::new();
    let mut tensor = 0;
    for (shard, s) in shards.iter().enumerate() {
        for slot in 0..s.specs.len() {
            let numel: usize = specs[tensor].shape.iter().product();
            let mut start = 0;
            while start < numel || (numel == 0 && start == 0) {
                let len = CHUNK.min(numel - start);
                items.push(Item { shard, slot, tensor, start, len });
                start += len.max(1);
            }
            tensor += 1;
        }
    }

    let bytes_read: u64 = specs
        .iter()
        .enumerate()
        .map(|(i, _)| match kinds[i] {
            Kind::Average => entries.iter().map(|e| e[i].nbytes() as u64).sum::<u64>(),
            Kind::Copy => entries[newest][i].nbytes() as u64,
        })
        .sum();
    let bytes_written: u64 = specs.iter().map(|s| s.nbytes() as u64).sum();
    let bar = progress::bytes_bar(bytes_read, "averaging", opts.quiet);

    items.par_iter().try_for_each_init(
        || (Vec::<f64>::new(), Vec::<f32>::new(), Vec::<u8>::new()),
        |(acc, narrow, out), item| -> Result<()> {
            let spec = &specs[item.tensor];
            out.resize(item.len * dtype::width(spec.dtype), 0);
            match kinds[item.tensor] {
                Kind::Average => {
                    // Feeds `add` every checkpoint's slice of this chunk, oldest first.
                    let each_input = |add: &mut Accumulate| -> Result<()> {
                        for (c, ck) in checkpoints.iter().enumerate() {
                            let e = entries[c][item.tensor];
                            let size = dtype::width(e.dtype);
                            let bytes = &ck.bytes(e)[item.start * size..(item.start + item.len) * size];
                            if let (Some(at), false) = (add(e.dtype, bytes, weights[c]), opts.allow_nonfinite) {
                                return Err(nonfinite(ck, e, item.start + at));
                            }
                            bar.inc(bytes.len() as u64);
                        }
                        Ok(())
                    };
                    if entries.iter().all(|e| dtype::is_narrow(e[item.tensor].dtype)) {
                        narrow.clear();
                        narrow.resize(item.len, 0.0);
                        each_input(&mut |d, bytes, w| dtype::accumulate_narrow(d, bytes, w as f32, narrow))?;
                        dtype::encode_f32(spec.dtype, narrow, out);
                    } else {
                        acc.clear();
                        acc.resize(item.len, 0.0);
                        each_input(&mut |d, bytes, w| dtype::accumulate(d, bytes, w, acc))?;
                        dtype::encode(spec.dtype, acc, out);
                    }
                }
                Kind::Copy => {
                    let ck = &checkpoints[newest];
                    let e = entries[newest][item.tensor];
                    let size = dtype::width(e.dtype);
                    let bytes = &ck.bytes(e)[item.start * size..(item.start + item.len) * size];
                    if let (Some(at), false) = (dtype::first_nonfinite(e.dtype, bytes), opts.allow_nonfinite) {
                        return Err(nonfinite(ck, e, item.start + at));
                    }
                    if e.dtype == spec.dtype {
                        out.copy_from_slice(bytes);
                    } else {
                        out.copy_from_slice(&dtype::convert(e.dtype, spec.dtype, bytes));
                    }
                    bar.inc(bytes.len() as u64);
                }
            }
            writers[item.shard].write_at(item.slot, item.start * dtype::width(spec.dtype), out)
        },
    )?;
    bar.finish_and_clear();

    let mut outputs = Vec::new();
    for w in writers {
        outputs.push(w.finish()?);
    }
    if let Some(index) = index_path {
        let mut weight_map = serde_json::Map::new();
        for s in &shards {
            let file = s.path.file_name().unwrap().to_string_lossy().into_owned();
            for spec in &s.specs {
                weight_map.insert(spec.name.clone(), file.clone().into());
            }
        }
        let mut meta: serde_json::Map<String, serde_json::Value> =
            metadata.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        meta.insert("total_size".into(), bytes_written.into());
        let json = serde_json::json!({"metadata": meta, "weight_map": weight_map});
        crate::checkpoint::write_atomic(&index, serde_json::to_string_pretty(&json).expect("json").as_bytes())?;
        outputs.push(index);
    }

    let inputs = inputs_meta
        .into_iter()
        .zip(&weights)
        .map(|(f, &weight)| SelectedInput { path: f.path, number: f.number, weight })
        .collect();
    Ok(AverageSummary {
        outputs,
        inputs,
        n_models,
        weighting,
        tensors: specs.len(),
        averaged: kinds.iter().filter(|k| matches!(k, Kind::Average)).count(),
        buffers,
        bytes_read,
        bytes_written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn nonfinite(ck: &Checkpoint, e: &TensorEntry, at: usize) -> Error {
    Error::tensor(
        ck.file_of(e),
        &e.name,
        format!("holds a non-finite value (NaN or Inf) at element {at}; pass --allow-nonfinite to average anyway"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_names() {
        assert_eq!(name_number("epoch_015.safetensors"), Some(15));
        assert_eq!(name_number("epoch=15.safetensors"), Some(15));
        assert_eq!(name_number("ckpt-15.safetensors"), Some(15));
        assert_eq!(name_number("step_1500.safetensors"), Some(1500));
        assert_eq!(name_number("resnet50-epoch7-v2.safetensors"), Some(7));
        assert_eq!(name_number("model.safetensors"), None);
        assert_eq!(name_number("checkpoint-500"), Some(500));
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["e10", "e2", "e1", "e02b"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["e1", "e2", "e02b", "e10"]);
    }

    #[test]
    fn selection_applies_range_every_last() {
        let files: Vec<CheckpointFile> =
            (1..=10).map(|n| CheckpointFile { path: format!("e{n}").into(), number: Some(n) }).collect();
        let pick = |sel: Selection| select(&files, &sel).unwrap().iter().map(|f| f.number.unwrap()).collect::<Vec<_>>();
        assert_eq!(pick(Selection { from: Some(4), to: Some(6), ..Default::default() }), [4, 5, 6]);
        assert_eq!(pick(Selection { from: Some(2), every: Some(3), ..Default::default() }), [2, 5, 8]);
        assert_eq!(pick(Selection { last: Some(2), ..Default::default() }), [9, 10]);
        let err = select(&files, &Selection { from: Some(20), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("no checkpoint selected in 20..="), "{err}");
    }

    #[test]
    fn ema_weights_follow_the_recurrence() {
        let w = relative_weights(3, &Weighting::Ema(0.5)).unwrap();
        assert_eq!(w, [0.25, 0.25, 0.5]);
        assert!(relative_weights(2, &Weighting::Explicit(vec![0.0, 0.0])).is_err());
        assert!(relative_weights(3, &Weighting::Explicit(vec![1.0, 2.0])).is_err());
    }
}
