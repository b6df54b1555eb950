//! Settlement: when a response ends, however it ends, its reservation is replaced by what it
//! really used and that use is recorded. Runs exactly once per admitted request, from the
//! response body's end or drop, so a client hanging up cannot skip it.

use std::sync::Arc;

use futures_util::FutureExt;
use portcullis_limits::{Limiter, Price, Reservation, Usage};
use portcullis_store::UsageRecord;
use time::OffsetDateTime;

use portcullis_audit::Submitted;
use portcullis_store::AuditDecision;

use super::capture::Capture;
use super::meter::{Ending, Outcome};
use crate::audit::{Auditor, DeferredAudit};
use crate::usage::UsageRecorder;

/// Prompt tokens per byte when the upstream reports no usage: about four bytes a token for
/// English text, a fair estimate where the reservation used the strict one-byte bound.
const BYTES_PER_ESTIMATED_TOKEN: u64 = 4;

pub struct Settlement {
    pub limiter: Arc<dyn Limiter>,
    pub reservation: Reservation,
    pub recorder: UsageRecorder,
    pub price: Price,
    pub key_id: String,
    pub team: Option<String>,
    pub model: String,
    pub prompt_bound: u64,
    /// Completion tokens the request could generate in all (cap × choices).
    pub completion_bound: u64,
    pub streamed: bool,
    /// The request's audit record, parked by the access-log layer until the body ends.
    pub audit: DeferredAudit,
    pub auditor: Auditor,
    /// Set when the key or its team opted in to content capture.
    pub capture: Option<Capture>,
}

/// What a finished request is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Billed {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub estimated: bool,
}

impl Settlement {
    /// The upstream never produced a response body to meter (it failed, or answered with an
    /// error): nothing was generated.
    pub fn nothing_used(self) {
        self.settle(Billed { prompt_tokens: 0, completion_tokens: 0, estimated: false }, false);
    }

    /// Settles with what the body's meter saw and submits the request's audit record (with its
    /// captured content, if the request captures any); returns the record's acknowledgement, for
    /// a body that must not end before it is durable.
    pub fn finish(self, outcome: Outcome) -> Option<Submitted> {
        let billed = self.billed(&outcome);
        let cost = self.price.cost(billed.prompt_tokens, billed.completion_tokens);
        let submitted = self.audit.take().map(|mut event| {
            event.prompt_tokens = Some(billed.prompt_tokens);
            event.completion_tokens = Some(billed.completion_tokens);
            event.usage_estimated = billed.estimated;
            event.cost_pico = Some(cost.0);
            event.model = Some(self.model.clone());
            event.content = self.capture.as_ref().map(|capture| capture.content(outcome.completion.as_ref()));
            let (decision, reason) = match outcome.ending {
                Ending::Complete => (AuditDecision::Allow, None),
                Ending::CutOff => (AuditDecision::Allow, Some("cut_off_at_reservation")),
                Ending::ClientGone => (AuditDecision::Allow, Some("client_disconnected")),
                Ending::UpstreamFailed => (AuditDecision::Error, Some("upstream_failed_mid_body")),
            };
            event.decision = decision;
            event.reason = reason.map(str::to_string);
            self.auditor.record_detached(event)
        });
        self.settle(billed, true);
        submitted
    }

    fn billed(&self, outcome: &Outcome) -> Billed {
        if let Some(usage) = outcome.reported {
            return Billed {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                estimated: false,
            };
        }
        let prompt_tokens = self.prompt_bound.div_ceil(BYTES_PER_ESTIMATED_TOKEN);
        // A stream's generated chunks were counted as they passed; a JSON body without usage
        // (or one the client left before its end) is billed its whole completion bound.
        let completion_tokens = if self.streamed {
            outcome.relayed_content
        } else if outcome.ending == Ending::Complete || outcome.ending == Ending::ClientGone {
            self.completion_bound
        } else {
            0
        };
        Billed { prompt_tokens, completion_tokens, estimated: true }
    }

    fn settle(self, billed: Billed, record: bool) {
        let cost = self.price.cost(billed.prompt_tokens, billed.completion_tokens);
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
                cost_pico: cost.0,
                estimated_requests: u64::from(billed.estimated),
            });
        }
        let limiter = self.limiter;
        let settle = async move { limiter.settle(self.reservation, usage, unix_millis(now)).await };
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
