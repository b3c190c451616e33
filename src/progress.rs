//! Progress bars (indicatif) for long work: imports and recomputes.

use indicatif::{ProgressBar, ProgressStyle};
use renkei_ingest::import::Progress;
use std::sync::Mutex;

/// A byte-based bar on stderr; hidden when stderr is not a terminal.
pub struct BarProgress {
    bar: Mutex<Option<ProgressBar>>,
}

impl BarProgress {
    pub fn new() -> Self {
        Self { bar: Mutex::new(None) }
    }

    fn with_bar(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        let mut guard = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }
}

impl Default for BarProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for BarProgress {
    fn start(&self, phase: &str, total_bytes: u64) {
        let bar = ProgressBar::new(total_bytes);
        let style =
            ProgressStyle::with_template("{prefix:>10} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(phase.to_string());
        self.with_bar(|slot| *slot = Some(bar));
    }

    fn set_position(&self, bytes: u64) {
        self.with_bar(|slot| {
            if let Some(bar) = slot {
                bar.set_position(bytes);
            }
        });
    }

    fn finish(&self) {
        self.with_bar(|slot| {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
        });
    }
}
