//! `GET /api/v1/history`: the allocation history (audit log), newest
//! first, filtered by `since`, `until`, `requester`, `node`, `kind` and
//! `limit` ([`HistoryQuery::parse`]). A malformed query is a 400 with code
//! `bad_query` that names the parameter (`error.param`).

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    response::IntoResponse,
    Json,
};

use super::{error::query_params, ApiError, AppState};
use crate::core::history::{HistoryQuery, HistoryRecord};

pub(super) async fn history(
    State(st): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let params = query_params(params)?;
    let now = crate::net::node::now_ms();
    let query = HistoryQuery::parse(
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        now,
        |s| s.parse::<libp2p::PeerId>().is_ok(),
    )?;
    let events = st.node.history(query).await?;
    let records: Vec<HistoryRecord> = events.iter().map(|e| e.to_record()).collect();
    Ok(Json(records))
}
