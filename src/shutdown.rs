//! Shutdown: a process-wide flag set by the signal thread, and a per-executor notifier that
//! tasks await.
//!
//! The flag is the only thing shared across threads. Each executor polls it on a short timer and
//! fires its own [`Shutdown`], which wakes every waiting task on that executor; no waker ever
//! crosses a thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How often executors look at the process-wide flag.
const POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Inner {
    fired: Cell<bool>,
    /// One slot per waiting future, reused after it is dropped.
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

/// An executor-local shutdown notifier.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Rc<Inner>,
}

impl Shutdown {
    /// A notifier that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires: every current and future [`Shutdown::wait`] completes.
    pub fn trigger(&self) {
        self.inner.fired.set(true);
        for w in self.inner.wakers.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Whether it has fired.
    pub fn is_triggered(&self) -> bool {
        self.inner.fired.get()
    }

    /// Completes when it fires.
    pub fn wait(&self) -> Wait {
        Wait { inner: self.inner.clone(), slot: None }
    }

    /// Fires this notifier once `flag` is set; runs until then.
    pub async fn follow(&self, flag: Arc<AtomicBool>) {
        while !flag.load(Ordering::Acquire) && !self.is_triggered() {
            glommio::timer::sleep(POLL).await;
        }
        self.trigger();
    }
}

/// Future returned by [`Shutdown::wait`].
pub struct Wait {
    inner: Rc<Inner>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired.get() {
            return Poll::Ready(());
        }
        let inner = self.inner.clone();
        let mut wakers = inner.wakers.borrow_mut();
        match self.slot {
            Some(i) => match &mut wakers[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let i = match inner.free.borrow_mut().pop() {
                    Some(i) => {
                        wakers[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        wakers.push(Some(cx.waker().clone()));
                        wakers.len() - 1
                    }
                };
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.inner.wakers.borrow_mut()[i] = None;
            self.inner.free.borrow_mut().push(i);
        }
    }
}
