//! SWAG (Maddox et al. 2019), offline from saved checkpoints: a Gaussian over the weights whose
//! mean is SWA's, with the checkpoints' diagonal variance and a low-rank part from the deviations
//! of the last K of them — computed as the reference implementation (wjmaddox/swa_gaussian,
//! `swag/posteriors/swag.py`) does — and the Bayesian model average of S samples from it, each
//! with its BatchNorm statistics recalibrated on training samples, scored like any model.
//!
//! Only parameters are modelled (buffers: the newest checkpoint's, and the BatchNorm statistics
//! are refitted for every sample). Over checkpoints i = 1..n, in f64: mean ← mean·(i−1)/i + θ/i,
//! sq_mean ← sq_mean·(i−1)/i + θ²/i, then the deviation θ − mean (the mean after this update) is
//! a row of D, of which the last K are kept; var = max(sq_mean − mean², 1e-30). A sample is
//! θ = mean + √scale · (√var ⊙ z₁ + Dᵀz₂ / √(K−1)); diagonal SWAG drops the Dᵀz₂ term.
//!
//! The moments stream: each parameter is read from every mapped checkpoint a block of elements at a
//! time and written into a staged file (f32: mean, var, D), which the samples then read mapped,
//! so memory holds blocks, not models. The draws z are standard normal from a counter-based
//! stream per (seed, sample, block of the flattened parameters), so a sample is the same whichever
//! part of a many-machine run draws it; a file of draws (`[S, P + K]`: z₁ over the parameters in
//! name order, then z₂) replaces them for tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::safetensors::SafetensorsWriter;
use crate::checkpoint::{dtype, Dtype};
use crate::checkpoint::{Checkpoint, TensorSpec};
use crate::error::{Error, Result, Setting};
use crate::evaluate::{EvalOptions, Evaluation};
use crate::inputs::{self, Selection};
use crate::onnx::bind::Binder;
use crate::part::Part;
use crate::recalibrate::{self, PassOptions, Prepared};
use crate::tasks::mean::{Mean, MeanParts};
use crate::tasks::{Score, Task};

/// The variance floor of the reference implementation (`var_clamp`).
pub const VAR_CLAMP: f64 = 1e-30;
/// The rank kept when none is asked: the reference's `max_num_models`.
pub const DEFAULT_RANK: usize = 20;
/// The most samples one SWAG draws (the paper's runs use 30).
pub const MAX_SAMPLES: usize = 100_000;
/// Elements per block of a parameter: what the moments and the draws stream by.
const BLOCK: usize = 1 << 16;

/// Everything `swa swag` needs.
#[derive(Debug, Clone)]
pub struct SwagOptions {
    /// The ONNX model.
    pub model: PathBuf,
    /// Checkpoint files or directories.
    pub checkpoints: Vec<PathBuf>,
    /// Which checkpoints the moments are taken over.
    pub selection: Selection,
    /// The state dict to read in `torch.save` checkpoints.
    pub key: Option<String>,
    /// Keep the model's own values for weights a checkpoint lacks.
    pub allow_missing_weights: bool,
    /// K, the deviations kept; `None`: min(20, checkpoints).
    pub rank: Option<usize>,
    /// SWAG-diagonal: no low-rank term.
    pub diagonal: bool,
    /// S, the samples of the model average.
    pub samples: usize,
    /// The scale of the covariance (0.5 in the paper's runs).
    pub scale: f64,
    /// The seed of the draws.
    pub seed: u64,
    /// Standard-normal draws to use instead (`.npy`, `[S, P + K]`).
    pub draws: Option<PathBuf>,
    /// The BatchNorm refit of every sample (training samples, `max_samples` of them).
    pub pass: PassOptions,
    /// The held-out data.
    pub eval: EvalOptions,
    /// Which samples this run draws: `I/N` draws samples I, I+N, …
    pub part: Part,
    /// Where to write the moments (safetensors, swa_gaussian's state-dict names).
    pub save_moments: Option<PathBuf>,
    /// A directory for every sampled model (safetensors, recalibrated statistics).
    pub save_samples: Option<PathBuf>,
    /// Where a part writes its summed predictions (`.npz`, for `swa merge-eval`).
    pub part_output: Option<PathBuf>,
    /// Hide progress.
    pub quiet: bool,
}

/// One sample alone.
#[derive(Debug, Clone, Serialize)]
pub struct SampleScore {
    /// Its number, `0..S`.
    pub sample: usize,
    /// Its figures on the held-out set.
    pub score: Score,
}

/// What `swa swag` found.
#[derive(Debug, Clone, Serialize)]
pub struct SwagSummary {
    /// Checkpoints the moments were taken over.
    pub models: usize,
    /// K: the deviations kept (0: diagonal).
    pub rank: usize,
    /// Parameters modelled (elements).
    pub parameters: usize,
    /// Tensors whose checkpoints never differed (zero variance, no deviation): their samples are
    /// the mean, up to the variance floor.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constant: Vec<String>,
    /// The covariance scale.
    pub scale: f64,
    /// Samples of the model average in all.
    pub samples: usize,
    /// Samples drawn here, each alone.
    pub drawn: Vec<SampleScore>,
    /// The Bayesian model average (absent for a part).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Evaluation>,
    /// Files written.
    pub outputs: Vec<PathBuf>,
    /// Forward passes over data (a recalibration and an evaluation per sample).
    pub passes: usize,
    /// Seconds taking the moments.
    pub seconds_moments: f64,
    /// Seconds waiting for the samples to be drawn and bound into the model (each is drawn while
    /// the one before runs its passes).
    pub seconds_sampling: f64,
    /// Seconds in the samples' recalibration and evaluation passes.
    pub seconds_passes: f64,
    /// Seconds in all.
    pub seconds: f64,
}

/// A parameter: its name, type and shape in the newest checkpoint, and where its elements start
/// in the flattened parameters (name order).
#[derive(Debug, Clone)]
struct Param {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    numel: usize,
    offset: usize,
}

/// The parameters of the newest checkpoint (floating-point weights, not buffers), in name order,
/// checked present with the same shape in every checkpoint.
fn parameters(checkpoints: &[Checkpoint]) -> Result<Vec<Param>> {
    let newest = checkpoints.last().expect("checkpoints");
    let mut named: Vec<_> = newest.tensors().iter().filter(|t| !t.role.is_buffer()).collect();
    named.sort_by(|a, b| a.name.cmp(&b.name));
    let mut offset = 0;
    let mut params = Vec::new();
    for t in named {
        for c in checkpoints {
            match c.get(&t.name) {
                Some(o) if o.shape == t.shape && dtype::is_float(o.dtype) => {}
                Some(o) => {
                    return Err(Error::tensor(
                        c.path(),
                        &t.name,
                        format!(
                            "is {:?} {:?}, but {:?} {:?} in {}",
                            o.dtype,
                            o.shape,
                            t.dtype,
                            t.shape,
                            newest.path().display()
                        ),
                    ))
                }
                None => {
                    return Err(Error::tensor(
                        c.path(),
                        &t.name,
                        format!("is missing (it is in {})", newest.path().display()),
                    ))
                }
            }
        }
        let numel = t.numel();
        params.push(Param { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), numel, offset });
        offset += numel;
    }
    if params.is_empty() {
        return Err(Error::format(newest.path(), "has no floating-point parameters to model"));
    }
    Ok(params)
}

/// The moments in their staged file: per parameter `NAME.mean`, `NAME.var` and (K > 0) `NAME.dev`
/// `[K, numel]`, f32.
struct Moments {
    file: Checkpoint,
    /// Removed when dropped, and on a signal.
    _staged: crate::fs::StagedDir,
    rank: usize,
    constant: Vec<String>,
}

/// A block's moments: mean, second moment, deviations.
type BlockMoments = (Vec<f64>, Vec<f64>, Vec<Vec<f64>>);

/// One block of one parameter over every checkpoint, in f64: mean, second moment, the last
/// `rank` deviations (oldest first); and whether it varies.
fn block_moments(
    checkpoints: &[Checkpoint],
    p: &Param,
    range: std::ops::Range<usize>,
    rank: usize,
) -> Result<BlockMoments> {
    let len = range.len();
    let (mut mean, mut sq) = (vec![0f64; len], vec![0f64; len]);
    let mut dev = Vec::with_capacity(rank);
    let n = checkpoints.len();
    for (i, c) in checkpoints.iter().enumerate() {
        let t = c.get(&p.name).expect("checked");
        let w = dtype::width(t.dtype);
        let theta = dtype::to_f64(t.dtype, &c.bytes(t)[range.start * w..range.end * w]);
        if let Some(k) = theta.iter().position(|v| !v.is_finite()) {
            return Err(Error::tensor(
                c.path(),
                &p.name,
                format!("holds {} at element {}: SWAG's moments would not be finite", theta[k], range.start + k),
            ));
        }
        let k = (i + 1) as f64;
        for j in 0..len {
            mean[j] = mean[j] * (k - 1.0) / k + theta[j] / k;
            sq[j] = sq[j] * (k - 1.0) / k + theta[j] * theta[j] / k;
        }
        if i + rank >= n {
            dev.push(theta.iter().zip(&mean).map(|(t, m)| t - m).collect());
        }
    }
    Ok((mean, sq, dev))
}

fn f32_bytes(values: &[f64]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * 4];
    dtype::encode(Dtype::F32, values, &mut out);
    out
}

/// Takes the moments of `checkpoints` into a staged file under `dir` (and, where asked, the
/// reference's state-dict layout into `save`).
fn moments(
    checkpoints: &[Checkpoint],
    params: &[Param],
    rank: usize,
    dir: &Path,
    save: Option<&Path>,
) -> Result<(Moments, Option<crate::fs::StagedFile>)> {
    let staged = crate::fs::StagedDir::beside(&dir.join("moments"), "swa-swag-moments")?;
    let path = staged.path().join("moments.safetensors");
    let mut specs = Vec::new();
    let mut saved = Vec::new();
    for p in params {
        specs.push(TensorSpec { name: format!("{}.mean", p.name), dtype: Dtype::F32, shape: p.shape.clone() });
        specs.push(TensorSpec { name: format!("{}.var", p.name), dtype: Dtype::F32, shape: p.shape.clone() });
        if rank > 0 {
            specs.push(TensorSpec { name: format!("{}.dev", p.name), dtype: Dtype::F32, shape: vec![rank, p.numel] });
        }
        saved.push(TensorSpec { name: format!("base.{}_mean", p.name), dtype: Dtype::F32, shape: p.shape.clone() });
        saved.push(TensorSpec { name: format!("base.{}_sq_mean", p.name), dtype: Dtype::F32, shape: p.shape.clone() });
        saved.push(TensorSpec {
            name: format!("base.{}_cov_mat_sqrt", p.name),
            dtype: Dtype::F32,
            shape: vec![rank, p.numel],
        });
    }
    // swa_gaussian's `n_models` is a long tensor of shape [1]; its base model's buffers are the
    // newest checkpoint's, so that `SWAG.load_state_dict` finds every key.
    saved.push(TensorSpec { name: "n_models".into(), dtype: Dtype::I64, shape: vec![1] });
    let newest = checkpoints.last().expect("checkpoints");
    let buffers: Vec<_> = newest.tensors().iter().filter(|t| t.role.is_buffer()).collect();
    saved.extend(buffers.iter().map(|t| TensorSpec {
        name: format!("base.{}", t.name),
        dtype: t.dtype,
        shape: t.shape.clone(),
    }));
    let per = if rank > 0 { 3 } else { 2 };
    let meta = BTreeMap::from([
        ("format".to_string(), "swa swag moments".to_string()),
        ("rank".to_string(), rank.to_string()),
    ]);
    let writer = SafetensorsWriter::create(&path, &specs, &meta)?;
    let saver = save
        .map(|s| SafetensorsWriter::create(s, &saved, &BTreeMap::from([("format".to_string(), "pt".to_string())])))
        .transpose()?;
    let blocks: Vec<(usize, std::ops::Range<usize>)> = params
        .iter()
        .enumerate()
        .flat_map(|(i, p)| (0..p.numel).step_by(BLOCK).map(move |s| (i, s..(s + BLOCK).min(p.numel))))
        .collect();
    let varies: Vec<bool> = blocks
        .par_iter()
        .map(|(i, range)| {
            let p = &params[*i];
            let (mean, sq, dev) = block_moments(checkpoints, p, range.clone(), rank)?;
            let var: Vec<f64> = mean.iter().zip(&sq).map(|(m, s)| (s - m * m).max(VAR_CLAMP)).collect();
            let at = range.start * 4;
            writer.write_at(per * i, at, &f32_bytes(&mean))?;
            writer.write_at(per * i + 1, at, &f32_bytes(&var))?;
            for (k, row) in dev.iter().enumerate() {
                writer.write_at(per * i + 2, (k * p.numel + range.start) * 4, &f32_bytes(row))?;
            }
            if let Some(s) = &saver {
                s.write_at(per * i, at, &f32_bytes(&mean))?;
                s.write_at(per * i + 1, at, &f32_bytes(&sq))?;
                for (k, row) in dev.iter().enumerate() {
                    s.write_at(per * i + 2, (k * p.numel + range.start) * 4, &f32_bytes(row))?;
                }
            }
            Ok(var.iter().any(|&v| v > VAR_CLAMP) || dev.iter().flatten().any(|&d| d != 0.0))
        })
        .collect::<Result<_>>()?;
    let mut constant: Vec<String> = Vec::new();
    for ((i, _), v) in blocks.iter().zip(&varies) {
        let name = &params[*i].name;
        let all_constant = blocks.iter().zip(&varies).filter(|((j, _), _)| j == i).all(|(_, v)| !v);
        if !v && all_constant && constant.last() != Some(name) {
            constant.push(name.clone());
        }
    }
    let saver = match saver {
        Some(s) => {
            s.write_at(per * params.len(), 0, &(checkpoints.len() as i64).to_le_bytes())?;
            for (k, t) in buffers.iter().enumerate() {
                s.write_at(per * params.len() + 1 + k, 0, newest.bytes(t))?;
            }
            Some(s.finish()?)
        }
        None => None,
    };
    writer.finish()?.publish()?;
    let file = Checkpoint::open(&path)?;
    Ok((Moments { file, _staged: staged, rank, constant }, saver))
}

/// A counter-based stream of standard-normal draws (SplitMix64 → Marsaglia's polar method), one per (seed,
/// sample, block), so that any part draws a sample's values alike.
struct Normal {
    state: u64,
    spare: Option<f64>,
}

impl Normal {
    fn new(seed: u64, sample: usize, block: u64) -> Normal {
        let mut n = Normal { state: seed ^ 0x5357_4147_0000_0000, spare: None };
        n.state = n.next_u64() ^ (sample as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        n.state = n.next_u64() ^ block.wrapping_mul(0xD1B5_4A32_D192_ED03);
        n
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Marsaglia's polar method: two draws per accepted pair, no trigonometry.
    fn draw(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.uniform() - 1.0;
            let v = 2.0 * self.uniform() - 1.0;
            let r = u * u + v * v;
            if r > 0.0 && r < 1.0 {
                let f = (-2.0 * r.ln() / r).sqrt();
                self.spare = Some(v * f);
                return u * f;
            }
        }
    }
}

/// Where a sample's standard-normal values come from.
enum Draws {
    Seeded(u64),
    /// `[S, P + K]` from a file.
    Given(Vec<f64>, usize),
}

impl Draws {
    /// z₂ of sample `s` (K values).
    fn low_rank(&self, s: usize, parameters: usize, rank: usize) -> Vec<f64> {
        match self {
            Draws::Seeded(seed) => {
                let mut n = Normal::new(*seed, s, u64::MAX);
                (0..rank).map(|_| n.draw()).collect()
            }
            Draws::Given(v, width) => v[s * width + parameters..s * width + parameters + rank].to_vec(),
        }
    }

    /// z₁ of sample `s` for the flattened parameters `at..at + len` (one block).
    fn diagonal(&self, s: usize, at: usize, len: usize) -> Vec<f64> {
        match self {
            Draws::Seeded(seed) => {
                let mut n = Normal::new(*seed, s, (at / BLOCK) as u64);
                (0..len).map(|_| n.draw()).collect()
            }
            Draws::Given(v, width) => v[s * width + at..s * width + at + len].to_vec(),
        }
    }
}

/// Float32 values from little-endian bytes.
fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Sample `s` as a checkpoint: its parameters (in the newest checkpoint's types) and the newest
/// checkpoint's other tensors. Blocks of every parameter are drawn on all cores.
fn sample(
    s: usize,
    params: &[Param],
    m: &Moments,
    draws: &Draws,
    scale: f64,
    newest: &Checkpoint,
) -> Result<Checkpoint> {
    let total = params.last().map_or(0, |p| p.offset + p.numel);
    let z2 = draws.low_rank(s, total, m.rank);
    let root = scale.sqrt();
    let low = if m.rank > 1 { 1.0 / ((m.rank - 1) as f64).sqrt() } else { 0.0 };
    let bytes_of = |name: String| {
        let t = m.file.get(&name).expect("written");
        m.file.bytes(t)
    };
    let mut out = Checkpoint::empty(&newest.path().with_extension(format!("swag-sample-{s}")));
    for p in params {
        let width = dtype::width(p.dtype);
        let (mean, var) = (bytes_of(format!("{}.mean", p.name)), bytes_of(format!("{}.var", p.name)));
        let dev = (m.rank > 0).then(|| bytes_of(format!("{}.dev", p.name)));
        let mut bytes = vec![0u8; p.numel * width];
        bytes.par_chunks_mut(BLOCK * width).enumerate().for_each(|(b, chunk)| {
            let start = b * BLOCK;
            let len = chunk.len() / width;
            let z1 = draws.diagonal(s, p.offset + start, len);
            let range = start * 4..(start + len) * 4;
            let mut theta: Vec<f64> = f32s(&var[range.clone()]).zip(&z1).map(|(v, z)| (v as f64).sqrt() * z).collect();
            if let Some(d) = dev {
                for (k, &zk) in z2.iter().enumerate() {
                    let row = &d[(k * p.numel + start) * 4..(k * p.numel + start + len) * 4];
                    let w = low * zk;
                    theta.iter_mut().zip(f32s(row)).for_each(|(t, x)| *t += w * x as f64);
                }
            }
            theta.iter_mut().zip(f32s(&mean[range])).for_each(|(t, mu)| *t = mu as f64 + root * *t);
            dtype::encode(p.dtype, &theta, chunk);
        });
        if dtype::first_nonfinite(p.dtype, &bytes).is_some() {
            return Err(Error::setting(
                Setting::Scale,
                format!(
                    "{scale} makes sample {s} of `{}` overflow {}: use a smaller scale",
                    p.name,
                    dtype::name(p.dtype)
                ),
            ));
        }
        out.push_owned(p.name.clone(), p.dtype, p.shape.clone(), bytes)?;
    }
    for t in newest.tensors().iter().filter(|t| t.role.is_buffer()) {
        out.push_owned(t.name.clone(), t.dtype, t.shape.clone(), newest.bytes(t).to_vec())?;
        out.set_role(&t.name, t.role);
    }
    Ok(out)
}

/// What a part's file says besides its sums: enough to refuse merging parts of different runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartInfo {
    /// `swa swag`.
    pub written_by: String,
    /// The part, `I/N`.
    pub part: String,
    /// S in all.
    pub samples: usize,
    /// The samples this part drew.
    pub drawn: Vec<usize>,
    /// The draws' seed (`None`: a file of draws).
    pub seed: Option<u64>,
    /// K.
    pub rank: usize,
    /// The covariance scale.
    pub scale: f64,
    /// The checkpoints, by file name.
    pub checkpoints: Vec<String>,
    /// The task scored.
    pub task: Task,
    /// What else must be the same for parts of one run: the model's SHA-256, every checkpoint's
    /// name and size, the held-out and training sets, the refit's settings, the draws file.
    pub run: String,
    /// The sums' layout.
    pub mean: MeanParts,
}

/// The `.npz` of a part: `info` (JSON bytes), `sums` f64 `[samples, …]`, `targets`.
fn part_npz(info: &PartInfo, mean: &Mean) -> Result<Vec<u8>> {
    use crate::inputs::npy::{npy_bytes, npz_bytes, Data};
    let json = serde_json::to_vec(info).expect("part info serialises");
    let (sums, targets) = mean.sums();
    let mut shape = vec![info.mean.counts.len()];
    shape.extend(&info.mean.shape);
    let mut arrays =
        vec![("info", npy_bytes(&[json.len()], Data::U8(&json))), ("sums", npy_bytes(&shape, Data::F64(sums)))];
    let targets: Vec<&crate::batch::Tensor> = targets.into_iter().flatten().collect();
    if let Some(bytes) = crate::inputs::npy::tensors_npy(&targets) {
        arrays.push(("targets", bytes));
    }
    npz_bytes(&arrays)
}

/// Reads a part's `.npz` back: its info and its sums.
pub fn read_part(path: &Path) -> Result<(PartInfo, Mean)> {
    use crate::batch::Tensor;
    use crate::inputs::npy::NpyType;
    let arrays = crate::inputs::npy::open_npz(path)?;
    let get = |name: &str| {
        arrays
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| Error::format(path, format!("has no array `{name}`: not a part written by swa swag")))
    };
    let info = get("info")?;
    let info: PartInfo =
        serde_json::from_slice(&info.f32_rows(0, info.len()).into_iter().map(|v| v as u8).collect::<Vec<u8>>())
            .map_err(|e| Error::format(path, format!("its part information does not read: {e}")))?;
    let sums = get("sums")?.f64_values();
    let batch_sizes: Vec<usize> = info.mean.batches.iter().map(Vec::len).collect();
    let targets = match arrays.iter().find(|a| a.name == "targets") {
        None => vec![None; batch_sizes.len()],
        Some(t) => {
            let integer = matches!(t.dtype, NpyType::I64);
            let mut out = Vec::new();
            let mut at = 0;
            for n in batch_sizes {
                if at + n > t.len() {
                    return Err(Error::format(path, "has fewer targets than samples"));
                }
                let shape = [&[n][..], &t.shape[1..]].concat();
                out.push(Some(if integer {
                    Tensor::i64(shape, t.i64_rows(at, at + n))
                } else {
                    Tensor::f32(shape, t.f32_rows(at, at + n))
                }));
                at += n;
            }
            out
        }
    };
    let mean = Mean::from_parts(info.mean.clone(), sums, targets).map_err(|e| Error::format(path, e))?;
    Ok((info, mean))
}

/// What parts of one run share besides the settings `PartInfo` names.
fn run_fingerprint(opts: &SwagOptions, selected: &[inputs::CheckpointFile]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let hash = |path: &Path| -> Result<String> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Ok(format!("{:x}", Sha256::digest(&bytes)))
    };
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let name = |path: &Path| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let checkpoints: Vec<String> = selected.iter().map(|f| format!("{}:{}", name(&f.path), size(&f.path))).collect();
    let eval = &opts.eval;
    Ok(serde_json::json!({
        "model_sha256": hash(&opts.model)?,
        "checkpoints": checkpoints,
        "eval": [name(&eval.inputs), size(&eval.inputs).to_string(), eval.labels.as_deref().map(name).unwrap_or_default()],
        "train": [name(&opts.pass.inputs), size(&opts.pass.inputs).to_string()],
        "refit": format!("{} batch {} samples {:?} seed {} shuffle {}", opts.pass.stats, opts.pass.batch_size, opts.pass.max_samples, opts.pass.seed, opts.pass.shuffle),
        "draws": opts.draws.as_deref().map(hash).transpose()?,
    })
    .to_string())
}

/// The samples part `part` of `samples` draws: I, I+N, …
pub fn drawn_by(part: Part, samples: usize) -> Vec<usize> {
    (part.index..samples).step_by(part.count.get()).collect()
}

/// Takes the moments, draws this part's samples, recalibrates and evaluates each, and scores
/// their average (or writes this part's sums).
pub fn swag(opts: &SwagOptions) -> Result<SwagSummary> {
    let started = Instant::now();
    if opts.samples == 0 || opts.samples > MAX_SAMPLES {
        return Err(Error::setting(
            Setting::Samples,
            format!(
                "{} is not a number of samples (1 to {MAX_SAMPLES}; each is a recalibration and an evaluation)",
                opts.samples
            ),
        ));
    }
    if opts.part.count.get() > opts.samples {
        return Err(Error::usage(format!(
            "{} parts of {} samples: a part would draw none (give at most {} parts)",
            opts.part.count, opts.samples, opts.samples
        )));
    }
    if !(opts.scale.is_finite() && opts.scale >= 0.0) {
        return Err(Error::setting(Setting::Scale, format!("{} is not a scale (a number ≥ 0)", opts.scale)));
    }
    let binder = Binder::load(&opts.model)?;
    // A model without BatchNorm has nothing to refit: its samples are evaluated as drawn.
    let refit = crate::onnx::bn::find(binder.model()).is_ok();
    if !refit {
        crate::error::warn(format!(
            "{} has no BatchNormalization node: SWAG's samples are evaluated without a refit",
            opts.model.display()
        ));
    }
    let mut mean = crate::ensemble::mean_for(&opts.eval)?;
    let found = inputs::discover(&opts.checkpoints)?.files;
    let selected = inputs::select(&found, &opts.selection)?;
    let n = selected.len();
    if n < 2 {
        return Err(Error::usage(format!("SWAG needs at least two checkpoints (one has no variance); {n} selected")));
    }
    let rank = match (opts.diagonal, opts.rank) {
        (true, _) => 0,
        (false, Some(0)) => return Err(Error::setting(Setting::Rank, "must be at least 1")),
        (false, Some(k)) if k > n => {
            return Err(Error::setting(Setting::Rank, format!("{k} is more deviations than the {n} checkpoints give")))
        }
        (false, Some(1)) => {
            crate::error::warn(
                "a rank of 1 gives no low-rank covariance (it divides by K − 1 = 0): drawing from diagonal SWAG",
            );
            0
        }
        (false, Some(k)) => k,
        (false, None) => DEFAULT_RANK.min(n),
    };
    let checkpoints: Vec<Checkpoint> =
        selected.iter().map(|f| inputs::open_checkpoint(&f.path, opts.key.as_deref())).collect::<Result<_>>()?;
    let params = parameters(&checkpoints)?;
    let total: usize = params.iter().map(|p| p.numel).sum();
    let draws = match &opts.draws {
        None => Draws::Seeded(opts.seed),
        Some(path) => {
            let a = crate::inputs::npy::open_npy(path)?;
            // A file made for full SWAG serves the diagonal one too (its first P columns).
            if a.shape.len() != 2 || a.shape[1] < total + rank || a.shape[0] < opts.samples {
                return Err(Error::format(
                    path,
                    format!(
                        "holds draws of shape {:?}; {} samples of {total} parameters (sorted by name) and rank {rank} \
                         need [≥ {}, ≥ {}] (docs/formats.md, \"Draws\")",
                        a.shape,
                        opts.samples,
                        opts.samples,
                        total + rank
                    ),
                ));
            }
            Draws::Given(a.f64_values(), a.shape[1])
        }
    };
    // Every file read: no output may be one of them, or inside a folder of them.
    let mut read: Vec<PathBuf> = binder.model().files().to_vec();
    for f in &selected {
        read.extend(inputs::format_of(&f.path).files(&f.path)?);
    }
    read.extend([opts.pass.inputs.clone(), opts.eval.inputs.clone()]);
    read.extend(opts.eval.labels.iter().chain(&opts.eval.masks).chain(&opts.draws).cloned());
    // A run whose inputs change under it writes nothing (as average and run).
    let stamps = crate::fs::Stamps::of(&read)?;
    let read: Vec<&Path> = read.iter().map(PathBuf::as_path).collect();
    let files: Vec<&Path> =
        [&opts.save_moments, &opts.part_output].into_iter().flatten().map(PathBuf::as_path).collect();
    let mut dirs = crate::fs::OutputDirs::default();
    for out in &files {
        dirs.create_parents(out)?;
        crate::fs::check_output(out)?;
        crate::fs::refuse_overwrite(out, &read)?;
    }
    let mut every: Vec<&Path> = files.clone();
    every.extend(opts.save_samples.as_deref());
    crate::fs::refuse_same_output(&every)?;
    if let Some(dir) = &opts.save_samples {
        crate::fs::refuse_overwrite(dir, &read)?;
        let holds_input = crate::fs::resolved(dir)
            .is_some_and(|d| read.iter().any(|i| i.canonicalize().is_ok_and(|c| c.starts_with(&d))));
        if holds_input {
            return Err(Error::usage(format!(
                "{} holds an input: the samples are written into a new directory",
                dir.display()
            )));
        }
    }
    let work_dir = opts
        .part_output
        .as_deref()
        .or(opts.save_moments.as_deref())
        .map_or_else(std::env::temp_dir, |p| crate::fs::parent_dir(p).to_path_buf());
    let (moments, saved_moments) = moments(&checkpoints, &params, rank, &work_dir, opts.save_moments.as_deref())?;
    let seconds_moments = started.elapsed().as_secs_f64();
    let samples_dir = match &opts.save_samples {
        Some(dir) => {
            if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) || (dir.exists() && !dir.is_dir()) {
                return Err(Error::usage(format!(
                    "{} exists and is not an empty directory: the samples are written into a new one",
                    dir.display()
                )));
            }
            Some(crate::fs::StagedDir::beside(dir, "swa-swag-samples")?)
        }
        None => None,
    };
    let newest = checkpoints.last().expect("two at least");
    let mut drawn = Vec::new();
    let mut first: Option<Evaluation> = None;
    let (mut seconds_sampling, mut seconds_passes) = (0.0, 0.0);
    let order = drawn_by(opts.part, opts.samples);
    // The next sample is drawn on another thread while this one's passes run.
    std::thread::scope(|scope| -> Result<()> {
        let draw = |s: usize| {
            let (params, moments, draws, newest, binder) = (&params, &moments, &draws, newest, &binder);
            scope.spawn(move || -> Result<crate::onnx::bind::Bound> {
                let ck = sample(s, params, moments, draws, opts.scale, newest)?;
                binder.bind(Some(ck), opts.allow_missing_weights)
            })
        };
        let mut next = order.first().map(|&s| draw(s));
        for (i, &s) in order.iter().enumerate() {
            crate::progress::check_stop()?;
            let waiting = Instant::now();
            let bound = next.take().expect("drawn").join().expect("the sampler does not panic")?;
            next = order.get(i + 1).map(|&s| draw(s));
            seconds_sampling += waiting.elapsed().as_secs_f64();
            let passing = Instant::now();
            let file = samples_dir.as_ref().map(|dir| dir.path().join(format!("sample_{s:03}.safetensors")));
            let meta = BTreeMap::from([("swag_sample".to_string(), s.to_string())]);
            let model = if refit {
                let mut prepared = Prepared::new(bound)?;
                let result = recalibrate::compute(&prepared, &opts.pass)?;
                let names = crate::onnx::bn::apply(&mut prepared.bound.model, &prepared.layers, &result.stats)?;
                if let Some(file) = &file {
                    recalibrate::stage_weights(&prepared, &names, &result, file, &meta, None)?.publish()?;
                }
                prepared.bound.model
            } else {
                if let Some(file) = &file {
                    let c = &bound.checkpoint;
                    let tensors: Vec<_> = c
                        .tensors()
                        .iter()
                        .map(|t| {
                            (
                                TensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() },
                                c.bytes(t).to_vec(),
                            )
                        })
                        .collect();
                    crate::checkpoint::write_tensors(file, &tensors, &meta)?;
                }
                bound.model
            };
            let evaluation = crate::ensemble::member(&model, &opts.eval, &mut mean)?;
            seconds_passes += passing.elapsed().as_secs_f64();
            drawn.push(SampleScore { sample: s, score: evaluation.score() });
            first.get_or_insert(evaluation);
        }
        Ok(())
    })?;
    let first = first.expect("a part draws one sample at least");
    let mut outputs = Vec::new();
    let evaluation = if opts.part == Part::WHOLE {
        Some(crate::ensemble::score(&mean, &opts.model, &opts.eval, &first)?)
    } else {
        None
    };
    let mut staged = crate::fs::Outputs::default();
    if let Some(path) = &opts.part_output {
        let info = PartInfo {
            written_by: "swa swag".into(),
            part: opts.part.to_string(),
            samples: opts.samples,
            drawn: drawn.iter().map(|d| d.sample).collect(),
            seed: opts.draws.is_none().then_some(opts.seed),
            rank,
            scale: opts.scale,
            checkpoints: inputs::labels(&selected),
            task: opts.eval.task.clone(),
            run: run_fingerprint(opts, &selected)?,
            mean: mean.to_parts(),
        };
        staged.push(crate::fs::StagedFile::with_bytes(path, &part_npz(&info, &mean)?)?);
        outputs.push(path.clone());
    }
    if let (Some(file), Some(path)) = (saved_moments, &opts.save_moments) {
        staged.push(file);
        outputs.push(path.clone());
    }
    stamps.check()?;
    // All or none: the directory first (it fails if another process made one there), then the
    // files; if they fail, the directory just published (ours) is removed again.
    if let (Some(dir), Some(path)) = (samples_dir, &opts.save_samples) {
        dir.publish(path, crate::fs::Replace::Nothing).map_err(|e| match e {
            crate::fs::DirPublishError::Io(e) => Error::io(path, e),
            other => Error::usage(format!("{} was not written: {other}", path.display())),
        })?;
        if let Err(e) = staged.publish() {
            let _ = std::fs::remove_dir_all(path);
            return Err(e);
        }
        outputs.push(path.clone());
    } else {
        staged.publish()?;
    }
    dirs.keep();
    Ok(SwagSummary {
        models: n,
        rank,
        parameters: total,
        constant: moments.constant.clone(),
        scale: opts.scale,
        samples: opts.samples,
        passes: if refit { 2 } else { 1 } * drawn.len(),
        drawn,
        evaluation,
        outputs,
        seconds_moments,
        seconds_sampling,
        seconds_passes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Merges parts' sums into the Bayesian model average: every part of one run, each once.
pub fn merge_parts(parts: &[PathBuf]) -> Result<(Vec<PartInfo>, Evaluation)> {
    let mut infos: Vec<PartInfo> = Vec::new();
    let mut mean: Option<Mean> = None;
    for path in parts {
        let (info, m) = read_part(path)?;
        if let Some(first) = infos.first() {
            let same = first.samples == info.samples
                && first.run == info.run
                && first.seed == info.seed
                && first.rank == info.rank
                && first.scale == info.scale
                && first.checkpoints == info.checkpoints
                && first.task == info.task
                && first.part.split('/').nth(1) == info.part.split('/').nth(1);
            if !same {
                return Err(Error::format(
                    path,
                    "is a part of another SWAG run (samples, seed, rank, scale, checkpoints, task or parts differ)",
                ));
            }
        }
        // A part drew samples I, I+N, … of its S, one model each.
        let part: Option<Part> =
            info.part.split_once('/').and_then(|(i, n)| Part::new(i.parse().ok()?, n.parse().ok()?));
        let consistent = part.is_some_and(|p| {
            info.drawn.len() == m.members()
                && info.drawn.iter().enumerate().all(|(k, &s)| s == p.index + k * p.count.get() && s < info.samples)
        });
        if !consistent {
            return Err(Error::format(
                path,
                "cannot be a part: the samples it says it drew are not its part's, or not its models",
            ));
        }
        match &mut mean {
            Some(all) => all.merge(&m).map_err(|e| Error::format(path, e))?,
            None => mean = Some(m),
        }
        infos.push(info);
    }
    let first = infos.first().ok_or_else(|| Error::usage("no parts to merge"))?;
    let mut drawn: Vec<usize> = infos.iter().flat_map(|i| i.drawn.iter().copied()).collect();
    drawn.sort_unstable();
    if drawn.len() != first.samples || drawn.iter().enumerate().any(|(k, &s)| s != k) {
        return Err(Error::usage(format!(
            "the parts drew samples {drawn:?} of 0..{}: every sample must be drawn by exactly one part",
            first.samples
        )));
    }
    let mean = mean.expect("one part at least");
    let task = first.task.clone();
    let mut counts = crate::evaluate::Counts::new(&task);
    let at = crate::tasks::Context {
        model: &parts[0],
        output: "the mean of the samples' predictions",
        inputs: &parts[0],
        targets: &parts[0],
        classes: None,
        names: None,
    };
    mean.score(&mut counts.state, &at)?;
    if counts.samples() == 0 {
        return Err(Error::format(&parts[0], "holds no samples' predictions: there is nothing to score"));
    }
    Ok((infos, counts.finish()?))
}
