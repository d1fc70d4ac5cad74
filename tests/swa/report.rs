//! The report: snapshots of its Markdown and JSON (timings masked), and the HTML page in a real
//! headless browser (Debian's chromium, so those tests are ignored unless asked for), compared
//! with a reference screenshot.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;
use swa::report::Report;

/// One `swa run` shared by the report tests; the report with its timings set to zero.
fn report() -> &'static Report {
    static REPORT: OnceLock<(tempfile::TempDir, Report)> = OnceLock::new();
    &REPORT
        .get_or_init(|| {
            let dir = tmp();
            let out = dir.path().join("out");
            run_cnn(
                &fixture("cnn/checkpoints"),
                &out,
                &["--from", "4", "--stats", "torch", "--batch-size", "32", "--recalibrate-each"],
            )
            .assert()
            .success();
            let r: Report = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
            (dir, r.without_timings())
        })
        .1
}

fn rounded(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => serde_json::json!((n.as_f64().unwrap() * 1e4).round() / 1e4),
        serde_json::Value::Array(a) => a.into_iter().map(rounded).collect(),
        serde_json::Value::Object(o) => o.into_iter().map(|(k, v)| (k, rounded(v))).collect(),
        other => other,
    }
}

#[test]
fn markdown_snapshot() {
    insta::assert_snapshot!("report_md", swa::report::markdown(report()));
}

#[test]
fn json_snapshot() {
    let mut r = report().clone();
    r.tool = "swa (version masked)".into();
    insta::assert_json_snapshot!("report_json", rounded(serde_json::to_value(&r).unwrap()));
}

/// The report's figures against PyTorch's for the same run (fixtures/make_report_expected.py:
/// each checkpoint with its stored statistics and with update_bn's over train.npy in batches of
/// 32, and AveragedModel over epochs 4..8 before and after update_bn), so that the snapshots
/// above hold figures that are right, not only figures that did not change.
///
/// Counts (top-1, top-5, non-finite) must be equal: a sample changes its count only if its logits
/// move by the gap between the label's logit and the one that decides its rank, and the smallest
/// such gap in PyTorch's logits is 8e-5 (`margin` in the fixture), far above float32 rounding.
/// The mean loss is compared within 1e-4 relative: ONNX Runtime's float32 kernels sum in another
/// order than PyTorch's, and `--stats torch` promises update_bn's statistics within 1e-4 relative
/// (the tolerance of recalibrate::torch_mode_matches_update_bn_cnn_and_mlp), so a loss can move
/// by that much without anything being wrong; today they agree within 2e-7, while a wrong
/// statistic or a mis-bound weight moves a loss by 1e-2 or more.
#[test]
fn per_checkpoint_and_swa_figures_equal_pytorchs() {
    const LOSS_REL: f64 = 1e-4;
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("cnn/expected/report_figures.json")).unwrap()).unwrap();
    let report = serde_json::to_value(report()).unwrap();
    let k = expected["k"].as_u64().unwrap();
    assert_eq!(report["k"], k);
    assert_eq!(report["train_samples"], expected["train_samples"]);
    assert_eq!(report["batch_size"], expected["batch_size"]);
    let mut worst = 0.0f64;
    let mut compare = |what: &str, got: &serde_json::Value, want: &serde_json::Value| {
        let n = want["samples"].as_u64().unwrap();
        assert_eq!(got["samples"], n, "{what}: samples");
        assert_eq!(got["correct"], want["correct"], "{what}: top-1 correct");
        assert_eq!(got["nonfinite"], want["nonfinite"], "{what}: non-finite");
        let topk = got["topk"].as_f64().unwrap();
        let correct_k = want["correct_k"].as_u64().unwrap();
        assert_eq!((topk * n as f64).round() as u64, correct_k, "{what}: top-{k} correct ({topk} of {n})");
        let top1 = got["top1"].as_f64().unwrap();
        assert!((top1 - got["correct"].as_f64().unwrap() / n as f64).abs() < 1e-12, "{what}: top-1 {top1}");
        let (a, b) = (got["loss"].as_f64().unwrap(), want["loss"].as_f64().unwrap());
        let rel = (a - b).abs() / b.abs();
        assert!(rel <= LOSS_REL, "{what}: loss {a} vs PyTorch's {b} ({rel:.1e} relative, more than {LOSS_REL:.0e})");
        worst = worst.max(rel);
    };
    let rows = report["checkpoints"].as_array().unwrap();
    let want_rows = expected["checkpoints"].as_array().unwrap();
    assert_eq!(rows.len(), want_rows.len(), "checkpoints");
    for (got, want) in rows.iter().zip(want_rows) {
        let name = want["name"].as_str().unwrap();
        assert_eq!(got["name"], name);
        compare(&format!("{name}, stored statistics"), &got["stored"], &want["stored"]);
        compare(&format!("{name}, recalibrated"), &got["recalibrated"], &want["recalibrated"]);
    }
    compare("SWA, stored statistics", &report["swa_stored"], &expected["swa_stored"]);
    compare("SWA, recalibrated", &report["swa_recalibrated"], &expected["swa_recalibrated"]);
    eprintln!("report figures: losses within {worst:.1e} relative of PyTorch's");
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(p.into());
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Chromium; fails the test without it (the browser tests are ignored unless asked for).
fn browser() -> PathBuf {
    chromium()
        .expect("this test needs chromium (apt-get install chromium, or CHROMIUM=/path/to/it), or leave it ignored")
}

fn headless(browser: &Path, args: &[String]) -> std::process::Output {
    let profile = tmp();
    std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .unwrap()
}

fn page() -> (tempfile::TempDir, PathBuf) {
    let dir = tmp();
    let html = dir.path().join("report.html");
    std::fs::write(&html, swa::report::html(report())).unwrap();
    (dir, html)
}

#[test]
#[ignore = "needs chromium: renders report.html in a headless browser (apt-get install chromium)"]
fn html_renders_in_a_browser_with_a_point_per_checkpoint() {
    let browser = browser();
    let (_dir, html) = page();
    let out = headless(&browser, &["--dump-dom".into(), format!("file://{}", html.display())]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<svg id=\"chart\""),
        "no chart in the rendered DOM: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checkpoints = report().checkpoints.len();
    assert_eq!(dom.matches("class=\"point stored\"").count(), checkpoints);
    assert_eq!(dom.matches("class=\"point recalibrated\"").count(), checkpoints);
    assert_eq!(dom.matches("class=\"swa ").count(), 2);
    // The score axis is ticked at round values.
    let ticks = texts(&dom, "<text class=\"y-tick\"");
    assert_round(&ticks);
    // A reliability diagram per model with confidence bins, a bar per bin with samples.
    let binned: Vec<(String, usize)> = report()
        .scored_models()
        .into_iter()
        .filter_map(|(name, s)| s.reliability().map(|bins| (name, bins.iter().filter(|b| b.samples > 0).count())))
        .collect();
    assert_eq!(binned.len(), 2 * checkpoints + 2, "every model of this run has confidence bins");
    assert_eq!(dom.matches("<svg class=\"reliability\"").count(), binned.len());
    assert_eq!(dom.matches("<rect class=\"bin\"").count(), binned.iter().map(|(_, n)| n).sum::<usize>());
    for (name, _) in &binned {
        assert!(dom.contains(&format!("<svg class=\"reliability\" data-model=\"{name}\"")), "no diagram of {name}");
    }
    // Self-contained: nothing is fetched.
    assert!(!dom.contains("<script src") && !dom.contains("<link ") && !dom.contains("<img "));
}

/// The text of every element of `dom` that opens with `open`, in order.
fn texts<'a>(dom: &'a str, open: &str) -> Vec<&'a str> {
    dom.split(open).skip(1).filter_map(|t| Some(t.split_once('>')?.1.split_once('<')?.0)).collect()
}

/// Checks that axis labels read as round values: 4 to 6 of them, evenly spaced by 1, 2 or 5 ×
/// 10ⁿ, each a multiple of that step, with no needless decimals (`40%`, not `40.00%`).
fn assert_round(labels: &[&str]) {
    assert!((4..=6).contains(&labels.len()), "{labels:?}");
    let values: Vec<f64> = labels.iter().map(|l| l.trim_end_matches('%').parse().expect("a number")).collect();
    let step = (values[1] - values[0]).abs();
    let mantissa = step / 10f64.powf(step.log10().floor());
    assert!([1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6), "step {step} of {labels:?}");
    for (pair, label) in values.windows(2).zip(labels) {
        assert!(((pair[1] - pair[0]).abs() - step).abs() < 1e-6 * step, "uneven ticks {labels:?}");
        assert!(((pair[0] / step) - (pair[0] / step).round()).abs() < 1e-6, "{label} is not a multiple of {step}");
    }
    for label in labels {
        let number = label.trim_end_matches('%');
        assert!(!(number.contains('.') && number.ends_with('0')), "needless decimals in {label}");
    }
}

fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let rgb: Vec<u8> = match info.color_type {
        png::ColorType::Rgba => buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Rgb => buf,
        other => panic!("unexpected PNG color type {other:?}"),
    };
    (info.width, info.height, rgb)
}

#[test]
#[ignore = "needs chromium: renders report.html in a headless browser (apt-get install chromium)"]
fn screenshot_matches_the_reference() {
    let browser = browser();
    let (dir, html) = page();
    let shot = dir.path().join("shot.png");
    let out = headless(
        &browser,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,1500".into(),
            format!("file://{}", html.display()),
        ],
    );
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/swa/snapshots/report.png");
    if std::env::var_os("SWA_UPDATE_SCREENSHOT").is_some() {
        std::fs::copy(&shot, &reference).unwrap();
    }
    let (w, h, got) = decode(&shot);
    let (rw, rh, want) = decode(&reference);
    assert_eq!((w, h), (rw, rh), "screenshot size");
    // A page that lost its chart or a table differs in far more than 1% of its pixels.
    let differing = got
        .chunks_exact(3)
        .zip(want.chunks_exact(3))
        .filter(|(a, b)| a.iter().zip(b.iter()).any(|(x, y)| x.abs_diff(*y) > 48))
        .count();
    let fraction = differing as f64 / (w * h) as f64;
    assert!(
        fraction < 0.01,
        "{:.2}% of the pixels differ from tests/swa/snapshots/report.png (SWA_UPDATE_SCREENSHOT=1 rewrites it)",
        fraction * 100.0
    );
}
