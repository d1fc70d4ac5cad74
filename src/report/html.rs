//! A self-contained HTML page (no network): the tables, an inline SVG chart of the score per
//! checkpoint (stored and recalibrated statistics, with SWA before and after as lines) on an axis
//! ticked at round values, and beside it a reliability diagram per model whose score has
//! confidence bins.

use std::fmt::Write;

use super::table::{self, Table};
use super::Report;
use crate::tasks::classification::{self, Bin};
use crate::tasks::{Figure, Score};

/// Text made safe for HTML, inside elements and attribute values.
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
    ticks: Ticks,
    lo: f64,
    hi: f64,
}

/// Ticks at round values: every multiple of a step of 1, 2 or 5 × 10ⁿ from `first` steps to
/// `last` steps, the smallest such step for which the range, snapped outward to it, holds at most
/// [`Ticks::MOST`] ticks (4 to 6 for most ranges: the next smaller step gave 7 or more).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ticks {
    /// The distance between ticks.
    step: f64,
    /// The first tick, in steps (a whole number).
    first: f64,
    /// The last tick, in steps (a whole number).
    last: f64,
}

impl Ticks {
    /// The most ticks an axis gets.
    const MOST: f64 = 6.0;

    /// Ticks from at or below `lo` to at or above `hi` (a point gets a range around it, and a
    /// range that is not finite 0..=1).
    fn new(lo: f64, hi: f64) -> Self {
        let (lo, hi) = Self::widen(lo, hi);
        let start = 10f64.powf(((hi - lo) / 10.0).log10().floor());
        (0..64)
            .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * start * 10f64.powi(e)))
            .map(|step| Self::snapped(lo, hi, step))
            .find(|t| t.count() <= Self::MOST)
            .unwrap_or(Self::snapped(lo, hi, hi - lo))
    }

    /// `lo..=hi` in order, finite and not empty.
    fn widen(lo: f64, hi: f64) -> (f64, f64) {
        if !(lo.is_finite() && hi.is_finite()) {
            return (0.0, 1.0);
        }
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        if hi > lo {
            (lo, hi)
        } else {
            let d = if lo == 0.0 { 0.1 } else { lo.abs() * 0.05 };
            (lo - d, hi + d)
        }
    }

    /// The multiples of `step` from the last at or below `lo` to the first at or above `hi`
    /// (forgiving the rounding of `lo / step`).
    fn snapped(lo: f64, hi: f64, step: f64) -> Self {
        Ticks { step, first: (lo / step + 1e-9).floor(), last: (hi / step - 1e-9).ceil() }
    }

    /// How many ticks.
    fn count(&self) -> f64 {
        self.last - self.first + 1.0
    }

    /// The ticks' values, lowest first (never −0).
    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        (0..self.count() as usize).map(|k| (self.first + k as f64) * self.step + 0.0)
    }

    /// The lowest tick.
    fn lo(&self) -> f64 {
        self.first * self.step
    }

    /// The highest tick.
    fn hi(&self) -> f64 {
        self.last * self.step
    }

    /// A tick's label: the figure as people read it (an RMSE positive, a fraction in percent)
    /// with the decimals the step needs and no trailing zeros (`40%`, `42.5%`, `0.15`).
    /// [`crate::tasks::Task::format_score`] keeps its fixed decimals for the tables.
    fn label(&self, f: &Figure, v: f64) -> String {
        let (scale, unit) = if f.percent { (100.0, "%") } else { (1.0, "") };
        let shown = if f.higher_is_better { v } else { -v } * scale;
        let decimals = (-(self.step * scale).log10() - 1e-9).ceil().clamp(0.0, 15.0) as i32;
        let rounded = (shown * 10f64.powi(decimals)).round() / 10f64.powi(decimals) + 0.0;
        let text = format!("{rounded:.*}", decimals as usize);
        let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
        format!("{text}{unit}")
    }
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
        // The axis runs from tick to tick: the padded range snapped outward to round values
        // (which stay within 0..=1 for fractions: every step below 1 divides 1).
        let ticks = Ticks::new((lo - pad).max(floor), (hi + pad).min(ceil));
        Frame {
            w: 720.0,
            h: 360.0,
            left: 60.0,
            right: 180.0,
            top: 20.0,
            bottom: 50.0,
            n: r.checkpoints.len().max(1),
            ticks,
            lo: ticks.lo(),
            hi: ticks.hi(),
        }
    }

    /// The x of checkpoint `i`.
    fn x(&self, i: usize) -> f64 {
        let at = if self.n == 1 { 0.5 } else { i as f64 / (self.n - 1) as f64 };
        self.left + (self.w - self.left - self.right) * at
    }

    /// The y of score `v`.
    fn y(&self, v: f64) -> f64 {
        self.top + (self.h - self.top - self.bottom) * (1.0 - (v - self.lo) / (self.hi - self.lo).max(1e-9))
    }

    /// Every how many checkpoints the x axis is labelled: 1, 2, 5, 10, … so that labels stay at
    /// least 30 px apart however many checkpoints there are.
    fn label_every(&self) -> usize {
        let gap = (self.w - self.left - self.right) / self.n.saturating_sub(1).max(1) as f64;
        let need = (30.0 / gap).ceil().max(1.0) as usize;
        (0..20u32).flat_map(|e| [1, 2, 5].map(|m| m * 10usize.pow(e))).find(|k| *k >= need).unwrap_or(self.n)
    }

    /// Grid lines at the score's round ticks with their labels, checkpoint numbers, and the
    /// axis title.
    fn axes(&self, r: &Report, s: &mut String) {
        let (w, h, left, right, bottom) = (self.w, self.h, self.left, self.right, self.bottom);
        let figure = r.task.score_figure();
        for v in self.ticks.values() {
            let _ = write!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text class="y-tick" x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##,
                w - right,
                left - 6.0,
                self.y(v) + 4.0,
                self.ticks.label(&figure, v),
                y = self.y(v)
            );
        }
        let every = self.label_every();
        for (i, c) in r.checkpoints.iter().enumerate().filter(|(i, _)| i % every == 0) {
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

/// How many reliability diagrams fit beside the chart (two columns of three, about its height).
const BESIDE: usize = 6;

/// The "Reliability" section: a diagram per model whose score has confidence bins (none for
/// reports without them: older reports, tasks other than classification).
///
/// Up to [`BESIDE`] diagrams are all shown. A report with more (a diagram per checkpoint, twice
/// with recalibrated statistics) shows the models it is about — SWA, the soup and any other
/// model that is not a checkpoint, with the best checkpoint to compare them with — and folds the
/// other checkpoints into a closed `<details>` block under them, so that the section stays beside
/// the chart and reads at a glance, every diagram one click away.
fn reliability(r: &Report) -> String {
    let models: Vec<(String, &Score, &[Bin])> = r
        .scored_models()
        .into_iter()
        .filter_map(|(name, score)| score.reliability().map(|bins| (name, score, bins)))
        .collect();
    if models.is_empty() {
        return String::new();
    }
    let (shown, folded) = if models.len() <= BESIDE { (models, Vec::new()) } else { split(r, models) };
    let mut s = String::from(
        r#"<section class="calibration"><h2>Reliability</h2><p class="meta">Accuracy per confidence bin (bars) against the diagonal of a calibrated model; red: each bin's gap to its mean confidence — above a bar, overconfident; over a bar, underconfident.</p><div class="diagrams">"#,
    );
    shown.iter().for_each(|(name, score, bins)| s.push_str(&diagram(name, score, bins)));
    s.push_str("</div>");
    if !folded.is_empty() {
        let _ =
            write!(s, r#"<details><summary>Checkpoint diagrams ({})</summary><div class="diagrams">"#, folded.len());
        folded.iter().for_each(|(name, score, bins)| s.push_str(&diagram(name, score, bins)));
        s.push_str("</div></details>");
    }
    s.push_str("</section>");
    s
}

/// A model, its score and the score's bins.
type Binned<'a> = (String, &'a Score, &'a [Bin]);

/// The models shown first (every one that is not a checkpoint, and the best checkpoint) and the
/// other checkpoints, each in the report's order.
fn split<'a>(r: &Report, models: Vec<Binned<'a>>) -> (Vec<Binned<'a>>, Vec<Binned<'a>>) {
    let best = if r.best.statistics == "recalibrated" { format!("{} ++", r.best.name) } else { r.best.name.clone() };
    let checkpoint =
        |name: &str| r.checkpoints.iter().any(|c| c.name == name || name.strip_suffix(" ++") == Some(&c.name));
    models.into_iter().partition(|(name, _, _)| *name == best || !checkpoint(name))
}

/// The size of a reliability diagram and its plot area (confidence → x, accuracy → y).
mod plot {
    /// Width.
    pub const W: f64 = 114.0;
    /// Height.
    pub const H: f64 = 132.0;
    /// The plot's left edge (confidence 0).
    pub const LEFT: f64 = 22.0;
    /// The plot's right edge (confidence 1).
    pub const RIGHT: f64 = 108.0;
    /// The plot's top (accuracy 1).
    pub const TOP: f64 = 30.0;
    /// The plot's bottom (accuracy 0).
    pub const BOTTOM: f64 = 116.0;

    /// The x of confidence `c`.
    pub fn x(c: f64) -> f64 {
        LEFT + (RIGHT - LEFT) * c
    }

    /// The y of accuracy `a`.
    pub fn y(a: f64) -> f64 {
        BOTTOM - (BOTTOM - TOP) * a
    }
}

/// One model's reliability diagram (as Guo et al. 2017 draw them): a bar per non-empty
/// confidence bin at its accuracy, the gap to the bin's mean confidence shaded, the diagonal a
/// calibrated model's bars would reach, and the model's name and ECE above. A self-contained SVG
/// element; the full name is its tooltip where the title has to shorten it.
fn diagram(name: &str, score: &Score, bins: &[Bin]) -> String {
    let ece = score.figure("ece").unwrap_or_else(|| classification::ece(bins, bins.iter().map(|b| b.samples).sum()));
    let (name, title) = (escape(name), escape(&short_name(name)));
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="reliability" data-model="{name}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="Reliability diagram of {name}"><title>{name}: ECE {ece:.4}</title><rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/><text x="{mid}" y="11" font-size="10" font-weight="600" text-anchor="middle" fill="#333">{title}</text><text x="{mid}" y="23" font-size="9" text-anchor="middle" fill="#555">ECE {ece:.4}</text>"##,
        w = plot::W,
        h = plot::H,
        mid = plot::W / 2.0
    );
    diagram_axes(&mut s);
    diagram_bins(bins, &mut s);
    let _ = write!(
        s,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#555" stroke-width="1" stroke-dasharray="3 2"/></svg>"##,
        plot::x(0.0),
        plot::y(0.0),
        plot::x(1.0),
        plot::y(1.0)
    );
    s
}

/// The diagram's frame, grid lines at 0.5 and ticks 0, 0.5 and 1 on both axes.
fn diagram_axes(s: &mut String) {
    let _ = write!(
        s,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#ccc"/>"##,
        plot::LEFT,
        plot::TOP,
        plot::RIGHT - plot::LEFT,
        plot::BOTTOM - plot::TOP
    );
    for (v, label) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1")] {
        let (x, y) = (plot::x(v), plot::y(v));
        if v == 0.5 {
            let _ = write!(
                s,
                r##"<line x1="{x}" x2="{x}" y1="{}" y2="{}" stroke="#eee"/><line x1="{}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/>"##,
                plot::TOP,
                plot::BOTTOM,
                plot::LEFT,
                plot::RIGHT
            );
        }
        let _ = write!(
            s,
            r##"<text x="{x}" y="{}" font-size="9" text-anchor="middle" fill="#555">{label}</text><text x="{}" y="{}" font-size="9" text-anchor="end" fill="#555">{label}</text>"##,
            plot::BOTTOM + 10.0,
            plot::LEFT - 3.0,
            y + 3.0
        );
    }
}

/// A bar per non-empty bin, from 0 to its accuracy, and its gap to the bin's mean confidence.
fn diagram_bins(bins: &[Bin], s: &mut String) {
    let width = 1.0 / bins.len().max(1) as f64;
    for (i, b) in bins.iter().enumerate().filter(|(_, b)| b.samples > 0) {
        let (accuracy, confidence) = (b.correct as f64 / b.samples as f64, b.confidence / b.samples as f64);
        let (x, bar) = (plot::x(i as f64 * width), plot::x(width) - plot::LEFT);
        let (top, low) = (accuracy.max(confidence), accuracy.min(confidence));
        let _ = write!(
            s,
            r##"<rect class="bin" data-accuracy="{accuracy:.4}" data-confidence="{confidence:.4}" data-samples="{n}" x="{x:.2}" y="{y:.2}" width="{bar:.2}" height="{:.2}" fill="#1f77b4" stroke="#fff" stroke-width="0.5"><title>confidence {:.2}–{:.2}: {n} samples, accuracy {accuracy:.3}, mean confidence {confidence:.3}</title></rect><rect class="gap" x="{x:.2}" y="{:.2}" width="{bar:.2}" height="{:.2}" fill="#d62728" fill-opacity="0.45" stroke="#d62728" stroke-width="0.5"/>"##,
            plot::y(0.0) - plot::y(accuracy),
            i as f64 * width,
            (i + 1) as f64 * width,
            plot::y(top),
            plot::y(low) - plot::y(top),
            n = b.samples,
            y = plot::y(accuracy)
        );
    }
}

/// A model's name as a diagram's title shows it: whole where it fits, else without its file
/// extension (`epoch_006 ++` for `epoch_006.safetensors ++`; an extension has a letter, so
/// `lr-0.5` keeps its `.5`), else cut short with an ellipsis.
fn short_name(name: &str) -> String {
    const FITS: usize = 20;
    if name.chars().count() <= FITS {
        return name.to_string();
    }
    let (base, suffix) = name.strip_suffix(" ++").map_or((name, ""), |base| (base, " ++"));
    let base = match base.rsplit_once('.') {
        Some((stem, ext))
            if !stem.is_empty()
                && ext.len() <= 12
                && ext.chars().all(|c| c.is_ascii_alphanumeric())
                && ext.chars().any(|c| c.is_ascii_alphabetic()) =>
        {
            stem
        }
        _ => base,
    };
    let keep = FITS - suffix.len();
    if base.chars().count() <= keep {
        format!("{base}{suffix}")
    } else {
        format!("{}…{suffix}", base.chars().take(keep - 1).collect::<String>())
    }
}

/// A table as HTML.
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
    let comparison = match table::comparison(r) {
        Some(t) => {
            format!("<h2>SWA, ensemble or SWAG?</h2><p>{}</p>{}", escape(&super::comparison_sentence(r)), render(&t))
        }
        None => String::new(),
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
.charts{{display:flex;flex-wrap:wrap;gap:.75rem;align-items:flex-start}} #chart{{flex:none;max-width:100%;height:auto}}
.calibration{{flex:1 1 232px}} .calibration h2{{margin:0 0 .2rem}} .calibration p{{font-size:.75rem;margin:0 0 .4rem}}
.diagrams{{display:flex;flex-wrap:wrap;gap:4px}} summary{{cursor:pointer;color:#555;font-size:.85rem;margin:.4rem 0}}
</style></head><body>
<h1>SWA report</h1>
<p class="meta">Model <code>{model}</code> · {eval} held-out samples · recalibration: <code>{stats}</code> statistics, batch {batch}, {train} training samples · device {device}</p>{data}
<p>Recalibrated SWA: <strong>{swa}</strong> {score}, <strong class="{gain_class}" id="gain">{gain}</strong> over the best checkpoint ({best}, {best_acc}).</p>{warning}
<div class="charts">{chart}{reliability}</div>
<h2>Summary</h2>{summary}
<h2>Checkpoints</h2>{checkpoints}
<p class="meta">"++": the same weights with BatchNorm statistics recalibrated on the training samples.</p>{soup}{comparison}
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
        reliability = reliability(r),
        warning = r
            .nonfinite_warning()
            .map_or(String::new(), |w| format!("\n<p class=\"loss\"><strong>Warning:</strong> {}</p>", escape(&w))),
        tool = escape(&r.tool),
        json = serde_json::to_string(r).expect("report serialises").replace("</", "<\\/"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CheckpointRow;
    use crate::tasks::{Classification, Gain, Task};

    /// A classification score of `top1` on 100 samples, with two non-empty confidence bins or
    /// none.
    fn score(top1: f64, bins: bool) -> Score {
        let correct = (top1 * 100.0).round() as usize;
        let high = [
            Bin { samples: 50, correct: correct / 2, confidence: 40.0 },
            Bin { samples: 50, correct: correct - correct / 2, confidence: 48.0 },
        ];
        let reliability = if bins { [Bin::default(); 13].into_iter().chain(high).collect() } else { Vec::new() };
        Score::Classification(classification::Score {
            score: None,
            correct,
            samples: 100,
            top1,
            topk: 1.0,
            loss: 0.5,
            nonfinite: 0,
            calibration: crate::tasks::classification::Calibrated {
                ece: bins.then_some(0.0312),
                brier: None,
                reliability,
            },
        })
    }

    /// A report of `n` checkpoints, each also recalibrated, their scores with bins or without.
    fn report(n: usize, bins: bool) -> Report {
        let checkpoints: Vec<CheckpointRow> = (0..n)
            .map(|i| CheckpointRow {
                name: format!("epoch_{:03}.safetensors", i + 1),
                number: Some(i as u64 + 1),
                stored: score(0.5 + 0.03 * i as f64, bins),
                recalibrated: Some(score(0.6 + 0.03 * i as f64, bins)),
            })
            .collect();
        Report {
            tool: "swa (test)".into(),
            model: "model.onnx".into(),
            train_samples: 1000,
            eval_samples: 100,
            stats: "precise".into(),
            batch_size: 32,
            task: Task::Classification(Classification { k: 5, score: None }),
            device: "cpu".into(),
            best: Report::best_of(&checkpoints).expect("checkpoints"),
            checkpoints,
            averaged: Vec::new(),
            swa_stored: score(0.8, bins),
            swa_recalibrated: score(0.85, bins),
            gain: Gain::Classification(0.0),
            timings: Vec::new(),
            soup: None,
            data: Vec::new(),
            comparison: Vec::new(),
            temperature: None,
        }
    }

    /// The text of every element of the page that opens with `open`, in order.
    fn texts<'a>(page: &'a str, open: &str) -> Vec<&'a str> {
        page.split(open).skip(1).filter_map(|t| Some(t.split_once('>')?.1.split_once('<')?.0)).collect()
    }

    #[test]
    fn a_reliability_diagram_per_model_with_bins_beside_the_chart() {
        for n in [1, 8] {
            let r = report(n, true);
            let page = html(&r);
            let models = 2 * n + 2;
            assert_eq!(page.matches(r#"<svg class="reliability""#).count(), models, "{n} checkpoints");
            assert_eq!(page.matches(r#"<rect class="bin""#).count(), 2 * models);
            assert_eq!(page.matches("ECE 0.0312</text>").count(), models);
            for (name, _) in r.scored_models() {
                assert!(page.contains(&format!(r#"data-model="{name}""#)), "{name}");
            }
            assert!(page.contains(r#"<div class="charts"><svg id="chart""#) && page.contains("<h2>Reliability</h2>"));
            assert_eq!(page.contains("<details>"), n == 8);
        }
        // Many models: SWA and the best checkpoint first, the other checkpoints folded away.
        let page = html(&report(8, true));
        let (first, folded) = page.split_once("<details>").expect("folded checkpoints");
        let shown: Vec<&str> = texts(first, r#"<svg class="reliability" data-model=""#);
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(folded.contains("<summary>Checkpoint diagrams (15)</summary>"));
        assert!(first.contains(r#"data-model="epoch_008.safetensors ++""#) && first.contains("epoch_008 ++</text>"));
        assert!(first.contains(r#"data-model="SWA""#) && first.contains(r#"data-model="SWA ++""#));
        // The bins' figures.
        assert!(page.contains(r#"<rect class="bin" data-accuracy="0.8600" data-confidence="0.9600" data-samples="50""#));
    }

    #[test]
    fn no_reliability_section_without_bins() {
        let page = html(&report(3, false));
        assert!(!page.contains("Reliability") && !page.contains(r#"class="reliability""#));
        assert!(page.contains(r#"<div class="charts"><svg id="chart""#));
    }

    #[test]
    fn the_charts_tick_labels_are_round() {
        assert_eq!(
            texts(&html(&report(8, true)), r#"<text class="y-tick""#),
            ["40%", "50%", "60%", "70%", "80%", "90%"]
        );
        // Scores within two points: whole percents, the padded range snapped outward to them.
        let mut r = report(1, false);
        r.checkpoints[0].stored = score(0.85, false);
        r.checkpoints[0].recalibrated = Some(score(0.86, false));
        (r.swa_stored, r.swa_recalibrated) = (score(0.86, false), score(0.87, false));
        assert_eq!(texts(&html(&r), r#"<text class="y-tick""#), ["84%", "85%", "86%", "87%", "88%"]);
    }

    #[test]
    fn long_names_are_shortened_in_titles() {
        assert_eq!(short_name("SWA ++"), "SWA ++");
        assert_eq!(short_name("epoch_006.safetensors ++"), "epoch_006 ++");
        assert_eq!(short_name("checkpoint-2/model.safetensors"), "checkpoint-2/model");
        assert_eq!(short_name("a-very-long-checkpoint-name-0.5 ++"), "a-very-long-chec… ++");
        assert_eq!(short_name("lr-0.5"), "lr-0.5");
    }

    /// The ticks' values and the labels of a top-1 axis over `lo..=hi`.
    fn axis(lo: f64, hi: f64) -> (Vec<f64>, Vec<String>) {
        let t = Ticks::new(lo, hi);
        let top1 = Task::Classification(Classification { k: 5, score: None }).score_figure();
        (t.values().collect(), t.values().map(|v| t.label(&top1, v)).collect())
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (v, l) = axis(0.1273, 0.9993);
        assert!(close(&v, &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]), "{v:?}");
        assert_eq!(l, ["0%", "20%", "40%", "60%", "80%", "100%"]);
        let (v, l) = axis(0.85, 0.87);
        assert!(close(&v, &[0.85, 0.855, 0.86, 0.865, 0.87]), "{v:?}");
        assert_eq!(l, ["85%", "85.5%", "86%", "86.5%", "87%"]);
        let (_, l) = axis(0.41, 0.5);
        assert_eq!(l, ["40%", "42%", "44%", "46%", "48%", "50%"]);
        let (_, l) = axis(0.405, 0.445);
        assert_eq!(l, ["40%", "41%", "42%", "43%", "44%", "45%"]);
        // Snapped outward: the first tick at or below lo, the last at or above hi.
        for (lo, hi) in [(0.1273, 0.9993), (0.85, 0.87), (-3.7, -0.2), (-0.35, 0.12), (1234.0, 4711.0), (1e-7, 3e-7)] {
            let t = Ticks::new(lo, hi);
            assert!(t.lo() <= lo && t.hi() >= hi && (4.0..=6.0).contains(&t.count()), "{lo}..{hi}: {t:?}");
            let m = t.step / 10f64.powf(t.step.log10().floor());
            assert!([1.0, 2.0, 5.0].iter().any(|r| (m - r).abs() < 1e-9), "{lo}..{hi}: step {}", t.step);
        }
    }

    #[test]
    fn ticks_of_negated_figures_point_and_odd_ranges() {
        // A negated RMSE: ticks at round values, labelled as the RMSE people read.
        let rmse = Task::Regression(crate::tasks::Regression { score: "rmse".into(), ..Default::default() });
        let t = Ticks::new(-0.35, -0.12);
        let labels: Vec<String> = t.values().map(|v| t.label(&rmse.score_figure(), v)).collect();
        assert_eq!(labels, ["0.35", "0.3", "0.25", "0.2", "0.15", "0.1"]);
        // A point gets a range around it; reversed and non-finite ranges are still ticked.
        let (v, l) = axis(0.5, 0.5);
        assert!(v.contains(&0.5) && (4..=6).contains(&v.len()), "{v:?}");
        assert_eq!(l, ["46%", "48%", "50%", "52%", "54%"]);
        assert_eq!(axis(0.0, 0.0).1, ["-10%", "-5%", "0%", "5%", "10%"]);
        assert_eq!(Ticks::new(0.9, 0.1), Ticks::new(0.1, 0.9));
        assert!(close(&axis(f64::NAN, 1.0).0, &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]));
        // No "-0" at zero.
        assert!(axis(-0.3, 0.2).1.contains(&"0%".to_string()));
    }
}
