//! The report of `swa run`: one serde structure, rendered as JSON, Markdown and a self-contained
//! HTML page with an SVG chart.

mod html;
mod markdown;
pub mod table;

use serde::{Deserialize, Serialize};

pub use html::html;
pub use markdown::markdown;

use crate::tasks::{Best, Gain, Score, Task};

/// One checkpoint's row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointRow {
    /// File name, or the end of its path where checkpoints share a file name
    /// (`checkpoint-2/model.safetensors`): distinct for every row.
    pub name: String,
    /// Epoch / step number from the name.
    pub number: Option<u64>,
    /// With the statistics stored in the checkpoint.
    pub stored: Score,
    /// With recalibrated statistics (`--recalibrate-each`).
    pub recalibrated: Option<Score>,
}

/// Time spent in a stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Timing {
    /// Stage.
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
}

/// Everything `swa run` found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Tool and version.
    pub tool: String,
    /// The ONNX model.
    pub model: String,
    /// Training samples used for recalibration.
    pub train_samples: usize,
    /// Held-out samples.
    pub eval_samples: usize,
    /// Statistics mode.
    pub stats: String,
    /// Recalibration batch size.
    pub batch_size: usize,
    /// The task the models were scored by, with its settings (classification: `k`).
    #[serde(flatten)]
    pub task: Task,
    /// Where it ran.
    pub device: String,
    /// Every evaluated checkpoint, in order.
    pub checkpoints: Vec<CheckpointRow>,
    /// Names of the checkpoints in the average.
    pub averaged: Vec<String>,
    /// SWA with the newest checkpoint's statistics.
    pub swa_stored: Score,
    /// SWA after recalibration.
    pub swa_recalibrated: Score,
    /// The best single checkpoint (by the task's score, over both columns).
    pub best: BestCheckpoint,
    /// The recalibrated SWA model's score minus the best checkpoint's (`gain_top1`).
    #[serde(flatten)]
    pub gain: Gain,
    /// Time per stage.
    pub timings: Vec<Timing>,
    /// The model soup made beside SWA (`swa run --soup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soup: Option<SoupReport>,
    /// How images were read and preprocessed, per set (`training: image folder …`), and the
    /// images skipped; empty when every set was float arrays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<String>,
    /// Weight space against prediction space (`swa run --ensemble`, `--swag`, `--temperature`):
    /// every model scored on the held-out set, with what it cost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparison: Vec<Compared>,
    /// The temperature fitted for the recalibrated SWA model (`swa run --temperature fit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<crate::tasks::temperature::Fit>,
}

/// One model of the comparison: its figures and its cost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Compared {
    /// What it is (`SWA, recalibrated`, `ensemble of 8, recalibrated`, `SWAG, 30 samples`).
    pub name: String,
    /// Its figures on the held-out set.
    pub score: Score,
    /// Passes over data it took: evaluations and recalibrations (shared passes counted where
    /// they were run).
    pub passes: usize,
    /// Seconds it took, beyond the passes it shares with rows above it (`None`: not timed apart).
    pub seconds: Option<f64>,
    /// Models to run at deployment for one prediction.
    pub models: usize,
}

/// A model soup in the report: how its ingredients were chosen on the select split, and its
/// figures on the held-out set of the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SoupReport {
    /// `greedy`, `uniform` or `top-k:K`.
    pub method: String,
    /// Whether each candidate and soup was judged with recalibrated BatchNorm statistics.
    pub recalibrated: bool,
    /// Ingredients, in the order added.
    pub ingredients: Vec<String>,
    /// Every candidate in the order tried: alone and in the soup, on the select split.
    pub candidates: Vec<SoupStep>,
    /// The soup on the select split.
    pub select: Score,
    /// The soup on the report's held-out set.
    pub eval: Score,
}

/// One candidate of a soup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SoupStep {
    /// Checkpoint name (as in the report's rows).
    pub name: String,
    /// Select top-1 alone.
    pub select_alone: f64,
    /// Select top-1 of the soup with it added (greedy; none for the first ingredient).
    pub select_in_soup: Option<f64>,
    /// Whether it is an ingredient.
    pub kept: bool,
}

/// The best single checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BestCheckpoint {
    /// File name.
    pub name: String,
    /// `stored` or `recalibrated`.
    pub statistics: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Best,
}

impl Report {
    /// The best checkpoint by the task's score (first on ties), over stored and recalibrated
    /// statistics; `None` without checkpoints.
    pub fn best_of(rows: &[CheckpointRow]) -> Option<BestCheckpoint> {
        let mut best: Option<(f64, BestCheckpoint)> = None;
        for r in rows {
            for (kind, s) in [("stored", Some(&r.stored)), ("recalibrated", r.recalibrated.as_ref())] {
                if let Some(s) = s.filter(|s| best.as_ref().is_none_or(|(b, _)| s.value() > *b)) {
                    let figures = s.best();
                    best = Some((s.value(), BestCheckpoint { name: r.name.clone(), statistics: kind.into(), figures }));
                }
            }
        }
        best.map(|(_, b)| b)
    }

    /// Every model the report scored on the held-out set, by name, in the order of its tables:
    /// each checkpoint (stored statistics, and recalibrated as "++"), SWA, the soup.
    pub fn scored_models(&self) -> Vec<(String, &Score)> {
        let mut out = Vec::new();
        for r in &self.checkpoints {
            out.push((r.name.clone(), &r.stored));
            if let Some(s) = &r.recalibrated {
                out.push((format!("{} ++", r.name), s));
            }
        }
        out.push(("SWA".into(), &self.swa_stored));
        out.push(("SWA ++".into(), &self.swa_recalibrated));
        if let Some(soup) = &self.soup {
            out.push((format!("{} soup", soup.method), &soup.eval));
        }
        // The comparison's own models (its SWA, best-checkpoint and soup rows are listed above).
        let listed = |name: &str| {
            name.starts_with("best checkpoint")
                || name == "SWA, newest checkpoint's statistics"
                || name == "SWA, recalibrated"
                || self.soup.as_ref().is_some_and(|s| name.starts_with(&format!("{} soup", s.method)))
        };
        out.extend(self.comparison.iter().filter(|c| !listed(&c.name)).map(|c| (short_label(&c.name), &c.score)));
        out
    }

    /// Every model that gave non-finite logits, and for how many samples (`++`: recalibrated).
    pub fn nonfinite(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for r in &self.checkpoints {
            out.push((r.name.clone(), r.stored.nonfinite()));
            if let Some(s) = &r.recalibrated {
                out.push((format!("{} ++", r.name), s.nonfinite()));
            }
        }
        out.push(("SWA".into(), self.swa_stored.nonfinite()));
        out.push(("SWA ++".into(), self.swa_recalibrated.nonfinite()));
        out.retain(|(_, n)| *n > 0);
        out
    }

    /// A sentence naming the models with non-finite logits, if there are any.
    pub(crate) fn nonfinite_warning(&self) -> Option<String> {
        let bad = self.nonfinite();
        if bad.is_empty() {
            return None;
        }
        let list: Vec<String> = bad.iter().map(|(m, n)| format!("{m} ({n} of {})", self.eval_samples)).collect();
        Some(format!(
            "Non-finite logits (NaN or Inf), counted as wrong predictions and left out of the loss: {}.",
            list.join(", ")
        ))
    }

    /// The report as pretty JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// The same report with every timing set to zero (for snapshots).
    pub fn without_timings(&self) -> Report {
        let mut r = self.clone();
        r.timings.iter_mut().for_each(|t| t.seconds = 0.0);
        r
    }
}

/// How a soup's ingredients were chosen, in one sentence for people.
pub(crate) fn soup_sentence(task: &Task, soup: &SoupReport) -> String {
    let judged = if soup.recalibrated {
        "each candidate and each soup judged with BatchNorm statistics recalibrated for its own weights"
    } else {
        "judged with averaged stored statistics"
    };
    format!(
        "{} ingredient(s) chosen on the select split ({} on it), {judged}; on the held-out set: {} {}.",
        soup.ingredients.len(),
        task.format_score(soup.select.value()),
        task.format_score(soup.eval.value()),
        task.score_name()
    )
}

/// A comparison row's name as a small diagram's title: `ensemble ++`, `SWAG ×30`, `SWA ++, T 0.47`.
fn short_label(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("ensemble of ") {
        let n = rest.split(',').next().unwrap_or_default();
        return if rest.ends_with("recalibrated") { format!("ensemble of {n} ++") } else { format!("ensemble of {n}") };
    }
    if name.starts_with("SWAG") {
        let samples = name.rsplit(", ").next().and_then(|s| s.strip_suffix(" samples")).unwrap_or_default();
        let kind = if name.starts_with("SWAG-diagonal") { "SWAG-diag" } else { "SWAG" };
        return format!("{kind} ×{samples}");
    }
    if let Some(t) = name.strip_prefix("SWA, recalibrated, temperature ") {
        return format!("SWA ++, T {t}");
    }
    name.to_string()
}

/// What the comparison table holds, in one paragraph for people.
pub(crate) fn comparison_sentence(r: &Report) -> String {
    let mut s = "Weight space (SWA: one model) against prediction space (an ensemble of the checkpoints, \
                 SWAG's model average: many models to run), each scored on the held-out set; passes are \
                 evaluations and BatchNorm recalibrations over data."
        .to_string();
    if let Some(t) = &r.temperature {
        s.push_str(&format!(
            " Temperature {:.4} was fitted on {} calibration samples (NLL {:.4} → {:.4}, ECE {:.4} → {:.4} there).",
            t.temperature, t.samples, t.nll_before, t.nll_after, t.ece_before, t.ece_after
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(correct: usize, topk: f64, loss: f64) -> Score {
        Score::Classification(crate::tasks::classification::Score {
            score: None,
            correct,
            samples: 200,
            top1: correct as f64 / 200.0,
            topk,
            loss,
            nonfinite: 0,
            calibration: crate::tasks::classification::Calibrated {
                ece: Some(loss / 10.0),
                brier: Some(loss / 2.0),
                // The 200 samples in the top five of the 15 confidence bins, 40 each at the bin's middle
                // confidence, `correct` of them right: more in the bins of higher confidence. None for
                // the first checkpoint's stored statistics (100 correct), as a model scored before
                // scores had bins.
                reliability: (0..15usize)
                    .filter(|_| correct >= 150)
                    .map(|i| match i.checked_sub(10) {
                        Some(k) => crate::tasks::classification::Bin {
                            samples: 40,
                            correct: (correct / 5 + usize::from(k >= 5 - correct % 5) + 2 * k)
                                .saturating_sub(4)
                                .min(40),
                            confidence: 40.0 * (i as f64 + 0.5) / 15.0,
                        },
                        None => crate::tasks::classification::Bin::default(),
                    })
                    .collect(),
            },
        })
    }

    fn nonfinite(s: &mut Score, n: usize) {
        match s {
            Score::Classification(c) => c.nonfinite = n,
            #[allow(unreachable_patterns)]
            _ => unreachable!("a classification report"),
        }
    }

    /// A report built by hand: three checkpoints, one without recalibrated figures, names that
    /// need escaping in HTML.
    fn report() -> Report {
        let checkpoints = vec![
            CheckpointRow {
                name: "epoch_1.safetensors".into(),
                number: Some(1),
                stored: score(100, 0.9, 1.25),
                recalibrated: Some(score(150, 0.95, 0.75)),
            },
            CheckpointRow {
                name: "epoch_2<&>.safetensors".into(),
                number: Some(2),
                stored: score(160, 0.97, 0.5),
                recalibrated: Some(score(170, 0.99, 0.4)),
            },
            CheckpointRow {
                name: "last.safetensors".into(),
                number: None,
                stored: score(165, 0.98, 0.45),
                recalibrated: None,
            },
        ];
        let best = Report::best_of(&checkpoints).unwrap();
        Report {
            tool: "swa (test)".into(),
            model: "resnet.onnx".into(),
            train_samples: 1000,
            eval_samples: 200,
            stats: "precise".into(),
            batch_size: 64,
            task: Task::Classification(crate::tasks::Classification { k: 5, score: None }),
            device: "cpu".into(),
            averaged: vec!["epoch_2<&>.safetensors".into(), "last.safetensors".into()],
            swa_stored: score(150, 0.96, 0.6),
            swa_recalibrated: score(176, 0.995, 0.35),
            gain: Gain::Classification(176.0 / 200.0 - best.figures.value()),
            best,
            checkpoints,
            timings: vec![
                Timing { stage: "average".into(), seconds: 1.5 },
                Timing { stage: "recalibrate SWA".into(), seconds: 0.25 },
            ],
            data: Vec::new(),
            comparison: Vec::new(),
            temperature: None,
            soup: Some(SoupReport {
                method: "greedy".into(),
                recalibrated: true,
                ingredients: vec!["epoch_2<&>.safetensors".into(), "last.safetensors".into()],
                candidates: vec![
                    SoupStep {
                        name: "epoch_2<&>.safetensors".into(),
                        select_alone: 0.85,
                        select_in_soup: None,
                        kept: true,
                    },
                    SoupStep {
                        name: "last.safetensors".into(),
                        select_alone: 0.83,
                        select_in_soup: Some(0.87),
                        kept: true,
                    },
                    SoupStep {
                        name: "epoch_1.safetensors".into(),
                        select_alone: 0.75,
                        select_in_soup: Some(0.8),
                        kept: false,
                    },
                ],
                select: score(174, 0.99, 0.37),
                eval: score(172, 0.99, 0.38),
            }),
        }
    }

    #[test]
    fn best_checkpoint_is_taken_over_both_columns() {
        let r = report();
        assert_eq!((r.best.name.as_str(), r.best.statistics.as_str()), ("epoch_2<&>.safetensors", "recalibrated"));
    }

    #[test]
    fn reports_parse_without_nonfinite_and_with_a_null_loss() {
        let mut v: serde_json::Value = serde_json::from_str(&report().json()).unwrap();
        v["swa_stored"].as_object_mut().unwrap().remove("nonfinite");
        v["swa_stored"]["loss"] = serde_json::Value::Null;
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.swa_stored.nonfinite(), 0);
        match &back.swa_stored {
            Score::Classification(stored) => assert!(stored.loss.is_nan()),
            #[allow(unreachable_patterns)]
            _ => unreachable!("a classification report"),
        }
        // Every field, the task's flattened ones (`k`, `gain_top1`, the best's figures) included,
        // reads back as written.
        let r = report();
        assert_eq!(serde_json::from_str::<Report>(&r.json()).unwrap(), r);
    }

    #[test]
    fn models_with_non_finite_logits_are_named_in_every_format() {
        let mut r = report();
        assert!(r.nonfinite().is_empty() && !markdown(&r).contains("Non-finite"));
        nonfinite(&mut r.swa_recalibrated, 7);
        nonfinite(&mut r.checkpoints[0].stored, 200);
        assert_eq!(r.nonfinite(), [("epoch_1.safetensors".to_string(), 200), ("SWA ++".to_string(), 7)]);
        assert!(markdown(&r).contains("epoch_1.safetensors (200 of 200), SWA ++ (7 of 200)"));
        assert!(html(&r).contains("SWA ++ (7 of 200)"));
    }

    #[test]
    fn markdown_of_a_hand_built_report() {
        insta::assert_snapshot!(markdown(&report()));
    }

    #[test]
    fn json_of_a_hand_built_report() {
        insta::assert_snapshot!(report().json());
    }

    #[test]
    fn html_of_a_hand_built_report() {
        insta::assert_snapshot!(html(&report()));
    }

    #[test]
    fn tables_are_the_same_rows_in_every_format() {
        let r = report();
        let t = table::checkpoints(&r);
        assert_eq!(t.rows.len(), 3);
        let md = markdown(&r);
        let page = html(&r);
        for row in &t.rows {
            let cells: Vec<&str> = row.iter().filter_map(|c| c.text.as_deref()).collect();
            assert!(md.contains(&format!("| {} |", cells.join(" | "))), "{cells:?} not in the Markdown");
            assert!(page.contains(&cells[2..].iter().map(|c| format!("<td>{c}</td>")).collect::<String>()));
        }
    }
}
