//! A self-contained HTML page (no network): the tables and an inline SVG chart of accuracy per
//! checkpoint, stored and recalibrated statistics, with SWA before and after as lines.

use std::fmt::Write;

use super::{pct, points, Report};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The chart as an SVG element.
pub fn chart(r: &Report) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 360.0, 60.0, 180.0, 20.0, 50.0);
    let n = r.checkpoints.len().max(1);
    let mut values: Vec<f64> = r
        .checkpoints
        .iter()
        .flat_map(|c| std::iter::once(c.stored.top1).chain(c.recalibrated.as_ref().map(|x| x.top1)))
        .collect();
    values.extend([r.swa_stored.top1, r.swa_recalibrated.top1]);
    let lo = values.iter().copied().fold(1.0, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let pad = ((hi - lo) * 0.1).max(0.01);
    let (lo, hi) = ((lo - pad).max(0.0), (hi + pad).min(1.0));
    let x = |i: usize| left + (w - left - right) * if n == 1 { 0.5 } else { i as f64 / (n - 1) as f64 };
    let y = |v: f64| top + (h - top - bottom) * (1.0 - (v - lo) / (hi - lo).max(1e-9));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="top-1 accuracy per checkpoint">"#
    );
    let _ = write!(s, r##"<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>"##);
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##,
            w - right,
            left - 6.0,
            y(v) + 4.0,
            pct(v),
            y = y(v)
        );
    }
    for (i, c) in r.checkpoints.iter().enumerate() {
        let label = c.number.map_or_else(|| (i + 1).to_string(), |n| n.to_string());
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle" fill="#555">{}</text>"##,
            x(i),
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
    let series = [
        ("stored", "#1f77b4", r.checkpoints.iter().map(|c| Some(c.stored.top1)).collect::<Vec<_>>()),
        ("recalibrated", "#ff7f0e", r.checkpoints.iter().map(|c| c.recalibrated.as_ref().map(|x| x.top1)).collect()),
    ];
    for (name, color, vals) in &series {
        let pts: Vec<String> =
            vals.iter().enumerate().filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v)))).collect();
        if pts.is_empty() {
            continue;
        }
        let _ = write!(
            s,
            r#"<polyline class="series {name}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for (i, v) in vals.iter().enumerate() {
            if let Some(v) = v {
                let _ = write!(
                    s,
                    r#"<circle class="point {name}" data-checkpoint="{}" data-top1="{v:.6}" cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{}: {}</title></circle>"#,
                    escape(&r.checkpoints[i].name),
                    x(i),
                    y(*v),
                    escape(&r.checkpoints[i].name),
                    pct(*v)
                );
            }
        }
    }
    for (name, color, dash, v) in [
        ("swa-stored", "#7f7f7f", "6 4", r.swa_stored.top1),
        ("swa-recalibrated", "#2ca02c", "", r.swa_recalibrated.top1),
    ] {
        let _ = write!(
            s,
            r#"<line class="swa {name}" x1="{left}" x2="{}" y1="{yv:.1}" y2="{yv:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" data-top1="{v:.6}"/>"#,
            w - right,
            yv = y(v)
        );
    }
    let legend = [
        ("#1f77b4", "", "checkpoint, stored stats"),
        ("#ff7f0e", "", "checkpoint, recalibrated"),
        ("#7f7f7f", "6 4", "SWA, stored stats"),
        ("#2ca02c", "", "SWA, recalibrated"),
    ];
    for (k, (color, dash, label)) in legend.iter().enumerate() {
        let ly = top + 10.0 + 20.0 * k as f64;
        let _ = write!(
            s,
            r##"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}" font-size="11" fill="#333">{label}</text>"##,
            w - right + 10.0,
            w - right + 34.0,
            w - right + 40.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>");
    s
}

fn table(rows: &[Vec<String>], header: &[&str]) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", escape(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// The report as one self-contained HTML page.
pub fn html(r: &Report) -> String {
    let k = r.k;
    let topk = format!("top-{k}");
    let summary = table(
        &[
            vec![
                format!("best checkpoint: {} ({} statistics)", r.best.name, r.best.statistics),
                pct(r.best.top1),
                String::new(),
                String::new(),
            ],
            vec![
                "SWA, newest checkpoint's statistics".into(),
                pct(r.swa_stored.top1),
                pct(r.swa_stored.topk),
                format!("{:.4}", r.swa_stored.loss),
            ],
            vec![
                "SWA, recalibrated".into(),
                pct(r.swa_recalibrated.top1),
                pct(r.swa_recalibrated.topk),
                format!("{:.4}", r.swa_recalibrated.loss),
            ],
        ],
        &["model", "top-1", &topk, "loss"],
    );
    let rows: Vec<Vec<String>> = r
        .checkpoints
        .iter()
        .map(|c| {
            let (a, l) = c
                .recalibrated
                .as_ref()
                .map_or(("–".into(), "–".into()), |x| (pct(x.top1), format!("{:.4}", x.loss)));
            vec![
                c.name.clone(),
                if r.averaged.contains(&c.name) { "✓".into() } else { String::new() },
                pct(c.stored.top1),
                pct(c.stored.topk),
                format!("{:.4}", c.stored.loss),
                a,
                l,
            ]
        })
        .collect();
    let checkpoints = table(&rows, &["checkpoint", "in SWA", "top-1", &topk, "loss", "top-1 ++", "loss ++"]);
    let times = table(
        &r.timings.iter().map(|t| vec![t.stage.clone(), format!("{:.2}", t.seconds)]).collect::<Vec<_>>(),
        &["stage", "seconds"],
    );
    let gain_class = if r.gain_top1 >= 0.0 { "gain" } else { "loss" };
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
<p class="meta">Model <code>{model}</code> · {eval} held-out samples · recalibration: <code>{stats}</code> statistics, batch {batch}, {train} training samples · device {device}</p>
<p>Recalibrated SWA: <strong>{swa}</strong> top-1, <strong class="{gain_class}" id="gain">{gain}</strong> over the best checkpoint ({best}, {best_acc}).</p>
{chart}
<h2>Summary</h2>{summary}
<h2>Checkpoints</h2>{checkpoints}
<p class="meta">"++": the same weights with BatchNorm statistics recalibrated on the training samples.</p>
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
        swa = pct(r.swa_recalibrated.top1),
        gain = points(r.gain_top1),
        best = escape(&r.best.name),
        best_acc = pct(r.best.top1),
        chart = chart(r),
        tool = escape(&r.tool),
        json = serde_json::to_string(r).expect("report serialises").replace("</", "<\\/"),
    )
}
