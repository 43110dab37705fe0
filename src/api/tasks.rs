//! `/api/v1/tasks`, `/api/v1/infer`, `/api/v1/jobs`, `/api/v1/offers` and
//! `/api/v1/models`.
//!
//! `POST /tasks` (and its alias `/infer`) places a lease, runs the task on
//! it and, by default, answers when the task ended with its record
//! (`?wait=false`: at once, 202, with the record `running`). An inference
//! task with `"stream": true` answers with newline-delimited JSON: one
//! `{"chunk": "..."}` per piece as the model server produces it, then
//! `{"task": {...}}` with the final record.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::{
    body::{Body, Bytes},
    extract::{rejection::QueryRejection, Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{parse_json, ApiError, AppState};
use crate::core::tasks::JobSpec;
use crate::work::{TaskEvent, TaskRecord, TaskSubmission, WorkError};

impl From<WorkError> for ApiError {
    fn from(e: WorkError) -> Self {
        match e {
            WorkError::BadRequest(m) => ApiError::bad_request(m),
            WorkError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            WorkError::Node(e) => e.into(),
            WorkError::Storage(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", m)
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitQuery {
    /// Answer when the task ended (default), or at once.
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

fn query<T>(q: Result<Query<T>, QueryRejection>, hint: &str) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}; {hint}", e.body_text())))
}

pub(super) async fn list(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.work.tasks()))
}

pub(super) async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.work.task(&id)?))
}

pub(super) async fn cancel(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.work.cancel_task(&id).await?))
}

/// Wait for a task's final record.
async fn done(
    st: &AppState,
    mut events: broadcast::Receiver<TaskEvent>,
    id: &str,
) -> Result<TaskRecord, ApiError> {
    loop {
        match events.recv().await {
            Ok(TaskEvent::Done(rec)) => return Ok(*rec),
            Ok(TaskEvent::Chunk(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return Ok(st.work.task(id)?),
        }
    }
}

/// One line of a streamed answer.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Chunk(String),
    Task(Box<TaskRecord>),
}

fn ndjson(line: &Line) -> Bytes {
    let mut v = serde_json::to_vec(line).unwrap_or_else(|_| b"{}".to_vec());
    v.push(b'\n');
    Bytes::from(v)
}

pub(super) async fn submit(
    State(st): State<AppState>,
    q: Result<Query<WaitQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = query(q, "the only parameter is `wait=true|false`")?;
    let sub: TaskSubmission = parse_json(&body)?;
    let stream = sub.stream && sub.model.is_some();
    let (rec, events) = st.work.submit_task(sub).await?;
    if stream {
        let work = st.work.clone();
        let id = rec.task_id.clone();
        let body = futures::stream::unfold(Some(events), move |rx| {
            let work = work.clone();
            let id = id.clone();
            async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(TaskEvent::Chunk(text)) => {
                            return Some((
                                Ok::<_, Infallible>(ndjson(&Line::Chunk(text))),
                                Some(rx),
                            ))
                        }
                        Ok(TaskEvent::Done(rec)) => {
                            return Some((Ok(ndjson(&Line::Task(rec))), None))
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => {
                            let rec = work.task(&id).ok()?;
                            return Some((Ok(ndjson(&Line::Task(Box::new(rec)))), None));
                        }
                    }
                }
            }
        });
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(body),
        )
            .into_response());
    }
    if !q.wait {
        return Ok((StatusCode::ACCEPTED, Json(rec)).into_response());
    }
    let id = rec.task_id.clone();
    let rec = done(&st, events, &id).await?;
    Ok((StatusCode::OK, Json(rec)).into_response())
}

pub(super) async fn jobs(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.work.jobs()))
}

pub(super) async fn job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.work.job(&id)?))
}

pub(super) async fn cancel_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.work.cancel_job(&id).await?))
}

pub(super) async fn submit_job(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    let spec = JobSpec::from_json(text).map_err(ApiError::bad_request)?;
    Ok((StatusCode::ACCEPTED, Json(st.work.submit_job(spec)?)))
}

pub(super) async fn offers(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.offers().await?))
}

/// A model and where it is served.
#[derive(Serialize)]
struct ModelPlace {
    node_id: String,
    node_name: String,
    loaded: bool,
    status: crate::model::NodeStatus,
}

/// Every model served in the swarm as seen from here, with its nodes
/// (loaded ones first).
pub(super) async fn models(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut out: BTreeMap<String, Vec<ModelPlace>> = BTreeMap::new();
    for n in st.node.nodes().await? {
        for m in &n.models {
            out.entry(m.clone()).or_default().push(ModelPlace {
                node_id: n.id.0.clone(),
                node_name: n.name.clone(),
                loaded: n.loaded_models.contains(m),
                status: n.status,
            });
        }
    }
    for places in out.values_mut() {
        places.sort_by_key(|p| !p.loaded);
    }
    Ok(Json(out))
}
