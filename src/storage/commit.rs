//! Group commit: concurrent client writes share one transaction and one fsync.
//!
//! ```text
//!   writers ──submit job──► queue ──► the leader takes every queued job
//!                                       one write transaction: each job's decide() sees the
//!                                       writes before it; its set + outbox marks inserted
//!                                       one commit (one fsync)
//!                                     ◄── every job's `done` called after that commit
//! ```
//!
//! The first writer to find no leader becomes it: an async writer hands the lead to one task on
//! the blocking pool, a blocking caller leads on its own thread. The leader commits batch after
//! batch until the queue is empty, then steps down. Writers wait without holding a thread: an
//! async writer awaits a oneshot answered by its `done`. So a burst of writes costs one hand-off
//! to the blocking pool and one fsync per batch, not a thread and a wake-up per write.
//!
//! The contract is exact: a job's `done` hears `Ok` only after the commit that holds its write; a
//! job its own rule refuses (a 409, say) fails alone, nothing of it written; if the commit fails,
//! every job of the batch gets the error and none is acknowledged.
//!
//! The senders' acknowledgements (clearing delivered outbox marks) ride the same queue: they
//! join the next batch instead of taking redb's single write lock for a transaction of their own
//! between two group commits. A batch of acknowledgements alone commits without fsync (a mark
//! that comes back after a crash only re-ships a set the peer already holds).

use std::any::Any;
use std::sync::Mutex;

use redb::{ReadableTable, TableDefinition};

use super::digest::Delta;
use super::store::{current_set, encode, outbox_name, Store, COUNTERS, KEYS, MARK_SEQUENCE};
use super::wal::Frame;
use crate::core::cluster::ReplicaId;
use crate::core::versions::SiblingSet;
use crate::error::{Error, Result};

type Answer = Box<dyn Any + Send>;
type Decide = Box<dyn FnOnce(&SiblingSet) -> Result<(SiblingSet, Answer)> + Send>;
type Done = Box<dyn FnOnce(Result<Answer>) + Send>;

struct Job {
    work: Work,
    done: Done,
}

/// What a queued job does in the batch's transaction.
enum Work {
    /// A client write to `key`, decided on the key's current set.
    Write { key: String, decide: Option<Decide> },
    /// Clear the marks `peer` acknowledged, each only if it still holds the number read with it;
    /// answers how many were cleared.
    Acknowledge { peer: ReplicaId, delivered: Vec<(String, u64)> },
}

/// A job's `done` for its own answer type, as the queue holds it (answers travel type-erased).
fn typed<T: 'static>(done: impl FnOnce(Result<T>) + Send + 'static) -> Done {
    Box::new(move |answer: Result<Answer>| {
        done(answer.map(|a| *a.downcast::<T>().expect("a job's answer has the job's type")))
    })
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

/// Whether the writer that submitted a job must now lead (call [`Store::lead`]).
#[must_use = "a writer told to lead must call Store::lead, or its job is never committed"]
#[derive(Debug, PartialEq, Eq)]
pub enum Lead {
    /// A leader is at work and will commit the job.
    Queued,
    /// Nobody leads: the submitter must call [`Store::lead`] (on a thread that may block).
    Yours,
}

impl Store {
    /// Queues a client write for the next group commit. `decide` gets the key's current set (with
    /// every write committed or batched before it) and returns the new one, or an error and
    /// nothing is written. `done` gets the outcome after the commit that holds the write (or the
    /// refusal, or the commit's error), on the leader's thread: so what must follow a commit (a
    /// log line, waking the senders) happens even if the writer stopped waiting.
    pub fn submit<T: Send + 'static>(
        &self,
        key: String,
        decide: impl FnOnce(&SiblingSet) -> Result<(SiblingSet, T)> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) -> Lead {
        let decide: Decide = Box::new(move |current| decide(current).map(|(next, t)| (next, Box::new(t) as Answer)));
        self.enqueue(Job { work: Work::Write { key, decide: Some(decide) }, done: typed(done) })
    }

    /// Queues the clearing of the marks `peer` acknowledged for the next group commit; `done`
    /// gets how many were cleared (a mark a newer write replaced stays) once that commit is in.
    pub fn submit_acknowledge(
        &self,
        peer: ReplicaId,
        delivered: Vec<(String, u64)>,
        done: impl FnOnce(Result<usize>) + Send + 'static,
    ) -> Lead {
        self.enqueue(Job { work: Work::Acknowledge { peer, delivered }, done: typed(done) })
    }

    fn enqueue(&self, job: Job) -> Lead {
        let mut queue = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        queue.jobs.push(job);
        if std::mem::replace(&mut queue.leading, true) {
            Lead::Queued
        } else {
            Lead::Yours
        }
    }

    /// Commits batch after batch, each holding every job queued at its start, until the queue is
    /// empty. Blocks (disk): call it on the blocking pool, once per [`Lead::Yours`].
    pub fn lead(&self) {
        loop {
            let mut batch = {
                let mut queue = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
                if queue.jobs.is_empty() {
                    queue.leading = false;
                    return;
                }
                std::mem::take(&mut queue.jobs)
            };
            let answers = match self.commit_batch(&mut batch) {
                Ok(answers) => answers,
                Err(e) => {
                    // The commit failed: nobody in the batch is acknowledged.
                    let message = e.to_string();
                    batch.iter().map(|_| Err(Error::Storage(message.clone()))).collect()
                }
            };
            for (job, answer) in batch.into_iter().zip(answers) {
                (job.done)(answer);
            }
            // After the answers, so no writer waits for it. A failure is the store's fault
            // (recorded by with_db) and surfaces at the next commit.
            let _ = self.with_db(|db| self.checkpoint_if_due(db));
        }
    }

    /// A client write through group commit, for a caller that may block: returns once the
    /// commit holding the write is on disk (leading the commits itself if nobody else is).
    pub fn write_grouped<T: Send + 'static>(
        &self,
        key: String,
        decide: impl FnOnce(&SiblingSet) -> Result<(SiblingSet, T)> + Send + 'static,
    ) -> Result<T> {
        self.wait_for(|done| self.submit(key, decide, done))
    }

    /// Clears the marks `peer` acknowledged (see [`Store::submit_acknowledge`]), through the
    /// group commit, for a caller that may block. Returns how many marks were cleared.
    pub fn acknowledge(&self, peer: ReplicaId, delivered: &[(String, u64)]) -> Result<usize> {
        self.wait_for(|done| self.submit_acknowledge(peer, delivered.to_vec(), done))
    }

    /// Submits a job with `submit` (given the job's `done`), leads the commits if told to, and
    /// returns the job's outcome: the blocking form of every `submit*`.
    fn wait_for<T: Send + 'static>(&self, submit: impl FnOnce(Box<dyn FnOnce(Result<T>) + Send>) -> Lead) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        if submit(Box::new(move |answer| {
            let _ = tx.send(answer);
        })) == Lead::Yours
        {
            self.lead();
        }
        rx.recv().map_err(|_| Error::Storage("the group commit ended without an answer".into()))?
    }

    /// One transaction for the whole batch: each write decides on the set as the jobs before it
    /// left it. Commits durably if any job wrote, without fsync if only acknowledgements cleared
    /// marks; returns each job's answer (or its own refusal).
    fn commit_batch(&self, batch: &mut [Job]) -> Result<Vec<Result<Answer>>> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let mut answers = Vec::with_capacity(batch.len());
            let mut frame = Frame::default();
            let mut delta = Delta::default();
            let mut cleared_any = false;
            {
                let mut keys = txn.open_table(KEYS)?;
                let mut counters = txn.open_table(COUNTERS)?;
                let mut outboxes = Vec::with_capacity(self.peers.len());
                for &peer in &self.peers {
                    outboxes.push(txn.open_table(TableDefinition::<&str, u64>::new(&outbox_name(peer)))?);
                }
                let mut mark = counters.get(MARK_SEQUENCE)?.map(|g| g.value()).unwrap_or(0);
                for job in batch.iter_mut() {
                    let (key, decide) = match &mut job.work {
                        Work::Write { key, decide } => (key, decide),
                        Work::Acknowledge { peer, delivered } => {
                            let Some(outbox) = self.peers.iter().position(|p| *p == *peer).map(|i| &mut outboxes[i])
                            else {
                                answers.push(Err(Error::InvalidInput(format!("replica {peer} is not a peer"))));
                                continue;
                            };
                            let mut cleared = 0usize;
                            for (key, read) in delivered.iter() {
                                if outbox.get(key.as_str())?.map(|g| g.value()) == Some(*read) {
                                    outbox.remove(key.as_str())?;
                                    cleared += 1;
                                }
                            }
                            cleared_any |= cleared > 0;
                            answers.push(Ok(Box::new(cleared) as Answer));
                            continue;
                        }
                    };
                    let (current, before) = current_set(&keys, key)?;
                    let decide = decide.take().expect("each job decides once");
                    match decide(&current) {
                        Ok((next, answer)) => {
                            let encoded = encode(&next);
                            keys.insert(key.as_str(), encoded.as_slice())?;
                            delta.change(&before, &encoded);
                            mark += 1;
                            for outbox in &mut outboxes {
                                outbox.insert(key.as_str(), mark)?;
                            }
                            frame.add(key, &encoded, Some(mark));
                            answers.push(Ok(answer));
                        }
                        Err(refusal) => answers.push(Err(refusal)),
                    }
                }
                counters.insert(MARK_SEQUENCE, mark)?;
            }
            if !frame.is_empty() {
                self.commit_logged(txn, frame, delta)?;
            } else if cleared_any {
                // No fsync: the next durable commit carries this to the disk; a crash before it
                // brings the marks back and the sets ship again (idempotent at the peer).
                self.commit_lazily(txn)?;
            } else {
                txn.abort()?;
            }
            Ok(answers)
        })
    }
}
