//! Controlling a running worker: the commands a signal (or a test, or an
//! embedding program) sends, and the report of how it stopped.

use tokio::sync::mpsc;

/// A command to a running worker. Each OS signal maps to one (see
/// [`crate::signals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop taking jobs, let running ones finish within the shutdown timeout,
    /// put the rest back at the head of their queues, unregister, exit. A
    /// second `Stop` puts running jobs back at once.
    Stop,
    /// Stop taking jobs, finish every running job however long it takes,
    /// unregister, exit.
    StopAfterJobs,
    /// Cancel running jobs (recorded as failures) and carry on.
    CancelJobs,
    /// Take no new jobs until [`Control::Resume`].
    Pause,
    /// Take jobs again.
    Resume,
    /// Re-read the configuration: stop taking jobs, let running ones finish
    /// (however long), unregister, and start again with the new
    /// configuration (see [`crate::reload`]).
    Reload,
}

impl Control {
    /// Apply a command received before the worker runs (while waiting for
    /// Redis): pause and resume set `paused`, a cancel has nothing to act
    /// on. Returns `true` for a stop (or a gone controller), which ends the
    /// start-up.
    pub fn before_start(msg: Option<Control>, paused: &mut bool) -> bool {
        match msg {
            Some(Control::Stop | Control::StopAfterJobs) | None => return true,
            Some(Control::Pause) => *paused = true,
            Some(Control::Resume) => *paused = false,
            // A reload waits until the worker runs (see `crate::reload`).
            Some(Control::CancelJobs | Control::Reload) => {}
        }
        false
    }
}

/// The sending side, cloneable.
#[derive(Debug, Clone)]
pub struct Controller(mpsc::UnboundedSender<Control>);

impl Controller {
    /// A controller and the receiver a worker runs with.
    pub fn new() -> (Controller, mpsc::UnboundedReceiver<Control>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Controller(tx), rx)
    }

    /// Send a command; ignored once the worker has stopped.
    pub fn send(&self, control: Control) {
        let _ = self.0.send(control);
    }
}

/// Why a worker stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A [`Control::Stop`] or [`Control::StopAfterJobs`].
    Requested,
    /// Draining mode (interval 0) found every queue empty.
    Drained,
    /// Every controller was dropped.
    ControllerGone,
    /// A [`Control::Reload`]: every running job finished; the worker starts
    /// again with its new configuration.
    Reload,
}

/// How a worker stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// Why.
    pub reason: StopReason,
    /// Jobs whose outcome was recorded.
    pub performed: u64,
    /// Jobs put back at the head of their queue at the deadline.
    pub put_back: usize,
    /// Worker ids left registered because their status still held a job
    /// that could not be put back (Redis unreachable); recovery finds them.
    pub left_registered: Vec<String>,
}
