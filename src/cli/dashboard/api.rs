//! The dashboard's HTTP surface (axum): the page and its assets, the frame stream, and the
//! controls. Bodies are documented in `docs/PROTOCOL.md` §16.
//!
//! Reading is open to whoever reaches the address. Every control needs the operator token of
//! cluster.toml (read at each request, so `tsc keys rotate --operator-token` takes effect at
//! once), as `Authorization: Bearer <token>` or the `ts_operator` cookie that `POST /api/login`
//! sets (`HttpOnly`, `SameSite=Strict`); without it the answer is 401 and nothing happens. A
//! control's body must be JSON and say so (`Content-Type: application/json`), which a
//! cross-site form cannot send. Each control calls the function of the matching tsc command,
//! and its answer is that command's message or its exact error.

use super::feed::Feed;
use crate::cli::clients::{
    add_clients, remove_client, removed_message, set_time, set_time_message, started_message,
    time_change,
};
use crate::cli::output::{exit, Failure, Out};
use crate::cli::servers::{self, act, acted_message, elect_message, round_message, Action};
use crate::core::auth::same_secret;
use crate::net::{presented_token, OPERATOR_COOKIE};
use crate::runtime::cluster::{ClusterConfig, State};
use crate::runtime::node::MAX_CLIENTS;
use crate::runtime::Runtime;
use axum::body::Bytes;
use axum::extract::{Path, State as Ax};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The page and its assets, embedded in the binary.
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// The page may load nothing from anywhere but this server.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Everything the handlers share.
pub struct Dashboard {
    pub home: PathBuf,
    pub rt: Arc<Runtime>,
    pub feed: Arc<Feed>,
    /// One control at a time: each reads state.json, acts, and writes it back.
    pub control: tokio::sync::Mutex<()>,
    pub shutdown: CancellationToken,
    /// Requests refused for want of the token.
    pub unauthorized: AtomicU64,
    /// Controls carried out (successfully or not).
    pub controls: AtomicU64,
}

type D = Arc<Dashboard>;

/// An error body with its status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        let status = match f.code {
            exit::USAGE => StatusCode::BAD_REQUEST,
            exit::NOT_FOUND => StatusCode::NOT_FOUND,
            _ => StatusCode::CONFLICT,
        };
        ApiError(status, f.message)
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        Failure::from(e).into()
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// Serves the dashboard on `listener` until `d.shutdown`.
pub async fn serve(listener: TcpListener, d: D) {
    let shutdown = d.shutdown.clone();
    if let Err(e) = axum::serve(listener, router(d))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        warn!(error = %e, "the dashboard stopped serving");
    }
}

fn router(d: D) -> Router {
    let routes = Router::new()
        .route("/", get(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/style.css",
            get(|| asset(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .route("/icon.svg", get(|| asset(ICON_SVG, "image/svg+xml")))
        .route("/api/frame", get(frame))
        .route("/api/history", get(history))
        .route("/api/stream", get(stream))
        .route("/api/stats", get(stats))
        .route("/api/session", get(session))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/clients", post(add))
        .route("/api/clients/{id}/time", post(set_client_time))
        .route("/api/clients/{id}/remove", post(remove))
        .route("/api/servers/{id}/{action}", post(server_action))
        .route("/api/election", post(election))
        .route("/api/berkeley/round", post(berkeley_round));
    crate::net::json_fallbacks(
        routes,
        "page",
        "controls and login are POST; everything else is GET",
    )
    .layer(axum::middleware::map_response(secure))
    .with_state(d)
}

/// Headers on every answer: the page loads nothing from elsewhere and is framed by no one.
async fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn json_text(body: impl Into<String>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.into()).into_response()
}

async fn frame(Ax(d): Ax<D>) -> Response {
    json_text(d.feed.current().to_string())
}

async fn history(Ax(d): Ax<D>) -> Response {
    json_text(d.feed.history())
}

/// The event stream: the chart's history once (`history`), then every frame (`frame`), the
/// current one first.
async fn stream(Ax(d): Ax<D>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let history = Event::default().event("history").data(d.feed.history());
    let frames = stream::unfold(
        (d.feed.subscribe(), d.shutdown.clone()),
        |(mut rx, stop)| async move {
            tokio::select! {
                _ = stop.cancelled() => None,
                changed = rx.changed() => {
                    changed.ok()?;
                    let f = rx.borrow_and_update().clone();
                    Some((Ok(Event::default().event("frame").data(&*f)), (rx, stop)))
                }
            }
        },
    );
    Sse::new(stream::once(async { Ok(history) }).chain(frames)).keep_alive(KeepAlive::default())
}

async fn stats(Ax(d): Ax<D>) -> Json<Value> {
    Json(json!({
        "frames": d.feed.published.load(Relaxed),
        "subscribers": d.feed.subscribers(),
        "frame_every_ms": super::feed::FRAME_EVERY.as_millis() as u64,
        "unauthorized": d.unauthorized.load(Relaxed),
        "controls": d.controls.load(Relaxed),
    }))
}

impl Dashboard {
    /// The cluster's configuration as it is now.
    fn config(&self) -> ApiResult<ClusterConfig> {
        Ok(ClusterConfig::load(&self.home)?)
    }

    /// Whether `headers` present the operator token.
    fn is_operator(&self, cfg: &ClusterConfig, headers: &HeaderMap) -> bool {
        let token = &cfg.credentials.operator_token;
        !token.is_empty() && presented_token(headers).is_some_and(|t| same_secret(t, token))
    }

    /// The configuration, if `headers` present the operator token; else 401, counted.
    fn authorize(&self, headers: &HeaderMap) -> ApiResult<ClusterConfig> {
        let cfg = self.config()?;
        if self.is_operator(&cfg, headers) {
            return Ok(cfg);
        }
        self.unauthorized.fetch_add(1, Relaxed);
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this needs the operator token: log in with it, or send Authorization: Bearer <token>"
                .into(),
        ))
    }

    /// Runs one control with the lock held and state.json read fresh (and, for a control that
    /// starts or removes nodes, `writes`, written back after).
    async fn control<T, F, Fut>(&self, cfg: &ClusterConfig, writes: bool, f: F) -> ApiResult<T>
    where
        F: FnOnce(State) -> Fut,
        Fut: std::future::Future<Output = Result<(T, State), Failure>>,
    {
        let _one = self.control.lock().await;
        self.controls.fetch_add(1, Relaxed);
        let state = State::load(&cfg.home)?;
        let (out, state) = f(state).await?;
        if writes {
            state.save(&cfg.home)?;
        }
        Ok(out)
    }
}

/// A control's JSON body (the content type is required: a cross-site form cannot send it).
fn body<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<T> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send a JSON body with Content-Type: application/json".into(),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

fn done(message: String, result: Value) -> Json<Value> {
    Json(json!({ "ok": true, "message": message, "result": result }))
}

async fn session(Ax(d): Ax<D>, headers: HeaderMap) -> ApiResult {
    let cfg = d.config()?;
    Ok(Json(json!({ "operator": d.is_operator(&cfg, &headers) })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// Checks the token and sets it as the `ts_operator` cookie.
async fn login(Ax(d): Ax<D>, headers: HeaderMap, raw: Bytes) -> ApiResult<Response> {
    let l: Login = body(&headers, &raw)?;
    let cfg = d.config()?;
    let token = &cfg.credentials.operator_token;
    if token.is_empty() || !same_secret(l.token.trim(), token) {
        d.unauthorized.fetch_add(1, Relaxed);
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "that is not the cluster's operator token (cluster.toml, credentials.operator_token)"
                .into(),
        ));
    }
    let cookie = format!("{OPERATOR_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "ok": true, "message": "logged in: controls are enabled" })),
    )
        .into_response())
}

async fn logout() -> Response {
    let cookie = format!("{OPERATOR_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "ok": true, "message": "logged out" })),
    )
        .into_response()
}

/// `POST /api/clients/{id}/time`: `{"time": RFC 3339}` or `{"shift_s": seconds}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SetTimeForm {
    time: Option<String>,
    shift_s: Option<f64>,
}

async fn set_client_time(
    Ax(d): Ax<D>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Bytes,
) -> ApiResult {
    let cfg = d.authorize(&headers)?;
    let form: SetTimeForm = body(&headers, &raw)?;
    let change = time_change(form.time.as_deref(), form.shift_s)?;
    let rt = d.rt.clone();
    d.control(&cfg, false, |state| async {
        let answer = set_time(&cfg, &rt, &state, &id, change).await?;
        Ok((done(set_time_message(change, &answer), answer), state))
    })
    .await
}

/// `POST /api/clients`: `{"n": N}` (default 1).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddForm {
    n: usize,
}

impl Default for AddForm {
    fn default() -> Self {
        AddForm { n: 1 }
    }
}

async fn add(Ax(d): Ax<D>, headers: HeaderMap, raw: Bytes) -> ApiResult {
    let cfg = d.authorize(&headers)?;
    let form: AddForm = body(&headers, &raw)?;
    if form.n == 0 || form.n > MAX_CLIENTS {
        return Err(Failure::usage(format!("n must be between 1 and {MAX_CLIENTS}")).into());
    }
    let rt = d.rt.clone();
    d.control(&cfg, true, |mut state| async move {
        let nodes = add_clients(&rt, &mut state, form.n, &Out::quiet()).await?;
        let lines: Vec<String> = nodes.iter().map(started_message).collect();
        Ok((done(lines.join("; "), json!({ "started": nodes })), state))
    })
    .await
}

async fn remove(Ax(d): Ax<D>, headers: HeaderMap, Path(id): Path<String>, raw: Bytes) -> ApiResult {
    let cfg = d.authorize(&headers)?;
    let _: Value = body(&headers, &raw)?;
    let rt = d.rt.clone();
    d.control(&cfg, true, |mut state| async move {
        let node = remove_client(&rt, &mut state, &id).await?;
        Ok((
            done(removed_message(&node), json!({ "removed": node })),
            state,
        ))
    })
    .await
}

async fn server_action(
    Ax(d): Ax<D>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let cfg = d.authorize(&headers)?;
    let _: Value = body(&headers, &raw)?;
    let Some(action) = Action::parse(&action).filter(|a| {
        matches!(
            a,
            Action::Stop | Action::Start | Action::Kill | Action::Pause | Action::Resume
        )
    }) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no such action {action:?} (stop, start, kill, pause, resume)"),
        ));
    };
    let rt = d.rt.clone();
    d.control(&cfg, true, |mut state| async move {
        let node = act(&rt, &mut state, action, &id).await?;
        let message = acted_message(action.done(), &node);
        Ok((done(message, json!({ action.done(): node })), state))
    })
    .await
}

/// `POST /api/election`: `{"server": "3"}` (default: the leader).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ElectForm {
    server: Option<String>,
}

async fn election(Ax(d): Ax<D>, headers: HeaderMap, raw: Bytes) -> ApiResult {
    let cfg = d.authorize(&headers)?;
    let form: ElectForm = body(&headers, &raw)?;
    let rt = d.rt.clone();
    d.control(&cfg, false, |state| async {
        let answer = servers::elect(&cfg, &rt, &state, form.server.as_deref()).await?;
        Ok((done(elect_message(&answer), answer), state))
    })
    .await
}

async fn berkeley_round(Ax(d): Ax<D>, headers: HeaderMap, raw: Bytes) -> ApiResult {
    let cfg = d.authorize(&headers)?;
    let _: Value = body(&headers, &raw)?;
    let rt = d.rt.clone();
    d.control(&cfg, false, |state| async {
        let answer = servers::berkeley_round(&cfg, &rt, &state).await?;
        Ok((done(round_message(&answer), answer), state))
    })
    .await
}
