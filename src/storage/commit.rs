//! Group commit: concurrent client writes share one transaction and one fsync.
//!
//! ```text
//!   writer threads ──push job──► queue ──► the leader takes every queued job
//!                                            one write transaction: each job's decide() sees the
//!                                            writes before it; its set + outbox marks inserted
//!                                            one commit (one fsync)
//!                                          ◄── every waiter answered after that commit
//! ```
//!
//! The first writer to find no leader becomes it: it commits one batch (its own job and every
//! job queued meanwhile), answers every waiter, and hands the lead to the oldest job still queued,
//! if any — so no thread serves others forever. The contract is exact: a waiter hears `Ok` only
//! after the commit that holds its write; a job its own rule refuses (a 409, say) fails alone,
//! nothing of it written; if the commit fails, every waiter of the batch gets the error and none
//! is acknowledged.

use std::any::Any;
use std::sync::{Arc, Condvar, Mutex};

use redb::{ReadableTable, TableDefinition};

use super::store::{decode, encode, outbox_name, Store, COUNTERS, KEYS, MARK_SEQUENCE};
use crate::core::versions::SiblingSet;
use crate::error::{Error, Result};

type Answer = Box<dyn Any + Send>;
type Decide = Box<dyn FnOnce(&SiblingSet) -> Result<(SiblingSet, Answer)> + Send>;

/// Where a waiter's answer arrives, or its call to lead.
enum SlotState {
    Waiting,
    Lead,
    Done(Result<Answer>),
}

struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

impl Slot {
    fn set(&self, state: SlotState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.ready.notify_one();
    }
}

struct Job {
    key: String,
    decide: Option<Decide>,
    slot: Arc<Slot>,
}

/// The jobs waiting for the next commit, and whether some thread is leading.
#[derive(Default)]
pub(super) struct CommitQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    jobs: Vec<Job>,
    leading: bool,
}

impl Store {
    /// A client write through group commit: `decide` gets the key's current set (with every
    /// write committed or batched before it) and returns the new one, or an error and nothing
    /// is written. Returns once the commit holding the write is on disk. Blocks the calling
    /// thread (call it from the blocking pool).
    pub fn write_grouped<T: Send + 'static>(
        &self,
        key: String,
        decide: impl FnOnce(&SiblingSet) -> Result<(SiblingSet, T)> + Send + 'static,
    ) -> Result<T> {
        let slot = Arc::new(Slot { state: Mutex::new(SlotState::Waiting), ready: Condvar::new() });
        let decide: Decide = Box::new(move |current| decide(current).map(|(next, t)| (next, Box::new(t) as Answer)));
        let lead = {
            let mut queue = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
            queue.jobs.push(Job { key, decide: Some(decide), slot: slot.clone() });
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            self.lead_one_batch();
        }
        loop {
            let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            while matches!(*state, SlotState::Waiting) {
                state = slot.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            match std::mem::replace(&mut *state, SlotState::Waiting) {
                SlotState::Done(answer) => {
                    let answer = answer?;
                    return Ok(*answer.downcast::<T>().expect("a job's answer has the job's type"));
                }
                SlotState::Lead => {
                    drop(state);
                    self.lead_one_batch();
                }
                SlotState::Waiting => unreachable!("the loop above waits until it changes"),
            }
        }
    }

    /// Commits every queued job in one transaction, answers each, and hands the lead on.
    fn lead_one_batch(&self) {
        let mut batch = std::mem::take(&mut self.queue.state.lock().unwrap_or_else(|e| e.into_inner()).jobs);
        let outcome = self.commit_batch(&mut batch);
        match outcome {
            Ok(answers) => {
                for (job, answer) in batch.iter().zip(answers) {
                    job.slot.set(SlotState::Done(answer));
                }
            }
            Err(e) => {
                // The commit failed: nobody in the batch is acknowledged.
                let message = e.to_string();
                for job in &batch {
                    job.slot.set(SlotState::Done(Err(Error::Storage(message.clone()))));
                }
            }
        }
        let mut queue = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        match queue.jobs.first() {
            Some(next) => next.slot.set(SlotState::Lead),
            None => queue.leading = false,
        }
    }

    /// One transaction for the whole batch: each job decides on the set as the jobs before it
    /// left it. Commits if any job wrote; returns each job's answer (or its own refusal).
    fn commit_batch(&self, batch: &mut [Job]) -> Result<Vec<Result<Answer>>> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let mut answers = Vec::with_capacity(batch.len());
            let mut wrote = false;
            {
                let mut keys = txn.open_table(KEYS)?;
                let mut counters = txn.open_table(COUNTERS)?;
                let mut outboxes = Vec::with_capacity(self.peers.len());
                for &peer in &self.peers {
                    outboxes.push(txn.open_table(TableDefinition::<&str, u64>::new(&outbox_name(peer)))?);
                }
                let mut mark = counters.get(MARK_SEQUENCE)?.map(|g| g.value()).unwrap_or(0);
                for job in batch.iter_mut() {
                    let current = match keys.get(job.key.as_str())? {
                        Some(bytes) => decode(&job.key, bytes.value())?,
                        None => SiblingSet::new(),
                    };
                    let decide = job.decide.take().expect("each job decides once");
                    match decide(&current) {
                        Ok((next, answer)) => {
                            keys.insert(job.key.as_str(), encode(&next).as_slice())?;
                            mark += 1;
                            for outbox in &mut outboxes {
                                outbox.insert(job.key.as_str(), mark)?;
                            }
                            wrote = true;
                            answers.push(Ok(answer));
                        }
                        Err(refusal) => answers.push(Err(refusal)),
                    }
                }
                counters.insert(MARK_SEQUENCE, mark)?;
            }
            if wrote {
                self.commit(txn)?;
            } else {
                txn.abort()?;
            }
            Ok(answers)
        })
    }
}
