//! Local model servers: discovery of the models an Ollama or
//! OpenAI-compatible server serves, and forwarding inference calls to it.

use serde::{Deserialize, Serialize};

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
