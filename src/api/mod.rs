//! The HTTP API (axum), JSON only, built on the [`Node`] handle.
//!
//! It listens on loopback by default. When `api.token` is set, or it
//! listens on any other address (which needs a token: `api.token` or one
//! made with `lanswarm token create`), every `/api/` route and `/metrics`
//! (the Prometheus metrics) need `Authorization: Bearer <token>`;
//! `/healthz` stays open. A `read-only` token may only `GET`; see
//! [`tokens`] for the rules. Every error is
//! `{ "error": { "code", "message", ... } }` with the matching status.
//! `docs/api.md` documents every route and field.

mod dashboard;
mod error;
mod history;
mod tasks;
pub mod tokens;
mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{rejection::QueryRejection, Path, Query, Request, State},
    http::{header, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use serde::{de::DeserializeOwned, Deserialize};
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::core::placement::StrategyConfig;
use crate::handle::{
    AccessChange, AllocationRequest, AllocationStatus, NewGroup, NewPool, Node, QuotaChange,
    ReservationRequest, SchedPolicyChange,
};
use crate::work::Work;

#[derive(Clone)]
struct AppState {
    node: Node,
    work: Work,
    /// Who may call: the config's token, the token file, whether needed.
    auth: Arc<tokens::ApiAuth>,
}

/// The role a request was served with (set by [`auth`]).
#[derive(Clone, Copy, Debug)]
struct Caller(tokens::TokenRole);

/// The API's routes over a node handle and its requester-side work.
pub fn router(node: Node, work: Work, api_auth: tokens::ApiAuth) -> Router {
    let state = AppState {
        node,
        work,
        auth: Arc::new(api_auth),
    };
    let api = Router::new()
        .route("/node", get(local_node))
        .route("/nodes", get(nodes))
        .route("/allocations", get(allocations).post(request))
        .route("/allocations/{id}", get(allocation).delete(release))
        .route("/strategy", get(strategy).put(set_strategy))
        .route("/groups", get(groups).post(create_group))
        .route("/groups/{group}", get(group))
        .route("/groups/{group}/members", get(group_members))
        .route("/groups/{group}/join", post(join_group))
        .route("/groups/{group}/leave", post(leave_group))
        .route("/groups/{group}/invite", post(invite_to_group))
        .route("/access", get(access).patch(set_access))
        .route("/roles", get(roles).patch(set_roles))
        .route("/pools", get(pools).post(create_pool))
        .route("/pools/{name}", get(pool).delete(delete_pool))
        .route("/reservations", get(reservations).post(reserve))
        .route("/reservations/events", post(post_event))
        .route("/reservations/{id}", delete(cancel_reservation))
        .route("/quotas", get(quotas).put(set_quota))
        .route("/quotas/{subject}", delete(remove_quota))
        .route("/scheduler", get(sched_policy).patch(set_sched_policy))
        .route("/queue", get(queue))
        .route("/multi", get(multis).post(request_multi))
        .route("/contention", get(contention))
        .route("/breakers", get(breakers))
        .route("/throttle", get(throttle))
        .route("/elastic", get(elastic))
        .route("/history", get(history::history))
        .route("/usage", get(usage::usage))
        .route("/bottlenecks", get(usage::bottlenecks))
        .route("/tasks", get(tasks::list).post(tasks::submit))
        .route("/tasks/{id}", get(tasks::get_one).delete(tasks::cancel))
        .route("/infer", post(tasks::submit))
        .route("/jobs", get(tasks::jobs).post(tasks::submit_job))
        .route("/jobs/{id}", get(tasks::job).delete(tasks::cancel_job))
        .route("/offers", get(tasks::offers))
        .route("/health-checks", post(health_checks))
        .route("/models", get(tasks::models))
        .route("/utilization", get(dashboard::utilization))
        .route("/discover", post(dashboard::discover))
        .route("/events", get(dashboard::events))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{key}", delete(revoke_token))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(metrics).route_layer(middleware::from_fn_with_state(state.clone(), auth)),
        )
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::app_js))
        .route("/dashboard/app.css", get(dashboard::app_css))
        .nest("/api/v1", api)
        .fallback(not_found)
        .with_state(state)
}

/// Serve the API on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    work: Work,
    auth: tokens::ApiAuth,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(node, work, auth))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Bind the API address, with a clear error.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, std::io::Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding the HTTP API to {addr}: {e}")))
}

/// Authenticate a request (see [`tokens`]): 401 without a valid token
/// where one is needed, 403 for a `read-only` token on anything but
/// `GET`/`HEAD`. The role goes into the request as a [`Caller`].
async fn auth(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let role = match st.auth.check(header) {
        tokens::Check::Allowed(role) => role,
        tokens::Check::Unauthorized(why) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "{why} (api.token in the node's config, or a token from `lanswarm token create`)"
                ),
            )
            .into_response();
        }
    };
    if role == tokens::TokenRole::ReadOnly && !matches!(*req.method(), Method::GET | Method::HEAD) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a read-only token may only read (GET); {} needs an admin token",
                req.method()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Caller(role));
    next.run(req).await
}

/// Refuse anyone but an admin caller (token routes, even their `GET`).
fn require_admin(caller: Option<&Caller>) -> Result<(), ApiError> {
    match caller {
        Some(Caller(tokens::TokenRole::Admin)) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "managing API tokens needs an admin token",
        )),
    }
}

/// The token file of this API, or a clear error if it has none.
fn token_file(st: &AppState) -> Result<std::path::PathBuf, ApiError> {
    st.auth
        .file()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "this API keeps no token file",
            )
        })
}

fn token_error(e: tokens::TokenError) -> ApiError {
    use tokens::TokenError as E;
    match e {
        E::Unknown(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        E::NameTaken(_) | E::Full => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        E::BadRole(_) | E::BadName(_) => ApiError::bad_request(e.to_string()),
        E::File { .. } => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            e.to_string(),
        ),
    }
}

async fn list_tokens(
    State(st): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(caller.as_deref())?;
    let path = token_file(&st)?;
    let list = tokio::task::spawn_blocking(move || tokens::list(&path))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(token_error)?;
    Ok(Json(list))
}

/// The body of `POST /tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    /// `read-only` or `admin`.
    role: String,
    #[serde(default)]
    name: Option<String>,
}

async fn create_token(
    State(st): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(caller.as_deref())?;
    let b: NewTokenBody = parse_json(&body)?;
    let role: tokens::TokenRole = b.role.parse().map_err(token_error)?;
    let path = token_file(&st)?;
    let made = tokio::task::spawn_blocking(move || tokens::create(&path, role, b.name.as_deref()))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(token_error)?;
    Ok((StatusCode::CREATED, Json(made)))
}

async fn revoke_token(
    State(st): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(caller.as_deref())?;
    let path = token_file(&st)?;
    let gone = tokio::task::spawn_blocking(move || tokens::revoke(&path, &key))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(token_error)?;
    Ok(Json(gone))
}

/// Parse a request body. Every body is a JSON object: serde would also
/// read a struct from an array (`[]` as "all defaults"), so anything else
/// is refused up front.
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Ask every known node how it is (seed 004's `perform_health_checks`).
async fn health_checks(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.perform_health_checks().await?))
}

async fn healthz(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let n = st.node.local_node().await?;
    Ok(Json(
        serde_json::json!({ "status": "ok", "node_id": n.id, "name": n.name }),
    ))
}

/// Prometheus metrics: OpenMetrics for clients that ask for it (Prometheus
/// does), else Prometheus' classic text format (promtool, curl). Like
/// `/api/`, it needs the token when one is configured.
async fn metrics(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let text = st.node.metrics_text();
    if openmetrics {
        ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, crate::metrics::TEXT_CONTENT_TYPE)],
            crate::metrics::to_text_format(&text),
        )
            .into_response()
    }
}

async fn local_node(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.local_node().await?))
}

async fn nodes(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.nodes().await?))
}

async fn request(State(st): State<AppState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let req: AllocationRequest = parse_json(&body)?;
    let alloc = st.node.request(req).await?;
    // A request left waiting in an owner's queue is accepted, not yet
    // granted: 202, with its `queue_position`.
    let status = if alloc.status == AllocationStatus::Queued {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(alloc)))
}

async fn allocations(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.allocations().await?))
}

async fn allocation(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let all = st.node.allocations().await?;
    all.held
        .into_iter()
        .chain(all.granted)
        .find(|a| a.allocation_id == id)
        .map(Json)
        .ok_or_else(|| ApiError::unknown_allocation(&id))
}

async fn release(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.release(&id).await?))
}

async fn strategy(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.strategy().await?))
}

async fn set_strategy(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let cfg: StrategyConfig = parse_json(&body)?;
    st.node.set_strategy(cfg.clone()).await?;
    Ok(Json(cfg))
}

async fn groups(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.groups().await?))
}

async fn create_group(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let new: NewGroup = parse_json(&body)?;
    let g = st.node.create_group(new).await?;
    Ok((StatusCode::CREATED, Json(g)))
}

async fn group(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.group(&group).await?))
}

async fn group_members(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.group(&group).await?.members))
}

async fn join_group(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.join_group(&group).await?))
}

async fn leave_group(
    State(st): State<AppState>,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.leave_group(&group).await?))
}

/// The body of `POST /groups/{group}/invite`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Invite {
    /// The invited node's peer id.
    node: String,
}

async fn invite_to_group(
    State(st): State<AppState>,
    Path(group): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let inv: Invite = parse_json(&body)?;
    Ok(Json(st.node.invite_to_group(&group, &inv.node).await?))
}

async fn access(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.access().await?))
}

async fn set_access(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let change: AccessChange = parse_json(&body)?;
    Ok(Json(st.node.set_access(change).await?))
}

async fn roles(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.roles().await?))
}

async fn set_roles(State(st): State<AppState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let change: crate::handle::RolesChange = parse_json(&body)?;
    Ok(Json(st.node.set_roles(change).await?))
}

async fn pools(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.pools().await?))
}

async fn create_pool(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let new: NewPool = parse_json(&body)?;
    let p = st.node.create_pool(new).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn pool(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.pool(&name).await?))
}

async fn delete_pool(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    st.node.delete_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn request_multi(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: crate::handle::MultiAllocationRequest = parse_json(&body)?;
    let m = st.node.request_multi(req).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

async fn multis(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.multis().await?))
}

async fn reservations(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.reservations().await?))
}

async fn reserve(State(st): State<AppState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let req: ReservationRequest = parse_json(&body)?;
    let r = st.node.reserve(req).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// Post a named event for conditional reservations.
async fn post_event(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let e: crate::handle::EventPost = parse_json(&body)?;
    Ok(Json(st.node.post_event(e.name).await?))
}

/// A reservation's id is also its lease's id, so cancelling is releasing.
async fn cancel_reservation(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.release(&id).await?))
}

async fn quotas(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.quotas().await?))
}

async fn set_quota(State(st): State<AppState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let change: QuotaChange = parse_json(&body)?;
    Ok(Json(st.node.set_quota(change).await?))
}

/// The query of `DELETE /quotas/{subject}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaScope {
    /// The swarm-wide quota instead of the local one.
    #[serde(default)]
    swarm: bool,
}

async fn remove_quota(
    State(st): State<AppState>,
    Path(subject): Path<String>,
    scope: Result<Query<QuotaScope>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(scope) = scope.map_err(|e| {
        ApiError::bad_request(format!(
            "invalid query: {}; the only parameter is `swarm=true|false`",
            e.body_text()
        ))
    })?;
    Ok(Json(st.node.remove_quota(&subject, scope.swarm).await?))
}

async fn sched_policy(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.sched_policy().await?))
}

async fn set_sched_policy(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let change: SchedPolicyChange = parse_json(&body)?;
    Ok(Json(st.node.set_sched_policy(change).await?))
}

async fn queue(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.queue().await?))
}

async fn contention(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.contention().await?))
}

async fn breakers(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.breakers().await?))
}

async fn throttle(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.throttle().await?))
}

async fn elastic(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.elastic().await?))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
