//! The replica's HTTP API (axum): status, the election, the cluster as this replica sees it,
//! and Prometheus metrics. Every replica serves it; bodies are documented in
//! `docs/PROTOCOL.md` §HTTP API.
//!
//! Errors are JSON (`{"error": "..."}`) with a 4xx/5xx status, including unknown paths (404)
//! and wrong methods (405): a script talking to the API never has to parse HTML or an empty
//! body.
//!
//! Reading is open; every request that changes something (`POST`) needs the operator token, as
//! `Authorization: Bearer <token>` or the cookie `ts_operator=<token>`, and gets 401 without
//! it. Commands that only the leader can carry out (set a client's time, run a Berkeley round)
//! answer 409 with the leader's id on any other replica.

use super::commands::SetTimeRequest;
use super::context::ServerContext;
use super::metrics::Counter;
use super::replica::Replica;
use crate::cache::{RedisStore, ReportStore};
use crate::core::clock::{Clock, SystemClock};
use crate::core::leader_election::ElectionStatus;
use crate::core::logical::Stamp;
use crate::core::protocol::{ReplicaRole, StoredReport, PROTOCOL_VERSION};
use crate::core::protocol::{TimeChange, MAX_COUNTER, MAX_TIME_US};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{info, warn};
use uuid::Uuid;

/// How long a command may take before the API answers 503.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

type Ctx = Arc<ServerContext<RedisStore, SystemClock>>;

#[derive(Clone)]
struct Api {
    ctx: Ctx,
    replica: Arc<Replica>,
}

/// An error body with its status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read Redis: {e}"),
        )
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Serves the API on `listener` until shutdown.
pub(super) async fn serve(listener: TcpListener, ctx: Ctx, replica: Arc<Replica>) {
    if let Ok(mut addr) = listener.local_addr() {
        info!(%addr, "HTTP API listening");
        if addr.ip().is_unspecified() {
            // Listening everywhere: advertise the address others reach us at, the one we
            // reach the broker from (in a container, its address on the cluster network).
            let broker = crate::net::endpoint_of(&ctx.cfg.node.amqp_url);
            if let Ok(ip) = crate::net::local_ip_toward(&broker).await {
                addr.set_ip(ip);
            }
        }
        *replica.http_addr.lock().expect("not poisoned") = Some(addr);
    }
    let shutdown = ctx.shutdown.clone();
    let app = router(Api { ctx, replica });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        warn!(error = %e, "HTTP API stopped");
    }
}

fn router(api: Api) -> Router {
    let routes = Router::new()
        .route("/status", get(status))
        .route("/id", get(id))
        .route("/leader", get(leader))
        .route("/electionStatus", get(election_status))
        .route("/election", post(start_election))
        .route("/clients/{id}/time", post(set_time))
        .route("/berkeley/round", post(berkeley_round))
        .route("/events", get(events))
        .route("/nodes", get(nodes))
        .route("/clients", get(clients))
        .route("/master", get(master))
        .route("/metrics", get(metrics))
        .with_state(api);
    crate::net::json_fallbacks(
        routes,
        "endpoint",
        "POST /election, /clients/{id}/time, /berkeley/round; everything else is GET",
    )
}

/// This replica's view of the election, read under one lock.
#[derive(Serialize)]
struct View {
    id: u64,
    priority: u64,
    server_id: uuid::Uuid,
    role: ReplicaRole,
    epoch: u64,
    leader: Option<u64>,
    leader_heartbeat_age_ms: Option<u64>,
    /// Whether this replica has a broker session (without one it takes no part).
    connected: bool,
}

impl Api {
    fn view(&self) -> View {
        let now = self.replica.now();
        let guard = self.replica.bully.lock().expect("not poisoned");
        let b = guard.as_ref();
        View {
            id: self.ctx.cfg.node.replica_id,
            priority: self.ctx.cfg.node.priority,
            server_id: self.ctx.server_id,
            role: b.map(|b| b.role()).unwrap_or_default(),
            epoch: b.map_or(0, |b| b.epoch()),
            leader: b.and_then(|b| b.leader()),
            leader_heartbeat_age_ms: b
                .and_then(|b| b.leader_age(now))
                .map(|d| d.as_millis() as u64),
            connected: b.is_some(),
        }
    }

    fn election(&self) -> Option<ElectionStatus> {
        let now = self.replica.now();
        let guard = self.replica.bully.lock().expect("not poisoned");
        guard.as_ref().map(|b| b.election_status(now))
    }
}

async fn status(State(api): State<Api>) -> ApiResult<Json<serde_json::Value>> {
    let clients_live = api.ctx.store.live_count(api.ctx.cfg.settings.ttl()).await?;
    let master = api.ctx.store.master().await?.map(|m| m.id);
    let uptime_s = (api.ctx.clock.now_us() - api.replica.started_at_us) as f64 / 1e6;
    Ok(Json(json!({
        "replica": api.view(),
        "election": api.election(),
        "algorithm": api.ctx.cfg.settings.algorithm.as_str(),
        "protocol": PROTOCOL_VERSION,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": uptime_s,
        "clients_live": clients_live,
        "master_id": master,
    })))
}

async fn id(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(json!({
        "id": api.ctx.cfg.node.replica_id,
        "priority": api.ctx.cfg.node.priority,
        "server_id": api.ctx.server_id,
    }))
}

async fn leader(State(api): State<Api>) -> Json<serde_json::Value> {
    let v = api.view();
    Json(json!({
        "leader": v.leader,
        "epoch": v.epoch,
        "heartbeat_age_ms": v.leader_heartbeat_age_ms,
        "is_self": v.leader == Some(v.id),
    }))
}

async fn election_status(State(api): State<Api>) -> ApiResult<Json<ElectionStatus>> {
    api.election().map(Json).ok_or(ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "no broker session: this replica takes no part in elections right now".into(),
    ))
}

/// Refuses a request without the operator token (401), counting it.
fn authorize(api: &Api, headers: &HeaderMap) -> ApiResult<()> {
    let keys = api.ctx.keys.get();
    if crate::net::presented_token(headers).is_some_and(|t| keys.is_operator(t)) {
        return Ok(());
    }
    api.ctx.metrics.inc(Counter::Unauthorized);
    Err(ApiError(
        StatusCode::UNAUTHORIZED,
        "this needs the operator token (Authorization: Bearer <token>)".into(),
    ))
}

/// A command's JSON body, parsed only once the caller is authorized (so an unauthorized caller
/// gets 401 whatever it sends); `None` when empty, 400 with the reason when malformed.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<Option<T>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

/// Refuses a command only the leader can carry out, on any other replica (409).
fn leading(api: &Api) -> ApiResult<()> {
    if api.replica.leading().borrow().is_some() {
        return Ok(());
    }
    let v = api.view();
    Err(ApiError(
        StatusCode::CONFLICT,
        format!(
            "replica {} does not lead; the leader is {}",
            v.id,
            v.leader
                .map_or_else(|| "not known yet".into(), |l| format!("replica {l}"))
        ),
    ))
}

/// The operator's logical clock, sent with a command (tsc keeps a Lamport counter).
fn operator_stamp(lt: Option<u64>) -> Stamp {
    Stamp {
        lt: lt.unwrap_or(0).min(MAX_COUNTER),
        ..Stamp::default()
    }
}

async fn start_election(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    authorize(&api, &headers)?;
    if let Some(b) = json_body::<OperatorBody>(&body)? {
        api.ctx.observe(&operator_stamp(b.lt));
    }
    match api.replica.request_election().await {
        Some(true) => Ok((
            StatusCode::ACCEPTED,
            Json(
                json!({ "started": true, "replica": api.ctx.cfg.node.replica_id, "lt": api.ctx.stamp().lt }),
            ),
        )),
        Some(false) => Err(ApiError(
            StatusCode::CONFLICT,
            "an election is already in progress".into(),
        )),
        None => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no broker session: cannot run an election".into(),
        )),
    }
}

/// `POST /clients/{id}/time`'s body: one of `time_us` (absolute) or `shift_us`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTimeBody {
    time_us: Option<i64>,
    shift_us: Option<i64>,
    /// Names the command (a retry with the same id is applied once); new if absent.
    op_id: Option<Uuid>,
    /// The operator's Lamport counter.
    lt: Option<u64>,
}

async fn set_time(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    authorize(&api, &headers)?;
    let bad = |m: &str| ApiError(StatusCode::BAD_REQUEST, m.to_string());
    let client_id: Uuid = id.parse().map_err(|_| bad("the client id is not a UUID"))?;
    let body: SetTimeBody = json_body(&body)?
        .ok_or_else(|| bad("a JSON body {\"time_us\": …} or {\"shift_us\": …}"))?;
    let range = -MAX_TIME_US..=MAX_TIME_US;
    let change = match (body.time_us, body.shift_us) {
        (Some(t), None) if range.contains(&t) => TimeChange::Absolute { time_us: t },
        (None, Some(s)) if range.contains(&s) => TimeChange::Shift { shift_us: s },
        (Some(_), Some(_)) => return Err(bad("give time_us or shift_us, not both")),
        (None, None) => return Err(bad("give time_us or shift_us")),
        _ => return Err(bad("time out of range (|µs| ≤ 2^53)")),
    };
    leading(&api)?;
    let op_id = body.op_id.unwrap_or_else(Uuid::new_v4);
    let (reply, answer) = oneshot::channel();
    let req = SetTimeRequest {
        client_id,
        change,
        op_id,
        cause: operator_stamp(body.lt),
        reply,
    };
    let unavailable = || {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduler is not running (no broker session?)".into(),
        )
    };
    api.ctx
        .commands
        .set_time
        .send(req)
        .map_err(|_| unavailable())?;
    match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
        Ok(Ok(Ok(()))) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "op_id": op_id, "client_id": client_id, "lt": api.ctx.stamp().lt })),
        )),
        Ok(Ok(Err(e))) if e.starts_with("no live client") => {
            Err(ApiError(StatusCode::NOT_FOUND, e))
        }
        Ok(Ok(Err(e))) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e)),
        _ => Err(unavailable()),
    }
}

/// The body of a command that takes no arguments: only the operator's Lamport counter.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OperatorBody {
    lt: Option<u64>,
}

async fn berkeley_round(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    authorize(&api, &headers)?;
    let body: Option<OperatorBody> = json_body(&body)?;
    leading(&api)?;
    if let Some(b) = body {
        api.ctx.observe(&operator_stamp(b.lt));
    }
    let (reply, answer) = oneshot::channel();
    let unavailable = || {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the reference clock is not running (no broker session?)".into(),
        )
    };
    api.ctx
        .commands
        .round
        .send(reply)
        .map_err(|_| unavailable())?;
    match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
        Ok(Ok(Ok(round))) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "round": round, "lt": api.ctx.stamp().lt })),
        )),
        Ok(Ok(Err(e))) => Err(ApiError(StatusCode::CONFLICT, e)),
        _ => Err(unavailable()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only events after this stream id.
    after: Option<String>,
    /// At most this many (default 100, at most 1000).
    count: Option<usize>,
}

async fn events(
    State(api): State<Api>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let count = q.count.unwrap_or(100).clamp(1, 1000);
    let after = q.after.filter(|a| {
        a.split_once('-')
            .is_some_and(|(ms, n)| ms.parse::<u64>().is_ok() && n.parse::<u64>().is_ok())
    });
    let events = api.ctx.store.events(after.as_deref(), count).await?;
    let list: Vec<serde_json::Value> = events
        .into_iter()
        .map(|(id, e)| json!({ "id": id, "event": e }))
        .collect();
    Ok(Json(json!({ "events": list })))
}

/// One replica as this one knows it.
#[derive(Serialize)]
struct NodeView {
    id: u64,
    priority: u64,
    role: ReplicaRole,
    epoch: u64,
    leader: Option<u64>,
    heartbeat_age_ms: u64,
    alive: bool,
    is_self: bool,
}

async fn nodes(State(api): State<Api>) -> Json<serde_json::Value> {
    let v = api.view();
    let mut out = vec![NodeView {
        id: v.id,
        priority: v.priority,
        role: v.role,
        epoch: v.epoch,
        leader: v.leader,
        heartbeat_age_ms: 0,
        alive: v.connected,
        is_self: true,
    }];
    let now = api.replica.now();
    if let Some(b) = api.replica.bully.lock().expect("not poisoned").as_ref() {
        out.extend(b.peers().map(|p| NodeView {
            id: p.id,
            priority: p.priority,
            role: p.role,
            epoch: p.epoch,
            leader: p.leader,
            heartbeat_age_ms: now.saturating_sub(p.last_heard).as_millis() as u64,
            alive: b.is_alive(p.last_heard, now),
            is_self: false,
        }));
    }
    out.sort_by_key(|n| n.id);
    Json(json!({ "nodes": out }))
}

/// Clients listed per page of `GET /clients` when no `limit` is given.
pub const CLIENTS_PAGE: usize = 1000;
/// The largest page of `GET /clients`.
pub const MAX_CLIENTS_PAGE: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsQuery {
    /// Only clients after this live-index member (the `next` of the page before).
    after: Option<String>,
    /// At most this many (default [`CLIENTS_PAGE`], at most [`MAX_CLIENTS_PAGE`]).
    limit: Option<usize>,
}

/// One page of live clients in election order, the live count, and where the next page starts.
async fn clients(
    State(api): State<Api>,
    Query(q): Query<ClientsQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = q.limit.unwrap_or(CLIENTS_PAGE).clamp(1, MAX_CLIENTS_PAGE);
    let reports: Vec<StoredReport> = api.ctx.store.live_after(q.after.as_deref(), limit).await?;
    let live = api.ctx.store.live_count(api.ctx.cfg.settings.ttl()).await?;
    let next = (reports.len() == limit)
        .then(|| reports.last())
        .flatten()
        .map(|r| crate::core::master_election::live_member(&r.report.id, &r.report.ip));
    Ok(Json(
        json!({ "clients": reports, "live": live, "next": next }),
    ))
}

async fn master(State(api): State<Api>) -> ApiResult<Json<serde_json::Value>> {
    let Some(m) = api.ctx.store.master().await? else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no master elected".into()));
    };
    let report = api.ctx.store.report(&m.id).await?;
    Ok(Json(json!({ "master": m, "report": report })))
}

async fn metrics(State(api): State<Api>) -> ApiResult<Response> {
    let live = api.ctx.store.live_count(api.ctx.cfg.settings.ttl()).await?;
    let v = api.view();
    let text = api.ctx.metrics.exposition(&[
        (
            "ts_clients_live",
            "Clients with a live report in Redis.",
            live as f64,
        ),
        (
            "ts_epoch",
            "Leader epoch this replica is in (own if leading).",
            v.epoch as f64,
        ),
        (
            "ts_is_leader",
            "1 if this replica leads.",
            f64::from(u8::from(v.role == ReplicaRole::Leader)),
        ),
    ]);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
