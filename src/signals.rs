//! The one table mapping OS signals to [`Control`] commands, with Resque's
//! meanings except that TERM is graceful (the Unix and systemd convention;
//! Ruby kills the running child on TERM):
//!
//! | signal | effect |
//! | --- | --- |
//! | TERM, INT | stop taking jobs; running ones get the shutdown timeout, then go back to the head of their queue; exit 0. A second TERM/INT puts them back at once. |
//! | QUIT | stop taking jobs; finish running ones, however long; exit 0 |
//! | USR1 | cancel running jobs (recorded as failures, as Resque records a killed child); carry on |
//! | USR2 | pause: take no new jobs |
//! | CONT | resume |
//! | HUP | reload: re-read the configuration; if it is valid, stop taking jobs, finish running ones, start again with it (see [`crate::reload`]) |

use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::shutdown::{Control, Controller};

/// Listen for the signals of the table and forward them to `controller`
/// until the process ends. Fails if a handler cannot be installed.
pub fn forward(controller: Controller) -> std::io::Result<()> {
    let table = [
        (SignalKind::terminate(), "TERM", Control::Stop),
        (SignalKind::interrupt(), "INT", Control::Stop),
        (SignalKind::quit(), "QUIT", Control::StopAfterJobs),
        (SignalKind::user_defined1(), "USR1", Control::CancelJobs),
        (SignalKind::user_defined2(), "USR2", Control::Pause),
        (
            SignalKind::from_raw(libc_sigcont()),
            "CONT",
            Control::Resume,
        ),
        (SignalKind::hangup(), "HUP", Control::Reload),
    ];
    for (kind, name, control) in table {
        let mut stream = signal(kind)?;
        let controller = controller.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                info!(signal = name, ?control, "signal received");
                controller.send(control);
            }
        });
    }
    Ok(())
}

/// SIGCONT's number: 18 on Linux x86, ARM and most others; 25 on MIPS, 19 on
/// SPARC/Alpha (not supported targets).
const fn libc_sigcont() -> i32 {
    18
}
