//! Commit-to-git against a real bare repository as the remote, asserting
//! on the remote's history: commits, authors, trailers, file contents.

mod support;

use std::sync::Arc;
use std::time::Duration;

use hookbus_bus::{Envelope, HandlerError, Outbox, Plugin};
use hookbus_commit::wire::Outcome;
use hookbus_commit::workdir::{Applied, Workdir};
use hookbus_commit::{CommitPlugin, GitTarget, PushBatching};
use serde_json::json;
use support::*;

#[tokio::test]
async fn inbound_upsert_commits_the_record_file_authored_by_the_actor() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    let op = issue_op("gh-1", 12, "Crash on start");

    let emitted = handle(&plugin, &op).await.expect("handled");

    let log = remote.log();
    assert_eq!(log.len(), 1, "one commit on a branch created in the empty remote");
    let commit = &log[0];
    assert_eq!(commit.subject(), "issues.edited octo/repo#12: Crash on start");
    assert_eq!(commit.author_name, "octocat");
    assert_eq!(commit.author_email, "583231+octocat@users.noreply.github.com");
    assert_eq!((commit.committer_name.as_str(), commit.committer_email.as_str()), ("hookbus", "hookbus@test.invalid"));
    assert_eq!(commit.trailer("Hookbus-Operation"), Some("gh-1"));
    assert_eq!(commit.trailer("Hookbus-Delivery"), Some("delivery-gh-1"));
    let file = remote.file("repos/octo/repo/issues/12.json").expect("file committed");
    let expected = hookbus_commit::record_file::file_bytes(&op["record"]);
    assert_eq!(file.as_bytes(), expected.as_slice());
    assert!(file.starts_with("{\n  \"assignees\": [],\n  \"author\": \"octocat\","), "{file}");
    assert!(file.ends_with("}\n"));

    let outcome = &emitted.outcomes[0];
    assert_eq!(outcome.outcome, Outcome::Completed);
    assert_eq!(outcome.commit.as_deref(), Some(commit.sha.as_str()));
    assert_eq!(outcome.path.as_deref(), Some("repos/octo/repo/issues/12.json"));
    assert_eq!(outcome.content_hash.as_deref(), Some(hookbus_commit::record_file::content_hash(&expected).as_str()));
    let synced = &emitted.synced[0];
    assert_eq!(synced.commit.as_deref(), Some(commit.sha.as_str()));
    assert_eq!(synced.record.as_ref(), Some(&op["record"]));
    assert_eq!(synced.delivery.as_deref(), Some("delivery-gh-1"));
}

#[tokio::test]
async fn each_pushed_commit_is_recorded_in_the_commits_journal_once() {
    let remote = BareRemote::new();
    let wd = workdir();
    let backend: Arc<dyn hookbus_bus::Backend> = Arc::new(hookbus_bus::MemoryBackend::new());
    let journal = hookbus_bus::Journal::new(backend.clone(), hookbus_commit::COMMITS_JOURNAL, 10);
    let plugin = plugin(&remote, &wd).with_journal(journal.clone());
    let op = issue_op("gh-7", 7, "Journal me");
    handle(&plugin, &op).await.expect("handled");
    // Unchanged on redelivery: no commit, nothing recorded.
    handle(&plugin, &op).await.expect("handled again");

    let recorded = journal.recent(10).await.expect("journal");
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let entry = &recorded[0];
    let commit = &remote.log()[0];
    assert_eq!(entry["sha"], commit.sha.as_str());
    assert_eq!(entry["resource"], "github:octo/repo:issue:7");
    assert_eq!(entry["operation"], "gh-7");
    assert_eq!(entry["author"], "octocat");
    assert_eq!(entry["message"], "issues.edited octo/repo#7: Journal me");
}

#[tokio::test]
async fn actor_email_and_name_are_used_when_known() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    let mut op = issue_op("gh-1", 1, "t");
    op["actor"] = json!({"login": "mona", "id": 7, "name": "Mona Lisa", "email": "mona@example.com"});
    handle(&plugin, &op).await.expect("handled");
    let commit = &remote.log()[0];
    assert_eq!((commit.author_name.as_str(), commit.author_email.as_str()), ("Mona Lisa", "mona@example.com"));
}

#[tokio::test]
async fn unchanged_record_completes_without_a_commit() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    handle(&plugin, &issue_op("gh-1", 12, "Same")).await.expect("first");

    let emitted = handle(&plugin, &issue_op("gh-2", 12, "Same")).await.expect("second");

    assert_eq!(remote.log().len(), 1, "no empty commit");
    let outcome = &emitted.outcomes[0];
    assert_eq!(outcome.outcome, Outcome::Completed);
    assert_eq!(outcome.commit, None);
    assert!(outcome.content_hash.is_some());
    assert!(emitted.synced.is_empty(), "nothing changed, nothing to notify for an inbound no-op");
}

#[tokio::test]
async fn removal_deletes_the_file_and_a_second_removal_is_a_noop() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    handle(&plugin, &issue_op("gh-1", 12, "Doomed")).await.expect("created");
    let mut remove = issue_op("gh-2", 12, "Doomed");
    remove["action"] = json!("deleted");
    remove["effect"] = json!("remove");

    let emitted = handle(&plugin, &remove).await.expect("removed");

    assert_eq!(remote.file("repos/octo/repo/issues/12.json"), None);
    let log = remote.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].subject(), "issues.deleted octo/repo#12: Doomed");
    assert_eq!(emitted.outcomes[0].content_hash, None);
    assert_eq!(emitted.synced[0].record, None);

    remove["operation"] = json!("gh-3");
    let emitted = handle(&plugin, &remove).await.expect("removed again");
    assert_eq!(remote.log().len(), 2);
    assert_eq!(emitted.outcomes[0].commit, None);
}

#[tokio::test]
async fn comments_and_releases_have_their_own_paths_and_subjects() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    let mut comment = issue_op("gh-c", 12, "x");
    comment["kind"] = json!("comment");
    comment["source"] = json!("issue_comment");
    comment["action"] = json!("created");
    comment["id"] = json!(555);
    comment["key"] = json!("github:octo/repo:comment:555");
    comment["record"] = json!({"id": 555, "issue_number": 12, "body": "hi", "author": "octocat"});
    let mut release = issue_op("gh-r", 0, "x");
    release["kind"] = json!("release");
    release["source"] = json!("release");
    release["action"] = json!("published");
    release["number"] = json!(null);
    release["id"] = json!(77);
    release["key"] = json!("github:octo/repo:release:77");
    release["record"] = json!({"id": 77, "tag": "v1.0.0", "name": "One"});

    handle(&plugin, &comment).await.expect("comment");
    handle(&plugin, &release).await.expect("release");

    let log = remote.log();
    assert_eq!(log[1].subject(), "issue_comment.created octo/repo comment 555 on #12");
    assert_eq!(log[0].subject(), "release.published octo/repo release v1.0.0");
    assert!(remote.file("repos/octo/repo/comments/555.json").is_some());
    assert!(remote.file("repos/octo/repo/releases/77.json").is_some());
}

fn outbound(operation: &str, number: Option<u64>, changes: serde_json::Value) -> serde_json::Value {
    let mut op = issue_op(operation, number.unwrap_or(0), "");
    op["direction"] = json!("outbound");
    op["source"] = json!("client.change");
    op["action"] = json!(if number.is_some() { "update" } else { "create" });
    op["number"] = json!(number);
    op["delivery"] = json!(null);
    op["actor"] = json!({"login": "alice", "id": null, "name": "Alice", "email": null});
    op["record"] = json!(null);
    op["changes"] = changes;
    // Accepted after the inbound records' GitHub time (2026-11-23T00:00:00Z).
    op["updated_at"] = json!(1_796_000_000_000_i64);
    op
}

#[tokio::test]
async fn a_client_change_re_driven_after_github_changed_the_record_is_neither_applied_nor_written_back() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    // Accepted at 2026-11-30T08:53:20Z, went dead; meanwhile GitHub's
    // newer edit came in and was committed; then the sweep re-drove it.
    let mut newer = issue_op("gh-1", 12, "Edited on GitHub");
    newer["record"]["updated_at"] = json!("2026-11-30T09:00:00Z");
    handle(&plugin, &newer).await.expect("inbound");

    let emitted =
        handle(&plugin, &outbound("op-late", Some(12), json!({"title": "Client's"}))).await.expect("re-driven");

    assert_eq!(remote.log().len(), 1, "no commit");
    let file = remote.file("repos/octo/repo/issues/12.json").expect("file");
    assert!(file.contains("Edited on GitHub"), "{file}");
    assert!(emitted.synced.is_empty(), "not written back to GitHub");
    let outcome = &emitted.outcomes[0];
    assert_eq!((outcome.outcome, outcome.commit.as_deref()), (Outcome::Completed, None));
    assert!(outcome.reason.as_deref().is_some_and(|r| r.contains("changed on GitHub")), "{:?}", outcome.reason);
}

#[tokio::test]
async fn outbound_update_sets_the_changed_fields_and_notifies() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    handle(&plugin, &issue_op("gh-1", 12, "Old title")).await.expect("inbound");

    let emitted =
        handle(&plugin, &outbound("op-out", Some(12), json!({"title": "New title"}))).await.expect("outbound");

    let commit = &remote.log()[0];
    assert_eq!(commit.subject(), "client.change.update octo/repo#12: New title");
    assert_eq!(commit.author_email, "alice@users.noreply.github.com");
    assert_eq!(commit.trailer("Hookbus-Delivery"), Some("none"));
    let file: serde_json::Value =
        serde_json::from_str(&remote.file("repos/octo/repo/issues/12.json").expect("file")).expect("json");
    assert_eq!(file["title"], "New title");
    assert_eq!(file["labels"], json!(["bug"]), "other fields kept");
    let synced = &emitted.synced[0];
    assert_eq!(synced.changes.as_ref().map(|c| c["title"].clone()), Some(json!("New title")));

    // The same change again: git is up to date, the write-back still happens.
    let emitted = handle(&plugin, &outbound("op-out-2", Some(12), json!({"title": "New title"}))).await.expect("again");
    assert_eq!(remote.log().len(), 2);
    assert_eq!(emitted.outcomes[0].commit, None);
    assert_eq!(emitted.synced.len(), 1, "outbound operations always reach notify");
}

#[tokio::test]
async fn outbound_create_completes_as_a_noop_and_still_notifies() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    let emitted = handle(&plugin, &outbound("op-new", None, json!({"title": "Brand new"}))).await.expect("create");
    assert!(!remote.has_branch(), "nothing committed");
    let outcome = &emitted.outcomes[0];
    assert_eq!(outcome.commit, None);
    assert_eq!(outcome.reason.as_deref(), Some("created on GitHub; the file arrives with GitHub's webhook"));
    assert_eq!(emitted.synced.len(), 1);
}

#[tokio::test]
async fn redelivery_after_push_does_not_commit_again() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    let first = handle(&plugin, &issue_op("gh-1", 12, "A")).await.expect("first");
    handle(&plugin, &issue_op("gh-2", 12, "B")).await.expect("newer");

    let again = handle(&plugin, &issue_op("gh-1", 12, "A")).await.expect("redelivered");

    assert_eq!(remote.log().len(), 2);
    assert_eq!(remote.commits_for("gh-1"), 1);
    assert_eq!(again.outcomes[0].commit, first.outcomes[0].commit, "reports the commit it already made");
}

#[tokio::test]
async fn commits_leave_no_object_files_and_few_packs_and_survive_a_restart() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    // One push per operation: the most packs a workdir can be given.
    for i in 0..60u64 {
        handle(&plugin, &issue_op(&format!("gh-{i}"), i % 9, &format!("v{i}"))).await.expect("synced");
    }
    drop(plugin);
    let objects = wd.path().join("objects");
    let loose: usize = std::fs::read_dir(&objects)
        .expect("objects dir")
        .flatten()
        .filter(|e| e.file_name().len() == 2)
        .map(|e| std::fs::read_dir(e.path()).map(|d| d.count()).unwrap_or(0))
        .sum();
    assert_eq!(loose, 0, "objects were written one file each");
    let packs = std::fs::read_dir(objects.join("pack"))
        .expect("pack dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .count();
    // A merge may still have been running when the plugin went.
    assert!(packs <= 2 * hookbus_commit::objects::MAX_PACKS, "{packs} packs");

    // A new process on the same workdir finds every commit it made, on disk.
    let again = plugin_with_window(&remote, wd.path(), Duration::from_millis(5));
    let redelivered = handle(&again, &issue_op("gh-59", 59 % 9, "v59")).await.expect("redelivered");
    assert_eq!(remote.log().len(), 60);
    assert_eq!(remote.commits_for("gh-59"), 1);
    assert!(redelivered.outcomes[0].commit.is_some(), "reports the commit it already made");
}

#[tokio::test]
async fn a_crash_between_commit_and_push_is_healed_on_redelivery() {
    let remote = BareRemote::new();
    let wd = workdir();
    let op = issue_op("gh-1", 12, "Committed, never pushed");
    {
        // The first process commits and dies before pushing.
        let mut workdir = Workdir::open(target(&remote, wd.path())).expect("workdir");
        let payload = serde_json::from_value(op.clone()).expect("payload");
        assert!(matches!(workdir.apply(&payload).expect("apply"), Applied::Committed { .. }));
    }
    assert!(remote.file("repos/octo/repo/issues/12.json").is_none(), "not pushed yet");

    let restarted = plugin(&remote, &wd);
    let emitted = handle(&restarted, &op).await.expect("redelivered");

    let log = remote.log();
    assert_eq!(log.len(), 1, "pushed once, not committed twice");
    assert_eq!(remote.commits_for("gh-1"), 1);
    assert_eq!(emitted.outcomes[0].commit.as_deref(), Some(log[0].sha.as_str()));
}

#[tokio::test]
async fn a_stale_lock_or_unfinished_pack_left_by_a_killed_process_does_not_block_or_stay_in_the_workdir() {
    let remote = BareRemote::new();
    let wd = workdir();
    handle(&plugin(&remote, &wd), &issue_op("gh-1", 1, "one")).await.expect("first");
    std::fs::write(wd.path().join("refs/heads/main.lock"), b"").expect("lock");
    let unfinished = wd.path().join("objects/pack/pack_git2_Zq3xT1");
    std::fs::write(&unfinished, b"PACK\0\0\0\x02").expect("half a pack");

    handle(&plugin(&remote, &wd), &issue_op("gh-2", 2, "two")).await.expect("after restart");

    assert_eq!(remote.log().len(), 2);
    assert!(!unfinished.exists(), "the unfinished pack was removed");
    let packs = std::fs::read_dir(wd.path().join("objects/pack")).expect("packs").count();
    assert!(packs >= 2, "the finished packs stay ({packs} files)");
}

#[tokio::test]
async fn an_older_record_re_driven_after_a_newer_one_was_committed_does_not_overwrite_it() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    let at = |op: &mut serde_json::Value, time: &str| op["record"]["updated_at"] = json!(time);
    let mut older = issue_op("gh-1", 12, "One");
    at(&mut older, "2026-11-23T10:00:00Z");
    let mut newer = issue_op("gh-2", 12, "Two");
    at(&mut newer, "2026-11-23T10:00:05Z");
    // gh-1 went dead (say the remote was down), gh-2 came later and got
    // through, then the dead-letter sweep re-drove gh-1.
    handle(&plugin, &newer).await.expect("newer");
    let emitted = handle(&plugin, &older).await.expect("re-driven older");

    assert_eq!(remote.log().len(), 1, "no commit for the older record");
    let file = remote.file("repos/octo/repo/issues/12.json").expect("file");
    assert!(file.contains("\"Two\""), "the newer record stays: {file}");
    let outcome = &emitted.outcomes[0];
    assert_eq!(outcome.outcome, Outcome::Completed);
    assert!(outcome.reason.as_deref().is_some_and(|r| r.contains("newer record")), "{:?}", outcome.reason);
    assert!(emitted.synced.is_empty(), "subscribers hear nothing of it");
}

#[tokio::test]
async fn a_rejected_push_is_reapplied_on_the_new_tip() {
    let remote = BareRemote::new();
    let (wd_a, wd_b) = (workdir(), workdir());
    let a = plugin(&remote, &wd_a);
    let b = plugin(&remote, &wd_b);
    handle(&b, &issue_op("gh-b1", 1, "b one")).await.expect("b syncs");
    handle(&a, &issue_op("gh-a1", 2, "a one")).await.expect("a moves the remote");

    // b's clone is stale: its push is rejected, then re-applied on a's tip.
    let emitted = handle(&b, &issue_op("gh-b2", 3, "b two")).await.expect("b again");

    let log = remote.log();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].operation(), Some("gh-b2"));
    assert_eq!(emitted.outcomes[0].commit.as_deref(), Some(log[0].sha.as_str()));
    for n in 1..=3 {
        assert!(remote.file(&format!("repos/octo/repo/issues/{n}.json")).is_some(), "issue {n}");
    }
    let parents = git_out(remote.path(), &["rev-list", "--min-parents=2", "main"]);
    assert!(parents.trim().is_empty(), "linear history, no merges");
}

#[tokio::test]
async fn an_unchanged_record_on_a_stale_clone_is_checked_against_the_remote() {
    let remote = BareRemote::new();
    let (wd_a, wd_b) = (workdir(), workdir());
    let a = plugin(&remote, &wd_a);
    let b = plugin(&remote, &wd_b);
    handle(&b, &issue_op("gh-1", 1, "v1")).await.expect("v1");
    handle(&a, &issue_op("gh-2", 1, "v2")).await.expect("v2 by a");

    // b still sees v1; writing v1 again is a change on the remote.
    handle(&b, &issue_op("gh-3", 1, "v1")).await.expect("v1 again by b");

    assert_eq!(remote.log().len(), 3);
    assert!(remote.file("repos/octo/repo/issues/1.json").expect("file").contains("\"v1\""));
}

/// Several commit workers pushing into one local remote at once: every
/// commit must end up on the branch. libgit2's local transport alone let a
/// concurrent push overwrite another (one commit lost in a chaos run); the
/// branch now moves by compare-and-swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_pushing_at_once_lose_no_commit() {
    let remote = BareRemote::new();
    let workdirs: Vec<_> = (0..4).map(|_| workdir()).collect();
    let plugins: Vec<_> = workdirs.iter().map(|wd| Arc::new(plugin(&remote, wd))).collect();
    let mut tasks = Vec::new();
    for i in 0..30u64 {
        for (w, plugin) in plugins.iter().enumerate() {
            let number = 100 * w as u64 + i;
            let op = issue_op(&format!("gh-{w}-{i}"), number, &format!("{w} {i}"));
            let plugin = Arc::clone(plugin);
            tasks.push(tokio::spawn(async move {
                // As the runner would: a push still rejected after its
                // re-applications is transient and is tried again.
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match handle(&plugin, &op).await {
                        Err(HandlerError::Transient(_)) if attempts < 10 => continue,
                        other => return other.map(|_| ()),
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("task").expect("every operation succeeds");
    }

    let log = remote.log();
    assert_eq!(log.len(), 120, "every operation's commit is on the remote's branch");
    for commit in &log {
        assert_eq!(remote.commits_for(commit.operation().expect("trailer")), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_one_push_within_the_window() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = Arc::new(plugin_with_window(&remote, wd.path(), Duration::from_millis(300)));
    handle(&plugin, &issue_op("gh-warm", 100, "warm up")).await.expect("first");
    let before = plugin.push_batches();
    let tasks: Vec<_> = (0..10u64)
        .map(|i| {
            let plugin = Arc::clone(&plugin);
            tokio::spawn(async move { handle(&plugin, &issue_op(&format!("gh-{i}"), i, "t")).await.map(|_| ()) })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("ok");
    }
    assert_eq!(remote.log().len(), 11);
    assert!(plugin.push_batches() - before <= 2, "10 commits in {} pushes", plugin.push_batches() - before);
}

#[tokio::test]
async fn a_missing_remote_is_permanent_and_says_what_to_fix() {
    let wd = workdir();
    let target = GitTarget {
        remote: unused_path().display().to_string(),
        branch: "main".into(),
        workdir: wd.path().to_path_buf(),
        login: hookbus_commit::RemoteLogin::Anonymous,
        committer_name: "hookbus".into(),
        committer_email: "hookbus@test.invalid".into(),
    };
    let err = CommitPlugin::new(target, PushBatching { window: Duration::ZERO, max: 1 }).err().expect("refused");
    assert!(err.is_permanent());
    assert!(err.to_string().contains("HOOKBUS_GIT__REMOTE"), "{err}");
}

#[tokio::test]
async fn a_remote_removed_while_running_goes_dead_with_a_reason() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    handle(&plugin, &issue_op("gh-1", 1, "x")).await.expect("first");
    std::fs::remove_dir_all(remote.path()).expect("remove remote");

    let err = handle(&plugin, &issue_op("gh-2", 2, "y")).await.err().expect("fails");

    match err {
        HandlerError::Permanent(reason) => assert!(reason.contains("does not exist"), "{reason}"),
        other => panic!("expected permanent, got {other:?}"),
    }
}

#[tokio::test]
async fn a_payload_that_does_not_decode_goes_dead() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    let err = handle(&plugin, &json!({"operation": "x", "key": "k"})).await.err().expect("fails");
    assert!(matches!(err, HandlerError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn a_dead_operation_is_reported_to_reconcile_as_errored() {
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    let message = envelope(&issue_op("gh-9", 9, "x"));
    let mut out = Outbox::new(&message.trace_id);

    plugin.on_dead(&message, "push to origin refused: authentication failed", &mut out);

    let emitted = split(out);
    let outcome = &emitted.outcomes[0];
    assert_eq!(outcome.operation, "gh-9");
    assert_eq!(outcome.key, "github:octo/repo:issue:9");
    assert_eq!(outcome.outcome, Outcome::Errored);
    assert_eq!(outcome.reason.as_deref(), Some("push to origin refused: authentication failed"));
}

#[tokio::test]
async fn what_normalise_emits_decodes_and_is_written_byte_for_byte() {
    use hookbus_normalise::record::{file_bytes, IssueRecord, Record};
    use hookbus_normalise::wire::{Actor, Direction, ResourceKind, SyncOperationPayload, TimeSource};
    let record = IssueRecord {
        assignees: vec!["hubot".into()],
        author: "octocat".into(),
        body: Some("Steps: \"run\" — then ✨".into()),
        closed_at: None,
        created_at: "2026-11-01T00:00:00Z".into(),
        html_url: "https://github.com/octo/repo/issues/3".into(),
        labels: vec!["bug".into(), "p1".into()],
        locked: false,
        milestone: None,
        number: 3,
        state: "open".into(),
        state_reason: None,
        title: "Unicode ✓".into(),
        updated_at: "2026-11-23T00:00:00Z".into(),
    };
    let expected = file_bytes(&record);
    let expected_hash = hookbus_normalise::record::content_hash(&record);
    let payload = SyncOperationPayload {
        operation: "gh-norm".into(),
        direction: Direction::Inbound,
        key: "github:octo/repo:issue:3".into(),
        repository: "octo/repo".into(),
        repository_enabled: true,
        kind: ResourceKind::Issue,
        action: "opened".into(),
        effect: hookbus_normalise::actions::Effect::Upsert,
        updated_at: 1_763_856_000_000,
        updated_at_source: TimeSource::Resource,
        actor: Actor { login: "octocat".into(), id: Some(1), name: None, email: None },
        delivery: Some("d".into()),
        source: "issues".into(),
        number: Some(3),
        id: Some(42),
        content_hash: "h".into(),
        record: Some(Record::Issue(record)),
        changes: None,
        received_at: 1_763_856_000_100,
    };
    let message = Envelope::with_payload("sync.apply", &payload).expect("encodes").keyed("github:octo/repo:issue:3");
    let remote = BareRemote::new();
    let wd = workdir();
    let plugin = plugin(&remote, &wd);
    let mut out = Outbox::new("t");

    plugin.handle(&message, &mut out).await.expect("handled");

    let file = remote.file("repos/octo/repo/issues/3.json").expect("file");
    assert_eq!(file.as_bytes(), expected.as_slice());
    let outcome = &split(out).outcomes[0];
    assert_eq!(outcome.content_hash, Some(expected_hash));
}
