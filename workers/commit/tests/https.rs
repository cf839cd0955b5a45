//! Pushing over HTTP the way GitHub takes it: a smart-HTTP remote (`git
//! http-backend` behind a local server) that answers 401 until it is given
//! `x-access-token` and a token it accepts, with a fake of GitHub's App
//! endpoints beside it to mint installation tokens. Real git on both sides;
//! plain HTTP on loopback stands in for GitHub's TLS, which the commit
//! worker leaves to libgit2.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hookbus_bus::HandlerError;
use hookbus_commit::{CommitPlugin, GitTarget, PushBatching, RemoteLogin};
use hookbus_github::{App, Credentials};
use hookbus_testkit::github_app::{check_app_jwt, APP_ID, PRIVATE_KEY};
use serde_json::json;
use support::*;

const INSTALLATION: u64 = 5;

struct Remote {
    /// Where `octo/records.git` (bare) lives.
    root: PathBuf,
    /// Passwords the remote takes for `x-access-token`.
    accepted: Mutex<HashSet<String>>,
    /// The password of every authenticated request, in order.
    used: Mutex<Vec<String>>,
    /// Installation tokens minted so far.
    minted: Mutex<usize>,
    /// The App's installation on `octo` now.
    installed: std::sync::atomic::AtomicU64,
}

/// `git http-backend` for one request, as CGI.
async fn git_http(
    State(remote): State<Arc<Remote>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let password = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.strip_prefix("x-access-token:").map(str::to_owned));
    match password {
        Some(password) if remote.accepted.lock().expect("lock").contains(&password) => {
            remote.used.lock().expect("lock").push(password);
        }
        _ => {
            return (StatusCode::UNAUTHORIZED, [("www-authenticate", "Basic realm=\"GitHub\"")], "").into_response();
        }
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut cgi = tokio::process::Command::new("git");
    cgi.arg("http-backend")
        .env("GIT_PROJECT_ROOT", &remote.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cgi.spawn().expect("git http-backend");
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &body).await.expect("request body");
    drop(stdin);
    let output = child.wait_with_output().await.expect("http-backend output");
    let split = output.stdout.windows(4).position(|w| w == b"\r\n\r\n").map(|at| (at, 4));
    let split = split.or_else(|| output.stdout.windows(2).position(|w| w == b"\n\n").map(|at| (at, 2)));
    let Some((at, gap)) = split else { return (StatusCode::BAD_GATEWAY, "no CGI headers").into_response() };
    let mut response = Response::builder();
    for line in String::from_utf8_lossy(&output.stdout[..at]).lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        response = match name.trim().eq_ignore_ascii_case("status") {
            true => response.status(value.trim().split(' ').next().and_then(|s| s.parse::<u16>().ok()).unwrap_or(500)),
            false => response.header(name.trim(), value.trim()),
        };
    }
    response.body(axum::body::Body::from(output.stdout[at + gap..].to_vec())).expect("response")
}

/// GitHub minting an installation token for the App's JWT: each lives 20
/// seconds, so every use asks for a new one.
async fn mint(State(remote): State<Arc<Remote>>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    let installed = remote.installed.load(std::sync::atomic::Ordering::SeqCst);
    if let Err(reason) = check_app_jwt(authorization).and_then(|()| match id == installed {
        true => Ok(()),
        false => Err(format!("no installation {id}")),
    }) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "message": reason }))).into_response();
    }
    let n = {
        let mut minted = remote.minted.lock().expect("lock");
        *minted += 1;
        *minted
    };
    let token = format!("ghs_{n}");
    remote.accepted.lock().expect("lock").insert(token.clone());
    let expires_at = (std::time::SystemTime::now() + Duration::from_secs(20))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let expires_at = time::OffsetDateTime::from_unix_timestamp(expires_at as i64)
        .expect("a time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let answer = json!({ "token": token, "expires_at": expires_at, "permissions": { "contents": "write" } });
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// The App's installation on `octo`, as `GET /repos/octo/{repo}/installation` tells the App.
async fn installation(
    State(remote): State<Arc<Remote>>,
    Path((owner, _repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    if let Err(reason) = check_app_jwt(authorization) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "message": reason }))).into_response();
    }
    match owner.as_str() {
        "octo" => Json(json!({ "id": remote.installed.load(std::sync::atomic::Ordering::SeqCst) })).into_response(),
        _ => (StatusCode::NOT_FOUND, Json(json!({ "message": "Not Found" }))).into_response(),
    }
}

/// The remote (an empty `octo/records.git`) and GitHub's API, on one
/// loopback port.
async fn serve(accepted: &[&str]) -> (Arc<Remote>, tempfile::TempDir, String) {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(root.path().join("octo/records.git")).expect("remote dir");
    git(&root.path().join("octo/records.git"), &["init", "--bare", "--quiet", "--initial-branch=main"]);
    let remote = Arc::new(Remote {
        root: root.path().to_path_buf(),
        accepted: Mutex::new(accepted.iter().map(|s| s.to_string()).collect()),
        used: Mutex::new(Vec::new()),
        minted: Mutex::new(0),
        installed: std::sync::atomic::AtomicU64::new(INSTALLATION),
    });
    let app = Router::new()
        .route("/app/installations/{id}/access_tokens", post(mint))
        .route("/repos/{owner}/{repo}/installation", axum::routing::get(installation))
        .fallback(git_http)
        .with_state(remote.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (remote, root, base)
}

fn plugin_for(base: &str, login: RemoteLogin, workdir: &tempfile::TempDir) -> CommitPlugin {
    let target = GitTarget {
        remote: format!("{base}/octo/records.git"),
        branch: "main".into(),
        workdir: workdir.path().to_path_buf(),
        login,
        committer_name: "hookbus".into(),
        committer_email: "hookbus@test.invalid".into(),
    };
    CommitPlugin::new(target, PushBatching { window: Duration::from_millis(5), max: 64 }).expect("plugin")
}

fn pushed_titles(root: &tempfile::TempDir) -> Vec<String> {
    git_out(&root.path().join("octo/records.git"), &["log", "--format=%s", "main"]).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_the_password_of_an_https_remote_and_a_refused_one_is_permanent_naming_it() {
    let (remote, root, base) = serve(&["t0ken"]).await;
    let dir = workdir();
    let plugin = plugin_for(&base, RemoteLogin::Token("t0ken".into()), &dir);
    let emitted = handle(&plugin, &issue_op("gh-1", 12, "One")).await.expect("committed and pushed");
    assert!(emitted.outcomes[0].commit.is_some());
    assert_eq!(pushed_titles(&root).len(), 1, "on the remote");
    let used = remote.used.lock().expect("lock").clone();
    assert!(!used.is_empty() && used.iter().all(|p| p == "t0ken"), "{used:?}");

    let other_dir = workdir();
    let refused = plugin_for(&base, RemoteLogin::Token("ghp_revoked".into()), &other_dir);
    let err = handle(&refused, &issue_op("gh-2", 13, "Two")).await.err().expect("refused");
    let HandlerError::Permanent(reason) = err else { panic!("permanent, not {err:?}") };
    assert!(reason.contains("authentication failed") && reason.contains("HOOKBUS_GITHUB__TOKEN"), "{reason}");
    assert!(!reason.contains("ghp_revoked"), "the token is not shown: {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_an_apps_installation_each_contact_uses_a_token_it_minted_and_a_fresh_one_once_it_runs_out() {
    let credentials =
        Credentials::Installation { app: App::new(APP_ID, PRIVATE_KEY).expect("key"), installation: INSTALLATION };
    pushes_with_fresh_installation_tokens(credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_the_app_alone_the_remote_is_reached_through_the_installation_on_its_owner() {
    pushes_with_fresh_installation_tokens(Credentials::App(App::new(APP_ID, PRIVATE_KEY).expect("key"))).await;
}

async fn pushes_with_fresh_installation_tokens(credentials: Credentials) {
    let (remote, root, base) = serve(&[]).await;
    let login =
        RemoteLogin::from_credentials(&base, Some(credentials), &format!("{base}/octo/records.git")).expect("login");
    let workdir = workdir();
    let plugin = plugin_for(&base, login, &workdir);
    handle(&plugin, &issue_op("gh-1", 12, "One")).await.expect("first");
    handle(&plugin, &issue_op("gh-2", 13, "Two")).await.expect("second");
    assert_eq!(pushed_titles(&root).len(), 2, "both on the remote");
    // Tokens that end within half a minute are minted again before each
    // contact: fetch and push of the first, push of the second.
    let used = remote.used.lock().expect("lock").clone();
    let minted = *remote.minted.lock().expect("lock");
    assert!(minted >= 3, "minted {minted}, used {used:?}");
    let distinct: HashSet<&String> = used.iter().collect();
    assert!(distinct.len() >= 3 && used.iter().all(|p| p.starts_with("ghs_")), "{used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_the_app_alone_an_app_installed_again_pushes_through_its_new_installation_on_the_next_try() {
    let (remote, root, base) = serve(&[]).await;
    let credentials = Credentials::App(App::new(APP_ID, PRIVATE_KEY).expect("key"));
    let login =
        RemoteLogin::from_credentials(&base, Some(credentials), &format!("{base}/octo/records.git")).expect("login");
    let workdir = workdir();
    let plugin = plugin_for(&base, login, &workdir);
    handle(&plugin, &issue_op("gh-1", 12, "One")).await.expect("first");

    // Uninstalled and installed again: the old installation's tokens are
    // refused and it mints no more.
    remote.installed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    remote.accepted.lock().expect("lock").clear();
    let err = handle(&plugin, &issue_op("gh-2", 13, "Two")).await.err().expect("the old installation is gone");
    let HandlerError::Transient(reason) = err else { panic!("to be tried again, not {err:?}") };
    assert!(reason.contains("next try starts with a new token"), "{reason}");
    handle(&plugin, &issue_op("gh-2", 13, "Two")).await.expect("the retry, through the new installation");
    assert_eq!(pushed_titles(&root).len(), 2, "both on the remote");
}
