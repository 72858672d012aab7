//! Built-in workload generators: synthetic request streams that need no data files.
//!
//! A [`GeneratorSpec`] combines
//!
//! * an **arrival process** ([`ArrivalProcess`]): Poisson, or a Gamma renewal process whose
//!   inter-arrival coefficient of variation sets the burstiness (shape `k = 1/CV^2`; CV 1 to 3
//!   suits chat traffic, above 5 batch/API-style code traffic, per the Azure 2023 and Mooncake
//!   statistics collected in `shared/reference/simulation-facts.md` section 6);
//! * a **rate envelope** ([`Envelope`]): constant, a sinusoidal day compressed into any period,
//!   or piecewise-constant steps. The envelope is applied by a time change (the renewal process
//!   runs in "operational time" `Λ(t) = rate·∫₀ᵗ m(u) du` and is mapped back to wall time), which
//!   for Poisson arrivals is the same process as thinning and for Gamma arrivals keeps the
//!   requested CV at every rate level (thinning would dilute it towards 1 where the rate is low);
//! * **length distributions** ([`LengthProfile`]): presets fitted to published trace statistics,
//!   a fixed pair, or a custom log-normal;
//! * an optional **shared-prefix model** ([`PrefixProfile`]) that gives requests common leading
//!   hash blocks so prefix caching has something to hit.
//!
//! Everything is deterministic given [`GeneratorSpec::seed`]; arrivals, lengths and prefixes use
//! separate random streams, so changing the length profile does not move the arrivals.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::{Exp1, Gamma, StandardNormal};
use serde::{Deserialize, Serialize};

use super::{RequestSpec, Workload};

/// Tokens per hash block in generated workloads (vLLM's default KV block size).
pub const GENERATED_HASH_BLOCK_TOKENS: u32 = 16;

/// Upper bound on the expected number of requests one spec may generate (guards memory).
pub const MAX_GENERATED_REQUESTS: u64 = 50_000_000;

/// Largest inter-arrival CV accepted: far beyond the burstiest published trace (Azure 2023
/// coding, CV 13.2), and small enough that Gamma gaps keep a usable mean in floating point.
pub const MAX_ARRIVAL_CV: f64 = 100.0;

/// Largest daily peak-to-trough ratio accepted (keeps the trough rate representable).
pub const MAX_PEAK_TO_TROUGH: f64 = 1e6;

/// Largest token length a profile may produce (16 Mi tokens; keeps hash-id lists bounded).
pub const MAX_TOKENS: u32 = 1 << 24;

/// z-score of the 90th percentile of the standard normal distribution.
const Z90: f64 = 1.281_551_565_544_600_5;

/// Seed offsets giving lengths and prefixes their own random streams.
const LENGTH_STREAM: u64 = 0x6c65_6e67_7468_7321;
const PREFIX_STREAM: u64 = 0x7072_6566_6978_6573;

/// A generator specification that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    /// A field has an unusable value.
    #[error("invalid generator spec: `{field}` {reason}")]
    Invalid {
        /// Field path, e.g. `arrival.gamma.cv`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The spec asks for more requests than [`MAX_GENERATED_REQUESTS`].
    #[error(
        "generator spec would produce about {expected:.0} requests, more than the limit of {limit}"
    )]
    TooManyRequests {
        /// Expected number of requests (rate times the envelope's integral over the duration).
        expected: f64,
        /// The limit.
        limit: u64,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> GenerateError {
    GenerateError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn positive_finite(field: &str, v: f64) -> Result<(), GenerateError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(field, format!("must be finite and > 0, got {v}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Arrivals
// ---------------------------------------------------------------------------------------------

/// How inter-arrival times are drawn (before the envelope is applied).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ArrivalProcess {
    /// Exponential gaps (CV 1).
    #[default]
    Poisson,
    /// Gamma renewal process with inter-arrival coefficient of variation `cv`
    /// (shape `1/cv^2`); `cv > 1` is burstier than Poisson, `cv < 1` smoother.
    Gamma {
        /// Coefficient of variation of the inter-arrival times (> 0).
        cv: f64,
    },
}

impl ArrivalProcess {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), GenerateError> {
        match *self {
            ArrivalProcess::Poisson => Ok(()),
            ArrivalProcess::Gamma { cv } => {
                positive_finite("arrival.gamma.cv", cv)?;
                if cv > MAX_ARRIVAL_CV {
                    return Err(invalid(
                        "arrival.gamma.cv",
                        format!("must be at most {MAX_ARRIVAL_CV}, got {cv}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for ArrivalProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArrivalProcess::Poisson => write!(f, "poisson"),
            ArrivalProcess::Gamma { cv } => write!(f, "gamma cv {cv}"),
        }
    }
}

/// A rate multiplier over time, `m(t)`; the instantaneous arrival rate is `rate * m(t)`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Envelope {
    /// `m(t) = 1`.
    #[default]
    Constant,
    /// A sinusoidal day compressed into `period_s`:
    /// `m(t) = 1 - a·cos(2π(t/period_s - phase))` with `a = (r-1)/(r+1)` for
    /// `r = peak_to_trough`. It averages 1 over a period (so `rate` stays the mean rate), is
    /// lowest (`1-a`) at `t = phase·period_s` and highest (`1+a`) half a period later. Published
    /// weekday peak-to-trough ratios (Azure 2024 week-long traces): about 10 for coding, 2 for
    /// chat (`shared/data/README.md`).
    Daily {
        /// Ratio of the highest to the lowest rate (>= 1).
        peak_to_trough: f64,
        /// Length of one "day" in seconds (> 0); 86400 for real time, 3600 to fit a day into a
        /// one-hour trace.
        period_s: f64,
        /// Where the trough falls, as a fraction of the period (0 starts at the trough).
        #[serde(default)]
        phase: f64,
    },
    /// Piecewise-constant multipliers: `(start_s, multiplier)` pairs with strictly increasing
    /// start times; the multiplier holds until the next step. Before the first step it is 1.
    Steps(Vec<(f64, f64)>),
}

impl Envelope {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), GenerateError> {
        match self {
            Envelope::Constant => Ok(()),
            Envelope::Daily {
                peak_to_trough,
                period_s,
                phase,
            } => {
                if !(*peak_to_trough >= 1.0 && *peak_to_trough <= MAX_PEAK_TO_TROUGH) {
                    return Err(invalid(
                        "envelope.daily.peak_to_trough",
                        format!("must be in [1, {MAX_PEAK_TO_TROUGH}], got {peak_to_trough}"),
                    ));
                }
                positive_finite("envelope.daily.period_s", *period_s)?;
                if !phase.is_finite() {
                    return Err(invalid(
                        "envelope.daily.phase",
                        format!("must be finite, got {phase}"),
                    ));
                }
                Ok(())
            }
            Envelope::Steps(steps) => {
                if steps.is_empty() {
                    return Err(invalid("envelope.steps", "must hold at least one step"));
                }
                let mut prev = f64::NEG_INFINITY;
                for (i, &(t, m)) in steps.iter().enumerate() {
                    if !(t.is_finite() && t >= 0.0) {
                        return Err(invalid(
                            format!("envelope.steps[{i}].start_s"),
                            format!("must be finite and >= 0, got {t}"),
                        ));
                    }
                    if t <= prev {
                        return Err(invalid(
                            format!("envelope.steps[{i}].start_s"),
                            format!("must be greater than the previous step's ({prev}), got {t}"),
                        ));
                    }
                    if !(m.is_finite() && m >= 0.0) {
                        return Err(invalid(
                            format!("envelope.steps[{i}].multiplier"),
                            format!("must be finite and >= 0, got {m}"),
                        ));
                    }
                    prev = t;
                }
                Ok(())
            }
        }
    }

    /// Daily envelope amplitude `a = (r-1)/(r+1)`.
    fn amplitude(peak_to_trough: f64) -> f64 {
        (peak_to_trough - 1.0) / (peak_to_trough + 1.0)
    }

    /// The multiplier `m(t)` (t in seconds from the start).
    pub fn multiplier(&self, t: f64) -> f64 {
        match self {
            Envelope::Constant => 1.0,
            Envelope::Daily {
                peak_to_trough,
                period_s,
                phase,
            } => {
                let a = Self::amplitude(*peak_to_trough);
                1.0 - a * (std::f64::consts::TAU * (t / period_s - phase)).cos()
            }
            Envelope::Steps(steps) => {
                let k = steps.partition_point(|&(s, _)| s <= t);
                if k == 0 { 1.0 } else { steps[k - 1].1 }
            }
        }
    }

    /// The largest value `m(t)` takes for `t >= 0`.
    pub fn max_multiplier(&self) -> f64 {
        match self {
            Envelope::Constant => 1.0,
            Envelope::Daily { peak_to_trough, .. } => 1.0 + Self::amplitude(*peak_to_trough),
            Envelope::Steps(steps) => {
                let from_steps = steps.iter().map(|&(_, m)| m).fold(0.0, f64::max);
                // Before a first step at t > 0 the multiplier is 1.
                match steps.first() {
                    Some(&(t0, _)) if t0 > 0.0 => from_steps.max(1.0),
                    None => 1.0,
                    _ => from_steps,
                }
            }
        }
    }

    /// `∫₀ᵗ m(u) du`.
    pub fn cumulative(&self, t: f64) -> f64 {
        match self {
            Envelope::Constant => t,
            Envelope::Daily {
                peak_to_trough,
                period_s,
                phase,
            } => {
                let a = Self::amplitude(*peak_to_trough);
                let w = std::f64::consts::TAU / period_s;
                t - a / w
                    * ((w * t - std::f64::consts::TAU * phase).sin()
                        + (std::f64::consts::TAU * phase).sin())
            }
            Envelope::Steps(steps) => {
                let mut acc = 0.0;
                let mut seg_start = 0.0;
                let mut m = 1.0;
                for &(s, next_m) in steps {
                    if s >= t {
                        break;
                    }
                    acc += m * (s - seg_start);
                    seg_start = s;
                    m = next_m;
                }
                acc + m * (t - seg_start).max(0.0)
            }
        }
    }

    /// The time `t` at which `cumulative(t) == y` (the first such time), or `None` when the
    /// envelope never accumulates `y` (a final step with multiplier 0).
    pub fn inverse_cumulative(&self, y: f64) -> Option<f64> {
        if y <= 0.0 {
            return Some(0.0);
        }
        match self {
            Envelope::Constant => Some(y),
            Envelope::Daily { peak_to_trough, .. } => {
                let a = Self::amplitude(*peak_to_trough);
                // m lies in [1-a, 1+a] with 1-a > 0, so C is strictly increasing and the root is
                // bracketed by y/(1+a) and y/(1-a). Newton steps, falling back to bisection.
                let (mut lo, mut hi) = (y / (1.0 + a), y / (1.0 - a));
                let mut t = y;
                for _ in 0..100 {
                    let f = self.cumulative(t) - y;
                    if f.abs() <= 1e-12 * y.max(1.0) {
                        break;
                    }
                    if f > 0.0 {
                        hi = t;
                    } else {
                        lo = t;
                    }
                    let next = t - f / self.multiplier(t);
                    t = if next > lo && next < hi {
                        next
                    } else {
                        0.5 * (lo + hi)
                    };
                    if hi - lo <= 1e-12 * hi {
                        break;
                    }
                }
                Some(t)
            }
            Envelope::Steps(steps) => {
                // Segments: [0, s0) at multiplier 1, then [s_i, s_{i+1}) at m_i.
                let mut acc = 0.0;
                let mut seg_start = 0.0;
                let mut m = 1.0;
                for &(s, next_m) in steps {
                    let seg = m * (s - seg_start);
                    if acc + seg >= y && m > 0.0 {
                        return Some(seg_start + (y - acc) / m);
                    }
                    acc += seg;
                    seg_start = s;
                    m = next_m;
                }
                (m > 0.0).then(|| seg_start + (y - acc) / m)
            }
        }
    }
}

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Envelope::Constant => write!(f, "constant"),
            Envelope::Daily {
                peak_to_trough,
                period_s,
                phase,
            } => write!(
                f,
                "daily {peak_to_trough}:1 over {period_s} s, phase {phase}"
            ),
            Envelope::Steps(steps) => write!(f, "{} steps", steps.len()),
        }
    }
}

/// Draws arrival times in `[0, duration_s)` for a renewal process of mean rate `rate` (req/s)
/// modulated by `envelope` (see the module docs for the time change). Parameters must have been
/// validated.
pub fn generate_arrivals<R: Rng + ?Sized>(
    rate: f64,
    duration_s: f64,
    process: ArrivalProcess,
    envelope: &Envelope,
    rng: &mut R,
) -> Result<Vec<f64>, GenerateError> {
    positive_finite("rate", rate)?;
    positive_finite("duration_s", duration_s)?;
    process.validate()?;
    envelope.validate()?;
    let total = rate * envelope.cumulative(duration_s);
    if !total.is_finite() || total > MAX_GENERATED_REQUESTS as f64 {
        return Err(GenerateError::TooManyRequests {
            expected: total,
            limit: MAX_GENERATED_REQUESTS,
        });
    }
    // Unit-mean gaps in operational time.
    let gamma = match process {
        ArrivalProcess::Poisson => None,
        ArrivalProcess::Gamma { cv } => {
            let shape = 1.0 / (cv * cv);
            Some(Gamma::new(shape, 1.0 / shape).map_err(|e| {
                invalid(
                    "arrival.gamma.cv",
                    format!("gives an unusable Gamma shape {shape}: {e}"),
                )
            })?)
        }
    };
    let mut out = Vec::with_capacity((total * 1.05) as usize + 16);
    let mut s = 0.0_f64;
    let mut prev_t = 0.0_f64;
    loop {
        let gap: f64 = match &gamma {
            None => rng.sample(Exp1),
            Some(g) => rng.sample(g),
        };
        s += gap;
        if s >= total {
            break;
        }
        let Some(t) = envelope.inverse_cumulative(s / rate) else {
            break;
        };
        let t = t.max(prev_t);
        if t >= duration_s {
            break;
        }
        if out.len() as u64 >= MAX_GENERATED_REQUESTS {
            return Err(GenerateError::TooManyRequests {
                expected: total,
                limit: MAX_GENERATED_REQUESTS,
            });
        }
        out.push(t);
        prev_t = t;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Lengths
// ---------------------------------------------------------------------------------------------

/// A log-normal token-length distribution fitted to a median and a 90th percentile
/// (`μ = ln median`, `σ = ln(p90/median) / 1.2816`), rounded and clamped to `[1, max]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogNormalLengths {
    /// Median tokens (> 0).
    pub median: f64,
    /// 90th-percentile tokens (>= median).
    pub p90: f64,
    /// Largest length produced (>= 1).
    pub max: u32,
}

impl LogNormalLengths {
    /// The log-normal `σ`.
    pub fn sigma(&self) -> f64 {
        (self.p90 / self.median).ln() / Z90
    }

    /// Checks the parameters; `field` prefixes error field names.
    pub fn validate(&self, field: &str) -> Result<(), GenerateError> {
        positive_finite(&format!("{field}.median"), self.median)?;
        if !(self.p90.is_finite() && self.p90 >= self.median) {
            return Err(invalid(
                format!("{field}.p90"),
                format!(
                    "must be finite and >= the median ({}), got {}",
                    self.median, self.p90
                ),
            ));
        }
        if self.max == 0 || self.max > MAX_TOKENS {
            return Err(invalid(
                format!("{field}.max"),
                format!("must be in 1..={MAX_TOKENS}, got {}", self.max),
            ));
        }
        Ok(())
    }

    /// Draws one length.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let z: f64 = rng.sample(StandardNormal);
        let x = (self.median * (self.sigma() * z).exp()).round();
        // NaN (impossible after validation) falls to the lower clamp.
        if x >= f64::from(self.max) {
            self.max
        } else if x >= 1.0 {
            x as u32
        } else {
            1
        }
    }
}

/// Request length distributions.
///
/// Presets are log-normals fitted to a published median and p90 (see [`LogNormalLengths`]),
/// capped at the trace's observed maximum. Input and output lengths are drawn independently (the
/// real traces show a weak positive correlation, which this ignores). A log-normal cannot match
/// median, p90 and mean at once; the fit error on the mean is given for each preset (computed
/// analytically for the clamped log-normal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum LengthProfile {
    /// Azure 2023 conversation trace (derived stats, simulation-facts §6): input median 1020,
    /// p90 2735, max 14050 (mean 1155; fit mean 1370, +19 %); output median 129, p90 424,
    /// max 1000 (mean 211; fit mean 192, -9 %).
    #[serde(rename = "azure-conv")]
    AzureConv,
    /// Azure 2023 coding trace: input median 1469, p90 5188, max 7437 (mean 2048; fit mean 2150,
    /// +5 %); output median 13, p90 55, max 1899 (mean 27.9; fit mean 24, -12 %).
    #[serde(rename = "azure-code")]
    AzureCode,
    /// Mooncake FAST'25 conversation trace: input median 6909, p90 27367, max 126195 (mean
    /// 12035; fit mean 12099, +1 %); output median 350, p90 597 (derived here from
    /// `mooncake-conversation.jsonl`), max 2000 (mean 343; fit mean 382, +11 %).
    #[serde(rename = "mooncake-conv")]
    MooncakeConv,
    /// ShareGPT as used in the vLLM paper (Kwon et al., SOSP 2023): only the means are published
    /// (input 161, output 338), so the spread is borrowed from the multi-turn ShareGPT length file
    /// (`sharegpt-lengths.csv`, sarathi-serve: σ = 0.93 input, 0.545 output) and the medians set
    /// so the means match: input median 104.5, p90 344, output median 291.4, p90 585.8 (fit
    /// means 161 and 338, within 1 %); caps 32768 / 4096.
    #[serde(rename = "sharegpt")]
    ShareGpt,
    /// arXiv summarisation (long prompts), stats computed once from
    /// `arxiv-summarization-lengths.csv` (microsoft/vidur, 28,257 pairs, Llama-2 tokenizer):
    /// input median 2730, p90 3702, max 4054 (mean 2588; fit mean 2787, +8 %: the real
    /// distribution is cut at ~4k and skewed left); output median 167, p90 372, max 4056 (mean
    /// 291; fit mean 203, -30 %: a heavy tail of long summaries, p99 3273, that a log-normal
    /// through the p90 misses).
    #[serde(rename = "arxiv")]
    Arxiv,
    /// Every request has the same lengths (values of 0 are raised to 1).
    #[serde(rename = "fixed")]
    Fixed {
        /// Input tokens.
        input: u32,
        /// Output tokens.
        output: u32,
    },
    /// Custom log-normal input and output distributions.
    #[serde(rename = "log_normal")]
    LogNormal {
        /// Input length distribution.
        input: LogNormalLengths,
        /// Output length distribution.
        output: LogNormalLengths,
    },
}

/// Names accepted by [`LengthProfile::from_str`] for the presets.
pub const LENGTH_PRESETS: [&str; 5] = [
    "azure-conv",
    "azure-code",
    "mooncake-conv",
    "sharegpt",
    "arxiv",
];

const fn ln(median: f64, p90: f64, max: u32) -> LogNormalLengths {
    LogNormalLengths { median, p90, max }
}

impl LengthProfile {
    /// The (input, output) log-normals behind this profile; `None` for [`LengthProfile::Fixed`].
    pub fn distributions(&self) -> Option<(LogNormalLengths, LogNormalLengths)> {
        match self {
            LengthProfile::AzureConv => Some((ln(1020.0, 2735.0, 14_050), ln(129.0, 424.0, 1000))),
            LengthProfile::AzureCode => Some((ln(1469.0, 5188.0, 7437), ln(13.0, 55.0, 1899))),
            LengthProfile::MooncakeConv => {
                Some((ln(6909.0, 27_367.0, 126_195), ln(350.0, 597.0, 2000)))
            }
            LengthProfile::ShareGpt => Some((ln(104.5, 344.1, 32_768), ln(291.4, 585.8, 4096))),
            LengthProfile::Arxiv => Some((ln(2730.0, 3702.0, 4054), ln(167.0, 372.0, 4056))),
            LengthProfile::Fixed { .. } => None,
            LengthProfile::LogNormal { input, output } => Some((*input, *output)),
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), GenerateError> {
        match self {
            LengthProfile::LogNormal { input, output } => {
                input.validate("lengths.log_normal.input")?;
                output.validate("lengths.log_normal.output")?;
            }
            LengthProfile::Fixed { input, output } => {
                for (field, v) in [
                    ("lengths.fixed.input", input),
                    ("lengths.fixed.output", output),
                ] {
                    if *v > MAX_TOKENS {
                        return Err(invalid(
                            field,
                            format!("must be at most {MAX_TOKENS}, got {v}"),
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Draws one (input, output) pair, both >= 1.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> (u32, u32) {
        match (self, self.distributions()) {
            (LengthProfile::Fixed { input, output }, _) => ((*input).max(1), (*output).max(1)),
            (_, Some((i, o))) => (i.sample(rng), o.sample(rng)),
            (_, None) => (1, 1),
        }
    }
}

impl fmt::Display for LengthProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LengthProfile::AzureConv => write!(f, "azure-conv"),
            LengthProfile::AzureCode => write!(f, "azure-code"),
            LengthProfile::MooncakeConv => write!(f, "mooncake-conv"),
            LengthProfile::ShareGpt => write!(f, "sharegpt"),
            LengthProfile::Arxiv => write!(f, "arxiv"),
            LengthProfile::Fixed { input, output } => write!(f, "fixed {input}/{output}"),
            LengthProfile::LogNormal { input, output } => write!(
                f,
                "log-normal in {}/{} out {}/{}",
                input.median, input.p90, output.median, output.p90
            ),
        }
    }
}

impl FromStr for LengthProfile {
    type Err = GenerateError;

    /// Parses a preset name (see [`LENGTH_PRESETS`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "azure-conv" => Ok(LengthProfile::AzureConv),
            "azure-code" => Ok(LengthProfile::AzureCode),
            "mooncake-conv" => Ok(LengthProfile::MooncakeConv),
            "sharegpt" => Ok(LengthProfile::ShareGpt),
            "arxiv" => Ok(LengthProfile::Arxiv),
            other => Err(invalid(
                "lengths",
                format!(
                    "\"{other}\" is not a preset (expected one of {})",
                    LENGTH_PRESETS.join(", ")
                ),
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared prefixes
// ---------------------------------------------------------------------------------------------

/// Shared-prefix model for prefix caching: each request belongs to one of `groups` groups (for
/// example a system prompt or a few-shot template) and the first `prefix_tokens` of its prompt
/// carry that group's hash blocks; the rest of the prompt gets fresh ids. Only whole blocks
/// (`prefix_tokens / 16`) are shared. A prompt shorter than the prefix is all prefix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixProfile {
    /// Number of distinct prefixes (>= 1).
    pub groups: u32,
    /// Tokens in each shared prefix.
    pub prefix_tokens: u32,
    /// Group popularity: weight of group `g` (0-based) is `1/(g+1)^zipf_exponent`; 0 (the
    /// default) picks groups uniformly.
    #[serde(default)]
    pub zipf_exponent: f64,
}

/// Most prefix groups a [`PrefixProfile`] may have.
pub const MAX_PREFIX_GROUPS: u32 = 1_000_000;

impl PrefixProfile {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), GenerateError> {
        if self.groups == 0 || self.groups > MAX_PREFIX_GROUPS {
            return Err(invalid(
                "prefix.groups",
                format!("must be in 1..={MAX_PREFIX_GROUPS}, got {}", self.groups),
            ));
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return Err(invalid(
                "prefix.zipf_exponent",
                format!("must be finite and >= 0, got {}", self.zipf_exponent),
            ));
        }
        Ok(())
    }

    /// Gives every request `hash_ids` (one per started block of its prompt) following this
    /// profile. Ids `0 .. groups·prefix_blocks` are the shared prefixes; later ids are unique.
    pub fn assign<R: Rng + ?Sized>(
        &self,
        requests: &mut [RequestSpec],
        block_tokens: u32,
        rng: &mut R,
    ) {
        let block = u64::from(block_tokens.max(1));
        let prefix_blocks = u64::from(self.prefix_tokens) / block;
        let groups = u64::from(self.groups.max(1));
        // Cumulative popularity weights for inverse-CDF sampling.
        let mut cdf = Vec::with_capacity(groups as usize);
        let mut acc = 0.0;
        for g in 0..groups {
            acc += ((g + 1) as f64).powf(-self.zipf_exponent);
            cdf.push(acc);
        }
        let mut next_unique = groups * prefix_blocks;
        for r in requests {
            let n_blocks = u64::from(r.input_tokens).div_ceil(block);
            let u: f64 = rng.random::<f64>() * acc;
            let g = (cdf.partition_point(|&c| c <= u) as u64).min(groups - 1);
            let shared = prefix_blocks.min(n_blocks);
            let mut ids = Vec::with_capacity(n_blocks as usize);
            ids.extend((0..shared).map(|j| g * prefix_blocks + j));
            ids.extend(next_unique..next_unique + (n_blocks - shared));
            next_unique += n_blocks - shared;
            r.hash_ids = ids;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spec
// ---------------------------------------------------------------------------------------------

/// A complete synthetic workload description, e.g. in YAML:
///
/// ```yaml
/// rate: 5.5            # mean req/s
/// duration_s: 3600
/// arrival: { gamma: { cv: 2.0 } }
/// envelope: { daily: { peak_to_trough: 2.0, period_s: 3600, phase: 0.0 } }
/// lengths: azure-conv  # or { fixed: { input: 512, output: 128 } }
/// prefix: { groups: 8, prefix_tokens: 1024 }
/// seed: 42
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    /// Base arrival rate in requests per second (mean rate under a constant or daily envelope).
    pub rate: f64,
    /// Arrivals fall in `[0, duration_s)`.
    pub duration_s: f64,
    /// Inter-arrival process (default Poisson).
    #[serde(default)]
    pub arrival: ArrivalProcess,
    /// Rate envelope (default constant).
    #[serde(default)]
    pub envelope: Envelope,
    /// Length distributions.
    pub lengths: LengthProfile,
    /// Shared-prefix model; none by default (requests get no hash ids and share nothing).
    #[serde(default)]
    pub prefix: Option<PrefixProfile>,
    /// Random seed.
    #[serde(default)]
    pub seed: u64,
}

impl GeneratorSpec {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), GenerateError> {
        positive_finite("rate", self.rate)?;
        positive_finite("duration_s", self.duration_s)?;
        self.arrival.validate()?;
        self.envelope.validate()?;
        self.lengths.validate()?;
        if let Some(p) = &self.prefix {
            p.validate()?;
        }
        Ok(())
    }

    /// Generates the workload.
    pub fn generate(&self) -> Result<Workload, GenerateError> {
        self.validate()?;
        let mut arrival_rng = StdRng::seed_from_u64(self.seed);
        let arrivals = generate_arrivals(
            self.rate,
            self.duration_s,
            self.arrival,
            &self.envelope,
            &mut arrival_rng,
        )?;
        let mut length_rng = StdRng::seed_from_u64(self.seed ^ LENGTH_STREAM);
        let mut requests: Vec<RequestSpec> = arrivals
            .into_iter()
            .zip(0u64..)
            .map(|(arrival_s, id)| {
                let (input_tokens, output_tokens) = self.lengths.sample(&mut length_rng);
                RequestSpec {
                    id,
                    arrival_s,
                    input_tokens,
                    output_tokens,
                    hash_ids: Vec::new(),
                }
            })
            .collect();
        if let Some(p) = &self.prefix {
            let mut prefix_rng = StdRng::seed_from_u64(self.seed ^ PREFIX_STREAM);
            p.assign(&mut requests, GENERATED_HASH_BLOCK_TOKENS, &mut prefix_rng);
        }
        Ok(Workload {
            name: format!(
                "{} {} req/s for {} s, {}, {} lengths, seed {}",
                self.arrival, self.rate, self.duration_s, self.envelope, self.lengths, self.seed
            ),
            hash_block_tokens: GENERATED_HASH_BLOCK_TOKENS,
            requests,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(rate: f64, duration_s: f64) -> GeneratorSpec {
        GeneratorSpec {
            rate,
            duration_s,
            arrival: ArrivalProcess::Poisson,
            envelope: Envelope::Constant,
            lengths: LengthProfile::Fixed {
                input: 100,
                output: 10,
            },
            prefix: None,
            seed: 7,
        }
    }

    fn gaps_cv(w: &Workload) -> f64 {
        let gaps: Vec<f64> = w
            .requests
            .windows(2)
            .map(|p| p[1].arrival_s - p[0].arrival_s)
            .collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
        var.sqrt() / mean
    }

    fn median(mut v: Vec<u32>) -> f64 {
        v.sort_unstable();
        f64::from(v[v.len() / 2])
    }

    #[test]
    fn poisson_mean_rate() {
        let w = spec(20.0, 5000.0).generate().unwrap();
        let rate = w.requests.len() as f64 / 5000.0;
        assert!((rate / 20.0 - 1.0).abs() < 0.02, "rate {rate}");
        assert!((gaps_cv(&w) - 1.0).abs() < 0.03);
        assert!(w.requests.iter().all(|r| r.arrival_s < 5000.0));
        assert!(
            w.requests
                .windows(2)
                .all(|p| p[0].arrival_s <= p[1].arrival_s)
        );
        assert!(w.requests.iter().zip(0u64..).all(|(r, i)| r.id == i));
        assert!(w.requests.iter().all(|r| r.hash_ids.is_empty()));
    }

    #[test]
    fn gamma_cv_and_rate() {
        for cv in [0.5, 3.0] {
            let mut s = spec(10.0, 20_000.0);
            s.arrival = ArrivalProcess::Gamma { cv };
            let w = s.generate().unwrap();
            let rate = w.requests.len() as f64 / 20_000.0;
            assert!((rate / 10.0 - 1.0).abs() < 0.05, "cv {cv}: rate {rate}");
            let got = gaps_cv(&w);
            assert!((got / cv - 1.0).abs() < 0.1, "cv {cv}: got {got}");
        }
    }

    #[test]
    fn daily_envelope_peak_to_trough() {
        let period = 1000.0;
        let mut s = spec(20.0, 10.0 * period);
        s.envelope = Envelope::Daily {
            peak_to_trough: 4.0,
            period_s: period,
            phase: 0.25,
        };
        let w = s.generate().unwrap();
        // Mean rate preserved over whole periods.
        let rate = w.requests.len() as f64 / (10.0 * period);
        assert!((rate / 20.0 - 1.0).abs() < 0.03, "rate {rate}");
        let mut bins = [0u32; 20];
        for r in &w.requests {
            let frac = (r.arrival_s / period).fract();
            bins[((frac * 20.0) as usize).min(19)] += 1;
        }
        // Trough at phase 0.25 (bins 4/5 edge), peak at 0.75 (bins 14/15 edge).
        let trough = f64::from(bins[4] + bins[5]);
        let peak = f64::from(bins[14] + bins[15]);
        let ratio = peak / trough;
        assert!((3.4..4.6).contains(&ratio), "ratio {ratio}, bins {bins:?}");
    }

    #[test]
    fn gamma_under_daily_envelope_keeps_rate() {
        let mut s = spec(10.0, 20_000.0);
        s.arrival = ArrivalProcess::Gamma { cv: 2.0 };
        s.envelope = Envelope::Daily {
            peak_to_trough: 10.0,
            period_s: 2000.0,
            phase: 0.0,
        };
        let w = s.generate().unwrap();
        let rate = w.requests.len() as f64 / 20_000.0;
        assert!((rate / 10.0 - 1.0).abs() < 0.06, "rate {rate}");
    }

    #[test]
    fn steps_envelope() {
        let mut s = spec(10.0, 3000.0);
        s.envelope = Envelope::Steps(vec![(1000.0, 3.0), (2000.0, 0.0)]);
        let w = s.generate().unwrap();
        let count = |a: f64, b: f64| {
            w.requests
                .iter()
                .filter(|r| r.arrival_s >= a && r.arrival_s < b)
                .count() as f64
        };
        assert!((count(0.0, 1000.0) / 10_000.0 - 1.0).abs() < 0.05);
        assert!((count(1000.0, 2000.0) / 30_000.0 - 1.0).abs() < 0.05);
        assert_eq!(count(2000.0, 3000.0), 0.0);
    }

    #[test]
    fn envelope_cumulative_and_inverse_agree() {
        let envs = [
            Envelope::Constant,
            Envelope::Daily {
                peak_to_trough: 10.0,
                period_s: 500.0,
                phase: 0.3,
            },
            Envelope::Steps(vec![(0.0, 2.0), (10.0, 0.0), (20.0, 0.5)]),
        ];
        for e in &envs {
            e.validate().unwrap();
            for i in 1..200 {
                let t = f64::from(i) * 1.37;
                let y = e.cumulative(t);
                let back = e.inverse_cumulative(y).unwrap();
                assert!((e.cumulative(back) - y).abs() < 1e-6, "{e:?} t {t}");
            }
            assert!(e.max_multiplier() >= e.multiplier(123.0));
        }
        // The gap with multiplier 0 is skipped: mass 20 is reached at t = 10, the next at > 20.
        let steps = &envs[2];
        assert!((steps.inverse_cumulative(21.0).unwrap() - 22.0).abs() < 1e-9);
    }

    #[test]
    fn length_preset_medians_match_published() {
        let published = [
            ("azure-conv", 1020.0, 129.0),
            ("azure-code", 1469.0, 13.0),
            ("mooncake-conv", 6909.0, 350.0),
            ("arxiv", 2730.0, 167.0),
        ];
        for (name, med_in, med_out) in published {
            let profile: LengthProfile = name.parse().unwrap();
            let mut rng = StdRng::seed_from_u64(1);
            let (ins, outs): (Vec<u32>, Vec<u32>) =
                (0..40_000).map(|_| profile.sample(&mut rng)).unzip();
            let (mi, mo) = (median(ins), median(outs));
            assert!((mi / med_in - 1.0).abs() < 0.05, "{name} input median {mi}");
            assert!(
                (mo / med_out - 1.0).abs() < 0.05,
                "{name} output median {mo}"
            );
        }
        // ShareGPT is fitted to published means instead.
        let mut rng = StdRng::seed_from_u64(2);
        let n = 100_000;
        let (si, so) = (0..n).fold((0.0, 0.0), |(a, b), _| {
            let (i, o) = LengthProfile::ShareGpt.sample(&mut rng);
            (a + f64::from(i), b + f64::from(o))
        });
        assert!((si / f64::from(n) / 161.0 - 1.0).abs() < 0.05);
        assert!((so / f64::from(n) / 338.0 - 1.0).abs() < 0.05);
    }

    #[test]
    fn lengths_stay_in_bounds() {
        let mut rng = StdRng::seed_from_u64(3);
        for name in LENGTH_PRESETS {
            let p: LengthProfile = name.parse().unwrap();
            let (i, o) = p.distributions().unwrap();
            for _ in 0..5000 {
                let (a, b) = p.sample(&mut rng);
                assert!((1..=i.max).contains(&a) && (1..=o.max).contains(&b));
            }
        }
        let fixed = LengthProfile::Fixed {
            input: 0,
            output: 5,
        };
        assert_eq!(fixed.sample(&mut rng), (1, 5));
    }

    #[test]
    fn deterministic_by_seed() {
        let mut s = spec(5.0, 500.0);
        s.lengths = LengthProfile::AzureConv;
        s.arrival = ArrivalProcess::Gamma { cv: 2.0 };
        let a = s.generate().unwrap();
        let b = s.generate().unwrap();
        assert_eq!(a, b);
        s.seed = 8;
        assert_ne!(a.requests, s.generate().unwrap().requests);
        // Changing lengths leaves arrivals alone.
        s.seed = 7;
        s.lengths = LengthProfile::Arxiv;
        let c = s.generate().unwrap();
        let times = |w: &Workload| w.requests.iter().map(|r| r.arrival_s).collect::<Vec<_>>();
        assert_eq!(times(&a), times(&c));
    }

    #[test]
    fn prefix_groups_share_leading_blocks() {
        let mut s = spec(50.0, 100.0);
        s.lengths = LengthProfile::Fixed {
            input: 1000,
            output: 1,
        };
        s.prefix = Some(PrefixProfile {
            groups: 4,
            prefix_tokens: 260,
            zipf_exponent: 1.0,
        });
        let w = s.generate().unwrap();
        assert_eq!(w.hash_block_tokens, 16);
        let mut seen = std::collections::HashSet::new();
        let mut group_counts = [0usize; 4];
        for r in &w.requests {
            assert_eq!(r.hash_ids.len(), 63); // ceil(1000 / 16)
            let g = r.hash_ids[0] / 16; // 260 / 16 = 16 shared blocks per group
            assert!(g < 4);
            group_counts[g as usize] += 1;
            assert_eq!(
                r.hash_ids[..16],
                (g * 16..g * 16 + 16).collect::<Vec<_>>()[..]
            );
            for &id in &r.hash_ids[16..] {
                assert!(id >= 64 && seen.insert(id), "unique id {id} repeated");
            }
        }
        // Zipf(1): group 0 is about twice as popular as group 1.
        assert!(group_counts[0] > group_counts[1] && group_counts[1] > group_counts[3]);
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(GeneratorSpec, &str)> = vec![
            (spec(-1.0, 10.0), "`rate`"),
            (spec(f64::NAN, 10.0), "`rate`"),
            (spec(1.0, 0.0), "`duration_s`"),
            (
                GeneratorSpec {
                    arrival: ArrivalProcess::Gamma { cv: 0.0 },
                    ..spec(1.0, 1.0)
                },
                "`arrival.gamma.cv`",
            ),
            (
                GeneratorSpec {
                    envelope: Envelope::Daily {
                        peak_to_trough: 0.5,
                        period_s: 10.0,
                        phase: 0.0,
                    },
                    ..spec(1.0, 1.0)
                },
                "`envelope.daily.peak_to_trough`",
            ),
            (
                GeneratorSpec {
                    envelope: Envelope::Steps(vec![(5.0, 1.0), (5.0, 2.0)]),
                    ..spec(1.0, 1.0)
                },
                "`envelope.steps[1].start_s`",
            ),
            (
                GeneratorSpec {
                    prefix: Some(PrefixProfile {
                        groups: 0,
                        prefix_tokens: 16,
                        zipf_exponent: 0.0,
                    }),
                    ..spec(1.0, 1.0)
                },
                "`prefix.groups`",
            ),
            (
                GeneratorSpec {
                    lengths: LengthProfile::LogNormal {
                        input: ln(100.0, 50.0, 1000),
                        output: ln(10.0, 20.0, 100),
                    },
                    ..spec(1.0, 1.0)
                },
                "`lengths.log_normal.input.p90`",
            ),
        ];
        for (s, field) in cases {
            let e = s.generate().unwrap_err().to_string();
            assert!(e.contains(field), "{e} should name {field}");
        }
        assert!(matches!(
            spec(1e9, 1e9).generate(),
            Err(GenerateError::TooManyRequests { .. })
        ));
        let extreme = [
            GeneratorSpec {
                arrival: ArrivalProcess::Gamma { cv: 1e6 },
                ..spec(1.0, 1.0)
            },
            GeneratorSpec {
                envelope: Envelope::Daily {
                    peak_to_trough: f64::INFINITY,
                    period_s: 10.0,
                    phase: 0.0,
                },
                ..spec(1.0, 1.0)
            },
            GeneratorSpec {
                lengths: LengthProfile::Fixed {
                    input: u32::MAX,
                    output: 1,
                },
                ..spec(1.0, 1.0)
            },
        ];
        for s in extreme {
            assert!(matches!(s.generate(), Err(GenerateError::Invalid { .. })));
        }
    }

    #[test]
    fn spec_deserializes_from_json() {
        let s: GeneratorSpec = serde_json::from_str(
            r#"{"rate": 5.5, "duration_s": 60, "arrival": {"gamma": {"cv": 2}},
                "envelope": {"daily": {"peak_to_trough": 2, "period_s": 60}},
                "lengths": "azure-conv", "prefix": {"groups": 2, "prefix_tokens": 64}, "seed": 3}"#,
        )
        .unwrap();
        assert_eq!(s.arrival, ArrivalProcess::Gamma { cv: 2.0 });
        assert_eq!(s.lengths, LengthProfile::AzureConv);
        assert!(s.generate().unwrap().requests.len() > 100);
        let s: GeneratorSpec = serde_json::from_str(
            r#"{"rate": 1, "duration_s": 60, "envelope": {"steps": [[0, 1], [30, 2]]},
                "lengths": {"fixed": {"input": 10, "output": 5}}}"#,
        )
        .unwrap();
        assert_eq!(s.envelope, Envelope::Steps(vec![(0.0, 1.0), (30.0, 2.0)]));
        assert_eq!(s.arrival, ArrivalProcess::Poisson);
        let bad = serde_json::from_str::<GeneratorSpec>(
            r#"{"rate": 1, "duration_s": 60, "lengths": "arxiv", "burst": 3}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("burst"));
        assert!("nope".parse::<LengthProfile>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn generated_workloads_are_well_formed(
            rate in 0.01f64..50.0,
            duration_s in 0.5f64..200.0,
            cv in proptest::option::of(0.05f64..100.0),
            daily in proptest::option::of((1.0f64..1000.0, 0.5f64..500.0, -2.0f64..2.0)),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let s = GeneratorSpec {
                arrival: cv.map_or(ArrivalProcess::Poisson, |cv| ArrivalProcess::Gamma { cv }),
                envelope: daily.map_or(Envelope::Constant, |(r, p, ph)| Envelope::Daily {
                    peak_to_trough: r,
                    period_s: p,
                    phase: ph,
                }),
                lengths: LengthProfile::AzureCode,
                seed,
                ..spec(rate, duration_s)
            };
            let w = s.generate().unwrap();
            proptest::prop_assert!(w.requests.windows(2).all(|p| p[0].arrival_s <= p[1].arrival_s));
            proptest::prop_assert!(w
                .requests
                .iter()
                .zip(0u64..)
                .all(|(r, i)| r.id == i && r.arrival_s >= 0.0 && r.arrival_s < duration_s));
        }
    }

    #[test]
    fn spec_deserializes_from_yaml() {
        let yaml = "rate: 5.5\nduration_s: 3600\narrival: { gamma: { cv: 2.0 } }\n\
                    envelope: { daily: { peak_to_trough: 2.0, period_s: 3600, phase: 0.0 } }\n\
                    lengths: azure-conv\nprefix: { groups: 8, prefix_tokens: 1024 }\nseed: 42\n";
        let s: GeneratorSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(s.seed, 42);
        assert_eq!(s.prefix.map(|p| p.groups), Some(8));
        s.validate().unwrap();
        let s: GeneratorSpec = serde_saphyr::from_str(
            "rate: 2\nduration_s: 100\nenvelope: { steps: [[0, 1], [50, 3]] }\n\
             lengths: { fixed: { input: 10, output: 5 } }\n",
        )
        .unwrap();
        assert_eq!(s.envelope, Envelope::Steps(vec![(0.0, 1.0), (50.0, 3.0)]));
    }
}
