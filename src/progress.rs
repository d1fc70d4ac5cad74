//! Progress bars on a terminal; hidden when stderr is not one or when asked to be quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

fn bar(len: Option<u64>, template: &str, message: &str, quiet: bool) -> ProgressBar {
    let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(len, target);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.set_message(message.to_string());
    bar
}

/// A bar counting bytes.
pub fn bytes_bar(len: u64, message: &str, quiet: bool) -> ProgressBar {
    bar(Some(len), "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}", message, quiet)
}

/// A bar counting samples, of `len` where the number is known.
pub fn samples_bar(len: Option<u64>, message: &str, quiet: bool) -> ProgressBar {
    match len {
        Some(_) => bar(len, "{msg:>12} [{bar:30}] {pos}/{len} samples {per_sec} ETA {eta}", message, quiet),
        None => bar(None, "{msg:>12} {spinner} {pos} samples {per_sec}", message, quiet),
    }
}
