//! `GET /api/v1/usage` (usage accounting: resource-seconds per requester,
//! group or node, with costs at this node's prices) and
//! `GET /api/v1/bottlenecks` (the dimensions that refuse the most
//! requests, per node and swarm-wide). A malformed usage query is a 400
//! with code `bad_query` that names the parameter (`error.param`), as for
//! the history.

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    Json,
};
use serde_json::json;

use super::{ApiError, AppState};
use crate::core::history::QueryError;
use crate::core::usage::{UsageQuery, UsageReport};
use crate::net::node::BottleneckReport;

fn bad_query(e: QueryError) -> ApiError {
    ApiError {
        details: Some(json!({ "param": e.param })),
        ..ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.to_string())
    }
}

pub(super) async fn usage(
    State(st): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("invalid query string: {}", e.body_text()),
        )
    })?;
    let now = crate::net::node::now_ms();
    let query = UsageQuery::parse(params.iter().map(|(k, v)| (k.as_str(), v.as_str())), now)
        .map_err(bad_query)?;
    Ok(Json(st.node.usage(query).await?))
}

pub(super) async fn bottlenecks(
    State(st): State<AppState>,
) -> Result<Json<BottleneckReport>, ApiError> {
    Ok(Json(st.node.bottlenecks().await?))
}
