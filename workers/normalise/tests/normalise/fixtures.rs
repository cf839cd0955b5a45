//! Real GitHub payloads through the plugin, field by field.

use std::sync::Arc;

use hookbus_bus::HandlerError;
use hookbus_config::RepositoryList;
use hookbus_normalise::actions::{decide, Decision, Effect};
use hookbus_normalise::record::{content_hash, Record};
use hookbus_normalise::wire::{Direction, ResourceKind, TimeSource};
use hookbus_normalise::{MemoryRegistry, Normalise, RepositoryRegistry, SyncOperationPayload};
use serde_json::{json, Value};

use crate::support::*;

fn ms(text: &str) -> i64 {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).expect("RFC 3339");
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

fn opt_text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names.dedup();
    names
}

/// Asserts the issue / pull request fields both records share against the
/// payload's object.
#[allow(clippy::too_many_arguments)]
fn assert_conversation(
    src: &Value,
    number: u64,
    title: &str,
    body: &Option<String>,
    state: &str,
    labels: &[String],
    assignees: &[String],
    author: &str,
    dates: [&Option<String>; 1],
    locked: bool,
) {
    assert_eq!(number, src["number"].as_u64().expect("number"));
    assert_eq!(title, src["title"].as_str().expect("title"));
    assert_eq!(*body, opt_text(&src["body"]));
    assert_eq!(state, src["state"].as_str().expect("state"));
    let want_labels = sorted(
        src["labels"].as_array().expect("labels").iter().map(|l| l["name"].as_str().expect("name").into()).collect(),
    );
    assert_eq!(labels, want_labels.as_slice());
    let want_assignees = sorted(
        src["assignees"]
            .as_array()
            .expect("assignees")
            .iter()
            .map(|u| u["login"].as_str().expect("login").into())
            .collect(),
    );
    assert_eq!(assignees, want_assignees.as_slice());
    assert_eq!(author, src["user"]["login"].as_str().expect("user.login"));
    assert_eq!(*dates[0], opt_text(&src["closed_at"]));
    assert_eq!(locked, src["locked"].as_bool().unwrap_or(false));
}

/// Checks one operation against the payload it came from, as
/// docs/pipeline.md and docs/wire-format.md describe it.
fn assert_documented(event: &str, file: &str, body: &Value, op: &SyncOperationPayload, effect: Effect) {
    let repository = body["repository"]["full_name"].as_str().expect("full_name").to_lowercase();
    assert_eq!(op.repository, repository, "{file}");
    assert_eq!(op.direction, Direction::Inbound);
    assert_eq!(op.action, body["action"].as_str().expect("action"));
    assert_eq!(op.effect, effect, "{event}/{file}");
    assert_eq!(op.source, event);
    assert_eq!(op.delivery.as_deref(), Some("delivery-1"));
    assert!(op.operation.starts_with("gh-") && op.operation.len() == 35, "{}", op.operation);
    assert_eq!(op.actor.login, body["sender"]["login"].as_str().expect("sender.login"));
    assert_eq!(op.actor.id, body["sender"]["id"].as_u64());
    assert!(op.repository_enabled);
    assert_eq!(op.received_at, RECEIVED_AT);
    assert!(op.changes.is_none());
    let record = op.record.as_ref().expect("inbound operations carry the record");
    assert_eq!(op.content_hash, content_hash(record), "the hash is of the record's file bytes");
    match (event, record) {
        ("issues", Record::Issue(r)) => {
            let src = &body["issue"];
            assert_eq!(op.kind, ResourceKind::Issue);
            assert_eq!(op.key, format!("github:{repository}:issue:{}", r.number));
            assert_eq!(op.number, Some(r.number));
            assert_eq!(op.updated_at, ms(src["updated_at"].as_str().expect("updated_at")));
            assert_eq!(op.updated_at_source, TimeSource::Resource);
            assert_conversation(
                src,
                r.number,
                &r.title,
                &r.body,
                &r.state,
                &r.labels,
                &r.assignees,
                &r.author,
                [&r.closed_at],
                r.locked,
            );
            assert_eq!(r.state_reason, opt_text(&src["state_reason"]));
            assert_eq!(r.created_at, src["created_at"].as_str().expect("created_at"));
            assert_eq!(r.updated_at, src["updated_at"].as_str().expect("updated_at"));
            assert_eq!(r.html_url, src["html_url"].as_str().expect("html_url"));
            assert_eq!(r.milestone.as_ref().map(|m| m.number), src["milestone"]["number"].as_u64());
            assert_eq!(r.milestone.as_ref().map(|m| m.title.clone()), opt_text(&src["milestone"]["title"]));
        }
        ("pull_request", Record::PullRequest(r)) => {
            let src = &body["pull_request"];
            assert_eq!(op.kind, ResourceKind::PullRequest);
            assert_eq!(op.key, format!("github:{repository}:issue:{}", r.number), "pull requests share issue keys");
            assert_eq!(op.updated_at, ms(src["updated_at"].as_str().expect("updated_at")));
            assert_conversation(
                src,
                r.number,
                &r.title,
                &r.body,
                &r.state,
                &r.labels,
                &r.assignees,
                &r.author,
                [&r.closed_at],
                r.locked,
            );
            assert_eq!(r.created_at, src["created_at"].as_str().expect("created_at"));
            assert_eq!(r.html_url, src["html_url"].as_str().expect("html_url"));
            assert_eq!(r.draft, src["draft"].as_bool().unwrap_or(false));
            assert_eq!(r.merged, src["merged"].as_bool().unwrap_or(false));
            assert_eq!(r.merged_at, opt_text(&src["merged_at"]));
            assert_eq!(r.head.name, src["head"]["ref"].as_str().expect("head.ref"));
            assert_eq!(r.head.sha, src["head"]["sha"].as_str().expect("head.sha"));
            assert_eq!(r.base.name, src["base"]["ref"].as_str().expect("base.ref"));
            assert_eq!(r.base.sha, src["base"]["sha"].as_str().expect("base.sha"));
            assert_eq!(r.milestone.as_ref().map(|m| m.number), src["milestone"]["number"].as_u64());
        }
        ("issue_comment", Record::Comment(r)) => {
            let src = &body["comment"];
            assert_eq!(op.kind, ResourceKind::Comment);
            assert_eq!(op.key, format!("github:{repository}:comment:{}", r.id));
            assert_eq!((op.number, op.id), (Some(r.issue_number), Some(r.id)));
            assert_eq!(op.updated_at, ms(src["updated_at"].as_str().expect("updated_at")));
            assert_eq!(r.id, src["id"].as_u64().expect("id"));
            assert_eq!(r.issue_number, body["issue"]["number"].as_u64().expect("issue.number"));
            assert_eq!(r.body, src["body"].as_str().expect("body"));
            assert_eq!(r.author, src["user"]["login"].as_str().expect("user.login"));
            assert_eq!(r.created_at, src["created_at"].as_str().expect("created_at"));
            assert_eq!(r.updated_at, src["updated_at"].as_str().expect("updated_at"));
            assert_eq!(r.html_url, src["html_url"].as_str().expect("html_url"));
        }
        ("release", Record::Release(r)) => {
            let src = &body["release"];
            assert_eq!(op.kind, ResourceKind::Release);
            assert_eq!(op.key, format!("github:{repository}:release:{}", r.id));
            assert_eq!(op.id, Some(r.id));
            match src["updated_at"].as_str() {
                Some(at) => assert_eq!(op.updated_at, ms(at)),
                None => {
                    assert_eq!(op.updated_at, RECEIVED_AT, "no updated_at: ordered by receipt");
                    assert_eq!(op.updated_at_source, TimeSource::Received);
                }
            }
            assert_eq!(r.id, src["id"].as_u64().expect("id"));
            assert_eq!(r.tag, src["tag_name"].as_str().expect("tag_name"));
            assert_eq!(r.name, opt_text(&src["name"]));
            assert_eq!(r.body, opt_text(&src["body"]));
            assert_eq!(r.draft, src["draft"].as_bool().expect("draft"));
            assert_eq!(r.prerelease, src["prerelease"].as_bool().expect("prerelease"));
            assert_eq!(r.published_at, opt_text(&src["published_at"]));
            assert_eq!(r.author, src["author"]["login"].as_str().expect("author.login"));
            assert_eq!(r.html_url, src["html_url"].as_str().expect("html_url"));
        }
        (event, record) => panic!("{event}/{file}: unexpected record {record:?}"),
    }
}

#[tokio::test]
async fn every_example_of_the_synced_events_normalises_as_documented() {
    let (plugin, _) = plugin();
    let (mut synced, mut skipped, mut total) = (0, 0, 0);
    for event in SYNCED_EVENTS {
        for (file, bytes) in fixtures(event) {
            total += 1;
            let body: Value = serde_json::from_slice(&bytes).expect("json");
            let action = body["action"].as_str().expect("action");
            let operations = handle(&plugin, &webhook(event, "delivery-1", &bytes))
                .await
                .unwrap_or_else(|err| panic!("{event}/{file}: {err}"));
            match decide(event, action) {
                Decision::Sync(effect) => {
                    assert_eq!(operations.len(), 1, "{event}/{file}");
                    assert_documented(event, &file, &body, &operations[0], effect);
                    synced += 1;
                }
                Decision::Skip(_) => {
                    assert!(operations.is_empty(), "{event}/{file} is skipped");
                    skipped += 1;
                }
                Decision::Repositories(_) => panic!("{event}/{file}"),
            }
        }
    }
    assert_eq!(total, 80, "29 issues + 9 issue_comment + 29 pull_request + 13 release examples");
    // Skipped: issues pinned/unpinned, pull_request review_requested/review_request_removed.
    assert_eq!((synced, skipped), (76, 4));
}

#[tokio::test]
async fn closed_pull_request_syncs_state_and_closed_at() {
    let (plugin, _) = plugin();
    let op = one_operation(&plugin, "pull_request", &fixture("pull_request", "closed.json")).await;
    assert_eq!(op.key, "github:codertocat/hello-world:issue:2");
    let Some(Record::PullRequest(pr)) = op.record else { panic!("a pull request record") };
    assert_eq!(pr.state, "closed");
    assert_eq!(pr.closed_at.as_deref(), Some("2019-05-15T15:21:18Z"));
    assert!(!pr.merged);
    assert_eq!(pr.merged_at, None);
    assert_eq!((pr.head.name.as_str(), pr.base.name.as_str()), ("changes", "master"));
    assert_eq!(pr.head.sha, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
    assert_eq!(op.updated_at, ms("2019-05-15T15:21:18Z"));
    assert_eq!((op.actor.login.as_str(), op.actor.id), ("Codertocat", Some(21031067)));
}

/// The examples have no `issues.closed`; this one is the real `reopened`
/// example with the fields GitHub changes on closing.
#[tokio::test]
async fn closed_issue_syncs_state_reason_and_closed_at() {
    let (plugin, _) = plugin();
    let mut body = fixture_json("issues", "reopened.json");
    body["action"] = json!("closed");
    body["issue"]["state"] = json!("closed");
    body["issue"]["state_reason"] = json!("completed");
    body["issue"]["closed_at"] = json!("2021-10-11T16:41:00Z");
    body["issue"]["updated_at"] = json!("2021-10-11T16:41:00Z");
    let op = one_operation(&plugin, "issues", &serde_json::to_vec(&body).expect("json")).await;
    assert_eq!(op.action, "closed");
    assert_eq!(op.effect, Effect::Upsert);
    assert_eq!(op.updated_at, ms("2021-10-11T16:41:00Z"));
    let Some(Record::Issue(issue)) = op.record else { panic!("an issue record") };
    assert_eq!(issue.state, "closed");
    assert_eq!(issue.state_reason.as_deref(), Some("completed"));
    assert_eq!(issue.closed_at.as_deref(), Some("2021-10-11T16:41:00Z"));
}

#[tokio::test]
async fn labeled_issue_lists_label_names_sorted() {
    let (plugin, _) = plugin();
    let mut body = fixture_json("issues", "labeled.json");
    let bug = body["issue"]["labels"][0].clone();
    let mut wontfix = bug.clone();
    wontfix["name"] = json!("wontfix");
    let mut docs = bug.clone();
    docs["name"] = json!("docs");
    body["issue"]["labels"] = json!([wontfix, bug, docs]);
    let op = one_operation(&plugin, "issues", &serde_json::to_vec(&body).expect("json")).await;
    let Some(Record::Issue(issue)) = op.record else { panic!("an issue record") };
    assert_eq!(issue.labels, ["bug", "docs", "wontfix"]);
}

#[tokio::test]
async fn redelivered_webhook_keeps_its_operation_id() {
    let (plugin, _) = plugin();
    let body = fixture("issues", "edited.json");
    let first = handle(&plugin, &webhook("issues", "d-1", &body)).await.expect("ok");
    let again = handle(&plugin, &webhook("issues", "d-1", &body)).await.expect("ok");
    let other = handle(&plugin, &webhook("issues", "d-2", &body)).await.expect("ok");
    assert_eq!(first[0].operation, again[0].operation);
    assert_ne!(first[0].operation, other[0].operation);
    assert_eq!(first[0].content_hash, other[0].content_hash, "same record, same hash");
}

#[tokio::test]
async fn deleted_and_transferred_resources_remove_their_file() {
    let (plugin, _) = plugin();
    for (event, file) in [
        ("issues", "deleted.json"),
        ("issues", "transferred.json"),
        ("issue_comment", "deleted.json"),
        ("release", "deleted.json"),
    ] {
        let op = one_operation(&plugin, event, &fixture(event, file)).await;
        assert_eq!(op.effect, Effect::Remove, "{event}/{file}");
    }
    let op = one_operation(&plugin, "issues", &fixture("issues", "deleted.json")).await;
    assert_eq!(op.updated_at, ms("2021-10-11T16:40:56Z"), "a deletion carries the resource's last updated_at");
}

#[tokio::test]
async fn events_and_actions_outside_the_record_are_acknowledged_without_output() {
    let (plugin, _) = plugin();
    for (event, file) in [
        ("issues", "pinned.json"),
        ("issues", "unpinned.json"),
        ("pull_request", "review_requested.json"),
        ("ping", "ping.json"),
        ("installation", "suspend.json"),
    ] {
        let operations = handle(&plugin, &webhook(event, "d", &fixture(event, file))).await.expect("acknowledged");
        assert!(operations.is_empty(), "{event}/{file}");
    }
    let operations =
        handle(&plugin, &webhook("push", "d", b"not even json")).await.expect("unsynced events are not read");
    assert!(operations.is_empty());
    let mut body = fixture_json("issues", "opened.json");
    body["action"] = json!("levitated");
    let operations = handle(&plugin, &webhook("issues", "d", &serde_json::to_vec(&body).expect("json"))).await;
    assert!(operations.expect("an unknown action is skipped").is_empty());
}

#[tokio::test]
async fn a_missing_or_mistyped_field_dead_letters_naming_it() {
    let (plugin, _) = plugin();
    let mut body = fixture_json("issues", "opened.json");
    body["issue"]["number"] = json!("1");
    let err = handle(&plugin, &webhook("issues", "d", &serde_json::to_vec(&body).expect("json"))).await.unwrap_err();
    let HandlerError::Permanent(reason) = err else { panic!("permanent: {err:?}") };
    assert_eq!(reason, "issues.opened: field `issue.number` must be a non-negative integer, found a string");

    let mut body = fixture_json("pull_request", "closed.json");
    body["pull_request"]["head"].as_object_mut().expect("head").remove("sha");
    let err = handle(&plugin, &webhook("pull_request", "d", &serde_json::to_vec(&body).expect("json"))).await;
    assert_eq!(err.unwrap_err().to_string(), "pull_request.closed: field `pull_request.head.sha` is missing");

    for (bytes, want) in [(&b"{nope"[..], "issues: body is not JSON"), (b"[1,2]", "issues: body must be a JSON object")]
    {
        let err = handle(&plugin, &webhook("issues", "d", bytes)).await.unwrap_err();
        assert!(matches!(&err, HandlerError::Permanent(r) if r.starts_with(want)), "{err:?}");
    }
    let mut message = webhook("issues", "d", b"{}");
    message.kind = "github.push".into();
    assert!(matches!(handle(&plugin, &message).await, Err(HandlerError::Permanent(_))));
}

#[tokio::test]
async fn installation_events_enable_and_disable_repositories() {
    let (plugin, registry) = plugin();
    let removed = fixture("installation_repositories", "removed.json");
    assert!(handle(&plugin, &webhook("installation_repositories", "d-1", &removed)).await.expect("ok").is_empty());
    assert!(!registry.is_enabled("octocat/hello-world").await.expect("memory"));

    // An issue in the removed repository is still emitted, marked disabled.
    let mut body = fixture_json("issues", "opened.json");
    body["repository"]["full_name"] = json!("octocat/Hello-World");
    let op = one_operation(&plugin, "issues", &serde_json::to_vec(&body).expect("json")).await;
    assert_eq!(op.repository, "octocat/hello-world");
    assert!(!op.repository_enabled);

    // Other repositories are untouched.
    let op = one_operation(&plugin, "issues", &fixture("issues", "opened.json")).await;
    assert!(op.repository_enabled);

    let created = fixture_json("installation", "created.json");
    let names: Vec<String> = created["repositories"]
        .as_array()
        .expect("repositories")
        .iter()
        .map(|r| r["full_name"].as_str().expect("full_name").to_lowercase())
        .collect();
    registry.disable(&names, 0).await.expect("memory");
    // The gateway's received_at (RECEIVED_AT) is later than 0: created wins.
    handle(&plugin, &webhook("installation", "d-2", &fixture("installation", "created.json"))).await.expect("ok");
    for name in &names {
        assert!(registry.is_enabled(name).await.expect("memory"), "{name}");
    }
    handle(&plugin, &webhook("installation", "d-3", &fixture("installation", "deleted.json"))).await.expect("ok");
    let deleted = fixture_json("installation", "deleted.json");
    for repo in deleted["repositories"].as_array().expect("repositories") {
        let name = repo["full_name"].as_str().expect("full_name");
        assert!(!registry.is_enabled(name).await.expect("memory"), "{name}");
    }
}

#[tokio::test]
async fn the_allow_list_marks_other_repositories_disabled() {
    let registry: Arc<dyn RepositoryRegistry> = Arc::new(MemoryRegistry::new());
    let plugin = Normalise::new(registry, RepositoryList::new(["acme/widgets"]));
    let op = one_operation(&plugin, "issues", &fixture("issues", "opened.json")).await;
    assert!(!op.repository_enabled);
    let mut body = fixture_json("issues", "opened.json");
    body["repository"]["full_name"] = json!("Acme/Widgets");
    let op = one_operation(&plugin, "issues", &serde_json::to_vec(&body).expect("json")).await;
    assert!(op.repository_enabled);
}

/// A `client.change` exactly as the gateway encodes it (serde_json::Value
/// through rmp-serde).
fn client_change(operation: &str, change: Value) -> hookbus_bus::Envelope {
    let payload = hookbus_gateway::api::ChangePayload { operation, received_at: RECEIVED_AT, change: &change };
    hookbus_bus::Envelope::with_payload("client.change", &payload).expect("encodes")
}

#[tokio::test]
async fn client_change_becomes_an_outbound_operation_timed_when_accepted() {
    let (plugin, _) = plugin();
    let change = json!({
        "repository": "Octo/Repo", "resource": "issue", "action": "update", "number": 7,
        "fields": { "state": "closed", "labels": ["wontfix", "bug"], "milestone": null },
        "actor": { "login": "octocat", "name": "The Octocat", "email": "octocat@example.com" }
    });
    let ops = handle(&plugin, &client_change("op-1", change)).await.expect("handled");
    assert_eq!(ops.len(), 1);
    let op = &ops[0];
    assert_eq!(op.operation, "op-1");
    assert_eq!(op.direction, Direction::Outbound);
    assert_eq!(op.key, "github:octo/repo:issue:7");
    assert_eq!(op.kind, ResourceKind::Issue);
    assert_eq!((op.action.as_str(), op.effect), ("update", Effect::Upsert));
    assert_eq!((op.updated_at, op.updated_at_source), (RECEIVED_AT, TimeSource::Accepted));
    assert_eq!(op.actor.email.as_deref(), Some("octocat@example.com"));
    assert_eq!(op.delivery, None);
    assert!(op.record.is_none());
    let changes = op.changes.as_ref().expect("changes");
    assert_eq!(changes["labels"], json!(["bug", "wontfix"]));
    assert_eq!(changes["state"], json!("closed"));
    assert_eq!(changes["milestone"], Value::Null);
    assert_eq!(op.content_hash, content_hash(changes));
}

#[tokio::test]
async fn client_creates_get_a_provisional_key_and_renamed_fields() {
    let (plugin, _) = plugin();
    let change = json!({ "repository": "o/r", "resource": "release", "action": "create",
        "fields": { "tag_name": "v1.0.0", "draft": true }, "actor": { "login": "octocat" } });
    let ops = handle(&plugin, &client_change("op-2", change)).await.expect("handled");
    assert_eq!(ops[0].key, "github:o/r:release:new-op-2");
    assert_eq!(ops[0].changes.as_ref().expect("changes")["tag"], json!("v1.0.0"));

    let change = json!({ "repository": "o/r", "resource": "comment", "action": "delete", "id": 99,
        "actor": { "login": "octocat" } });
    let ops = handle(&plugin, &client_change("op-3", change)).await.expect("handled");
    assert_eq!((ops[0].key.as_str(), ops[0].effect), ("github:o/r:comment:99", Effect::Remove));
}

#[tokio::test]
async fn a_malformed_client_change_dead_letters_naming_the_field() {
    let (plugin, _) = plugin();
    let change = json!({ "repository": "o/r", "resource": "issue", "action": "update", "number": 7,
        "fields": { "title": "x" }, "actor": { "name": "no login" } });
    let err = handle(&plugin, &client_change("op-4", change)).await.unwrap_err();
    assert_eq!(err.to_string(), "client.change: field `change.actor.login` is missing");
    let err = handle(&plugin, &client_change("op-5", json!("just text"))).await.unwrap_err();
    assert_eq!(err.to_string(), "client.change: field `change` must be an object");
}
