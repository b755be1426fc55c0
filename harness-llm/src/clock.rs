//! Sleeps precise to tens of microseconds, for the mock server's token schedule.
//!
//! tokio's timer wheel has millisecond ticks: a deadline is rounded up to the next tick, so a
//! token is sent up to a millisecond late, and every token due within the same millisecond
//! leaves together. At high concurrency that second effect puts the streams in lockstep: they
//! end in the same tick, the client's closed loop starts all the next requests at once, and
//! both sides queue the burst. On Linux this clock keeps its deadlines in a heap and arms one
//! `timerfd` (nanosecond resolution) at the earliest; elsewhere it falls back to tokio's
//! timer.

use tokio::time::Instant;

/// A source of precise sleeps. Create it outside a runtime if you like: the timer itself is
/// set up on first use, on the runtime of the first sleeper.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    #[cfg(target_os = "linux")]
    inner: std::sync::OnceLock<Option<std::sync::Arc<linux::Inner>>>,
}

impl Clock {
    /// Completes at `due` or shortly after (never before).
    pub(crate) async fn sleep_until(&self, due: Instant) {
        if due <= Instant::now() {
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(fired) = self
            .inner
            .get_or_init(linux::Inner::start)
            .as_ref()
            .and_then(|inner| inner.schedule(due))
        {
            let _ = fired.await;
            return;
        }
        tokio::time::sleep_until(due).await;
    }

    /// Runs `task` at `due`, then again at each time it returns, until it returns `None`.
    /// On Linux it runs on the clock's driver, right after the timer fires and without a task
    /// switch, so `fire` must be quick and must not block; elsewhere in a task of its own.
    pub(crate) fn run_at(&self, due: Instant, task: Box<dyn Timed>) {
        #[cfg(target_os = "linux")]
        let task = match self.inner.get_or_init(linux::Inner::start).as_ref() {
            Some(inner) => match inner.run_at(due, task) {
                Ok(()) => return,
                Err(task) => task,
            },
            None => task,
        };
        tokio::spawn(async move {
            let (mut task, mut due) = (task, due);
            loop {
                tokio::time::sleep_until(due).await;
                match task.fire() {
                    Some(next) => due = next,
                    None => return,
                }
            }
        });
    }
}

/// Work run by the clock at the times it asks for ([`Clock::run_at`]).
pub(crate) trait Timed: Send + 'static {
    /// Does what is due now; returns when to run next, or `None` when done.
    fn fire(&mut self) -> Option<Instant>;
}

/// `at` on the machine's `CLOCK_MONOTONIC`, in nanoseconds: the clock that tokio's and std's
/// `Instant` read on Linux, shared by every process on the machine. `None` elsewhere.
pub fn monotonic_ns(at: Instant) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::sync::OnceLock;
        static BASE: OnceLock<Option<(Instant, u64)>> = OnceLock::new();
        let (base, raw) = (*BASE.get_or_init(|| {
            let now = Instant::now();
            let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
            let raw = u64::try_from(ts.tv_sec()).ok()? * 1_000_000_000
                + u64::try_from(ts.tv_nsec()).ok()?;
            Some((now, raw))
        }))?;
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).ok();
        if at >= base {
            raw.checked_add(ns(at - base)?)
        } else {
            raw.checked_sub(ns(base - at)?)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = at;
        None
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(Some(inner)) = self.inner.get() {
            inner.close();
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use tokio::io::unix::AsyncFd;
    use tokio::sync::oneshot;
    use tokio::time::Instant;

    use super::Timed;

    struct Fd(TimerFd);

    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    struct Entry {
        due: Instant,
        seq: u64,
        wake: Wake,
    }

    enum Wake {
        /// A sleeper waiting in its task.
        Sleeper(oneshot::Sender<()>),
        /// Work run on the driver itself.
        Run(Box<dyn Timed>),
    }

    impl PartialEq for Entry {
        fn eq(&self, other: &Self) -> bool {
            (self.due, self.seq) == (other.due, other.seq)
        }
    }
    impl Eq for Entry {}
    impl PartialOrd for Entry {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Entry {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (self.due, self.seq).cmp(&(other.due, other.seq))
        }
    }

    #[derive(Default)]
    struct State {
        heap: BinaryHeap<Reverse<Entry>>,
        /// The deadline the timerfd is armed for.
        armed: Option<Instant>,
        seq: u64,
        closed: bool,
    }

    pub(super) struct Inner {
        fd: AsyncFd<Fd>,
        state: Mutex<State>,
    }

    impl std::fmt::Debug for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Clock").finish_non_exhaustive()
        }
    }

    impl Inner {
        /// The timerfd and the task that fires deadlines; `None` (tokio's timer is used)
        /// outside a runtime or when the timerfd cannot be made.
        pub(super) fn start() -> Option<Arc<Inner>> {
            tokio::runtime::Handle::try_current().ok()?;
            let fd = TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )
            .map_err(|e| tracing::debug!(error = %e, "no timerfd; using tokio's timer"))
            .ok()?;
            // `AsyncFd::new` is deprecated because a caller could close or swap the fd while it
            // is registered; `Fd` owns the timerfd and returns the same fd for its whole life,
            // so that cannot happen here. Its replacement, `register`, is `unsafe`, which this
            // workspace forbids.
            #[allow(deprecated)]
            let fd = AsyncFd::new(Fd(fd))
                .map_err(|e| tracing::debug!(error = %e, "timerfd not pollable"))
                .ok()?;
            let inner = Arc::new(Inner {
                fd,
                state: Mutex::new(State::default()),
            });
            tokio::spawn(drive(inner.clone()));
            Some(inner)
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// Queues a deadline; `None` when the timer cannot be armed (use tokio's).
        pub(super) fn schedule(&self, due: Instant) -> Option<oneshot::Receiver<()>> {
            let (fire, fired) = oneshot::channel();
            self.push(due, Wake::Sleeper(fire)).ok()?;
            Some(fired)
        }

        /// Queues work to run on the driver at `due`; gives it back when the timer cannot be
        /// armed.
        pub(super) fn run_at(
            &self,
            due: Instant,
            task: Box<dyn Timed>,
        ) -> Result<(), Box<dyn Timed>> {
            match self.push(due, Wake::Run(task)) {
                Err(Wake::Run(task)) => Err(task),
                _ => Ok(()),
            }
        }

        fn push(&self, due: Instant, wake: Wake) -> Result<(), Wake> {
            let mut s = self.lock();
            if s.closed {
                return Err(wake);
            }
            if s.armed.is_none_or(|a| due < a) {
                if self.arm(due).is_err() {
                    return Err(wake);
                }
                s.armed = Some(due);
            }
            s.seq += 1;
            let seq = s.seq;
            s.heap.push(Reverse(Entry { due, seq, wake }));
            Ok(())
        }

        /// Arms the timerfd for `due` (relative, at least a nanosecond: zero would disarm).
        fn arm(&self, due: Instant) -> nix::Result<()> {
            let left = due
                .saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1));
            self.fd.get_ref().0.set(
                Expiration::OneShot(TimeSpec::from_duration(left)),
                TimerSetTimeFlags::empty(),
            )
        }

        /// Stops the driver: it wakes at once and ends; sleepers still queued are released.
        pub(super) fn close(&self) {
            let mut s = self.lock();
            s.closed = true;
            let _ = self.arm(Instant::now());
        }

        /// Fires every deadline that has passed and re-arms for the next. Returns false once
        /// closed.
        fn fire_due(&self) -> bool {
            let mut run = Vec::new();
            {
                let mut s = self.lock();
                let now = Instant::now();
                while let Some(Reverse(e)) = s.heap.peek() {
                    if e.due > now && !s.closed {
                        break;
                    }
                    if let Some(Reverse(e)) = s.heap.pop() {
                        match e.wake {
                            Wake::Sleeper(fire) => {
                                let _ = fire.send(());
                            }
                            Wake::Run(task) => run.push(task),
                        }
                    }
                }
                if s.closed {
                    return false;
                }
            }
            // Outside the lock: the work may queue sleeps of its own.
            let again: Vec<_> = run
                .into_iter()
                .filter_map(|mut task| task.fire().map(|due| (due, task)))
                .collect();
            let mut s = self.lock();
            for (due, task) in again {
                s.seq += 1;
                let seq = s.seq;
                s.heap.push(Reverse(Entry {
                    due,
                    seq,
                    wake: Wake::Run(task),
                }));
            }
            if s.closed {
                return false;
            }
            s.armed = None;
            if let Some(next) = s.heap.peek().map(|Reverse(e)| e.due) {
                match self.arm(next) {
                    Ok(()) => s.armed = Some(next),
                    Err(e) => {
                        // Release everyone rather than leave them waiting forever.
                        tracing::warn!(error = %e, "cannot arm the timerfd");
                        s.closed = true;
                        while let Some(Reverse(e)) = s.heap.pop() {
                            if let Wake::Sleeper(fire) = e.wake {
                                let _ = fire.send(());
                            }
                        }
                        return false;
                    }
                }
            }
            true
        }
    }

    async fn drive(inner: Arc<Inner>) {
        loop {
            let Ok(mut ready) = inner.fd.readable().await else {
                break;
            };
            // Read the expiry count; EAGAIN (nothing expired yet) clears readiness itself.
            if ready
                .try_io(|fd| fd.get_ref().0.wait().map_err(std::io::Error::from))
                .is_ok()
            {
                ready.clear_ready();
            }
            if !inner.fire_due() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sleeps_end_at_or_after_their_deadline_in_order() {
        let clock = std::sync::Arc::new(Clock::default());
        let start = Instant::now();
        let mut tasks = Vec::new();
        // Out of order, with ties.
        for ms in [7u64, 3, 5, 3, 1, 9] {
            let clock = clock.clone();
            let due = start + Duration::from_millis(ms);
            tasks.push(tokio::spawn(async move {
                clock.sleep_until(due).await;
                (due, Instant::now())
            }));
        }
        for t in tasks {
            let (due, woke) = t.await.expect("task");
            assert!(woke >= due, "woke {:?} before its deadline", due - woke);
        }
        // A deadline in the past returns at once.
        clock.sleep_until(start).await;
    }

    /// Fires at each of its deadlines in turn, noting when it ran.
    struct Ticks {
        due: Vec<Instant>,
        ran: std::sync::Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>,
    }

    impl Timed for Ticks {
        fn fire(&mut self) -> Option<Instant> {
            let due = self.due.remove(0);
            self.ran
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((due, Instant::now()));
            self.due.first().copied()
        }
    }

    #[tokio::test]
    async fn work_runs_at_each_time_it_asks_for_and_stops_when_done() {
        let clock = Clock::default();
        let start = Instant::now();
        let ran = std::sync::Arc::default();
        let due: Vec<_> = [2u64, 4, 4, 9]
            .iter()
            .map(|ms| start + Duration::from_millis(*ms))
            .collect();
        clock.run_at(
            due[0],
            Box::new(Ticks {
                due: due.clone(),
                ran: std::sync::Arc::clone(&ran),
            }),
        );
        // A sleeper on the same clock, between the runs.
        clock.sleep_until(start + Duration::from_millis(6)).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let ran = ran.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(ran.len(), 4, "ran {ran:?}");
        for ((due_at, at), want) in ran.iter().zip(&due) {
            assert_eq!(due_at, want);
            assert!(at >= due_at, "ran {:?} early", *due_at - *at);
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn dropping_the_clock_stops_its_driver() {
        let clock = Clock::default();
        clock
            .sleep_until(Instant::now() + Duration::from_millis(2))
            .await;
        let inner = clock
            .inner
            .get()
            .and_then(Option::as_ref)
            .map(std::sync::Arc::downgrade)
            .expect("the timerfd clock is in use on Linux");
        drop(clock);
        for _ in 0..1000 {
            if inner.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the driver task still holds the clock after it was dropped");
    }
}
