//! A worker-local shutdown signal: set once, wakes every task waiting on it.
//!
//! The process-wide flag is an `AtomicBool` in [`super::Shared`]; each worker polls it on a
//! timer and fires its local signal, so no waker ever crosses threads. Waiters live in slots
//! that are freed when their future is dropped, so idle connections that come and go do not
//! grow the list.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Fired once when the worker begins shutting down.
#[derive(Default)]
pub struct ShutdownSignal {
    fired: Cell<bool>,
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl ShutdownSignal {
    /// Whether shutdown has begun.
    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Begins shutdown and wakes every waiter.
    pub fn fire(&self) {
        self.fired.set(true);
        for waker in self.slots.borrow_mut().iter_mut().filter_map(Option::take) {
            waker.wake();
        }
    }

    /// Completes once shutdown has begun.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            slot: None,
        }
    }
}

/// Future returned by [`ShutdownSignal::wait`].
pub struct Wait<'a> {
    signal: &'a ShutdownSignal,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signal = self.signal;
        if signal.fired.get() {
            return Poll::Ready(());
        }
        let mut slots = signal.slots.borrow_mut();
        match self.slot {
            Some(i) => {
                if let Some(entry) = slots.get_mut(i) {
                    *entry = Some(cx.waker().clone());
                }
            }
            None => {
                let waker = Some(cx.waker().clone());
                let i = match signal.free.borrow_mut().pop() {
                    Some(i) => {
                        slots[i] = waker;
                        i
                    }
                    None => {
                        slots.push(waker);
                        slots.len() - 1
                    }
                };
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(entry) = self.signal.slots.borrow_mut().get_mut(i) {
                *entry = None;
            }
            self.signal.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_fire_wakes_waiters() {
        let signal = ShutdownSignal::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..100 {
            let mut w = Box::pin(signal.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(signal.slots.borrow().len(), 1);
        let mut w = Box::pin(signal.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        signal.fire();
        assert!(w.as_mut().poll(&mut cx).is_ready());
        assert!(signal.is_fired());
    }
}
