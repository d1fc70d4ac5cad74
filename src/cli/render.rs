//! Text for people: errors with the flags that fix them, and the summaries of each command.

use std::fmt::Write;
use std::path::Path;

use swa::average::AverageSummary;
use swa::error::chain;
use swa::error::CropAlternative;
use swa::evaluate::{Evaluation, Score, Task};
use swa::parts::stats::PartialStatsSummary;
use swa::recalibrate::RecalibrateSummary;
use swa::soup::SoupSummary;
use swa::tasks::{Gate, Verdict};
use swa::{Error, Hint, Setting};

/// The flag that sets `setting`.
pub fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::Range => "--from/--to",
        Setting::Every => "--every",
        Setting::Last => "--last",
        Setting::Weights => "--weights",
        Setting::Ema => "--ema",
        Setting::Resume => "--resume",
        Setting::ShardSize => "--shard-size",
        Setting::BatchSize => "--batch-size",
        Setting::Stats => "--stats",
        Setting::Device => "--device",
        Setting::Streams => "--streams",
        Setting::Tf32 => "--tf32",
        Setting::Out => "--out",
        Setting::Shard => "--shard",
        Setting::Part => "--part",
        Setting::Shuffle => "--shuffle",
        Setting::Samples => "--swag-samples",
        Setting::Rank => "--rank",
        Setting::Scale => "--scale",
        Setting::Temperature => "--temperature",
        Setting::Dtype => "--dtype",
        _ => "an option",
    }
}

/// The advice of `hint`, in flags.
pub fn hint(hint: Hint) -> String {
    match hint {
        Hint::AllowNonfinite => "; pass --allow-nonfinite to average anyway".into(),
        Hint::AllowMissingWeights => " Pass --allow-missing-weights to keep the model's own values for them".into(),
        Hint::LayoutMap => ". Bind the checkpoint the model was exported from first (`swa inspect MODEL.onnx --against \
                            CHECKPOINT` keeps the map beside the model), or export the model from this one"
            .into(),
        Hint::LessMemory { streams } if streams > 1 => format!(
            " (each of the {streams} streams holds its own activations: try --streams 1, or a smaller --batch-size)"
        ),
        Hint::LessMemory { .. } => " (try a smaller --batch-size)".into(),
        Hint::SmallerBatch { capped } => {
            format!("{}: lower --batch-size or give more samples", if capped { " (after --max-samples)" } else { "" })
        }
        Hint::Force => ": pass --force to replace it".into(),
        Hint::NeverReplaced => ": it is not replaced, even with --force; choose another --out".into(),
        Hint::FixedBatch { size, evaluation: true } => format!(
            ": pass --batch-size {size} (with `swa run` or `swa soup`: --eval-batch-size {size}), or export the model with a \
             dynamic batch dimension"
        ),
        Hint::FixedBatch { size, evaluation: false } => {
            format!(": pass --batch-size {size}, or export the model with a dynamic batch dimension")
        }
        Hint::SkipBadImages => " (pass --skip-bad-images to skip and count such images)".into(),
        Hint::CenterCrop { height, width, or } => {
            let size = if height == width { height.to_string() } else { format!("{height},{width}") };
            let or = match or {
                CropAlternative::Preset => "--preset imagenet",
                CropAlternative::ExactResize => "--resize H,W",
            };
            format!(": pass --center-crop {size} (with --resize N to resize first), or {or}")
        }
        Hint::ImageArray => {
            " (a uint8 array of images (N, H, W, C) is read as images with --mean/--std, --center-crop or --preset)"
                .into()
        }
        Hint::ImageColumn => ": name the image column with --image-column".into(),
        Hint::StripPrefix => "; `swa average ... --strip-prefix PREFIX` writes the names the model has".into(),
        Hint::LabelColumn => " (with --label-column NAME)".into(),
        Hint::MetricCommand => " (pass --metric-command with that command to run it)".into(),
        Hint::MaxImagePixels => " (raise the limit with --max-image-pixels N to read it)".into(),
        Hint::BatchOfOne { own_batches: true, .. } => "; update_bn fails the same way: leave out a last batch of one \
             sample (a DataLoader's drop_last=True), or use --stats precise"
            .into(),
        Hint::BatchOfOne { samples, .. } => format!(
            "; update_bn fails the same way: {}choose a --batch-size that leaves no batch of one, or use --stats precise",
            samples.map_or(String::new(), |n| format!("leave one sample out (--max-samples {}), ", n.saturating_sub(1)))
        ),
        other => other.library_text(),
    }
}

/// An error and its sources on one line, settings named by their flags.
pub fn error(e: &Error) -> String {
    match e {
        Error::Setting { setting, message } => format!("{} {message}", flag(*setting)),
        Error::Hinted { error: inner, hint: h } => format!("{}{}", error(inner), hint(*h)),
        other => chain(other),
    }
}

/// What `swa average` did.
pub fn average(s: &AverageSummary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "selected {} checkpoint(s):", s.inputs.len());
    for i in &s.inputs {
        let number = i.number.map(|n| format!(" (number {n})")).unwrap_or_default();
        let _ = writeln!(o, "  {}{number}  weight {:.4}", i.path.display(), i.weight);
    }
    if let Some(prefix) = &s.stripped_prefix {
        let _ = writeln!(o, "removed the prefix `{prefix}` from every tensor name");
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
    if let Some(first) = s.buffers.copied_fp8.first() {
        let _ = writeln!(
            o,
            "warning: {} FP8 tensor(s) (first: {first}) were copied from {}, not averaged: FP8 values are scaled \
             by separate tensors, so averaging the stored values would not average the weights",
            s.buffers.copied_fp8.len(),
            s.buffers.copied_from.display()
        );
    }
    let rate = (s.bytes_read as f64 / s.seconds.max(1e-9)) as u64;
    let _ = writeln!(
        o,
        "read {} in {:.2} s ({}/s)",
        indicatif::HumanBytes(s.bytes_read),
        s.seconds,
        indicatif::HumanBytes(rate)
    );
    wrote(&mut o, &s.created_dirs, &s.outputs);
    o
}

/// The directories created for the outputs, then the outputs.
fn wrote(o: &mut String, created_dirs: &[std::path::PathBuf], outputs: &[std::path::PathBuf]) {
    created(o, created_dirs);
    for p in outputs {
        let _ = writeln!(o, "wrote {}", p.display());
    }
}

/// `created directory out/`, one line per directory created for the outputs, parents first.
pub fn created(o: &mut String, dirs: &[std::path::PathBuf]) {
    for d in dirs {
        let _ = writeln!(o, "created directory {}/", d.display());
    }
}

/// What `swa recalibrate` did: the binding, the pass, and how each layer's statistics moved.
pub fn recalibrate(s: &RecalibrateSummary) -> String {
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
    data_lines(&mut o, s.preprocessing.as_deref(), &s.skipped);
    let _ = writeln!(o, "{:<40} {:>8} {:>12} {:>10}", "layer", "channels", "mean shift", "var ratio");
    let _ = writeln!(o, "{:<40} {:>8} {:>12} {:>10}", "", "", "(max, in σ)", "(new/old)");
    for l in &s.layers {
        let _ = writeln!(o, "{:<40} {:>8} {:>12.4} {:>10.4}", l.prefix, l.channels, l.mean_shift, l.var_ratio);
    }
    let _ = match s.samples_per_second_after_first {
        // Merged partial statistics: the parts ran the pass.
        _ if s.seconds == 0.0 => Ok(()),
        Some(steady) => writeln!(
            o,
            "{:.0} samples/s ({steady:.0} after the first batch, which took {:.2} s)",
            s.samples_per_second, s.seconds_first_batch
        ),
        None => writeln!(o, "{:.0} samples/s", s.samples_per_second),
    };
    wrote(&mut o, &s.created_dirs, &s.outputs);
    o
}

/// What one part of a recalibration pass (`--partial-out`) wrote.
pub fn partial_stats(s: &PartialStatsSummary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "part {}: {} BatchNorm layers, {} of {} samples in {} batches ({} statistics), {:.0} samples/s",
        s.shard, s.layers, s.samples, s.total_samples, s.batches, s.stats, s.samples_per_second
    );
    wrote(&mut o, &s.created_dirs, std::slice::from_ref(&s.output));
    o
}

/// Which preprocessing ran, and the images skipped (named, at most 10).
fn data_lines(o: &mut String, preprocessing: Option<&str>, skipped: &[String]) {
    if let Some(p) = preprocessing {
        let _ = writeln!(o, "samples: {p}");
    }
    if !skipped.is_empty() {
        let n = skipped.len();
        let _ = writeln!(o, "skipped {n} image{} that could not be decoded:", if n == 1 { "" } else { "s" });
        for s in skipped.iter().take(10) {
            let _ = writeln!(o, "  {s}");
        }
        if skipped.len() > 10 {
            let _ = writeln!(o, "  ... and {} more", skipped.len() - 10);
        }
    }
}

/// One model's figures as a Markdown table, with the gates' verdicts.
pub fn metrics(model: &Path, e: &Evaluation, gates: &[Gate]) -> String {
    let (task, score) = (e.metrics.task(), e.score());
    let columns = task.columns();
    let mut o = String::new();
    let headers: Vec<&str> = columns.iter().map(|c| c.header.as_str()).collect();
    let _ = writeln!(o, "| model | samples | {} |", headers.join(" | "));
    let _ = writeln!(o, "|---|---:|{}", "---:|".repeat(columns.len()));
    let cells: Vec<String> = score.cells().into_iter().map(Option::unwrap_or_default).collect();
    if let Some(t) = &e.temperature {
        let before: Vec<String> = t.before.cells().into_iter().map(Option::unwrap_or_default).collect();
        let _ = writeln!(o, "| {} | {} | {} |", model.display(), t.before.samples(), before.join(" | "));
        let _ = writeln!(
            o,
            "| {}, temperature {:.4} | {} | {} |",
            model.display(),
            t.value,
            score.samples(),
            cells.join(" | ")
        );
        if let Some(f) = &t.fit {
            let _ = writeln!(
                o,
                "\nTemperature {:.6} fitted on {} calibration samples in {} Newton steps: NLL {:.4} → {:.4}, ECE {:.4} → {:.4}.",
                f.temperature, f.samples, f.iterations, f.nll_before, f.nll_after, f.ece_before, f.ece_after
            );
        }
    } else {
        let _ = writeln!(o, "| {} | {} | {} |", model.display(), score.samples(), cells.join(" | "));
    }
    if score.nonfinite() > 0 {
        let _ = writeln!(
            o,
            "\n**{} of {} samples gave non-finite outputs (NaN or Inf)**: {}.",
            score.nonfinite(),
            score.samples(),
            nonfinite_rule(&task)
        );
    }
    details(&mut o, e);
    if e.preprocessing.is_some() || !e.skipped.is_empty() {
        o.push('\n');
        data_lines(&mut o, e.preprocessing.as_deref(), &e.skipped);
    }
    if !gates.is_empty() {
        o.push('\n');
        for v in verdicts(&score, gates) {
            let verdict = if v.passed { "passed" } else { "FAILED" };
            let finite = if score.nonfinite() > 0 { ", all outputs finite" } else { "" };
            let op = if v.gate.at_least { "≥" } else { "≤" };
            let _ = writeln!(o, "gate: {} {op} {} ({:.4}){finite} — {verdict}", v.gate.figure, v.gate.bound, v.value);
        }
    }
    o
}

/// What happens to samples with non-finite outputs, per task.
pub fn nonfinite_rule(task: &Task) -> &'static str {
    match task {
        Task::Classification(_) => "counted as wrong, left out of the loss",
        Task::Segmentation(_) => "their non-finite pixels are left out of the confusion matrix",
        _ => "left out of the figures",
    }
}

/// The per-class (or per-output, per-label) figures under the table, for the tasks that have them.
fn details(o: &mut String, e: &Evaluation) {
    use swa::tasks::Metrics;
    let named = |class: usize, name: &Option<String>| match name {
        Some(n) => format!("{class} ({n})"),
        None => class.to_string(),
    };
    match &e.metrics {
        Metrics::Segmentation(m) => {
            let _ = writeln!(o, "\n| class | pixels | IoU |\n|---|---:|---:|");
            for c in &m.per_class {
                let _ = writeln!(o, "| {} | {} | {} |", named(c.class, &c.name), c.pixels, swa::tasks::pct(c.iou));
            }
            let _ = writeln!(o, "\n{} pixels counted, {} ignored", m.pixels, m.ignored);
        }
        Metrics::Multilabel(m) => {
            let _ = writeln!(o, "\n| label | positives | AP | F1 |\n|---|---:|---:|---:|");
            for l in &m.per_label {
                let _ = writeln!(o, "| {} | {} | {:.4} | {:.4} |", l.label, l.positives, l.ap, l.f1);
            }
            if m.sigmoid {
                let _ = writeln!(o, "\nthe outputs are logits: a sigmoid made them probabilities");
            }
        }
        Metrics::Regression(m) if !m.per_output.is_empty() => {
            let _ = writeln!(o, "\n| output | MSE | MAE | R² |\n|---|---:|---:|---:|");
            for p in &m.per_output {
                let _ = writeln!(o, "| {} | {:.4} | {:.4} | {:.4} |", p.output, p.mse, p.mae, p.r2);
            }
        }
        Metrics::Command(m) => {
            let _ = writeln!(o, "\n{}", m.describe());
        }
        _ => {}
    }
}

/// Each gate's verdict on `s`.
pub fn verdicts(s: &Score, gates: &[Gate]) -> Vec<Verdict> {
    gates.iter().map(|g| g.verdict(s)).collect()
}

/// Whether every gate passes.
pub fn passes(s: &Score, gates: &[Gate]) -> bool {
    verdicts(s, gates).iter().all(|v| v.passed)
}

/// Why `model` (`None` for the one model of `swa evaluate`) failed its gates; `min_accuracy` is
/// the bound of `--min-accuracy`, which is said in its own words.
pub fn gate_failure(model: Option<&str>, s: &Score, gates: &[Gate], min_accuracy: Option<f64>) -> String {
    let subject = model.map_or(String::new(), |m| format!("{m} "));
    let task = s.task();
    let outputs = if matches!(task, Task::Classification(_)) { "logits" } else { "outputs" };
    let failed: Vec<String> = verdicts(s, gates)
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.passed)
        .map(|(i, v)| {
            let (flag, name) = match min_accuracy {
                Some(min) if i == 0 => (format!("--min-accuracy {min}"), "top-1".to_string()),
                _ => (format!("--gate {}", v.gate), v.gate.figure.clone()),
            };
            if s.nonfinite() > 0 {
                format!(
                    "fails {flag} whatever its {name} ({:.4}): {} samples gave non-finite {outputs} (NaN or Inf)",
                    v.value,
                    s.nonfinite()
                )
            } else if v.value.is_nan() {
                format!("fails {flag}: its {name} is NaN")
            } else {
                format!("{name} {:.4} is {} {flag}", v.value, if v.gate.at_least { "below" } else { "above" })
            }
        })
        .collect();
    format!("{subject}{}", failed.join("; "))
}

/// What `swa soup` did: every candidate tried, in order, and the soup against the best single one.
pub fn soup(s: &SoupSummary) -> String {
    let mut o = String::new();
    let recal = match &s.stats {
        Some(stats) => format!("BatchNorm recalibrated for each ({stats} statistics)"),
        None => "stored statistics averaged, not recalibrated".to_string(),
    };
    let _ = writeln!(o, "{} soup of {} candidate(s), {recal}", s.method, s.candidates.len());
    let _ =
        writeln!(o, "{:<36} {:>24} {:>24}  kept", "candidate (best alone first)", "select alone", "select in the soup");
    for c in &s.candidates {
        let alone = c.select_alone.brief();
        let soup = c.select_in_soup.as_ref().map_or("–".to_string(), Score::brief);
        let _ = writeln!(o, "{:<36} {alone:>24} {soup:>24}  {}", c.name, if c.kept { "✓" } else { "" });
    }
    let _ = writeln!(o, "ingredients ({}): {}", s.n_models, s.ingredients.join(", "));
    let _ = writeln!(o, "soup, select split: {}", s.select.describe());
    let _ = writeln!(o, "best single ({}), select split: {}", s.best_single.name, s.best_single.select.describe());
    if let (Some(e), Some(b)) = (&s.eval, &s.best_single.eval) {
        let _ = writeln!(o, "soup, test split: {}", e.describe());
        let _ = writeln!(
            o,
            "best single, test split: {}  (soup {})",
            b.describe(),
            b.task().format_gain(e.value() - b.value())
        );
    }
    if let Some(t) = &s.temperature {
        let _ = write!(o, "temperature {:.6}", t.value);
        if let Some(f) = &t.fit {
            let _ = write!(
                o,
                ", fitted on {} samples: NLL {:.4} → {:.4}, ECE {:.4} → {:.4}",
                f.samples, f.nll_before, f.nll_after, f.ece_before, f.ece_after
            );
        }
        o.push('\n');
        if let Some(e) = &t.eval {
            let _ = writeln!(o, "soup with the temperature, test split: {}", e.describe());
        }
    }
    wrote(&mut o, &s.created_dirs, &s.outputs);
    o
}

/// `swa ensemble`: each member alone, then the ensemble.
pub fn ensemble(s: &swa::ensemble::EnsembleSummary) -> String {
    let mut o = String::new();
    let recalibrated = s.recalibrated.is_some();
    let _ = writeln!(
        o,
        "{:<36} {:>28} {:>28}",
        "member",
        "stored statistics",
        if recalibrated { "recalibrated" } else { "" }
    );
    for m in &s.members {
        let r = m.recalibrated.as_ref().map_or(String::new(), Score::brief);
        let _ = writeln!(o, "{:<36} {:>28} {r:>28}", m.name, m.stored.brief());
    }
    let _ = writeln!(o, "ensemble of {} ({}):", s.members.len(), s.prediction);
    let _ = writeln!(o, "  stored statistics:       {}", s.stored.score().describe());
    if let Some(r) = &s.recalibrated {
        let _ = writeln!(o, "  recalibrated statistics: {}", r.score().describe());
    }
    let _ = writeln!(o, "{} passes over the data in {:.1} s", s.passes, s.seconds);
    o
}

/// `swa swag`: the moments, each sample alone, and the model average (or the part written).
pub fn swag(s: &swa::swag::SwagSummary) -> String {
    let mut o = String::new();
    let kind = if s.rank == 0 { "SWAG-diagonal".to_string() } else { format!("SWAG of rank {}", s.rank) };
    let _ = writeln!(
        o,
        "{kind} over {} checkpoints ({} parameters, scale {}), moments in {:.1} s",
        s.models, s.parameters, s.scale, s.seconds_moments
    );
    if !s.constant.is_empty() {
        let _ = writeln!(
            o,
            "{} tensors never changed across the checkpoints (their samples are the mean): {}",
            s.constant.len(),
            s.constant.join(", ")
        );
    }
    for d in &s.drawn {
        let _ = writeln!(o, "sample {:>3}: {}", d.sample, d.score.brief());
    }
    match &s.evaluation {
        Some(e) => {
            let _ = writeln!(o, "model average of {} samples: {}", s.samples, e.score().describe());
        }
        None => {
            let _ =
                writeln!(o, "{} of {} samples drawn: merge the parts with swa merge-eval", s.drawn.len(), s.samples);
        }
    }
    let _ = writeln!(
        o,
        "{} passes over the data in {:.1} s ({:.1} s in the passes, {:.1} s drawing and binding the samples, {:.1} s \
         taking the moments)",
        s.passes, s.seconds, s.seconds_passes, s.seconds_sampling, s.seconds_moments
    );
    wrote(&mut o, &[], &s.outputs);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_errors_say_what_to_lower() {
        let oom = || Error::Runtime("CUDA failure 2: out of memory ; GPU=0".into());
        let two = error(&oom().hint(Hint::LessMemory { streams: 2 }));
        assert!(two.ends_with(
            "(each of the 2 streams holds its own activations: try --streams 1, or a smaller --batch-size)"
        ));
        assert!(error(&oom().hint(Hint::LessMemory { streams: 1 })).ends_with("(try a smaller --batch-size)"));
    }

    #[test]
    fn settings_are_named_by_their_flags_and_sources_follow() {
        let e = Error::setting(Setting::Weights, "sum to zero");
        assert_eq!(error(&e), "--weights sum to zero");
        assert_eq!(e.to_string(), "`weights` sum to zero");
        let io = Error::io("x.npy", std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
        assert_eq!(error(&io), "x.npy: gone");
        let hinted = Error::tensor("a.safetensors", "w", "holds a non-finite value").hint(Hint::AllowNonfinite);
        assert_eq!(
            error(&hinted),
            "a.safetensors: tensor `w`: holds a non-finite value; pass --allow-nonfinite to average anyway"
        );
        assert!(!hinted.to_string().contains("--"), "the library names no flag: {hinted}");
    }
}
