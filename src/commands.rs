//! Runs a parsed command line: calls the library, formats what it returns for people (or JSON
//! for machines), and decides the exit code.

use std::fmt::Write;
use std::path::Path;

use crate::cli::{Cli, Command, EvaluateArgs, InspectArgs};
use crate::error::Result;
use crate::evaluate::Metrics;
use crate::onnx::{bind, bn, Model};
use crate::{average, checkpoint, evaluate, pipeline, recalibrate, report};

/// What a command produced: text for stdout and the exit code (0, or 1 for a failed threshold).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Text for stdout.
    pub stdout: String,
    /// Exit code.
    pub code: u8,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("serialisable") + "\n"
}

/// Runs `cli`.
pub fn execute(cli: &Cli) -> Result<Outcome> {
    let q = cli.quiet;
    match &cli.command {
        Command::Average(a) => {
            let s = average::average(&a.options(q))?;
            if a.json {
                return Ok(Outcome { stdout: json(&s), code: 0 });
            }
            let mut o = String::new();
            let _ = writeln!(o, "selected {} checkpoint(s):", s.inputs.len());
            for i in &s.inputs {
                let _ = writeln!(o, "  {}  weight {:.4}", i.path.display(), i.weight);
            }
            let _ = writeln!(
                o,
                "averaged {} of {} tensors ({}, n_models = {}); buffers: {} copied from {}, {} averaged",
                s.averaged,
                s.tensors,
                s.weighting,
                s.n_models,
                s.buffers.copied,
                s.buffers.copied_from.display(),
                s.buffers.averaged
            );
            let rate = (s.bytes_read as f64 / s.seconds.max(1e-9)) as u64;
            let _ = writeln!(
                o,
                "read {} in {:.2} s ({}/s)",
                indicatif::HumanBytes(s.bytes_read),
                s.seconds,
                indicatif::HumanBytes(rate)
            );
            for p in &s.outputs {
                let _ = writeln!(o, "wrote {}", p.display());
            }
            Ok(Outcome { stdout: o, code: 0 })
        }
        Command::Recalibrate(a) => {
            let s = recalibrate::recalibrate(&a.options(q))?;
            if a.json {
                return Ok(Outcome { stdout: json(&s), code: 0 });
            }
            let mut o = String::new();
            let _ = writeln!(o, "bound {} checkpoint tensors; {} matched nothing", s.bound, s.unmatched.len());
            let _ = writeln!(
                o,
                "{} BatchNorm layers, {} samples in {} batches of {} ({} statistics) on {}",
                s.layers.len(),
                s.samples,
                s.batches,
                s.batch_size,
                s.stats,
                s.device
            );
            let _ = writeln!(o, "{:<40} {:>8} {:>12} {:>10}", "layer", "channels", "mean shift", "var ratio");
            let _ = writeln!(o, "{:<40} {:>8} {:>12} {:>10}", "", "", "(max, in σ)", "(new/old)");
            for l in &s.layers {
                let _ = writeln!(o, "{:<40} {:>8} {:>12.4} {:>10.4}", l.prefix, l.channels, l.mean_shift, l.var_ratio);
            }
            let _ = match s.samples_per_second_after_first {
                Some(steady) => writeln!(
                    o,
                    "{:.0} samples/s ({steady:.0} after the first batch, which took {:.2} s)",
                    s.samples_per_second, s.seconds_first_batch
                ),
                None => writeln!(o, "{:.0} samples/s", s.samples_per_second),
            };
            for p in &s.outputs {
                let _ = writeln!(o, "wrote {}", p.display());
            }
            Ok(Outcome { stdout: o, code: 0 })
        }
        Command::Evaluate(a) => evaluate_command(a, q),
        Command::Run(a) => {
            let r = pipeline::run(&a.options(q))?;
            let code = a.min_accuracy.is_some_and(|m| r.swa_recalibrated.top1 < m) as u8;
            let mut stdout = if a.json { r.json() + "\n" } else { report::markdown(&r) };
            if !a.json {
                let _ = writeln!(
                    stdout,
                    "\nwrote {}/{{swa.safetensors,model_swa.onnx,report.json,report.md,report.html}}",
                    a.out.display()
                );
            }
            step_summary(&report::markdown(&r));
            if code == 1 {
                eprintln!(
                    "swa: recalibrated SWA top-1 {:.4} is below --min-accuracy {}",
                    r.swa_recalibrated.top1,
                    a.min_accuracy.unwrap_or_default()
                );
            }
            Ok(Outcome { stdout, code })
        }
        Command::Inspect(a) => inspect(a),
    }
}

fn step_summary(markdown: &str) {
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            let _ = writeln!(f, "{markdown}");
        }
    }
}

fn evaluate_command(a: &EvaluateArgs, quiet: bool) -> Result<Outcome> {
    let mut model = Model::load(&a.model)?;
    if let Some(w) = &a.weights {
        let ck = checkpoint::Checkpoint::open(w)?;
        bind::bind(&mut model, &ck, a.allow_partial)?;
    }
    let m = evaluate::evaluate(&model, &a.options(quiet))?;
    let code = a.min_accuracy.is_some_and(|min| m.top1 < min) as u8;
    let md = metrics_markdown(&a.model, &m, a.min_accuracy);
    step_summary(&md);
    if code == 1 {
        eprintln!("swa: top-1 {:.4} is below --min-accuracy {}", m.top1, a.min_accuracy.unwrap_or_default());
    }
    if a.json {
        let mut v = serde_json::to_value(&m).expect("metrics");
        v[format!("top{}", m.k)] = m.topk.into();
        return Ok(Outcome { stdout: json(&v), code });
    }
    Ok(Outcome { stdout: md, code })
}

fn metrics_markdown(model: &Path, m: &Metrics, min: Option<f64>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "| model | samples | top-1 | top-{} | loss |", m.k);
    let _ = writeln!(o, "|---|---:|---:|---:|---:|");
    let _ = writeln!(
        o,
        "| {} | {} | {:.2}% | {:.2}% | {:.4} |",
        model.display(),
        m.samples,
        m.top1 * 100.0,
        m.topk * 100.0,
        m.loss
    );
    if let Some(min) = min {
        let _ = writeln!(
            o,
            "\nthreshold: top-1 ≥ {:.2}% — {}",
            min * 100.0,
            if m.top1 >= min { "passed" } else { "FAILED" }
        );
    }
    o
}

fn inspect(a: &InspectArgs) -> Result<Outcome> {
    let is_onnx = a.file.extension().is_some_and(|e| e == "onnx");
    let mut model = if is_onnx { Some(Model::load(&a.file)?) } else { None };
    let ck = match &model {
        Some(m) => m.checkpoint()?,
        None => checkpoint::Checkpoint::open(&a.file)?,
    };
    let mut v = serde_json::json!({
        "file": a.file,
        "tensors": ck.tensors().iter().map(|t| serde_json::json!({"name": t.name, "dtype": format!("{:?}", t.dtype), "shape": t.shape, "bytes": t.nbytes()})).collect::<Vec<_>>(),
        "metadata": ck.metadata(),
    });
    let bn_layers: Vec<String> = match &model {
        Some(m) => bn::find(&{
            let mut m = m.clone();
            bind::unshare(&mut m);
            m
        })
        .map(|ls| ls.into_iter().map(|l| format!("{} ({} channels, node {})", l.prefix, l.channels, l.name)).collect())
        .unwrap_or_default(),
        None => ck
            .tensors()
            .iter()
            .filter_map(|t| t.name.strip_suffix(".running_mean").map(|p| format!("{p} ({} channels)", t.numel())))
            .collect(),
    };
    v["batchnorm"] = serde_json::json!(bn_layers);
    if let Some(against) = &a.against {
        let Some(m) = model.as_mut() else {
            return Err(crate::Error::usage("--against binds a checkpoint to an ONNX model: FILE must be .onnx"));
        };
        let other = checkpoint::Checkpoint::open(against)?;
        v["binding"] = serde_json::to_value(bind::bind(m, &other, true)?).expect("report");
    }
    if a.json {
        return Ok(Outcome { stdout: json(&v), code: 0 });
    }
    let mut o = String::new();
    let total: usize = ck.tensors().iter().map(|t| t.nbytes()).sum();
    let _ = writeln!(o, "{}: {} tensors, {} bytes", a.file.display(), ck.tensors().len(), total);
    for t in ck.tensors() {
        let _ = writeln!(
            o,
            "  {:<50} {:>5} {:<20} {:>12}",
            t.name,
            format!("{:?}", t.dtype),
            format!("{:?}", t.shape),
            t.nbytes()
        );
    }
    let _ = writeln!(o, "BatchNorm layers: {}", bn_layers.len());
    for l in &bn_layers {
        let _ = writeln!(o, "  {l}");
    }
    if let Some(b) = v.get("binding") {
        let b: bind::BindReport = serde_json::from_value(b.clone()).unwrap_or_default();
        let _ = writeln!(
            o,
            "binding {}: {} bound, {} unmatched, {} integer tensors skipped, {} model weights unbound",
            a.against.as_ref().unwrap().display(),
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
    if !a.json && !ck.metadata().is_empty() {
        let _ = writeln!(o, "metadata:");
        for (k, val) in ck.metadata() {
            let _ = writeln!(o, "  {k}: {val}");
        }
    }
    Ok(Outcome { stdout: o, code: 0 })
}
