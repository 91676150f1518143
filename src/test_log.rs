//! A logger for the unit tests: records every line with the name of the thread that
//! logged it, so a test can count what one slot's watcher thread said.

use std::sync::OnceLock;

use parking_lot::Mutex;

struct Recorder {
    lines: Mutex<Vec<(String, String)>>,
}

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        self.lines
            .lock()
            .push((thread, format!("{}", record.args())));
    }

    fn flush(&self) {}
}

static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();

fn recorder() -> &'static Recorder {
    RECORDER.get_or_init(|| {
        let recorder: &'static Recorder = Box::leak(Box::new(Recorder {
            lines: Mutex::new(Vec::new()),
        }));
        // Another logger may be installed already (then lines go there, and tests
        // that count them fail loudly rather than pass).
        let _ = log::set_logger(recorder);
        log::set_max_level(log::LevelFilter::Trace);
        recorder
    })
}

/// Starts recording (idempotent).
pub(crate) fn init() {
    recorder();
}

/// Runs `f` on a thread named `thread`, recording, and waits for it: what it logs is
/// then [`count`]ed apart from the lines of other tests running meanwhile.
pub(crate) fn on_thread(thread: &str, f: impl FnOnce() + Send + 'static) {
    init();
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

/// The lines logged so far by the thread named `thread` that contain `needle`.
pub(crate) fn count(thread: &str, needle: &str) -> usize {
    recorder()
        .lines
        .lock()
        .iter()
        .filter(|(t, line)| t == thread && line.contains(needle))
        .count()
}
