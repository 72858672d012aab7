//! Live servers as clients and Prometheus see them: the exposition (strictly parsed, every
//! required vLLM metric with its type, labels and buckets), the OpenAI shapes (SSE chunks,
//! usage, errors), KV usage against the engine, P/D hand-off, and fault injection. Servers run
//! in-process on ephemeral loopback ports with a large time scale.

// Helpers outside #[test] functions unwrap too: this whole crate is test code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod live_common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use goodput_core::vllm::{
    ITERATION_TOKEN_BUCKETS, ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS, buckets_1_2_5,
};
use goodput_core::{Catalog, Role};
use goodput_sim::live::{FaultConfig, LiveServers, ServerConfig};
use live_common::{count_sum, parse_exposition, scrape, value};
use serde_json::{Value, json};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn start(cfg: ServerConfig, n: u16) -> (LiveServers, Vec<String>) {
    let s = LiveServers::start(&Catalog::builtin(), &cfg, LOCAL, 0, n)
        .await
        .expect("start servers");
    let urls = s.urls();
    (s, urls)
}

fn fast() -> ServerConfig {
    ServerConfig {
        time_scale: 20.0,
        ..ServerConfig::default()
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, String) {
    let r = client.post(url).json(body).send().await.expect("post");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

fn sse_events(text: &str) -> Vec<String> {
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream must end with [DONE]: {text}"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data: framing").to_string())
        .collect()
}

fn le_strings(bounds: &[f64]) -> Vec<String> {
    // Python's float repr for these bounds: integers get ".0".
    let mut v: Vec<String> = bounds
        .iter()
        .map(|b| {
            if b.fract() == 0.0 {
                format!("{b:.1}")
            } else {
                format!("{b}")
            }
        })
        .collect();
    v.push("+Inf".into());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_has_every_required_vllm_metric() {
    let (servers, urls) = start(
        ServerConfig {
            deprecated_metrics: true,
            served_model_name: Some("llama-8b".into()),
            max_model_len: Some(8192),
            ..fast()
        },
        1,
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", urls[0]);
    for i in 0..4 {
        let (status, _) = post(
            &client,
            &url,
            &json!({"model": "llama-8b", "prompt": "a ".repeat(100 + i * 50), "max_tokens": 8}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let text = client
        .get(format!("{}/metrics", urls[0]))
        .send()
        .await
        .unwrap();
    assert!(
        text.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = text.text().await.unwrap();
    let fams = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let lengths = buckets_1_2_5(8192);
    let required: Vec<(&str, &str, Option<Vec<f64>>)> = vec![
        ("vllm:num_requests_running", "gauge", None),
        ("vllm:num_requests_waiting", "gauge", None),
        ("vllm:kv_cache_usage_perc", "gauge", None),
        ("vllm:prefix_cache_queries_total", "counter", None),
        ("vllm:prefix_cache_hits_total", "counter", None),
        ("vllm:num_preemptions_total", "counter", None),
        ("vllm:prompt_tokens_total", "counter", None),
        ("vllm:generation_tokens_total", "counter", None),
        ("vllm:request_success_total", "counter", None),
        (
            "vllm:request_prompt_tokens",
            "histogram",
            Some(lengths.clone()),
        ),
        (
            "vllm:request_generation_tokens",
            "histogram",
            Some(lengths.clone()),
        ),
        (
            "vllm:iteration_tokens_total",
            "histogram",
            Some(ITERATION_TOKEN_BUCKETS.to_vec()),
        ),
        (
            "vllm:request_max_num_generation_tokens",
            "histogram",
            Some(lengths.clone()),
        ),
        (
            "vllm:request_params_n",
            "histogram",
            Some(vec![1.0, 2.0, 5.0, 10.0, 20.0]),
        ),
        (
            "vllm:request_params_max_tokens",
            "histogram",
            Some(lengths.clone()),
        ),
        (
            "vllm:time_to_first_token_seconds",
            "histogram",
            Some(TTFT_BUCKETS.to_vec()),
        ),
        (
            "vllm:inter_token_latency_seconds",
            "histogram",
            Some(ITL_BUCKETS.to_vec()),
        ),
        (
            "vllm:request_time_per_output_token_seconds",
            "histogram",
            Some(ITL_BUCKETS.to_vec()),
        ),
        (
            "vllm:e2e_request_latency_seconds",
            "histogram",
            Some(REQUEST_LATENCY_BUCKETS.to_vec()),
        ),
        (
            "vllm:request_queue_time_seconds",
            "histogram",
            Some(REQUEST_LATENCY_BUCKETS.to_vec()),
        ),
        (
            "vllm:request_inference_time_seconds",
            "histogram",
            Some(REQUEST_LATENCY_BUCKETS.to_vec()),
        ),
        (
            "vllm:request_prefill_time_seconds",
            "histogram",
            Some(REQUEST_LATENCY_BUCKETS.to_vec()),
        ),
        (
            "vllm:request_decode_time_seconds",
            "histogram",
            Some(REQUEST_LATENCY_BUCKETS.to_vec()),
        ),
        ("vllm:cache_config_info", "gauge", None),
        // Behind the deprecation flag.
        (
            "vllm:time_per_output_token_seconds",
            "histogram",
            Some(ITL_BUCKETS.to_vec()),
        ),
        ("vllm:gpu_cache_usage_perc", "gauge", None),
    ];
    for (name, kind, bounds) in &required {
        let f = fams.get(*name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(f.kind, *kind, "{name}");
        assert!(!f.samples.is_empty(), "{name} has no samples");
        for s in &f.samples {
            let names: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(
                names, sorted,
                "{name}: labels sorted as prometheus_client writes them"
            );
            assert_eq!(s.label("engine"), Some("0"), "{name}");
            if *name != "vllm:cache_config_info" {
                assert_eq!(s.label("model_name"), Some("llama-8b"), "{name}");
            }
        }
        if let Some(bounds) = bounds {
            let le: Vec<String> = live_common::buckets(f, name)
                .into_iter()
                .map(|(le, _)| le)
                .collect();
            assert_eq!(le, le_strings(bounds), "{name} buckets");
        }
        if *kind == "counter" || *kind == "histogram" {
            let base = name
                .strip_suffix("_total")
                .filter(|_| *kind == "counter")
                .unwrap_or(name);
            let created = format!("{base}_created");
            assert_eq!(
                fams.get(&created).map(|f| f.kind.as_str()),
                Some("gauge"),
                "{created}"
            );
        }
    }
    // Every finish reason pre-created; the 4 requests stopped at their length.
    let success = &fams["vllm:request_success_total"];
    for reason in ["stop", "length", "abort"] {
        assert!(
            success
                .samples
                .iter()
                .any(|s| s.label("finished_reason") == Some(reason))
        );
    }
    let length = success
        .samples
        .iter()
        .find(|s| s.label("finished_reason") == Some("length"))
        .unwrap();
    assert_eq!(length.value, 4.0);
    assert_eq!(value(&fams, "vllm:generation_tokens_total"), 32.0);
    assert_eq!(count_sum(&fams, "vllm:time_to_first_token_seconds").0, 4.0);
    assert_eq!(count_sum(&fams, "vllm:inter_token_latency_seconds").0, 28.0);
    assert_eq!(
        count_sum(&fams, "vllm:request_params_max_tokens"),
        (4.0, 32.0)
    );
    // The cache info has no model_name, and integer strings the EPP can Atoi.
    let info = &fams["vllm:cache_config_info"].samples[0];
    assert_eq!(info.label("model_name"), None);
    assert_eq!(info.label("block_size"), Some("16"));
    let blocks: u64 = info.label("num_gpu_blocks").unwrap().parse().unwrap();
    assert!(blocks > 1000);
    assert_eq!(info.value, 1.0);
    // Python float formatting.
    assert!(text.contains("le=\"2560.0\""));
    assert!(text.contains("vllm:num_requests_running{engine=\"0\",model_name=\"llama-8b\"} 0.0\n"));
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_shaped_like_vllm() {
    let (servers, urls) = start(fast(), 1).await;
    let client = reqwest::Client::new();
    // Completions: every field present, usage null until the usage chunk.
    let (status, text) = post(
        &client,
        &format!("{}/v1/completions", urls[0]),
        &json!({"prompt": "hello world", "max_tokens": 3, "stream": true,
                "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(status, 200);
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let ids: Vec<&str> = chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|i| *i == ids[0] && i.starts_with("cmpl-")));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 6, "completion_tokens": 3})
    );
    let token_chunks = &chunks[..chunks.len() - 1];
    assert_eq!(token_chunks.len(), 3, "one chunk per engine step");
    for c in token_chunks {
        assert_eq!(c["object"], "text_completion");
        assert!(c["usage"].is_null() && c.as_object().unwrap().contains_key("usage"));
        assert!(
            c["choices"][0]
                .as_object()
                .unwrap()
                .contains_key("stop_reason")
        );
    }
    assert_eq!(token_chunks[2]["choices"][0]["finish_reason"], "length");
    assert!(token_chunks[1]["choices"][0]["finish_reason"].is_null());

    // Chat: role chunk first, unset fields left out, no usage chunk unless asked.
    let (status, text) = post(
        &client,
        &format!("{}/v1/chat/completions", urls[0]),
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2, "stream": true}),
    )
    .await;
    assert_eq!(status, 200);
    let events = sse_events(&text);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks.len(), 3);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(!chunks[1].as_object().unwrap().contains_key("usage"));
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
    assert!(chunks[2]["choices"][0]["stop_reason"].is_null());
    assert_eq!(chunks[2]["object"], "chat.completion.chunk");

    // Non-streaming chat and /v1/models.
    let (status, text) = post(
        &client,
        &format!("{}/v1/chat/completions", urls[0]),
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let models: Value = client
        .get(format!("{}/v1/models", urls[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "llama-3.1-8b");
    assert_eq!(models["data"][0]["owned_by"], "vllm");
    let health = client
        .get(format!("{}/health", urls[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400s_naming_the_field() {
    let (servers, urls) = start(fast(), 1).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", urls[0]);
    let cases = [
        (json!({"prompt": "x", "max_tokens": "many"}), "max_tokens"),
        (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": 4}), "prompt"),
        (json!({"prompt": {"a": 1}}), "prompt"),
        (
            json!({"prompt": "x", "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (json!({"prompt": "x", "max_tokens": 200000}), "prompt"),
    ];
    for (body, field) in cases {
        let (status, text) = post(&client, &url, &body).await;
        assert_eq!(status, 400, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "BadRequestError");
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(v["error"]["param"], field, "{body}: {text}");
    }
    let r = client
        .post(&url)
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (status, text) = post(&client, &url, &json!({"prompt": "x", "model": "gpt-9"})).await;
    assert_eq!(status, 404);
    assert!(text.contains("The model `gpt-9` does not exist."));
    // The server is still fine.
    let (status, _) = post(&client, &url, &json!({"prompt": "x", "max_tokens": 2})).await;
    assert_eq!(status, 200);
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_usage_follows_the_running_request() {
    // Real time (scale 1) with a long output, so the request is mid-decode when scraped.
    let (servers, urls) = start(
        ServerConfig {
            time_scale: 1.0,
            ..ServerConfig::default()
        },
        1,
    )
    .await;
    let client = reqwest::Client::new();
    let base = urls[0].clone();
    let before = scrape(&client, &base).await;
    assert_eq!(value(&before, "vllm:kv_cache_usage_perc"), 0.0);
    let blocks: f64 = before["vllm:cache_config_info"].samples[0]
        .label("num_gpu_blocks")
        .unwrap()
        .parse()
        .unwrap();
    let prompt_tokens = 4000.0;
    let out = 400.0;
    let c2 = client.clone();
    let b2 = base.clone();
    let req = tokio::spawn(async move {
        post(
            &c2,
            &format!("{b2}/v1/completions"),
            &json!({"prompt": "abcd".repeat(4000), "max_tokens": 400}),
        )
        .await
    });
    // Wait until it runs, then check usage is within the blocks it can hold.
    let mut seen = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let m = scrape(&client, &base).await;
        if value(&m, "vllm:num_requests_running") == 1.0
            && value(&m, "vllm:generation_tokens_total") > 0.0
        {
            seen = Some(value(&m, "vllm:kv_cache_usage_perc"));
            break;
        }
    }
    let usage = seen.expect("request never seen running");
    let lo = (prompt_tokens / 16.0_f64).ceil() / blocks;
    let hi = ((prompt_tokens + out) / 16.0_f64).ceil() / blocks;
    assert!(
        usage >= lo && usage <= hi,
        "usage {usage} outside [{lo}, {hi}]"
    );
    let (status, _) = req.await.unwrap();
    assert_eq!(status, 200);
    let after = scrape(&client, &base).await;
    assert_eq!(value(&after, "vllm:kv_cache_usage_perc"), 0.0);
    assert_eq!(value(&after, "vllm:num_requests_running"), 0.0);
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_server_pulls_kv_from_the_prefill_server() {
    let (prefill, p_urls) = start(
        ServerConfig {
            role: Role::Prefill,
            ..fast()
        },
        1,
    )
    .await;
    let (decode, d_urls) = start(
        ServerConfig {
            role: Role::Decode,
            ..fast()
        },
        1,
    )
    .await;
    let client = reqwest::Client::new();
    let prefiller = p_urls[0].trim_start_matches("http://").to_string();
    let prompt = "abcd".repeat(1000);
    let r = client
        .post(format!("{}/v1/completions", d_urls[0]))
        .header("x-prefiller-host-port", &prefiller)
        .json(&json!({"prompt": prompt, "max_tokens": 10, "stream": true,
                      "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let events = sse_events(&r.text().await.unwrap());
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 10);

    // The prefill server saw one 1-token request that finished by length.
    let p = scrape(&client, &p_urls[0]).await;
    assert_eq!(value(&p, "vllm:generation_tokens_total"), 1.0);
    assert_eq!(value(&p, "vllm:prompt_tokens_total"), 1000.0);
    assert_eq!(count_sum(&p, "vllm:request_params_max_tokens"), (1.0, 1.0));
    // The decode server computed no prompt: its steps processed one token each.
    let d = scrape(&client, &d_urls[0]).await;
    assert_eq!(value(&d, "vllm:generation_tokens_total"), 10.0);
    assert_eq!(count_sum(&d, "vllm:iteration_tokens_total"), (10.0, 10.0));

    // What a prefill server answers to the sidecar's request.
    let (status, text) = post(
        &client,
        &format!("{}/v1/completions", p_urls[0]),
        &json!({"prompt": "abcd".repeat(64), "max_tokens": 1,
                "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false}}),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    let kv = &v["kv_transfer_params"];
    assert_eq!(kv["do_remote_prefill"], true);
    assert_eq!(kv["remote_block_ids"].as_array().unwrap().len(), 4);
    assert!(kv["remote_block_ids"][0].is_u64());
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    // A prefiller that is down: the decode server prefills locally.
    let r = client
        .post(format!("{}/v1/completions", d_urls[0]))
        .header("x-prefiller-host-port", "127.0.0.1:1")
        .json(&json!({"prompt": "abcd".repeat(100), "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    prefill.shutdown().await;
    decode.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_and_crashes_are_visible_to_clients() {
    let (servers, urls) = start(
        ServerConfig {
            faults: FaultConfig {
                error_rate: 1.0,
                ..FaultConfig::default()
            },
            ..fast()
        },
        1,
    )
    .await;
    let client = reqwest::Client::new();
    let (status, text) = post(
        &client,
        &format!("{}/v1/completions", urls[0]),
        &json!({"prompt": "x"}),
    )
    .await;
    assert_eq!(status, 500);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "InternalServerError");
    servers.shutdown().await;

    let (servers, urls) = start(
        ServerConfig {
            faults: FaultConfig {
                crash_every_s: Some(0.4),
                down_for_s: 0.4,
                ..FaultConfig::default()
            },
            ..fast()
        },
        1,
    )
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // Poll /health: up, then down (connection refused), then up again.
    let mut states = Vec::new();
    for _ in 0..150 {
        let up = client
            .get(format!("{}/health", urls[0]))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if states.last() != Some(&up) {
            states.push(up);
        }
        if states.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(states[..3], [true, false, true], "{states:?}");
    servers.shutdown().await;
}
