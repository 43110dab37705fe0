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
    http::header,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use futures::Stream;

use super::{error::query_params, ApiError, AppState};
use crate::core::history::{parse_time, QueryError};
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

/// `GET /api/v1/utilization?since=10m` (or `?after_ms=`). `since` takes
/// the history's time forms (a duration back, RFC 3339, epoch ms).
pub(super) async fn utilization(
    State(st): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let now = now_ms();
    let mut after = None;
    for (k, v) in query_params(params)? {
        let at = match k.as_str() {
            "since" => parse_time("since", &v, now)?,
            "after_ms" => v.trim().parse().map_err(|_| QueryError {
                param: k.clone(),
                message: format!("{v:?} is not milliseconds since the Unix epoch"),
            })?,
            _ => {
                return Err(QueryError {
                    param: k.clone(),
                    message: "unknown parameter; expected `since` or `after_ms`".into(),
                }
                .into())
            }
        };
        if after.replace(at).is_some() {
            return Err(QueryError {
                param: k,
                message: "give one of `since` and `after_ms`, once".into(),
            }
            .into());
        }
    }
    Ok(Json(st.node.utilization(after.unwrap_or(0)).await?))
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
