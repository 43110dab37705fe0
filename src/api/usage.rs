//! `GET /api/v1/usage` (usage accounting: resource-seconds per requester,
//! group or node, with costs at this node's prices) and
//! `GET /api/v1/bottlenecks` (the dimensions that refuse the most
//! requests, per node and swarm-wide). A malformed usage query is a 400
//! with code `bad_query` that names the parameter (`error.param`), as for
//! the history.

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    Json,
};

use super::{error::query_params, ApiError, AppState};
use crate::core::usage::{UsageQuery, UsageReport};
use crate::net::node::BottleneckReport;

pub(super) async fn usage(
    State(st): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    let params = query_params(params)?;
    let now = crate::net::node::now_ms();
    let query = UsageQuery::parse(params.iter().map(|(k, v)| (k.as_str(), v.as_str())), now)?;
    Ok(Json(st.node.usage(query).await?))
}

pub(super) async fn bottlenecks(
    State(st): State<AppState>,
) -> Result<Json<BottleneckReport>, ApiError> {
    Ok(Json(st.node.bottlenecks().await?))
}
