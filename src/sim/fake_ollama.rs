//! A stand-in for Ollama, for tests and demos.
//!
//! Ollama cannot be installed on the machines the tests run on, so this
//! serves the subset of its HTTP API that lanswarm uses
//! ([`crate::hw::models`]), with the same shapes: `GET /`, `GET /api/tags`,
//! `GET /api/ps`, `POST /api/generate`, `POST /api/chat`, and the
//! OpenAI-compatible `GET /v1/models`, `POST /v1/completions` and
//! `POST /v1/chat/completions`.
//!
//! Its answers are deterministic, so tests can predict them exactly:
//!
//! - generate answers `[{name}/{model}] {prompt}`, where `model` is the
//!   name as requested; with a system prompt it answers
//!   `[{name}/{model}] {system}\n\n{prompt}` (the same text the
//!   OpenAI-compatible client sends as the prompt, so both APIs give the
//!   same answer);
//! - chat answers `[{name}/{model}] {content of the last user message}`.
//!
//! A streamed answer is sent one word per piece, each word with the
//! whitespace after it, so the pieces concatenate to the answer exactly,
//! `delay_ms` apart. The prompt's token count is its number of words (of
//! the system prompt and prompt, or of every chat message), the answer's is
//! its number of pieces. Ollama's `options.num_predict`, or the OpenAI
//! `max_tokens`, stops the answer after that many pieces, with done reason
//! `length`. A model that is not served gets a 404 with Ollama's error
//! message; as in Ollama, `llama3` names `llama3:latest`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the fake server serves.
#[derive(Clone, Debug)]
pub struct FakeOllama {
    /// A name for this server, put in every answer so a test can tell which
    /// server answered.
    pub name: String,
    /// The models it serves, as Ollama names them (`llama3:latest`).
    pub models: Vec<String>,
    /// The models it reports as loaded in memory (`/api/ps`).
    pub loaded: Vec<String>,
    /// The pause between the pieces of a streamed answer, in ms.
    pub delay_ms: u64,
}

impl FakeOllama {
    /// A server called `name` serving `models`, none loaded, no delay.
    pub fn new(name: &str, models: &[&str]) -> Self {
        FakeOllama {
            name: name.to_string(),
            models: models.iter().map(|m| m.to_string()).collect(),
            loaded: Vec::new(),
            delay_ms: 0,
        }
    }

    /// The served model a request's name means: itself, or `{name}:latest`.
    fn resolve(&self, model: &str) -> Option<&str> {
        let latest = format!("{model}:latest");
        self.models
            .iter()
            .find(|m| *m == model || **m == latest)
            .map(String::as_str)
    }
}

/// Serve `fake` on `listener` until `shutdown` is cancelled, then finish
/// the answers in progress and return.
pub async fn serve(
    listener: TcpListener,
    fake: FakeOllama,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(fake))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Serve `fake` on a free port of 127.0.0.1 in a new task until `shutdown`
/// is cancelled; returns the address it listens on.
pub async fn spawn_local(
    fake: FakeOllama,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((addr, tokio::spawn(serve(listener, fake, shutdown))))
}

/// The fake's HTTP routes.
pub fn router(fake: FakeOllama) -> Router {
    Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/generate", post(generate))
        .route("/api/chat", post(chat))
        .route("/v1/models", get(openai_models))
        .route("/v1/completions", post(openai_completions))
        .route("/v1/chat/completions", post(openai_chat))
        .with_state(Arc::new(fake))
}

type Fake = State<Arc<FakeOllama>>;

/// One chat message, as both APIs write it.
#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

/// The body of `/api/generate` (the fields the fake reads).
#[derive(Deserialize)]
struct GenerateBody {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    /// Ollama streams unless told not to.
    stream: Option<bool>,
    options: Option<Value>,
}

/// The body of `/api/chat`.
#[derive(Deserialize)]
struct ChatBody {
    model: String,
    messages: Vec<Message>,
    stream: Option<bool>,
    options: Option<Value>,
}

/// The body of `/v1/completions`.
#[derive(Deserialize)]
struct OpenaiCompletionBody {
    model: String,
    prompt: String,
    /// OpenAI does not stream unless told to.
    stream: Option<bool>,
    max_tokens: Option<u64>,
}

/// The body of `/v1/chat/completions`.
#[derive(Deserialize)]
struct OpenaiChatBody {
    model: String,
    messages: Vec<Message>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
}

/// An Ollama-style error: `{"error": message}`.
fn ollama_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// An OpenAI-style error: `{"error": {"message", "type", ...}}`.
fn openai_error(status: StatusCode, message: impl Into<String>) -> Response {
    let kind = if status.is_server_error() {
        "api_error"
    } else {
        "invalid_request_error"
    };
    let body = json!({
        "error": { "message": message.into(), "type": kind, "param": null, "code": null }
    });
    (status, Json(body)).into_response()
}

/// Ollama's message for a model it does not have.
fn not_found(model: &str) -> String {
    format!("model {model:?} not found, try pulling it first")
}

/// Parse a JSON request body, or say what is wrong with it.
fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

/// An answer cut into pieces, with its counts.
struct Answer {
    pieces: Vec<String>,
    prompt_tokens: u64,
    /// `length` when cut short by a token limit, else `stop`.
    done_reason: &'static str,
}

impl Answer {
    /// The answer `text` to a prompt of `prompt_words` words, stopped after
    /// `limit` pieces if given.
    fn new(text: &str, prompt_words: usize, limit: Option<u64>) -> Self {
        let mut pieces: Vec<String> = text
            .split_inclusive(char::is_whitespace)
            .map(str::to_string)
            .collect();
        let mut done_reason = "stop";
        if let Some(limit) = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)) {
            if pieces.len() > limit {
                pieces.truncate(limit);
                done_reason = "length";
            }
        }
        Answer {
            pieces,
            prompt_tokens: prompt_words as u64,
            done_reason,
        }
    }

    fn text(&self) -> String {
        self.pieces.concat()
    }

    fn completion_tokens(&self) -> u64 {
        self.pieces.len() as u64
    }
}

/// The generate answer (see the module docs).
fn generate_text(fake: &FakeOllama, model: &str, system: Option<&str>, prompt: &str) -> String {
    match system {
        Some(system) => format!("[{}/{model}] {system}\n\n{prompt}", fake.name),
        None => format!("[{}/{model}] {prompt}", fake.name),
    }
}

/// The chat answer (see the module docs).
fn chat_answer(fake: &FakeOllama, model: &str, messages: &[Message], limit: Option<u64>) -> Answer {
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map_or("", |m| m.content.as_str());
    let words = messages
        .iter()
        .map(|m| m.content.split_whitespace().count())
        .sum();
    Answer::new(
        &format!("[{}/{model}] {last_user}", fake.name),
        words,
        limit,
    )
}

/// The current time as Ollama writes it.
fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// The current time in Unix seconds, as OpenAI writes it.
fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A streamed body of `lines`, `delay` apart, with `content_type`.
fn paced(lines: Vec<String>, delay: Duration, content_type: &'static str) -> Response {
    let stream =
        futures::stream::iter(lines.into_iter().enumerate()).then(move |(i, line)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(Bytes::from(line))
        });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `num_predict` from Ollama options.
fn num_predict(options: Option<&Value>) -> Option<u64> {
    options?.get("num_predict")?.as_u64()
}

/// `GET /api/tags`: every model.
async fn tags(State(fake): Fake) -> Response {
    let models: Vec<Value> = fake
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m, "model": m, "modified_at": "2024-05-01T00:00:00Z",
                "size": 4_661_224_676u64, "digest": format!("fake-{m}"),
                "details": { "format": "gguf", "family": "fake", "parameter_size": "8B" }
            })
        })
        .collect();
    Json(json!({ "models": models })).into_response()
}

/// `GET /api/ps`: the loaded models.
async fn ps(State(fake): Fake) -> Response {
    let models: Vec<Value> = fake
        .loaded
        .iter()
        .map(|m| {
            json!({
                "name": m, "model": m, "size": 5_000_000_000u64,
                "size_vram": 5_000_000_000u64, "expires_at": "2099-01-01T00:00:00Z"
            })
        })
        .collect();
    Json(json!({ "models": models })).into_response()
}

/// Ollama's streamed or whole answer; `chat` says whether it is a chat
/// (pieces in `message.content`) or a generate (pieces in `response`).
fn ollama_answer(
    fake: &FakeOllama,
    model: &str,
    answer: Answer,
    stream: bool,
    chat: bool,
) -> Response {
    let piece = |text: &str| {
        if chat {
            json!({ "model": model, "created_at": now(),
                    "message": { "role": "assistant", "content": text }, "done": false })
        } else {
            json!({ "model": model, "created_at": now(), "response": text, "done": false })
        }
    };
    let mut last = piece("");
    last["done"] = json!(true);
    last["done_reason"] = json!(answer.done_reason);
    last["prompt_eval_count"] = json!(answer.prompt_tokens);
    last["eval_count"] = json!(answer.completion_tokens());
    last["total_duration"] = json!(1_000_000u64);
    if !stream {
        let text = answer.text();
        if chat {
            last["message"]["content"] = json!(text);
        } else {
            last["response"] = json!(text);
        }
        return Json(last).into_response();
    }
    let mut lines: Vec<String> = answer
        .pieces
        .iter()
        .map(|p| format!("{}\n", piece(p)))
        .collect();
    lines.push(format!("{last}\n"));
    paced(
        lines,
        Duration::from_millis(fake.delay_ms),
        "application/x-ndjson",
    )
}

/// `POST /api/generate`.
async fn generate(State(fake): Fake, body: Bytes) -> Response {
    let req: GenerateBody = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return ollama_error(StatusCode::BAD_REQUEST, e),
    };
    if fake.resolve(&req.model).is_none() {
        return ollama_error(StatusCode::NOT_FOUND, not_found(&req.model));
    }
    let text = generate_text(&fake, &req.model, req.system.as_deref(), &req.prompt);
    let words = req
        .system
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .count()
        + req.prompt.split_whitespace().count();
    let answer = Answer::new(&text, words, num_predict(req.options.as_ref()));
    ollama_answer(&fake, &req.model, answer, req.stream.unwrap_or(true), false)
}

/// `POST /api/chat`.
async fn chat(State(fake): Fake, body: Bytes) -> Response {
    let req: ChatBody = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return ollama_error(StatusCode::BAD_REQUEST, e),
    };
    if fake.resolve(&req.model).is_none() {
        return ollama_error(StatusCode::NOT_FOUND, not_found(&req.model));
    }
    let answer = chat_answer(
        &fake,
        &req.model,
        &req.messages,
        num_predict(req.options.as_ref()),
    );
    ollama_answer(&fake, &req.model, answer, req.stream.unwrap_or(true), true)
}

/// `GET /v1/models`.
async fn openai_models(State(fake): Fake) -> Response {
    let data: Vec<Value> = fake
        .models
        .iter()
        .map(|m| json!({ "id": m, "object": "model", "created": 1_714_521_600, "owned_by": "library" }))
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// An OpenAI streamed (SSE) or whole answer; `chat` says whether it is a
/// chat completion (`message` / `delta`) or a text completion (`text`).
fn openai_answer(
    fake: &FakeOllama,
    model: &str,
    answer: Answer,
    stream: bool,
    chat: bool,
) -> Response {
    let (id, object) = if chat {
        ("chatcmpl-fake", "chat.completion")
    } else {
        ("cmpl-fake", "text_completion")
    };
    let usage = json!({
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens(),
        "total_tokens": answer.prompt_tokens + answer.completion_tokens(),
    });
    if !stream {
        let text = answer.text();
        let choice = if chat {
            json!({ "index": 0, "message": { "role": "assistant", "content": text },
                    "finish_reason": answer.done_reason })
        } else {
            json!({ "index": 0, "text": text, "finish_reason": answer.done_reason })
        };
        return Json(json!({
            "id": id, "object": object, "created": unix_now(), "model": model,
            "choices": [choice], "usage": usage,
        }))
        .into_response();
    }
    let chunk_object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let created = unix_now();
    let event = |text: &str, finish: Option<&str>| {
        let choice = if chat {
            json!({ "index": 0, "delta": { "role": "assistant", "content": text },
                    "finish_reason": finish })
        } else {
            json!({ "index": 0, "text": text, "finish_reason": finish })
        };
        let chunk = json!({
            "id": id, "object": chunk_object, "created": created, "model": model,
            "choices": [choice],
        });
        format!("data: {chunk}\n\n")
    };
    let mut lines: Vec<String> = answer.pieces.iter().map(|p| event(p, None)).collect();
    lines.push(event("", Some(answer.done_reason)));
    lines.push("data: [DONE]\n\n".to_string());
    paced(
        lines,
        Duration::from_millis(fake.delay_ms),
        "text/event-stream",
    )
}

/// `POST /v1/completions`.
async fn openai_completions(State(fake): Fake, body: Bytes) -> Response {
    let req: OpenaiCompletionBody = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return openai_error(StatusCode::BAD_REQUEST, e),
    };
    if fake.resolve(&req.model).is_none() {
        return openai_error(StatusCode::NOT_FOUND, not_found(&req.model));
    }
    let text = generate_text(&fake, &req.model, None, &req.prompt);
    let answer = Answer::new(&text, req.prompt.split_whitespace().count(), req.max_tokens);
    openai_answer(
        &fake,
        &req.model,
        answer,
        req.stream.unwrap_or(false),
        false,
    )
}

/// `POST /v1/chat/completions`.
async fn openai_chat(State(fake): Fake, body: Bytes) -> Response {
    let req: OpenaiChatBody = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return openai_error(StatusCode::BAD_REQUEST, e),
    };
    if fake.resolve(&req.model).is_none() {
        return openai_error(StatusCode::NOT_FOUND, not_found(&req.model));
    }
    let answer = chat_answer(&fake, &req.model, &req.messages, req.max_tokens);
    openai_answer(&fake, &req.model, answer, req.stream.unwrap_or(false), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running fake and a client for it; the fake stops on drop.
    struct Running {
        base: String,
        client: reqwest::Client,
        _stop: tokio_util::sync::DropGuard,
    }

    impl Running {
        async fn start(fake: FakeOllama) -> Self {
            let stop = CancellationToken::new();
            let (addr, _) = spawn_local(fake, stop.clone()).await.unwrap();
            Running {
                base: format!("http://{addr}"),
                client: reqwest::Client::builder().no_proxy().build().unwrap(),
                _stop: stop.drop_guard(),
            }
        }

        async fn get(&self, path: &str) -> (u16, String) {
            let r = self
                .client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }

        async fn post(&self, path: &str, body: Value) -> (u16, String, String) {
            let r = self
                .client
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .unwrap();
            let content_type = r
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (r.status().as_u16(), content_type, r.text().await.unwrap())
        }
    }

    fn box_fake() -> FakeOllama {
        FakeOllama {
            loaded: vec!["llama3:latest".into()],
            delay_ms: 1,
            ..FakeOllama::new("box", &["llama3:latest", "phi3:mini"])
        }
    }

    fn json_lines(body: &str) -> Vec<Value> {
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn answers_like_ollama_at_the_root_and_lists_models() {
        let f = Running::start(box_fake()).await;
        assert_eq!(f.get("/").await, (200, "Ollama is running".to_string()));
        let (status, tags) = f.get("/api/tags").await;
        assert_eq!(status, 200);
        let tags: Value = serde_json::from_str(&tags).unwrap();
        let names: Vec<_> = tags["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["llama3:latest", "phi3:mini"]);
        let ps: Value = serde_json::from_str(&f.get("/api/ps").await.1).unwrap();
        assert_eq!(ps["models"][0]["name"], "llama3:latest");
        assert_eq!(ps["models"].as_array().unwrap().len(), 1);
        let models: Value = serde_json::from_str(&f.get("/v1/models").await.1).unwrap();
        assert_eq!(models["data"][1]["id"], "phi3:mini");
    }

    #[tokio::test]
    async fn generate_streams_one_word_per_line_then_done() {
        let f = Running::start(box_fake()).await;
        // Ollama streams by default.
        let (status, content_type, body) = f
            .post(
                "/api/generate",
                json!({ "model": "llama3", "prompt": "hi  there" }),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "application/x-ndjson");
        let lines = json_lines(&body);
        let pieces: Vec<_> = lines[..lines.len() - 1]
            .iter()
            .map(|l| {
                assert_eq!(l["done"], false);
                assert_eq!(l["model"], "llama3");
                l["response"].as_str().unwrap()
            })
            .collect();
        assert_eq!(pieces, vec!["[box/llama3] ", "hi ", " ", "there"]);
        let done = lines.last().unwrap();
        assert_eq!(done["done"], true);
        assert_eq!(done["done_reason"], "stop");
        assert_eq!(done["prompt_eval_count"], 2);
        assert_eq!(done["eval_count"], 4);

        let (_, _, body) = f
            .post(
                "/api/generate",
                json!({ "model": "llama3:latest", "prompt": "a b c", "stream": false,
                        "options": { "num_predict": 2 } }),
            )
            .await;
        let whole: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(whole["response"], "[box/llama3:latest] a ");
        assert_eq!(whole["done_reason"], "length");
    }

    #[tokio::test]
    async fn chat_answers_the_last_user_message() {
        let f = Running::start(box_fake()).await;
        let messages = json!([
            { "role": "user", "content": "first" },
            { "role": "assistant", "content": "ok" },
            { "role": "user", "content": "second one" },
        ]);
        let (_, _, body) = f
            .post(
                "/api/chat",
                json!({ "model": "phi3:mini", "messages": messages, "stream": false }),
            )
            .await;
        let whole: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(whole["message"]["content"], "[box/phi3:mini] second one");
        assert_eq!(whole["prompt_eval_count"], 4);

        let (_, content_type, body) = f
            .post(
                "/v1/chat/completions",
                json!({ "model": "phi3:mini", "messages": messages, "stream": true }),
            )
            .await;
        assert_eq!(content_type, "text/event-stream");
        let events: Vec<_> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"));
        let text: String = events[..events.len() - 1]
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(text, "[box/phi3:mini] second one");
    }

    #[tokio::test]
    async fn unknown_models_and_bad_bodies_are_refused() {
        let f = Running::start(box_fake()).await;
        let (status, _, body) = f
            .post(
                "/api/generate",
                json!({ "model": "mistral", "prompt": "x" }),
            )
            .await;
        assert_eq!(status, 404);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({ "error": "model \"mistral\" not found, try pulling it first" })
        );
        // "phi3" is not "phi3:mini": only `:latest` may be left out.
        let (status, _, _) = f
            .post("/api/chat", json!({ "model": "phi3", "messages": [] }))
            .await;
        assert_eq!(status, 404);
        let (status, _, body) = f
            .post(
                "/v1/completions",
                json!({ "model": "mistral", "prompt": "x" }),
            )
            .await;
        assert_eq!(status, 404);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mistral"));
        let (status, _, body) = f.post("/api/generate", json!({ "prompt": "x" })).await;
        assert_eq!(status, 400);
        assert!(body.contains("model"), "{body}");
    }

    #[tokio::test]
    async fn shutdown_stops_the_server() {
        let stop = CancellationToken::new();
        let (addr, task) = spawn_local(box_fake(), stop.clone()).await.unwrap();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
