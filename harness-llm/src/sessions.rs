//! Multi-turn sessions (synthetic or from conversations): each turn sends the whole history,
//! the server's own replies included, waits for the reply, thinks, and goes on. A closed
//! loop keeps `concurrency` sessions in flight; an open loop starts sessions at the request
//! rate (capped at `concurrency` in flight when both are set).

use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Record};
use crate::clock::Clock;
use crate::load::{LoadSpec, arrive, normal, prompt_seed, unit_gap};
use crate::openai::{Message, Role};
use crate::prompts::PromptSynth;
use crate::workload::{Workload, mix};

/// What every session of a cell shares.
struct Shared {
    client: Client,
    synth: PromptSynth,
    spec: LoadSpec,
    epoch: Instant,
    deadline: Option<Instant>,
    cancel: CancellationToken,
    /// Requests planned by the sessions started so far, and the next session's id.
    claims: Mutex<(u64, u64)>,
    total: Option<u64>,
    /// Turns of the longest session: request `index` is `session * stride + turn - 1`.
    stride: u64,
}

impl Shared {
    /// The turns of session `s`.
    fn turns(&self, s: u64) -> u32 {
        match &self.spec.workload {
            Workload::Conversations(c) => {
                let items = c.items();
                items[(s % items.len() as u64) as usize].turns.len() as u32
            }
            Workload::Sessions(w) => w.turns,
            _ => 1,
        }
    }

    /// The next session and whether it is a warmup one; `None` once the planned requests
    /// are all in sessions, or the duration is over.
    fn claim(&self) -> Option<(u64, bool)> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) || self.cancel.is_cancelled() {
            return None;
        }
        let mut c = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (planned, next) = *c;
            if self.total.is_some_and(|t| planned >= t) {
                return None;
            }
            *c = (planned + u64::from(self.turns(next)), next + 1);
            // Sessions shared by several clients: the others' are counted, not sent.
            if self.spec.owns(next) {
                return Some((next, planned < self.spec.warmup));
            }
        }
    }

    /// Runs session `s` to its end, a failed turn, the deadline or cancellation.
    async fn session(&self, s: u64, warmup: bool, scheduled: Option<u64>) -> Vec<Record> {
        let spec = &self.spec;
        let mut history: Vec<Message> = Vec::new();
        let mut tokens = 0u64;
        let mut out = Vec::new();
        let (turns, think) = match &spec.workload {
            Workload::Conversations(c) => {
                let conv = &c.items()[(s % c.len() as u64) as usize];
                if let Some(system) = &conv.system {
                    history.push(Message::new(Role::System, system.clone()));
                    tokens += conv.system_tokens;
                }
                (conv.turns.len() as u32, c.think_time)
            }
            Workload::Sessions(w) => (w.turns, w.think_time),
            _ => (1, std::time::Duration::ZERO),
        };
        for turn in 1..=turns {
            if turn > 1 && self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let index = s * self.stride + u64::from(turn - 1);
            let seed = prompt_seed(spec.seed, mix(index ^ 0x5E55));
            let mut rng = SmallRng::seed_from_u64(seed);
            let (user, user_tokens, osl) = match &spec.workload {
                Workload::Conversations(c) => {
                    let t = &c.items()[(s % c.len() as u64) as usize].turns[turn as usize - 1];
                    (
                        t.user.clone(),
                        t.user_tokens,
                        t.output_tokens.unwrap_or(spec.osl),
                    )
                }
                Workload::Sessions(w) => {
                    let osl = normal(&mut rng, spec.osl, spec.osl_stddev);
                    let n = w
                        .user_tokens
                        .unwrap_or_else(|| normal(&mut rng, spec.isl, spec.isl_stddev));
                    (self.synth.prompt(n, seed), u64::from(n), osl)
                }
                _ => return out,
            };
            history.push(Message::new(Role::User, user));
            tokens += user_tokens;
            let mut reply = String::new();
            let mut rec = tokio::select! {
                r = self.client.send_history(
                    index, warmup, &history, tokens, osl, self.epoch, &mut reply,
                ) => r,
                () = self.cancel.cancelled() => return out,
            };
            rec.session = Some(s);
            rec.turn = Some(turn);
            if turn == 1 {
                rec.scheduled_ns = scheduled;
            }
            let ok = rec.ok();
            tokens = rec.input_tokens + rec.output_tokens;
            out.push(rec);
            if !ok {
                // The history has no reply to carry: the session ends here.
                break;
            }
            history.push(Message::new(Role::Assistant, reply));
            if turn < turns && !think.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(think) => {}
                    () = self.cancel.cancelled() => return out,
                }
            }
        }
        out
    }
}

/// Sends the cell's sessions and returns every record (warmup included), in index order.
pub(crate) async fn run(
    client: &Client,
    synth: &PromptSynth,
    spec: &LoadSpec,
    epoch: Instant,
    clock: Arc<Clock>,
    cancel: &CancellationToken,
) -> Vec<Record> {
    let stride = match &spec.workload {
        Workload::Conversations(c) => u64::from(c.max_turns()),
        Workload::Sessions(w) => u64::from(w.turns),
        _ => 1,
    }
    .max(1);
    let shared = Arc::new(Shared {
        client: client.clone(),
        synth: synth.clone(),
        spec: spec.clone(),
        epoch,
        deadline: spec.duration.and_then(|d| epoch.checked_add(d)),
        cancel: cancel.clone(),
        claims: Mutex::new((0, 0)),
        total: spec.total(),
        stride,
    });
    let ramp = spec.ramp.unwrap_or_default();
    let mut tasks: JoinSet<Vec<Record>> = JoinSet::new();
    match spec.rate {
        None => {
            let workers = spec.concurrency.unwrap_or(1).max(1);
            for w in 0..workers {
                let (shared, clock) = (shared.clone(), clock.clone());
                let Some(begin) =
                    epoch.checked_add(ramp.mul_f64(f64::from(w) / f64::from(workers)))
                else {
                    continue;
                };
                tasks.spawn(async move {
                    clock.sleep_until(begin).await;
                    let mut out = Vec::new();
                    while let Some((s, warmup)) = shared.claim() {
                        out.append(&mut shared.session(s, warmup, None).await);
                    }
                    out
                });
            }
        }
        Some(rate) => {
            // Sessions arrive at `rate` per second (no ramp: a session is long already).
            let cap = spec
                .concurrency
                .map(|c| Arc::new(Semaphore::new(c as usize)));
            let mut rng = SmallRng::seed_from_u64(spec.arrival_seed(0x5E55_A11E));
            let mut after = 0.0f64;
            while let Some(at) = std::time::Duration::try_from_secs_f64(after)
                .ok()
                .and_then(|d| epoch.checked_add(d))
            {
                let Some(permit) = arrive(&clock, at, cap.as_ref(), cancel).await else {
                    break;
                };
                let Some((s, warmup)) = shared.claim() else {
                    break;
                };
                let scheduled = u64::try_from(at.duration_since(epoch).as_nanos()).ok();
                let shared = shared.clone();
                tasks.spawn(async move {
                    let out = shared.session(s, warmup, scheduled).await;
                    drop(permit);
                    out
                });
                after += unit_gap(spec.arrival, &mut rng) / rate;
            }
        }
    }
    let mut records = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(mut recs) => records.append(&mut recs),
            Err(e) => tracing::warn!(error = %e, "a session task failed"),
        }
    }
    records.sort_by_key(|r| r.index);
    records
}
