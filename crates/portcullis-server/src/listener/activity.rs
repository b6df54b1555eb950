//! What one connection is doing, and so when it must be closed: requests in flight, when it last
//! went idle, and when the request head being read began. Updated by the connection's reader
//! (head events), its service (requests) and its response bodies; read by its watchdog.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::gate::HeadEvents;

/// No request head is being read.
const NO_HEAD: u64 = u64::MAX;

#[derive(Debug)]
pub struct Activity {
    /// When the connection was accepted; the other times are milliseconds after it.
    origin: Instant,
    in_flight: AtomicU32,
    requests: AtomicU64,
    idle_since_ms: AtomicU64,
    head_since_ms: AtomicU64,
    http2: AtomicBool,
}

/// The connection's deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Accept (or a head's first byte) to a complete request head.
    pub head: Duration,
    /// No request in flight.
    pub idle: Duration,
}

/// When the connection must close, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// A request is being served: no deadline of the connection's own.
    Busy,
    /// No complete request head by then: close at once (there is nothing to finish).
    Head(Instant),
    /// Idle until then: close gracefully (HTTP/2 says GOAWAY first).
    Idle(Instant),
}

impl Activity {
    pub fn new(origin: Instant) -> Activity {
        Activity {
            origin,
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(NO_HEAD),
            http2: AtomicBool::new(false),
        }
    }

    /// A request reached the service.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A request's response was sent (or given up); the last one makes the connection idle.
    pub fn request_finished(&self, now: Instant) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since_ms.store(self.millis(now), Ordering::Release);
        }
    }

    /// When this connection must close if nothing changes.
    pub fn deadline(&self, timeouts: Timeouts) -> Deadline {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Deadline::Busy;
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            // Counted from accept, whatever the protocol: no byte, half a preface, a preface and
            // silence, or a head trickling in.
            return Deadline::Head(self.origin + timeouts.head);
        }
        let head_since = self.head_since_ms.load(Ordering::Acquire);
        if head_since != NO_HEAD {
            return Deadline::Head(self.at(head_since) + timeouts.head);
        }
        Deadline::Idle(self.at(self.idle_since_ms.load(Ordering::Acquire)) + timeouts.idle)
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_millis()).unwrap_or(NO_HEAD - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.origin + Duration::from_millis(millis)
    }
}

impl HeadEvents for Activity {
    fn head_started(&self) {
        // Only the first byte of a head starts its clock; HTTP/2 has no heads to time here.
        if !self.http2.load(Ordering::Relaxed) {
            let now = self.millis(Instant::now());
            let _ = self.head_since_ms.compare_exchange(NO_HEAD, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn head_complete(&self) {
        self.head_since_ms.store(NO_HEAD, Ordering::Release);
    }

    fn is_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
        self.head_since_ms.store(NO_HEAD, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts { head: Duration::from_secs(10), idle: Duration::from_secs(60) };

    #[test]
    fn a_silent_connection_must_send_a_head_within_the_head_timeout_of_accept() {
        let origin = Instant::now();
        let activity = Activity::new(origin);
        assert_eq!(activity.deadline(TIMEOUTS), Deadline::Head(origin + TIMEOUTS.head));
        activity.is_http2();
        assert_eq!(activity.deadline(TIMEOUTS), Deadline::Head(origin + TIMEOUTS.head), "a bare preface too");
    }

    #[test]
    fn a_busy_connection_has_no_deadline_and_an_idle_one_the_idle_timeout() {
        let origin = Instant::now();
        let activity = Activity::new(origin);
        activity.request_started();
        activity.request_started();
        assert_eq!(activity.deadline(TIMEOUTS), Deadline::Busy);
        let done = origin + Duration::from_secs(5);
        activity.request_finished(done);
        assert_eq!(activity.deadline(TIMEOUTS), Deadline::Busy, "one is still in flight");
        activity.request_finished(done);
        assert_eq!(activity.deadline(TIMEOUTS), Deadline::Idle(done + TIMEOUTS.idle));
    }

    #[test]
    fn a_head_begun_on_a_kept_alive_connection_has_the_head_timeout() {
        let origin = Instant::now() - Duration::from_secs(100);
        let activity = Activity::new(origin);
        activity.request_started();
        activity.request_finished(origin + Duration::from_secs(1));
        let before = Instant::now();
        activity.head_started();
        match activity.deadline(TIMEOUTS) {
            Deadline::Head(at) => {
                assert!(at >= before + TIMEOUTS.head - Duration::from_millis(1) && at <= Instant::now() + TIMEOUTS.head)
            }
            other => panic!("expected a head deadline, got {other:?}"),
        }
        activity.head_complete();
        assert!(matches!(activity.deadline(TIMEOUTS), Deadline::Idle(_)));
    }
}
