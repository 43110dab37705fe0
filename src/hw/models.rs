//! Local model servers: discovery of the models an Ollama or
//! OpenAI-compatible server serves, and forwarding inference calls to it.
//!
//! A node that lends a model server talks to it through one
//! [`ModelServer`]: [`ModelServer::discover`] finds what it serves (for the
//! node's announcement), and [`ModelServer::infer`] runs a peer's
//! [`InferenceRequest`] on it, handing each piece of a streamed answer to a
//! bounded channel as it arrives.
//!
//! Everything the server sends is bounded: a streamed answer is read line
//! by line with each line capped at [`MAX_LINE_BYTES`], the text kept is
//! capped by the caller's `max_answer`, and a non-streamed answer or
//! discovery reply has a size cap of its own. The tests run against the
//! stand-in server in [`crate::sim::fake_ollama`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::model::{ChatMessage, InferenceCall, InferenceRequest};

/// Which API the local model server speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelApi {
    /// Ollama: `/api/tags`, `/api/ps`, `/api/generate`, `/api/chat`.
    #[default]
    Ollama,
    /// OpenAI-compatible (vLLM, llama.cpp server, LM Studio, LocalAI):
    /// `/v1/models`, `/v1/completions`, `/v1/chat/completions`.
    Openai,
}

/// The longest line a streamed answer may contain (one NDJSON object or
/// one SSE `data:` line). A model server sends one piece of the answer per
/// line, so real lines are a few hundred bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The largest discovery reply (`/api/tags`, `/api/ps`, `/v1/models`)
/// read. Each model takes a few hundred bytes, so this is thousands of
/// models.
pub const MAX_DISCOVERY_BYTES: usize = 4 << 20;

/// How much of an error reply's body an [`ModelError::Http`] keeps.
const ERROR_BODY_BYTES: usize = 500;

/// How much of an error reply is read, at most, to find its message.
const ERROR_READ_BYTES: usize = 64 << 10;

/// What went wrong talking to the model server.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The server could not be reached or stopped answering: connection
    /// refused or reset, or nothing received within the timeout.
    #[error("model server at {url} is down: {reason}")]
    Down { url: String, reason: String },
    /// The server answered with an error status. `body` is the error
    /// message it gave (its JSON `error`, or the start of the body), at
    /// most 500 bytes.
    #[error("model server answered {status} for {url}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    /// The server answered, but not in the shape its API promises, or it
    /// reported an error in the middle of a streamed answer.
    #[error("bad answer from model server at {url}: {reason}")]
    BadResponse { url: String, reason: String },
    /// The server does not serve this model (Ollama's "model not found,
    /// try pulling it first").
    #[error("the model server does not serve model {0:?}")]
    UnknownModel(String),
    /// A reply, or one line of a streamed reply, was larger than allowed.
    #[error("{what} from model server at {url} is larger than {limit} bytes")]
    TooLarge {
        url: String,
        /// What was too large: "a line of the answer", "the answer", ...
        what: &'static str,
        limit: usize,
    },
    /// The request itself is invalid (for example, `options` is not a JSON
    /// object); nothing was sent.
    #[error("bad inference request: {0}")]
    BadRequest(String),
}

/// The models a server serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// Every model it can run, sorted and deduplicated. An Ollama name
    /// ending in `:latest` is listed both in full and bare (`llama3:latest`
    /// and `llama3`), because Ollama accepts either in a request.
    pub models: Vec<String>,
    /// The models loaded in memory now, named the same way (Ollama's
    /// `/api/ps`; always empty for OpenAI-compatible servers, which do not
    /// say).
    pub loaded: Vec<String>,
}

/// The answer to an inference call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InferenceAnswer {
    /// The whole answer, at most `max_answer` bytes (cut at a character
    /// boundary).
    pub text: String,
    /// Whether the answer was longer than `max_answer` and `text` is only
    /// its start.
    pub truncated: bool,
    /// Why the model stopped, as the server says (`stop`, `length`, ...).
    pub done_reason: Option<String>,
    /// Tokens in the prompt, when the server reports them.
    pub prompt_tokens: Option<u64>,
    /// Tokens in the answer, when the server reports them.
    pub completion_tokens: Option<u64>,
}

/// A client for the local model server.
///
/// Cheap to clone (the HTTP client's connection pool is shared).
#[derive(Clone, Debug)]
pub struct ModelServer {
    api: ModelApi,
    /// The base URL, without a trailing slash (and, for OpenAI-compatible
    /// servers, without a trailing `/v1`).
    base: String,
    timeout: Duration,
    client: reqwest::Client,
}

impl ModelServer {
    /// A client for the server at `base_url`, such as
    /// `http://127.0.0.1:11434`.
    ///
    /// The URL must be `http` with a host; a trailing slash is fine, and
    /// for [`ModelApi::Openai`] so is a trailing `/v1`, which is how such
    /// servers' addresses are usually written. `https` is refused: this
    /// build has no TLS, and a local model server is reached over plain
    /// HTTP.
    ///
    /// `timeout` bounds connecting, each whole discovery call and
    /// non-streamed inference call, and, for a streamed answer, the wait
    /// for each next piece (not the whole answer, so long generations
    /// work).
    pub fn new(api: ModelApi, base_url: &str, timeout: Duration) -> Result<Self, String> {
        let url = reqwest::Url::parse(base_url.trim())
            .map_err(|e| format!("model server URL {base_url:?} is not a URL: {e}"))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "model server URL {base_url:?} uses https, but lanswarm is built without \
                     TLS; use http (the model server runs on this machine)"
                ))
            }
            other => {
                return Err(format!(
                    "model server URL {base_url:?} has scheme {other:?}; expected http"
                ))
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("model server URL {base_url:?} has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "model server URL {base_url:?} must not have a query or fragment"
            ));
        }
        if timeout.is_zero() {
            return Err("model server timeout must be more than zero".to_string());
        }
        let mut base = url.as_str().trim_end_matches('/').to_string();
        if api == ModelApi::Openai {
            if let Some(stripped) = base.strip_suffix("/v1") {
                base = stripped.to_string();
            }
        }
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            // The server is local; a proxy from the environment would only
            // get in the way.
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(ModelServer {
            api,
            base,
            timeout,
            client,
        })
    }

    /// The base URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Which API the server speaks.
    pub fn api(&self) -> ModelApi {
        self.api
    }

    /// The models the server serves, and those loaded now.
    pub async fn discover(&self) -> Result<Discovered, ModelError> {
        match self.api {
            ModelApi::Ollama => {
                let tags = self.get_json("/api/tags").await?;
                let models = ollama_names(&self.endpoint("/api/tags"), &tags)?;
                let loaded = match self.get_json("/api/ps").await {
                    Ok(ps) => ollama_names(&self.endpoint("/api/ps"), &ps)?,
                    // Older Ollama has no /api/ps.
                    Err(ModelError::Http { status: 404, .. }) => Vec::new(),
                    Err(e) => return Err(e),
                };
                Ok(Discovered { models, loaded })
            }
            ModelApi::Openai => {
                let url = self.endpoint("/v1/models");
                let list = self.get_json("/v1/models").await?;
                let data = list
                    .get("data")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad(&url, "no \"data\" list"))?;
                let mut models = data
                    .iter()
                    .map(|m| {
                        m.get("id")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .ok_or_else(|| bad(&url, "a model has no \"id\""))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                models.sort();
                models.dedup();
                Ok(Discovered {
                    models,
                    loaded: Vec::new(),
                })
            }
        }
    }

    /// Run an inference call and return its whole answer.
    ///
    /// When `req.stream` is set, the server is asked for a streamed answer
    /// and each piece is sent to `chunks` (if given) as it arrives; the
    /// pieces sent concatenate to exactly the returned text. When it is
    /// not, the server is asked for one non-streamed answer and nothing is
    /// sent to `chunks`.
    ///
    /// The text kept is capped at `max_answer` bytes: past that the call
    /// reads the server's answer to its end (for the token counts and done
    /// reason) but keeps and sends nothing more, and sets `truncated`. If
    /// the receiver of `chunks` goes away the call goes on without sending.
    ///
    /// The model name is sent as the requester wrote it. For Ollama,
    /// `req.options` goes in its `options` object. For an OpenAI-compatible
    /// server its keys are merged into the top level of the body
    /// (`temperature`, `max_tokens`, ...), never replacing `model`,
    /// `prompt`, `messages` or `stream`; and since `/v1/completions` has no
    /// system prompt, a generate call's `system` is put before the prompt,
    /// separated by a blank line.
    pub async fn infer(
        &self,
        req: &InferenceRequest,
        max_answer: usize,
        chunks: Option<mpsc::Sender<String>>,
    ) -> Result<InferenceAnswer, ModelError> {
        let options = parse_options(req.options.as_deref())?;
        let chat = matches!(req.call, InferenceCall::Chat { .. });
        let (path, body) = match self.api {
            ModelApi::Ollama => ollama_body(req, options),
            ModelApi::Openai => openai_body(req, options),
        };
        let url = self.endpoint(path);
        let mut request = self.client.post(&url).json(&body);
        if !req.stream {
            request = request.timeout(self.timeout);
        }
        let mut response = request.send().await.map_err(|e| self.down(&e))?;
        let status = response.status();
        if !status.is_success() {
            let (is_json, message) = self.error_body(&mut response).await;
            if status.as_u16() == 404 && is_json {
                return Err(ModelError::UnknownModel(req.model.clone()));
            }
            return Err(ModelError::Http {
                url,
                status: status.as_u16(),
                body: message,
            });
        }

        let mut answer = Collector::new(max_answer, chunks.filter(|_| req.stream));
        if req.stream {
            let mut parser = StreamParser::new(self.api, chat);
            let mut lines = LineSplitter::new(MAX_LINE_BYTES);
            let mut batch = Vec::new();
            while let Some(bytes) = self.next_chunk(&mut response).await? {
                lines
                    .push(&bytes, &mut batch)
                    .map_err(|limit| too_large(&url, "a line of the answer", limit))?;
                for line in batch.drain(..) {
                    if let Some(piece) = parser.line(&line).map_err(|r| bad(&url, r))? {
                        answer.push(piece).await;
                    }
                }
            }
            if let Some(line) = lines.finish() {
                if let Some(piece) = parser.line(&line).map_err(|r| bad(&url, r))? {
                    answer.push(piece).await;
                }
            }
            parser.finish().map_err(|r| bad(&url, r))?;
            Ok(answer.into_answer(parser.meta))
        } else {
            let limit = MAX_LINE_BYTES.saturating_add(max_answer.saturating_mul(2));
            let bytes = self
                .read_body(&mut response, limit)
                .await?
                .map_err(|limit| too_large(&url, "the answer", limit))?;
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| bad(&url, format!("the answer is not JSON: {e}")))?;
            let (text, meta) = parse_whole(self.api, chat, &value).map_err(|r| bad(&url, r))?;
            answer.push(text).await;
            Ok(answer.into_answer(meta))
        }
    }

    /// The full URL of `path` on this server.
    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path` and parse the JSON reply, with the whole-call timeout.
    async fn get_json(&self, path: &str) -> Result<Value, ModelError> {
        let url = self.endpoint(path);
        let mut response = self
            .client
            .get(&url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.down(&e))?;
        let status = response.status();
        if !status.is_success() {
            let (_, message) = self.error_body(&mut response).await;
            return Err(ModelError::Http {
                url,
                status: status.as_u16(),
                body: message,
            });
        }
        let bytes = self
            .read_body(&mut response, MAX_DISCOVERY_BYTES)
            .await?
            .map_err(|limit| too_large(&url, "the reply", limit))?;
        serde_json::from_slice(&bytes).map_err(|e| bad(&url, format!("the reply is not JSON: {e}")))
    }

    /// The next piece of a response body, waiting at most the timeout.
    async fn next_chunk(
        &self,
        response: &mut reqwest::Response,
    ) -> Result<Option<Vec<u8>>, ModelError> {
        match tokio::time::timeout(self.timeout, response.chunk()).await {
            Ok(Ok(bytes)) => Ok(bytes.map(|b| b.to_vec())),
            Ok(Err(e)) => Err(self.down(&e)),
            Err(_) => Err(ModelError::Down {
                url: self.base.clone(),
                reason: format!("sent nothing for {:?}", self.timeout),
            }),
        }
    }

    /// A whole response body; the inner `Err` carries `limit` when the
    /// body is larger.
    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        limit: usize,
    ) -> Result<Result<Vec<u8>, usize>, ModelError> {
        let mut body = Vec::new();
        while let Some(bytes) = self.next_chunk(response).await? {
            if body.len() + bytes.len() > limit {
                return Ok(Err(limit));
            }
            body.extend_from_slice(&bytes);
        }
        Ok(Ok(body))
    }

    /// Whether an error reply is JSON with an `error`, and its message (or
    /// the start of its body), at most [`ERROR_BODY_BYTES`].
    async fn error_body(&self, response: &mut reqwest::Response) -> (bool, String) {
        let mut body = Vec::new();
        while body.len() < ERROR_READ_BYTES {
            match self.next_chunk(response).await {
                Ok(Some(bytes)) => body.extend_from_slice(&bytes),
                _ => break,
            }
        }
        let (is_json, message) = match error_message(&body) {
            Some(m) => (true, m),
            None => (false, String::from_utf8_lossy(&body).trim().to_string()),
        };
        (
            is_json,
            truncate_str(&message, ERROR_BODY_BYTES).to_string(),
        )
    }

    /// [`ModelError::Down`] for a transport error.
    fn down(&self, e: &reqwest::Error) -> ModelError {
        ModelError::Down {
            url: self.base.clone(),
            reason: describe_transport_error(e, self.timeout),
        }
    }
}

/// A short reason for a transport error: "connection refused", "no answer
/// within 30s", or the innermost cause.
fn describe_transport_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {timeout:?}");
    }
    let mut innermost: &dyn std::error::Error = e;
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            return match io.kind() {
                ErrorKind::ConnectionRefused => "connection refused".to_string(),
                ErrorKind::ConnectionReset => "connection reset".to_string(),
                ErrorKind::ConnectionAborted => "connection aborted".to_string(),
                ErrorKind::TimedOut => format!("no answer within {timeout:?}"),
                _ => io.to_string(),
            };
        }
        innermost = err;
        source = err.source();
    }
    innermost.to_string()
}

/// The message of a JSON error body: Ollama's `{"error": "..."}` or
/// OpenAI's `{"error": {"message": "..."}}`.
fn error_message(body: &[u8]) -> Option<String> {
    server_error(&serde_json::from_slice(body).ok()?)
}

/// The message of an `error` in a JSON reply, if it has one.
fn server_error(value: &Value) -> Option<String> {
    match value.get("error")? {
        Value::String(s) => Some(s.clone()),
        error @ Value::Object(o) => Some(
            o.get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_string),
        ),
        other => Some(other.to_string()),
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// [`ModelError::BadResponse`].
fn bad(url: &str, reason: impl Into<String>) -> ModelError {
    ModelError::BadResponse {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// [`ModelError::TooLarge`].
fn too_large(url: &str, what: &'static str, limit: usize) -> ModelError {
    ModelError::TooLarge {
        url: url.to_string(),
        what,
        limit,
    }
}

/// The model names in an Ollama `/api/tags` or `/api/ps` reply, with bare
/// names added for `:latest` ones, sorted and deduplicated.
fn ollama_names(url: &str, reply: &Value) -> Result<Vec<String>, ModelError> {
    let list = match reply.get("models") {
        Some(Value::Array(list)) => list.as_slice(),
        // Ollama writes `"models": null` when there are none.
        Some(Value::Null) | None => &[],
        Some(_) => return Err(bad(url, "\"models\" is not a list")),
    };
    let mut names = Vec::new();
    for m in list {
        let name = m
            .get("name")
            .or_else(|| m.get("model"))
            .and_then(Value::as_str)
            .ok_or_else(|| bad(url, "a model has no \"name\""))?;
        if let Some(bare) = name.strip_suffix(":latest") {
            names.push(bare.to_string());
        }
        names.push(name.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The request's `options` as a JSON object, if any.
fn parse_options(options: Option<&str>) -> Result<Option<Map<String, Value>>, ModelError> {
    let Some(text) = options else {
        return Ok(None);
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(ModelError::BadRequest(
            "options must be a JSON object".to_string(),
        )),
        Err(e) => Err(ModelError::BadRequest(format!(
            "options are not valid JSON: {e}"
        ))),
    }
}

/// Chat messages as JSON.
fn messages_json(messages: &[ChatMessage]) -> Value {
    Value::Array(
        messages
            .iter()
            .map(|m| json!({ "role": m.role, "content": m.content }))
            .collect(),
    )
}

/// The Ollama endpoint and body for a request.
fn ollama_body(
    req: &InferenceRequest,
    options: Option<Map<String, Value>>,
) -> (&'static str, Value) {
    let (path, mut body) = match &req.call {
        InferenceCall::Generate { prompt, system } => {
            let mut body = json!({ "model": req.model, "prompt": prompt, "stream": req.stream });
            if let Some(system) = system {
                body["system"] = json!(system);
            }
            ("/api/generate", body)
        }
        InferenceCall::Chat { messages } => (
            "/api/chat",
            json!({ "model": req.model, "messages": messages_json(messages), "stream": req.stream }),
        ),
    };
    if let Some(options) = options {
        body["options"] = Value::Object(options);
    }
    (path, body)
}

/// The OpenAI-compatible endpoint and body for a request.
fn openai_body(
    req: &InferenceRequest,
    options: Option<Map<String, Value>>,
) -> (&'static str, Value) {
    let (path, mut body) = match &req.call {
        InferenceCall::Generate { prompt, system } => {
            let prompt = match system {
                Some(system) => format!("{system}\n\n{prompt}"),
                None => prompt.clone(),
            };
            (
                "/v1/completions",
                json!({ "model": req.model, "prompt": prompt, "stream": req.stream }),
            )
        }
        InferenceCall::Chat { messages } => (
            "/v1/chat/completions",
            json!({ "model": req.model, "messages": messages_json(messages), "stream": req.stream }),
        ),
    };
    if let (Some(options), Some(map)) = (options, body.as_object_mut()) {
        for (key, value) in options {
            map.entry(key).or_insert(value);
        }
    }
    (path, body)
}

/// What the server says about an answer besides its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct AnswerMeta {
    done_reason: Option<String>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl AnswerMeta {
    /// Take the token counts from an OpenAI `usage` object, if present.
    fn openai_usage(&mut self, value: &Value) {
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            self.prompt_tokens = usage.get("prompt_tokens").and_then(Value::as_u64);
            self.completion_tokens = usage.get("completion_tokens").and_then(Value::as_u64);
        }
    }

    /// Take the done reason and token counts from Ollama's final object.
    fn ollama_done(&mut self, value: &Value) {
        self.done_reason = value
            .get("done_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        self.prompt_tokens = value.get("prompt_eval_count").and_then(Value::as_u64);
        self.completion_tokens = value.get("eval_count").and_then(Value::as_u64);
    }
}

/// The text and details of a non-streamed answer.
fn parse_whole(api: ModelApi, chat: bool, value: &Value) -> Result<(String, AnswerMeta), String> {
    if let Some(message) = server_error(value) {
        return Err(format!("the model server reported an error: {message}"));
    }
    let mut meta = AnswerMeta::default();
    let text = match api {
        ModelApi::Ollama => {
            meta.ollama_done(value);
            let text = if chat {
                value.get("message").and_then(|m| m.get("content"))
            } else {
                value.get("response")
            };
            text.and_then(Value::as_str).ok_or(if chat {
                "no \"message.content\" in the answer"
            } else {
                "no \"response\" in the answer"
            })?
        }
        ModelApi::Openai => {
            meta.openai_usage(value);
            let choice = value
                .get("choices")
                .and_then(|c| c.get(0))
                .ok_or("no \"choices\" in the answer")?;
            meta.done_reason = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            let text = if chat {
                choice.get("message").and_then(|m| m.get("content"))
            } else {
                choice.get("text")
            };
            match text {
                Some(Value::String(s)) => s,
                // A chat answer that is only tool calls has null content.
                Some(Value::Null) if chat => "",
                _ => {
                    return Err(if chat {
                        "no \"choices[0].message.content\" in the answer".to_string()
                    } else {
                        "no \"choices[0].text\" in the answer".to_string()
                    })
                }
            }
        }
    };
    Ok((text.to_string(), meta))
}

/// Splits a byte stream into lines, across chunk boundaries, with each line
/// capped. Lines are returned without `\n` or a trailing `\r`.
struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        LineSplitter {
            partial: Vec::new(),
            max,
        }
    }

    /// Add `bytes`, appending every line they complete to `out`; `Err`
    /// with the cap when a line is longer.
    fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), usize> {
        while let Some(at) = bytes.iter().position(|&b| b == b'\n') {
            self.extend(&bytes[..at])?;
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push(line);
            bytes = &bytes[at + 1..];
        }
        self.extend(bytes)
    }

    /// Add part of a line.
    fn extend(&mut self, bytes: &[u8]) -> Result<(), usize> {
        if self.partial.len() + bytes.len() > self.max {
            return Err(self.max);
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    /// The last line, if the stream did not end with a newline.
    fn finish(self) -> Option<Vec<u8>> {
        let mut line = self.partial;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        (!line.is_empty()).then_some(line)
    }
}

/// Reads the lines of a streamed answer: Ollama's NDJSON or OpenAI's SSE.
struct StreamParser {
    api: ModelApi,
    chat: bool,
    /// The server said the answer is complete (Ollama `"done": true`,
    /// OpenAI `data: [DONE]`); later lines are ignored.
    finished: bool,
    meta: AnswerMeta,
}

impl StreamParser {
    fn new(api: ModelApi, chat: bool) -> Self {
        StreamParser {
            api,
            chat,
            finished: false,
            meta: AnswerMeta::default(),
        }
    }

    /// Read one line; returns the piece of the answer it carries, if any.
    fn line(&mut self, line: &[u8]) -> Result<Option<String>, String> {
        if self.finished {
            return Ok(None);
        }
        let line = std::str::from_utf8(line).map_err(|_| "a line is not UTF-8".to_string())?;
        let line = line.trim();
        match self.api {
            ModelApi::Ollama => {
                if line.is_empty() {
                    return Ok(None);
                }
                let value = parse_line(line)?;
                let piece = if self.chat {
                    value.get("message").and_then(|m| m.get("content"))
                } else {
                    value.get("response")
                }
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
                if value.get("done").and_then(Value::as_bool) == Some(true) {
                    self.finished = true;
                    self.meta.ollama_done(&value);
                }
                Ok(piece)
            }
            ModelApi::Openai => {
                // SSE: only `data:` lines matter; blank lines end events,
                // and `event:`, `id:`, `retry:` and `:` comments are skipped.
                let Some(data) = line.strip_prefix("data:") else {
                    return Ok(None);
                };
                let data = data.trim_start();
                if data == "[DONE]" {
                    self.finished = true;
                    return Ok(None);
                }
                let value = parse_line(data)?;
                self.meta.openai_usage(&value);
                let Some(choice) = value.get("choices").and_then(|c| c.get(0)) else {
                    // A usage-only chunk has no choices.
                    return Ok(None);
                };
                if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                    self.meta.done_reason = Some(reason.to_string());
                }
                let piece = if self.chat {
                    choice.get("delta").and_then(|d| d.get("content"))
                } else {
                    choice.get("text")
                };
                Ok(piece
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string))
            }
        }
    }

    /// Check that the answer ended properly: Ollama sent its `done` object,
    /// or the OpenAI-compatible server sent `[DONE]` or a finish reason.
    fn finish(&self) -> Result<(), String> {
        if self.finished || (self.api == ModelApi::Openai && self.meta.done_reason.is_some()) {
            Ok(())
        } else {
            Err("the answer ended before the model server said it was done".to_string())
        }
    }
}

/// One JSON object of a stream; an `error` in it is the server's error.
fn parse_line(line: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        format!(
            "a line of the answer is not JSON ({e}): {}",
            truncate_str(line, 200)
        )
    })?;
    if let Some(message) = server_error(&value) {
        return Err(format!("the model server reported an error: {message}"));
    }
    Ok(value)
}

/// Gathers the answer's text up to the cap, forwarding what it keeps.
struct Collector {
    text: String,
    truncated: bool,
    max: usize,
    chunks: Option<mpsc::Sender<String>>,
}

impl Collector {
    fn new(max: usize, chunks: Option<mpsc::Sender<String>>) -> Self {
        Collector {
            text: String::new(),
            truncated: false,
            max,
            chunks,
        }
    }

    /// Keep `piece`, or as much of it as fits, and forward what was kept.
    async fn push(&mut self, piece: String) {
        if self.truncated || piece.is_empty() {
            return;
        }
        let room = self.max - self.text.len();
        let piece = if piece.len() > room {
            self.truncated = true;
            truncate_str(&piece, room).to_string()
        } else {
            piece
        };
        if piece.is_empty() {
            return;
        }
        self.text.push_str(&piece);
        if let Some(tx) = &self.chunks {
            if tx.send(piece).await.is_err() {
                self.chunks = None;
            }
        }
    }

    fn into_answer(self, meta: AnswerMeta) -> InferenceAnswer {
        InferenceAnswer {
            text: self.text,
            truncated: self.truncated,
            done_reason: meta.done_reason,
            prompt_tokens: meta.prompt_tokens,
            completion_tokens: meta.completion_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::fake_ollama::{self, FakeOllama};
    use tokio_util::sync::CancellationToken;

    const T: Duration = Duration::from_secs(10);

    /// A fake Ollama on 127.0.0.1, stopped when the token is dropped.
    struct Fake {
        url: String,
        _stop: tokio_util::sync::DropGuard,
    }

    async fn fake(delay_ms: u64) -> Fake {
        let fake = FakeOllama {
            name: "gpu-box".into(),
            models: vec!["llama3:latest".into(), "phi3:mini".into()],
            loaded: vec!["llama3:latest".into()],
            delay_ms,
        };
        let stop = CancellationToken::new();
        let (addr, _) = fake_ollama::spawn_local(fake, stop.clone()).await.unwrap();
        Fake {
            url: format!("http://{addr}/"),
            _stop: stop.drop_guard(),
        }
    }

    fn generate(model: &str, prompt: &str, stream: bool) -> InferenceRequest {
        InferenceRequest {
            model: model.into(),
            call: InferenceCall::Generate {
                prompt: prompt.into(),
                system: None,
            },
            stream,
            options: None,
        }
    }

    fn chat(model: &str, stream: bool) -> InferenceRequest {
        InferenceRequest {
            model: model.into(),
            call: InferenceCall::Chat {
                messages: vec![
                    ChatMessage {
                        role: "system".into(),
                        content: "be brief".into(),
                    },
                    ChatMessage {
                        role: "user".into(),
                        content: "what is a swarm".into(),
                    },
                ],
            },
            stream,
            options: None,
        }
    }

    /// Run `req`, collecting the streamed pieces.
    async fn run(
        server: &ModelServer,
        req: &InferenceRequest,
        max: usize,
    ) -> (Result<InferenceAnswer, ModelError>, Vec<String>) {
        let (tx, mut rx) = mpsc::channel(4);
        let collect = tokio::spawn(async move {
            let mut pieces = Vec::new();
            while let Some(p) = rx.recv().await {
                pieces.push(p);
            }
            pieces
        });
        let answer = tokio::time::timeout(T, server.infer(req, max, Some(tx)))
            .await
            .expect("infer timed out");
        (answer, collect.await.unwrap())
    }

    #[test]
    fn urls_are_validated() {
        let ok = |api, url| ModelServer::new(api, url, T).map(|s| s.url().to_string());
        assert_eq!(
            ok(ModelApi::Ollama, "http://127.0.0.1:11434/").unwrap(),
            "http://127.0.0.1:11434"
        );
        assert_eq!(
            ok(ModelApi::Ollama, "http://gpu-box:11434").unwrap(),
            "http://gpu-box:11434"
        );
        assert_eq!(
            ok(ModelApi::Openai, "http://127.0.0.1:8000/v1/").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            ok(ModelApi::Ollama, "http://host/ollama/").unwrap(),
            "http://host/ollama"
        );
        for bad in [
            "127.0.0.1:11434",
            "ftp://host/",
            "https://host/",
            "http://",
            "http://host/?a=b",
            "",
        ] {
            assert!(ok(ModelApi::Ollama, bad).is_err(), "{bad:?} accepted");
        }
        assert!(ModelServer::new(ModelApi::Ollama, "http://h", Duration::ZERO).is_err());
    }

    #[tokio::test]
    async fn discovers_models_and_loaded_ones() {
        let f = fake(0).await;
        let server = ModelServer::new(ModelApi::Ollama, &f.url, T).unwrap();
        let found = server.discover().await.unwrap();
        assert_eq!(found.models, vec!["llama3", "llama3:latest", "phi3:mini"]);
        assert_eq!(found.loaded, vec!["llama3", "llama3:latest"]);

        let server = ModelServer::new(ModelApi::Openai, &f.url, T).unwrap();
        let found = server.discover().await.unwrap();
        assert_eq!(found.models, vec!["llama3:latest", "phi3:mini"]);
        assert!(found.loaded.is_empty());
    }

    #[tokio::test]
    async fn generate_streamed_arrives_in_order_and_whole() {
        let f = fake(2).await;
        let server = ModelServer::new(ModelApi::Ollama, &f.url, T).unwrap();
        let req = generate("llama3", "tell me  a story", true);
        let (answer, pieces) = run(&server, &req, 1 << 20).await;
        let answer = answer.unwrap();
        assert_eq!(answer.text, "[gpu-box/llama3] tell me  a story");
        assert_eq!(
            pieces,
            vec!["[gpu-box/llama3] ", "tell ", "me ", " ", "a ", "story"]
        );
        assert_eq!(pieces.concat(), answer.text);
        assert!(!answer.truncated);
        assert_eq!(answer.done_reason.as_deref(), Some("stop"));
        assert_eq!(answer.prompt_tokens, Some(4));
        assert_eq!(answer.completion_tokens, Some(6));
    }

    #[tokio::test]
    async fn generate_not_streamed_sends_no_pieces() {
        let f = fake(0).await;
        let server = ModelServer::new(ModelApi::Ollama, &f.url, T).unwrap();
        let mut req = generate("llama3:latest", "hello", false);
        req.call = InferenceCall::Generate {
            prompt: "hello".into(),
            system: Some("you are terse".into()),
        };
        let (answer, pieces) = run(&server, &req, 1 << 20).await;
        let answer = answer.unwrap();
        assert_eq!(
            answer.text,
            "[gpu-box/llama3:latest] you are terse\n\nhello"
        );
        assert!(pieces.is_empty());
        assert_eq!(answer.done_reason.as_deref(), Some("stop"));
        assert_eq!(answer.prompt_tokens, Some(4));
    }

    #[tokio::test]
    async fn chat_streamed_answers_the_last_user_message() {
        let f = fake(1).await;
        let server = ModelServer::new(ModelApi::Ollama, &f.url, T).unwrap();
        let (answer, pieces) = run(&server, &chat("phi3:mini", true), 1 << 20).await;
        let answer = answer.unwrap();
        assert_eq!(answer.text, "[gpu-box/phi3:mini] what is a swarm");
        assert_eq!(pieces.len(), 5);
        assert_eq!(pieces.concat(), answer.text);

        let (answer, pieces) = run(&server, &chat("phi3:mini", false), 1 << 20).await;
        assert_eq!(answer.unwrap().text, "[gpu-box/phi3:mini] what is a swarm");
        assert!(pieces.is_empty());
    }

    #[tokio::test]
    async fn options_reach_the_server() {
        let f = fake(0).await;
        for api in [ModelApi::Ollama, ModelApi::Openai] {
            let server = ModelServer::new(api, &f.url, T).unwrap();
            // The fake stops after num_predict (Ollama) or max_tokens
            // (OpenAI) pieces, as a model would.
            let key = match api {
                ModelApi::Ollama => "num_predict",
                ModelApi::Openai => "max_tokens",
            };
            let mut req = generate("llama3", "one two three", true);
            req.options = Some(format!(r#"{{"{key}": 2, "model": "not-this-one"}}"#));
            let (answer, _) = run(&server, &req, 1 << 20).await;
            let answer = answer.unwrap();
            assert_eq!(answer.text, "[gpu-box/llama3] one ", "{api:?}");
            assert_eq!(answer.done_reason.as_deref(), Some("length"), "{api:?}");
        }

        let server = ModelServer::new(ModelApi::Ollama, &f.url, T).unwrap();
        for options in ["[1, 2]", "{not json"] {
            let mut req = generate("llama3", "hi", false);
            req.options = Some(options.into());
            let err = server.infer(&req, 100, None).await.unwrap_err();
            assert!(matches!(err, ModelError::BadRequest(_)), "{err}");
        }
    }

    #[tokio::test]
    async fn a_server_that_is_down_names_its_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let server = ModelServer::new(ModelApi::Ollama, &format!("http://{addr}"), T).unwrap();
        let err = server.discover().await.unwrap_err();
        assert!(matches!(err, ModelError::Down { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("model server at http://{addr} is down: connection refused")
        );
        let (answer, _) = run(&server, &generate("llama3", "hi", true), 100).await;
        assert!(matches!(answer, Err(ModelError::Down { .. })));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        // Accepts connections, then says nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let timeout = Duration::from_millis(200);
        let server =
            ModelServer::new(ModelApi::Ollama, &format!("http://{addr}"), timeout).unwrap();
        let err = server.discover().await.unwrap_err();
        assert!(
            err.to_string().ends_with("is down: no answer within 200ms"),
            "{err}"
        );
        let (answer, _) = run(&server, &generate("llama3", "hi", true), 100).await;
        assert!(matches!(answer, Err(ModelError::Down { .. })), "{answer:?}");
        hold.abort();
    }

    #[tokio::test]
    async fn an_unknown_model_is_reported_as_such() {
        let f = fake(0).await;
        for api in [ModelApi::Ollama, ModelApi::Openai] {
            let server = ModelServer::new(api, &f.url, T).unwrap();
            for stream in [true, false] {
                let (answer, _) = run(&server, &generate("mistral", "hi", stream), 100).await;
                match answer {
                    Err(ModelError::UnknownModel(m)) => assert_eq!(m, "mistral"),
                    other => panic!("{api:?}: {other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn a_missing_endpoint_is_an_http_error() {
        let f = fake(0).await;
        let server = ModelServer::new(ModelApi::Ollama, &format!("{}nowhere", f.url), T).unwrap();
        let err = server.discover().await.unwrap_err();
        match err {
            ModelError::Http { status, url, .. } => {
                assert_eq!(status, 404);
                assert!(url.ends_with("/nowhere/api/tags"), "{url}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn answers_are_cut_at_max_answer() {
        let f = fake(0).await;
        let server = ModelServer::new(ModelApi::Ollama, &f.url, T).unwrap();
        let req = generate("llama3", "alpha beta gamma", true);
        // "[gpu-box/llama3] " is 17 bytes; 20 keeps "alp".
        let (answer, pieces) = run(&server, &req, 20).await;
        let answer = answer.unwrap();
        assert_eq!(answer.text, "[gpu-box/llama3] alp");
        assert!(answer.truncated);
        assert_eq!(pieces.concat(), answer.text);
        // The server's final line was still read.
        assert_eq!(answer.done_reason.as_deref(), Some("stop"));
        assert_eq!(answer.completion_tokens, Some(4));

        let (answer, _) = run(&server, &generate("llama3", "alpha", false), 17).await;
        let answer = answer.unwrap();
        assert_eq!(answer.text, "[gpu-box/llama3] ");
        assert!(answer.truncated);

        // Never inside a character.
        let (answer, _) = run(&server, &generate("llama3", "é", true), 18).await;
        let answer = answer.unwrap();
        assert_eq!(answer.text, "[gpu-box/llama3] ");
        assert!(answer.truncated);
    }

    #[tokio::test]
    async fn openai_mode_generates_and_chats() {
        let f = fake(1).await;
        let server = ModelServer::new(ModelApi::Openai, &format!("{}v1", f.url), T).unwrap();
        let mut req = generate("llama3", "hello there", true);
        req.call = InferenceCall::Generate {
            prompt: "hello there".into(),
            system: Some("sys".into()),
        };
        let (answer, pieces) = run(&server, &req, 1 << 20).await;
        let answer = answer.unwrap();
        assert_eq!(answer.text, "[gpu-box/llama3] sys\n\nhello there");
        assert_eq!(pieces.concat(), answer.text);
        assert!(pieces.len() > 1);
        assert_eq!(answer.done_reason.as_deref(), Some("stop"));

        req.stream = false;
        let (answer, pieces) = run(&server, &req, 1 << 20).await;
        let answer = answer.unwrap();
        assert_eq!(answer.text, "[gpu-box/llama3] sys\n\nhello there");
        assert!(pieces.is_empty());
        assert_eq!(answer.prompt_tokens, Some(3));
        // "[gpu-box/llama3] ", "sys\n", "\n", "hello ", "there".
        assert_eq!(answer.completion_tokens, Some(5));

        for stream in [true, false] {
            let (answer, pieces) = run(&server, &chat("llama3:latest", stream), 1 << 20).await;
            let answer = answer.unwrap();
            assert_eq!(answer.text, "[gpu-box/llama3:latest] what is a swarm");
            assert_eq!(pieces.concat(), if stream { &answer.text[..] } else { "" });
            assert_eq!(answer.done_reason.as_deref(), Some("stop"));
        }
    }

    #[test]
    fn lines_split_across_chunks() {
        let mut lines = LineSplitter::new(8);
        let mut out = Vec::new();
        lines.push(b"ab", &mut out).unwrap();
        lines.push(b"c\r\nde\n\nf", &mut out).unwrap();
        assert_eq!(out, vec![b"abc".to_vec(), b"de".to_vec(), b"".to_vec()]);
        assert_eq!(lines.finish(), Some(b"f".to_vec()));

        let mut lines = LineSplitter::new(4);
        let mut out = Vec::new();
        lines.push(b"abc", &mut out).unwrap();
        assert_eq!(lines.push(b"de\n", &mut out), Err(4));
        let mut lines = LineSplitter::new(4);
        lines.push(b"abcd\nabcd\n", &mut out).unwrap();
    }

    #[test]
    fn stream_lines_are_parsed() {
        let mut p = StreamParser::new(ModelApi::Ollama, false);
        assert_eq!(
            p.line(br#"{"model":"m","response":"hi ","done":false}"#),
            Ok(Some("hi ".into()))
        );
        assert!(p.finish().is_err(), "no done line yet");
        assert_eq!(
            p.line(br#"{"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":7}"#),
            Ok(None)
        );
        assert_eq!(p.line(br#"{"response":"after"}"#), Ok(None));
        p.finish().unwrap();
        assert_eq!(p.meta.prompt_tokens, Some(3));
        assert_eq!(p.meta.completion_tokens, Some(7));

        let mut p = StreamParser::new(ModelApi::Ollama, true);
        assert_eq!(
            p.line(br#"{"message":{"role":"assistant","content":"yo"},"done":false}"#),
            Ok(Some("yo".into()))
        );
        let err = p.line(br#"{"error":"out of memory"}"#).unwrap_err();
        assert!(err.contains("out of memory"), "{err}");
        assert!(p.line(b"not json").is_err());

        let mut p = StreamParser::new(ModelApi::Openai, true);
        assert_eq!(p.line(b": keep-alive"), Ok(None));
        assert_eq!(p.line(b""), Ok(None));
        assert_eq!(
            p.line(br#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#),
            Ok(None)
        );
        assert_eq!(
            p.line(br#"data:{"choices":[{"delta":{"content":"a"},"finish_reason":null}]}"#),
            Ok(Some("a".into()))
        );
        assert_eq!(
            p.line(br#"data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#),
            Ok(None)
        );
        let err = p
            .line(br#"data: {"error":{"message":"overloaded","type":"server_error"}}"#)
            .unwrap_err();
        assert!(err.contains("overloaded"), "{err}");
        assert!(p.finish().is_err());
        assert_eq!(p.line(b"data: [DONE]"), Ok(None));
        p.finish().unwrap();
        assert_eq!(p.meta.prompt_tokens, Some(2));
    }

    #[test]
    fn openai_options_never_replace_the_request() {
        let mut req = chat("m", true);
        req.options = Some(r#"{"temperature":0.5,"stream":false,"messages":[]}"#.into());
        let options = parse_options(req.options.as_deref()).unwrap();
        let (path, body) = openai_body(&req, options.clone());
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(body["temperature"], json!(0.5));
        assert_eq!(body["stream"], json!(true));
        assert_eq!(body["messages"].as_array().unwrap().len(), 2);

        let (path, body) = ollama_body(&req, options);
        assert_eq!(path, "/api/chat");
        assert_eq!(body["options"]["temperature"], json!(0.5));
        assert_eq!(body["stream"], json!(true));
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(
            error_message(br#"{"error":"model \"x\" not found, try pulling it first"}"#),
            Some("model \"x\" not found, try pulling it first".into())
        );
        assert_eq!(
            error_message(br#"{"error":{"message":"nope","type":"invalid_request_error"}}"#),
            Some("nope".into())
        );
        assert_eq!(error_message(b"404 page not found"), None);
        assert_eq!(truncate_str("aé", 2), "a");
    }
}
