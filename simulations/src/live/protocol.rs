//! The OpenAI-compatible wire format of a vLLM server, as the live servers speak it: request
//! parsing and validation (vLLM-like 400/404 errors naming the field), prompt-token estimation,
//! and the shapes of non-streaming responses and SSE chunks.
//!
//! Data flow: an HTTP body goes through [`parse_request`] into a [`ParsedRequest`] (or an
//! [`ApiError`] the server returns as JSON); the server turns it into an engine request; the
//! engine's tokens come back as [`CompletionChunk`]/[`ChatChunk`] values (streaming) or a
//! [`CompletionResponse`]/[`ChatResponse`] (non-streaming), serialised with `serde_json` in
//! vLLM's field order.
//!
//! # Token estimation
//! The servers have no tokenizer. A text prompt counts `ceil(chars / 4)` tokens (at least 1),
//! [`CHARS_PER_TOKEN`] characters per token, close to Llama-3's average on English text. A
//! prompt given as token ids counts its ids. A chat request is first rendered through a minimal
//! chat template (`<|role|>\ncontent\n` per message, then `<|assistant|>\n`) and that text is
//! counted, so the template's overhead is included as it is with a real template.
//!
//! # Prefix caching
//! Prompts are cut into blocks of [`HASH_BLOCK_TOKENS`] tokens (64 characters, or 16 ids); each
//! full block gets a hash chained over every block before it, as vLLM hashes KV blocks. Two
//! requests that share a prompt prefix therefore share cache blocks in the engine model.

use serde::Serialize;
use serde_json::{Map, Value};

/// Characters of prompt text counted as one token.
pub const CHARS_PER_TOKEN: usize = 4;
/// Tokens per prefix-hash block (vLLM's default KV block size).
pub const HASH_BLOCK_TOKENS: u32 = 16;
/// `max_tokens` of `/v1/completions` when the request leaves it out (vLLM's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: u32 = 16;

/// Which OpenAI endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/completions`
    Completions,
    /// `/v1/chat/completions`
    Chat,
}

/// An error answered as vLLM answers it:
/// `{"error":{"message":..,"type":..,"param":..,"code":..}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Error type (`BadRequestError`, `NotFoundError`, `InternalServerError`).
    pub kind: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
}

impl ApiError {
    /// A 400 naming `param`.
    pub fn bad_request(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            kind: "BadRequestError",
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    /// A 404 for an unknown model.
    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: 404,
            kind: "NotFoundError",
            message: format!("The model `{model}` does not exist."),
            param: Some("model".into()),
        }
    }

    /// A 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            kind: "InternalServerError",
            message: message.into(),
            param: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.status,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.kind, self.message)
    }
}

/// The P/D fields of `kv_transfer_params` the servers act on (the object itself is echoed or
/// answered as a whole).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KvTransferParams {
    /// Set on the request a routing sidecar sends to a prefill server: keep the KV for a remote
    /// decoder.
    pub do_remote_decode: bool,
    /// Set on the request sent to the decoder: the prompt's KV is to be pulled from a prefiller.
    pub do_remote_prefill: bool,
    /// The prefiller's block ids (present when `do_remote_prefill`).
    pub remote_block_ids: Option<Vec<u64>>,
    /// The prefiller's engine id.
    pub remote_engine_id: Option<String>,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub api: Api,
    /// `model`, if given.
    pub model: Option<String>,
    /// Estimated prompt tokens (>= 1).
    pub prompt_tokens: u32,
    /// Chained hashes of the prompt's full [`HASH_BLOCK_TOKENS`]-token blocks.
    pub hash_ids: Vec<u64>,
    /// The effective `max_tokens` (`max_completion_tokens` first for chat); `None` when a chat
    /// request leaves both out.
    pub max_tokens: Option<u32>,
    pub min_tokens: u32,
    pub stream: bool,
    /// `stream_options.include_usage` (true when `stream_options` is present without it).
    pub include_usage: bool,
    /// `stream_options.continuous_usage_stats`.
    pub continuous_usage: bool,
    /// `n` (only 1 is served).
    pub n: u32,
    pub ignore_eos: bool,
    /// `kv_transfer_params`, when present and not null.
    pub kv_transfer: Option<KvTransferParams>,
}

/// Parses and validates a request body for `api`. Unknown fields are ignored, as vLLM ignores
/// them; every known field is type- and range-checked.
pub fn parse_request(api: Api, body: &[u8]) -> Result<ParsedRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(None, format!("JSON decode error: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_request(
            None,
            "the request body must be a JSON object",
        ));
    };
    let model = opt_string(&obj, "model")?;
    let (prompt_tokens, hash_ids) = match api {
        Api::Completions => parse_prompt(&obj)?,
        Api::Chat => parse_messages(&obj)?,
    };
    let max_tokens = match api {
        Api::Completions => {
            Some(opt_u32(&obj, "max_tokens")?.unwrap_or(DEFAULT_COMPLETION_MAX_TOKENS))
        }
        Api::Chat => match opt_u32(&obj, "max_completion_tokens")? {
            Some(v) => Some(v),
            None => opt_u32(&obj, "max_tokens")?,
        },
    };
    if let Some(m) = max_tokens
        && m == 0
    {
        let field = if api == Api::Chat && obj.contains_key("max_completion_tokens") {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(ApiError::bad_request(
            Some(field),
            format!("{field} must be at least 1, got 0."),
        ));
    }
    let min_tokens = opt_u32(&obj, "min_tokens")?.unwrap_or(0);
    if let Some(m) = max_tokens
        && min_tokens > m
    {
        return Err(ApiError::bad_request(
            Some("min_tokens"),
            format!("min_tokens must be less than or equal to max_tokens={m}, got {min_tokens}."),
        ));
    }
    let stream = opt_bool(&obj, "stream")?.unwrap_or(false);
    let (include_usage, continuous_usage) = match obj.get("stream_options") {
        None | Some(Value::Null) => (false, false),
        Some(Value::Object(so)) => {
            if !stream {
                return Err(ApiError::bad_request(
                    Some("stream_options"),
                    "Stream options can only be defined when `stream=True`.",
                ));
            }
            let inc = opt_bool_in(so, "include_usage", "stream_options.include_usage")?;
            let cont = opt_bool_in(
                so,
                "continuous_usage_stats",
                "stream_options.continuous_usage_stats",
            )?;
            (inc.unwrap_or(true), cont.unwrap_or(false))
        }
        Some(other) => return Err(type_error("stream_options", "an object", other)),
    };
    let n = opt_u32(&obj, "n")?.unwrap_or(1);
    if n != 1 {
        return Err(ApiError::bad_request(
            Some("n"),
            format!("n must be 1 on this simulated server, got {n}."),
        ));
    }
    if let Some(t) = opt_f64(&obj, "temperature")?
        && t < 0.0
    {
        return Err(ApiError::bad_request(
            Some("temperature"),
            format!("temperature must be non-negative, got {t}."),
        ));
    }
    if let Some(p) = opt_f64(&obj, "top_p")?
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ApiError::bad_request(
            Some("top_p"),
            format!("top_p must be in (0, 1], got {p}."),
        ));
    }
    let ignore_eos = opt_bool(&obj, "ignore_eos")?.unwrap_or(false);
    let kv_transfer = match obj.get("kv_transfer_params") {
        None | Some(Value::Null) => None,
        Some(Value::Object(kv)) => Some(parse_kv_transfer(kv)?),
        Some(other) => return Err(type_error("kv_transfer_params", "an object", other)),
    };
    Ok(ParsedRequest {
        api,
        model,
        prompt_tokens,
        hash_ids,
        max_tokens,
        min_tokens,
        stream,
        include_usage: stream && include_usage,
        continuous_usage: stream && continuous_usage,
        n,
        ignore_eos,
        kv_transfer,
    })
}

fn parse_kv_transfer(kv: &Map<String, Value>) -> Result<KvTransferParams, ApiError> {
    let b = |k: &str| -> Result<bool, ApiError> {
        Ok(opt_bool_in(kv, k, &format!("kv_transfer_params.{k}"))?.unwrap_or(false))
    };
    let remote_block_ids = match kv.get("remote_block_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(ids)) => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(id.as_u64().ok_or_else(|| {
                    type_error(
                        "kv_transfer_params.remote_block_ids",
                        "a list of integers",
                        id,
                    )
                })?);
            }
            Some(out)
        }
        Some(other) => {
            return Err(type_error(
                "kv_transfer_params.remote_block_ids",
                "a list of integers",
                other,
            ));
        }
    };
    let remote_engine_id = match kv.get("remote_engine_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(type_error(
                "kv_transfer_params.remote_engine_id",
                "a string",
                other,
            ));
        }
    };
    Ok(KvTransferParams {
        do_remote_decode: b("do_remote_decode")?,
        do_remote_prefill: b("do_remote_prefill")?,
        remote_block_ids,
        remote_engine_id,
    })
}

fn parse_prompt(obj: &Map<String, Value>) -> Result<(u32, Vec<u64>), ApiError> {
    let Some(p) = obj.get("prompt") else {
        return Err(ApiError::bad_request(
            Some("prompt"),
            "Field required: prompt",
        ));
    };
    const EXPECT: &str = "a string, a list of token ids, or a list with one of those";
    match p {
        Value::String(s) => text_prompt(s, "prompt"),
        Value::Array(items) if items.is_empty() => Err(ApiError::bad_request(
            Some("prompt"),
            "prompt must not be empty",
        )),
        Value::Array(items) => match &items[0] {
            Value::Number(_) => token_prompt(items),
            Value::String(s) if items.len() == 1 => text_prompt(s, "prompt"),
            Value::Array(ids) if items.len() == 1 => {
                if ids.is_empty() {
                    return Err(ApiError::bad_request(
                        Some("prompt"),
                        "prompt must not be empty",
                    ));
                }
                token_prompt(ids)
            }
            Value::String(_) | Value::Array(_) => Err(ApiError::bad_request(
                Some("prompt"),
                "batched prompts (a list of several prompts) are not supported by the \
                 simulated server; send one request per prompt",
            )),
            other => Err(type_error("prompt", EXPECT, other)),
        },
        other => Err(type_error("prompt", EXPECT, other)),
    }
}

fn token_prompt(ids: &[Value]) -> Result<(u32, Vec<u64>), ApiError> {
    let mut tokens = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(t) = id.as_u64() else {
            return Err(type_error("prompt", "a list of non-negative token ids", id));
        };
        tokens.push(t);
    }
    let n = u32::try_from(tokens.len())
        .map_err(|_| ApiError::bad_request(Some("prompt"), "prompt is too long"))?;
    let mut hashes = Vec::new();
    let mut h = HASH_SEED;
    for block in tokens.chunks_exact(HASH_BLOCK_TOKENS as usize) {
        let mut b = FNV_OFFSET;
        for t in block {
            b = fnv(b, &t.to_le_bytes());
        }
        h = chain(h, b);
        hashes.push(h);
    }
    Ok((n, hashes))
}

/// Token count and block hashes of a text prompt (see the module docs).
pub fn text_prompt_tokens(text: &str) -> (u32, Vec<u64>) {
    let block_chars = HASH_BLOCK_TOKENS as usize * CHARS_PER_TOKEN;
    let mut chars = 0usize;
    let mut hashes = Vec::new();
    let mut h = HASH_SEED;
    let mut b = FNV_OFFSET;
    let mut in_block = 0usize;
    let mut buf = [0u8; 4];
    for c in text.chars() {
        chars += 1;
        b = fnv(b, c.encode_utf8(&mut buf).as_bytes());
        in_block += 1;
        if in_block == block_chars {
            h = chain(h, b);
            hashes.push(h);
            b = FNV_OFFSET;
            in_block = 0;
        }
    }
    let tokens = chars.div_ceil(CHARS_PER_TOKEN).max(1);
    (u32::try_from(tokens).unwrap_or(u32::MAX), hashes)
}

fn text_prompt(s: &str, field: &str) -> Result<(u32, Vec<u64>), ApiError> {
    if s.is_empty() {
        return Err(ApiError::bad_request(
            Some(field),
            format!("{field} must not be empty"),
        ));
    }
    Ok(text_prompt_tokens(s))
}

fn parse_messages(obj: &Map<String, Value>) -> Result<(u32, Vec<u64>), ApiError> {
    let Some(m) = obj.get("messages") else {
        return Err(ApiError::bad_request(
            Some("messages"),
            "Field required: messages",
        ));
    };
    let Value::Array(messages) = m else {
        return Err(type_error("messages", "a list of messages", m));
    };
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            Some("messages"),
            "messages must hold at least one message",
        ));
    }
    let mut rendered = String::new();
    for (i, msg) in messages.iter().enumerate() {
        let Value::Object(msg) = msg else {
            return Err(type_error(
                &format!("messages[{i}]"),
                "an object with `role` and `content`",
                msg,
            ));
        };
        let role = match msg.get("role") {
            Some(Value::String(r)) => r.as_str(),
            Some(other) => {
                return Err(type_error(
                    &format!("messages[{i}].role"),
                    "a string",
                    other,
                ));
            }
            None => {
                return Err(ApiError::bad_request(
                    Some(&format!("messages[{i}].role")),
                    format!("Field required: messages[{i}].role"),
                ));
            }
        };
        rendered.push_str("<|");
        rendered.push_str(role);
        rendered.push_str("|>\n");
        match msg.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => rendered.push_str(s),
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let field = format!("messages[{i}].content[{j}]");
                    let Value::Object(part) = part else {
                        return Err(type_error(&field, "a content part object", part));
                    };
                    match (part.get("type"), part.get("text")) {
                        (Some(Value::String(t)), Some(Value::String(text))) if t == "text" => {
                            rendered.push_str(text)
                        }
                        (Some(Value::String(t)), _) if t != "text" => {
                            return Err(ApiError::bad_request(
                                Some(&field),
                                format!("content part type `{t}` is not supported (text only)"),
                            ));
                        }
                        _ => {
                            return Err(ApiError::bad_request(
                                Some(&field),
                                format!(
                                    "{field} must be {{\"type\": \"text\", \"text\": <string>}}"
                                ),
                            ));
                        }
                    }
                }
            }
            Some(other) => {
                return Err(type_error(
                    &format!("messages[{i}].content"),
                    "a string or a list of content parts",
                    other,
                ));
            }
        }
        rendered.push('\n');
    }
    rendered.push_str("<|assistant|>\n");
    Ok(text_prompt_tokens(&rendered))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn type_error(field: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::bad_request(
        Some(field),
        format!("{field} must be {expected}, got {}", type_name(got)),
    )
}

fn opt_string(obj: &Map<String, Value>, k: &str) -> Result<Option<String>, ApiError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(type_error(k, "a string", other)),
    }
}

fn opt_bool_in(obj: &Map<String, Value>, k: &str, field: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(type_error(field, "a boolean", other)),
    }
}

fn opt_bool(obj: &Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    opt_bool_in(obj, k, k)
}

fn opt_u32(obj: &Map<String, Value>, k: &str) -> Result<Option<u32>, ApiError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            // Integral floats (`16.0`) are accepted, as pydantic accepts them.
            let v = n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            });
            match v.and_then(|v| u32::try_from(v).ok()) {
                Some(v) => Ok(Some(v)),
                None => Err(ApiError::bad_request(
                    Some(k),
                    format!("{k} must be an integer in 0..={}, got {n}", u32::MAX),
                )),
            }
        }
        Some(other) => Err(type_error(k, "an integer", other)),
    }
}

fn opt_f64(obj: &Map<String, Value>, k: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(type_error(k, "a number", other)),
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const HASH_SEED: u64 = 0x6a09_e667_f3bc_c908;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn chain(prev: u64, block: u64) -> u64 {
    super::splitmix64(prev ^ super::splitmix64(block))
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Token counts of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    /// Usage of `prompt` prompt tokens and `completion` generated ones.
    pub fn new(prompt: u32, completion: u32) -> Self {
        Self {
            prompt_tokens: prompt,
            total_tokens: prompt.saturating_add(completion),
            completion_tokens: completion,
        }
    }
}

/// One choice of a `/v1/completions` SSE chunk (every field present, as vLLM sends them).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChunkChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
    pub stop_reason: Option<()>,
}

/// A `/v1/completions` SSE chunk.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<CompletionChunkChoice>,
    pub usage: Option<Usage>,
}

/// The `delta` of a chat chunk (unset fields are left out, as vLLM leaves them out).
#[derive(Debug, Clone, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chat SSE chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
    /// Present (null) only on the chunk that carries the finish reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Option<()>>,
}

/// A `/v1/chat/completions` SSE chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Everything a non-streaming response needs.
#[derive(Debug, Clone)]
pub struct FinalOutput<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub text: String,
    pub finish_reason: &'static str,
    pub usage: Usage,
    /// `kv_transfer_params` to return (a prefill server's answer to a P/D request).
    pub kv_transfer_params: Option<Value>,
}

/// A non-streaming `/v1/completions` body.
pub fn completion_response(out: &FinalOutput<'_>) -> Value {
    serde_json::json!({
        "id": out.id,
        "object": "text_completion",
        "created": out.created,
        "model": out.model,
        "choices": [{
            "index": 0,
            "text": out.text,
            "logprobs": null,
            "finish_reason": out.finish_reason,
            "stop_reason": null,
            "prompt_logprobs": null,
        }],
        "service_tier": null,
        "system_fingerprint": null,
        "usage": {
            "prompt_tokens": out.usage.prompt_tokens,
            "total_tokens": out.usage.total_tokens,
            "completion_tokens": out.usage.completion_tokens,
            "prompt_tokens_details": null,
        },
        "kv_transfer_params": out.kv_transfer_params,
    })
}

/// A non-streaming `/v1/chat/completions` body.
pub fn chat_response(out: &FinalOutput<'_>) -> Value {
    serde_json::json!({
        "id": out.id,
        "object": "chat.completion",
        "created": out.created,
        "model": out.model,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": out.text,
                "refusal": null,
                "annotations": null,
                "audio": null,
                "function_call": null,
                "tool_calls": [],
                "reasoning_content": null,
            },
            "logprobs": null,
            "finish_reason": out.finish_reason,
            "stop_reason": null,
        }],
        "service_tier": null,
        "system_fingerprint": null,
        "usage": {
            "prompt_tokens": out.usage.prompt_tokens,
            "total_tokens": out.usage.total_tokens,
            "completion_tokens": out.usage.completion_tokens,
            "prompt_tokens_details": null,
        },
        "prompt_logprobs": null,
        "kv_transfer_params": out.kv_transfer_params,
    })
}

const WORDS: [&str; 16] = [
    " the",
    " model",
    " is",
    " simulated",
    " and",
    " each",
    " word",
    " here",
    " stands",
    " for",
    " one",
    " token",
    " of",
    " output",
    " text",
    ".",
];

/// The text of generated tokens `from..to` (0-based): one word per token.
pub fn output_text(from: u32, to: u32) -> String {
    (from..to)
        .map(|i| WORDS[i as usize % WORDS.len()])
        .collect()
}

/// One SSE event: `data: <json>\n\n`.
pub fn sse_event(json: &str) -> String {
    format!("data: {json}\n\n")
}

/// The stream terminator.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(api: Api, v: Value) -> Result<ParsedRequest, ApiError> {
        parse_request(api, v.to_string().as_bytes())
    }

    #[test]
    fn completion_defaults_follow_vllm() {
        let r = parse(Api::Completions, serde_json::json!({"prompt": "abcdefgh"})).unwrap();
        assert_eq!(r.prompt_tokens, 2);
        assert_eq!(r.max_tokens, Some(16));
        assert!(!r.stream && !r.include_usage);
        let r = parse(
            Api::Completions,
            serde_json::json!({"prompt": "x", "stream": true, "stream_options": {}}),
        )
        .unwrap();
        assert!(
            r.include_usage,
            "stream_options present => include_usage defaults to true"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                serde_json::json!({"prompt": "x", "max_tokens": "ten"}),
                "max_tokens",
            ),
            (
                serde_json::json!({"prompt": "x", "max_tokens": 0}),
                "max_tokens",
            ),
            (
                serde_json::json!({"prompt": "x", "max_tokens": -3}),
                "max_tokens",
            ),
            (serde_json::json!({"max_tokens": 3}), "prompt"),
            (serde_json::json!({"prompt": 7}), "prompt"),
            (
                serde_json::json!({"prompt": "x", "stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (
                serde_json::json!({"prompt": "x", "stream": "yes"}),
                "stream",
            ),
            (
                serde_json::json!({"prompt": "x", "min_tokens": 20, "max_tokens": 5}),
                "min_tokens",
            ),
            (
                serde_json::json!({"prompt": "x", "kv_transfer_params": {"remote_block_ids": ["a"]}}),
                "kv_transfer_params.remote_block_ids",
            ),
            (serde_json::json!({"prompt": "x", "top_p": 0}), "top_p"),
        ];
        for (body, field) in cases {
            let e = parse(Api::Completions, body.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(field), "{body}: {e}");
        }
        let e = parse(
            Api::Chat,
            serde_json::json!({"messages": [{"content": "hi"}]}),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse_request(Api::Chat, b"{not json").unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn shared_prefixes_share_block_hashes() {
        let a = "a".repeat(200);
        let b = format!("{}{}", &a[..130], "b".repeat(70));
        let (ta, ha) = text_prompt_tokens(&a);
        let (_, hb) = text_prompt_tokens(&b);
        assert_eq!(ta, 50);
        assert_eq!(ha.len(), 3);
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
    }

    #[test]
    fn chat_counts_the_template() {
        let r = parse(
            Api::Chat,
            serde_json::json!({"messages": [{"role": "user", "content": "hello"}]}),
        )
        .unwrap();
        // "<|user|>\nhello\n<|assistant|>\n" = 30 chars -> 8 tokens.
        assert_eq!(r.prompt_tokens, 8);
        assert_eq!(r.max_tokens, None);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| serde_json::json!(i)),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("prompt".to_string()),
                            Just("messages".to_string()),
                            Just("max_tokens".to_string()),
                            Just("max_completion_tokens".to_string()),
                            Just("stream".to_string()),
                            Just("stream_options".to_string()),
                            Just("kv_transfer_params".to_string()),
                            Just("role".to_string()),
                            Just("content".to_string()),
                            Just("n".to_string()),
                            "[a-z_]{1,8}",
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            for api in [Api::Completions, Api::Chat] {
                if let Err(e) = parse_request(api, &bytes) {
                    prop_assert!(e.status == 400);
                }
            }
        }

        #[test]
        fn arbitrary_json_is_accepted_or_a_400(v in arb_json()) {
            for api in [Api::Completions, Api::Chat] {
                match parse(api, v.clone()) {
                    Ok(r) => {
                        prop_assert!(r.prompt_tokens >= 1);
                        prop_assert!(r.max_tokens.is_none_or(|m| m >= 1 && m >= r.min_tokens));
                        prop_assert!(r.include_usage <= r.stream);
                    }
                    Err(e) => {
                        prop_assert_eq!(e.status, 400);
                        prop_assert!(!e.message.is_empty());
                    }
                }
            }
        }

        #[test]
        fn text_tokens_are_a_quarter_of_the_characters(s in ".{1,400}") {
            let r = parse(Api::Completions, serde_json::json!({"prompt": s.clone()})).unwrap();
            let chars = s.chars().count();
            prop_assert_eq!(r.prompt_tokens as usize, chars.div_ceil(4));
            prop_assert_eq!(r.hash_ids.len(), chars / 64);
        }

        #[test]
        fn valid_requests_round_trip(
            max in 1u32..5000, min_frac in 0.0f64..1.0, stream in any::<bool>(), usage in any::<bool>(),
            ids in prop::collection::vec(0u64..200_000, 1..100)
        ) {
            let min = (max as f64 * min_frac) as u32;
            let mut body = serde_json::json!({"prompt": ids.clone(), "max_tokens": max, "min_tokens": min, "stream": stream});
            if stream {
                body["stream_options"] = serde_json::json!({"include_usage": usage});
            }
            let r = parse(Api::Completions, body).unwrap();
            prop_assert_eq!(r.prompt_tokens as usize, ids.len());
            prop_assert_eq!(r.max_tokens, Some(max));
            prop_assert_eq!(r.min_tokens, min);
            prop_assert_eq!(r.include_usage, stream && usage);
            prop_assert_eq!(r.hash_ids.len(), ids.len() / 16);
        }
    }
}
