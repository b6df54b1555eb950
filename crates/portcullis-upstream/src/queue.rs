//! The waiting room of one model: requests that found every usable endpoint at `max_concurrent`,
//! ordered by priority (higher first) and then by arrival (first come, first served).
//!
//! This is only the data structure. Who gets a slot, when, and the locking around it are in
//! `pool`; the heap here is always used under the pool's mutex and never across an `.await`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;

use tokio::sync::oneshot;

/// One queued request. The pool hands it a slot by sending on `sender`.
pub(crate) struct Waiter<T> {
    priority: i64,
    /// Arrival order within the queue: lower came first.
    seq: u64,
    /// Endpoints this request has already tried (indexed like the pool): a retry waits only for
    /// the others.
    pub tried: Vec<bool>,
    pub sender: oneshot::Sender<T>,
}

impl<T> Waiter<T> {
    /// The key the heap orders by: a greater key is served first.
    fn key(&self) -> (i64, std::cmp::Reverse<u64>) {
        (self.priority, std::cmp::Reverse(self.seq))
    }
}

impl<T> PartialEq for Waiter<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Waiter<T> {}

impl<T> PartialOrd for Waiter<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Waiter<T> {
    /// Higher priority is greater; at equal priority the earlier arrival is greater, so the
    /// max-heap pops in (priority desc, arrival asc) order.
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl<T> fmt::Debug for Waiter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter").field("priority", &self.priority).field("seq", &self.seq).finish_non_exhaustive()
    }
}

/// The queued requests of one model.
pub(crate) struct WaitQueue<T> {
    heap: BinaryHeap<Waiter<T>>,
    next_seq: u64,
}

impl<T> fmt::Debug for WaitQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitQueue").field("len", &self.heap.len()).finish()
    }
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        WaitQueue { heap: BinaryHeap::new(), next_seq: 0 }
    }
}

impl<T> WaitQueue<T> {
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Queues a request; returns its id (for [`WaitQueue::remove`]) and where its slot arrives.
    pub(crate) fn push(&mut self, priority: i64, tried: Vec<bool>) -> (u64, oneshot::Receiver<T>) {
        let (sender, receiver) = oneshot::channel();
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.heap.push(Waiter { priority, seq, tried, sender });
        (seq, receiver)
    }

    /// Takes the request to serve next out of the queue.
    pub(crate) fn pop(&mut self) -> Option<Waiter<T>> {
        self.heap.pop()
    }

    /// Puts popped waiters back (they keep their place: priority and arrival are in them).
    pub(crate) fn restore(&mut self, waiters: Vec<Waiter<T>>) {
        self.heap.extend(waiters);
    }

    /// Removes a request that stops waiting; false when it is no longer queued (it was served).
    pub(crate) fn remove(&mut self, seq: u64) -> bool {
        let before = self.heap.len();
        self.heap.retain(|waiter| waiter.seq != seq);
        self.heap.len() != before
    }

    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.heap.iter().any(|waiter| waiter.seq == seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut WaitQueue<()>) -> Vec<u64> {
        std::iter::from_fn(|| queue.pop().map(|waiter| waiter.seq)).collect()
    }

    #[test]
    fn pops_by_priority_then_arrival() {
        let mut queue = WaitQueue::<()>::default();
        // Arrivals 0..5 with priorities 0, 0, 10, 0, 10.
        let _receivers: Vec<_> = [0, 0, 10, 0, 10].into_iter().map(|p| queue.push(p, Vec::new()).1).collect();
        assert_eq!(queue.len(), 5);
        assert_eq!(drain(&mut queue), [2, 4, 0, 1, 3]);
    }

    #[test]
    fn negative_and_extreme_priorities_order_correctly() {
        let mut queue = WaitQueue::<()>::default();
        let _receivers: Vec<_> =
            [-5, i64::MIN, 0, i64::MAX, -5].into_iter().map(|p| queue.push(p, Vec::new()).1).collect();
        assert_eq!(drain(&mut queue), [3, 2, 0, 4, 1]);
    }

    #[test]
    fn later_arrivals_of_a_higher_priority_overtake_but_equal_ones_queue_behind() {
        let mut queue = WaitQueue::<()>::default();
        let _a = queue.push(1, Vec::new());
        let _b = queue.push(1, Vec::new());
        assert_eq!(queue.pop().map(|w| w.seq), Some(0));
        let _c = queue.push(1, Vec::new());
        let _d = queue.push(2, Vec::new());
        assert_eq!(drain(&mut queue), [3, 1, 2]);
    }

    #[test]
    fn remove_and_restore_keep_the_order() {
        let mut queue = WaitQueue::<()>::default();
        let _receivers: Vec<_> = [0, 5, 0, 5].into_iter().map(|p| queue.push(p, Vec::new()).1).collect();
        assert!(queue.remove(1));
        assert!(!queue.remove(1), "already gone");
        assert!(!queue.contains(1));
        assert!(queue.contains(2));
        let first = queue.pop().unwrap();
        let second = queue.pop().unwrap();
        assert_eq!((first.seq, second.seq), (3, 0));
        queue.restore(vec![second, first]);
        assert_eq!(drain(&mut queue), [3, 0, 2]);
    }

    #[test]
    fn the_sender_reaches_the_receiver() {
        let mut queue = WaitQueue::<u32>::default();
        let (_, mut receiver) = queue.push(0, vec![false, true]);
        let waiter = queue.pop().unwrap();
        assert_eq!(waiter.tried, [false, true]);
        waiter.sender.send(7).unwrap();
        assert_eq!(receiver.try_recv().unwrap(), 7);
    }
}
