//! The reconcile rules, one by one, on a resource's book — and a property
//! test over random interleavings.

use hookbus_reconcile::book::{Book, Change, OperationState, TieVerdict};
use hookbus_reconcile::wire::{Direction, Outcome, OutcomeKind, SyncOperation};
use proptest::prelude::*;

const KEY: &str = "github:octo/repo:issue:1";

fn op(id: &str, updated_at: i64, hash: &str) -> SyncOperation {
    SyncOperation {
        operation: id.into(),
        direction: Direction::Inbound,
        key: KEY.into(),
        repository: "octo/repo".into(),
        repository_enabled: true,
        kind: "issue".into(),
        action: "edited".into(),
        effect: Some("upsert".into()),
        updated_at,
        content_hash: hash.into(),
        delivery: Some(format!("d-{id}")),
        source: "issues".into(),
        number: Some(1),
        id: None,
        record: Some(serde_json::json!({ "title": hash, "labels": ["a", "b"] })),
        changes: None,
    }
}

fn outbound(id: &str, updated_at: i64, changes: serde_json::Value) -> SyncOperation {
    let mut o = op(id, updated_at, &format!("h-{id}"));
    o.direction = Direction::Outbound;
    o.source = "client.change".into();
    o.record = None;
    o.changes = changes.as_object().cloned();
    o
}

fn done(id: &str) -> Outcome {
    Outcome {
        operation: id.into(),
        key: KEY.into(),
        outcome: OutcomeKind::Completed,
        commit: Some(format!("sha-{id}")),
        path: None,
        content_hash: None,
        reason: None,
    }
}

fn state_of(change: &Change, id: &str) -> Option<OperationState> {
    change.records.iter().rev().find(|r| r.id == id).map(|r| r.state)
}

fn released(change: &Change) -> Vec<String> {
    change.release.iter().map(|l| l.record.id.clone()).collect()
}

fn apply(book: &mut Book, o: &SyncOperation) -> Change {
    book.apply_operation(o, b"payload", None, 1_000)
}

#[test]
fn first_operation_is_released_to_commit_and_the_next_waits() {
    let mut book = Book::default();
    let first = apply(&mut book, &op("a", 10, "x"));
    assert_eq!(released(&first), vec!["a"]);
    assert_eq!(state_of(&first, "a"), Some(OperationState::Processing));
    let second = apply(&mut book, &op("b", 20, "y"));
    assert!(released(&second).is_empty(), "at most one operation per resource is processing");
    assert_eq!(state_of(&second, "b"), Some(OperationState::Queued));
    let finished = book.apply_outcome(&done("a"), 2_000);
    assert_eq!(state_of(&finished, "a"), Some(OperationState::Completed));
    assert_eq!(released(&finished), vec!["b"]);
}

#[test]
fn older_than_applied_is_dropped_for_the_applied_one() {
    let mut book = Book::default();
    apply(&mut book, &op("new", 20, "y"));
    book.apply_outcome(&done("new"), 2_000);
    let late = apply(&mut book, &op("old", 10, "x"));
    assert_eq!(state_of(&late, "old"), Some(OperationState::Dropped));
    assert_eq!(late.records[0].dropped_for.as_deref(), Some("new"));
    assert!(late.release.is_empty());
}

#[test]
fn older_than_a_newer_queued_or_processing_one_is_dropped() {
    let mut book = Book::default();
    apply(&mut book, &op("p", 30, "p"));
    let late = apply(&mut book, &op("old", 10, "x"));
    assert_eq!(late.records[0].dropped_for.as_deref(), Some("p"));
}

#[test]
fn same_time_and_content_is_a_duplicate() {
    let mut book = Book::default();
    apply(&mut book, &op("a", 10, "x"));
    let again = apply(&mut book, &op("a2", 10, "x"));
    assert_eq!(state_of(&again, "a2"), Some(OperationState::Duplicate));
    assert_eq!(again.records[0].duplicate_of.as_deref(), Some("a"));
}

#[test]
fn a_newer_operation_cancels_older_queued_ones() {
    let mut book = Book::default();
    apply(&mut book, &op("p", 10, "p"));
    apply(&mut book, &op("q1", 20, "q1"));
    let newest = apply(&mut book, &op("q2", 30, "q2"));
    assert_eq!(state_of(&newest, "q1"), Some(OperationState::Canceled));
    assert_eq!(newest.records.iter().find(|r| r.id == "q1").and_then(|r| r.canceled_by.as_deref()), Some("q2"));
    let finished = book.apply_outcome(&done("p"), 2_000);
    assert_eq!(released(&finished), vec!["q2"]);
}

#[test]
fn a_redelivered_operation_changes_nothing_but_resends_what_is_processing() {
    let mut book = Book::default();
    apply(&mut book, &op("a", 10, "x"));
    let again = apply(&mut book, &op("a", 10, "x"));
    assert!(again.records.is_empty());
    assert_eq!(released(&again), vec!["a"], "commit is idempotent, so resending is safe");
}

#[test]
fn a_redelivered_outcome_resends_the_operation_it_released() {
    // Reconcile saved "a completed, b released" and died before sending b to
    // commit: the outcome of a comes again and must send b again, or b
    // would stay processing forever with every queue empty.
    let mut book = Book::default();
    apply(&mut book, &op("a", 10, "x"));
    apply(&mut book, &op("b", 20, "y"));
    assert_eq!(released(&book.apply_outcome(&done("a"), 2_000)), vec!["b"]);
    let again = book.apply_outcome(&done("a"), 3_000);
    assert!(again.records.is_empty(), "nothing changes");
    assert_eq!(released(&again), vec!["b"]);
    assert_eq!(book.processing.as_ref().map(|l| l.record.id.as_str()), Some("b"), "b is still processing");
}

#[test]
fn disabled_repository_operations_are_recorded_disabled() {
    let mut book = Book::default();
    let mut o = op("a", 10, "x");
    o.repository_enabled = false;
    let change = apply(&mut book, &o);
    assert_eq!(state_of(&change, "a"), Some(OperationState::Disabled));
    assert!(change.release.is_empty());
}

#[test]
fn same_second_tie_goes_to_the_later_arrival_or_to_what_github_says() {
    let mut book = Book::default();
    apply(&mut book, &op("first", 10, "x"));
    book.apply_outcome(&done("first"), 2_000);
    let later = op("later", 10, "y");
    assert!(book.tie_for(&later).is_some());
    let mut github_disagrees = book.clone();
    let change = github_disagrees.apply_operation(&later, b"p", Some(TieVerdict::KnownWins), 3_000);
    assert_eq!(state_of(&change, "later"), Some(OperationState::Dropped));
    let change = book.apply_operation(&later, b"p", Some(TieVerdict::NewWins), 3_000);
    assert_eq!(state_of(&change, "later"), Some(OperationState::Processing));
}

#[test]
fn echo_of_an_outbound_change_is_a_duplicate_of_it_and_makes_no_commit() {
    let mut book = Book::default();
    let change =
        apply(&mut book, &outbound("client-1", 50, serde_json::json!({ "title": "renamed", "labels": ["b", "a"] })));
    assert_eq!(released(&change), vec!["client-1"]);
    book.apply_outcome(&done("client-1"), 2_000);
    // GitHub's webhook about our write-back: newer, same content.
    let mut echo = op("gh-echo", 60, "renamed-full");
    echo.record = Some(serde_json::json!({ "title": "renamed", "labels": ["a", "b"], "body": "unchanged" }));
    let change = apply(&mut book, &echo);
    assert_eq!(state_of(&change, "gh-echo"), Some(OperationState::Duplicate));
    assert_eq!(change.records[0].duplicate_of.as_deref(), Some("client-1"));
    assert!(change.release.is_empty(), "no second commit");
    // An older webhook from before the echo is now stale.
    let stale = apply(&mut book, &op("gh-old", 55, "old"));
    assert_eq!(state_of(&stale, "gh-old"), Some(OperationState::Dropped));
    // A genuinely new change later is applied.
    let next = apply(&mut book, &op("gh-next", 70, "next"));
    assert_eq!(released(&next), vec!["gh-next"]);
}

#[test]
fn errored_outcome_records_the_reason_and_releases_the_next() {
    let mut book = Book::default();
    apply(&mut book, &op("a", 10, "x"));
    apply(&mut book, &op("b", 20, "y"));
    let failed = Outcome {
        outcome: OutcomeKind::Errored,
        commit: None,
        reason: Some("gave up after 8 attempts: push refused".into()),
        ..done("a")
    };
    let change = book.apply_outcome(&failed, 2_000);
    let record = change.records.iter().find(|r| r.id == "a").expect("a");
    assert_eq!(record.state, OperationState::Errored);
    assert_eq!(record.reason.as_deref(), Some("gave up after 8 attempts: push refused"));
    assert_eq!(released(&change), vec!["b"]);
}

#[test]
fn every_state_change_is_in_the_audit_trail() {
    let mut book = Book::default();
    apply(&mut book, &op("a", 10, "x"));
    let change = book.apply_outcome(&done("a"), 2_000);
    let trail: Vec<OperationState> = change.records[0].history.iter().map(|t| t.state).collect();
    assert_eq!(trail, vec![OperationState::Queued, OperationState::Processing, OperationState::Completed]);
    assert!(change.records[0].history.iter().all(|t| t.at > 0));
}

proptest! {
    /// Random arrival orders, duplicate deliveries and outcome timings of N
    /// updates to one resource: the last applied is the newest, at most one
    /// is ever processing, and every operation ends in a final state.
    #[test]
    fn newest_update_wins_whatever_the_interleaving(
        n in 1usize..12,
        order in proptest::collection::vec(0usize..100, 1..60),
        outcome_every in 1usize..4,
    ) {
        let ops: Vec<SyncOperation> = (0..n).map(|i| op(&format!("op{i}"), 100 + i as i64 * 10, &format!("h{i}"))).collect();
        let mut book = Book::default();
        let mut states = std::collections::HashMap::new();
        let mut processing: Option<String> = None;
        let mut record = |change: &Change, processing: &mut Option<String>| {
            for r in &change.records {
                states.insert(r.id.clone(), r.state);
            }
            for live in &change.release {
                if let Some(p) = processing.as_ref() {
                    assert_eq!(p, &live.record.id, "two operations processing at once");
                }
                *processing = Some(live.record.id.clone());
            }
        };
        // Every op is delivered at least once, in a random order, some twice.
        let mut deliveries: Vec<usize> = (0..n).collect();
        deliveries.extend(order.iter().map(|i| i % n));
        let mut shuffled = Vec::new();
        for (i, pick) in order.iter().enumerate() {
            if !deliveries.is_empty() {
                shuffled.push(deliveries.remove((pick + i) % deliveries.len()));
            }
        }
        shuffled.extend(deliveries);
        for (step, i) in shuffled.into_iter().enumerate() {
            let change = book.apply_operation(&ops[i], b"p", None, step as i64);
            record(&change, &mut processing);
            if step % outcome_every == 0 {
                if let Some(id) = processing.take() {
                    let change = book.apply_outcome(&Outcome { operation: id.clone(), key: KEY.into(), ..done(&id) }, step as i64);
                    record(&change, &mut processing);
                }
            }
        }
        while let Some(id) = processing.take() {
            let change = book.apply_outcome(&done(&id), 10_000);
            record(&change, &mut processing);
        }
        let newest = ops.last().map(|o| o.updated_at);
        prop_assert_eq!(book.applied.as_ref().map(|a| a.updated_at), newest);
        prop_assert_eq!(states.len(), n);
        for (id, state) in &states {
            prop_assert!(state.is_final(), "{} ended {:?}", id, state);
        }
    }
}
