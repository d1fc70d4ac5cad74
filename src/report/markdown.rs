//! Markdown rendering: the tables SWA papers print, for a PR comment or a job summary.

use std::fmt::Write;

use super::table::{self, Align, Table};
use super::Report;

/// `text` as the content of one table cell: a `|` or a line break (possible in a file name) would
/// otherwise end the cell or the row, and forge others.
fn inline(text: &str) -> String {
    text.replace('\\', "\\\\").replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn render(t: &Table) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", t.header.join(" | "));
    let rule: Vec<&str> = t
        .align
        .iter()
        .map(|a| match a {
            Align::Left => "---",
            Align::Center => ":---:",
            Align::Right => "---:",
        })
        .collect();
    let _ = writeln!(s, "|{}|", rule.join("|"));
    for row in &t.rows {
        s.push('|');
        for c in row {
            match (&c.text, c.strong) {
                (None, _) => s.push_str(" |"),
                (Some(text), false) => s.push_str(&format!(" {} |", inline(text))),
                (Some(text), true) => s.push_str(&format!(" **{}** |", inline(text))),
            }
        }
        s.push('\n');
    }
    s
}

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# SWA report\n");
    let _ = writeln!(
        s,
        "Model `{}` · {} held-out samples · recalibration: `{}` statistics, batch {}, {} training samples · device {}\n",
        r.model.replace(['\n', '\r'], " ").replace('`', "'"),
        r.eval_samples,
        r.stats,
        r.batch_size,
        r.train_samples,
        r.device
    );
    for line in &r.data {
        let _ = writeln!(s, "- {}", line.replace(['\n', '\r'], " ").replace('|', "\\|"));
    }
    if !r.data.is_empty() {
        s.push('\n');
    }
    let _ = writeln!(s, "## Summary\n");
    s.push_str(&render(&table::summary(r)));
    if r.task.score_figure().higher_is_better {
        let _ = writeln!(
            s,
            "\nGain of recalibrated SWA over the best checkpoint: **{}** {}.\n",
            r.task.format_gain(r.gain.value()),
            r.task.score_name()
        );
    } else {
        // A figure where lower is better: its own change, and which way that is.
        let _ = writeln!(
            s,
            "\n{} of recalibrated SWA against the best checkpoint: **{}**.\n",
            r.task.score_name(),
            r.task.format_gain(r.gain.value())
        );
    }
    if let Some(warning) = r.nonfinite_warning() {
        let _ = writeln!(s, "**Warning:** {warning}\n");
    }
    let _ = writeln!(s, "## Checkpoints\n");
    s.push_str(&render(&table::checkpoints(r)));
    let _ = writeln!(s, "\n\"++\": the same weights with BatchNorm statistics recalibrated on the training samples.\n");
    if let (Some(soup), Some(table)) = (&r.soup, table::soup(r)) {
        let _ = writeln!(s, "## {} soup\n", soup.method);
        let _ = writeln!(s, "{}\n", super::soup_sentence(&r.task, soup));
        s.push_str(&render(&table));
        s.push('\n');
    }
    if let Some(table) = table::comparison(r) {
        let _ = writeln!(s, "## SWA, ensemble or SWAG?\n");
        let _ = writeln!(s, "{}\n", super::comparison_sentence(r));
        s.push_str(&render(&table));
        s.push('\n');
    }
    let _ = writeln!(s, "## Time\n");
    s.push_str(&render(&table::timings(r)));
    let _ = writeln!(s, "\n_{}_", r.tool);
    s
}
