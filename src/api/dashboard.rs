//! The web dashboard: static assets compiled into the binary (no CDN; a
//! node may have no internet), the live event stream it reads, and the
//! utilization history its charts start from.
//!
//! The page itself is public (it holds no data); every call it makes goes
//! through the API, with the bearer token when the API has one.

use std::convert::Infallible;
use std::time::Duration;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::{header, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use futures::Stream;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::net::node::now_ms;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// How often the event stream sends a snapshot.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub(super) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub(super) async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UtilQuery {
    /// How far back, as a duration (`10m`, `1h`).
    since: Option<String>,
    /// Only what was taken after this time, ms since the Unix epoch.
    after_ms: Option<u64>,
}

/// `GET /api/v1/utilization?since=10m` (or `?after_ms=`).
pub(super) async fn utilization(
    State(st): State<AppState>,
    q: Result<Query<UtilQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("bad query: {}", e.body_text()),
        )
    })?;
    let after = match (q.since, q.after_ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "give `since` or `after_ms`, not both",
            ))
        }
        (Some(s), None) => {
            let d = crate::units::parse_duration(&s).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("bad `since` {s:?}: {e}"),
                )
            })?;
            now_ms().saturating_sub(d.as_millis().min(u64::MAX as u128) as u64)
        }
        (None, Some(ms)) => ms,
        (None, None) => 0,
    };
    Ok(Json(st.node.utilization(after).await?))
}

/// `POST /api/v1/discover`: look for nodes now.
pub(super) async fn discover(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.discover().await?))
}

/// `GET /api/v1/events`: server-sent events. A `snapshot` event every
/// second with this node, every node, the allocations and what the
/// utilization history gained since the previous snapshot. The stream
/// ends when the node stops.
pub(super) async fn events(
    State(st): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream =
        futures::stream::unfold((st.node, 0u64, true), |(node, after, first)| async move {
            if !first {
                tokio::time::sleep(SNAPSHOT_EVERY).await;
            }
            let snapshot = async {
                let util = node.utilization(after).await?;
                let body = serde_json::json!({
                    "at_ms": now_ms(),
                    "node": node.local_node().await?,
                    "nodes": node.nodes().await?,
                    "allocations": node.allocations().await?,
                    "utilization": util,
                });
                let next = util
                    .samples
                    .iter()
                    .map(|s| s.at_ms)
                    .chain(util.latency.iter().map(|p| p.at_ms))
                    .max()
                    .unwrap_or(after);
                Ok::<_, crate::handle::NodeError>((body, next))
            };
            match snapshot.await {
                Ok((body, next)) => {
                    let ev = Event::default().event("snapshot").data(body.to_string());
                    Some((Ok(ev), (node, next, false)))
                }
                // The node stopped: end the stream.
                Err(_) => None,
            }
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
