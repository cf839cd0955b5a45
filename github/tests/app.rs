//! Signing in as a GitHub App's installation, against a local fake of
//! GitHub's App endpoints (real HTTP): the installation's token is minted
//! with the App's JWT, used as the bearer of API calls and as the git
//! password, and minted again before it runs out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hookbus_github::{acting_login, client, git_password, App, Credentials};
use hookbus_testkit::github_app::{check_app_jwt, APP_ID, PRIVATE_KEY};
use serde_json::json;

const INSTALLATION: u64 = 77;

struct Fake {
    /// How long a minted token lives.
    lifetime: time::Duration,
    minted: AtomicUsize,
    /// The `Authorization` of each repository call.
    calls: Mutex<Vec<String>>,
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization").and_then(|v| v.to_str().ok())
}

fn refused(reason: String) -> Response {
    (StatusCode::UNAUTHORIZED, Json(json!({ "message": reason }))).into_response()
}

async fn access_tokens(State(fake): State<Arc<Fake>>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    if let Err(reason) = check_app_jwt(authorization(&headers)) {
        return refused(reason);
    }
    if id != INSTALLATION {
        return (StatusCode::NOT_FOUND, Json(json!({ "message": "Not Found" }))).into_response();
    }
    let n = fake.minted.fetch_add(1, Ordering::SeqCst) + 1;
    let expires_at = (time::OffsetDateTime::now_utc() + fake.lifetime)
        .replace_nanosecond(0)
        .expect("whole seconds")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    (
        StatusCode::CREATED,
        Json(json!({
            "token": format!("ghs_{n}"),
            "expires_at": expires_at,
            "permissions": { "issues": "write", "contents": "write" },
            "repository_selection": "all",
        })),
    )
        .into_response()
}

async fn repository(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    let given = authorization(&headers).unwrap_or_default().to_string();
    fake.calls.lock().expect("lock").push(given.clone());
    let minted = fake.minted.load(Ordering::SeqCst);
    match given.strip_prefix("Bearer ghs_").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) if (1..=minted).contains(&n) => Json(json!({ "full_name": "octo/repo" })).into_response(),
        _ => refused("Bad credentials".into()),
    }
}

async fn the_app(headers: HeaderMap) -> Response {
    match check_app_jwt(authorization(&headers)) {
        Ok(()) => Json(json!({ "id": APP_ID, "slug": "hookbus-test" })).into_response(),
        Err(reason) => refused(reason),
    }
}

async fn the_user(headers: HeaderMap) -> Response {
    match authorization(&headers) {
        Some("Bearer ghp_person") => Json(json!({ "login": "octocat" })).into_response(),
        _ => refused("Bad credentials".into()),
    }
}

async fn fake_github(lifetime: time::Duration) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake { lifetime, minted: AtomicUsize::new(0), calls: Mutex::new(Vec::new()) });
    let app = Router::new()
        .route("/app/installations/{id}/access_tokens", post(access_tokens))
        .route("/repos/octo/repo", get(repository))
        .route("/app", get(the_app))
        .route("/user", get(the_user))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, base)
}

fn installation() -> Credentials {
    Credentials::Installation { app: App::new(APP_ID, PRIVATE_KEY).expect("key"), installation: INSTALLATION }
}

#[tokio::test]
async fn an_installation_acts_with_the_token_its_app_minted() {
    let (fake, api) = fake_github(time::Duration::hours(1)).await;
    let credentials = installation();
    let github = client(&api, &credentials, Duration::from_secs(10)).expect("client");

    let answer = github._get("/repos/octo/repo").await.expect("call");
    assert_eq!(answer.status(), 200, "{:?}", fake.calls.lock().expect("lock"));
    let again = github._get("/repos/octo/repo").await.expect("call");
    assert_eq!(again.status(), 200);
    assert_eq!(*fake.calls.lock().expect("lock"), vec!["Bearer ghs_1", "Bearer ghs_1"], "one token, kept");
    assert_eq!(fake.minted.load(Ordering::SeqCst), 1);

    // git over https gets the same token as its password.
    assert_eq!(git_password(&github, &credentials).await.expect("password"), "ghs_1");
    assert_eq!(fake.minted.load(Ordering::SeqCst), 1);

    // What it creates shows the App's bot as author.
    let login = acting_login(&api, &credentials, &github).await.expect("login");
    assert_eq!(login.as_deref(), Some("hookbus-test[bot]"));
}

#[tokio::test]
async fn a_token_about_to_run_out_is_minted_again_before_use() {
    // Tokens that end within half a minute: each use needs a new one.
    let (fake, api) = fake_github(time::Duration::seconds(20)).await;
    let credentials = installation();
    let github = client(&api, &credentials, Duration::from_secs(10)).expect("client");
    assert_eq!(git_password(&github, &credentials).await.expect("password"), "ghs_1");
    assert_eq!(git_password(&github, &credentials).await.expect("password"), "ghs_2");
    assert_eq!(fake.minted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_token_acts_as_its_user() {
    let (fake, api) = fake_github(time::Duration::hours(1)).await;
    let credentials = Credentials::Token("ghp_person".into());
    let github = client(&api, &credentials, Duration::from_secs(10)).expect("client");
    assert_eq!(acting_login(&api, &credentials, &github).await.expect("login").as_deref(), Some("octocat"));
    assert_eq!(git_password(&github, &credentials).await.expect("password"), "ghp_person");
    let refused = Credentials::Token("ghp_nobody".into());
    let github = client(&api, &refused, Duration::from_secs(10)).expect("client");
    assert_eq!(acting_login(&api, &refused, &github).await.expect("an answer"), None, "GitHub will not say");
    assert_eq!(fake.minted.load(Ordering::SeqCst), 0, "no App involved");
}
