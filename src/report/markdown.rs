//! Markdown rendering: the tables SWA papers print, for a PR comment or a job summary.

use std::fmt::Write;

use super::{pct, points, Report};

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let k = r.k;
    let _ = writeln!(s, "# SWA report\n");
    let _ = writeln!(
        s,
        "Model `{}` · {} held-out samples · recalibration: `{}` statistics, batch {}, {} training samples · device {}\n",
        r.model, r.eval_samples, r.stats, r.batch_size, r.train_samples, r.device
    );
    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(s, "| model | top-1 | top-{k} | loss |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| best checkpoint: {} ({} statistics) | {} | | |",
        r.best.name,
        r.best.statistics,
        pct(r.best.top1)
    );
    let _ = writeln!(
        s,
        "| SWA, newest checkpoint's statistics | {} | {} | {:.4} |",
        pct(r.swa_stored.top1),
        pct(r.swa_stored.topk),
        r.swa_stored.loss
    );
    let _ = writeln!(
        s,
        "| **SWA, recalibrated** | **{}** | {} | {:.4} |",
        pct(r.swa_recalibrated.top1),
        pct(r.swa_recalibrated.topk),
        r.swa_recalibrated.loss
    );
    let _ = writeln!(s, "\nGain of recalibrated SWA over the best checkpoint: **{}** top-1.\n", points(r.gain_top1));
    let _ = writeln!(s, "## Checkpoints\n");
    let _ = writeln!(s, "| checkpoint | in SWA | top-1 | top-{k} | loss | top-1 ++ | loss ++ |");
    let _ = writeln!(s, "|---|:---:|---:|---:|---:|---:|---:|");
    for c in &r.checkpoints {
        let (acc, loss) = c
            .recalibrated
            .as_ref()
            .map_or(("–".to_string(), "–".to_string()), |x| (pct(x.top1), format!("{:.4}", x.loss)));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.4} | {acc} | {loss} |",
            c.name,
            if r.averaged.contains(&c.name) { "✓" } else { "" },
            pct(c.stored.top1),
            pct(c.stored.topk),
            c.stored.loss
        );
    }
    let _ = writeln!(s, "\n\"++\": the same weights with BatchNorm statistics recalibrated on the training samples.\n");
    let _ = writeln!(s, "## Time\n");
    let _ = writeln!(s, "| stage | seconds |");
    let _ = writeln!(s, "|---|---:|");
    for t in &r.timings {
        let _ = writeln!(s, "| {} | {:.2} |", t.stage, t.seconds);
    }
    let _ = writeln!(s, "\n_{}_", r.tool);
    s
}
