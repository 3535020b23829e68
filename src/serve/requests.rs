//! A generation's request count, kept only when `recycle.max_requests` is set: one relaxed
//! atomic addition per request, and a notification when the count reaches the limit (the
//! worker then tells its supervisor, once). Without `max_requests` nothing is counted.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Requests started in this generation, and the count at which to say so.
#[derive(Debug)]
pub(crate) struct RequestCount {
    n: AtomicU64,
    limit: u64,
    reached: Notify,
}

impl RequestCount {
    /// Count requests, notifying [`RequestCount::reached`] when the `limit`th starts.
    pub(crate) fn new(limit: u64) -> RequestCount {
        RequestCount {
            n: AtomicU64::new(0),
            limit: limit.max(1),
            reached: Notify::new(),
        }
    }

    /// One more request.
    pub(crate) fn count(&self) {
        if self.n.fetch_add(1, Ordering::Relaxed) + 1 == self.limit {
            // A permit is stored if nobody waits yet.
            self.reached.notify_one();
        }
    }

    /// Requests counted so far.
    pub(crate) fn get(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }

    /// The limit.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Resolves once the count has reached the limit.
    pub(crate) async fn reached(&self) {
        self.reached.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limit_is_announced_once_reached() {
        let c = RequestCount::new(3);
        c.count();
        c.count();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), c.reached()).await;
        assert!(waiting.is_err(), "announced before the limit");
        c.count();
        c.count();
        tokio::time::timeout(std::time::Duration::from_secs(1), c.reached())
            .await
            .expect("not announced");
        assert_eq!(c.get(), 4);
    }
}
