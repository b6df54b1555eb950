//! Limits that hold: request rates, token rates, concurrency, token quotas and money budgets.
//!
//! The server asks a [`Limiter`] to *admit* a request against every scope that applies to it (key, team,
//! global) with the request's worst case ([`Demand`]), and *settles* the returned [`Reservation`] with the
//! real [`Usage`] when the response ends. Reserving the worst case up front is what makes the limits hold
//! under concurrency: two requests racing for the last tokens of a quota cannot both be admitted, because
//! the first one's reservation is already counted when the second is checked.
//!
//! Nothing here reads a clock: `now` ([`Millis`]) is always a parameter, so every rule is a pure function
//! of its inputs and tests use explicit times. The algorithms live in small modules ([`gcra`], [`bucket`],
//! [`window`], [`money`]) and are tested on their own; [`MemoryLimiter`] composes them.
//!
//! # Guarantees of [`MemoryLimiter`]
//! - **All or nothing.** An admission either applies to every limit of every scope, or changes nothing.
//! - **No admission beyond a limit.** An admission starts only if, for every day/month window of every scope,
//!   `used + reserved + demand ≤ limit` (a zero demand always fits), and only if the token bucket holds the
//!   demand: no number of concurrent requests is admitted beyond a quota, budget or token rate.
//! - **A refusal says whether waiting can help.** A quota or budget that the demand would fit if the running
//!   requests' reservations settled at nothing (`used + demand ≤ limit`) is refused as
//!   [`DenialReason::HeldByReservations`], not as spent, and every quota or budget refusal says what is
//!   left now ([`Denial::available`]), so that a caller may wait for settlements or ask for less.
//! - **Settle charges the actual usage, in full.** A model server may generate past the completion cap it
//!   was given, and a non-streamed answer cannot be cut, so `actual` may exceed the reservation: it is
//!   charged all the same, never `min(actual, reserved)`. Quotas and budgets: `used` grows by the whole
//!   actual, past the limit if need be, and every non-zero demand is refused (`insufficient_quota`) until
//!   the excess is repaid. Token rate: the part above the reservation is a debt below the empty bucket,
//!   refused (`rate_limit_exceeded`) until refilled past it at the bucket's rate, so an overrun of D tokens
//!   on a bucket of C per minute costs D / C minutes. Retry times and resets count the repayment.
//! - **Window rollover repays, it does not forgive.** Counters restart at 00:00 UTC and on the 1st of the
//!   month, but what a window used beyond its quota is carried into the next as used, and each later window
//!   repays one quota's worth (the window is the unit of the quota, and the excess its debt: without the
//!   carry, a model server that ignores completion caps would let a client overspend every window anew by
//!   firing many small reservations at once). A request reserved in a window that has rolled over by the
//!   time it settles is charged to the current window what it used beyond its reservation; its reservation
//!   is charged to nothing (it was within the ended window's quota).
//! - **Dropped reservation.** A [`Reservation`] dropped without `settle` frees its concurrency slot and charges
//!   its *whole* reservation as used (no token refund): a lost settlement can only under-admit, never let a
//!   request in beyond a limit (what an overrun used beyond its reservation is then not known, so not charged).

pub mod bucket;
pub mod gcra;
mod memory;
pub mod money;
mod scope;
pub mod window;

use std::fmt;
use std::sync::Arc;

pub use bucket::{BucketState, TakeError, TokenBucket};
pub use gcra::{Gcra, GcraState};
pub use memory::MemoryLimiter;
pub use money::{Money, PICO_PER_UNIT, Price};
pub use window::{Period, QuotaRefusal, WindowCounter};

/// Milliseconds since the Unix epoch, passed in by the caller; the crate never reads a clock.
pub type Millis = u64;

/// Limits of one scope after tier defaults and overrides are applied. `None` = no such limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// Request rate, refilled smoothly (GCRA).
    pub requests_per_minute: Option<u64>,
    /// Instant allowance of the request rate; `None` = `requests_per_minute`.
    pub burst: Option<u64>,
    /// Token rate (token bucket of this capacity, refilled at this many per minute).
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u64>,
    /// Tokens per UTC calendar day.
    pub tokens_per_day: Option<u64>,
    /// Tokens per UTC calendar month.
    pub tokens_per_month: Option<u64>,
    /// Money per UTC calendar day.
    pub budget_per_day: Option<Money>,
    /// Money per UTC calendar month.
    pub budget_per_month: Option<Money>,
}

impl Limits {
    /// True when no limit is set: such a scope is skipped entirely (no state, no lock).
    pub fn is_unlimited(&self) -> bool {
        let Limits {
            requests_per_minute,
            burst: _,
            tokens_per_minute,
            max_concurrent,
            tokens_per_day,
            tokens_per_month,
            budget_per_day,
            budget_per_month,
        } = self;
        requests_per_minute.is_none()
            && tokens_per_minute.is_none()
            && max_concurrent.is_none()
            && tokens_per_day.is_none()
            && tokens_per_month.is_none()
            && budget_per_day.is_none()
            && budget_per_month.is_none()
    }

    /// The first limit whose whole capacity is smaller than `demand`, so that waiting can never help.
    ///
    /// A zero request rate, burst or concurrency admits nothing ever and counts as such too.
    pub fn never_fits(&self, demand: Demand) -> Option<LimitKind> {
        let over = |limit: Option<u64>, amount: u64| limit.is_some_and(|limit| amount > limit);
        if self.requests_per_minute.is_some_and(|rpm| Gcra::new(rpm, self.burst).is_none()) {
            Some(LimitKind::RequestsPerMinute)
        } else if over(self.tokens_per_minute, demand.tokens) {
            Some(LimitKind::TokensPerMinute)
        } else if self.max_concurrent == Some(0) {
            Some(LimitKind::Concurrent)
        } else if over(self.tokens_per_day, demand.tokens) {
            Some(LimitKind::TokensPerDay)
        } else if over(self.tokens_per_month, demand.tokens) {
            Some(LimitKind::TokensPerMonth)
        } else if over(self.budget_per_day.map(|m| m.0), demand.cost.0) {
            Some(LimitKind::BudgetPerDay)
        } else if over(self.budget_per_month.map(|m| m.0), demand.cost.0) {
            Some(LimitKind::BudgetPerMonth)
        } else {
            None
        }
    }

    /// The whole capacity of one limit, in its unit (what [`Denial::available`] reports for `NeverFits`):
    /// `None` when not set, and for the request rate and concurrency, which count requests, not amounts.
    pub fn capacity(&self, kind: LimitKind) -> Option<u64> {
        match kind {
            LimitKind::TokensPerMinute => self.tokens_per_minute,
            LimitKind::TokensPerDay => self.tokens_per_day,
            LimitKind::TokensPerMonth => self.tokens_per_month,
            LimitKind::BudgetPerDay => self.budget_per_day.map(|m| m.0),
            LimitKind::BudgetPerMonth => self.budget_per_month.map(|m| m.0),
            LimitKind::RequestsPerMinute | LimitKind::Concurrent => None,
        }
    }

    /// The refusal of a demand larger than a whole capacity ([`Limits::never_fits`]), for `scope`.
    pub fn never_fits_denial(&self, scope: &LimitScope, demand: Demand) -> Option<Denial> {
        self.never_fits(demand).map(|limit| Denial {
            scope: scope.clone(),
            limit,
            reason: DenialReason::NeverFits,
            retry_after_ms: None,
            available: self.capacity(limit),
        })
    }
}

/// Who a limit applies to. Ordered (global < teams < keys, then by id) so that admissions can lock
/// scopes in one fixed order and never deadlock.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitScope {
    /// The whole gateway.
    Global,
    /// A team, by id.
    Team(Arc<str>),
    /// An API key (or OAuth principal), by id.
    Key(Arc<str>),
}

impl fmt::Display for LimitScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitScope::Global => f.write_str("global"),
            LimitScope::Team(id) => write!(f, "team:{id}"),
            LimitScope::Key(id) => write!(f, "key:{id}"),
        }
    }
}

/// What one request may use at most (its worst case): tokens = prompt upper bound + max completion tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    /// Worst-case tokens.
    pub tokens: u64,
    /// Worst-case cost (the price of `tokens`).
    pub cost: Money,
}

/// What a request really used, from the upstream's usage (or an estimate). Also the shape of a window's
/// persisted totals in [`Limiter::seed`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens used.
    pub tokens: u64,
    /// Money spent.
    pub cost: Money,
}

/// One kind of limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    RequestsPerMinute,
    TokensPerMinute,
    Concurrent,
    TokensPerDay,
    TokensPerMonth,
    BudgetPerDay,
    BudgetPerMonth,
}

impl LimitKind {
    /// The config key that sets this limit, for error messages that tell an operator what to change.
    pub fn config_name(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::Concurrent => "max_concurrent",
            LimitKind::TokensPerDay => "tokens_per_day",
            LimitKind::TokensPerMonth => "tokens_per_month",
            LimitKind::BudgetPerDay => "budget_per_day",
            LimitKind::BudgetPerMonth => "budget_per_month",
        }
    }

    /// True for budgets, whose amounts in [`LimitState`] are pico-units of money rather than counts.
    pub fn is_money(self) -> bool {
        matches!(self, LimitKind::BudgetPerDay | LimitKind::BudgetPerMonth)
    }
}

/// Why an admission was refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Denial {
    /// The scope whose limit refused.
    pub scope: LimitScope,
    /// The limit that refused.
    pub limit: LimitKind,
    /// What the client should do about it.
    pub reason: DenialReason,
    /// When a retry can succeed: the GCRA/token-bucket wait for rates (a token debt's repayment included);
    /// for quotas and budgets the start of the next UTC day/month, or of the first later one in which an
    /// overrun carried from this one leaves room for the demand; `None` for `NeverFits` and for concurrency
    /// (a slot frees when some running request ends, which nobody can predict) and for `HeldByReservations`
    /// (likewise: the reservations settle when their requests end). Round up to whole seconds for
    /// `Retry-After`.
    pub retry_after_ms: Option<u64>,
    /// What the refusing limit can give one request, in its unit (tokens; pico-units for budgets): for a
    /// quota or budget refused now (`QuotaExhausted`, `HeldByReservations`) what is left of it now,
    /// `limit − used − reserved` (saturating), for `NeverFits` its whole capacity; `None` for rates and
    /// concurrency refused now, and for a zero request rate or concurrency. A client can shrink its
    /// request to fit this.
    pub available: Option<u64>,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.reason {
            DenialReason::RateLimited => "rate limit reached",
            DenialReason::QuotaExhausted => "quota exhausted",
            DenialReason::HeldByReservations => "quota held by running requests",
            DenialReason::NeverFits => "request exceeds the limit",
        };
        write!(f, "{what}: {} of {}", self.limit.config_name(), self.scope)?;
        match self.retry_after_ms {
            Some(ms) => write!(f, " (retry after {ms} ms)"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Denial {}

/// The client-facing class of a [`Denial`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenialReason {
    /// Rate or concurrency: try again shortly (HTTP 429 rate_limit_exceeded).
    RateLimited,
    /// Quota or budget of the current window is spent (HTTP 429 insufficient_quota).
    QuotaExhausted,
    /// A quota or budget the demand would fit if the requests still running settled at nothing, but not
    /// while their reservations hold it: `used + demand ≤ limit < used + reserved + demand`. Waiting for
    /// them to settle may help; it may also not, as they settle at what they really used.
    HeldByReservations,
    /// The demand exceeds the limit's whole capacity and can never fit (HTTP 400 request_exceeds_limit).
    NeverFits,
}

impl DenialReason {
    /// How long a refusal of this kind lasts, for choosing the one to report when several limits refuse:
    /// held reservations settle soonest, then rates refill, then a window ends; never fitting is forever.
    /// A client is told the longest, so that it is not sent back into another refusal (and a rate limit
    /// is answered at once rather than waited out behind reservations).
    pub fn rank(self) -> u8 {
        match self {
            DenialReason::HeldByReservations => 0,
            DenialReason::RateLimited => 1,
            DenialReason::QuotaExhausted => 2,
            DenialReason::NeverFits => 3,
        }
    }
}

/// OpenAI `x-ratelimit-*` header values for the tightest applicable scope (smallest remaining) of each kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// `x-ratelimit-{limit,remaining,reset}-requests`, from requests per minute.
    pub requests: Option<RateState>,
    /// `x-ratelimit-{limit,remaining,reset}-tokens`, from tokens per minute.
    pub tokens: Option<RateState>,
}

/// One rate's header values, after this request was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateState {
    /// Per-minute limit.
    pub limit: u64,
    /// What could still be admitted right now.
    pub remaining: u64,
    /// Ms until the rate is fully replenished.
    pub reset_ms: u64,
}

/// One limit of one scope, for `GET /v1/usage`.
///
/// Amounts are requests, tokens, or pico-units of money for budgets ([`LimitKind::is_money`]).
/// For the per-minute rates `used` is what has been taken and not yet refilled and `reserved` the part of
/// it held by requests still running (always 0 for requests per minute); for concurrency `used` is the
/// number of requests in flight. After an overrun `used` exceeds `limit` (token bucket in debt, quota
/// overdrawn, or an overrun carried into the current window) and `remaining` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitState {
    /// Which limit.
    pub kind: LimitKind,
    /// The configured limit.
    pub limit: u64,
    /// Settled consumption in the current window, including an overrun carried into it (see above for rates).
    pub used: u64,
    /// Held by running requests.
    pub reserved: u64,
    /// What a new request could still get now.
    pub remaining: u64,
    /// Ms until fully replenished: for rates, a debt repaid included; for quotas, until the window restarts,
    /// or the first later window an overrun is no longer carried into. `None` for concurrency.
    pub reset_ms: Option<u64>,
}

/// Held while a request runs; settle it exactly once with [`Reservation::settle`].
///
/// It carries what it took from each scope (and the windows it took it in), so settlement gives back
/// exactly that even if the limits were reloaded in between. Dropping it unsettled charges the whole
/// reservation (see the crate docs).
#[derive(Debug)]
pub struct Reservation {
    /// Header values to send with the response.
    pub headers: RateHeaders,
    demand: Demand,
    hold: Hold,
}

/// Where a reservation's counters live, and so who gives them back.
#[derive(Debug)]
enum Hold {
    /// Settled or abandoned already.
    Released,
    Memory(memory::MemoryHold),
    External(Box<dyn ExternalHold>),
}

/// A reservation held by a limiter outside this crate (Redis, for one): it knows how to give back what
/// it took. Implementations keep the guarantees of the crate docs.
#[async_trait::async_trait]
pub trait ExternalHold: Send + Sync + fmt::Debug + 'static {
    /// The scopes it holds something in.
    fn scopes(&self) -> &[LimitScope];
    /// Replaces the reservation by real usage, as [`Limiter::settle`] describes.
    async fn settle(self: Box<Self>, demand: Demand, actual: Usage, now: Millis);
    /// The reservation was dropped unsettled: free its concurrency and charge its whole demand. Called from
    /// `Drop`, so it must not block; a networked backend hands the work to a task.
    fn abandon(self: Box<Self>, demand: Demand);
}

impl Reservation {
    /// A reservation held by an [`ExternalHold`].
    pub fn external(headers: RateHeaders, demand: Demand, hold: Box<dyn ExternalHold>) -> Reservation {
        Reservation { headers, demand, hold: Hold::External(hold) }
    }

    /// The demand this reservation holds.
    pub fn demand(&self) -> Demand {
        self.demand
    }

    /// The scopes it holds something in (scopes without limits are not among them).
    pub fn scopes(&self) -> Vec<&LimitScope> {
        match &self.hold {
            Hold::Released => Vec::new(),
            Hold::Memory(hold) => hold.scopes().collect(),
            Hold::External(hold) => hold.scopes().iter().collect(),
        }
    }

    /// Replaces the reservation by real usage (see [`Limiter::settle`]).
    pub async fn settle(mut self, actual: Usage, now: Millis) {
        match std::mem::replace(&mut self.hold, Hold::Released) {
            Hold::Released => {}
            Hold::Memory(hold) => hold.release(self.demand, Some(actual)),
            Hold::External(hold) => hold.settle(self.demand, actual, now).await,
        }
    }
}

impl Drop for Reservation {
    /// A reservation that was never settled (a bug or a crashed task) frees its concurrency slots and
    /// charges its whole demand: the limits keep holding, at the cost of under-admitting.
    fn drop(&mut self) {
        match std::mem::replace(&mut self.hold, Hold::Released) {
            Hold::Released => {}
            Hold::Memory(hold) => hold.release(self.demand, None),
            Hold::External(hold) => hold.abandon(self.demand),
        }
    }
}

/// Why an admission did not happen.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// A limit refused (HTTP 429 or 400).
    Denied(Denial),
    /// The limiter could not decide (its backend is unreachable) and its policy is to refuse rather than
    /// guess (HTTP 503 with `Retry-After`).
    Unavailable {
        /// When to try again.
        retry_after_ms: u64,
    },
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Refusal {
        Refusal::Denied(denial)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Denied(denial) => denial.fmt(f),
            Refusal::Unavailable { retry_after_ms } => {
                write!(f, "limiter backend unavailable (retry after {retry_after_ms} ms)")
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// A limiter backend. Methods take `now` so behaviour is a function of inputs; see the crate docs for the
/// guarantees an implementation must keep.
#[async_trait::async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// All-or-nothing across every scope and every limit: either all counters take the demand (1 request,
    /// 1 concurrency slot, `demand.tokens` on the per-minute token bucket and on the day and month token
    /// quotas, `demand.cost` on the day and month budgets), or nothing changes and a failing limit is
    /// reported. `NeverFits` is checked first for every scope. Among other failures the one that lasts
    /// longest is reported ([`DenialReason::rank`]: a spent quota before a rate before a quota only held by
    /// reservations, then the longest wait), so a client that honours `Retry-After` is not sent back into
    /// another refusal; ties go to the earlier scope in `scopes`.
    /// Scopes without limits are skipped; a scope listed twice counts once, with its first limits.
    /// A backend that cannot reach its state answers [`Refusal::Unavailable`] or decides by its own
    /// fallback policy.
    async fn admit(&self, scopes: &[(LimitScope, Limits)], demand: Demand, now: Millis)
    -> Result<Reservation, Refusal>;

    /// Replaces the reservation by real usage, charged in full: concurrency released; requests stay counted;
    /// the token bucket gets back `reserved − actual` when less was used (never above capacity), and is
    /// charged `actual − reserved` below empty when more was (a debt, repaid by refilling); quotas and budgets
    /// take the reservation out of reserved and add the whole `actual` to used in the windows the reservation
    /// was made in, past the limit if need be. If such a window has rolled over meanwhile, its reservation is
    /// charged to nothing and only `actual − reserved` (if positive) to the current window. See the crate
    /// docs for how an excess is repaid.
    ///
    /// A reservation knows its backend, so this is [`Reservation::settle`] for every limiter.
    async fn settle(&self, reservation: Reservation, actual: Usage, now: Millis) {
        reservation.settle(actual, now).await;
    }

    /// Current state of one scope: for each configured limit kind its limit, used, reserved, remaining and
    /// reset time.
    async fn snapshot(&self, scope: &LimitScope, limits: &Limits, now: Millis) -> Vec<LimitState>;

    /// Seeds a scope's used tokens/cost for the current UTC day and month from persisted usage (at start-up,
    /// before traffic). Replaces `used` of those windows; running reservations stay.
    async fn seed(&self, scope: &LimitScope, day: Usage, month: Usage, now: Millis);
}
