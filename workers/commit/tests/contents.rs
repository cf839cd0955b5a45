//! Contents-API mode against a fake GitHub contents API (axum, in memory):
//! request bodies, the sha precondition, conflicts and refusals.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hookbus_bus::HandlerError;
use hookbus_commit::record_file::file_bytes;
use hookbus_commit::wire::Outcome;
use hookbus_commit::{CommitPlugin, ContentsTarget};
use serde_json::{json, Value};
use support::*;

const PATH: &str = "repos/octo/repo/issues/12.json";

/// An answer to give instead of writing: status, headers, GitHub's message.
type CannedAnswer = (u16, Vec<(&'static str, String)>, &'static str);

#[derive(Default)]
struct Fake {
    files: HashMap<String, (String, Vec<u8>)>,
    /// (method, path, body) of every write; GETs as ("GET", path, null).
    requests: Vec<(String, String, Value)>,
    next: u32,
    /// Change the file once, right after answering a GET.
    change_after_get: bool,
    /// Answer every request with this status.
    refuse: Option<u16>,
    /// Answer GETs of existing files as GitHub does for files over 1 MB.
    too_large: bool,
    /// Answers for the next writes, first first: status, headers, message.
    write_answers: std::collections::VecDeque<CannedAnswer>,
}

impl Fake {
    fn sha(&mut self) -> String {
        self.next += 1;
        format!("sha-{}", self.next)
    }
}

type Shared = Arc<Mutex<Fake>>;

async fn read(
    State(fake): State<Shared>,
    Path((_, _, path)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let mut f = fake.lock().unwrap();
    f.requests.push(("GET".into(), path.clone(), json!({"ref": query.get("ref")})));
    if let Some(status) = f.refuse {
        return (StatusCode::from_u16(status).unwrap(), Json(json!({"message": "Bad credentials"})));
    }
    let Some((sha, bytes)) = f.files.get(&path).cloned() else {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"})));
    };
    if f.too_large {
        return (
            StatusCode::OK,
            Json(json!({"type": "file", "encoding": "none", "sha": sha, "content": "", "size": 2_000_000})),
        );
    }
    if std::mem::take(&mut f.change_after_get) {
        let sha = f.sha();
        f.files.insert(path.clone(), (sha, b"{\"changed\": true}\n".to_vec()));
    }
    // GitHub wraps base64 at 60 columns.
    let encoded = STANDARD.encode(&bytes);
    let wrapped: Vec<String> = encoded.as_bytes().chunks(60).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    (StatusCode::OK, Json(json!({"type": "file", "encoding": "base64", "sha": sha, "content": wrapped.join("\n")})))
}

async fn write(
    State(fake): State<Shared>,
    method: axum::http::Method,
    Path((_, _, path)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut f = fake.lock().unwrap();
    f.requests.push((method.to_string(), path.clone(), body.clone()));
    if let Some(status) = f.refuse {
        return (StatusCode::from_u16(status).unwrap(), Json(json!({"message": "Bad credentials"}))).into_response();
    }
    if let Some((status, headers, message)) = f.write_answers.pop_front() {
        let mut response = (StatusCode::from_u16(status).unwrap(), Json(json!({"message": message}))).into_response();
        for (name, value) in headers {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        return response;
    }
    let current = f.files.get(&path).map(|(sha, _)| sha.clone());
    if current.as_deref() != body.get("sha").and_then(Value::as_str) {
        return (StatusCode::CONFLICT, Json(json!({"message": "is at another sha"}))).into_response();
    }
    let commit = format!("commit-{}", f.requests.len());
    if method == axum::http::Method::DELETE {
        f.files.remove(&path);
    } else {
        let bytes = STANDARD.decode(body["content"].as_str().unwrap()).unwrap();
        let sha = f.sha();
        f.files.insert(path, (sha, bytes));
    }
    (StatusCode::OK, Json(json!({"commit": {"sha": commit}}))).into_response()
}

async fn fake_github() -> (Shared, CommitPlugin) {
    let fake: Shared = Arc::default();
    let app = Router::new()
        .route("/repos/{owner}/{repo}/contents/{*path}", get(read).put(write).delete(write))
        .with_state(Arc::clone(&fake));
    let port = hookbus_testkit::free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let plugin = CommitPlugin::contents_api(ContentsTarget {
        api_url: format!("http://127.0.0.1:{port}"),
        credentials: hookbus_github::Credentials::Token("t0ken".into()),
        repository: "acme/records".into(),
        branch: "main".into(),
        committer_name: "hookbus".into(),
        committer_email: "hookbus@test.invalid".into(),
    })
    .unwrap();
    (fake, plugin)
}

fn writes(fake: &Shared) -> Vec<(String, Value)> {
    fake.lock().unwrap().requests.iter().filter(|r| r.0 != "GET").map(|r| (r.0.clone(), r.2.clone())).collect()
}

fn stored(fake: &Shared) -> Option<Vec<u8>> {
    fake.lock().unwrap().files.get(PATH).map(|f| f.1.clone())
}

#[tokio::test]
async fn a_new_record_is_put_with_the_actor_as_author_and_the_trailers() {
    let (fake, plugin) = fake_github().await;
    let op = issue_op("gh-1", 12, "Crash on start");

    let emitted = handle(&plugin, &op).await.expect("handled");

    let writes = writes(&fake);
    assert_eq!(writes.len(), 1);
    let (method, body) = &writes[0];
    assert_eq!(method, "PUT");
    let expected = file_bytes(&op["record"]);
    assert_eq!(STANDARD.decode(body["content"].as_str().unwrap()).unwrap(), expected);
    assert_eq!(body["author"], json!({"name": "octocat", "email": "583231+octocat@users.noreply.github.com"}));
    assert_eq!(body["committer"], json!({"name": "hookbus", "email": "hookbus@test.invalid"}));
    assert_eq!(body["branch"], "main");
    assert!(body.get("sha").is_none(), "a new file has no precondition: {body}");
    assert_eq!(
        body["message"],
        "issues.edited octo/repo#12: Crash on start\n\nHookbus-Operation: gh-1\nHookbus-Delivery: delivery-gh-1\n"
    );
    assert_eq!(fake.lock().unwrap().requests[0].2["ref"], "main");
    let outcome = &emitted.outcomes[0];
    assert_eq!(outcome.outcome, Outcome::Completed);
    assert_eq!(outcome.commit.as_deref(), Some("commit-2"));
    assert_eq!(outcome.path.as_deref(), Some(PATH));
    assert_eq!(emitted.synced[0].commit.as_deref(), Some("commit-2"));
    assert_eq!(emitted.synced[0].record.as_ref(), Some(&op["record"]));
}

#[tokio::test]
async fn an_update_sends_the_current_blob_sha_and_unchanged_bytes_send_nothing() {
    let (fake, plugin) = fake_github().await;
    handle(&plugin, &issue_op("gh-1", 12, "One")).await.expect("created");
    let sha = fake.lock().unwrap().files[PATH].0.clone();

    let mut op = issue_op("gh-2", 12, "Two");
    op["actor"] = json!({"login": "mona", "id": 7, "name": "Mona Lisa", "email": "mona@example.com"});
    handle(&plugin, &op).await.expect("updated");
    let (method, body) = writes(&fake)[1].clone();
    assert_eq!((method.as_str(), body["sha"].as_str()), ("PUT", Some(sha.as_str())));
    assert_eq!(body["author"], json!({"name": "Mona Lisa", "email": "mona@example.com"}));
    assert_eq!(stored(&fake), Some(file_bytes(&op["record"])));

    let redelivered = handle(&plugin, &op).await.expect("redelivered");
    assert_eq!(writes(&fake).len(), 2, "the same bytes again are not written");
    assert_eq!(redelivered.outcomes[0].outcome, Outcome::Completed);
    assert_eq!(redelivered.outcomes[0].commit, None);
}

#[tokio::test]
async fn a_removal_deletes_with_the_sha_and_a_missing_file_is_a_no_op() {
    let (fake, plugin) = fake_github().await;
    handle(&plugin, &issue_op("gh-1", 12, "One")).await.expect("created");
    let sha = fake.lock().unwrap().files[PATH].0.clone();
    let mut op = issue_op("gh-2", 12, "One");
    op["action"] = json!("deleted");
    op["effect"] = json!("remove");

    let emitted = handle(&plugin, &op).await.expect("deleted");
    let (method, body) = writes(&fake)[1].clone();
    assert_eq!((method.as_str(), body["sha"].as_str()), ("DELETE", Some(sha.as_str())));
    assert!(body["message"].as_str().unwrap().contains("Hookbus-Operation: gh-2\n"), "{body}");
    assert_eq!(stored(&fake), None);
    assert_eq!(emitted.outcomes[0].commit.as_deref(), Some("commit-4"));

    handle(&plugin, &op).await.expect("redelivered");
    assert_eq!(writes(&fake).len(), 2, "nothing to delete the second time");
}

#[tokio::test]
async fn a_file_changed_between_read_and_write_is_read_again_and_written() {
    let (fake, plugin) = fake_github().await;
    handle(&plugin, &issue_op("gh-1", 12, "One")).await.expect("created");
    fake.lock().unwrap().change_after_get = true;
    let op = issue_op("gh-2", 12, "Two");

    let emitted = handle(&plugin, &op).await.expect("retried and written");

    let writes = writes(&fake);
    assert_eq!(writes.len(), 3, "create, the conflicting PUT, the retry");
    assert_ne!(writes[1].1["sha"], writes[2].1["sha"], "the retry carries the new sha");
    assert_eq!(stored(&fake), Some(file_bytes(&op["record"])));
    assert!(emitted.outcomes[0].commit.is_some());
}

#[tokio::test]
async fn a_refused_token_is_permanent_and_names_the_setting() {
    let (fake, plugin) = fake_github().await;
    fake.lock().unwrap().refuse = Some(401);

    let err = handle(&plugin, &issue_op("gh-1", 12, "One")).await.err().expect("refused");

    let HandlerError::Permanent(reason) = err else { panic!("permanent, not {err:?}") };
    assert!(reason.contains("HOOKBUS_GITHUB__TOKEN"), "{reason}");
    assert!(writes(&fake).is_empty());
}

#[tokio::test]
async fn a_rate_limited_write_is_deferred_until_the_reset_and_then_written() {
    let (fake, plugin) = fake_github().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let exhausted = vec![("x-ratelimit-remaining", "0".to_string()), ("x-ratelimit-reset", (now + 30).to_string())];
    fake.lock().unwrap().write_answers.extend([
        (403, exhausted, "API rate limit exceeded"),
        (429, vec![("retry-after", "7".to_string())], "You have exceeded a secondary rate limit"),
    ]);
    let op = issue_op("gh-1", 12, "One");

    // The reset is 30 s ahead when asked; a slow machine answers a little later.
    for expected in [25..=31, 7..=7] {
        let err = handle(&plugin, &op).await.err().expect("deferred");
        let HandlerError::Defer(wait, reason) = err else { panic!("deferred, not {err:?}") };
        assert!(expected.contains(&wait.as_secs()), "waits {wait:?}, expected {expected:?} s");
        assert!(reason.contains("rate limit"), "{reason}");
        assert_eq!(stored(&fake), None, "nothing written while limited");
    }
    let emitted = handle(&plugin, &op).await.expect("written once the limit is over");
    assert_eq!(stored(&fake), Some(file_bytes(&op["record"])));
    assert!(emitted.outcomes[0].commit.is_some());
}

#[tokio::test]
async fn a_422_for_a_stale_sha_is_read_again_and_any_other_422_is_permanent_with_githubs_reason() {
    let (fake, plugin) = fake_github().await;
    handle(&plugin, &issue_op("gh-1", 12, "One")).await.expect("created");
    fake.lock().unwrap().write_answers.push_back((422, vec![], "sha does not match"));
    let op = issue_op("gh-2", 12, "Two");
    handle(&plugin, &op).await.expect("read again and written");
    assert_eq!(writes(&fake).len(), 3, "create, the refused PUT, the retry");
    assert_eq!(stored(&fake), Some(file_bytes(&op["record"])));

    fake.lock().unwrap().write_answers.push_back((422, vec![], "Invalid request. \"committer\" is invalid"));
    let err = handle(&plugin, &issue_op("gh-3", 12, "Three")).await.err().expect("refused");
    let HandlerError::Permanent(reason) = err else { panic!("permanent, not {err:?}") };
    assert!(reason.contains("422") && reason.contains("\"committer\" is invalid"), "{reason}");
    assert_eq!(stored(&fake), Some(file_bytes(&op["record"])), "the file is as the last good write left it");
}

#[tokio::test]
async fn a_file_too_large_for_the_contents_api_is_refused_not_overwritten() {
    let (fake, plugin) = fake_github().await;
    handle(&plugin, &issue_op("gh-1", 12, "One")).await.expect("created");
    fake.lock().unwrap().too_large = true;

    let err = handle(&plugin, &issue_op("gh-2", 12, "Two")).await.err().expect("refused");

    let HandlerError::Permanent(reason) = err else { panic!("permanent, not {err:?}") };
    assert!(reason.contains("over 1 MB"), "{reason}");
    assert_eq!(writes(&fake).len(), 1, "nothing written over it");
}

#[test]
fn contents_api_mode_without_a_token_is_a_configuration_error_naming_it() {
    let vars = [("HOOKBUS_GIT__MODE", "contents_api"), ("HOOKBUS_GIT__CONTENTS_REPOSITORY", "acme/records")];
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let settings = hookbus_config::Settings::load_from(&vars, None).expect("loads");
    let err = CommitPlugin::from_settings(&settings).err().expect("no token");
    assert!(err.is_permanent());
    assert!(err.to_string().contains("HOOKBUS_GITHUB__TOKEN"), "{err}");
}

#[tokio::test]
async fn an_apps_installation_stands_in_for_the_token_and_its_key_must_sign() {
    use hookbus_testkit::github_app::{APP_ID, PRIVATE_KEY, PUBLIC_KEY};
    let load = |key: &str| {
        let vars = [
            ("HOOKBUS_GIT__MODE", "contents_api"),
            ("HOOKBUS_GIT__CONTENTS_REPOSITORY", "acme/records"),
            ("HOOKBUS_GITHUB__APP_ID", &APP_ID.to_string()),
            ("HOOKBUS_GITHUB__APP_PRIVATE_KEY", key),
            ("HOOKBUS_GITHUB__INSTALLATION_ID", "31"),
        ];
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        hookbus_config::Settings::load_from(&vars, None).expect("loads")
    };
    CommitPlugin::from_settings(&load(PRIVATE_KEY)).expect("contents-API mode as the App's installation");
    let err = CommitPlugin::from_settings(&load(PUBLIC_KEY)).err().expect("a public key cannot sign");
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("HOOKBUS_GITHUB__APP_PRIVATE_KEY") && !err.to_string().contains("MII"), "{err}");
}
