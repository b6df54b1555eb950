//! The waiting room of requests refused only because running requests hold the quota or budget
//! they need ([`DenialReason::HeldByReservations`]): the quota has room for them once those
//! reservations settle, which they do at what their requests really used — usually far less than
//! their worst case. Such a request waits, at most its model's `queue_timeout`, and tries again
//! whenever reservations may have settled, rather than being refused while its quota is unspent.
//!
//! Retries come in rounds, one request at a time in priority order (a higher tier `priority`
//! first, then first come), each handing the turn to the next when its retry is done, so that
//! room freed by a settlement goes to the most important request that fits it. A round starts
//! when a settlement of this process finishes (`limiter::settle_soon`), and — for settlements of
//! other replicas sharing the limiter in Redis, or reservations dropped unsettled — on a poll
//! tick when no round started within [`POLL`]. The limiter alone decides every admission:
//! waiting only retries, so no limit is ever exceeded.
//!
//! Only waiting requests touch the room. A request admitted at once never does, and a settlement
//! while nobody waits costs one atomic load.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use portcullis_limits::{Denial, DenialReason, Refusal, Reservation};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::limiter::{SettleSignal, settlements};

/// How often waiting requests look again when nothing settles here: what settles on another
/// replica is seen within this.
pub const POLL: Duration = Duration::from_millis(50);

/// How long a refused request may wait, and how soon it retries among those waiting.
#[derive(Clone, Copy, Debug)]
pub struct Patience {
    /// Its tier's `priority`: higher retries first.
    pub priority: i64,
    /// Its model's `queue_timeout`; zero does not wait.
    pub timeout: Duration,
}

impl Patience {
    /// For what cannot be held by reservations (a request rate and concurrency slot).
    pub const NONE: Patience = Patience { priority: 0, timeout: Duration::ZERO };
}

/// The requests waiting for reservations to settle, in this process.
#[derive(Debug)]
pub struct WaitingRoom {
    signal: &'static SettleSignal,
    queue: Mutex<Queue>,
}

/// A waiting request's place: higher priority first, then by arrival.
type Place = (Reverse<i64>, u64);

#[derive(Debug)]
struct Queue {
    /// Each waiting request's turn: a `Notify` keeps one permit, so a turn given while its request
    /// is busy elsewhere is not lost.
    seats: BTreeMap<Place, Arc<Notify>>,
    arrivals: u64,
    /// Who holds the turn of the current round; `None` between rounds.
    turn: Option<Place>,
    /// Something may have freed room since the current round began: run another after it.
    again: bool,
    /// The settlement count the latest round was started for.
    heard: u64,
    /// When the latest round started: a poll tick starts none sooner than [`POLL`] after it.
    started: Option<Instant>,
}

impl Queue {
    /// Starts a round at the first seat (the turn stays free when nobody is seated).
    fn begin(&mut self) {
        self.started = Some(Instant::now());
        self.again = false;
        self.give_turn(self.seats.first_key_value().map(|(place, _)| *place));
    }

    /// Hands the turn on from `place` (seated or not) to the next seat, or ends the round.
    fn advance(&mut self, place: Place) {
        let next = self.seats.range((std::ops::Bound::Excluded(place), std::ops::Bound::Unbounded)).next();
        match next.map(|(place, _)| *place) {
            Some(next) => self.give_turn(Some(next)),
            None if self.again => self.begin(),
            None => self.turn = None,
        }
    }

    fn give_turn(&mut self, place: Option<Place>) {
        self.turn = place;
        if let Some(turn) = place.and_then(|place| self.seats.get(&place)) {
            turn.notify_one();
        }
    }
}

/// This process's room: settlements are signalled process-wide (see `limiter::settle_soon`), so
/// the proxy and the authorizer share one room, and one priority order.
static ROOM: WaitingRoom = WaitingRoom::on(settlements());

/// The room of this process.
pub fn waiting_room() -> &'static WaitingRoom {
    &ROOM
}

impl WaitingRoom {
    /// A room woken by the settlements of `signal`.
    const fn on(signal: &'static SettleSignal) -> WaitingRoom {
        let queue = Queue { seats: BTreeMap::new(), arrivals: 0, turn: None, again: false, heard: 0, started: None };
        WaitingRoom { signal, queue: Mutex::new(queue) }
    }

    /// Retries `attempt` (for a request it refused as held by reservations) at once and then, in
    /// turn, whenever reservations may have settled, until it is admitted or refused for something
    /// waiting cannot fix, or `patience` runs out: then its latest refusal.
    pub async fn wait<F, Fut>(&self, patience: Patience, mut attempt: F) -> Result<Reservation, Refusal>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Reservation, Refusal>>,
    {
        let deadline = Instant::now() + patience.timeout;
        // Listening before the first retry: a settlement from now on is heard, and one before it
        // is seen by that retry.
        let _listening = self.signal.listen();
        let seat = self.sit(patience.priority);
        let mut held: Denial;
        loop {
            let mut seen = self.signal.count();
            match attempt().await {
                Err(Refusal::Denied(denial)) if denial.reason == DenialReason::HeldByReservations => held = denial,
                other => return other,
            }
            self.done(seat.place);
            loop {
                // Created before the count is read, so no settlement falls between the two.
                let settled = self.signal.notified();
                let count = self.signal.count();
                if count != seen {
                    seen = count;
                    self.heard(count);
                }
                tokio::select! {
                    () = seat.turn.notified() => break,
                    () = settled => {}
                    () = tokio::time::sleep(POLL) => self.tick(),
                    () = tokio::time::sleep_until(deadline) => return Err(Refusal::Denied(held)),
                }
            }
        }
    }

    fn sit(&self, priority: i64) -> Seat<'_> {
        let mut queue = self.lock();
        let place = (Reverse(priority), queue.arrivals);
        queue.arrivals += 1;
        let turn = Arc::new(Notify::new());
        queue.seats.insert(place, Arc::clone(&turn));
        Seat { room: self, place, turn }
    }

    /// A retry is done: the turn goes on, if `place` had it.
    fn done(&self, place: Place) {
        let mut queue = self.lock();
        if queue.turn == Some(place) {
            queue.advance(place);
        }
    }

    /// Settlements up to `count` were heard: a round for them, unless one was started already.
    fn heard(&self, count: u64) {
        let mut queue = self.lock();
        if count <= queue.heard {
            return;
        }
        queue.heard = count;
        if queue.turn.is_some() {
            queue.again = true;
        } else {
            queue.begin();
        }
    }

    /// Nothing settled here for a while: look again, unless a round is running or just was.
    fn tick(&self) {
        let mut queue = self.lock();
        if queue.turn.is_none() && queue.started.is_none_or(|started| started.elapsed() >= POLL) {
            queue.begin();
        }
    }

    /// The queue's lock: held for a few map operations, never across an await; a panic cannot
    /// leave it half-changed, so a poisoned one is used as it is.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request's seat; leaving (admitted, refused, out of patience or cancelled with its client)
/// gives up its turn.
struct Seat<'a> {
    room: &'a WaitingRoom,
    place: Place,
    turn: Arc<Notify>,
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        let mut queue = self.room.lock();
        queue.seats.remove(&self.place);
        if queue.turn == Some(self.place) {
            queue.advance(self.place);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use portcullis_limits::{Demand, LimitKind, LimitScope, Limiter, Limits, MemoryLimiter, Money, Usage};

    use super::*;

    const NOON: u64 = 1_816_171_200_000;

    fn quota(tokens_per_day: u64) -> Vec<(LimitScope, Limits)> {
        vec![(LimitScope::Key("k".into()), Limits { tokens_per_day: Some(tokens_per_day), ..Limits::default() })]
    }

    fn demand(tokens: u64) -> Demand {
        Demand { tokens, cost: Money::ZERO }
    }

    fn usage(tokens: u64) -> Usage {
        Usage { tokens, cost: Money::ZERO }
    }

    /// A room on a signal of its own, so that tests running at once do not wake each other.
    fn room() -> (Arc<WaitingRoom>, &'static SettleSignal) {
        let signal: &'static SettleSignal = Box::leak(Box::new(SettleSignal::new()));
        (Arc::new(WaitingRoom::on(signal)), signal)
    }

    /// A room, a limiter and a quota of 100 tokens a day, `running` of them held by a request in
    /// flight.
    struct Scene {
        room: Arc<WaitingRoom>,
        signal: &'static SettleSignal,
        limiter: Arc<MemoryLimiter>,
        scopes: Vec<(LimitScope, Limits)>,
        running: Reservation,
    }

    fn scene(running: u64) -> Scene {
        let (room, signal) = room();
        let limiter = Arc::new(MemoryLimiter::new());
        let scopes = quota(100);
        let running = limiter.admit_sync(&scopes, demand(running), NOON).unwrap();
        Scene { room, signal, limiter, scopes, running }
    }

    /// Waits in `room` for `tokens` under `scopes`, from a refusal the caller got first.
    fn waiter(
        room: &Arc<WaitingRoom>,
        limiter: &Arc<MemoryLimiter>,
        scopes: &[(LimitScope, Limits)],
        tokens: u64,
        patience: Patience,
    ) -> tokio::task::JoinHandle<Result<Reservation, Refusal>> {
        let (room, limiter, scopes) = (Arc::clone(room), Arc::clone(limiter), scopes.to_vec());
        tokio::spawn(async move {
            let held = limiter.admit_sync(&scopes, demand(tokens), NOON).unwrap_err();
            assert_eq!(held.reason, DenialReason::HeldByReservations);
            room.wait(patience, || limiter.admit(&scopes, demand(tokens), NOON)).await
        })
    }

    fn patience(priority: i64) -> Patience {
        Patience { priority, timeout: Duration::from_secs(5) }
    }

    fn reason(result: &Result<Reservation, Refusal>) -> Option<DenialReason> {
        match result {
            Err(Refusal::Denied(denial)) => Some(denial.reason),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_settlement_here_admits_the_waiting_request_at_once() {
        let Scene { room, signal, limiter, scopes, running } = scene(80);
        let waiting = waiter(&room, &limiter, &scopes, 50, patience(0));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let start = Instant::now();
        limiter.settle_sync(running, usage(20), NOON);
        signal.settled();
        let admitted = waiting.await.unwrap().unwrap();
        assert!(start.elapsed() < POLL, "woken by the settlement, not by the poll");
        assert_eq!(admitted.demand(), demand(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_settlement_elsewhere_is_seen_by_the_poll() {
        let Scene { room, signal: _, limiter, scopes, running } = scene(80);
        let waiting = waiter(&room, &limiter, &scopes, 50, patience(0));
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Settled as another replica would: the counters change, nothing here is signalled.
        limiter.settle_sync(running, usage(20), NOON);
        let start = Instant::now();
        waiting.await.unwrap().unwrap();
        assert!(start.elapsed() <= POLL * 2, "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_higher_priority_takes_the_room_freed_first_even_when_it_came_later() {
        let Scene { room, signal, limiter, scopes, running } = scene(100);
        let low = waiter(&room, &limiter, &scopes, 60, patience(0));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let high = waiter(&room, &limiter, &scopes, 60, patience(5));
        tokio::time::sleep(Duration::from_millis(1)).await;
        // 40 used: room for one of them only.
        limiter.settle_sync(running, usage(40), NOON);
        signal.settled();
        let high = high.await.unwrap();
        assert!(high.is_ok(), "{:?}", reason(&high));
        let low = low.await.unwrap();
        assert_eq!(reason(&low), Some(DenialReason::HeldByReservations), "out of patience, still held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_gives_up_after_its_patience_with_the_latest_refusal() {
        let Scene { room, signal: _, limiter, scopes, running: _running } = scene(80);
        let start = Instant::now();
        let patience = Patience { priority: 0, timeout: Duration::from_millis(700) };
        let result = waiter(&room, &limiter, &scopes, 50, patience).await.unwrap();
        let Err(Refusal::Denied(denial)) = result else { panic!("still held") };
        assert_eq!(
            (denial.limit, denial.reason, denial.available),
            (LimitKind::TokensPerDay, DenialReason::HeldByReservations, Some(20))
        );
        assert!(start.elapsed() >= Duration::from_millis(700) && start.elapsed() < Duration::from_millis(800));
        assert!(room.lock().seats.is_empty(), "its seat is given up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quota_spent_by_what_settled_ends_the_wait_at_once() {
        let Scene { room, signal, limiter, scopes, running } = scene(80);
        let waiting = waiter(&room, &limiter, &scopes, 50, patience(0));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let start = Instant::now();
        limiter.settle_sync(running, usage(80), NOON);
        signal.settled();
        assert_eq!(reason(&waiting.await.unwrap()), Some(DenialReason::QuotaExhausted));
        assert!(start.elapsed() < POLL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_leaves_in_its_turn_hands_it_on() {
        let Scene { room, signal, limiter, scopes, running } = scene(100);
        let first = waiter(&room, &limiter, &scopes, 60, patience(9));
        let second = waiter(&room, &limiter, &scopes, 60, patience(0));
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The first in line is given the turn and goes (its client hung up) before using it.
        {
            let mut queue = room.lock();
            queue.begin();
            assert_eq!(queue.turn.map(|(Reverse(priority), _)| priority), Some(9));
        }
        first.abort();
        let start = Instant::now();
        limiter.settle_sync(running, usage(40), NOON);
        signal.settled();
        second.await.unwrap().unwrap();
        assert!(start.elapsed() < POLL, "the turn reached the second at once");
    }

    #[test]
    fn a_settlement_with_nobody_waiting_is_not_even_counted() {
        let signal = SettleSignal::new();
        signal.settled();
        assert_eq!(signal.count(), 0);
        let listening = signal.listen();
        signal.settled();
        drop(listening);
        signal.settled();
        assert_eq!(signal.count(), 1);
    }
}
