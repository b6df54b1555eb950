//! Where a shutdown has got to, shared by the listeners, the request records and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// The stages of a shutdown, in order (see `RunningServer::shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Serving = 0,
    /// Still accepting for `server.drain_delay`, but telling balancers and clients to go.
    Draining = 1,
    /// No longer accepting; in-flight requests finish within `server.shutdown_timeout`.
    Stopping = 2,
    /// Out of time: the connections still open are cut.
    Cutting = 3,
}

/// The current [`Stage`], only ever moved forward; cloned handles see the same stage.
#[derive(Debug, Clone)]
pub struct Lifecycle(Arc<AtomicU8>);

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle(Arc::new(AtomicU8::new(Stage::Serving as u8)))
    }
}

impl Lifecycle {
    /// Moves the shutdown on to `stage` (never back).
    pub fn enter(&self, stage: Stage) {
        self.0.fetch_max(stage as u8, Ordering::SeqCst);
    }

    /// Not ready: `/readyz` answers 503 and HTTP/1 answers close their connection.
    pub fn is_draining(&self) -> bool {
        self.reached(Stage::Draining)
    }

    /// The listeners have stopped accepting: open connections close once idle.
    pub fn is_stopping(&self) -> bool {
        self.reached(Stage::Stopping)
    }

    /// The drain ran out of time: what is still open is cut (and settled, and recorded).
    pub fn is_cut(&self) -> bool {
        self.reached(Stage::Cutting)
    }

    fn reached(&self, stage: Stage) -> bool {
        self.0.load(Ordering::SeqCst) >= stage as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_only_move_forward_and_clones_share_them() {
        let lifecycle = Lifecycle::default();
        let seen_elsewhere = lifecycle.clone();
        assert!(!seen_elsewhere.is_draining());
        lifecycle.enter(Stage::Stopping);
        assert!(seen_elsewhere.is_draining() && seen_elsewhere.is_stopping() && !seen_elsewhere.is_cut());
        lifecycle.enter(Stage::Draining);
        assert!(seen_elsewhere.is_stopping(), "a later stage is never undone");
        lifecycle.enter(Stage::Cutting);
        assert!(seen_elsewhere.is_cut());
    }
}
