//! The limiter backend chosen by `limits.backend`: in this process's memory, or shared by the
//! fleet in Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[cfg(feature = "redis")]
use portcullis_config::OnBackendError;
use portcullis_config::{LimiterBackend as BackendKind, LimiterStartup};
use portcullis_limits::{Limiter, MemoryLimiter, Millis};
#[cfg(feature = "redis")]
use portcullis_limits_redis::{BackendState, OnBackendError as RedisPolicy, RedisLimiter, RedisLimiterOptions};

use tokio::sync::Notify;

use crate::StartError;

/// The limiter and what the server needs to know about it besides admitting and settling.
#[derive(Clone)]
pub struct LimiterHandle {
    limiter: Arc<dyn Limiter>,
    kind: Kind,
}

impl std::fmt::Debug for LimiterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimiterHandle").field("health", &self.health()).finish()
    }
}

#[derive(Clone)]
enum Kind {
    Memory(Arc<MemoryLimiter>),
    #[cfg(feature = "redis")]
    Redis {
        limiter: Arc<RedisLimiter>,
        policy: OnBackendError,
    },
}

/// How well the limiter can do its job right now, for `/readyz` and `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code, reason = "the shared states need the Redis limiter"))]
pub enum LimiterHealth {
    /// Counting in this process (`limits.backend = "memory"`).
    InProcess,
    /// Counting in Redis, shared by the fleet.
    Shared,
    /// Redis unreachable; counting in this process with a share of each limit.
    Local,
    /// Redis unreachable; refusing requests.
    Unavailable,
}

impl LimiterHealth {
    pub fn name(self) -> &'static str {
        match self {
            LimiterHealth::InProcess => "in_process",
            LimiterHealth::Shared => "shared",
            LimiterHealth::Local => "local",
            LimiterHealth::Unavailable => "unavailable",
        }
    }

    pub fn is_degraded(self) -> bool {
        matches!(self, LimiterHealth::Local | LimiterHealth::Unavailable)
    }
}

/// `limits.backend = "redis"` in a binary built without Redis support.
#[cfg(not(feature = "redis"))]
const REDIS_NOT_BUILT: StartError = StartError::NotBuilt { setting: "limits.backend", feature: "redis" };

impl LimiterHandle {
    /// Refuses a backend this binary was built without (see [`crate::check_backends`]).
    pub fn check(config: &LimiterStartup) -> Result<(), StartError> {
        match config.backend {
            #[cfg(not(feature = "redis"))]
            BackendKind::Redis => Err(REDIS_NOT_BUILT),
            _ => Ok(()),
        }
    }

    pub async fn from_config(config: &LimiterStartup) -> Result<LimiterHandle, StartError> {
        match config.backend {
            BackendKind::Memory => Ok(LimiterHandle::memory()),
            #[cfg(not(feature = "redis"))]
            BackendKind::Redis => Err(REDIS_NOT_BUILT),
            #[cfg(feature = "redis")]
            BackendKind::Redis => {
                let url = config.redis_url.as_ref().map(|url| url.expose().clone()).unwrap_or_default();
                let options = RedisLimiterOptions {
                    key_prefix: config.redis_prefix.clone(),
                    timeout: config.redis_timeout.0,
                    lease: config.reservation_lease.0,
                    on_backend_error: match config.on_backend_error {
                        OnBackendError::Deny => RedisPolicy::Deny,
                        OnBackendError::Local => RedisPolicy::Local { replicas: config.replicas },
                    },
                    ..RedisLimiterOptions::new(url)
                };
                let redis = RedisLimiter::connect(options)
                    .await
                    .map_err(|error| StartError::Setting { setting: "limits.redis_url", source: error.into() })?;
                let redis = Arc::new(redis);
                Ok(LimiterHandle {
                    limiter: redis.clone(),
                    kind: Kind::Redis { limiter: redis, policy: config.on_backend_error },
                })
            }
        }
    }

    pub fn memory() -> LimiterHandle {
        let memory = Arc::new(MemoryLimiter::new());
        LimiterHandle { limiter: memory.clone(), kind: Kind::Memory(memory) }
    }

    pub fn limiter(&self) -> &Arc<dyn Limiter> {
        &self.limiter
    }

    pub fn health(&self) -> LimiterHealth {
        match &self.kind {
            Kind::Memory(_) => LimiterHealth::InProcess,
            #[cfg(feature = "redis")]
            Kind::Redis { limiter, policy } => match (limiter.backend_state(), policy) {
                (BackendState::Shared, _) => LimiterHealth::Shared,
                (BackendState::Degraded { .. }, OnBackendError::Local) => LimiterHealth::Local,
                (BackendState::Degraded { .. }, OnBackendError::Deny) => LimiterHealth::Unavailable,
            },
        }
    }

    /// The channel `name` every replica sharing this limiter's Redis hears; None when counting in
    /// this process.
    #[cfg(feature = "redis")]
    pub fn fleet_channel(&self, name: &str) -> Option<portcullis_limits_redis::FleetChannel> {
        match &self.kind {
            Kind::Memory(_) => None,
            Kind::Redis { limiter, .. } => Some(limiter.channel(name)),
        }
    }

    /// Admissions decided by the outage policy instead of Redis, since start.
    pub fn fallbacks(&self) -> u64 {
        match &self.kind {
            Kind::Memory(_) => 0,
            #[cfg(feature = "redis")]
            Kind::Redis { limiter, .. } => limiter.fallback_count(),
        }
    }

    /// Forgets in-process state that is as good as new (see [`MemoryLimiter::evict_idle`]).
    pub fn evict_idle(&self, now: Millis) {
        match &self.kind {
            Kind::Memory(memory) => {
                memory.evict_idle(now);
            }
            #[cfg(feature = "redis")]
            Kind::Redis { .. } => {}
        }
    }

    /// Waits for the releases of reservations dropped unsettled (a networked backend sends them
    /// in the background), so a graceful shutdown leaves nothing held until its lease ends.
    pub async fn drain(&self) {
        #[cfg(feature = "redis")]
        if let Kind::Redis { limiter, .. } = &self.kind {
            limiter.drain().await;
        }
    }
}

/// Runs a settlement (one or more `Reservation::settle`s) at once when it completes without
/// waiting, as the in-memory limiter's does; a networked limiter's finishes in the background.
/// Either way, requests waiting for reservations to settle hear of it once it is done.
pub fn settle_soon(settle: impl std::future::Future<Output = ()> + Send + 'static) {
    use futures_util::FutureExt;
    let mut settle = Box::pin(settle);
    if settle.as_mut().now_or_never().is_some() {
        SETTLED.settled();
    } else {
        tokio::spawn(async move {
            settle.await;
            SETTLED.settled();
        });
    }
}

/// Settlements in this process, for requests waiting for reservations to settle.
static SETTLED: SettleSignal = SettleSignal::new();

/// The signal of this process's settlements (see [`settle_soon`]).
pub const fn settlements() -> &'static SettleSignal {
    &SETTLED
}

/// Tells whoever listens that a settlement has finished. With nobody listening — no request is
/// waiting — a settlement costs one atomic load here, nothing more.
#[derive(Debug)]
pub struct SettleSignal {
    listeners: AtomicUsize,
    /// Settlements heard by listeners, so that several of them can tell one settlement from two.
    count: AtomicU64,
    notify: Notify,
}

impl SettleSignal {
    pub(crate) const fn new() -> SettleSignal {
        SettleSignal { listeners: AtomicUsize::new(0), count: AtomicU64::new(0), notify: Notify::const_new() }
    }

    pub(crate) fn settled(&self) {
        // SeqCst pairs with `listen`: a listener that registers after this load sees, in its next
        // admission, what this settlement changed.
        if self.listeners.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Marks a listener for as long as the guard lives; only then are settlements signalled.
    pub fn listen(&self) -> Listening<'_> {
        self.listeners.fetch_add(1, Ordering::SeqCst);
        Listening(self)
    }

    /// How many settlements were signalled so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves at the next settlement signalled after it was created.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

/// A listener of a [`SettleSignal`]; dropping it stops the signal when it was the last.
#[derive(Debug)]
pub struct Listening<'a>(&'a SettleSignal);

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.listeners.fetch_sub(1, Ordering::SeqCst);
    }
}
