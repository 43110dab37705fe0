//! `GET /api/v1/history`: the allocation history (audit log), newest
//! first, filtered by `since`, `until`, `requester`, `node`, `kind` and
//! `limit` ([`HistoryQuery::parse`]). A malformed query is a 400 with code
//! `bad_query` that names the parameter (`error.param`).

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    response::IntoResponse,
    Json,
};
use serde_json::json;

use super::{ApiError, AppState};
use crate::core::history::{HistoryQuery, HistoryRecord, QueryError};

fn bad_query(e: QueryError) -> ApiError {
    ApiError {
        details: Some(json!({ "param": e.param })),
        ..ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.to_string())
    }
}

pub(super) async fn history(
    State(st): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("invalid query string: {}", e.body_text()),
        )
    })?;
    let now = crate::net::node::now_ms();
    let query = HistoryQuery::parse(
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        now,
        |s| s.parse::<libp2p::PeerId>().is_ok(),
    )
    .map_err(bad_query)?;
    let events = st.node.history(query).await?;
    let records: Vec<HistoryRecord> = events.iter().map(|e| e.to_record()).collect();
    Ok(Json(records))
}
