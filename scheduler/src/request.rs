//! What the picker knows about one request: parsed from the OpenAI-style JSON body and the
//! gateway's control headers, before any endpoint is looked at.
//!
//! Data flow: the ext_proc server (or a test) hands the body bytes and the lower-cased request
//! headers to [`RequestFeatures::parse`]; the result carries the prompt-token estimate, the
//! text the prefix index hashes ([`RequestFeatures::prefix_text`]), `max_tokens`, `stream`,
//! the SLOs and whether the request may be shed. Pure: bytes in, value or typed error out.
//!
//! Token estimate: no tokenizer, `ceil(chars / 4)` (at least 1), chat messages rendered through
//! the minimal template `<|role|>\ncontent\n` + `<|assistant|>\n`: the same estimate
//! `goodput sim serve` makes, and llm-d's approximate prefix cache's 4 characters per token.

use serde_json::Value;

/// TTFT SLO header (llm-d-router name).
pub const SLO_TTFT_HEADER: &str = "x-llm-d-slo-ttft-ms";
/// TPOT SLO header (llm-d-router name).
pub const SLO_TPOT_HEADER: &str = "x-llm-d-slo-tpot-ms";
/// Older names of the SLO headers (GIE v1.5), still accepted.
pub const SLO_TTFT_HEADER_OLD: &str = "x-slo-ttft-ms";
pub const SLO_TPOT_HEADER_OLD: &str = "x-slo-tpot-ms";
/// Request priority; negative means sheddable (GIE's `IsSheddable(priority) = priority < 0`).
/// goodput reads it from a header because it does not resolve `InferenceObjective`s.
pub const PRIORITY_HEADER: &str = "x-goodput-priority";

/// Characters per estimated token.
pub const CHARS_PER_TOKEN: usize = 4;

/// Why a request body or header could not be used (answered 400 by the server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    #[error("request body must be a JSON object")]
    NotObject,
    #[error("field `{field}`: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("header `{header}`: {message}")]
    Header { header: String, message: String },
}

fn field(field: &'static str, message: impl Into<String>) -> RequestError {
    RequestError::Field {
        field,
        message: message.into(),
    }
}

/// A request as the picker sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestFeatures {
    pub model: String,
    /// Estimated prompt tokens (at least 1).
    pub prompt_tokens: u32,
    /// Output tokens asked for (`max_completion_tokens`, then `max_tokens`), if given.
    pub max_tokens: Option<u32>,
    pub stream: bool,
    /// TTFT objective, ms.
    pub slo_ttft_ms: Option<f64>,
    /// Time-per-output-token objective, ms.
    pub slo_tpot_ms: Option<f64>,
    /// Priority below zero: may be refused with 429 when no endpoint can meet its SLO.
    pub sheddable: bool,
    /// The prompt text the prefix index hashes (rendered chat or completion prompt).
    pub prefix_text: String,
}

impl RequestFeatures {
    /// Parses a body and its headers (`(name, value)` with lower-case names).
    pub fn parse<'a>(
        body: &[u8],
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, RequestError> {
        let mut out = Self::from_body(body)?;
        out.apply_headers(headers)?;
        Ok(out)
    }

    /// The body part of [`RequestFeatures::parse`].
    pub fn from_body(body: &[u8]) -> Result<Self, RequestError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| RequestError::Json(e.to_string()))?;
        let Value::Object(obj) = v else {
            return Err(RequestError::NotObject);
        };
        let model = match obj.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(Value::String(_)) => return Err(field("model", "must not be empty")),
            Some(_) => return Err(field("model", "must be a string")),
            None => return Err(field("model", "missing (model not found in request body)")),
        };
        let prefix_text = if let Some(messages) = obj.get("messages") {
            render_chat(messages)?
        } else if let Some(prompt) = obj.get("prompt") {
            render_prompt(prompt)?
        } else {
            return Err(field(
                "messages",
                "neither `messages` nor `prompt` is present",
            ));
        };
        let max_tokens = match (obj.get("max_completion_tokens"), obj.get("max_tokens")) {
            (Some(v), _) if !v.is_null() => Some(uint(v, "max_completion_tokens")?),
            (_, Some(v)) if !v.is_null() => Some(uint(v, "max_tokens")?),
            _ => None,
        };
        let stream = match obj.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(field("stream", "must be a boolean")),
        };
        let chars = prefix_text.chars().count();
        let prompt_tokens =
            u32::try_from(chars.div_ceil(CHARS_PER_TOKEN).max(1)).unwrap_or(u32::MAX);
        Ok(Self {
            model,
            prompt_tokens,
            max_tokens,
            stream,
            slo_ttft_ms: None,
            slo_tpot_ms: None,
            sheddable: false,
            prefix_text,
        })
    }

    /// Reads the SLO and priority headers. The llm-d-router names win over the older ones.
    pub fn apply_headers<'a>(
        &mut self,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), RequestError> {
        let (mut ttft, mut ttft_old, mut tpot, mut tpot_old) = (None, None, None, None);
        for (name, value) in headers {
            match name {
                SLO_TTFT_HEADER => ttft = Some(ms(name, value)?),
                SLO_TTFT_HEADER_OLD => ttft_old = Some(ms(name, value)?),
                SLO_TPOT_HEADER => tpot = Some(ms(name, value)?),
                SLO_TPOT_HEADER_OLD => tpot_old = Some(ms(name, value)?),
                PRIORITY_HEADER => {
                    let p: i64 = value.trim().parse().map_err(|_| RequestError::Header {
                        header: name.into(),
                        message: format!("`{value}` is not an integer"),
                    })?;
                    self.sheddable = p < 0;
                }
                _ => {}
            }
        }
        self.slo_ttft_ms = ttft.or(ttft_old);
        self.slo_tpot_ms = tpot.or(tpot_old);
        Ok(())
    }

    /// Output tokens to plan for when the client gave no limit.
    pub fn expected_output_tokens(&self) -> u32 {
        self.max_tokens.unwrap_or(256).max(1)
    }
}

fn ms(name: &str, value: &str) -> Result<f64, RequestError> {
    match value.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(RequestError::Header {
            header: name.into(),
            message: format!("`{value}` is not a positive number of milliseconds"),
        }),
    }
}

fn uint(v: &Value, name: &'static str) -> Result<u32, RequestError> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .filter(|x| *x > 0)
        .ok_or_else(|| field(name, "must be a positive integer"))
}

fn render_chat(messages: &Value) -> Result<String, RequestError> {
    let Value::Array(list) = messages else {
        return Err(field("messages", "must be an array"));
    };
    if list.is_empty() {
        return Err(field("messages", "must not be empty"));
    }
    let mut out = String::new();
    for m in list {
        let Value::Object(m) = m else {
            return Err(field("messages", "every message must be an object"));
        };
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| field("messages", "every message needs a string `role`"))?;
        out.push_str("<|");
        out.push_str(role);
        out.push_str("|>\n");
        match m.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                    }
                }
            }
            Some(_) => return Err(field("messages", "`content` must be a string or parts")),
        }
        out.push('\n');
    }
    out.push_str("<|assistant|>\n");
    Ok(out)
}

fn render_prompt(prompt: &Value) -> Result<String, RequestError> {
    match prompt {
        Value::String(s) => Ok(s.clone()),
        // Token ids: 4 characters each, so that the estimate counts one token per id and
        // equal id prefixes hash to equal blocks.
        Value::Array(ids) if ids.iter().all(Value::is_u64) => Ok(ids
            .iter()
            .map(|v| format!("{:04x}", v.as_u64().unwrap_or(0) & 0xffff))
            .collect()),
        Value::Array(list) if list.len() == 1 => render_prompt(&list[0]),
        Value::Array(_) => Err(field(
            "prompt",
            "a list of several prompts is not supported",
        )),
        _ => Err(field("prompt", "must be a string or a list of token ids")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chat_body_and_headers() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hello world"}],"max_tokens":7,"stream":true}"#;
        let r = RequestFeatures::parse(
            body,
            [
                ("x-slo-ttft-ms", "300"),
                ("x-llm-d-slo-tpot-ms", "40"),
                ("x-goodput-priority", "-1"),
            ],
        )
        .unwrap();
        assert_eq!(r.model, "m");
        assert_eq!(r.prefix_text, "<|user|>\nhello world\n<|assistant|>\n");
        assert_eq!(r.prompt_tokens, (r.prefix_text.len() as u32).div_ceil(4));
        assert_eq!(r.max_tokens, Some(7));
        assert!(r.stream && r.sheddable);
        assert_eq!((r.slo_ttft_ms, r.slo_tpot_ms), (Some(300.0), Some(40.0)));
    }

    #[test]
    fn new_header_names_win_over_old_ones() {
        let mut r = RequestFeatures::from_body(br#"{"model":"m","prompt":"abcd"}"#).unwrap();
        r.apply_headers([("x-slo-ttft-ms", "900"), ("x-llm-d-slo-ttft-ms", "200")])
            .unwrap();
        assert_eq!(r.slo_ttft_ms, Some(200.0));
        assert_eq!(r.prompt_tokens, 1);
        assert!(!r.sheddable);
    }

    #[test]
    fn errors_name_what_was_wrong() {
        let e = RequestFeatures::from_body(b"{not json").unwrap_err();
        assert!(matches!(e, RequestError::Json(_)));
        let e = RequestFeatures::from_body(br#"{"prompt":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("model"), "{e}");
        let e = RequestFeatures::from_body(br#"{"model":"m","prompt":"x","max_tokens":0}"#)
            .unwrap_err();
        assert!(e.to_string().contains("max_tokens"), "{e}");
        let e = RequestFeatures::parse(
            br#"{"model":"m","prompt":"x"}"#,
            [("x-llm-d-slo-ttft-ms", "soon")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("x-llm-d-slo-ttft-ms"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = RequestFeatures::parse(&bytes, [("x-slo-ttft-ms", "1")]);
        }

        #[test]
        fn arbitrary_json_never_panics(s in "\\{\"model\":\"m\",\"(prompt|messages)\":[\\[\\]{}\"a-z0-9:,]{0,40}\\}") {
            let _ = RequestFeatures::from_body(s.as_bytes());
        }

        #[test]
        fn token_estimate_grows_with_text(n in 1usize..2000) {
            let body = format!(r#"{{"model":"m","prompt":"{}"}}"#, "a".repeat(n));
            let r = RequestFeatures::from_body(body.as_bytes()).unwrap();
            prop_assert_eq!(r.prompt_tokens as usize, n.div_ceil(4));
        }
    }
}
