//! The checkpoints of an average: found, selected, weighted (a resumed average first), opened,
//! and checked to hold the same tensors.

use std::path::Path;

use super::weights::{normalise, relative_weights, KernelWeights, Weighting};
use super::AverageOptions;
use crate::checkpoint::{dtype, Checkpoint};
use crate::error::{Error, Result, Setting};
use crate::inputs::{self, CheckpointFile, Duplicate};

/// The `n_models` of a resumed average's metadata: a whole number of at least 1.
/// The weighting an average resumed from `prior` (whose metadata says `weighting`) continues
/// with, given the options' `asked`: a uniform average continues uniformly, an EMA as the same
/// EMA; an average with explicit weights cannot be continued (its weight against new checkpoints
/// is not defined), nor one asked to change its weighting.
pub(super) fn resumed_weighting(prior: &Path, weighting: Option<&str>, asked: &Weighting) -> Result<Weighting> {
    let stored = match weighting.map(str::trim) {
        None | Some("uniform") => Weighting::Uniform,
        Some("explicit") => {
            return Err(Error::setting(
                Setting::Resume,
                format!(
                    "{} was averaged with explicit weights: how much it weighs against new checkpoints is not \
                     defined; average all the checkpoints again with their weights",
                    prior.display()
                ),
            ))
        }
        Some(w) => match w.strip_prefix("ema(").and_then(|r| r.strip_suffix(')')).and_then(|d| d.parse::<f64>().ok()) {
            Some(d) if d > 0.0 && d < 1.0 => Weighting::Ema(d),
            _ => {
                return Err(Error::format(prior, format!("has a `weighting` in its metadata swa does not know: {w:?}")))
            }
        },
    };
    match (asked, &stored) {
        (Weighting::Uniform, _) => Ok(stored),
        (Weighting::Ema(a), Weighting::Ema(d)) if a == d => Ok(stored),
        (asked, stored) => Err(Error::setting(
            Setting::Resume,
            format!(
                "continues {} as it was made ({}); it cannot be continued as {}",
                prior.display(),
                super::weights::weighting_name(stored),
                super::weights::weighting_name(asked)
            ),
        )),
    }
}

pub(super) fn resumed_models(prior: &Path, value: Option<&str>) -> Result<u64> {
    let Some(value) = value else {
        return Err(Error::format(prior, "has no `n_models` in its metadata: was it written by `swa average`?"));
    };
    value.trim().parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
        Error::format(prior, format!("has an invalid `n_models` in its metadata: {value:?} is not a whole number ≥ 1"))
    })
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
    Err(Error::Mismatch(format!(
        "checkpoints disagree ({} differences){}:\n{}{more}",
        all.len(),
        kinds_differ(checkpoints),
        shown.join("\n")
    )))
}

/// Where checkpoints of different kinds are mixed (their names never agree), what they are.
fn kinds_differ(checkpoints: &[&Checkpoint]) -> String {
    let kind = |c: &Checkpoint| {
        let format = crate::checkpoint::format::surest(crate::checkpoint::FORMATS.iter().copied(), c.path());
        match format.map(|f| f.name()) {
            Some("Keras") if c.tensors().iter().any(|t| t.name.contains("/vars/")) => "Keras 3".to_string(),
            Some("Keras") => "Keras 2".to_string(),
            Some(name) => name.to_string(),
            None => "safetensors".to_string(),
        }
    };
    let mut kinds: Vec<String> = checkpoints.iter().map(|c| kind(c)).collect();
    kinds.sort_unstable();
    kinds.dedup();
    if kinds.len() < 2 {
        return String::new();
    }
    format!(": they mix {} checkpoints, which name their variables differently", kinds.join(" and "))
}

/// The checkpoints of an average, opened, in order (a resumed average first), with their
/// normalised weights.
pub(super) struct Inputs {
    pub(super) checkpoints: Vec<Checkpoint>,
    pub(super) files: Vec<CheckpointFile>,
    pub(super) weights: Vec<f64>,
    pub(super) kernel: KernelWeights,
    pub(super) n_models: u64,
    pub(super) sources: Vec<String>,
    pub(super) duplicates: Vec<Duplicate>,
    pub(super) left_out: Vec<crate::inputs::LeftOut>,
    /// The weighting of the whole average: the options', or the resumed file's (an EMA continues
    /// as an EMA).
    pub(super) weighting: Weighting,
}

impl Inputs {
    /// Finds, selects, weights and opens the inputs, and checks that they agree.
    pub(super) fn open(opts: &AverageOptions) -> Result<Self> {
        let found = inputs::discover(&opts.checkpoints)?;
        let selected = inputs::select(&found.files, &opts.selection)?;
        let prior =
            opts.resume.as_deref().map(|p| Ok::<_, Error>((p, inputs::open_checkpoint(p, None)?))).transpose()?;
        let weighting = match &prior {
            Some((path, ck)) => {
                resumed_weighting(path, ck.metadata().get("weighting").map(String::as_str), &opts.weighting)?
            }
            None => opts.weighting.clone(),
        };
        let mut rel = relative_weights(selected.len(), &weighting)?;
        let mut inputs = Inputs {
            checkpoints: Vec::new(),
            files: Vec::new(),
            weights: Vec::new(),
            kernel: KernelWeights { scaled: Vec::new(), divisor: 1.0 },
            n_models: 0,
            sources: Vec::new(),
            duplicates: found.duplicates,
            left_out: found.left_out,
            weighting: weighting.clone(),
        };
        if let Some((prior, ck)) = prior {
            if let Some(f) = selected.iter().find(|f| inputs::discover::same_file(&f.path, prior)) {
                return Err(Error::setting(
                    Setting::Resume,
                    format!(
                        "{} is also one of the checkpoints ({}): its models would count twice",
                        prior.display(),
                        f.path.display()
                    ),
                ));
            }
            let n = resumed_models(prior, ck.metadata().get("n_models").map(String::as_str))?;
            if let Some(s) = ck.metadata().get("sources").and_then(|s| serde_json::from_str::<Vec<String>>(s).ok()) {
                inputs.sources.extend(s);
            }
            // A uniform average of n models counts as n; an EMA continues from its value:
            // θ ← d·θ + (1−d)·x for each new checkpoint, so the old average keeps d^k.
            let prior_weight = match weighting {
                Weighting::Ema(d) => d.powi(i32::try_from(selected.len()).unwrap_or(i32::MAX)),
                _ => n as f64,
            };
            if let Weighting::Ema(d) = weighting {
                // The EMA's first checkpoint starts it (weight d^(k-1) as the oldest): resumed,
                // every new checkpoint is an update.
                rel = (0..selected.len()).map(|i| (1.0 - d) * d.powi((selected.len() - 1 - i) as i32)).collect();
            }
            rel.insert(0, prior_weight);
            inputs.n_models = n;
            inputs.files.push(CheckpointFile { path: prior.to_path_buf(), number: None });
            inputs.checkpoints.push(ck);
        }
        inputs.n_models =
            u64::try_from(selected.len()).ok().and_then(|k| inputs.n_models.checked_add(k)).ok_or_else(|| {
                let prior = opts.resume.as_deref().unwrap_or(Path::new(""));
                Error::format(
                    prior,
                    format!("`n_models` {} plus {} new checkpoints overflows", inputs.n_models, selected.len()),
                )
            })?;
        for f in selected {
            inputs.checkpoints.push(inputs::open_checkpoint(&f.path, opts.key.as_deref())?);
            inputs.sources.push(f.path.to_string_lossy().into_owned());
            inputs.files.push(f);
        }
        let refs: Vec<&Checkpoint> = inputs.checkpoints.iter().collect();
        check_compatible(&refs, opts.resume.is_some())?;
        inputs.weights = normalise(&rel);
        inputs.kernel = KernelWeights::of(&rel);
        Ok(inputs)
    }

    /// The newest checkpoint: its tensor order, dtypes and buffers are the output's.
    pub(super) fn newest(&self) -> &Checkpoint {
        self.checkpoints.last().expect("at least one checkpoint")
    }
}
