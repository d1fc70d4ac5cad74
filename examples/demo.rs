//! The bundled demo: the whole `swa run` pipeline on the fixtures' small residual CNN, trained
//! for eight epochs by PyTorch (fixtures/make_fixtures.py).
//!
//!     pip install onnxruntime
//!     cargo run --release --example demo          # then open swa-demo/report.html

use std::path::{Path, PathBuf};

use std::num::NonZeroUsize;

use swa::evaluate::EvalOptions;
use swa::inputs::Selection;
use swa::pipeline::{run, RunOptions};
use swa::recalibrate::PassOptions;

fn main() -> std::process::ExitCode {
    match demo() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn demo() -> swa::Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cnn");
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "swa-demo".into()));
    let (report, _created_dirs) = run(&RunOptions {
        model: fixtures.join("model.onnx"),
        checkpoints: vec![fixtures.join("checkpoints")],
        selection: Selection { from: Some(4), ..Default::default() },
        pass: PassOptions {
            batch_size: NonZeroUsize::new(32).expect("non-zero"),
            ..PassOptions::new(fixtures.join("train.npy"))
        },
        eval: EvalOptions::new(fixtures.join("eval.npy"), fixtures.join("eval_labels.npy")),
        recalibrate_each: true,
        allow_missing_weights: false,
        key: None,
        soup: None,
        ensemble: false,
        swag: None,
        temperature: None,
        allow_nonfinite: false,
        out: out.clone(),
        force: true,
    })?;
    print!("{}", swa::report::markdown(&report));
    println!("\nOpen {} in a browser.", out.join("report.html").display());
    Ok(())
}
