//! Settlement: when a request ends, however it ends, its reservation is replaced by what it
//! really used and that use is recorded. Runs exactly once per admitted request: from the
//! response body's end or drop, so a client hanging up mid-body cannot skip it, or — when the
//! client left before the answer, and the request was dropped with it — from the drop of the
//! settlement itself.

use std::sync::atomic::{AtomicBool, Ordering};

use portcullis_audit::{AuditDecision, Submitted};
use portcullis_limits::{Price, Reservation, Usage};
use portcullis_store::UsageRecord;
use time::OffsetDateTime;

use super::capture::Capture;
use super::meter::{Ending, Outcome};
use crate::clock::unix_millis;
use crate::exchange::{Billed, Exchange};
use crate::usage::UsageRecorder;

/// Prompt tokens per byte when the upstream reports no usage: about four bytes a token for
/// English text, a fair estimate where the reservation used the strict one-byte bound.
const BYTES_PER_ESTIMATED_TOKEN: u64 = 4;

/// Tokens a reported completion may exceed its bound by (special tokens that print nothing).
const COMPLETION_SLACK: u64 = 16;

/// The audit reason of a stream whose server reports no usage: its completion tokens are the
/// generated chunks counted as they were relayed (one token each), not a server's figure.
const COUNTED: &str = "usage_counted: completion tokens counted from the relayed stream";

/// What an admitted request settles with, and with whom.
pub struct Terms {
    /// The request's tokens and money, when a limit counts them.
    pub amounts: Option<Reservation>,
    /// The request rate and concurrency slot taken before the body, when a limit counts them.
    pub slot: Option<Reservation>,
    pub recorder: UsageRecorder,
    pub price: Price,
    pub key_id: String,
    pub team: Option<String>,
    pub model: String,
    /// The most prompt tokens a report is believed up to: the byte bound.
    pub prompt_bound: u64,
    /// The prompt tokens reserved: the byte bound, or a tokenizer's tighter one.
    pub prompt_reserved: u64,
    /// Completion tokens the request could generate in all (cap × choices).
    pub completion_bound: u64,
    pub streamed: bool,
    /// The model's server reports no usage in streams: a stream's completion is counted.
    pub counts_stream_usage: bool,
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
            terms.settle(
                Billed { prompt_tokens: 0, completion_tokens: 0, estimated: false, cost_pico: 0, bounded: false },
                false,
            );
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
            let evidence = outcome.reported.filter(|_| billed.bounded).map(|usage| {
                format!(
                    "usage_bounded: reported {} prompt, {} completion tokens",
                    usage.prompt_tokens, usage.completion_tokens
                )
            });
            event.model = Some(terms.model.clone());
            event.content = terms.capture.as_ref().map(|capture| capture.content(outcome.completion.as_ref()));
            let (decision, reason) = match outcome.ending {
                Ending::Complete => (AuditDecision::Allow, None),
                Ending::CutOff => (AuditDecision::Allow, Some("cut_off_at_reservation")),
                Ending::ClientGone if terms.exchange.cut_at_shutdown() => {
                    (AuditDecision::Error, Some("cut_at_shutdown"))
                }
                Ending::ClientGone => (AuditDecision::Allow, Some("client_disconnected")),
                Ending::UpstreamFailed => (AuditDecision::Error, Some("upstream_failed_mid_body")),
                Ending::EventTooLarge => (AuditDecision::Error, Some("upstream_event_too_large")),
                Ending::InvalidEvent => (AuditDecision::Error, Some("upstream_invalid_event")),
            };
            event.decision = decision;
            let counted = outcome.reported.is_none() && terms.streamed && terms.counts_stream_usage;
            let evidence = evidence.or_else(|| counted.then(|| COUNTED.to_string()));
            event.reason = match (reason, evidence) {
                (Some(reason), Some(evidence)) => Some(format!("{reason}; {evidence}")),
                (reason, evidence) => reason.map(str::to_string).or(evidence),
            };
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
            let prompt_tokens = terms.prompt_estimate();
            let completion_tokens = if terms.streamed { 0 } else { terms.completion_bound };
            let cost_pico = terms.price.cost(prompt_tokens, completion_tokens).0;
            Billed { prompt_tokens, completion_tokens, estimated: true, cost_pico, bounded: false }
        } else {
            Billed { prompt_tokens: 0, completion_tokens: 0, estimated: false, cost_pico: 0, bounded: false }
        };
        terms.exchange.note_billed(billed);
        terms.settle(billed, true);
    }
}

impl Terms {
    /// The prompt's tokens when no server said: a fair share of its bytes, never more than was
    /// reserved for it.
    fn prompt_estimate(&self) -> u64 {
        self.prompt_bound.div_ceil(BYTES_PER_ESTIMATED_TOKEN).min(self.prompt_reserved)
    }

    /// What the request is billed. A model server's `usage` is believed within bounds: a prompt
    /// no larger than the request's own bound, a completion no larger than the bytes relayed to
    /// the client or the reservation's cap, whichever is more (a server that ignores the cap
    /// still had to send what it generated), plus [`COMPLETION_SLACK`]. A figure past its bound
    /// is billed at the bound, marked estimated, and kept in the audit record as evidence.
    fn billed(&self, outcome: &Outcome) -> Billed {
        let (prompt_tokens, completion_tokens, estimated, bounded) = match outcome.reported {
            Some(usage) => {
                let (prompt, completion) =
                    believable(usage, self.prompt_bound, self.completion_bound, outcome.relayed_bytes);
                let bounded = (prompt, completion) != (usage.prompt_tokens, usage.completion_tokens);
                (prompt, completion, bounded, bounded)
            }
            None => {
                let prompt_tokens = self.prompt_estimate();
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
                (prompt_tokens, completion_tokens, true, false)
            }
        };
        let cost_pico = self.price.cost(prompt_tokens, completion_tokens).0;
        Billed { prompt_tokens, completion_tokens, estimated, cost_pico, bounded }
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
        let (amounts, slot) = (self.amounts, self.slot);
        let now = unix_millis(now);
        let settle = async move {
            if let Some(amounts) = amounts {
                amounts.settle(usage, now).await;
            }
            // The slot holds no tokens or money: it settles with nothing used.
            if let Some(slot) = slot {
                slot.settle(Usage::default(), now).await;
            }
        };
        crate::limiter::settle_soon(settle);
    }
}

/// The part of a reported usage within its bounds (see [`Terms::billed`]).
fn believable(
    reported: portcullis_types::openai::Usage,
    prompt_bound: u64,
    completion_bound: u64,
    relayed_bytes: u64,
) -> (u64, u64) {
    let completion_bound = relayed_bytes.max(completion_bound).saturating_add(COMPLETION_SLACK);
    (reported.prompt_tokens.min(prompt_bound), reported.completion_tokens.min(completion_bound))
}

#[cfg(test)]
mod tests {
    use portcullis_types::openai::Usage;

    use super::*;

    fn usage(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens.saturating_add(completion_tokens) }
    }

    #[test]
    fn a_plausible_usage_is_billed_as_reported() {
        assert_eq!(believable(usage(30, 100), 200, 128, 900), (30, 100));
        // A server that ignored the cap of 5 and generated 500 tokens sent them: billed in full.
        assert_eq!(believable(usage(30, 500), 200, 5, 2600), (30, 500));
    }

    #[test]
    fn absurd_figures_are_billed_at_their_bounds() {
        assert_eq!(believable(usage(u64::MAX, u64::MAX), 200, 128, 900), (200, 900 + COMPLETION_SLACK));
        assert_eq!(believable(usage(9_200_000_000_000_000_000, 3), 200, 128, 10), (200, 3));
        // Nothing relayed (the answer was short): the reservation's cap is the bound.
        assert_eq!(believable(usage(1, 10_000), 200, 128, 0), (1, 128 + COMPLETION_SLACK));
    }
}
