//! A self-contained HTML page (no network): the tables and an inline SVG chart of accuracy per
//! checkpoint, stored and recalibrated statistics, with SWA before and after as lines.

use std::fmt::Write;

use super::table::{self, Table};
use super::Report;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The plot area of the chart and its scales: checkpoint index → x, top-1 → y.
struct Frame {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    n: usize,
    lo: f64,
    hi: f64,
}

impl Frame {
    /// A frame whose y range holds every accuracy of `r`, padded.
    fn new(r: &Report) -> Self {
        let mut values: Vec<f64> = r
            .checkpoints
            .iter()
            .flat_map(|c| std::iter::once(c.stored.value()).chain(c.recalibrated.as_ref().map(|x| x.value())))
            .collect();
        values.extend([r.swa_stored.value(), r.swa_recalibrated.value()]);
        values.extend(r.soup.iter().map(|soup| soup.eval.value()));
        values.retain(|v| v.is_finite());
        // Scores that are fractions (accuracies, mIoU, AP) keep the axis within 0..=1; any other
        // (R², a negated RMSE, a metric command's) spans its values.
        let fractions = values.iter().all(|v| (0.0..=1.0).contains(v));
        let (floor, ceil) = if fractions { (0.0, 1.0) } else { (f64::NEG_INFINITY, f64::INFINITY) };
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.1).max(if fractions { 0.01 } else { 1e-3 * hi.abs().max(lo.abs()).max(1e-6) });
        Frame {
            w: 720.0,
            h: 360.0,
            left: 60.0,
            right: 180.0,
            top: 20.0,
            bottom: 50.0,
            n: r.checkpoints.len().max(1),
            lo: (lo - pad).max(floor),
            hi: (hi + pad).min(ceil),
        }
    }

    fn x(&self, i: usize) -> f64 {
        let at = if self.n == 1 { 0.5 } else { i as f64 / (self.n - 1) as f64 };
        self.left + (self.w - self.left - self.right) * at
    }

    fn y(&self, v: f64) -> f64 {
        self.top + (self.h - self.top - self.bottom) * (1.0 - (v - self.lo) / (self.hi - self.lo).max(1e-9))
    }

    /// Grid lines with their accuracy, checkpoint numbers, and the axis title.
    fn axes(&self, r: &Report, s: &mut String) {
        let (w, h, left, right, bottom) = (self.w, self.h, self.left, self.right, self.bottom);
        for k in 0..=4 {
            let v = self.lo + (self.hi - self.lo) * k as f64 / 4.0;
            let _ = write!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##,
                w - right,
                left - 6.0,
                self.y(v) + 4.0,
                r.task.format_score(v),
                y = self.y(v)
            );
        }
        for (i, c) in r.checkpoints.iter().enumerate() {
            let label = c.number.map_or_else(|| (i + 1).to_string(), |n| n.to_string());
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle" fill="#555">{}</text>"##,
                self.x(i),
                h - bottom + 16.0,
                escape(&label)
            );
        }
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="middle" fill="#333">checkpoint</text>"##,
            (left + w - right) / 2.0,
            h - 12.0
        );
    }

    /// A line and a point per checkpoint for one series (`None` where it has no value).
    fn series(&self, r: &Report, name: &str, color: &str, vals: &[Option<f64>], s: &mut String) {
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", self.x(i), self.y(v))))
            .collect();
        if pts.is_empty() {
            return;
        }
        let _ = write!(
            s,
            r#"<polyline class="series {name}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for (i, v) in vals.iter().enumerate() {
            if let Some(v) = v {
                let label = escape(&r.checkpoints[i].name);
                let _ = write!(
                    s,
                    r#"<circle class="point {name}" data-checkpoint="{label}" data-top1="{v:.6}" cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{label}: {}</title></circle>"#,
                    self.x(i),
                    self.y(*v),
                    r.task.format_score(*v)
                );
            }
        }
    }

    /// A ring around each ingredient's point (its stored-statistics point).
    fn ingredients(&self, r: &Report, names: &[String], s: &mut String) {
        for (i, c) in r.checkpoints.iter().enumerate().filter(|(_, c)| names.contains(&c.name)) {
            let _ = write!(
                s,
                r##"<circle class="ingredient" data-checkpoint="{}" cx="{:.1}" cy="{:.1}" r="8" fill="none" stroke="#9467bd" stroke-width="2"/>"##,
                escape(&c.name),
                self.x(i),
                self.y(c.stored.value())
            );
        }
    }

    /// A horizontal line across the plot at `v`.
    fn level(&self, name: &str, color: &str, dash: &str, v: f64, s: &mut String) {
        let _ = write!(
            s,
            r#"<line class="swa {name}" x1="{}" x2="{}" y1="{yv:.1}" y2="{yv:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" data-top1="{v:.6}"/>"#,
            self.left,
            self.w - self.right,
            yv = self.y(v)
        );
    }

    /// The legend, right of the plot.
    fn legend(&self, entries: &[(&str, &str, &str)], s: &mut String) {
        let x = self.w - self.right;
        for (k, (color, dash, label)) in entries.iter().enumerate() {
            let ly = self.top + 10.0 + 20.0 * k as f64;
            let _ = write!(
                s,
                r##"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}" font-size="11" fill="#333">{label}</text>"##,
                x + 10.0,
                x + 34.0,
                x + 40.0,
                ly + 4.0
            );
        }
    }
}

/// The chart as an SVG element.
pub fn chart(r: &Report) -> String {
    let f = Frame::new(r);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{label} per checkpoint">"#,
        label = r.task.score_label(),
        w = f.w,
        h = f.h
    );
    let _ = write!(s, r##"<rect x="0" y="0" width="{}" height="{}" fill="#fff"/>"##, f.w, f.h);
    f.axes(r, &mut s);
    let stored: Vec<Option<f64>> = r.checkpoints.iter().map(|c| Some(c.stored.value())).collect();
    let recalibrated: Vec<Option<f64>> =
        r.checkpoints.iter().map(|c| c.recalibrated.as_ref().map(|x| x.value())).collect();
    f.series(r, "stored", "#1f77b4", &stored, &mut s);
    f.series(r, "recalibrated", "#ff7f0e", &recalibrated, &mut s);
    f.level("swa-stored", "#7f7f7f", "6 4", r.swa_stored.value(), &mut s);
    f.level("swa-recalibrated", "#2ca02c", "", r.swa_recalibrated.value(), &mut s);
    let mut legend = vec![("#1f77b4", "", "checkpoint, stored stats")];
    if recalibrated.iter().any(Option::is_some) {
        legend.push(("#ff7f0e", "", "checkpoint, recalibrated"));
    }
    legend.extend([("#7f7f7f", "6 4", "SWA, stored stats"), ("#2ca02c", "", "SWA, recalibrated")]);
    if let Some(soup) = &r.soup {
        f.level("soup", "#9467bd", "2 3", soup.eval.value(), &mut s);
        f.ingredients(r, &soup.ingredients, &mut s);
        legend.push(("#9467bd", "2 3", "soup (rings: in it)"));
    }
    f.legend(&legend, &mut s);
    s.push_str("</svg>");
    s
}

fn render(t: &Table) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in &t.header {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr></thead><tbody>");
    for row in &t.rows {
        s.push_str("<tr>");
        for c in row {
            let text = escape(c.text.as_deref().unwrap_or_default());
            let _ = if c.strong { write!(s, "<td><strong>{text}</strong></td>") } else { write!(s, "<td>{text}</td>") };
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// The report as one self-contained HTML page.
pub fn html(r: &Report) -> String {
    let summary = render(&table::summary(r));
    let checkpoints = render(&table::checkpoints(r));
    let soup = match (&r.soup, table::soup(r)) {
        (Some(soup), Some(t)) => format!(
            "<h2>{} soup</h2><p>{}</p>{}",
            escape(&soup.method),
            escape(&super::soup_sentence(&r.task, soup)),
            render(&t)
        ),
        _ => String::new(),
    };
    let times = render(&table::timings(r));
    let gain_class = if r.gain.value() >= 0.0 { "gain" } else { "loss" };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SWA report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:980px;color:#222;padding:0 1rem}}
h1{{font-size:1.6rem}} h2{{font-size:1.2rem;margin-top:2rem}}
table{{border-collapse:collapse;margin:.5rem 0}} th,td{{border-bottom:1px solid #ddd;padding:.3rem .8rem;text-align:right}}
th:first-child,td:first-child{{text-align:left}} .meta{{color:#555}} .gain{{color:#2ca02c}} .loss{{color:#d62728}}
</style></head><body>
<h1>SWA report</h1>
<p class="meta">Model <code>{model}</code> · {eval} held-out samples · recalibration: <code>{stats}</code> statistics, batch {batch}, {train} training samples · device {device}</p>{data}
<p>Recalibrated SWA: <strong>{swa}</strong> {score}, <strong class="{gain_class}" id="gain">{gain}</strong> over the best checkpoint ({best}, {best_acc}).</p>{warning}
{chart}
<h2>Summary</h2>{summary}
<h2>Checkpoints</h2>{checkpoints}
<p class="meta">"++": the same weights with BatchNorm statistics recalibrated on the training samples.</p>{soup}
<h2>Time</h2>{times}
<p class="meta">{tool}</p>
<script type="application/json" id="report-data">{json}</script>
</body></html>
"#,
        model = escape(&r.model),
        eval = r.eval_samples,
        stats = escape(&r.stats),
        batch = r.batch_size,
        train = r.train_samples,
        device = escape(&r.device),
        data = r.data.iter().map(|l| format!("\n<p class=\"meta\">{}</p>", escape(l))).collect::<String>(),
        swa = r.task.format_score(r.swa_recalibrated.value()),
        score = escape(r.task.score_name()),
        gain = r.task.format_gain(r.gain.value()),
        best = escape(&r.best.name),
        best_acc = r.task.format_score(r.best.figures.value()),
        chart = chart(r),
        warning = r
            .nonfinite_warning()
            .map_or(String::new(), |w| format!("\n<p class=\"loss\"><strong>Warning:</strong> {}</p>", escape(&w))),
        tool = escape(&r.tool),
        json = serde_json::to_string(r).expect("report serialises").replace("</", "<\\/"),
    )
}
