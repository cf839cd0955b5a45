//! Signing in as a GitHub App, against a local fake of GitHub's App
//! endpoints (real HTTP): an installation's token is minted with the App's
//! JWT, used as the bearer of API calls and as the git password, and
//! minted again before it runs out; signed in as the App alone, each call
//! goes through the installation on its repository's owner.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hookbus_github::{App, Credentials, Github, GithubError};
use hookbus_testkit::github_app::{check_app_jwt, APP_ID, PRIVATE_KEY};
use serde_json::json;

/// The App's installations, by owner; `octo`'s is 99 once the App was
/// installed there again.
fn installation_of(fake: &Fake, owner: &str) -> Option<u64> {
    match owner.to_ascii_lowercase().as_str() {
        "octo" if fake.reinstalled.load(Ordering::SeqCst) => Some(99),
        "octo" => Some(77),
        "acme" => Some(88),
        _ => None,
    }
}

struct Fake {
    /// How long a minted token lives.
    lifetime: time::Duration,
    minted: AtomicUsize,
    /// The `Authorization` of each repository call.
    calls: Mutex<Vec<String>>,
    /// Installation lookups asked for.
    lookups: AtomicUsize,
    /// The App was uninstalled from `octo` and installed again.
    reinstalled: std::sync::atomic::AtomicBool,
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
    let gone = id == 77 && fake.reinstalled.load(Ordering::SeqCst);
    if gone || ![77, 88, 99].contains(&id) {
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
            "token": format!("ghs_{id}_{n}"),
            "expires_at": expires_at,
            "permissions": { "issues": "write", "contents": "write" },
            "repository_selection": "all",
        })),
    )
        .into_response()
}

/// `GET /repos/{owner}/{repo}/installation` and `GET /orgs/{org}/installation`.
async fn installation(State(fake): State<Arc<Fake>>, Path(parts): Path<Vec<String>>, headers: HeaderMap) -> Response {
    if let Err(reason) = check_app_jwt(authorization(&headers)) {
        return refused(reason);
    }
    fake.lookups.fetch_add(1, Ordering::SeqCst);
    match parts.first().and_then(|owner| installation_of(&fake, owner)) {
        Some(id) => Json(json!({ "id": id, "app_id": APP_ID })).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "message": "Not Found" }))).into_response(),
    }
}

/// A repository answers only a token of its owner's installation.
async fn repository(
    State(fake): State<Arc<Fake>>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let given = authorization(&headers).unwrap_or_default().to_string();
    fake.calls.lock().expect("lock").push(given.clone());
    let expected = installation_of(&fake, &owner).map(|id| format!("Bearer ghs_{id}_"));
    match expected {
        Some(prefix) if given.starts_with(&prefix) => {
            Json(json!({ "full_name": format!("{owner}/{repo}") })).into_response()
        }
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
    let fake = Arc::new(Fake {
        lifetime,
        minted: AtomicUsize::new(0),
        calls: Mutex::new(Vec::new()),
        lookups: AtomicUsize::new(0),
        reinstalled: std::sync::atomic::AtomicBool::new(false),
    });
    let app = Router::new()
        .route("/app/installations/{id}/access_tokens", post(access_tokens))
        .route("/repos/{owner}/{repo}/installation", get(installation))
        .route("/orgs/{org}/installation", get(installation))
        .route("/repos/{owner}/{repo}", get(repository))
        .route("/app", get(the_app))
        .route("/user", get(the_user))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, base)
}

fn app() -> App {
    App::new(APP_ID, PRIVATE_KEY).expect("key")
}

async fn status_of(github: &Github, route: &str) -> u16 {
    let client = github.for_route(route).await.expect("client");
    client._get(route).await.expect("call").status().as_u16()
}

#[tokio::test]
async fn an_installation_acts_with_the_token_its_app_minted() {
    let (fake, api) = fake_github(time::Duration::hours(1)).await;
    let github = Github::new(&api, Credentials::Installation { app: app(), installation: 77 }, Duration::from_secs(10))
        .expect("client");

    assert_eq!(status_of(&github, "/repos/octo/repo").await, 200, "{:?}", fake.calls.lock().expect("lock"));
    assert_eq!(status_of(&github, "/repos/octo/repo").await, 200);
    assert_eq!(*fake.calls.lock().expect("lock"), vec!["Bearer ghs_77_1", "Bearer ghs_77_1"], "one token, kept");
    assert_eq!(fake.minted.load(Ordering::SeqCst), 1);
    assert_eq!(fake.lookups.load(Ordering::SeqCst), 0, "a fixed installation is not looked up");

    // git over https gets the same token as its password.
    assert_eq!(github.git_password("octo/records").await.expect("password"), "ghs_77_1");
    assert_eq!(fake.minted.load(Ordering::SeqCst), 1);

    // What it creates shows the App's bot as author.
    assert_eq!(github.acting_login().await.expect("login").as_deref(), Some("hookbus-test[bot]"));
}

#[tokio::test]
async fn a_token_about_to_run_out_is_minted_again_before_use() {
    // Tokens that end within half a minute: each use needs a new one.
    let (fake, api) = fake_github(time::Duration::seconds(20)).await;
    let github = Github::new(&api, Credentials::Installation { app: app(), installation: 77 }, Duration::from_secs(10))
        .expect("client");
    assert_eq!(github.git_password("octo/records").await.expect("password"), "ghs_77_1");
    assert_eq!(github.git_password("octo/records").await.expect("password"), "ghs_77_2");
    assert_eq!(fake.minted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn signed_in_as_the_app_each_owner_is_reached_through_its_own_installation() {
    let (fake, api) = fake_github(time::Duration::hours(1)).await;
    let github = Github::new(&api, Credentials::App(app()), Duration::from_secs(10)).expect("client");

    assert_eq!(status_of(&github, "/repos/octo/repo").await, 200);
    assert_eq!(status_of(&github, "/repos/octo/other?per_page=1").await, 200);
    assert_eq!(status_of(&github, "/repos/acme/tools").await, 200);
    assert_eq!(status_of(&github, "/repos/Octo/repo").await, 200, "owners are not case sensitive");
    let calls = fake.calls.lock().expect("lock").clone();
    assert!(calls[..2].iter().all(|c| c.starts_with("Bearer ghs_77_")), "{calls:?}");
    assert!(calls[2].starts_with("Bearer ghs_88_"), "{calls:?}");
    assert_eq!(fake.lookups.load(Ordering::SeqCst), 2, "one lookup per owner");
    assert_eq!(github.git_password("acme/records").await.expect("password"), calls[2].trim_start_matches("Bearer "));

    // An organisation's own routes go through its installation too.
    github.for_route("/orgs/acme/hooks/7/deliveries").await.expect("acme's installation");
    assert_eq!(fake.lookups.load(Ordering::SeqCst), 2, "acme's is known already");

    // Where the App is not installed, the error says so and is permanent.
    let err = github.for_route("/repos/nobody/repo").await.expect_err("not installed");
    assert!(matches!(&err, GithubError::NotInstalled { owner } if owner == "nobody"), "{err}");
    assert!(err.is_permanent() && err.to_string().contains("not installed on nobody"), "{err}");
    // A call about no repository has no installation to go through.
    assert!(github.for_route("/user").await.is_err());
    assert_eq!(github.acting_login().await.expect("login").as_deref(), Some("hookbus-test[bot]"));
}

#[tokio::test]
async fn a_token_acts_as_its_user() {
    let (fake, api) = fake_github(time::Duration::hours(1)).await;
    let github = Github::new(&api, Credentials::Token("ghp_person".into()), Duration::from_secs(10)).expect("client");
    assert_eq!(github.acting_login().await.expect("login").as_deref(), Some("octocat"));
    assert_eq!(github.git_password("octo/records").await.expect("password"), "ghp_person");
    let refused = Github::new(&api, Credentials::Token("ghp_nobody".into()), Duration::from_secs(10)).expect("client");
    assert_eq!(refused.acting_login().await.expect("an answer"), None, "GitHub will not say");
    assert_eq!(fake.minted.load(Ordering::SeqCst), 0, "no App involved");
}

#[tokio::test]
async fn an_app_installed_again_is_found_again_once_its_installation_is_rechecked() {
    let (fake, api) = fake_github(time::Duration::hours(1)).await;
    let github =
        Github::with_recheck(&api, Credentials::App(app()), Duration::from_secs(10), Duration::ZERO).expect("client");
    assert_eq!(status_of(&github, "/repos/octo/repo").await, 200);
    assert_eq!(status_of(&github, "/repos/octo/repo").await, 200);
    assert_eq!(fake.minted.load(Ordering::SeqCst), 1, "the same installation keeps its token");

    fake.reinstalled.store(true, Ordering::SeqCst);
    assert_eq!(status_of(&github, "/repos/octo/repo").await, 200, "{:?}", fake.calls.lock().expect("lock"));
    let calls = fake.calls.lock().expect("lock").clone();
    assert!(calls.last().is_some_and(|c| c.starts_with("Bearer ghs_99_")), "{calls:?}");
}

#[tokio::test]
async fn an_app_installed_again_is_found_again_as_soon_as_its_old_token_is_refused() {
    let (fake, api) = fake_github(time::Duration::hours(1)).await;
    // Installations trusted for an hour, as deployed.
    let github = Github::new(&api, Credentials::App(app()), Duration::from_secs(10)).expect("client");
    assert_eq!(status_of(&github, "/repos/octo/repo").await, 200);
    assert_eq!(status_of(&github, "/repos/acme/tools").await, 200);

    fake.reinstalled.store(true, Ordering::SeqCst);
    // Refused, octocrab asks for a new token of the installation it
    // knows, which is gone: the call fails.
    let client = github.for_route("/repos/octo/repo").await.expect("the installation as cached");
    let err = client._get("/repos/octo/repo").await.expect_err("no token for a deleted installation");
    assert!(err.to_string().contains("Not Found") || format!("{err:?}").contains("404"), "{err:?}");
    assert!(github.forget_installation("/repos/octo/repo?per_page=1").await, "octo's installation forgotten");
    assert!(!github.forget_installation("/repos/octo/repo").await, "nothing left to forget");
    assert_eq!(status_of(&github, "/repos/octo/repo").await, 200, "{:?}", fake.calls.lock().expect("lock"));
    let calls = fake.calls.lock().expect("lock").clone();
    assert!(calls.last().is_some_and(|c| c.starts_with("Bearer ghs_99_")), "{calls:?}");
    assert_eq!(fake.lookups.load(Ordering::SeqCst), 3, "looked up again once, and only octo's");
    assert!(!github.forget_installation("/user").await, "a call about no owner has no installation");
}

#[tokio::test]
async fn a_fixed_installation_whose_token_was_refused_mints_a_new_one() {
    let (fake, api) = fake_github(time::Duration::hours(1)).await;
    let github = Github::new(&api, Credentials::Installation { app: app(), installation: 88 }, Duration::from_secs(10))
        .expect("client");
    assert_eq!(github.git_password("acme/records").await.expect("password"), "ghs_88_1");
    assert_eq!(github.git_password("acme/records").await.expect("password"), "ghs_88_1", "kept while good");
    assert!(github.forget_installation("/repos/acme/records").await);
    assert_eq!(github.git_password("acme/records").await.expect("password"), "ghs_88_2", "minted anew");
    assert_eq!(status_of(&github, "/repos/acme/tools").await, 200);
    assert_eq!(fake.lookups.load(Ordering::SeqCst), 0, "a fixed installation is never looked up");

    // A personal token has nothing to forget: the same one would be refused.
    let token = Github::new(&api, Credentials::Token("ghp_person".into()), Duration::from_secs(10)).expect("client");
    assert!(!token.forget_installation("/repos/acme/records").await);
}
