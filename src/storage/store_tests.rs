//! Tests of the store: marks, limits, digests, first starts, damage and repair.
//!
//! Size: one test module for the store's every transaction kind, group commit included; they share
//! the fixtures at the top.

use super::*;
use std::path::Path;

use crate::core::cluster::Layout;
use crate::storage::file::Repair;

fn layout(port: u16) -> Layout {
    let all = [7000u16, 7001, 7002];
    let peers: Vec<u16> = all.iter().copied().filter(|p| *p != port).collect();
    Layout::from_flags("127.0.0.1", port, 3, &vec!["127.0.0.1".into(); 2], &peers).unwrap()
}

fn no_check(_: &str, _: &SiblingSet, _: &Version) -> std::result::Result<(), String> {
    Ok(())
}

fn put(store: &Store, key: &str, value: &str) -> VectorClock {
    store
        .write_local(key, |cur| {
            let clock = cur.client_write(3, None, 0).unwrap();
            Ok((SiblingSet::single(Version::value(value, clock.clone())), clock))
        })
        .unwrap()
}

#[test]
fn write_marks_every_peer_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        assert_eq!(put(&store, "k", "v1"), VectorClock::from(vec![1, 0, 0]));
        assert_eq!(put(&store, "k", "v2"), VectorClock::from(vec![2, 0, 0]));
        assert_eq!(store.outbox_depth(2).unwrap(), 1, "ten writes, one mark");
        assert_eq!(store.outbox_depth(3).unwrap(), 1);
    }
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    assert_eq!(store.get("k").unwrap().versions()[0].value.as_deref(), Some("v2"));
    assert_eq!(store.outbox_depth(2).unwrap(), 1);
    assert_eq!(store.key_count().unwrap(), 1);
}

#[test]
fn acknowledge_keeps_keys_written_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    put(&store, "a", "1");
    put(&store, "b", "1");
    let batch = store.pending(2, None, 10, usize::MAX, &HashSet::new()).unwrap();
    assert_eq!(batch.len(), 2);
    put(&store, "b", "2"); // lands while the batch is "in flight"
    let delivered: Vec<_> = batch.iter().map(|p| (p.key.clone(), p.mark)).collect();
    assert_eq!(store.acknowledge(2, &delivered).unwrap(), 1);
    let left = store.pending(2, None, 10, usize::MAX, &HashSet::new()).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, "b");
    let set: SiblingSet = serde_json::from_str(left[0].set.get()).unwrap();
    assert_eq!(set.versions()[0].value.as_deref(), Some("2"));
    assert_eq!(store.outbox_depth(3).unwrap(), 2, "other peers are untouched");
}

/// A store of replica 1 holding `keys`, each written once locally.
fn store_with(keys: &[&str]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    for k in keys {
        put(&store, k, "value");
    }
    (dir, store)
}

#[test]
fn pending_respects_key_and_byte_limits() {
    let (_dir, store) = store_with(&["a", "b", "c", "d"]);
    assert_eq!(store.pending(2, None, 3, usize::MAX, &HashSet::new()).unwrap().len(), 3);
    assert_eq!(store.pending(2, None, 10, 1, &HashSet::new()).unwrap().len(), 1, "at least one key ships");
}

#[test]
fn pending_resumes_after_the_cursor_and_wraps_around() {
    let (_dir, store) = store_with(&["a", "b", "c", "d"]);
    let none = HashSet::new();
    let keys = |b: Vec<Pending>| b.into_iter().map(|p| p.key).collect::<Vec<_>>();
    assert_eq!(keys(store.pending(2, Some("b"), 10, usize::MAX, &none).unwrap()), ["c", "d", "a", "b"]);
    assert_eq!(keys(store.pending(2, Some("b"), 2, usize::MAX, &none).unwrap()), ["c", "d"]);
    assert_eq!(keys(store.pending(2, Some("zzz"), 3, usize::MAX, &none).unwrap()), ["a", "b", "c"]);
    let skip: HashSet<String> = ["a".to_string(), "c".to_string()].into();
    assert_eq!(keys(store.pending(2, None, 10, usize::MAX, &skip).unwrap()), ["b", "d"]);
}

#[test]
fn scans_see_every_key_and_page_through_a_selection() {
    let (_dir, store) = store_with(&["a", "b", "c", "d", "e"]);
    let mut seen = Vec::new();
    store.scan_raw(|k, bytes| seen.push((k.to_string(), bytes.len()))).unwrap();
    assert_eq!(seen.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d", "e"]);
    assert!(seen.iter().all(|(_, n)| *n > 0));
    let not_c = |k: &str| k != "c";
    let (page, more) = store.entries_where(not_c, None, 2, usize::MAX).unwrap();
    assert_eq!((page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), more), (vec!["a", "b"], true));
    let (rest, more) = store.entries_where(not_c, Some("b"), 10, usize::MAX).unwrap();
    assert_eq!((rest.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), more), (vec!["d", "e"], false));
    let (one, more) = store.entries_where(|_| true, None, 10, 1).unwrap();
    assert_eq!((one.len(), more), (1, true), "at least one key, then the byte budget");
}

#[test]
fn a_new_store_needs_recovery_until_marked_and_a_reopened_one_remembers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    assert!(store.needs_recovery().unwrap());
    drop(store);
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    assert!(store.needs_recovery().unwrap(), "a crash during recovery resumes it");
    store.mark_recovered().unwrap();
    drop(store);
    assert!(!Store::open(dir.path(), &layout(7000)).unwrap().needs_recovery().unwrap());
}

#[test]
fn clear_outbox_drops_only_that_peers_marks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    put(&store, "a", "1");
    put(&store, "b", "1");
    assert_eq!(store.clear_outbox(2).unwrap(), 2);
    assert_eq!(store.outbox_depth(2).unwrap(), 0);
    assert_eq!(store.outbox_depth(3).unwrap(), 2);
    assert_eq!(store.key_count().unwrap(), 2, "data stays");
}

#[test]
fn merge_remote_reports_each_decision() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    put(&store, "k", "local"); // [1, 0, 0]
    let vc = |c: &[u64]| VectorClock::from(c.to_vec());
    let (records, _) = store
        .merge_remote(
            &[
                ("k".into(), vec![Version::value("newer", vc(&[2, 0, 0]))]),
                ("k".into(), vec![Version::value("old", vc(&[1, 0, 0]))]),
                ("k".into(), vec![Version::value("other", vc(&[0, 1, 0]))]),
                ("fresh".into(), vec![Version::value("x", vc(&[0, 0, 1]))]),
            ],
            no_check,
            false,
        )
        .unwrap();
    let outcomes: Vec<_> = records.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![MergeOutcome::Updated, MergeOutcome::Stale, MergeOutcome::Conflict { siblings: 2 }, MergeOutcome::Created]
    );
    assert_eq!(records[0].local, vec![vc(&[1, 0, 0])]);
    assert_eq!(store.get("k").unwrap().len(), 2);
    assert_eq!(store.outbox_depth(2).unwrap(), 1, "merges do not queue anything");
}

#[test]
fn a_merge_that_changes_nothing_commits_nothing_and_refused_entries_apply_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    let vc = |c: &[u64]| VectorClock::from(c.to_vec());
    let batch = vec![("k".to_string(), vec![Version::value("v", vc(&[0, 1, 0]))])];
    let before = store.commits();
    store.merge_remote(&batch, no_check, false).unwrap();
    assert_eq!(store.commits(), before + 1);
    let (records, _) = store.merge_remote(&batch, no_check, false).unwrap();
    assert_eq!(records[0].outcome, MergeOutcome::Stale);
    assert_eq!(store.commits(), before + 1, "the same batch again: no commit");
    let refuse_x = |k: &str, _: &SiblingSet, _: &Version| if k == "x" { Err(format!("{k} refused")) } else { Ok(()) };
    let mixed = vec![
        ("a".to_string(), vec![Version::value("a", vc(&[0, 0, 1]))]),
        ("x".to_string(), vec![Version::value("x", vc(&[0, 0, 1]))]),
    ];
    let err = store.merge_remote(&mixed, refuse_x, false).unwrap_err();
    assert!(err.to_string().contains("x refused"), "{err}");
    assert!(store.get("a").unwrap().is_empty(), "all or nothing");
    let (records, skipped) = store.merge_remote(&mixed, refuse_x, true).unwrap();
    assert_eq!(skipped, vec![("x".to_string(), "x refused".to_string())]);
    assert_eq!(records.len(), 1);
    assert_eq!(store.get("a").unwrap().len(), 1);
    assert!(store.get("x").unwrap().is_empty());
}

#[test]
fn an_interrupted_first_start_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    // A temp file of a first start killed before its rename: ignored and rebuilt.
    std::fs::write(dir.path().join("vkv.redb.init"), b"partial").unwrap();
    drop(Store::open(dir.path(), &layout(7000)).unwrap());
    assert!(!dir.path().join("vkv.redb.init").exists());
    // A store file without redb's magic number (an older version killed at its first start).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), vec![0u8; 4096]).unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    assert!(store.needs_recovery().unwrap());
    assert!(dir.path().join("vkv.redb.interrupted-first-start").exists(), "kept for the operator");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
    assert!(Store::open(dir.path(), &layout(7000)).is_ok(), "an empty file is an interrupted start too");
}

/// Overwrites `pages` 4 KiB pages of the store file from `first` on with a pattern.
fn damage(dir: &Path, first: u64, pages: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(dir.join(DB_FILE)).unwrap();
    file.seek(SeekFrom::Start(first * 4096)).unwrap();
    file.write_all(&vec![0xA5; (pages * 4096) as usize]).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn a_damaged_store_is_refused_with_the_repair_hint_and_repair_moves_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &layout(7000)).unwrap();
        for i in 0..300 {
            put(&store, &format!("key-{i}"), &"v".repeat(100));
        }
    }
    let size = std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len() / 4096;
    damage(dir.path(), 1, size - 1);
    let err = Store::open(dir.path(), &layout(7000)).err().expect("a damaged store must not open");
    assert!(err.to_string().contains("--repair"), "{err}");
    let Repair::MovedAside(aside) = Store::repair(dir.path(), &layout(7000)).unwrap() else {
        panic!("the damaged store was not moved aside");
    };
    assert!(aside.exists());
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    assert!(store.needs_recovery().unwrap(), "a repaired replica recovers from its peers");
    assert_eq!(store.key_count().unwrap(), 0);
    drop(store);
    assert_eq!(Store::repair(dir.path(), &layout(7000)).unwrap(), Repair::Intact);
    let err = Store::repair(dir.path(), &layout(7001)).expect_err("another member's intact store is no damage");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(Store::repair(empty.path(), &layout(7000)).unwrap(), Repair::NoStore);
}

#[test]
fn refuses_a_data_dir_of_another_layout_or_member() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), &layout(7000)).unwrap());
    let err = Store::open(dir.path(), &layout(7001)).err().expect("must refuse");
    assert!(err.to_string().contains("belongs to member 127.0.0.1:7000"), "{err}");
    let other = Layout::from_flags("127.0.0.1", 7000, 2, &["127.0.0.1".into()], &[7009]).unwrap();
    let err = Store::open(dir.path(), &other).err().expect("must refuse");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
}

/// Every key owed to `peer`, with the mark read: what a sender acknowledges once delivered.
fn owed(store: &Store, peer: ReplicaId) -> Vec<(String, u64)> {
    store
        .pending(peer, None, usize::MAX, usize::MAX, &HashSet::new())
        .unwrap()
        .into_iter()
        .map(|p| (p.key, p.mark))
        .collect()
}

#[test]
fn acknowledgements_share_a_batch_with_writes_and_alone_commit_without_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    for key in ["a", "b", "c"] {
        put(&store, key, "1");
    }
    let delivered = owed(&store, 2);
    // One batch: a write to "b" queued before the acknowledgement, one to "c" after it, and an
    // acknowledgement for a replica that is not a peer. The leader is this thread, called once
    // all four are queued, so they share one transaction.
    let (tx, rx) = std::sync::mpsc::channel();
    let write = |key: &str| {
        let tx = tx.clone();
        let key_owned = key.to_string();
        store.submit(
            key.to_string(),
            |cur| {
                let clock = cur.client_write(3, None, 0).unwrap();
                Ok((SiblingSet::single(Version::value("2", clock)), ()))
            },
            move |answer: Result<()>| tx.send(format!("{key_owned} {}", answer.is_ok())).unwrap(),
        )
    };
    assert_eq!(write("b"), Lead::Yours);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let ack_tx2 = ack_tx.clone();
    assert_eq!(store.submit_acknowledge(2, delivered.clone(), move |n| ack_tx.send(n).unwrap()), Lead::Queued);
    assert_eq!(store.submit_acknowledge(9, delivered.clone(), move |n| ack_tx2.send(n).unwrap()), Lead::Queued);
    assert_eq!(write("c"), Lead::Queued);
    let before = store.commits();
    store.lead();
    assert_eq!(store.commits() - before, 1, "one durable commit for the whole batch");
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["b true", "c true"]);
    // b's mark was replaced before the acknowledgement ran; c's was still the one read (its
    // write comes after in the batch, and marks it again).
    assert_eq!(ack_rx.recv().unwrap().unwrap(), 2, "a's and c's marks cleared, b's kept");
    assert!(matches!(ack_rx.recv().unwrap(), Err(Error::InvalidInput(_))), "not a peer: refused alone");
    let left: Vec<String> =
        store.pending(2, None, 10, usize::MAX, &HashSet::new()).unwrap().into_iter().map(|p| p.key).collect();
    assert_eq!(left, ["b", "c"], "keys rewritten around the acknowledgement stay queued");
    assert_eq!(store.outbox_depth(3).unwrap(), 3, "another peer's marks are untouched");

    // Acknowledgements alone: committed (visible at once) without an fsync.
    let delivered = owed(&store, 2);
    let before = store.commits();
    assert_eq!(store.acknowledge(2, &delivered).unwrap(), 2);
    assert_eq!(store.commits(), before, "no durable commit for acknowledgements alone");
    assert_eq!(store.outbox_depth(2).unwrap(), 0);
}

/// A blind client write at position 0 through group commit: `value` at the clock after the set's.
fn grouped_put(store: &Store, key: &str, value: &str) -> Result<VectorClock> {
    let value = value.to_string();
    store.write_grouped(key.to_string(), move |cur| {
        let clock = cur.client_write(3, None, 0).unwrap();
        Ok((SiblingSet::single(Version::value(value, clock.clone())), clock))
    })
}

#[test]
fn group_commit_answers_every_concurrent_writer_after_a_shared_commit() {
    let (_dir, store) = store_with(&[]);
    let store = std::sync::Arc::new(store);
    let before = store.commits();
    let (threads, each) = (32, 20);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..each)
                    .map(|i| {
                        grouped_put(&store, &format!("k{t}-{i}"), "v").unwrap();
                        grouped_put(&store, "shared", &format!("{t}-{i}")).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut shared_clocks: Vec<u64> =
        handles.into_iter().flat_map(|h| h.join().unwrap()).map(|c| c.counters()[0]).collect();
    shared_clocks.sort();
    let writes = threads * each;
    // Every write to the shared key saw the one before it, batched or not: counters 1..=writes.
    assert_eq!(shared_clocks, (1..=writes as u64).collect::<Vec<_>>());
    assert_eq!(store.key_count().unwrap(), writes as u64 + 1, "every acknowledged key is there");
    assert_eq!(store.outbox_depth(2).unwrap(), writes as u64 + 1, "every write is queued for the peers");
    let commits = store.commits() - before;
    eprintln!("group commit: {} writes in {commits} commits", 2 * writes);
    assert!(commits < 2 * writes as u64, "{commits} commits for {} writes: nothing was grouped", 2 * writes);
}

#[test]
fn a_refused_write_fails_alone_and_a_failed_commit_acknowledges_nobody() {
    let (_dir, store) = store_with(&["kept"]);
    let refused = store.write_grouped("k".to_string(), |_| -> Result<(SiblingSet, ())> {
        Err(Error::InvalidInput("refused by its own rule".into()))
    });
    assert!(matches!(refused, Err(Error::InvalidInput(_))));
    assert!(store.get("k").unwrap().is_empty(), "nothing of a refused write is stored");

    let store = std::sync::Arc::new(store);
    store.fail_commits.store(true, std::sync::atomic::Ordering::SeqCst);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || grouped_put(&store, &format!("lost-{t}"), "v"))
        })
        .collect();
    for h in handles {
        assert!(matches!(h.join().unwrap(), Err(Error::Storage(_))), "a waiter was acknowledged");
    }
    store.fail_commits.store(false, std::sync::atomic::Ordering::SeqCst);
    for t in 0..8 {
        assert!(store.get(&format!("lost-{t}")).unwrap().is_empty());
    }
    assert_eq!(store.get("kept").unwrap().len(), 1);
    grouped_put(&store, "after", "v").unwrap();
}

#[test]
fn a_submitted_write_is_committed_before_its_done_runs_and_refusals_do_not_stop_the_batch() {
    let (_dir, store) = store_with(&[]);
    let store = std::sync::Arc::new(store);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut leads = 0;
    for i in 0..50u64 {
        let (check, tx) = (store.clone(), tx.clone());
        let key = format!("k{i}");
        let decide = move |cur: &SiblingSet| {
            if i % 10 == 3 {
                return Err(Error::InvalidInput("refused".into()));
            }
            let clock = cur.client_write(3, None, 0).unwrap();
            Ok((SiblingSet::single(Version::value("v", clock.clone())), clock))
        };
        let done = move |outcome: Result<VectorClock>| {
            // What done hears is already in the store (committed), or was never written.
            let stored = check.get(&format!("k{i}")).unwrap();
            tx.send((i, outcome.is_ok(), stored.len())).unwrap();
        };
        if store.submit(key, decide, done) == Lead::Yours {
            leads += 1;
        }
    }
    assert_eq!(leads, 1, "one leader for the whole queue");
    store.lead();
    drop(tx);
    let answers: Vec<_> = rx.iter().collect();
    assert_eq!(answers.len(), 50, "every job answered");
    for (i, ok, stored) in answers {
        assert_eq!(ok, i % 10 != 3, "job {i}");
        assert_eq!(stored, usize::from(ok), "job {i}: done ran before its commit, or a refusal was written");
    }
    assert!(store.commits() >= 1);
    // The leader stepped down: the next writer leads again.
    assert_eq!(
        store.submit("again".into(), |_| Err::<(SiblingSet, ()), _>(Error::InvalidInput("x".into())), |_| {}),
        Lead::Yours
    );
    store.lead();
}

/// The data dir's files as a crash would leave them on disk: copied while the store is open.
fn crash_image(from: &Path, with_log: bool) -> tempfile::TempDir {
    let image = tempfile::tempdir().unwrap();
    std::fs::copy(from.join(DB_FILE), image.path().join(DB_FILE)).unwrap();
    if with_log {
        std::fs::copy(from.join(super::super::wal::WAL_FILE), image.path().join(super::super::wal::WAL_FILE)).unwrap();
    }
    image
}

#[test]
fn commits_since_the_last_checkpoint_come_back_from_the_log_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    put(&store, "a", "1");
    grouped_put(&store, "b", "1").unwrap();
    grouped_put(&store, "b", "2").unwrap();
    let concurrent = Version::value("from 2", VectorClock::from(vec![0, 1, 0]));
    store.merge_remote(&[("c".to_string(), vec![concurrent])], no_check, false).unwrap();
    let (marks_2, marks_3) = (store.outbox_depth(2).unwrap(), store.outbox_depth(3).unwrap());

    // redb's file alone holds no commit since the store was opened: its pages are not durable
    // until a checkpoint. The log brings every acknowledged commit back.
    let image = crash_image(dir.path(), false);
    assert!(Store::open(image.path(), &layout(7000)).unwrap().get("b").unwrap().is_empty());
    let image = crash_image(dir.path(), true);
    let reopened = Store::open(image.path(), &layout(7000)).unwrap();
    assert_eq!(reopened.get("a").unwrap().versions()[0].value.as_deref(), Some("1"));
    assert_eq!(reopened.get("b").unwrap().versions()[0].value.as_deref(), Some("2"));
    assert_eq!(reopened.get("c").unwrap().versions()[0].value.as_deref(), Some("from 2"));
    assert_eq!((reopened.outbox_depth(2).unwrap(), reopened.outbox_depth(3).unwrap()), (marks_2, marks_3));
    // The mark sequence went on past the replayed marks: a new write's mark is newer.
    put(&reopened, "b", "3");
    let batch = reopened.pending(2, None, 10, usize::MAX, &HashSet::new()).unwrap();
    let a_mark = batch.iter().find(|p| p.key == "a").unwrap().mark;
    assert!(batch.iter().find(|p| p.key == "b").unwrap().mark > a_mark + 1);
    drop(reopened);

    // A checkpoint makes redb's file hold everything and empties the log.
    store.with_db(|db| store.checkpoint(db)).unwrap();
    assert_eq!(std::fs::metadata(dir.path().join(super::super::wal::WAL_FILE)).unwrap().len(), 0);
    let image = crash_image(dir.path(), false);
    let reopened = Store::open(image.path(), &layout(7000)).unwrap();
    assert_eq!(reopened.get("b").unwrap().versions()[0].value.as_deref(), Some("2"));
    assert_eq!(reopened.get("c").unwrap().len(), 1);
}

#[test]
fn a_commit_that_fails_after_its_log_append_is_not_applied_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    grouped_put(&store, "kept", "1").unwrap();
    store.fail_after_log.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(grouped_put(&store, "failed", "1"), Err(Error::Storage(_))));
    let concurrent = Version::value("from 2", VectorClock::from(vec![0, 1, 0]));
    assert!(store.merge_remote(&[("merged".to_string(), vec![concurrent])], no_check, false).is_err());
    store.fail_after_log.store(false, std::sync::atomic::Ordering::SeqCst);
    grouped_put(&store, "after", "1").unwrap();
    let image = crash_image(dir.path(), true);
    let reopened = Store::open(image.path(), &layout(7000)).unwrap();
    assert_eq!(reopened.get("kept").unwrap().len(), 1);
    assert_eq!(reopened.get("after").unwrap().len(), 1, "the log goes on after the cut");
    assert!(reopened.get("failed").unwrap().is_empty(), "a write its client heard fail came back");
    assert!(reopened.get("merged").unwrap().is_empty(), "a merge its peer heard fail came back");
}

/// Renders a set as its first version's value ("-" for none).
fn first_value(_: &str, set: &SiblingSet, _: usize) -> bytes::Bytes {
    let value = set.versions().first().and_then(|v| v.value.clone()).unwrap_or_else(|| "-".into());
    bytes::Bytes::from(value)
}

fn cached_value(store: &Store, key: &str) -> Option<String> {
    let read = store.get_cached(key, first_value).unwrap();
    let value = String::from_utf8(read.body().to_vec()).unwrap();
    assert_eq!(read.is_deleted(), value == "-");
    (value != "-").then_some(value)
}

#[test]
fn cached_reads_see_every_acknowledged_write_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    assert_eq!(cached_value(&store, "k"), None);
    assert_eq!(cached_value(&store, "k"), None, "an absent key cached as absent");
    put(&store, "k", "v1");
    assert_eq!(cached_value(&store, "k").as_deref(), Some("v1"));
    assert_eq!(cached_value(&store, "k").as_deref(), Some("v1"));
    grouped_put(&store, "k", "v2").unwrap();
    assert_eq!(cached_value(&store, "k").as_deref(), Some("v2"), "group commit");
    let newer = Version::value("v3", VectorClock::from(vec![5, 1, 0]));
    store.merge_remote(&[("k".to_string(), vec![newer])], no_check, false).unwrap();
    assert_eq!(cached_value(&store, "k").as_deref(), Some("v3"), "a peer's merge");
    assert!(store.read_cache_usage().0 >= 1);
}

#[test]
fn a_failed_commit_leaves_no_stale_or_phantom_entry_in_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    put(&store, "k", "v1");
    assert_eq!(cached_value(&store, "k").as_deref(), Some("v1"));
    store.fail_after_log.store(true, Ordering::SeqCst);
    assert!(grouped_put(&store, "k", "v2").is_err());
    store.fail_after_log.store(false, Ordering::SeqCst);
    assert_eq!(cached_value(&store, "k").as_deref(), Some("v1"), "the refused write is not served");
}

/// Writers and readers at once: a read that starts after a write was acknowledged never
/// answers with an older value (the values are increasing numbers, one writer per key).
#[test]
fn concurrent_cached_reads_never_go_back_past_an_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    let acked: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|s| {
        for (k, acked) in acked.iter().enumerate() {
            let store = &store;
            s.spawn(move || {
                for i in 1..=150u64 {
                    grouped_put(store, &format!("k{k}"), &format!("{i:06}")).unwrap();
                    acked.store(i, Ordering::SeqCst);
                }
            });
        }
        for _ in 0..2 {
            s.spawn(|| {
                for round in 0..3000 {
                    let k = round % 4;
                    let floor = acked[k].load(Ordering::SeqCst);
                    let seen = cached_value(&store, &format!("k{k}")).map_or(0, |v| v.parse::<u64>().unwrap());
                    assert!(seen >= floor, "k{k}: read {seen} after {floor} was acknowledged");
                }
            });
        }
    });
    for k in 0..4 {
        assert_eq!(cached_value(&store, &format!("k{k}")).as_deref(), Some("000150"));
    }
}

#[test]
fn a_cache_hit_does_not_wait_for_a_store_held_exclusively() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &layout(7000)).unwrap();
    put(&store, "hot", "v1");
    put(&store, "cold", "v1");
    assert_eq!(cached_value(&store, "hot").as_deref(), Some("v1"));
    // As a compaction or a reopen holds it.
    let held = store.db.write().unwrap();
    let hit = store.get_cached_now("hot", first_value).expect("a hit is answered at once").unwrap();
    assert_eq!(&hit.body()[..], b"v1");
    assert!(store.get_cached_now("cold", first_value).is_none(), "a miss must wait for the store");
    drop(held);
    assert_eq!(cached_value(&store, "cold").as_deref(), Some("v1"));
}
