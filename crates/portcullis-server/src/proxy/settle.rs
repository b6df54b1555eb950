//! Settlement: when a request ends, however it ends, its reservation is replaced by what it
//! really used and that use is recorded. Runs exactly once per admitted request: from the
//! response body's end or drop, so a client hanging up mid-body cannot skip it, or — when the
//! client left before the answer, and the request was dropped with it — from the drop of the
//! settlement itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use portcullis_audit::Submitted;
use portcullis_limits::{Limiter, Price, Reservation, Usage};
use portcullis_store::{AuditDecision, UsageRecord};
use time::OffsetDateTime;

use super::capture::Capture;
use super::meter::{Ending, Outcome};
use crate::exchange::{Billed, Exchange};
use crate::usage::UsageRecorder;

/// Prompt tokens per byte when the upstream reports no usage: about four bytes a token for
/// English text, a fair estimate where the reservation used the strict one-byte bound.
const BYTES_PER_ESTIMATED_TOKEN: u64 = 4;

/// What an admitted request settles with, and with whom.
pub struct Terms {
    pub limiter: Arc<dyn Limiter>,
    pub reservations: Vec<Reservation>,
    pub recorder: UsageRecorder,
    pub price: Price,
    pub key_id: String,
    pub team: Option<String>,
    pub model: String,
    pub prompt_bound: u64,
    /// Completion tokens the request could generate in all (cap × choices).
    pub completion_bound: u64,
    pub streamed: bool,
    /// The request's record: its audit record is completed here with the usage.
    pub exchange: Exchange,
    /// Set when the key or its team opted in to content capture.
    pub capture: Option<Capture>,
}

/// An admitted request's pending settlement.
pub struct Settlement {
    terms: Option<Terms>,
    /// Whether the request was handed to a model server (which may have generated something).
    sent: AtomicBool,
}

impl Settlement {
    pub fn new(terms: Terms) -> Settlement {
        Settlement { terms: Some(terms), sent: AtomicBool::new(false) }
    }

    /// Set by the upstream router when it sends the request.
    pub fn sent_flag(&self) -> &AtomicBool {
        &self.sent
    }

    pub fn captures(&self) -> bool {
        self.terms.as_ref().is_some_and(|terms| terms.capture.is_some())
    }

    /// Bills the model that served the request (a fallback bills at its own price), and whether
    /// its answer is a stream.
    pub fn served_by(&mut self, model: String, price: Price, streamed: bool) {
        if let Some(terms) = self.terms.as_mut() {
            terms.model = model;
            terms.price = price;
            terms.streamed = streamed;
        }
    }

    /// The upstream never produced a response body to meter (it failed, or answered with an
    /// error): nothing was generated.
    pub fn nothing_used(mut self) {
        if let Some(terms) = self.terms.take() {
            terms.settle(Billed { prompt_tokens: 0, completion_tokens: 0, estimated: false, cost_pico: 0 }, false);
        }
    }

    /// Settles with what the body's meter saw and submits the request's audit record (with its
    /// captured content, if the request captures any); returns the record's acknowledgement, for
    /// a body that must not end before it is durable.
    pub fn finish(mut self, outcome: Outcome) -> Option<Submitted> {
        let terms = self.terms.take()?;
        let billed = terms.billed(&outcome);
        let submitted = terms.exchange.take_parked().map(|mut event| {
            billed.fill(&mut event);
            event.model = Some(terms.model.clone());
            event.content = terms.capture.as_ref().map(|capture| capture.content(outcome.completion.as_ref()));
            let (decision, reason) = match outcome.ending {
                Ending::Complete => (AuditDecision::Allow, None),
                Ending::CutOff => (AuditDecision::Allow, Some("cut_off_at_reservation")),
                Ending::ClientGone => (AuditDecision::Allow, Some("client_disconnected")),
                Ending::UpstreamFailed => (AuditDecision::Error, Some("upstream_failed_mid_body")),
            };
            event.decision = decision;
            event.reason = reason.map(str::to_string);
            terms.exchange.submit_detached(event)
        });
        terms.settle(billed, true);
        submitted
    }
}

impl Drop for Settlement {
    /// Dropped unsettled: the client left before the answer (waiting in the queue, or for the
    /// model server's first byte) and the request went with it. The prompt counts once it was
    /// sent; a JSON answer may have been generated in full by then, a stream had relayed nothing.
    fn drop(&mut self) {
        let Some(terms) = self.terms.take() else { return };
        let billed = if self.sent.load(Ordering::Acquire) {
            let prompt_tokens = terms.prompt_bound.div_ceil(BYTES_PER_ESTIMATED_TOKEN);
            let completion_tokens = if terms.streamed { 0 } else { terms.completion_bound };
            let cost_pico = terms.price.cost(prompt_tokens, completion_tokens).0;
            Billed { prompt_tokens, completion_tokens, estimated: true, cost_pico }
        } else {
            Billed { prompt_tokens: 0, completion_tokens: 0, estimated: false, cost_pico: 0 }
        };
        terms.exchange.note_billed(billed);
        terms.settle(billed, true);
    }
}

impl Terms {
    fn billed(&self, outcome: &Outcome) -> Billed {
        let (prompt_tokens, completion_tokens, estimated) = match outcome.reported {
            Some(usage) => (usage.prompt_tokens, usage.completion_tokens, false),
            None => {
                let prompt_tokens = self.prompt_bound.div_ceil(BYTES_PER_ESTIMATED_TOKEN);
                // A stream's generated chunks were counted as they passed; a JSON body without
                // usage (or one the client left before its end) is billed its whole completion
                // bound.
                let completion_tokens = if self.streamed {
                    outcome.relayed_content
                } else if outcome.ending == Ending::Complete || outcome.ending == Ending::ClientGone {
                    self.completion_bound
                } else {
                    0
                };
                (prompt_tokens, completion_tokens, true)
            }
        };
        let cost_pico = self.price.cost(prompt_tokens, completion_tokens).0;
        Billed { prompt_tokens, completion_tokens, estimated, cost_pico }
    }

    fn settle(self, billed: Billed, record: bool) {
        let cost = portcullis_limits::Money(billed.cost_pico);
        let usage = Usage { tokens: billed.prompt_tokens.saturating_add(billed.completion_tokens), cost };
        let now = OffsetDateTime::now_utc();
        if record {
            self.recorder.record(UsageRecord {
                at: now,
                key_id: self.key_id,
                team: self.team,
                model: self.model,
                requests: 1,
                prompt_tokens: billed.prompt_tokens,
                completion_tokens: billed.completion_tokens,
                cost_pico: billed.cost_pico,
                estimated_requests: u64::from(billed.estimated),
            });
        }
        let limiter = self.limiter;
        let reservations = self.reservations;
        let now = unix_millis(now);
        let settle = async move {
            // The first reservation holds the tokens and money; the others (the request and
            // concurrency taken before the body was read) used nothing of them.
            let mut charge = Some(usage);
            for reservation in reservations {
                limiter.settle(reservation, charge.take().unwrap_or_default(), now).await;
            }
        };
        // The in-memory limiter settles at once; a networked one finishes in the background.
        let mut settle = Box::pin(settle);
        if settle.as_mut().now_or_never().is_none() {
            tokio::spawn(settle);
        }
    }
}

pub fn unix_millis(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}
