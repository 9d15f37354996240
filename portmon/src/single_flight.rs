//! One piece of work shared by everyone who asks for it while it runs: a
//! request that arrives while a snapshot is being taken waits for that one
//! instead of taking its own, so N concurrent scrapes cost one snapshot,
//! and the memory of one.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
};

/// Work in flight, shared by its callers that ask for the same key (one
/// key, `()`, where all ask for the same). Blocking: call it from threads
/// that may wait (the blocking pool).
#[derive(Debug)]
pub struct SingleFlight<T, K = ()> {
    current: Mutex<HashMap<K, Arc<Flight<T>>>>,
}

#[derive(Debug)]
struct Flight<T> {
    outcome: Mutex<Outcome<T>>,
    landed: Condvar,
}

#[derive(Debug)]
enum Outcome<T> {
    Flying,
    Landed(Arc<T>),
    /// The work panicked: waiters try again with work of their own.
    Crashed,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T, K> Default for SingleFlight<T, K> {
    fn default() -> Self {
        Self {
            current: Mutex::new(HashMap::new()),
        }
    }
}

/// Marks the flight landed (or crashed, if dropped by a panic) and lets
/// the next caller start a new one.
struct Landing<'a, T, K: Hash + Eq> {
    owner: &'a SingleFlight<T, K>,
    key: Option<K>,
    flight: Arc<Flight<T>>,
    result: Option<Arc<T>>,
}

impl<T, K: Hash + Eq> Drop for Landing<'_, T, K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.owner.current).remove(&key);
        }
        *lock(&self.flight.outcome) = match self.result.take() {
            Some(result) => Outcome::Landed(result),
            None => Outcome::Crashed,
        };
        self.flight.landed.notify_all();
    }
}

impl<T> SingleFlight<T> {
    /// The result of the flight under way, or of `work` run now if none is:
    /// and whether this call ran it.
    pub fn run(&self, work: impl FnOnce() -> T) -> (Arc<T>, bool) {
        self.run_for((), work)
    }
}

impl<T, K: Hash + Eq + Clone> SingleFlight<T, K> {
    /// The result of the flight under way for `key`, or of `work` run now
    /// if none is: and whether this call ran it.
    pub fn run_for(&self, key: K, work: impl FnOnce() -> T) -> (Arc<T>, bool) {
        let mut work = Some(work);
        loop {
            let (flight, leader) = {
                let mut current = lock(&self.current);
                match current.get(&key) {
                    Some(flight) => (flight.clone(), false),
                    None => {
                        let flight = Arc::new(Flight {
                            outcome: Mutex::new(Outcome::Flying),
                            landed: Condvar::new(),
                        });
                        current.insert(key.clone(), flight.clone());
                        (flight, true)
                    }
                }
            };
            if leader {
                let mut landing = Landing {
                    owner: self,
                    key: Some(key),
                    flight,
                    result: None,
                };
                let Some(work) = work.take() else {
                    unreachable!("a caller leads one flight at most")
                };
                let result = Arc::new(work());
                landing.result = Some(result.clone());
                return (result, true);
            }
            let mut outcome = lock(&flight.outcome);
            while matches!(*outcome, Outcome::Flying) {
                outcome = flight
                    .landed
                    .wait(outcome)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if let Outcome::Landed(result) = &*outcome {
                return (result.clone(), false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[test]
    fn concurrent_callers_share_one_run() {
        let flight = SingleFlight::default();
        let runs = AtomicUsize::new(0);
        let results: Vec<usize> = std::thread::scope(|scope| {
            let callers: Vec<_> = (0..16)
                .map(|_| {
                    scope.spawn(|| {
                        *flight
                            .run(|| {
                                std::thread::sleep(Duration::from_millis(200));
                                runs.fetch_add(1, Ordering::SeqCst) + 1
                            })
                            .0
                    })
                })
                .collect();
            callers.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let runs = runs.load(Ordering::SeqCst);
        // Threads that started after the first flight landed lead another.
        assert!(runs <= 3, "{runs} runs for 16 callers");
        assert!(results.iter().all(|&r| r <= runs));
        // Later callers start a fresh flight.
        assert_eq!(*flight.run(|| 99).0, 99);
    }

    #[test]
    fn different_keys_fly_apart() {
        let flight: SingleFlight<u32, &str> = SingleFlight::default();
        std::thread::scope(|scope| {
            let a = scope.spawn(|| {
                flight.run_for("a", || {
                    std::thread::sleep(Duration::from_millis(200));
                    1
                })
            });
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(flight.run_for("b", || 2), (Arc::new(2), true));
            assert_eq!(*a.join().unwrap().0, 1);
        });
    }

    #[test]
    fn a_crashed_flight_lets_waiters_run_their_own() {
        let flight = Arc::new(SingleFlight::default());
        let leader = {
            let flight = flight.clone();
            std::thread::spawn(move || {
                flight.run(|| -> u32 {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!("work failed")
                })
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*flight.run(|| 7).0, 7);
        assert!(leader.join().is_err());
    }
}
