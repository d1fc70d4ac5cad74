//! `swa doctor`: what `swa` finds of ONNX Runtime and CUDA, for people and bug reports.

use std::fmt::Write;

use clap::Args;

use super::Outcome;
use swa::runtime::cuda::{Location, CUDA_MAJOR, CUDNN_MAJOR};
use swa::runtime::{diagnose, Diagnosis};

/// `swa doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Output format.
    #[command(flatten)]
    pub out: super::args::JsonArgs,
}

/// Runs `swa doctor`: exit code 0 when ONNX Runtime was found and loads, 1 when it was not found or
/// does not load (a CI step `swa doctor` then fails where every later step would); the report is
/// printed either way.
pub fn run(a: &DoctorArgs) -> Outcome {
    let d = diagnose();
    let stdout = if a.out.json {
        let mut v = serde_json::to_value(&d).expect("serialisable");
        v["swa"] = env!("CARGO_PKG_VERSION").into();
        serde_json::to_string_pretty(&v).expect("serialisable") + "\n"
    } else {
        text(&d)
    };
    let usable = d.onnxruntime.found.is_some() && d.load_error.is_none();
    Outcome { stdout, code: if usable { 0 } else { 1 }, failure: None }
}

fn text(d: &Diagnosis) -> String {
    let mut s = format!("swa {}\n\nONNX Runtime\n", env!("CARGO_PKG_VERSION"));
    match &d.onnxruntime.found {
        Some(found) => {
            let _ = writeln!(s, "  library:    {}", found.path.display());
            let _ = writeln!(s, "  found by:   {}", found.rule);
            let _ = writeln!(s, "  version:    {}", d.version.as_deref().unwrap_or("unknown (no OrtGetApiBase)"));
            if let Some(e) = &d.load_error {
                let _ = writeln!(s, "  load error: {e}");
            }
            let providers = if d.providers.is_empty() { "none".to_string() } else { d.providers.join(", ") };
            let _ = writeln!(s, "  providers:  {providers}");
            let cuda = match &d.cuda_provider {
                Some(p) => p.display().to_string(),
                None => "none (libonnxruntime_providers_cuda.so is not beside it: this is a CPU build)".into(),
            };
            let _ = writeln!(s, "  CUDA provider: {cuda}");
            if !d.python_packages.is_empty() {
                let _ = writeln!(s, "  pip packages: {}", d.python_packages.join(", "));
            }
            if d.python_packages.len() > 1 {
                let _ = writeln!(
                    s,
                    "  warning: more than one ONNX Runtime package is installed in that environment; they overwrite \
                     each other's files: uninstall all of them and install one (onnxruntime or onnxruntime-gpu)"
                );
            }
        }
        None => {
            let _ = writeln!(s, "  not found; looked in:");
            for (rule, p) in &d.onnxruntime.looked {
                let _ = writeln!(s, "    {} ({rule})", p.display());
            }
            let _ = writeln!(
                s,
                "  install it with `pip install onnxruntime` (onnxruntime-gpu for CUDA), or set ORT_DYLIB_PATH"
            );
        }
    }
    for skipped in &d.onnxruntime.skipped {
        let _ = writeln!(s, "  {skipped}");
    }
    if !d.onnxruntime.skipped.is_empty() {
        let _ = writeln!(
            s,
            "  (a library only root and you can write is loaded; to load one from elsewhere on purpose, set \
             ORT_DYLIB_PATH to it)"
        );
    }
    let _ = writeln!(s, "\nCUDA {CUDA_MAJOR} / cuDNN {CUDNN_MAJOR} libraries (loaded for --device cuda)");
    if d.cuda.site_packages.is_empty() {
        let _ = writeln!(s, "  site-packages searched: none (no Python environment found)");
    } else {
        let dirs: Vec<String> = d.cuda.site_packages.iter().map(|p| p.display().to_string()).collect();
        let _ = writeln!(s, "  site-packages searched: {}", dirs.join(", "));
    }
    for l in &d.cuda.libraries {
        let where_ = match &l.location {
            Location::Pip(p) => p.display().to_string(),
            Location::System => "the system's library path".to_string(),
            Location::Missing if l.required => format!("not found: pip install \"{}\"", l.package),
            Location::Missing => "not found (optional)".to_string(),
        };
        let _ = writeln!(s, "  {:<18} {where_}", l.soname);
        for other in &l.other_versions {
            let _ = writeln!(s, "  {:<18} (another major version: {})", "", other.display());
        }
        if let Some(e) = &l.load_error {
            let _ = writeln!(s, "  {:<18} failed to load: {e}", "");
        }
    }
    if d.cuda.problems().next().is_some() {
        let _ = writeln!(s, "  --device cuda needs the missing ones: {}", swa::runtime::cuda::ALL_PACKAGES);
    }
    s
}
