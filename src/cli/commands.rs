//! Runs a parsed command line: calls the library, formats what it returns for people (or JSON
//! for machines), and decides the exit code.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::{render, Cli, Command, EvaluateArgs, InspectArgs, Outcome, RunArgs};
use swa::onnx::bind::{BindReport, Binder};
use swa::onnx::bn;
use swa::{average, evaluate, inputs, parts, pipeline, recalibrate, report, soup, Error, Result};

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("serialisable") + "\n"
}

/// A part's result is partial: it is written for a merge, never as a model or metrics.
const SHARD_NEEDS_PARTIAL_OUT: &str =
    "--shard runs part of the samples: its result is partial, so it needs --partial-out (and a merge)";

/// Runs `cli`.
pub fn execute(cli: &Cli) -> Result<Outcome> {
    let q = cli.quiet;
    match &cli.command {
        Command::Average(a) => {
            let s = average::average(&a.options(q))?;
            for d in &s.duplicates {
                warn!(
                    "swa: warning: {} is {} under another name; it is averaged once",
                    d.path.display(),
                    d.same_as.display()
                );
            }
            Ok(Outcome { stdout: if a.json { json(&s) } else { render::average(&s) }, code: 0 })
        }
        Command::Recalibrate(a) => {
            if let Some(out) = &a.partial_out {
                let s = parts::stats::write(&a.partial_options(q, out)?)?;
                return Ok(Outcome { stdout: if a.json { json(&s) } else { render::partial_stats(&s) }, code: 0 });
            }
            if a.shard.is_some() {
                return Err(Error::usage(SHARD_NEEDS_PARTIAL_OUT));
            }
            let s = recalibrate::recalibrate(&a.options(q)?)?;
            Ok(Outcome { stdout: if a.json { json(&s) } else { render::recalibrate(&s) }, code: 0 })
        }
        Command::MergeStats(a) => {
            let s = parts::stats::merge_into_model(&a.options())?;
            Ok(Outcome { stdout: if a.json { json(&s) } else { render::recalibrate(&s) }, code: 0 })
        }
        Command::MergeEval(a) => {
            let eval: Vec<_> = a.partials.iter().map(|p| parts::eval::read(p)).collect::<Result<_>>()?;
            let (identity, m) = parts::eval::merge(&a.partials, &eval)?;
            Ok(metrics_outcome(&identity.model, &m, a.min_accuracy, a.json))
        }
        Command::Evaluate(a) => evaluate_command(a, q),
        Command::Run(a) => run_command(a, q),
        Command::Soup(a) => {
            let (s, warnings) = soup::soup(&a.options(q)?)?;
            for w in &warnings {
                warn!("swa: warning: {w}");
            }
            Ok(Outcome { stdout: if a.json { json(&s) } else { render::soup(&s) }, code: 0 })
        }
        Command::Inspect(a) => inspect(a),
        Command::Doctor(a) => Ok(super::doctor::run(a)),
    }
}

/// Appends `markdown` to the GitHub Actions job summary, when there is one: a regular file (or a
/// new one). Anything else is skipped: opening a FIFO without a reader would block forever.
fn step_summary(markdown: &str) {
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") {
        use std::io::Write as _;
        if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            return;
        }
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            let _ = writeln!(f, "{markdown}");
        }
    }
}

fn run_command(a: &RunArgs, quiet: bool) -> Result<Outcome> {
    if let Some(select) = a.soup.and(a.select_inputs.as_ref()) {
        if let Some(w) = soup::same_split_warning(select, &a.eval_inputs) {
            warn!("swa: warning: {w}");
        }
    }
    let (r, created) = pipeline::run(&a.options(quiet)?)?;
    for (model, n) in r.nonfinite() {
        warn_nonfinite(&model, n, r.eval_samples);
    }
    let gated = &r.swa_recalibrated;
    let code = a.min_accuracy.is_some_and(|m| gated.top1 < m || gated.nonfinite > 0) as u8;
    let mut stdout = if a.json { r.json() + "\n" } else { report::markdown(&r) };
    if !a.json {
        stdout.push('\n');
        render::created(&mut stdout, &created);
        let _ = writeln!(
            stdout,
            "wrote {}/{{swa.safetensors,model_swa.onnx,report.json,report.md,report.html}}",
            a.out.display()
        );
    }
    step_summary(&report::markdown(&r));
    if code == 1 {
        warn!("swa: {}", render::gate_failure(Some("recalibrated SWA"), gated.top1, gated.nonfinite, a.min_accuracy));
    }
    Ok(Outcome { stdout, code })
}

/// Says on stderr that `model` gave non-finite logits for `n` of `samples` samples.
fn warn_nonfinite(model: &str, n: usize, samples: usize) {
    warn!(
        "swa: warning: {model} gave non-finite logits (NaN or Inf) for {n} of {samples} samples; they count as wrong \
         predictions and are left out of the loss"
    );
}

fn evaluate_command(a: &EvaluateArgs, quiet: bool) -> Result<Outcome> {
    let opts = a.options(quiet)?;
    let weights = a.weights.as_deref().map(|w| inputs::open_checkpoint(w, a.key.as_deref())).transpose()?;
    let binder = Binder::load(&a.model)?;
    if let Some(out) = &a.partial_out {
        let identity = parts::Identity::of(binder.model(), weights.as_ref(), a.key.as_deref())?;
        let mut read: Vec<PathBuf> = binder.model().files().to_vec();
        read.extend(weights.iter().flat_map(|w| w.files()).map(PathBuf::from));
        read.push(a.inputs.clone());
        read.extend(a.labels.clone());
        let read: Vec<&std::path::Path> = read.iter().map(PathBuf::as_path).collect();
        let bound = binder.bind(weights, a.allow_missing_weights)?;
        let p = parts::eval::evaluate_part(&bound.model, identity, &opts, a.shard.unwrap_or(swa::part::Part::WHOLE))?;
        let created = parts::eval::write(&p, out, &read)?;
        let stdout = if a.json {
            json(&p)
        } else {
            let mut o = format!("part {}: {} samples from sample {}\n", p.shard, p.samples, p.first_sample);
            render::created(&mut o, &created);
            let _ = writeln!(o, "wrote {}", out.display());
            o
        };
        return Ok(Outcome { stdout, code: 0 });
    }
    if a.shard.is_some() {
        return Err(Error::usage(SHARD_NEEDS_PARTIAL_OUT));
    }
    let bound = binder.bind(weights, a.allow_missing_weights)?;
    let m = evaluate::evaluate(&bound.model, &opts)?;
    Ok(metrics_outcome(&a.model, &m, a.min_accuracy, a.json))
}

/// What `swa evaluate` and `swa merge-eval` print for `model`'s metrics, and their exit code.
fn metrics_outcome(
    model: &std::path::Path,
    m: &evaluate::Metrics,
    min_accuracy: Option<f64>,
    as_json: bool,
) -> Outcome {
    if m.nonfinite > 0 {
        warn_nonfinite(&model.display().to_string(), m.nonfinite, m.samples);
    }
    let code = min_accuracy.is_some_and(|min| !render::passes(m, min)) as u8;
    let md = render::metrics(model, m, min_accuracy);
    step_summary(&md);
    if code == 1 {
        warn!("swa: {}", render::gate_failure(None, m.top1, m.nonfinite, min_accuracy));
    }
    if as_json {
        let mut v = serde_json::to_value(m).expect("metrics");
        v[format!("top{}", m.k)] = m.topk.into();
        return Outcome { stdout: json(&v), code };
    }
    Outcome { stdout: md, code }
}

/// One tensor, as `inspect` lists it.
#[derive(Serialize)]
struct TensorInfo {
    bytes: usize,
    dtype: String,
    name: String,
    shape: Vec<usize>,
}

/// What `inspect` found (fields in the order of the JSON keys).
#[derive(Serialize)]
struct Inspection {
    batchnorm: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binding: Option<BindReport>,
    file: PathBuf,
    metadata: BTreeMap<String, String>,
    /// The epoch/step number discovery gives the file (what `--from/--to` compare).
    #[serde(skip_serializing_if = "Option::is_none")]
    number: Option<u64>,
    tensors: Vec<TensorInfo>,
    /// For a torch.save file: the state dicts it holds and its other top-level keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    torch: Option<swa::checkpoint::torch::Contents>,
}

fn inspection(a: &InspectArgs) -> Result<Inspection> {
    // An ONNX model lists its initializers as stored (before binding gives shared ones copies).
    let (ck, binder) = if a.file.extension().is_some_and(|e| e == "onnx") {
        let model = swa::onnx::Model::load(&a.file)?;
        (model.checkpoint()?, Some(Binder::new(model)))
    } else {
        (inputs::open_checkpoint(&a.file, a.key.as_deref())?, None)
    };
    let batchnorm = match &binder {
        Some(b) => bn::find(b.model())
            .map(|ls| {
                ls.into_iter().map(|l| format!("{} ({} channels, node {})", l.prefix, l.channels, l.name)).collect()
            })
            .unwrap_or_default(),
        None => ck
            .tensors()
            .iter()
            .filter_map(|t| t.name.strip_suffix(".running_mean").map(|p| format!("{p} ({} channels)", t.numel())))
            .collect(),
    };
    let binding = match (&a.against, &binder) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::usage("--against binds a checkpoint to an ONNX model: FILE must be .onnx"));
        }
        (Some(against), Some(b)) => Some(b.report(&inputs::open_checkpoint(against, a.key.as_deref())?)?),
    };
    let tensors = ck
        .tensors()
        .iter()
        .map(|t| TensorInfo {
            bytes: t.nbytes(),
            dtype: format!("{:?}", t.dtype),
            name: t.name.clone(),
            shape: t.shape.clone(),
        })
        .collect();
    let number = a.file.file_name().and_then(|n| inputs::name_number(&n.to_string_lossy()));
    let torch = inputs::torch_contents(&a.file)?;
    Ok(Inspection { batchnorm, binding, file: a.file.clone(), metadata: ck.metadata().clone(), number, tensors, torch })
}

fn inspect(a: &InspectArgs) -> Result<Outcome> {
    let v = inspection(a)?;
    if a.json {
        return Ok(Outcome { stdout: json(&v), code: 0 });
    }
    let mut o = String::new();
    let total: usize = v.tensors.iter().map(|t| t.bytes).sum();
    let _ = writeln!(o, "{}: {} tensors, {} bytes", a.file.display(), v.tensors.len(), total);
    if let Some(n) = v.number {
        let _ = writeln!(o, "number: {n} (from the name; what --from/--to/--last select by)");
    }
    if let Some(t) = &v.torch {
        let _ = writeln!(o, "torch.save file; state dicts (--key):");
        for (key, count) in &t.state_dicts {
            let chosen = if t.chosen.as_deref() == Some(key.as_str()) { "  <- read" } else { "" };
            let _ = writeln!(o, "  {:<40} {count} tensors{chosen}", if key.is_empty() { "(top level)" } else { key });
        }
        if !t.other_keys.is_empty() {
            let _ = writeln!(o, "other keys: {}", t.other_keys.join(", "));
        }
    }
    for t in &v.tensors {
        let _ = writeln!(o, "  {:<50} {:>5} {:<20} {:>12}", t.name, t.dtype, format!("{:?}", t.shape), t.bytes);
    }
    let _ = writeln!(o, "BatchNorm layers: {}", v.batchnorm.len());
    for l in &v.batchnorm {
        let _ = writeln!(o, "  {l}");
    }
    if let (Some(b), Some(against)) = (&v.binding, &a.against) {
        let _ = writeln!(
            o,
            "binding {}: {} bound, {} unmatched, {} integer tensors skipped, {} model weights unbound",
            against.display(),
            b.bound.len(),
            b.unmatched.len(),
            b.skipped.len(),
            b.unbound.len()
        );
        for (c, g) in b.bound.iter().filter(|(c, g)| c != g) {
            let _ = writeln!(o, "  {c} -> {g}");
        }
        for u in &b.unmatched {
            let _ = writeln!(o, "  unmatched: {u}");
        }
        for u in &b.unbound {
            let _ = writeln!(o, "  unbound: {u}");
        }
    }
    if !v.metadata.is_empty() {
        let _ = writeln!(o, "metadata:");
        for (k, val) in &v.metadata {
            let _ = writeln!(o, "  {k}: {val}");
        }
    }
    Ok(Outcome { stdout: o, code: 0 })
}
