//! The terminal reporter: a progress bar of cells (done/total, current cell, elapsed, ETA).

use std::sync::Mutex;
use std::time::Duration;

use harness_core::{CellStatus, Event, Reporter};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) struct ProgressReporter {
    bar: ProgressBar,
    failed: Mutex<usize>,
}

impl ProgressReporter {
    /// A bar on stderr; hidden when stderr is not a terminal or `hidden` is set.
    pub(crate) fn new(hidden: bool) -> Self {
        let target = if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cells {prefix} ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        ProgressReporter {
            bar,
            failed: Mutex::new(0),
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    pub(crate) fn bar(&self) -> &ProgressBar {
        &self.bar
    }
}

impl Reporter for ProgressReporter {
    fn on_event(&self, event: &Event) {
        match event {
            Event::RunStarted {
                total_cells,
                already_done,
                ..
            } => {
                // Drawing starts here, after what the CLI prints before the run.
                self.bar.enable_steady_tick(Duration::from_millis(200));
                self.bar.set_length(*total_cells as u64);
                self.bar.set_position(0);
                if *already_done > 0 {
                    self.bar.set_message(format!("{already_done} done earlier"));
                }
            }
            Event::StageStarted { stage } => {
                self.bar.set_message(format!("{stage:?}").to_lowercase())
            }
            Event::CellStarted { cell, .. } => self.bar.set_message(cell.to_string()),
            Event::CellSkipped { .. } => self.bar.inc(1),
            Event::CellFinished { status, .. } => {
                self.bar.inc(1);
                if *status != CellStatus::Succeeded {
                    let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                    *f += 1;
                    self.bar.set_prefix(format!("{f} failed"));
                }
            }
            Event::RunFinished { .. } => self.bar.set_message("done"),
            _ => {}
        }
    }
}

/// A tracing writer that prints above the progress bar instead of through it.
#[derive(Clone)]
pub(crate) struct BarWriter(pub(crate) ProgressBar);

impl std::io::Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BarWriter {
    type Writer = BarWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
