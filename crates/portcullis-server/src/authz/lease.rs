//! Leases: what a request the authorizer allowed holds — its reservation of tokens and money,
//! its request and its concurrency slot — until something that saw the response says what it
//! used. The gateway forwards the traffic, so only it (Envoy's `ext_proc` stream), a log
//! shipper or the model server's side (`POST /authz/v1/usage`) can say; a lease nobody settles
//! within `authz.lease` is charged its whole reservation, and its record says so.
//!
//! In a fleet the lease is on the replica that decided, while a report may reach any: a
//! settlement that finds no lease here goes to a [`Relay`], which carries it to the others (see
//! `relay`).
//!
//! Leases expire in the order they were opened (every one lasts the same `authz.lease`), so one
//! task keeps them in a queue and sleeps until the oldest is due: no timer per lease, and
//! opening one is a map insert and a channel send.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures_util::future::BoxFuture;
use portcullis_audit::{AuditDecision, AuditEvent};
use portcullis_limits::{Price, Reservation, Usage};
use portcullis_store::UsageRecord;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::Auditor;
use crate::clock::unix_millis;
use crate::exchange::Billed;
use crate::limiter::settle_soon;
use crate::listener_kind::ListenerKind;
use crate::metrics::Metrics;
use crate::principal::{Credential, record_caller};
use crate::usage::UsageRecorder;

/// Completion tokens a reported figure is believed up to when the request named no cap the
/// model server obeys (it may generate until its context ends): far above any small model's
/// context, far below a figure that would lock a caller out for years.
const UNCAPPED_COMPLETION_BOUND: u64 = 1 << 20;

/// Tokens a reported completion may exceed its cap by (special tokens that print nothing).
const COMPLETION_SLACK: u64 = 16;

/// What an allowed request is billed against, and who it was.
#[derive(Debug)]
pub struct Lease {
    /// None when no limit counts the caller.
    pub reservation: Option<Reservation>,
    pub principal: String,
    pub credential: Credential,
    pub team: Option<String>,
    pub model: String,
    pub price: Price,
    /// The most prompt tokens a report is believed up to: the byte bound.
    pub prompt_bound: u64,
    /// The prompt tokens reserved (a tokenizer's bound, or the byte bound), charged when
    /// nothing is reported.
    pub prompt_reserved: u64,
    /// Completion tokens reserved for (cap × choices).
    pub completion_bound: u64,
    /// Whether the model server is bound to the reserved cap (the client named one the
    /// authorizer saw); if not, a report may exceed the reservation.
    pub capped: bool,
    pub gateway: String,
    pub client_ip: IpAddr,
    pub method: String,
    pub path: String,
}

/// What the request used, as reported by whoever saw its response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// `POST /authz/v1/usage`.
    Reported(Reported),
    /// Envoy's `ext_proc` stream saw the response's usage.
    Observed(Reported),
    /// Envoy's `ext_proc` stream saw the response end without a usage figure.
    ObservedWithoutUsage,
    /// Envoy's `ext_proc` stream saw the model server refuse or fail (a status other than 2xx):
    /// nothing was generated, and nothing is charged (as the proxy bills it).
    ObservedRefusal,
    /// Nothing settled it within `authz.lease`.
    Expired,
    /// The gateway shut down with it open.
    CutAtShutdown,
}

impl Settled {
    /// Whether something outside the replica saw the response (a report or an observation),
    /// rather than the replica ending the lease itself.
    pub fn is_observed_outside(self) -> bool {
        !matches!(self, Settled::Expired | Settled::CutAtShutdown)
    }

    fn reason(self) -> &'static str {
        match self {
            Settled::Reported(_) => "usage_reported",
            Settled::Observed(_) => "usage_observed",
            Settled::ObservedWithoutUsage => "usage_missing_charged_in_full",
            Settled::ObservedRefusal => "upstream_refused_nothing_charged",
            Settled::Expired => "lease_expired_charged_in_full",
            Settled::CutAtShutdown => "cut_at_shutdown_charged_in_full",
        }
    }
}

/// Carries a settlement this replica holds no lease for to the replicas of its fleet, the one
/// holding the lease settling it.
pub trait Relay: Send + Sync {
    /// Sends `how` on for `request_id`; resolves to whether it went out.
    fn relay(&self, request_id: &str, how: Settled) -> BoxFuture<'static, bool>;
}

/// What became of a settlement.
#[derive(Debug)]
pub enum Settlement {
    /// The lease was here, and is billed so.
    Billed(Billed),
    /// No lease here: the settlement is on its way to the fleet.
    Relayed(Relaying),
    /// No lease here and no fleet to ask: never opened, settled already, or expired.
    Unknown,
}

/// A settlement on its way to the fleet; dropping this does not stop it.
#[derive(Debug)]
pub struct Relaying(JoinHandle<bool>);

impl Relaying {
    /// Whether it went out (not whether a replica held the lease: nothing answers that).
    pub async fn sent(self) -> bool {
        self.0.await.unwrap_or(false)
    }
}

/// Where settlements go: usage, audit records, metrics.
pub struct Sinks {
    pub recorder: UsageRecorder,
    pub auditor: Auditor,
    pub metrics: Arc<Metrics>,
}

/// Another lease has this request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdTaken;

/// The open leases, by request id; cheap to clone.
#[derive(Clone)]
pub struct Leases(Arc<Inner>);

struct Inner {
    open: DashMap<String, Lease>,
    expiring: mpsc::UnboundedSender<(Instant, String)>,
    length: Duration,
    /// None for a single replica.
    relay: Option<Arc<dyn Relay>>,
    recorder: UsageRecorder,
    auditor: Auditor,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").field("open", &self.0.open.len()).field("length", &self.0.length).finish()
    }
}

impl Leases {
    /// The registry and its expiry task, which runs until `stop`; settlements it holds no lease
    /// for go to `relay`, if any.
    pub fn start(length: Duration, sinks: Sinks, relay: Option<Arc<dyn Relay>>, stop: CancellationToken) -> Leases {
        let Sinks { recorder, auditor, metrics } = sinks;
        let (expiring, due) = mpsc::unbounded_channel();
        let open = DashMap::new();
        let leases = Leases(Arc::new(Inner { open, expiring, length, relay, recorder, auditor, metrics }));
        tokio::spawn(expire(leases.clone(), due, stop));
        leases
    }

    /// Opens a lease under `request_id`. If that id has one already, the new lease's reservation
    /// is given back unused and the id refused.
    pub fn open(&self, request_id: &str, lease: Lease) -> Result<(), IdTaken> {
        match self.0.open.entry(request_id.to_string()) {
            Entry::Occupied(_) => {
                if let Some(reservation) = lease.reservation {
                    settle_soon(reservation.settle(Usage::default(), unix_millis(OffsetDateTime::now_utc())));
                }
                return Err(IdTaken);
            }
            Entry::Vacant(vacant) => {
                vacant.insert(lease);
            }
        }
        self.0.metrics.lease_opened();
        // The task outlives every sender but at shutdown; a lease opened then is closed there.
        let _ = self.0.expiring.send((Instant::now() + self.0.length, request_id.to_string()));
        Ok(())
    }

    pub fn is_open(&self, request_id: &str) -> bool {
        self.0.open.contains_key(request_id)
    }

    /// Ends the lease under `request_id` and bills it if it is open here; else relays a report
    /// or an observation to the fleet, when there is one.
    pub fn settle(&self, request_id: &str, how: Settled) -> Settlement {
        if let Some(billed) = self.settle_here(request_id, how) {
            return Settlement::Billed(billed);
        }
        let relay = match (&self.0.relay, how) {
            (Some(relay), how) if how.is_observed_outside() => relay,
            _ => return Settlement::Unknown,
        };
        let sending = relay.relay(request_id, how);
        let metrics = self.0.metrics.clone();
        Settlement::Relayed(Relaying(tokio::spawn(async move {
            let sent = sending.await;
            if sent {
                metrics.lease_relayed();
            }
            sent
        })))
    }

    /// Ends the lease under `request_id` if it is open here, and bills it; `None` when it is not
    /// (never opened here, settled already, or expired).
    pub fn settle_here(&self, request_id: &str, how: Settled) -> Option<Billed> {
        let (request_id, lease) = self.0.open.remove(request_id)?;
        Some(self.0.bill(request_id, lease, how))
    }

    /// Charges every open lease in full: the gateway is stopping and nothing will settle them.
    pub fn close_all(&self) {
        let ids: Vec<String> = self.0.open.iter().map(|entry| entry.key().clone()).collect();
        for id in ids {
            self.settle_here(&id, Settled::CutAtShutdown);
        }
    }
}

/// Settles leases as they fall due, oldest first.
async fn expire(leases: Leases, mut due: mpsc::UnboundedReceiver<(Instant, String)>, stop: CancellationToken) {
    loop {
        let (deadline, request_id) = tokio::select! {
            next = due.recv() => match next {
                Some(next) => next,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = stop.cancelled() => return,
        }
        if leases.settle_here(&request_id, Settled::Expired).is_some() {
            tracing::info!(request_id, "authorizer lease expired unsettled; charged its reservation in full");
        }
    }
}

impl Inner {
    /// Bills `lease` as `how` says, gives back what it held and records both the usage and an
    /// audit record of the settlement.
    fn bill(&self, request_id: String, lease: Lease, how: Settled) -> Billed {
        let billed = lease.billed(how);
        self.metrics.lease_settled(how.reason());
        let now = OffsetDateTime::now_utc();
        self.recorder.record(UsageRecord {
            at: now,
            key_id: lease.principal.clone(),
            team: lease.team.clone(),
            model: lease.model.clone(),
            requests: 1,
            prompt_tokens: billed.prompt_tokens,
            completion_tokens: billed.completion_tokens,
            cost_pico: billed.cost_pico,
            estimated_requests: u64::from(billed.estimated),
        });
        let mut event = AuditEvent::new(now, ListenerKind::Authz.audit_kind(), AuditDecision::Allow, 200);
        event.request_id = Some(request_id);
        record_caller(&mut event, Some(lease.principal), Some(lease.credential));
        event.team = lease.team;
        event.model = Some(lease.model);
        event.client_ip = Some(lease.client_ip.to_string());
        event.gateway = Some(lease.gateway);
        event.method = Some(lease.method);
        event.path = Some(lease.path);
        event.reason = Some(how.reason().to_string());
        billed.fill(&mut event);
        drop(self.auditor.record_detached(event));
        if let Some(reservation) = lease.reservation {
            let usage = Usage {
                tokens: billed.prompt_tokens.saturating_add(billed.completion_tokens),
                cost: portcullis_limits::Money(billed.cost_pico),
            };
            settle_soon(reservation.settle(usage, unix_millis(now)));
        }
        billed
    }
}

impl Lease {
    /// A report is believed within bounds: a prompt no larger than the request's, a completion
    /// no larger than its cap (when the server is bound to one). Anything unreported is charged
    /// the whole reservation.
    fn billed(&self, how: Settled) -> Billed {
        let (prompt_tokens, completion_tokens, estimated, bounded) = match how {
            Settled::Reported(reported) | Settled::Observed(reported) => {
                let completion_bound = if self.capped {
                    self.completion_bound.saturating_add(COMPLETION_SLACK)
                } else {
                    UNCAPPED_COMPLETION_BOUND
                };
                let prompt = reported.prompt_tokens.min(self.prompt_bound);
                let completion = reported.completion_tokens.min(completion_bound);
                let bounded = (prompt, completion) != (reported.prompt_tokens, reported.completion_tokens);
                (prompt, completion, bounded, bounded)
            }
            Settled::ObservedRefusal => (0, 0, false, false),
            Settled::ObservedWithoutUsage | Settled::Expired | Settled::CutAtShutdown => {
                (self.prompt_reserved, self.completion_bound, true, false)
            }
        };
        let cost_pico = self.price.cost(prompt_tokens, completion_tokens).0;
        Billed { prompt_tokens, completion_tokens, estimated, cost_pico, bounded }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(capped: bool) -> Lease {
        Lease {
            reservation: None,
            principal: "key_1".into(),
            credential: Credential::Key,
            team: None,
            model: "m".into(),
            price: Price::per_million(1.0, 2.0),
            prompt_bound: 100,
            prompt_reserved: 100,
            completion_bound: 50,
            capped,
            gateway: "nginx".into(),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
        }
    }

    #[test]
    fn a_plausible_report_is_billed_as_reported() {
        let billed = lease(true).billed(Settled::Reported(Reported { prompt_tokens: 30, completion_tokens: 40 }));
        assert_eq!((billed.prompt_tokens, billed.completion_tokens, billed.estimated), (30, 40, false));
        assert_eq!(billed.cost_pico, Price::per_million(1.0, 2.0).cost(30, 40).0);
    }

    #[test]
    fn a_report_past_its_bounds_is_billed_at_them() {
        let absurd = Reported { prompt_tokens: u64::MAX, completion_tokens: u64::MAX };
        let billed = lease(true).billed(Settled::Observed(absurd));
        assert_eq!((billed.prompt_tokens, billed.completion_tokens), (100, 50 + COMPLETION_SLACK));
        assert!(billed.bounded && billed.estimated);
        // Without a cap the server obeys, a long answer is believed, up to the sanity bound.
        let long = Reported { prompt_tokens: 10, completion_tokens: 5_000 };
        assert_eq!(lease(false).billed(Settled::Reported(long)).completion_tokens, 5_000);
        assert_eq!(lease(false).billed(Settled::Reported(absurd)).completion_tokens, UNCAPPED_COMPLETION_BOUND);
    }

    #[test]
    fn a_response_the_model_server_refused_is_charged_nothing() {
        let billed = lease(false).billed(Settled::ObservedRefusal);
        assert_eq!((billed.prompt_tokens, billed.completion_tokens, billed.cost_pico), (0, 0, 0));
        assert!(!billed.estimated);
    }

    #[test]
    fn an_unsettled_lease_is_charged_its_whole_reservation() {
        for how in [Settled::Expired, Settled::ObservedWithoutUsage, Settled::CutAtShutdown] {
            let billed = lease(false).billed(how);
            assert_eq!((billed.prompt_tokens, billed.completion_tokens, billed.estimated), (100, 50, true), "{how:?}");
            assert!(how.reason().ends_with("charged_in_full"));
        }
    }
}
