//! `swa inspect`.

use std::fmt::Write;
use std::path::PathBuf;

use clap::Args;

use super::args::{JsonArgs, KeyArgs};
use super::{output, Outcome};
use swa::{Error, Result};

/// `swa inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A checkpoint (torch.save file, .safetensors, sharded index or its directory) or an .onnx model.
    pub file: PathBuf,
    /// Which state dict.
    #[command(flatten)]
    pub read: KeyArgs,
    /// Show how this checkpoint's names bind to the ONNX model FILE.
    #[arg(long, value_name = "CHECKPOINT")]
    pub against: Option<PathBuf>,
    /// Output format.
    #[command(flatten)]
    pub out: JsonArgs,
}

impl InspectArgs {
    /// Runs `swa inspect`.
    pub fn run(&self) -> Result<Outcome> {
        if self.against.is_some() && self.file.extension().is_none_or(|e| e != "onnx") {
            return Err(Error::usage("--against binds a checkpoint to an ONNX model: FILE must be .onnx"));
        }
        let v = swa::inspect::inspect(&self.file, self.read.key.as_deref(), self.against.as_deref())?;
        if self.out.json {
            return Ok(Outcome { stdout: output::json(&v), code: 0, failure: None });
        }
        let mut o = String::new();
        let total: usize = v.tensors.iter().map(|t| t.bytes).sum();
        let _ = writeln!(o, "{}: {} tensors, {} bytes", self.file.display(), v.tensors.len(), total);
        if let Some(n) = v.number {
            let _ = writeln!(o, "number: {n} (from the name; what --from/--to/--last select by)");
        }
        for t in v.contents.values() {
            let _ = writeln!(o, "{} file; state dicts (--key):", v.format);
            for (key, count) in &t.state_dicts {
                let chosen = if t.chosen.as_deref() == Some(key.as_str()) { "  <- read" } else { "" };
                let what = t.what.get(key).map_or(String::new(), |w| format!("  ({w})"));
                let _ = writeln!(
                    o,
                    "  {:<40} {count} tensors{chosen}{what}",
                    if key.is_empty() { "(top level)" } else { key }
                );
            }
            if !t.other_keys.is_empty() {
                let _ = writeln!(o, "other keys: {}", t.other_keys.join(", "));
            }
        }
        for t in &v.tensors {
            let _ = writeln!(o, "  {:<50} {:>5} {:<20} {:>12}", t.name, t.dtype, format!("{:?}", t.shape), t.bytes);
        }
        let _ = writeln!(o, "BatchNorm layers: {}", v.batchnorm.len());
        for l in &v.batchnorm {
            let _ = writeln!(o, "  {l}");
        }
        if let (Some(b), Some(against)) = (&v.binding, &self.against) {
            let _ = writeln!(
                o,
                "binding {}: {} bound, {} unmatched, {} integer tensors skipped, {} model weights unbound",
                against.display(),
                b.bound.len(),
                b.unmatched.len(),
                b.skipped.len(),
                b.unbound.len()
            );
            for (c, g) in b.bound.iter().filter(|(c, g)| c != g) {
                let _ = writeln!(o, "  {c} -> {g}");
            }
            for u in &b.unmatched {
                let _ = writeln!(o, "  unmatched: {u}");
            }
            for u in &b.unbound {
                let _ = writeln!(o, "  unbound: {u}");
            }
        }
        if !v.metadata.is_empty() {
            let _ = writeln!(o, "metadata:");
            for (k, val) in &v.metadata {
                let _ = writeln!(o, "  {k}: {val}");
            }
        }
        Ok(Outcome { stdout: o, code: 0, failure: None })
    }
}
