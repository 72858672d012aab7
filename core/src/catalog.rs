//! The catalog of accelerators and models that every cost and latency figure is computed from.
//!
//! Built-in entries carry the datasheet figures listed (with sources) in `docs/simulator.md`;
//! a YAML file can add entries, replace them by id, or override prices
//! ([`Catalog::extend_from_yaml`]). Efficiencies (`mfu`, `mbu`) and interconnect latencies are
//! physical properties of a device running vLLM: they are calibrated against measured step times
//! where measurements exist (H100, A100) and are stated assumptions elsewhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Errors from building or extending a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog YAML is invalid: {0}")]
    Yaml(String),
    #[error("accelerator `{id}`: {field} must be {what}, got {value}")]
    BadAccelerator {
        id: String,
        field: &'static str,
        what: &'static str,
        value: f64,
    },
    #[error("model `{id}`: {field} must be {what}, got {value}")]
    BadModel {
        id: String,
        field: &'static str,
        what: &'static str,
        value: f64,
    },
    #[error("price override for unknown accelerator `{0}`")]
    UnknownPriceOverride(String),
    #[error("unknown accelerator `{id}` (known: {known})")]
    UnknownAccelerator { id: String, known: String },
    #[error("unknown model `{id}` (known: {known})")]
    UnknownModel { id: String, known: String },
}

/// The family of an accelerator, which decides vLLM's back end and default token budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Gpu,
    Tpu,
    Xpu,
}

/// One accelerator device as vLLM sees it (an MI250X is two devices, one per GCD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accelerator {
    /// Catalog id (`h100`, `tpu-v5e`, ...).
    pub id: String,
    /// Marketing name and variant.
    pub name: String,
    pub kind: DeviceKind,
    /// Device memory, GB (1e9 bytes).
    pub memory_gb: f64,
    /// Peak memory bandwidth, TB/s.
    pub bandwidth_tbps: f64,
    /// Peak dense BF16 throughput, TFLOPS.
    pub bf16_tflops: f64,
    /// On-demand price per device-hour, USD.
    pub price_per_hour: f64,
    /// Intra-node link bandwidth per device, one direction, GB/s (tensor-parallel all-reduce).
    pub link_gbps: f64,
    /// All-reduce latency per doubling of the tensor-parallel group, microseconds.
    pub allreduce_latency_us: f64,
    /// Scale-out network per device for KV-cache transfer, Gbit/s.
    pub network_gbit: f64,
    /// Fraction of peak FLOPS vLLM reaches on large GEMMs (prefill).
    pub mfu: f64,
    /// Fraction of peak bandwidth vLLM reaches streaming weights and KV (decode).
    pub mbu: f64,
    /// Whether `mfu`/`mbu`/latency were fitted to measurements (else they are assumptions).
    #[serde(default)]
    pub calibrated: bool,
    /// Where the figures come from.
    #[serde(default)]
    pub source: String,
}

/// How a model's MLP is built, which sets the number of weight matrices per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// Gate, up and down projections (Llama, Qwen).
    Swiglu,
    /// Up and down projections (BLOOM, GPT).
    Gelu,
}

/// A dense decoder-only transformer, as its `config.json` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub id: String,
    /// Hugging Face repository.
    #[serde(default)]
    pub hf_repo: String,
    pub layers: u32,
    pub hidden: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub mlp_size: u32,
    pub vocab: u32,
    pub max_context: u32,
    pub mlp: MlpKind,
    /// Input embedding shared with the LM head.
    #[serde(default)]
    pub tied_embeddings: bool,
    /// Bytes per weight and per KV element (2 for bf16).
    #[serde(default = "default_dtype_bytes")]
    pub dtype_bytes: u32,
}

fn default_dtype_bytes() -> u32 {
    2
}

impl Model {
    /// Weights that take part in matrix multiplies (all layers plus the LM head).
    pub fn matmul_params(&self) -> f64 {
        let (h, heads, kvh, d, f) = (
            self.hidden as f64,
            self.heads as f64,
            self.kv_heads as f64,
            self.head_dim as f64,
            self.mlp_size as f64,
        );
        let attention = h * heads * d + 2.0 * h * kvh * d + heads * d * h;
        let mlp = match self.mlp {
            MlpKind::Swiglu => 3.0 * h * f,
            MlpKind::Gelu => 2.0 * h * f,
        };
        self.layers as f64 * (attention + mlp) + self.vocab as f64 * h
    }

    /// All parameters (matmul weights plus an untied embedding table).
    pub fn total_params(&self) -> f64 {
        let embedding = if self.tied_embeddings {
            0.0
        } else {
            self.vocab as f64 * self.hidden as f64
        };
        self.matmul_params() + embedding
    }

    /// Bytes of weights.
    pub fn weight_bytes(&self) -> f64 {
        self.total_params() * self.dtype_bytes as f64
    }

    /// KV-cache bytes per token over the whole model (K and V, all layers).
    pub fn kv_bytes_per_token(&self) -> f64 {
        2.0 * self.layers as f64
            * self.kv_heads as f64
            * self.head_dim as f64
            * self.dtype_bytes as f64
    }

    /// KV-cache bytes per token held by one tensor-parallel rank. vLLM replicates KV heads when
    /// the TP degree exceeds the KV-head count, so this stops shrinking at `tp = kv_heads`.
    pub fn kv_bytes_per_token_per_rank(&self, tp: u32) -> f64 {
        let heads_per_rank = (self.kv_heads as f64 / tp.max(1) as f64).max(1.0);
        2.0 * self.layers as f64 * heads_per_rank * self.head_dim as f64 * self.dtype_bytes as f64
    }

    /// FLOPs of attention (QK^T and PV) per (query token, context token) pair.
    pub fn attention_flops_per_pair(&self) -> f64 {
        4.0 * self.layers as f64 * self.heads as f64 * self.head_dim as f64
    }
}

/// vLLM engine limits for one replica (`max_num_seqs`, `max_num_batched_tokens`, block size,
/// `gpu_memory_utilization`, prefix caching).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineLimits {
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    pub block_size: u32,
    pub gpu_memory_utilization: f64,
    pub enable_prefix_caching: bool,
    /// Device memory reserved for activations, CUDA graphs and non-torch allocations, GB per
    /// device (vLLM measures this by profiling; 3 GB is a typical figure).
    pub reserved_gb_per_device: f64,
}

impl EngineLimits {
    /// vLLM's defaults in the OpenAI server context for this device (EngineArgs default logic,
    /// v0.10-v0.11): big GPUs (>= 70 GiB, A100 excluded on purpose) get 8192 tokens and 1024
    /// sequences, other GPUs 2048 and 256; TPU v6e 1024, v5e 512 tokens.
    pub fn vllm_defaults(acc: &Accelerator) -> Self {
        let gib = acc.memory_gb * 1e9 / (1u64 << 30) as f64;
        let big_gpu = gib >= 70.0 && !acc.id.contains("a100");
        let (tokens, seqs) = match acc.kind {
            DeviceKind::Tpu if acc.id.contains("v6e") => (1024, 256),
            DeviceKind::Tpu if acc.id.contains("v5p") => (256, 256),
            DeviceKind::Tpu => (512, 256),
            _ if big_gpu => (8192, 1024),
            _ => (2048, 256),
        };
        Self {
            max_num_seqs: seqs,
            max_num_batched_tokens: tokens,
            block_size: 16,
            gpu_memory_utilization: 0.9,
            enable_prefix_caching: true,
            reserved_gb_per_device: 3.0,
        }
    }
}

/// Accelerators and models by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Catalog {
    pub accelerators: BTreeMap<String, Accelerator>,
    pub models: BTreeMap<String, Model>,
}

/// The shape of a catalog extension file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    accelerators: Vec<Accelerator>,
    #[serde(default)]
    models: Vec<Model>,
    /// Price overrides by accelerator id, USD per device-hour.
    #[serde(default)]
    prices: BTreeMap<String, f64>,
}

impl Catalog {
    /// The built-in catalog: the accelerators and models of `docs/simulator.md`.
    pub fn builtin() -> Self {
        let mut c = Catalog::default();
        for a in builtin_accelerators() {
            c.accelerators.insert(a.id.clone(), a);
        }
        for m in builtin_models() {
            c.models.insert(m.id.clone(), m);
        }
        c
    }

    /// Adds or replaces entries from a YAML document with optional `accelerators:`, `models:`
    /// and `prices:` (id -> USD per device-hour) keys. Every entry is validated.
    pub fn extend_from_yaml(&mut self, yaml: &str) -> Result<(), CatalogError> {
        let file: CatalogFile =
            serde_saphyr::from_str(yaml).map_err(|e| CatalogError::Yaml(e.to_string()))?;
        for a in file.accelerators {
            validate_accelerator(&a)?;
            self.accelerators.insert(a.id.clone(), a);
        }
        for m in file.models {
            validate_model(&m)?;
            self.models.insert(m.id.clone(), m);
        }
        for (id, price) in file.prices {
            let acc = self
                .accelerators
                .get_mut(&id)
                .ok_or_else(|| CatalogError::UnknownPriceOverride(id.clone()))?;
            acc.price_per_hour = price;
            validate_accelerator(acc)?;
        }
        Ok(())
    }

    /// Looks an accelerator up by id.
    pub fn accelerator(&self, id: &str) -> Result<&Accelerator, CatalogError> {
        self.accelerators
            .get(id)
            .ok_or_else(|| CatalogError::UnknownAccelerator {
                id: id.to_string(),
                known: self
                    .accelerators
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Looks a model up by id.
    pub fn model(&self, id: &str) -> Result<&Model, CatalogError> {
        self.models
            .get(id)
            .ok_or_else(|| CatalogError::UnknownModel {
                id: id.to_string(),
                known: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }
}

fn check(
    ok: bool,
    id: &str,
    field: &'static str,
    what: &'static str,
    value: f64,
) -> Result<(), CatalogError> {
    if ok {
        Ok(())
    } else {
        Err(CatalogError::BadAccelerator {
            id: id.to_string(),
            field,
            what,
            value,
        })
    }
}

fn validate_accelerator(a: &Accelerator) -> Result<(), CatalogError> {
    let pos = |v: f64| v.is_finite() && v > 0.0;
    let frac = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
    check(
        pos(a.memory_gb),
        &a.id,
        "memory_gb",
        "positive",
        a.memory_gb,
    )?;
    check(
        pos(a.bandwidth_tbps),
        &a.id,
        "bandwidth_tbps",
        "positive",
        a.bandwidth_tbps,
    )?;
    check(
        pos(a.bf16_tflops),
        &a.id,
        "bf16_tflops",
        "positive",
        a.bf16_tflops,
    )?;
    check(
        a.price_per_hour.is_finite() && a.price_per_hour >= 0.0,
        &a.id,
        "price_per_hour",
        "non-negative",
        a.price_per_hour,
    )?;
    check(
        pos(a.link_gbps),
        &a.id,
        "link_gbps",
        "positive",
        a.link_gbps,
    )?;
    check(
        a.allreduce_latency_us.is_finite() && a.allreduce_latency_us >= 0.0,
        &a.id,
        "allreduce_latency_us",
        "non-negative",
        a.allreduce_latency_us,
    )?;
    check(
        pos(a.network_gbit),
        &a.id,
        "network_gbit",
        "positive",
        a.network_gbit,
    )?;
    check(frac(a.mfu), &a.id, "mfu", "in (0, 1]", a.mfu)?;
    check(frac(a.mbu), &a.id, "mbu", "in (0, 1]", a.mbu)?;
    Ok(())
}

fn validate_model(m: &Model) -> Result<(), CatalogError> {
    let fields: [(&'static str, u32); 9] = [
        ("layers", m.layers),
        ("hidden", m.hidden),
        ("heads", m.heads),
        ("kv_heads", m.kv_heads),
        ("head_dim", m.head_dim),
        ("mlp_size", m.mlp_size),
        ("vocab", m.vocab),
        ("max_context", m.max_context),
        ("dtype_bytes", m.dtype_bytes),
    ];
    for (field, v) in fields {
        if v == 0 {
            return Err(CatalogError::BadModel {
                id: m.id.clone(),
                field,
                what: "positive",
                value: 0.0,
            });
        }
    }
    if m.kv_heads > m.heads {
        return Err(CatalogError::BadModel {
            id: m.id.clone(),
            field: "kv_heads",
            what: "at most `heads`",
            value: m.kv_heads as f64,
        });
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn acc(
    id: &str,
    name: &str,
    kind: DeviceKind,
    memory_gb: f64,
    bandwidth_tbps: f64,
    bf16_tflops: f64,
    price_per_hour: f64,
    link_gbps: f64,
    allreduce_latency_us: f64,
    network_gbit: f64,
    mfu: f64,
    mbu: f64,
    calibrated: bool,
    source: &str,
) -> Accelerator {
    Accelerator {
        id: id.into(),
        name: name.into(),
        kind,
        memory_gb,
        bandwidth_tbps,
        bf16_tflops,
        price_per_hour,
        link_gbps,
        allreduce_latency_us,
        network_gbit,
        mfu,
        mbu,
        calibrated,
        source: source.into(),
    }
}

/// Datasheet figures and prices from `../shared/reference/simulation-facts.md` §1 (sources named
/// per row in docs/simulator.md). `mfu`, `mbu` and `allreduce_latency_us` of h100 and a100 are
/// fitted to the Splitwise Llama-2-70B measurements; the others are assumptions scaled from
/// them (see docs/simulator.md, "Efficiencies").
fn builtin_accelerators() -> Vec<Accelerator> {
    use DeviceKind::*;
    vec![
        acc(
            "h100",
            "NVIDIA H100 SXM5 80GB",
            Gpu,
            80.0,
            3.35,
            989.4,
            3.99,
            450.0,
            45.0,
            400.0,
            0.60,
            0.72,
            true,
            "NVIDIA H100 datasheet; price RunPod Secure / Lambda 3.99 USD",
        ),
        acc(
            "a100",
            "NVIDIA A100 SXM4 80GB",
            Gpu,
            80.0,
            2.039,
            312.0,
            1.79,
            300.0,
            66.0,
            200.0,
            0.67,
            0.74,
            true,
            "NVIDIA A100 datasheet; price RunPod Secure 1.79 USD",
        ),
        acc(
            "l40s",
            "NVIDIA L40S 48GB PCIe",
            Gpu,
            48.0,
            0.864,
            362.05,
            0.90,
            32.0,
            80.0,
            100.0,
            0.43,
            0.70,
            false,
            "NVIDIA L40S datasheet; price Cudo 0.90 USD",
        ),
        acc(
            "mi300x",
            "AMD Instinct MI300X 192GB",
            Gpu,
            192.0,
            5.3,
            1307.4,
            1.85,
            448.0,
            50.0,
            400.0,
            0.45,
            0.65,
            false,
            "AMD MI300X data sheet; price Vultr listing (unverified)",
        ),
        acc(
            "mi250",
            "AMD Instinct MI250X, one GCD",
            Gpu,
            64.0,
            1.638,
            191.5,
            1.00,
            50.0,
            70.0,
            200.0,
            0.50,
            0.65,
            false,
            "AMD MI250X data sheet, per GCD; no public on-demand price (placeholder)",
        ),
        acc(
            "tpu-v5e",
            "Google Cloud TPU v5e",
            Tpu,
            16.0,
            0.819,
            197.0,
            1.20,
            200.0,
            30.0,
            100.0,
            0.50,
            0.70,
            false,
            "cloud.google.com/tpu/docs/v5e; price Google list (unverified)",
        ),
        acc(
            "tpu-v6e",
            "Google Cloud TPU v6e (Trillium)",
            Tpu,
            32.0,
            1.638,
            918.0,
            2.70,
            400.0,
            30.0,
            200.0,
            0.50,
            0.70,
            false,
            "cloud.google.com/tpu/docs/v6e; price Google list (unverified)",
        ),
        acc(
            "gaudi3",
            "Intel Gaudi 3 OAM",
            Xpu,
            128.0,
            3.67,
            1835.0,
            2.00,
            600.0,
            60.0,
            400.0,
            0.45,
            0.70,
            false,
            "Intel Hot Chips 2024 Gaudi 3 talk; no public on-demand price (placeholder)",
        ),
        acc(
            "max1550",
            "Intel Data Center GPU Max 1550",
            Xpu,
            128.0,
            3.2768,
            839.0,
            1.50,
            200.0,
            60.0,
            200.0,
            0.45,
            0.60,
            false,
            "Intel ARK 232873; no public on-demand price (placeholder)",
        ),
    ]
}

#[allow(clippy::too_many_arguments)]
fn model(
    id: &str,
    hf_repo: &str,
    layers: u32,
    hidden: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    mlp_size: u32,
    vocab: u32,
    max_context: u32,
    mlp: MlpKind,
    tied_embeddings: bool,
) -> Model {
    Model {
        id: id.into(),
        hf_repo: hf_repo.into(),
        layers,
        hidden,
        heads,
        kv_heads,
        head_dim,
        mlp_size,
        vocab,
        max_context,
        mlp,
        tied_embeddings,
        dtype_bytes: 2,
    }
}

/// Shapes from each model's `config.json` (simulation-facts.md §2.1).
fn builtin_models() -> Vec<Model> {
    use MlpKind::*;
    vec![
        model(
            "llama-3.1-8b",
            "meta-llama/Llama-3.1-8B",
            32,
            4096,
            32,
            8,
            128,
            14336,
            128256,
            131072,
            Swiglu,
            false,
        ),
        model(
            "llama-3.1-70b",
            "meta-llama/Llama-3.1-70B",
            80,
            8192,
            64,
            8,
            128,
            28672,
            128256,
            131072,
            Swiglu,
            false,
        ),
        model(
            "llama-2-70b",
            "meta-llama/Llama-2-70b-hf",
            80,
            8192,
            64,
            8,
            128,
            28672,
            32000,
            4096,
            Swiglu,
            false,
        ),
        model(
            "qwen3-32b",
            "Qwen/Qwen3-32B",
            64,
            5120,
            64,
            8,
            128,
            25600,
            151936,
            40960,
            Swiglu,
            false,
        ),
        model(
            "bloom-176b",
            "bigscience/bloom",
            70,
            14336,
            112,
            112,
            128,
            57344,
            250880,
            2048,
            Gelu,
            true,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_published_sizes() {
        let c = Catalog::builtin();
        let expect = [
            ("llama-3.1-8b", 8.030e9),
            ("llama-3.1-70b", 70.554e9),
            ("llama-2-70b", 68.977e9),
            ("qwen3-32b", 32.762e9),
            ("bloom-176b", 176.247e9),
        ];
        for (id, params) in expect {
            let m = c.model(id).unwrap();
            let rel = (m.total_params() - params).abs() / params;
            assert!(rel < 0.002, "{id}: {} vs {params}", m.total_params());
        }
        // 2 * N_mm per token for llama-3.1-8b is 15.01 GFLOP (simulation-facts §2.3).
        let m = c.model("llama-3.1-8b").unwrap();
        assert!((2.0 * m.matmul_params() / 1e9 - 15.01).abs() < 0.01);
        assert_eq!(m.kv_bytes_per_token(), 131072.0);
        // KV heads are replicated past TP = kv_heads.
        assert_eq!(
            m.kv_bytes_per_token_per_rank(8),
            m.kv_bytes_per_token_per_rank(16)
        );
    }

    #[test]
    fn engine_defaults_follow_vllm_rules() {
        let c = Catalog::builtin();
        let h100 = EngineLimits::vllm_defaults(c.accelerator("h100").unwrap());
        assert_eq!(
            (h100.max_num_batched_tokens, h100.max_num_seqs),
            (8192, 1024)
        );
        let a100 = EngineLimits::vllm_defaults(c.accelerator("a100").unwrap());
        assert_eq!(
            (a100.max_num_batched_tokens, a100.max_num_seqs),
            (2048, 256)
        );
        let v5e = EngineLimits::vllm_defaults(c.accelerator("tpu-v5e").unwrap());
        assert_eq!(v5e.max_num_batched_tokens, 512);
    }

    #[test]
    fn yaml_extends_overrides_and_validates() {
        let mut c = Catalog::builtin();
        c.extend_from_yaml("prices:\n  h100: 2.69\n").unwrap();
        assert_eq!(c.accelerator("h100").unwrap().price_per_hour, 2.69);
        let err = c.extend_from_yaml("prices:\n  h200: 1.0\n").unwrap_err();
        assert!(err.to_string().contains("h200"));
        let err = c.extend_from_yaml("prices:\n  h100: -1.0\n").unwrap_err();
        assert!(err.to_string().contains("price_per_hour"), "{err}");
        let err = c.extend_from_yaml("models:\n  - id: x\n").unwrap_err();
        assert!(err.to_string().contains("invalid"), "{err}");
        let err = c.model("gpt-5").unwrap_err().to_string();
        assert!(
            err.contains("gpt-5") && err.contains("llama-3.1-8b"),
            "{err}"
        );
    }
}
