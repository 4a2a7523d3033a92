//! Progress bars for long runs (indicatif), drawn on stderr only when stderr is a terminal,
//! so piped or captured output (CI, `--json` runs redirected to a file) stays clean.

use std::borrow::Cow;
use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar's layout: what runs now, a bar, the count, the rate and the time left.
const TEMPLATE: &str = "{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}";

/// A bar of `len` steps labelled `what`, drawn on stderr; hidden (every call on it a no-op)
/// when stderr is not a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    bar_on(len, what, std::io::stderr().is_terminal())
}

/// As [`bar`], with the choice made by the caller: drawn on stderr when `visible`, hidden
/// otherwise.
pub fn bar_on(len: u64, what: &str, visible: bool) -> ProgressBar {
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let style = ProgressStyle::with_template(TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), target)
        .with_style(style)
        .with_message(Cow::Owned(what.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_when_not_visible_and_still_counts() {
        let pb = bar_on(10, "send_lat", false);
        assert!(pb.is_hidden());
        pb.inc(3);
        assert_eq!(pb.position(), 3);
        assert_eq!(pb.length(), Some(10));
        assert_eq!(pb.message(), "send_lat");
        pb.finish_and_clear();
    }

    #[test]
    fn template_parses() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }
}
