//! A stand-in for Ollama, for tests and demos.
