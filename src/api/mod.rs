//! The HTTP API (axum), JSON only, built on the [`Node`] handle.
//!
//! It listens on loopback by default. When a token is configured (it must
//! be, for any other address), every `/api/` route needs
//! `Authorization: Bearer <token>`; `/healthz` stays open. Every error is
//! `{ "error": { "code", "message", ... } }` with the matching status.
//! `docs/api.md` documents every route and field.

mod error;

use std::net::SocketAddr;

use axum::{
    body::Bytes,
    extract::{Path, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::core::placement::StrategyConfig;
use crate::handle::{AllocationRequest, Node};

#[derive(Clone)]
struct AppState {
    node: Node,
    token: Option<String>,
}

/// The API's routes over a node handle.
pub fn router(node: Node, token: Option<String>) -> Router {
    let state = AppState { node, token };
    let api = Router::new()
        .route("/node", get(local_node))
        .route("/nodes", get(nodes))
        .route("/allocations", get(allocations).post(request))
        .route("/allocations/{id}", get(allocation).delete(release))
        .route("/strategy", get(strategy).put(set_strategy))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/v1", api)
        .fallback(not_found)
        .with_state(state)
}

/// Serve the API on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    token: Option<String>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(node, token))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Bind the API address, with a clear error.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, std::io::Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding the HTTP API to {addr}: {e}")))
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API needs `Authorization: Bearer <token>` (api.token in the node's config)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

async fn healthz(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let n = st.node.local_node().await?;
    Ok(Json(
        serde_json::json!({ "status": "ok", "node_id": n.id, "name": n.name }),
    ))
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
    Ok((StatusCode::CREATED, Json(alloc)))
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

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
