//! What several commands print the same way: JSON, the GitHub job summary, the accuracy gate.

use std::path::Path;

use serde::Serialize;

use super::{render, Outcome};
use swa::evaluate::Evaluation;

/// `v` as pretty JSON, with a final newline.
pub fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("serialisable") + "\n"
}

/// Appends `markdown` to the GitHub Actions job summary, when there is one: a regular file (or a
/// new one). Anything else is skipped: opening a FIFO without a reader would block forever.
pub fn step_summary(markdown: &str) {
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

/// Says on stderr that `model` gave non-finite logits for `n` of `samples` samples.
pub fn warn_nonfinite(model: &str, n: usize, samples: usize, task: &swa::evaluate::Task) {
    let rule = match task {
        swa::evaluate::Task::Classification(_) => {
            "they count as wrong predictions and are left out of the loss".to_string()
        }
        other => format!("{} (any gate fails)", render::nonfinite_rule(other)),
    };
    let what = if matches!(task, swa::evaluate::Task::Classification(_)) { "logits" } else { "outputs" };
    swa::error::warn(format!("{model} gave non-finite {what} (NaN or Inf) for {n} of {samples} samples; {rule}"));
}

/// What `swa evaluate` and `swa merge-eval` print for `model`'s evaluation, and their exit code.
pub fn metrics(
    model: &Path,
    e: &Evaluation,
    gates: &[swa::tasks::Gate],
    min_accuracy: Option<f64>,
    as_json: bool,
) -> swa::Result<Outcome> {
    let score = e.score();
    check_gates(&score, gates)?;
    if score.nonfinite() > 0 {
        warn_nonfinite(&model.display().to_string(), score.nonfinite(), score.samples(), &e.metrics.task());
    }
    let code = !render::passes(&score, gates) as u8;
    let md = render::metrics(model, e, gates);
    step_summary(&md);
    let failure = (code == 1).then(|| render::gate_failure(None, &score, gates, min_accuracy));
    if as_json {
        let mut v = serde_json::to_value(e).expect("metrics");
        for (key, value) in e.metrics.json_extras() {
            v[key] = value;
        }
        return Ok(Outcome { stdout: json(&v), code, failure });
    }
    Ok(Outcome { stdout: md, code, failure })
}

/// Fails when a gate names a figure the score lacks (a metric command did not print it).
pub fn check_gates(score: &swa::evaluate::Score, gates: &[swa::tasks::Gate]) -> swa::Result<()> {
    match gates.iter().find_map(|g| g.unknown_in(score).map(|why| format!("--gate {g}: {why}"))) {
        Some(why) => Err(swa::Error::usage(why)),
        None => Ok(()),
    }
}
