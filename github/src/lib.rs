//! hookbus-github: what every worker that talks to the GitHub API shares —
//! reconcile (same-second tie fetches), commit-to-git (contents-API mode)
//! and notify (write-back).
//!
//! - [`Credentials`] and [`Github`]: who the workers act as — a token, a
//!   GitHub App's installation, or the App through whichever installation
//!   holds a repository — and the octocrab clients on `github.api_url`
//!   signed in with them, with bounded timeouts;
//! - [`App`] and [`app_client`]: signed in as the GitHub App itself (a JWT
//!   made from its private key for each request), for what only the App
//!   may call, such as its own webhook's deliveries;
//! - [`rate_limit`]: how long a 403/429 answer asks us to wait, so a worker
//!   defers the message instead of spending its attempts;
//! - [`error_message`]: what GitHub said went wrong, for a dead letter's
//!   reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hookbus_config::{ConfigError, GithubSettings};

/// The longest a rate limit may defer one message.
pub const MAX_DEFER: Duration = Duration::from_secs(3_600);

/// Why a GitHub client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("github.api_url (HOOKBUS_GITHUB__API_URL) {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("GitHub client: {0}")]
    Client(String),
    /// Signed in as the App, which has no installation on `owner`.
    #[error("the GitHub App is not installed on {owner}: install it there, or set HOOKBUS_GITHUB__INSTALLATION_ID")]
    NotInstalled { owner: String },
}

impl GithubError {
    /// Whether trying again cannot help: the App is not installed where a
    /// call goes, or the client could not be made at all.
    pub fn is_permanent(&self) -> bool {
        matches!(self, GithubError::NotInstalled { .. } | GithubError::BadUrl { .. })
    }
}

/// A GitHub App's id and private key: what signs the JWTs that let a
/// client act as the App itself.
#[derive(Clone)]
pub struct App {
    id: u64,
    key: octocrab::EncodingKey,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("id", &self.id).field("key", &"***").finish()
    }
}

impl App {
    /// From the App's id and its private key as GitHub hands it out (PEM,
    /// PKCS#1 or PKCS#8). A key pasted where newlines cannot go, with `\n`
    /// in their place, is read too. Signs one token at once, so a key that
    /// cannot sign is refused here and not at the first call. The error says
    /// what is wrong without showing the key.
    pub fn new(id: u64, private_key_pem: &str) -> Result<Self, String> {
        if id == 0 {
            return Err("the App id is not set".into());
        }
        let pem = match private_key_pem.contains('\n') {
            true => private_key_pem.trim().to_string(),
            false => private_key_pem.trim().replace("\\n", "\n"),
        };
        let key = octocrab::EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|err| format!("is not an RSA private key in PEM form ({err})"))?;
        octocrab::auth::create_jwt(octocrab::models::AppId(id), &key)
            .map_err(|err| format!("cannot sign a token with this key ({err})"))?;
        Ok(App { id, key })
    }

    /// The App the settings name (`github.app_id`, `github.app_private_key`);
    /// a key that cannot sign is bad configuration, naming its variable.
    pub fn from_settings(github: &GithubSettings) -> Result<Self, ConfigError> {
        App::new(github.app_id, github.app_private_key.expose())
            .map_err(|reason| ConfigError::invalid("github.app_private_key (HOOKBUS_GITHUB__APP_PRIVATE_KEY)", reason))
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

/// An octocrab client for `api_url` signed in as `app`: each request
/// carries a fresh JWT (valid for 9 minutes, issued a minute back to allow
/// for clock drift, as GitHub asks).
pub fn app_client(api_url: &str, app: &App, timeout: Duration) -> Result<octocrab::Octocrab, GithubError> {
    builder(api_url, timeout)?
        .app(octocrab::models::AppId(app.id), app.key.clone())
        .build()
        .map_err(|e| GithubError::Client(e.to_string()))
}

/// Who the workers act as on the GitHub API.
#[derive(Clone)]
pub enum Credentials {
    /// `github.token`: a personal or fine-grained token, or any token
    /// GitHub takes as a bearer.
    Token(String),
    /// `github.installation_id`: an installation of the App, whose tokens
    /// (an hour each) are minted from the App's key when first needed and
    /// again before they run out.
    Installation { app: App, installation: u64 },
    /// The App's id and key alone: each call goes through whichever of the
    /// App's installations holds the repository or organisation it is
    /// about (an App installed on several organisations has one each).
    App(App),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(***)"),
            Credentials::Installation { app, installation } => {
                f.debug_struct("Installation").field("app", app).field("installation", installation).finish()
            }
            Credentials::App(app) => f.debug_tuple("App").field(app).finish(),
        }
    }
}

impl Credentials {
    /// The ones the settings give: the token; or the App's installation;
    /// or the App, through its installations; `None` with none of them
    /// (configuration has made sure a token and an installation are not
    /// both set). An App key that cannot sign is bad configuration, naming
    /// its variable.
    pub fn from_settings(github: &GithubSettings) -> Result<Option<Self>, ConfigError> {
        let token = github.token.expose().trim();
        if !token.is_empty() {
            return Ok(Some(Credentials::Token(token.to_string())));
        }
        if github.installation_id != 0 {
            let app = App::from_settings(github)?;
            return Ok(Some(Credentials::Installation { app, installation: github.installation_id }));
        }
        if github.app_id != 0 && !github.app_private_key.is_empty() {
            return Ok(Some(Credentials::App(App::from_settings(github)?)));
        }
        Ok(None)
    }

    /// The settings to look at when GitHub refuses them.
    pub fn settings(&self) -> &'static str {
        match self {
            Credentials::Token(_) => "HOOKBUS_GITHUB__TOKEN",
            Credentials::Installation { .. } => {
                "the App's installation (HOOKBUS_GITHUB__INSTALLATION_ID, HOOKBUS_GITHUB__APP_ID, \
                 HOOKBUS_GITHUB__APP_PRIVATE_KEY)"
            }
            Credentials::App(_) => {
                "the GitHub App (HOOKBUS_GITHUB__APP_ID, HOOKBUS_GITHUB__APP_PRIVATE_KEY) and its installation on \
                 the repository"
            }
        }
    }
}

/// The GitHub API as `credentials` reach it, on `github.api_url` (GitHub,
/// GitHub Enterprise, or a local fake in tests), every request bounded by
/// the timeout. Cheap to clone.
#[derive(Clone)]
pub struct Github {
    inner: std::sync::Arc<GithubInner>,
}

struct GithubInner {
    credentials: Credentials,
    /// The client of a token or of a fixed installation. Shared, not
    /// cloned: a clone of an installation's client starts with a copy of
    /// its token cache, and would mint tokens of its own. A fixed
    /// installation's is made anew by [`Github::forget_installation`].
    fixed: std::sync::Mutex<Option<std::sync::Arc<octocrab::Octocrab>>>,
    /// Signed in as the App itself (a JWT per request).
    app: Option<octocrab::Octocrab>,
    /// With [`Credentials::App`]: the installation of each owner (account
    /// or organisation, lowercase) as last looked up: when, its id, its
    /// client.
    owners: tokio::sync::Mutex<std::collections::HashMap<String, Found>>,
    /// How long a found installation is trusted before it is looked up
    /// again (an App uninstalled and installed again has a new one).
    recheck: Duration,
}

/// An owner's installation, as looked up.
struct Found {
    at: std::time::Instant,
    id: u64,
    client: std::sync::Arc<octocrab::Octocrab>,
}

/// How long an owner's installation, once found, is used without asking
/// GitHub again.
pub const INSTALLATION_RECHECK: Duration = Duration::from_secs(3_600);

/// Who a call is about, by its route.
enum Owner<'a> {
    Repository(&'a str, &'a str),
    Organisation(&'a str),
}

fn owner_of(route: &str) -> Option<Owner<'_>> {
    let path = route.split('?').next().unwrap_or(route).trim_start_matches('/');
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("repos"), Some(owner), Some(repo)) if !owner.is_empty() && !repo.is_empty() => {
            Some(Owner::Repository(owner, repo))
        }
        (Some("orgs"), Some(org), _) if !org.is_empty() => Some(Owner::Organisation(org)),
        _ => None,
    }
}

impl Github {
    /// Builds the clients (octocrab needs a Tokio runtime for it).
    pub fn new(api_url: &str, credentials: Credentials, timeout: Duration) -> Result<Self, GithubError> {
        Self::with_recheck(api_url, credentials, timeout, INSTALLATION_RECHECK)
    }

    /// The same, trusting a found installation for `recheck` instead of
    /// [`INSTALLATION_RECHECK`].
    pub fn with_recheck(
        api_url: &str,
        credentials: Credentials,
        timeout: Duration,
        recheck: Duration,
    ) -> Result<Self, GithubError> {
        let (fixed, app) = match &credentials {
            Credentials::Token(token) => {
                let client = builder(api_url, timeout)?
                    .personal_token(token.clone())
                    .build()
                    .map_err(|e| GithubError::Client(e.to_string()))?;
                (Some(std::sync::Arc::new(client)), None)
            }
            Credentials::Installation { app, installation } => {
                let app = app_client(api_url, app, timeout)?;
                let installation = app
                    .installation(octocrab::models::InstallationId(*installation))
                    .map_err(|e| GithubError::Client(e.to_string()))?;
                (Some(std::sync::Arc::new(installation)), Some(app))
            }
            Credentials::App(app) => (None, Some(app_client(api_url, app, timeout)?)),
        };
        let owners = tokio::sync::Mutex::new(std::collections::HashMap::new());
        let fixed = std::sync::Mutex::new(fixed);
        Ok(Github { inner: std::sync::Arc::new(GithubInner { credentials, fixed, app, owners, recheck }) })
    }

    pub fn credentials(&self) -> &Credentials {
        &self.inner.credentials
    }

    /// The client for a call to `route` (`/repos/<owner>/<repo>/…`,
    /// `/orgs/<org>/…`): the token's or the fixed installation's; with
    /// [`Credentials::App`], the installation that holds the repository or
    /// organisation (`GET /repos/<owner>/<repo>/installation` or `GET
    /// /orgs/<org>/installation` as the App, once per owner).
    pub async fn for_route(&self, route: &str) -> Result<std::sync::Arc<octocrab::Octocrab>, GithubError> {
        if let Some(fixed) = self.fixed() {
            return Ok(fixed);
        }
        let Some(app) = &self.inner.app else { return Err(GithubError::Client("no GitHub credentials".into())) };
        let (lookup, owner) = match owner_of(route) {
            Some(Owner::Repository(owner, repo)) => (format!("/repos/{owner}/{repo}/installation"), owner),
            Some(Owner::Organisation(org)) => (format!("/orgs/{org}/installation"), org),
            None => {
                return Err(GithubError::Client(format!(
                    "{route}: signed in as the App, a call must be about a repository or an organisation"
                )))
            }
        };
        let key = owner.to_ascii_lowercase();
        let mut owners = self.inner.owners.lock().await;
        if let Some(found) = owners.get(&key).filter(|found| found.at.elapsed() < self.inner.recheck) {
            return Ok(found.client.clone());
        }
        let failed = |reason: String| GithubError::Client(format!("GET {lookup}: {reason}"));
        let response = app._get(lookup.as_str()).await.map_err(|e| failed(e.to_string()))?;
        let status = response.status().as_u16();
        let text = app.body_to_string(response).await.map_err(|e| failed(e.to_string()))?;
        if status == 404 {
            return Err(GithubError::NotInstalled { owner: owner.to_string() });
        }
        if !(200..300).contains(&status) {
            return Err(failed(format!("{status} {}", error_message(&text))));
        }
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let id = answer["id"].as_u64().ok_or_else(|| failed("no installation id in the answer".into()))?;
        // The same installation keeps its client, and with it its token.
        let client = match owners.get(&key).filter(|found| found.id == id) {
            Some(found) => found.client.clone(),
            None => std::sync::Arc::new(
                app.installation(octocrab::models::InstallationId(id))
                    .map_err(|e| GithubError::Client(e.to_string()))?,
            ),
        };
        owners.insert(key, Found { at: std::time::Instant::now(), id, client: client.clone() });
        Ok(client)
    }

    fn fixed(&self) -> Option<std::sync::Arc<octocrab::Octocrab>> {
        self.inner.fixed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// After GitHub refused the installation token a call to `route` went
    /// with (401), or no token could be minted for it: drops that
    /// installation's client, and with it its token, so that the next call
    /// starts afresh. An App uninstalled and installed again has a new
    /// installation, and the old one's tokens stop working at once; without
    /// this, calls would fail until the token ran out or the installation
    /// was rechecked ([`INSTALLATION_RECHECK`]).
    ///
    /// Signed in as the App, the owner's installation is looked up again; a
    /// fixed installation gets a new client that mints a new token. Returns
    /// whether anything was forgotten, that is whether a try with the same
    /// settings may now succeed; a personal token has nothing to forget.
    pub async fn forget_installation(&self, route: &str) -> bool {
        match &self.inner.credentials {
            Credentials::Token(_) => false,
            Credentials::Installation { installation, .. } => {
                let Some(app) = &self.inner.app else { return false };
                let Ok(client) = app.installation(octocrab::models::InstallationId(*installation)) else {
                    return false;
                };
                *self.inner.fixed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(std::sync::Arc::new(client));
                tracing::info!(installation, "GitHub refused the installation's token; minting a new one");
                true
            }
            Credentials::App(_) => {
                let owner = match owner_of(route) {
                    Some(Owner::Repository(owner, _) | Owner::Organisation(owner)) => owner.to_ascii_lowercase(),
                    None => return false,
                };
                let forgotten = self.inner.owners.lock().await.remove(&owner);
                if let Some(found) = &forgotten {
                    tracing::info!(
                        owner,
                        installation = found.id,
                        "GitHub refused the installation's token; looking the App's installation up again"
                    );
                }
                forgotten.is_some()
            }
        }
    }

    /// The password for git over https to `repository` (`owner/name`) as
    /// `x-access-token`: the token, or the installation's current token
    /// (minted anew when less than half a minute of it is left).
    pub async fn git_password(&self, repository: &str) -> Result<String, GithubError> {
        match &self.inner.credentials {
            Credentials::Token(token) => Ok(token.clone()),
            Credentials::Installation { .. } | Credentials::App(_) => {
                use octocrab::secrecy::ExposeSecret;
                let client = self.for_route(&format!("/repos/{repository}")).await?;
                let token = client.installation_token().await.map_err(|e| GithubError::Client(e.to_string()))?;
                Ok(token.expose_secret().to_string())
            }
        }
    }

    /// The login GitHub shows as the author of what these credentials
    /// create: the token's user (`GET /user`), or the App's bot,
    /// `<slug>[bot]` (`GET /app`, as the App). `None` when GitHub will not
    /// say (a token refused `GET /user`); an error for what may pass
    /// (network, 5xx, a rate limit).
    pub async fn acting_login(&self) -> Result<Option<String>, GithubError> {
        let fixed = self.fixed();
        let (client, route, field) = match (&self.inner.credentials, &fixed, &self.inner.app) {
            (Credentials::Token(_), Some(fixed), _) => (fixed.as_ref(), "/user", "login"),
            (_, _, Some(app)) => (app, "/app", "slug"),
            _ => return Ok(None),
        };
        let failed = |reason: String| GithubError::Client(format!("GET {route}: {reason}"));
        let response = client._get(route).await.map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let exhausted = response.headers().get("x-ratelimit-remaining").is_some_and(|v| v.as_bytes() == b"0");
        let text = client.body_to_string(response).await.map_err(|e| failed(e.to_string()))?;
        if matches!(status.as_u16(), 401 | 404) || (status.as_u16() == 403 && !exhausted) {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(failed(format!("{} {}", status.as_u16(), error_message(&text))));
        }
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let name = answer[field].as_str().map(str::to_owned);
        Ok(match &self.inner.credentials {
            Credentials::Token(_) => name,
            _ => name.map(|slug| format!("{slug}[bot]")),
        })
    }
}

fn builder(
    api_url: &str,
    timeout: Duration,
) -> Result<
    octocrab::OctocrabBuilder<
        octocrab::NoSvc,
        octocrab::DefaultOctocrabBuilderConfig,
        octocrab::NoAuth,
        octocrab::NotLayerReady,
    >,
    GithubError,
> {
    Ok(octocrab::Octocrab::builder()
        .base_uri(api_url)
        .map_err(|e| GithubError::BadUrl { url: api_url.to_string(), reason: e.to_string() })?
        .set_connect_timeout(Some(timeout))
        .set_read_timeout(Some(timeout))
        .set_write_timeout(Some(timeout)))
}

/// How long GitHub asks us to wait, if this answer is a rate limit: a 403
/// or 429 with `Retry-After` (seconds), or with `X-RateLimit-Remaining: 0`
/// and `X-RateLimit-Reset` (epoch seconds). A 429 without either waits a
/// minute, as GitHub's documentation advises. Never more than [`MAX_DEFER`].
pub fn rate_limit(
    status: u16,
    retry_after: Option<String>,
    remaining: Option<String>,
    reset: Option<String>,
) -> Option<Duration> {
    if status != 403 && status != 429 {
        return None;
    }
    if let Some(secs) = retry_after.and_then(|s| s.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs.max(1)).min(MAX_DEFER));
    }
    if remaining.as_deref().map(str::trim) == Some("0") {
        if let Some(reset) = reset.and_then(|s| s.trim().parse::<u64>().ok()) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            // A little past the reset, so the retry does not arrive just
            // before it.
            let wait = Duration::from_secs(reset).saturating_sub(now) + Duration::from_millis(250);
            return Some(wait.min(MAX_DEFER));
        }
    }
    (status == 429).then_some(Duration::from_secs(60))
}

/// What an error answer's body says went wrong: its `message`, and for a
/// 422 each of its `errors` (`Validation Failed: Release.tag_name
/// already_exists`), so that a dead letter tells which field GitHub refused
/// and why. Empty when the body is not GitHub's error JSON.
pub fn error_message(body: &str) -> String {
    let Ok(answer) = serde_json::from_str::<serde_json::Value>(body) else { return String::new() };
    let text = |v: &serde_json::Value, name: &str| v.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let mut message = text(&answer, "message").unwrap_or_default();
    let details: Vec<String> = answer
        .get("errors")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
        .filter_map(|error| match error {
            serde_json::Value::String(said) => Some(said.clone()),
            _ => text(error, "message").or_else(|| {
                let at = [text(error, "resource"), text(error, "field")].into_iter().flatten().collect::<Vec<_>>();
                let code = text(error, "code")?;
                Some(if at.is_empty() { code } else { format!("{} {code}", at.join(".")) })
            }),
        })
        .collect();
    if !details.is_empty() {
        message = format!("{message}: {}", details.join("; "));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_answers_are_read_from_github_headers() {
        assert_eq!(rate_limit(429, Some("7".into()), None, None), Some(Duration::from_secs(7)));
        assert_eq!(rate_limit(403, Some("2".into()), None, None), Some(Duration::from_secs(2)));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let wait = rate_limit(403, None, Some("0".into()), Some((now + 30).to_string())).expect("limited");
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(31), "{wait:?}");
        assert_eq!(rate_limit(403, None, Some("12".into()), Some(now.to_string())), None, "a plain 403");
        assert_eq!(rate_limit(429, None, None, None), Some(Duration::from_secs(60)));
        assert_eq!(rate_limit(500, Some("1".into()), None, None), None);
        assert_eq!(rate_limit(429, Some("999999".into()), None, None), Some(MAX_DEFER));
    }

    #[test]
    fn an_app_key_is_read_as_github_hands_it_out_and_checked_at_once() {
        use hookbus_testkit::github_app::{APP_ID, PRIVATE_KEY};
        let app = App::new(APP_ID, PRIVATE_KEY).expect("the PEM file as it is");
        assert_eq!(app.id(), APP_ID);
        assert!(!format!("{app:?}").contains("MII"), "the key is never printed");
        // Pasted into one line, with `\n` for each newline.
        let one_line = PRIVATE_KEY.trim().replace('\n', "\\n");
        assert!(!one_line.contains('\n'));
        App::new(APP_ID, &one_line).expect("the key on one line");

        let err = App::new(APP_ID, "ghp_0123456789").expect_err("a token is not a key");
        assert!(err.contains("not an RSA private key"), "{err}");
        let public = hookbus_testkit::github_app::PUBLIC_KEY;
        assert!(App::new(APP_ID, public).is_err(), "a public key cannot sign");
        let err = App::new(0, PRIVATE_KEY).expect_err("no id");
        assert!(err.contains("App id"), "{err}");
    }

    #[test]
    fn an_error_answer_says_what_github_refused() {
        let taken = r#"{"message":"Validation Failed","errors":[{"resource":"Release","code":"already_exists","field":"tag_name"}],"documentation_url":"https://docs.github.com"}"#;
        assert_eq!(error_message(taken), "Validation Failed: Release.tag_name already_exists");
        let said = r#"{"message":"Validation Failed","errors":[{"resource":"Issue","code":"custom","message":"title is too long"},"labels are locked"]}"#;
        assert_eq!(error_message(said), "Validation Failed: title is too long; labels are locked");
        assert_eq!(error_message(r#"{"message":"Not Found"}"#), "Not Found");
        assert_eq!(error_message("<html>bad gateway</html>"), "");
    }
}
