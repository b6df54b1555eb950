//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! Request counters and histograms are updated per request; upstream health and in-flight
//! counts per endpoint are read from the pools' own atomics at scrape time, so the request
//! path pays nothing for them.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use portcullis_audit::AuditStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::limiter::LimiterHandle;
use crate::listener_kind::ListenerKind;
use crate::runtime::SharedRuntime;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    listener: &'static str,
    model: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    model: String,
    endpoint: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ModelLabels, Histogram>,
    in_flight: Family<ListenerLabels, Gauge<i64, AtomicI64>>,
    denials: Family<DenialLabels, Counter>,
    security_events: Family<EventLabels, Counter>,
    changes_applied: Counter,
    connections: Family<ConnectionLabels, Counter>,
    open_connections: Family<ListenerLabels, Gauge<i64, AtomicI64>>,
    panics: Family<ListenerLabels, Counter>,
    open_leases: Gauge<i64, AtomicI64>,
    lease_settlements: Family<SettlementLabels, Counter>,
    quota_waits: Family<WaitLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WaitLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SettlementLabels {
    how: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionLabels {
    listener: &'static str,
    event: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DenialLabels {
    scope: &'static str,
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

impl Metrics {
    pub fn new(runtime: SharedRuntime, limiter: LimiterHandle, audit: Arc<AuditStats>) -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered, by listener, model and status", requests.clone());
        let latency = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            // 1 ms to ~33 s: proxy overhead up to long generations.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16))
        });
        registry.register("request_duration_seconds", "Time to the response head, by model", latency.clone());
        let in_flight = Family::default();
        registry.register(
            "in_flight_requests",
            "Requests being served now (until the response head)",
            in_flight.clone(),
        );
        let denials = Family::default();
        registry.register("limit_denials", "Requests refused by a limit, by scope kind and limit", denials.clone());
        let security_events = Family::default();
        registry.register(
            "security_events",
            "Blocked client addresses and key rate anomalies",
            security_events.clone(),
        );
        let changes_applied = Counter::default();
        registry.register(
            "store_changes_applied",
            "Key and team changes read from the change log and applied to this replica's caches",
            changes_applied.clone(),
        );
        let connections = Family::default();
        registry.register(
            "connections",
            "Connection events by listener: accepted, closed, shed (listener_full, client_full), \
             closed for want of a request head (head_timeout) or for idling (idle_timeout)",
            connections.clone(),
        );
        let open_connections = Family::default();
        registry.register("open_connections", "Client connections open now, by listener", open_connections.clone());
        let panics = Family::default();
        registry.register("handler_panics", "Requests whose handler panicked (answered 500)", panics.clone());
        let open_leases = Gauge::default();
        registry.register(
            "authz_open_leases",
            "Requests the authorizer allowed whose usage is not known yet",
            open_leases.clone(),
        );
        let lease_settlements = Family::default();
        registry.register(
            "authz_lease_settlements",
            "Authorizer leases ended, by how: usage_reported, usage_observed, or charged_in_full reasons; relayed_out: sent on to the replica holding the lease",
            lease_settlements.clone(),
        );
        let quota_waits = Family::default();
        registry.register(
            "quota_waits",
            "Requests that waited for a quota or budget held by running requests, by outcome: admitted, \
             refused (it was spent meanwhile) or timed_out (still held after the model's queue_timeout)",
            quota_waits.clone(),
        );
        registry.register_collector(Box::new(TokenCollector { runtime: runtime.clone() }));
        registry.register_collector(Box::new(UpstreamCollector { runtime }));
        registry.register_collector(Box::new(LimiterCollector { limiter }));
        registry.register_collector(Box::new(AuditCollector { stats: audit }));
        Metrics {
            registry,
            requests,
            latency,
            in_flight,
            denials,
            security_events,
            changes_applied,
            connections,
            open_connections,
            panics,
            open_leases,
            lease_settlements,
            quota_waits,
        }
    }

    pub fn record(&self, listener: ListenerKind, model: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { listener: listener.name(), model: model.to_string(), status })
            .inc();
        if !model.is_empty() {
            self.latency.get_or_create(&ModelLabels { model: model.to_string() }).observe(elapsed.as_secs_f64());
        }
    }

    pub fn in_flight(&self, listener: ListenerKind) -> Gauge<i64, AtomicI64> {
        self.in_flight.get_or_create(&ListenerLabels { listener: listener.name() }).clone()
    }

    /// A connection was accepted, closed or shed (`event` names which and why).
    pub fn connection_event(&self, listener: ListenerKind, event: &'static str) {
        self.connections.get_or_create(&ConnectionLabels { listener: listener.name(), event }).inc();
    }

    /// The open-connection gauge of a listener, for its accept loop to keep.
    pub fn open_connections(&self, listener: ListenerKind) -> Gauge<i64, AtomicI64> {
        self.open_connections.get_or_create(&ListenerLabels { listener: listener.name() }).clone()
    }

    pub fn lease_opened(&self) {
        self.open_leases.inc();
    }

    /// A settlement for a lease held elsewhere went out to the fleet (the replica holding it
    /// counts it again by how it settled).
    pub fn lease_relayed(&self) {
        self.lease_settlements.get_or_create(&SettlementLabels { how: "relayed_out" }).inc();
    }

    /// An authorizer lease ended; `how` is its audit reason.
    pub fn lease_settled(&self, how: &'static str) {
        self.open_leases.dec();
        self.lease_settlements.get_or_create(&SettlementLabels { how }).inc();
    }

    pub fn panicked(&self, listener: ListenerKind) {
        self.panics.get_or_create(&ListenerLabels { listener: listener.name() }).inc();
    }

    pub fn denied(&self, scope: &'static str, limit: &'static str) {
        self.denials.get_or_create(&DenialLabels { scope, limit }).inc();
    }

    pub fn quota_waited(&self, outcome: &'static str) {
        self.quota_waits.get_or_create(&WaitLabels { outcome }).inc();
    }

    pub fn security_event(&self, event: &'static str) {
        self.security_events.get_or_create(&EventLabels { event }).inc();
    }

    pub fn change_applied(&self) {
        self.changes_applied.inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }
}

/// Endpoint health and in-flight counts, read from whatever pools are current at scrape time.
#[derive(Debug)]
struct UpstreamCollector {
    runtime: SharedRuntime,
}

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let runtime = self.runtime.load();
        let states = runtime.upstreams.endpoint_states();
        let mut healthy = encoder.encode_descriptor(
            "upstream_healthy",
            "1 when the endpoint passes health checks and is not ejected",
            None,
            MetricType::Gauge,
        )?;
        for state in &states {
            let labels = EndpointLabels { model: state.model.clone(), endpoint: state.url.clone() };
            ConstGauge::new(i64::from(state.healthy)).encode(healthy.encode_family(&labels)?)?;
        }
        let mut outstanding = encoder.encode_descriptor(
            "upstream_outstanding",
            "Requests in flight to the endpoint",
            None,
            MetricType::Gauge,
        )?;
        for state in &states {
            let labels = EndpointLabels { model: state.model.clone(), endpoint: state.url.clone() };
            ConstGauge::new(state.outstanding as i64).encode(outstanding.encode_family(&labels)?)?;
        }
        let mut queued = encoder.encode_descriptor(
            "upstream_queue_length",
            "Requests waiting for a free endpoint slot, by model",
            None,
            MetricType::Gauge,
        )?;
        for (model, length) in runtime.upstreams.queue_lengths() {
            ConstGauge::new(length as i64).encode(queued.encode_family(&ModelLabels { model })?)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
    outcome: &'static str,
}

/// Access-token verifications and the issuers' JWKS fetches and introspection calls, read from
/// the verifiers' counters at scrape time. Issuer names come from the file and outcomes from a
/// fixed list, so the label values are bounded.
#[derive(Debug)]
struct TokenCollector {
    runtime: SharedRuntime,
}

impl Collector for TokenCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let runtime = self.runtime.load();
        if runtime.tokens.is_empty() {
            return Ok(());
        }
        let mut verifications = encoder.encode_descriptor(
            "token_verifications",
            "Access tokens checked, by outcome (ok, cached, or why refused)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, count) in runtime.tokens.verification_counts() {
            ConstCounter::new(count).encode(verifications.encode_family(&OutcomeLabels { outcome })?)?;
        }
        let counts = runtime.tokens.issuer_counts();
        for (name, source, help) in [
            ("jwks_fetches", "jwks_fetches", "Fetches of an issuer's key set, by issuer and outcome"),
            ("token_introspections", "introspections", "RFC 7662 introspection calls, by issuer and outcome"),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for count in counts.iter().filter(|count| count.metric == source) {
                let labels = IssuerLabels { issuer: count.issuer.clone(), outcome: count.outcome };
                ConstCounter::new(count.value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The limiter backend's state, read at scrape time.
#[derive(Debug)]
struct LimiterCollector {
    limiter: LimiterHandle,
}

impl Collector for LimiterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let degraded = encoder.encode_descriptor(
            "limiter_degraded",
            "1 while the shared (Redis) limiter is unreachable and its outage policy decides",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.limiter.health().is_degraded())).encode(degraded)?;
        let fallbacks = encoder.encode_descriptor(
            "limiter_fallbacks",
            "Admissions decided by the outage policy instead of the shared limiter",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.limiter.fallbacks()).encode(fallbacks)?;
        Ok(())
    }
}

/// The audit writer's counters, read at scrape time: whether the log keeps up (queue depth,
/// backpressure waits) and whether anything went to the spill file or was lost.
#[derive(Debug)]
struct AuditCollector {
    stats: Arc<AuditStats>,
}

impl Collector for AuditCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.stats.snapshot();
        let counters = [
            ("audit_records_submitted", "Audit events handed to the writer", stats.submitted),
            (
                "audit_records_written",
                "Audit records made durable: committed to the store or appended to the spill file",
                stats.written,
            ),
            ("audit_batches", "Group commits of audit records to the store", stats.batches),
            ("audit_records_spilled", "Audit records appended to the spill file instead of the store", stats.spilled),
            ("audit_records_replayed", "Spilled audit records later committed to the store", stats.replayed),
            ("audit_backpressure_waits", "Submissions that found the audit queue full and waited", stats.overflowed),
            ("audit_records_dropped", "Audit events refused because the writer had stopped", stats.dropped),
            ("audit_store_failures", "Failed or timed-out audit store calls", stats.store_failures),
            ("audit_sink_errors", "Failed writes to the audit file or stdout sink", stats.sink_errors),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        let gauges = [
            ("audit_queue_depth", "Audit events queued, not yet taken by the writer", stats.queue_depth),
            (
                "audit_records_unwritten",
                "Sealed audit records that neither the store nor the spill file has taken yet",
                stats.unwritten,
            ),
        ];
        for (name, help, value) in gauges {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        Ok(())
    }
}
