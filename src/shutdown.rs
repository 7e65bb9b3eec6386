//! The one shutdown signal every unit of a sidecar takes, whatever its engine: it carries
//! the deadline all units share, set once when shutdown begins. Decides nothing itself:
//! the supervisor begins it (on a signal or a lost lease) and the metrics endpoint's end
//! is a second signal of the same kind.

use std::time::Instant;
use tokio::sync::watch;

/// Held by whoever begins the shutdown.
pub struct Begin(watch::Sender<Option<Instant>>);

/// Held by each unit: wait for it, or read the deadline.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<Option<Instant>>);

pub fn signal() -> (Begin, Shutdown) {
    let (tx, rx) = watch::channel(None);
    (Begin(tx), Shutdown(rx))
}

impl Begin {
    /// Begin the shutdown with `deadline`; a later call keeps the first deadline (one
    /// deadline for every unit). Returns the deadline in force.
    pub fn begin(&self, deadline: Instant) -> Instant {
        self.0.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(deadline);
                true
            } else {
                false
            }
        });
        self.0.borrow().unwrap_or(deadline)
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// The shared deadline, once the shutdown has begun.
    pub fn deadline(&self) -> Option<Instant> {
        *self.0.borrow()
    }

    /// Resolves once the shutdown has begun (at once if it has), with its deadline. If
    /// every `Begin` is gone without beginning, never resolves: nobody can stop the unit
    /// then but the process's end.
    pub async fn begun(&mut self) -> Instant {
        loop {
            if let Some(d) = *self.0.borrow_and_update() {
                return d;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves when the deadline passes (never before the shutdown began).
    pub async fn deadline_passed(&mut self) {
        let d = self.begun().await;
        tokio::time::sleep_until(d.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_deadline_for_every_unit() {
        let (begin, mut a) = signal();
        let mut b = begin.subscribe();
        assert_eq!(a.deadline(), None);
        let first = Instant::now() + Duration::from_millis(30);
        let waiting = tokio::spawn(async move { b.begun().await });
        assert_eq!(begin.begin(first), first);
        // A second begin (a lost lease after the signal) keeps the first deadline.
        assert_eq!(begin.begin(first + Duration::from_secs(9)), first);
        assert_eq!(waiting.await.unwrap(), first);
        assert_eq!(a.begun().await, first);
        let t = Instant::now();
        a.deadline_passed().await;
        assert!(Instant::now() >= first && t.elapsed() < Duration::from_secs(5));
    }
}
