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
    // Self-contained: nothing is fetched.
    assert!(!dom.contains("<script src") && !dom.contains("<link ") && !dom.contains("<img "));
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
