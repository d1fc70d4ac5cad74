//! Model soups that know about BatchNorm: choose which checkpoints to average by a held-out
//! metric (greedy soup, Wortsman et al. 2022; uniform; top-k), judging every candidate with
//! BatchNorm statistics recalibrated for its own weights.
//!
//! Every candidate is first judged alone (a soup of one, recalibrated like the soups, so singles
//! and soups compare alike) on the select split, and ranked: higher accuracy first, then lower
//! loss, then the later checkpoint. A greedy soup starts from the best and tries the others in
//! that order, each as the uniform average of the current ingredients and the candidate, formed
//! from the running sum of the ingredients (no ingredient is read twice); it keeps a candidate
//! when the select accuracy does not drop (equal accuracy: when the loss does not rise). The eval
//! (test) split, if given, is only reported, never used to choose.
//!
//! The running sum holds every floating-point tensor in f64 (8 bytes per parameter), added and
//! divided by `swa average`'s kernel: soups are for models that ONNX Runtime runs, not for 100 GB
//! checkpoints (`swa average` streams those).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::checkpoint::{dtype, Checkpoint, TensorSpec};
use crate::error::{Error, Result};
use crate::evaluate::{self, EvalOptions, Score};
use crate::fs::{check_output, refuse_overwrite, refuse_same_output, OutputDirs, Outputs, Stamps};
use crate::inputs::{self, CheckpointFile, Selection};
use crate::onnx::bind::{Binder, Bound};
use crate::onnx::bn;
use crate::recalibrate::{self, PassOptions, PassResult, Prepared};

/// How the ingredients are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// Add candidates best first, keeping each that does not make the soup worse.
    #[default]
    Greedy,
    /// Average every candidate.
    Uniform,
    /// Average the K best candidates.
    TopK(NonZeroUsize),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Greedy => f.write_str("greedy"),
            Method::Uniform => f.write_str("uniform"),
            Method::TopK(k) => write!(f, "top-k:{k}"),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "greedy" => Ok(Method::Greedy),
            "uniform" => Ok(Method::Uniform),
            _ => s
                .strip_prefix("top-k:")
                .and_then(|k| k.parse::<NonZeroUsize>().ok())
                .map(Method::TopK)
                .ok_or_else(|| format!("unknown soup method `{s}`: use greedy, uniform or top-k:K (K ≥ 1)")),
        }
    }
}

/// Everything `swa soup` needs.
#[derive(Debug, Clone)]
pub struct SoupOptions {
    /// The ONNX model (any weights; each soup's are bound into it).
    pub model: PathBuf,
    /// Candidate checkpoint files or directories.
    pub checkpoints: Vec<PathBuf>,
    /// Which of them are candidates.
    pub selection: Selection,
    /// The state dict to read in `torch.save` checkpoints.
    pub key: Option<String>,
    /// How ingredients are chosen.
    pub method: Method,
    /// The BatchNorm statistics every candidate and soup is judged with.
    pub statistics: Statistics,
    /// The select split: what the ingredients are chosen by.
    pub select: EvalOptions,
    /// A test split, reported for the soup and the best single checkpoint, never used to choose.
    pub eval: Option<EvalOptions>,
    /// Keep the model's own values for weights a checkpoint lacks.
    pub allow_missing_weights: bool,
    /// The soup's weights (safetensors, under the checkpoints' names).
    pub output: PathBuf,
    /// Also the ONNX model with the soup's weights and statistics.
    pub onnx_output: Option<PathBuf>,
    /// Temperature scaling of the soup: given, or fitted (on the select split, unless another
    /// calibration set is named).
    pub temperature: Option<evaluate::TemperatureSource>,
    /// Divide the logits of the ONNX output by the temperature.
    pub temperature_in_onnx: bool,
}

/// The BatchNorm statistics candidates and soups are judged with.
#[derive(Debug, Clone)]
pub enum Statistics {
    /// Recalibrated for each by this pass (training samples, batch, statistics mode, device) when
    /// the model has BatchNorm; the averaged stored ones otherwise.
    RecalibrateIfBatchNorm(PassOptions),
    /// Recalibrated for each by this pass; a model without BatchNorm is an error.
    Recalibrate(PassOptions),
    /// The averaged stored statistics.
    Stored,
}

impl Statistics {
    /// The recalibration pass, if there is one.
    pub fn pass(&self) -> Option<&PassOptions> {
        match self {
            Statistics::RecalibrateIfBatchNorm(p) | Statistics::Recalibrate(p) => Some(p),
            Statistics::Stored => None,
        }
    }
}

/// One candidate as it was tried.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// File name (with as many of its directories as tell it from the other candidates').
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The number in its name.
    pub number: Option<u64>,
    /// Its select metrics alone (recalibrated when the soup is).
    pub select_alone: Score,
    /// The select metrics of the soup with it added (greedy only; `None` for the first ingredient).
    pub select_in_soup: Option<Score>,
    /// Whether it is an ingredient of the final soup.
    pub kept: bool,
}

/// The best single checkpoint by select accuracy.
#[derive(Debug, Clone, Serialize)]
pub struct BestSingle {
    /// File name.
    pub name: String,
    /// Its select metrics.
    pub select: Score,
    /// Its test metrics, with the test split.
    pub eval: Option<Score>,
}

/// What `swa soup` did.
#[derive(Debug, Clone, Serialize)]
pub struct SoupSummary {
    /// `greedy`, `uniform` or `top-k:K`.
    pub method: String,
    /// Whether BatchNorm statistics were recalibrated for every candidate and soup.
    pub recalibrated: bool,
    /// The statistics mode, when recalibrated.
    pub stats: Option<String>,
    /// Names of the ingredients (as candidates are named), in the order they were added.
    pub ingredients: Vec<String>,
    /// Every candidate, in the order tried (best alone first).
    pub candidates: Vec<Candidate>,
    /// The final soup on the select split.
    pub select: Score,
    /// The final soup on the test split.
    pub eval: Option<Score>,
    /// The best candidate alone.
    pub best_single: BestSingle,
    /// Models in the soup.
    pub n_models: u64,
    /// Files written.
    pub outputs: Vec<PathBuf>,
    /// The missing directories created for them, parents first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub created_dirs: Vec<PathBuf>,
    /// The temperature of the soup: its value, its fit, and the test split's figures with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<SoupTemperature>,
    /// Wall time.
    pub seconds: f64,
}

/// Temperature scaling of a soup.
#[derive(Debug, Clone, Serialize)]
pub struct SoupTemperature {
    /// T.
    pub value: f64,
    /// The fit, where fitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit: Option<crate::tasks::temperature::Fit>,
    /// The soup on the test split with its logits divided by T.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<Score>,
}

/// Candidates, opened once, and the model to bind them into.
struct Kitchen<'a> {
    opts: &'a SoupOptions,
    binder: Binder,
    /// The pass that recalibrates each candidate, if they are recalibrated.
    pass: Option<&'a PassOptions>,
}

/// A model judged on the select split: its bound weights, recalibrated when the soup is.
struct Judged {
    model: JudgedModel,
    select: Score,
}

enum JudgedModel {
    /// Recalibrated: the pass and the statistics' initializer names.
    Recalibrated { prepared: Prepared, pass: PassResult, names: Vec<(String, String)> },
    /// With the stored (averaged) statistics.
    Stored(Bound),
}

impl Judged {
    fn model_mut(&mut self) -> &mut crate::onnx::Model {
        match &mut self.model {
            JudgedModel::Recalibrated { prepared, .. } => &mut prepared.bound.model,
            JudgedModel::Stored(bound) => &mut bound.model,
        }
    }

    fn model(&self) -> &crate::onnx::Model {
        match &self.model {
            JudgedModel::Recalibrated { prepared, .. } => &prepared.bound.model,
            JudgedModel::Stored(bound) => &bound.model,
        }
    }
}

impl Kitchen<'_> {
    /// Binds `ck`, recalibrates it when on, and evaluates it on the select split.
    fn judge(&self, ck: Checkpoint) -> Result<Judged> {
        let bound = self.binder.bind(Some(ck), self.opts.allow_missing_weights)?;
        let Some(pass_options) = self.pass else {
            let select = evaluate::evaluate(&bound.model, &self.opts.select)?.score();
            return Ok(Judged { model: JudgedModel::Stored(bound), select });
        };
        let mut prepared = Prepared::new(bound)?;
        recalibrate::check_weights_finite(&prepared)?;
        let pass = recalibrate::compute(&prepared, pass_options)?;
        let names = recalibrate::apply(&mut prepared, &pass, &BTreeMap::new())?;
        let select = evaluate::evaluate(&prepared.bound.model, &self.opts.select)?.score();
        Ok(Judged { model: JudgedModel::Recalibrated { prepared, pass, names }, select })
    }
}

/// The uniform average of checkpoints, kept as a running f64 sum of every floating-point tensor,
/// in the order the ingredients were added. The sums and the average are `swa average`'s kernel
/// ([`dtype::accumulate`], [`dtype::encode_quotients`]): every element accumulated in f64 and
/// divided once by the count, rounded once to its dtype, so a soup equals `swa average` of its
/// ingredients in that order (with `--buffers average`) bit for bit. Non-finite values carry
/// through, as with `--allow-nonfinite`: the judging pass reports a non-finite weight, or the
/// evaluation counts the non-finite outputs.
struct Sum {
    reference: Checkpoint,
    sums: BTreeMap<String, Vec<f64>>,
    count: usize,
}

impl Sum {
    fn new(first: Checkpoint) -> Self {
        let mut sums = BTreeMap::new();
        for t in first.tensors().iter().filter(|t| dtype::is_float(t.dtype)) {
            let mut sum = vec![0.0; t.numel()];
            dtype::accumulate(t.dtype, first.bytes(t), 1.0, &mut sum, true);
            sums.insert(t.name.clone(), sum);
        }
        Sum { reference: first, sums, count: 1 }
    }

    /// Adds a candidate (checked compatible with the first).
    fn add(&mut self, ck: &Checkpoint) {
        for (name, sum) in &mut self.sums {
            let t = ck.get(name).expect("candidates are checked compatible");
            dtype::accumulate(t.dtype, ck.bytes(t), 1.0, sum, false);
        }
        self.count += 1;
    }

    /// The average with `extra` added (when given), as a checkpoint in the reference's dtypes and
    /// order; integer tensors come from the first ingredient.
    fn average_with(&self, extra: Option<&Checkpoint>) -> Result<Checkpoint> {
        let n = (self.count + extra.is_some() as usize) as f64;
        let mut out = Checkpoint::empty(Path::new("soup"));
        for t in self.reference.tensors() {
            let bytes = match self.sums.get(&t.name) {
                Some(sum) => {
                    let mut values = sum.clone();
                    if let Some(e) = extra {
                        let u = e.get(&t.name).expect("candidates are checked compatible");
                        dtype::accumulate(u.dtype, e.bytes(u), 1.0, &mut values, false);
                    }
                    let mut bytes = vec![0u8; values.len() * dtype::width(t.dtype)];
                    dtype::encode_quotients(t.dtype, &values, n, &mut bytes);
                    bytes
                }
                None => self.reference.bytes(t).to_vec(),
            };
            out.push_owned(t.name.clone(), t.dtype, t.shape.clone(), bytes)?;
        }
        Ok(out)
    }
}

/// Better first: by the task's order of scores (classification: more correct, then a lower loss,
/// NaN the worst), then the later checkpoint. A total order: `sort_by` may panic without one, and
/// the best candidate found while judging must be the one sorted first.
fn rank(a: &(usize, Score), b: &(usize, Score)) -> std::cmp::Ordering {
    a.1.compare(&b.1).then(b.0.cmp(&a.0))
}

/// Whether a soup with `new` select figures is no worse than one with `current`.
fn no_worse(new: &Score, current: &Score) -> bool {
    new.compare(current).is_le()
}

/// Checks the outputs (creating their missing directories), and that the select and test splits
/// are not one file.
fn check_files(opts: &SoupOptions, read: &[&Path], dirs: &mut OutputDirs) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let name = opts.output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !crate::checkpoint::FORMATS.iter().any(|f| f.writes(&name)) {
        return Err(Error::usage(format!(
            "the soup's weights are written as a checkpoint: name the output NAME.safetensors (or NAME.pt for a \
             torch.save file), not {}",
            opts.output.display()
        )));
    }
    if let Some(onnx) = &opts.onnx_output {
        crate::recalibrate::check_onnx_name(onnx)?;
    }
    let mut outputs: Vec<&Path> = vec![&opts.output];
    let data = opts.onnx_output.as_deref().map(crate::onnx::data_file);
    outputs.extend(opts.onnx_output.as_deref());
    outputs.extend(data.as_deref());
    for o in &outputs {
        dirs.create_parents(o)?;
        check_output(o)?;
        refuse_overwrite(o, read)?;
    }
    refuse_same_output(&outputs)?;
    if let Some(eval) = &opts.eval {
        warnings.extend(same_split_warning(&opts.select.inputs, &eval.inputs));
    }
    Ok(warnings)
}

/// A warning when the select split and the test split are one file (`swa soup`, `swa run
/// --soup`): the test figures of the soup are then not held out.
pub fn same_split_warning(select: &Path, eval: &Path) -> Option<String> {
    let same = select.canonicalize().ok().is_some_and(|x| eval.canonicalize().ok() == Some(x));
    same.then(|| {
        format!("the select and eval splits are the same file ({}): the test figures are not held out", eval.display())
    })
}

/// Makes the soup as `opts` says and writes it; returns the summary and warnings for people.
pub fn soup(opts: &SoupOptions) -> Result<(SoupSummary, Vec<String>)> {
    let started = Instant::now();
    let pantry = Pantry::open(opts)?;
    let mut dirs = OutputDirs::default();
    let read: Vec<&Path> = pantry.read.iter().map(PathBuf::as_path).collect();
    let warnings = check_files(opts, &read, &mut dirs)?;
    let stamps = Stamps::of(&pantry.read)?;
    let Pantry { files, names, checkpoints, binder, pass, .. } = pantry;
    let kitchen = Kitchen { opts, binder, pass };
    let ranked = rank_candidates(&kitchen, &checkpoints)?;
    let best_eval =
        opts.eval.as_ref().map(|e| evaluate::evaluate(ranked.best.model(), e)).transpose()?.map(|e| e.score());
    let (order, alone) = (ranked.order.clone(), ranked.alone.clone());
    let mut mixed = mix(&kitchen, &checkpoints, ranked)?;
    let eval = opts.eval.as_ref().map(|e| evaluate::evaluate(mixed.soup.model(), e)).transpose()?.map(|e| e.score());
    let temperature = match &opts.temperature {
        None => None,
        Some(source) => {
            let (value, fit) = match source {
                evaluate::TemperatureSource::Given(t) => (*t, None),
                evaluate::TemperatureSource::Fit(calibration) => {
                    let fit = evaluate::fit_temperature(mixed.soup.model(), calibration)?;
                    (fit.temperature, Some(fit))
                }
            };
            let given = evaluate::TemperatureSource::Given(value);
            let eval = opts
                .eval
                .as_ref()
                .map(|e| evaluate::evaluate_with_temperature(mixed.soup.model(), e, &given))
                .transpose()?
                .map(|e| e.score());
            Some(SoupTemperature { value, fit, eval })
        }
    };
    if let (Some(t), true) = (&temperature, opts.temperature_in_onnx) {
        crate::onnx::divide_first_output(mixed.soup.model_mut(), t.value as f32)?;
    }
    let staged = stage(&kitchen, &mut mixed.soup, &mixed.kept, &files)?;
    let outputs = staged.targets();
    stamps.check()?;
    staged.publish()?;

    let best = order[0];
    let candidates = order
        .iter()
        .map(|&i| Candidate {
            name: names[i].clone(),
            path: files[i].path.clone(),
            number: files[i].number,
            select_alone: alone[&i].clone(),
            select_in_soup: mixed.in_soup.get(&i).cloned(),
            kept: mixed.kept.contains(&i),
        })
        .collect();
    let summary = SoupSummary {
        method: opts.method.to_string(),
        recalibrated: pass.is_some(),
        stats: pass.map(|p| p.stats.to_string()),
        ingredients: mixed.kept.iter().map(|&i| names[i].clone()).collect(),
        candidates,
        select: mixed.soup.select.clone(),
        eval,
        best_single: BestSingle { name: names[best].clone(), select: alone[&best].clone(), eval: best_eval },
        n_models: mixed.kept.len() as u64,
        outputs,
        created_dirs: dirs.keep(),
        temperature,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((summary, warnings))
}

/// The candidates of a soup, found, selected, opened and checked compatible, with the model and
/// every file the soup reads.
struct Pantry<'a> {
    files: Vec<CheckpointFile>,
    /// What the summary calls each candidate: its file name, or enough of its path to tell it from
    /// the others (`checkpoint-500/model.safetensors`).
    names: Vec<String>,
    checkpoints: Vec<Checkpoint>,
    binder: Binder,
    /// The pass that recalibrates each candidate, if they are recalibrated.
    pass: Option<&'a PassOptions>,
    read: Vec<PathBuf>,
}

impl<'a> Pantry<'a> {
    fn open(opts: &'a SoupOptions) -> Result<Self> {
        if let Some(pass) = opts.statistics.pass() {
            inputs::check_same_classes(&pass.inputs, &opts.select.inputs)?;
        }
        if let Some(e) = &opts.eval {
            inputs::check_same_classes(&opts.select.inputs, &e.inputs)?;
        }
        let found = inputs::discover(&opts.checkpoints)?;
        let files: Vec<CheckpointFile> = inputs::select(&found.files, &opts.selection)?;
        let names = inputs::labels(&files);
        if let Method::TopK(k) = opts.method {
            if k.get() > files.len() {
                return Err(Error::usage(format!(
                    "top-k:{k} needs at least {k} candidates, and {} were selected",
                    files.len()
                )));
            }
        }
        let binder = Binder::load(&opts.model)?;
        let pass = match &opts.statistics {
            Statistics::RecalibrateIfBatchNorm(pass) => bn::find(binder.model()).is_ok().then_some(pass),
            Statistics::Recalibrate(pass) => {
                bn::find(binder.model())?;
                Some(pass)
            }
            Statistics::Stored => None,
        };
        let checkpoints: Vec<Checkpoint> =
            files.iter().map(|f| inputs::open_checkpoint(&f.path, opts.key.as_deref())).collect::<Result<_>>()?;
        // Every candidate has the same tensors, so a soup's sum never lacks a term: checked before
        // any pass, as `swa average` checks its inputs.
        crate::average::check_compatible(&checkpoints.iter().collect::<Vec<_>>(), false)?;
        let mut read: Vec<PathBuf> = binder.model().files().to_vec();
        read.extend(checkpoints.iter().flat_map(|c| c.files()).map(Path::to_path_buf));
        read.extend(opts.statistics.pass().map(|p| p.inputs.clone()));
        read.push(opts.select.inputs.clone());
        read.extend(opts.select.labels.clone());
        if let Some(e) = &opts.eval {
            read.push(e.inputs.clone());
            read.extend(e.labels.clone());
        }
        Ok(Pantry { files, names, checkpoints, binder, pass, read })
    }
}

/// Every candidate judged alone, best first.
struct Ranked {
    /// Candidates, best first.
    order: Vec<usize>,
    /// Each candidate's select figures alone.
    alone: BTreeMap<usize, Score>,
    /// The best candidate, judged (it starts a greedy soup).
    best: Judged,
}

fn rank_candidates(kitchen: &Kitchen, checkpoints: &[Checkpoint]) -> Result<Ranked> {
    let mut alone = Vec::new();
    let mut best: Option<Judged> = None;
    for (i, ck) in checkpoints.iter().enumerate() {
        let judged = kitchen.judge(clone_checkpoint(ck)?)?;
        let entry = (i, judged.select.clone());
        let better = alone.iter().all(|other| rank(&entry, other) == std::cmp::Ordering::Less);
        alone.push(entry);
        if better {
            best = Some(judged);
        }
    }
    alone.sort_by(rank);
    Ok(Ranked {
        order: alone.iter().map(|(i, _)| *i).collect(),
        alone: alone.into_iter().collect(),
        best: best.expect("at least one candidate"),
    })
}

/// The soup as mixed: judged, its ingredients in the order added, and each greedy candidate's
/// select figures in the soup.
struct Mixed {
    soup: Judged,
    kept: Vec<usize>,
    in_soup: BTreeMap<usize, Score>,
}

fn mix(kitchen: &Kitchen, checkpoints: &[Checkpoint], ranked: Ranked) -> Result<Mixed> {
    let order = &ranked.order;
    let mut in_soup = BTreeMap::new();
    let mut kept = vec![order[0]];
    let mut sum = Sum::new(clone_checkpoint(&checkpoints[order[0]])?);
    let soup = match kitchen.opts.method {
        Method::Greedy => {
            let mut current = ranked.best;
            for &c in &order[1..] {
                let candidate = kitchen.judge(sum.average_with(Some(&checkpoints[c]))?)?;
                in_soup.insert(c, candidate.select.clone());
                if no_worse(&candidate.select, &current.select) {
                    sum.add(&checkpoints[c]);
                    kept.push(c);
                    current = candidate;
                }
            }
            current
        }
        Method::Uniform | Method::TopK(_) => {
            let chosen = match kitchen.opts.method {
                Method::TopK(k) => &order[..k.get()],
                _ => &order[..],
            };
            for &c in &chosen[1..] {
                sum.add(&checkpoints[c]);
                kept.push(c);
            }
            kitchen.judge(sum.average_with(None)?)?
        }
    };
    Ok(Mixed { soup, kept, in_soup })
}

/// The soup's weights (under the checkpoints' names) and its ONNX model, staged to be published
/// together, with the metadata of an average of `kept` (and of its recalibration).
fn stage(kitchen: &Kitchen, soup: &mut Judged, kept: &[usize], files: &[CheckpointFile]) -> Result<Outputs> {
    let opts = kitchen.opts;
    let weighting = match opts.method {
        Method::Greedy => "greedy-soup".to_string(),
        Method::Uniform => "uniform-soup".to_string(),
        Method::TopK(k) => format!("top-{k}-soup"),
    };
    let sources: Vec<String> = kept.iter().map(|&i| files[i].path.to_string_lossy().into_owned()).collect();
    let mut meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("n_models".to_string(), kept.len().to_string()),
        ("sources".to_string(), serde_json::to_string(&sources).expect("strings")),
        ("weighting".to_string(), weighting),
        ("weights".to_string(), serde_json::to_string(&vec![1.0 / kept.len() as f64; kept.len()]).expect("floats")),
        ("swa_version".to_string(), crate::VERSION.to_string()),
    ]);
    let mut staged = Outputs::default();
    match &mut soup.model {
        JudgedModel::Recalibrated { prepared, pass, names } => {
            let model_path = opts.model.as_path();
            let options = kitchen.pass.expect("recalibrated with a pass");
            let pass_meta = recalibrate::metadata(options, pass, &[model_path, &options.inputs]);
            for (k, v) in pass_meta {
                meta.entry(k).or_insert(v);
            }
            recalibrate::record_metadata(&mut prepared.bound.model, &meta);
            staged.append(recalibrate::stage_weights(prepared, names, pass, &opts.output, &meta, None)?);
            if let Some(onnx) = &opts.onnx_output {
                staged.append(prepared.bound.model.stage(onnx, false)?);
            }
        }
        JudgedModel::Stored(bound) => {
            let ck = &bound.checkpoint;
            let tensors: Vec<(TensorSpec, Vec<u8>)> = ck
                .tensors()
                .iter()
                .map(|t| {
                    (TensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() }, ck.bytes(t).to_vec())
                })
                .collect();
            staged.append(crate::checkpoint::stage_tensors(&opts.output, &tensors, &meta, Some(ck.path()))?);
            if let Some(onnx) = &opts.onnx_output {
                recalibrate::record_metadata(&mut bound.model, &meta);
                staged.append(bound.model.stage(onnx, false)?);
            }
        }
    }
    Ok(staged)
}

/// A copy of a checkpoint's tensors (binding consumes a checkpoint; the candidates stay open for
/// the soups).
fn clone_checkpoint(ck: &Checkpoint) -> Result<Checkpoint> {
    let mut out = Checkpoint::empty(ck.path());
    for t in ck.tensors() {
        out.push_owned(t.name.clone(), t.dtype, t.shape.clone(), ck.bytes(t).to_vec())?;
    }
    *out.metadata_mut() = ck.metadata().clone();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_print() {
        assert_eq!("greedy".parse::<Method>().unwrap(), Method::Greedy);
        assert_eq!("top-k:3".parse::<Method>().unwrap().to_string(), "top-k:3");
        assert!("top-k:0".parse::<Method>().is_err() && "best".parse::<Method>().is_err());
    }

    #[test]
    fn ranking_puts_the_better_score_first_then_the_later_checkpoint() {
        // Equal accuracy; one candidate's logits were all non-finite (loss NaN): a total order,
        // with the NaN last, and the later checkpoint first among equals.
        let s = |loss: f64| {
            Score::Classification(crate::tasks::classification::Score {
                score: None,
                correct: 3,
                samples: 10,
                top1: 0.3,
                topk: 0.3,
                loss,
                nonfinite: if loss.is_nan() { 10 } else { 0 },
                calibration: Default::default(),
            })
        };
        let all = [(0, s(1.0)), (1, s(f64::NAN)), (2, s(2.0)), (3, s(1.0))];
        let mut sorted = all.to_vec();
        sorted.sort_by(rank);
        assert_eq!(sorted.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [3, 0, 2, 1]);
        assert!(!no_worse(&s(f64::NAN), &s(2.0)) && no_worse(&s(2.0), &s(f64::NAN)) && no_worse(&s(1.0), &s(1.0)));
    }
}
