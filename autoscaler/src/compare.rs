//! `goodput sim compare`'s engine: builds each named policy for a scenario and workload, runs
//! the same workload under each, and shapes the results (`compare.json`).
//!
//! Data flow: scenario + workload -> [`prepare`] (capacity model from the scenario's engines,
//! the workload's mean shape, a warm-start fleet sized for the first five minutes; for the
//! static baseline the cheapest fixed fleet that holds the SLO on this very workload, found by
//! simulating candidates) -> `goodput_sim::run::simulate` -> `RunReport`s -> [`compare_json`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use goodput_core::Role;
use goodput_sim::cluster::resolve_variants;
use goodput_sim::policy::{Autoscaler, Router};
use goodput_sim::report::RunReport;
use goodput_sim::run::{Simulation, router_for, simulate_with_router};
use goodput_sim::scenario::Scenario;
use goodput_sim::workload::Workload;

use crate::baselines::{DynamoPlanner, HpaKv, KedaSlo, StaticPeak, WvaSaturation};
use crate::capacity::{CapacityModel, EngineCapacity, LoadShape};
use crate::goodput::{GoodputConfig, GoodputPolicy, Routing};
use crate::optimizer::{Candidate, optimise, plan_by_role};

/// Policies `prepare` knows.
pub const POLICIES: &[&str] = &[
    "goodput",
    "keda-slo",
    "wva-saturation",
    "dynamo-planner",
    "static-peak",
    "hpa-kv",
];

/// Errors of preparing or running a comparison.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("unknown policy `{0}` (available: fixed, {list})", list = POLICIES.join(", "))]
    UnknownPolicy(String),
    #[error("scenario: {0}")]
    Scenario(String),
    #[error("simulation under {policy}: {message}")]
    Run { policy: String, message: String },
}

/// Share of requests the capacity probes require to meet the SLO.
pub const PROBE_QUANTILE: f64 = 0.99;

/// SLO attainment the static baseline is sized to reach.
pub const STATIC_PEAK_ATTAINMENT: f64 = 0.99;

/// Attainments this close count as equal when no fleet reaches the target.
const STATIC_TIE: f64 = 0.001;

/// Demand multipliers of the peak minute tried for the static baseline's mixed fleet, in
/// tenths (0.1x to 4x).
const STATIC_MIX_STEPS: u32 = 40;

/// A family of fleets by size index (larger index, larger fleet).
type FleetOfSize<'a> = Box<dyn Fn(u32) -> Vec<u32> + Sync + 'a>;

/// Makes a fresh router for one run of a scenario (each run starts with an empty router state),
/// or says why it cannot. Without one, runs use the router the scenario names. goodput's
/// scheduler brings its pickers this way; this crate does not depend on it.
pub type RouterFactory<'a> = &'a (dyn Fn(&Scenario) -> Result<Box<dyn Router>, String> + Sync);

/// One run of `scenario` under `autoscaler` (its fixed replicas when None) with the factory's
/// router, or the scenario's; errors name `policy`.
fn run(
    policy: &str,
    scenario: &Scenario,
    workload: &Workload,
    autoscaler: Option<&mut dyn Autoscaler>,
    router: Option<RouterFactory<'_>>,
) -> Result<Simulation, CompareError> {
    let failed = |message: String| CompareError::Run {
        policy: policy.to_string(),
        message,
    };
    let mut router = match router {
        Some(make) => make(scenario).map_err(|e| failed(format!("router: {e}")))?,
        None => router_for(&scenario.router),
    };
    simulate_with_router(scenario, workload, router.as_mut(), autoscaler, None, None)
        .map_err(|e| failed(e.to_string()))
}

/// The static baseline's fleet, and how it was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticFleet {
    pub replicas: Vec<u32>,
    /// SLO attainment of this fleet over the workload.
    pub attainment: f64,
    pub cost_per_hour: f64,
}

/// Sizes the static baseline in hindsight: the cheapest fixed fleet that reaches
/// [`STATIC_PEAK_ATTAINMENT`] over `workload`, found by simulating it, i.e. the fleet an
/// operator settles on after watching the traffic, rather than a capacity model's guess (which
/// is optimistic for bursty, long-tailed traces, so a model-sized "peak" fleet can miss the SLO
/// and make a cheap but meaningless reference). Candidates: each variant alone, and the
/// optimiser's mix for a multiple of the peak minute's rate; for each, the smallest size that
/// reaches the target, by bisection (attainment grows with the fleet), the candidates' searches
/// side by side on the cores there are. When none reaches it, the fleet with the highest
/// attainment (the cheaper of two within a tenth of a point).
pub fn size_static_fleet(
    scenario: &Scenario,
    workload: &Workload,
    cands: &[Candidate],
    pool_caps: &[u32],
    peak_rate: f64,
    router: Option<RouterFactory<'_>>,
) -> Result<StaticFleet, CompareError> {
    // Shared by the families' searches, which run at once: a fleet two of them reach (the mix
    // and a variant alone can coincide) is simulated once, unless both ask at the same time.
    let cache: Mutex<Vec<(Vec<u32>, f64)>> = Mutex::new(Vec::new());
    let attainment = |fleet: &[u32]| -> Result<f64, CompareError> {
        let known = cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(f, _)| f == fleet)
            .map(|(_, a)| *a);
        if let Some(a) = known {
            return Ok(a);
        }
        let mut s = scenario.clone();
        for (v, r) in s.variants.iter_mut().zip(fleet) {
            v.replicas = *r;
        }
        let a = if fleet.iter().all(|&r| r == 0) {
            0.0
        } else {
            run("static-peak", &s, workload, None, router)?
                .report
                .requests
                .slo_attainment
        };
        cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((fleet.to_vec(), a));
        Ok(a)
    };
    let cost = |fleet: &[u32]| -> f64 {
        cands
            .iter()
            .zip(fleet)
            .map(|(c, &r)| c.price_per_hour * f64::from(r))
            .sum()
    };
    let roles: Vec<Role> = scenario.variants.iter().map(|v| v.role).collect();
    // Families of fleets indexed by size, each growing with its index: each unified variant
    // alone (one stage of disaggregated serving alone serves nothing), and goodput's mix.
    let mut families: Vec<(u32, FleetOfSize<'_>)> = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        if roles.get(i).is_some_and(|&r| r != Role::Unified) {
            continue;
        }
        let room = pool_caps
            .get(c.pool)
            .map_or(0, |&cap| cap / c.devices.max(1))
            .min(c.max_replicas);
        if room == 0 {
            continue;
        }
        families.push((
            room,
            Box::new(move |n| {
                cands
                    .iter()
                    .enumerate()
                    .map(|(j, c)| if j == i { n } else { c.min_replicas })
                    .collect()
            }),
        ));
    }
    families.push((
        STATIC_MIX_STEPS,
        Box::new(move |n| {
            plan_by_role(
                cands,
                &roles,
                pool_caps,
                peak_rate * f64::from(n) / 10.0,
                optimise,
            )
            .replicas
        }),
    ));
    // Each family's search: the smallest index reaching the target, or the top when none does.
    let search = |top: u32, fleet_of: &FleetOfSize<'_>| -> Result<StaticFleet, CompareError> {
        let (mut lo, mut hi) = (1u32, top);
        if attainment(&fleet_of(hi))? >= STATIC_PEAK_ATTAINMENT {
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if attainment(&fleet_of(mid))? >= STATIC_PEAK_ATTAINMENT {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
        }
        let replicas = fleet_of(hi);
        Ok(StaticFleet {
            attainment: attainment(&replicas)?,
            cost_per_hour: cost(&replicas),
            replicas,
        })
    };
    // The searches are independent: up to one per core at a time, each family's result kept
    // in its slot, so the choice below sees them in the same order whatever finishes first.
    let found: Mutex<Vec<Option<Result<StaticFleet, CompareError>>>> =
        Mutex::new(families.iter().map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let worker = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((top, fleet_of)) = families.get(i) else {
                break;
            };
            let result = search(*top, fleet_of);
            found.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(result);
        }
    };
    let threads = default_jobs().clamp(1, families.len().max(1));
    if threads == 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(worker);
            }
        });
    }
    let mut best: Option<StaticFleet> = None;
    for found in found
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .into_iter()
        .flatten()
    {
        let found = found?;
        let reached = |f: &StaticFleet| f.attainment >= STATIC_PEAK_ATTAINMENT;
        best = Some(match best {
            None => found,
            Some(b) => match (reached(&b), reached(&found)) {
                (true, true) if found.cost_per_hour < b.cost_per_hour => found,
                (false, true) => found,
                // Neither reaches it: the higher attainment, unless within a tenth of a point
                // (then the cheaper; doubling a fleet for 0.03 points is no one's choice).
                (false, false)
                    if found.attainment > b.attainment + STATIC_TIE
                        || (found.attainment >= b.attainment - STATIC_TIE
                            && found.cost_per_hour < b.cost_per_hour) =>
                {
                    found
                }
                _ => b,
            },
        });
    }
    best.ok_or_else(|| CompareError::Scenario("no variant can run any replica".into()))
}

/// A scenario with the policy's starting fleet, and the policy.
pub struct Prepared {
    pub scenario: Scenario,
    pub policy: Option<Box<dyn Autoscaler>>,
}

/// Workload statistics the set-up uses.
fn stats(w: &Workload) -> (LoadShape, f64, f64) {
    let n = w.requests.len().max(1) as f64;
    let shape = LoadShape {
        mean_input_tokens: w
            .requests
            .iter()
            .map(|r| r.input_tokens as f64)
            .sum::<f64>()
            / n,
        mean_output_tokens: w
            .requests
            .iter()
            .map(|r| r.output_tokens as f64)
            .sum::<f64>()
            / n,
        prefix_hit_rate: 0.0,
    };
    let rate_in = |a: f64, b: f64| {
        w.requests
            .iter()
            .filter(|r| r.arrival_s >= a && r.arrival_s < b)
            .count() as f64
            / (b - a)
    };
    let initial = rate_in(0.0, 300.0);
    let mut peak: f64 = 0.0;
    let mut t = 0.0;
    while t < w.duration_s() {
        peak = peak.max(rate_in(t, t + 60.0));
        t += 30.0;
    }
    (shape, initial, peak.max(initial))
}

/// Builds policy `name` for `scenario` and `workload`.
pub fn prepare(
    name: &str,
    scenario: &Scenario,
    workload: &Workload,
) -> Result<Prepared, CompareError> {
    prepare_with(name, scenario, workload, None, None)
}

/// The capacity model of a scenario (engine probes at its SLO).
pub fn capacity_for(scenario: &Scenario) -> Result<EngineCapacity, CompareError> {
    let variants = resolve_variants(scenario, scenario.mode)
        .map_err(|e| CompareError::Scenario(e.to_string()))?;
    let engines: Vec<_> = variants.iter().map(|v| v.engine.clone()).collect();
    Ok(EngineCapacity::new(engines, scenario.slo, PROBE_QUANTILE))
}

/// [`prepare`], reusing a capacity model (and its cache of probes) of the same scenario, and
/// sizing the static baseline behind `router` (the scenario's router when None).
pub fn prepare_with(
    name: &str,
    scenario: &Scenario,
    workload: &Workload,
    capacity: Option<EngineCapacity>,
    router: Option<RouterFactory<'_>>,
) -> Result<Prepared, CompareError> {
    let mut scenario = scenario.clone();
    if name == "fixed" {
        return Ok(Prepared {
            scenario,
            policy: None,
        });
    }
    if !POLICIES.contains(&name) {
        return Err(CompareError::UnknownPolicy(name.to_string()));
    }
    let variants = resolve_variants(&scenario, scenario.mode)
        .map_err(|e| CompareError::Scenario(e.to_string()))?;
    let mut capacity = match capacity {
        Some(c) => c,
        None => capacity_for(&scenario)?,
    };
    let (shape, initial, peak) = stats(workload);
    let pool_caps: Vec<u32> = scenario.pools.iter().map(|p| p.capacity).collect();
    let mut cands: Vec<Candidate> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| Candidate {
            price_per_hour: v.price_per_device_hour * v.tp as f64,
            devices: v.tp,
            pool: v.pool,
            min_replicas: v.min_replicas,
            max_replicas: v.max_replicas,
            rate_per_replica: capacity.max_rate(i, &shape),
        })
        .collect();
    let roles: Vec<Role> = variants.iter().map(|v| v.role).collect();
    // The best single deployment of a role by price per unit of probed capacity (a variant
    // capped at zero replicas cannot be the one a single-variant baseline scales).
    let best_of = |role: Role| {
        (0..cands.len())
            .filter(|&i| {
                roles[i] == role && cands[i].rate_per_replica > 0.0 && cands[i].max_replicas > 0
            })
            .min_by(|&a, &b| {
                let ra = cands[a].price_per_hour / cands[a].rate_per_replica;
                let rb = cands[b].price_per_hour / cands[b].rate_per_replica;
                ra.total_cmp(&rb)
            })
    };
    // Single-deployment baselines scale a unified variant; where there is none, the prefill
    // variant (and Dynamo's planner, in disaggregated mode, the decode partner as well).
    // Dynamo's planner is built for disaggregated serving: where the scenario offers a prefill
    // and a decode variant it runs in that mode, as its users would deploy it.
    let disaggregated_pair = match (best_of(Role::Prefill), best_of(Role::Decode)) {
        (Some(p), Some(d)) => Some((p, d)),
        _ => None,
    };
    let (primary, decode_partner) = match (best_of(Role::Unified), disaggregated_pair) {
        (Some(_), Some((p, d))) if name == "dynamo-planner" => (p, Some(d)),
        (Some(u), _) => (u, None),
        (None, _) => (best_of(Role::Prefill).unwrap_or(0), best_of(Role::Decode)),
    };
    let single = matches!(name, "hpa-kv" | "keda-slo" | "dynamo-planner");
    if single {
        for (i, c) in cands.iter_mut().enumerate() {
            if i != primary && Some(i) != decode_partner {
                c.rate_per_replica = 0.0;
            }
        }
    }
    let mut start = if name == "static-peak" {
        size_static_fleet(&scenario, workload, &cands, &pool_caps, peak, router)?.replicas
    } else {
        plan_by_role(&cands, &roles, &pool_caps, initial * 1.1, optimise).replicas
    };
    if start.iter().sum::<u32>() == 0 && !start.is_empty() {
        start[primary] = 1;
        if let Some(d) = decode_partner {
            start[d] = 1;
        }
    }
    for (v, r) in scenario.variants.iter_mut().zip(&start) {
        v.replicas = *r;
    }
    let slo = scenario.slo;
    // goodput plans mixes for the router the runs use.
    let routing = if name == "goodput" {
        let router = match router {
            Some(make) => make(&scenario).map_err(|e| CompareError::Run {
                policy: name.to_string(),
                message: format!("router: {e}"),
            })?,
            None => router_for(&scenario.router),
        };
        Routing::of_router(router.name())
    } else {
        Routing::default()
    };
    let policy: Box<dyn Autoscaler> = match name {
        "goodput" => Box::new(GoodputPolicy::new(
            GoodputConfig {
                interval_s: scenario.autoscale_interval_s,
                default_shape: shape,
                slo: Some(slo),
                routing,
                ..GoodputConfig::default()
            },
            capacity,
        )),
        "static-peak" => Box::new(StaticPeak { replicas: start }),
        "hpa-kv" => Box::new(HpaKv::new(primary, 0.7)),
        "wva-saturation" => Box::new(WvaSaturation::default()),
        "keda-slo" => Box::new(KedaSlo::new(primary, slo)),
        _ => Box::new(match decode_partner {
            Some(d) => DynamoPlanner::disaggregated(
                (primary, variants[primary].engine.clone()),
                (d, variants[d].engine.clone()),
                slo,
            ),
            None => DynamoPlanner::new(primary, slo, variants[primary].engine.clone()),
        }),
    };
    Ok(Prepared {
        scenario,
        policy: Some(policy),
    })
}

/// Runs `workload` under each policy, behind the scenario's router, as many at a time as the
/// machine has cores ([`default_jobs`]).
pub fn compare(
    scenario: &Scenario,
    workload: &Workload,
    policies: &[String],
) -> Result<Vec<RunReport>, CompareError> {
    compare_routed(scenario, workload, policies, None)
}

/// [`compare`] with every policy (and the sizing of the static fleet) behind the factory's
/// router, so that policies are compared on the same routing.
pub fn compare_routed(
    scenario: &Scenario,
    workload: &Workload,
    policies: &[String],
    router: Option<RouterFactory<'_>>,
) -> Result<Vec<RunReport>, CompareError> {
    compare_each(
        scenario,
        workload,
        policies,
        router,
        default_jobs(),
        &mut |_, _| Ok(()),
    )
}

/// How many policies [`compare`] runs at a time: the cores this process may use.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// [`compare_routed`] running up to `jobs` policies at a time (at least one), each on a thread
/// of its own, that hands each policy's whole run (every request's outcome) to `each_run` as it
/// finishes, so that a caller can keep what it needs of a run (per-request rows, say) without
/// holding every run of a long workload at once: at most `jobs` runs are in memory together.
/// Reports come back in the order of `policies` whatever order the runs finish in; each run is
/// seeded by the scenario alone, so `jobs` changes how long a comparison takes, not its
/// figures. An error (the first policy's in `policies` order, if several fail) stops the
/// comparison: runs in progress finish, none starts after it.
pub fn compare_each(
    scenario: &Scenario,
    workload: &Workload,
    policies: &[String],
    router: Option<RouterFactory<'_>>,
    jobs: usize,
    each_run: &mut (dyn FnMut(&str, &Simulation) -> Result<(), String> + Send),
) -> Result<Vec<RunReport>, CompareError> {
    // A misspelt name fails before the first run, not after minutes of the others.
    if let Some(unknown) = policies
        .iter()
        .find(|p| p.as_str() != "fixed" && !POLICIES.contains(&p.as_str()))
    {
        return Err(CompareError::UnknownPolicy(unknown.clone()));
    }
    // Probe the workload's mean shape once; every policy starts from a clone of this cache.
    let mut capacity = capacity_for(scenario)?;
    let (shape, _, _) = stats(workload);
    for i in 0..scenario.variants.len() {
        capacity.max_rate(i, &shape);
    }
    let one = |name: &String| -> Result<Simulation, CompareError> {
        let mut p = prepare_with(name, scenario, workload, Some(capacity.clone()), router)?;
        run(
            name,
            &p.scenario,
            workload,
            p.policy.as_deref_mut().map(|a| a as &mut dyn Autoscaler),
            router,
        )
    };
    let each_run = Mutex::new(each_run);
    let keep = |name: &String, sim: Simulation| -> Result<RunReport, CompareError> {
        let mut each_run = each_run.lock().unwrap_or_else(PoisonError::into_inner);
        (*each_run)(name, &sim).map_err(|message| CompareError::Run {
            policy: name.clone(),
            message,
        })?;
        let mut report = sim.report;
        report.policy = name.clone();
        Ok(report)
    };
    let outcomes: Mutex<Vec<Option<Result<RunReport, CompareError>>>> =
        Mutex::new(policies.iter().map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= policies.len() || failed.load(Ordering::Relaxed) {
                break;
            }
            let name = &policies[i];
            let outcome = one(name).and_then(|sim| keep(name, sim));
            if outcome.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            outcomes.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(outcome);
        }
    };
    let threads = jobs.clamp(1, policies.len().max(1));
    if threads == 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(worker);
            }
        });
    }
    // In `policies` order: the first error wins; a policy not run (after an error) has none.
    let mut out = Vec::with_capacity(policies.len());
    for outcome in outcomes
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .into_iter()
        .flatten()
    {
        out.push(outcome?);
    }
    Ok(out)
}

/// `compare.json`: `{"policies": [{"policy", "slo_attainment", "cost_usd", ...}]}`.
pub fn compare_json(reports: &[RunReport]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let hours = r.duration_s / 3600.0;
            serde_json::json!({
                "policy": r.policy,
                "router": r.router,
                "slo_attainment": r.requests.slo_attainment,
                "ttft_attainment": r.requests.ttft_attainment,
                "itl_attainment": r.requests.itl_attainment,
                "cost_usd": r.cost_usd,
                "cost_per_hour": if hours > 0.0 { r.cost_usd / hours } else { 0.0 },
                "accelerator_hours": r.accelerator_hours,
                "scale_events": r.scale_events.len(),
                "ttft_p95_ms": r.requests.ttft_ms.p95,
                "itl_p95_ms": r.requests.itl_ms.p95,
                "requests": r.requests.total,
                "duration_s": r.duration_s,
                "workload": r.workload,
            })
        })
        .collect();
    serde_json::json!({ "policies": rows })
}
