//! The optimiser: the cheapest replica mix that carries a forecast load within the SLOs.
//!
//! Input: per variant its price per replica-hour, devices per replica, pool, min/max replicas and
//! the rate one replica sustains within the SLOs (from a `CapacityModel`); the pools' device
//! capacities; the rate to provision for. Output: replicas per variant, reached in one decision.
//! It minimises cost per hour subject to capacity >= demand, pool capacity and min/max. Variants
//! are ordered by price per unit of capacity; the search fills the best one with whole replicas
//! and, for the remainder, compares one more of it against covering the remainder with the next
//! variants (a small branch and bound; exact for two variants and near-exact beyond). When the
//! pools cannot carry the demand, they are filled with the variants giving the most capacity per
//! device (`Plan::capacity_limited`). [`optimise_comparable`] wraps it with the rules that
//! shape a mix: comparable speeds, the start-up charge of a new mix, and, behind a router that
//! balances counts of outstanding requests, the concurrency of the mix's most limited variant.

use goodput_core::Role;

/// One variant as the optimiser sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// USD per replica-hour.
    pub price_per_hour: f64,
    /// Devices per replica.
    pub devices: u32,
    pub pool: usize,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Requests per second one replica sustains within the SLOs (0: unusable).
    pub rate_per_replica: f64,
}

/// The optimiser's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub replicas: Vec<u32>,
    pub cost_per_hour: f64,
    /// Rate the plan sustains.
    pub capacity_rate: f64,
    /// The pools could not carry the demand.
    pub capacity_limited: bool,
}

/// Cheapest mix carrying `demand` requests per second.
pub fn optimise(cands: &[Candidate], pool_capacity: &[u32], demand: f64) -> Plan {
    let n = cands.len();
    let mut replicas: Vec<u32> = cands
        .iter()
        .map(|c| c.min_replicas.min(c.max_replicas))
        .collect();
    let mut free: Vec<i64> = pool_capacity.iter().map(|&c| c as i64).collect();
    for (i, c) in cands.iter().enumerate() {
        if let Some(f) = free.get_mut(c.pool) {
            *f -= (replicas[i] * c.devices) as i64;
        }
    }
    let base_cap: f64 = cands
        .iter()
        .zip(&replicas)
        .map(|(c, &r)| c.rate_per_replica * r as f64)
        .sum();
    let remaining = (demand - base_cap).max(0.0);
    let mut order: Vec<usize> = (0..n)
        .filter(|&i| cands[i].rate_per_replica > 0.0 && cands[i].price_per_hour.is_finite())
        .collect();
    order.sort_by(|&a, &b| {
        let ra = cands[a].price_per_hour / cands[a].rate_per_replica;
        let rb = cands[b].price_per_hour / cands[b].rate_per_replica;
        ra.total_cmp(&rb).then(a.cmp(&b))
    });
    let mut capacity_limited = false;
    if remaining > 1e-9 {
        match search(cands, &order, free.clone(), remaining) {
            Some((_, extra)) => {
                for (i, e) in extra {
                    replicas[i] += e;
                }
            }
            None => {
                // Not enough room anywhere: the pools bind, so fill them with the most capacity
                // per device first.
                capacity_limited = true;
                let mut dense = order.clone();
                dense.sort_by(|&a, &b| {
                    let da = cands[a].rate_per_replica / cands[a].devices.max(1) as f64;
                    let db = cands[b].rate_per_replica / cands[b].devices.max(1) as f64;
                    db.total_cmp(&da).then(a.cmp(&b))
                });
                for &i in &dense {
                    let c = cands[i];
                    let room = c.max_replicas.saturating_sub(replicas[i]);
                    let by_pool =
                        (free.get(c.pool).copied().unwrap_or(0).max(0) as u32) / c.devices.max(1);
                    let add = room.min(by_pool);
                    replicas[i] += add;
                    if let Some(f) = free.get_mut(c.pool) {
                        *f -= (add * c.devices) as i64;
                    }
                }
            }
        }
    }
    let cost_per_hour = cands
        .iter()
        .zip(&replicas)
        .map(|(c, &r)| c.price_per_hour * r as f64)
        .sum();
    let capacity_rate = cands
        .iter()
        .zip(&replicas)
        .map(|(c, &r)| c.rate_per_replica * r as f64)
        .sum();
    Plan {
        replicas,
        cost_per_hour,
        capacity_rate,
        capacity_limited,
    }
}

/// Cheapest additions (variant, replicas) over `order` covering `demand`; None if impossible.
fn search(
    cands: &[Candidate],
    order: &[usize],
    free: Vec<i64>,
    demand: f64,
) -> Option<(f64, Vec<(usize, u32)>)> {
    if demand <= 1e-9 {
        return Some((0.0, Vec::new()));
    }
    let (&i, rest) = order.split_first()?;
    let c = cands[i];
    let room = c
        .max_replicas
        .saturating_sub(c.min_replicas.min(c.max_replicas));
    let by_pool = (free.get(c.pool).copied().unwrap_or(0).max(0) as u32) / c.devices.max(1);
    let avail = room.min(by_pool);
    let need = (demand / c.rate_per_replica - 1e-9).ceil().max(0.0) as u32;
    let mut best: Option<(f64, Vec<(usize, u32)>)> = None;
    // (a) cover everything with this variant.
    if need <= avail {
        best = Some((need as f64 * c.price_per_hour, vec![(i, need)]));
    }
    // (b) take k whole replicas (k < need) and cover the rest with the next variants.
    let full = need.saturating_sub(1).min(avail);
    let lowest = full.saturating_sub(1);
    for k in (lowest..=full).rev() {
        let mut f = free.clone();
        if let Some(p) = f.get_mut(c.pool) {
            *p -= (k * c.devices) as i64;
        }
        let left = demand - k as f64 * c.rate_per_replica;
        if let Some((cost, mut adds)) = search(cands, rest, f, left) {
            let total = cost + k as f64 * c.price_per_hour;
            if best.as_ref().is_none_or(|(b, _)| total < *b - 1e-9) {
                if k > 0 {
                    adds.push((i, k));
                }
                best = Some((total, adds));
            }
        }
    }
    best
}

/// What changing the fleet costs when choosing between mixes: each replica a plan adds beyond
/// `current` is charged its price times `share`, and each replica of `current` it drops its
/// price times `dropped_share`, on top of the plan's cost per hour.
///
/// A replica is paid for while it starts and serves nothing; `share` is that start-up time over
/// the time a plan can be expected to stand (e.g. 240 s over a 300 s stabilisation window: 0.8).
/// A replica the plan drops stays until the stabilisation window lets it go, at least a window
/// after the decision, so it is paid for beside its ready replacement for the window less the
/// start-up (`dropped_share`, 60 s over 300 s: 0.2; longer where the scale-down limit paces a
/// large fleet down). Charged only for what it started, a mix a few dollars an hour cheaper
/// replaced a running one at each lull of bursty traffic while the old replicas stayed anyway
/// (azure-code over a day: 228 of goodput's 510 scale events were unified replicas started and
/// stopped beside a P/D fleet that kept serving; 123 of 401 with the charge).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwitchCost<'a> {
    /// Replicas per variant now (targets, starting ones included).
    pub current: &'a [u32],
    /// Charge per replica started, as a share of its price per hour.
    pub share: f64,
    /// Charge per replica dropped, as a share of its price per hour.
    pub dropped_share: f64,
}

impl SwitchCost<'_> {
    fn of(&self, cands: &[Candidate], plan: &Plan) -> f64 {
        cands
            .iter()
            .zip(&plan.replicas)
            .enumerate()
            .map(|(i, (c, &r))| {
                let now = self.current.get(i).copied().unwrap_or(0);
                let (added, dropped) = (r.saturating_sub(now), now.saturating_sub(r));
                c.price_per_hour
                    * (f64::from(added) * self.share.max(0.0)
                        + f64::from(dropped) * self.dropped_share.max(0.0))
            })
            .sum()
    }
}

/// How fast each variant's replicas are, for [`optimise_comparable`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speeds<'a> {
    /// Requests per second one replica sustains as probed, before any correction from observed
    /// latency: a router balancing outstanding requests sees the hardware's speed, not the
    /// planner's caution (empty: the candidates' rates).
    pub per_replica: &'a [f64],
    /// Slowest variant a plan mixes in, as a share of the fastest planned one (0: any).
    pub min_ratio: f64,
    /// Requests in flight on one replica of each variant at its probed rate, given behind a
    /// router that balances counts of outstanding requests (empty: a latency-aware router; 0:
    /// unknown). Every replica of a mix then runs at the concurrency of the variant that
    /// reaches its SLO at the fewest, so a variant that would hold more carries only that share
    /// of its rate (a lower bound: requests are quicker at a lower concurrency).
    pub concurrency: &'a [f64],
}

/// Cheapest mix carrying `demand` in which no planned variant is slower per replica than
/// `speeds.min_ratio` times the fastest planned one, counting what its new replicas cost to
/// start (`switch`).
///
/// Routers that balance outstanding requests (least-loaded, least-requests, a queue-length
/// scorer alone) give a replica several times slower than its peers about the same number of
/// concurrent requests, so its requests run far slower than the plan's share assumes; the cheap
/// slow replicas that plain [`optimise`] adds to cover a remainder then miss the SLO. Each
/// usable variant in turn anchors a plan among the variants at least `speeds.min_ratio` of its
/// probed speed and no faster (speed as probed, so that a variant derated for missing its SLO
/// does not make slower ones look comparable); the plan that carries the demand at the lowest cost per hour plus
/// start-up charge wins, so that a mix a few cents cheaper does not replace a running fleet.
/// With concurrencies (`speeds.concurrency`, a count-balancing router), each anchor's plan is
/// tried at the concurrency of each of its variants: the variants that reach their SLO below it
/// are left out, and those that would hold more carry the share of their rate that it gives.
/// When no plan carries the demand, the plain plan (all variants, most capacity) is returned;
/// a ratio of 0 without concurrencies returns the plain plan directly.
pub fn optimise_comparable(
    cands: &[Candidate],
    pool_capacity: &[u32],
    demand: f64,
    speeds: Speeds<'_>,
    switch: SwitchCost<'_>,
) -> Plan {
    if speeds.min_ratio <= 0.0 && speeds.concurrency.is_empty() {
        return optimise(cands, pool_capacity, demand);
    }
    let speed_of = |i: usize| {
        speeds
            .per_replica
            .get(i)
            .copied()
            .unwrap_or(cands[i].rate_per_replica)
    };
    let mut best: Option<(f64, Plan)> = None;
    for a in (0..cands.len()).filter(|&i| cands[i].rate_per_replica > 0.0) {
        let speed = speed_of(a);
        let restricted: Vec<Candidate> = cands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let comparable = speed_of(i) <= speed && speed_of(i) >= speeds.min_ratio * speed;
                Candidate {
                    rate_per_replica: if comparable { c.rate_per_replica } else { 0.0 },
                    ..*c
                }
            })
            .collect();
        let conc = |i: usize| speeds.concurrency.get(i).copied().unwrap_or(0.0).max(0.0);
        // Each concurrency a mixed fleet may run at: that of a comparable variant (the mix
        // then leaves out the variants that miss their SLO below it); none when unknown.
        let mut levels: Vec<f64> = (0..cands.len())
            .filter(|&i| restricted[i].rate_per_replica > 0.0 && conc(i) > 0.0)
            .map(conc)
            .collect();
        levels.sort_by(f64::total_cmp);
        levels.dedup();
        let mixes: Vec<Vec<Candidate>> = if levels.len() < 2 {
            vec![restricted]
        } else {
            levels
                .iter()
                .map(|&level| {
                    restricted
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let scale = match conc(i) {
                                x if x <= 0.0 => 1.0,
                                x if x < level => 0.0,
                                x => level / x,
                            };
                            Candidate {
                                rate_per_replica: c.rate_per_replica * scale,
                                ..*c
                            }
                        })
                        .collect()
                })
                .collect()
        };
        for mix in &mixes {
            let plan = optimise(mix, pool_capacity, demand);
            if plan.capacity_limited {
                continue;
            }
            let cost = plan.cost_per_hour + switch.of(cands, &plan);
            if best.as_ref().is_none_or(|(b, _)| cost < b - 1e-9) {
                best = Some((cost, plan));
            }
        }
    }
    best.map_or_else(|| optimise(cands, pool_capacity, demand), |(_, p)| p)
}

/// Cheapest plan for `demand` when some variants serve one stage of disaggregated serving.
///
/// A unified variant serves whole requests; prefill and decode variants serve every request of
/// the disaggregated path in turn, so that path needs prefill capacity *and* decode capacity
/// for the demand, sized together from the same forecast (the probes' per-replica rates carry
/// the ratio: long prompts or few prefix hits make prefill replicas slower, long outputs make
/// decode replicas slower). `plan` sizes one set of interchangeable variants (others masked
/// out). Each sub-plan leaves the devices other roles' minimums hold; decode is planned in
/// what prefill leaves; when the pools cannot carry the demand, both stages are sized for the
/// largest rate they carry together. With both unified and P/D variants, the cheaper of the
/// unified plan and the P/D plan that carries the demand wins (one path per model, not a
/// split). Every variant keeps its minimum.
pub fn plan_by_role(
    cands: &[Candidate],
    roles: &[Role],
    pool_capacity: &[u32],
    demand: f64,
    plan: impl FnMut(&[Candidate], &[u32], f64) -> Plan,
) -> Plan {
    plan_by_role_switching(cands, roles, pool_capacity, demand, None, plan)
}

/// [`plan_by_role`] where the unified and the P/D path are compared with what each would
/// start charged as [`SwitchCost`] says. Moving a model to the other path starts a whole
/// fleet that serves nothing through its start-up; compared on their hourly costs alone, two
/// paths within a replica of each other took turns as the forecast moved (on azure-conv, every
/// few decisions), and each turn left the count-balancing router splitting traffic between a
/// growing and a shrinking fleet.
pub fn plan_by_role_switching(
    cands: &[Candidate],
    roles: &[Role],
    pool_capacity: &[u32],
    demand: f64,
    switch: Option<SwitchCost<'_>>,
    mut plan: impl FnMut(&[Candidate], &[u32], f64) -> Plan,
) -> Plan {
    let has = |r: Role| roles.contains(&r);
    if !(has(Role::Prefill) && has(Role::Decode)) {
        return plan(cands, pool_capacity, demand);
    }
    let only = |role: Role| -> Vec<Candidate> {
        cands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if roles.get(i) == Some(&role) {
                    *c
                } else {
                    Candidate {
                        rate_per_replica: 0.0,
                        min_replicas: 0,
                        max_replicas: 0,
                        ..*c
                    }
                }
            })
            .collect()
    };
    let prefill_cands = only(Role::Prefill);
    let decode_cands = only(Role::Decode);
    // The devices other roles' minimums hold (every variant keeps its minimum, whichever path
    // is chosen) are not a sub-plan's to take.
    let besides = |keep: &[Role]| -> Vec<u32> {
        let mut free: Vec<u32> = pool_capacity.to_vec();
        for (c, r) in cands.iter().zip(roles) {
            if !keep.contains(r) {
                hold(&mut free, c, c.min_replicas.min(c.max_replicas));
            }
        }
        free
    };
    let for_prefill = besides(&[Role::Prefill]);
    let for_decode = besides(&[Role::Prefill, Role::Decode]);
    let mut both_stages = |rate: f64| -> Plan {
        let prefill = plan(&prefill_cands, &for_prefill, rate);
        let mut left = for_decode.clone();
        for (c, &r) in cands.iter().zip(&prefill.replicas) {
            hold(&mut left, c, r);
        }
        let decode = plan(&decode_cands, &left, rate);
        Plan {
            replicas: prefill
                .replicas
                .iter()
                .zip(&decode.replicas)
                .map(|(a, b)| a + b)
                .collect(),
            cost_per_hour: prefill.cost_per_hour + decode.cost_per_hour,
            capacity_rate: prefill.capacity_rate.min(decode.capacity_rate),
            capacity_limited: prefill.capacity_limited || decode.capacity_limited,
        }
    };
    let mut disaggregated = both_stages(demand);
    if disaggregated.capacity_limited {
        // The pools cannot carry the demand: the largest rate both stages carry together,
        // rather than prefill filling the pools and leaving decode nothing.
        let (mut lo, mut hi) = (0.0, demand);
        let mut best = both_stages(0.0);
        for _ in 0..24 {
            let mid = 0.5 * (lo + hi);
            let p = both_stages(mid);
            if p.capacity_limited {
                hi = mid;
            } else {
                lo = mid;
                best = p;
            }
        }
        best.capacity_limited = true;
        disaggregated = best;
    }
    let chosen = if has(Role::Unified) {
        let unified = plan(&only(Role::Unified), &besides(&[Role::Unified]), demand);
        let unified_wins = match (unified.capacity_limited, disaggregated.capacity_limited) {
            (false, false) => {
                let with_starts =
                    |p: &Plan| p.cost_per_hour + switch.as_ref().map_or(0.0, |s| s.of(cands, p));
                with_starts(&unified) <= with_starts(&disaggregated)
            }
            (false, true) => true,
            (true, false) => false,
            (true, true) => unified.capacity_rate >= disaggregated.capacity_rate,
        };
        if unified_wins { unified } else { disaggregated }
    } else {
        disaggregated
    };
    with_minimums(cands, chosen)
}

/// Takes the devices of `replicas` of `c` from its pool's `free` count.
fn hold(free: &mut [u32], c: &Candidate, replicas: u32) {
    if let Some(f) = free.get_mut(c.pool) {
        *f = f.saturating_sub(replicas * c.devices);
    }
}

/// `plan` with every variant at least at its minimum (a masked-out stage keeps its floor).
fn with_minimums(cands: &[Candidate], mut plan: Plan) -> Plan {
    for (r, c) in plan.replicas.iter_mut().zip(cands) {
        *r = (*r).max(c.min_replicas.min(c.max_replicas));
    }
    plan.cost_per_hour = cands
        .iter()
        .zip(&plan.replicas)
        .map(|(c, &r)| c.price_per_hour * f64::from(r))
        .sum();
    plan
}

/// Requests per second the `replicas` of the variants in `role` carry together, at their
/// rated capacity (variants without a role are unified).
pub fn stage_rate(cands: &[Candidate], roles: &[Role], replicas: &[u32], role: Role) -> f64 {
    cands
        .iter()
        .zip(replicas)
        .enumerate()
        .filter(|(i, _)| roles.get(*i).copied().unwrap_or(Role::Unified) == role)
        .map(|(_, (c, &r))| c.rate_per_replica * f64::from(r))
        .sum()
}

/// The request rate `replicas` carry: the unified variants' capacity plus, where prefill and
/// decode variants exist, the smaller of the two stages' capacities.
pub fn carried_rate(cands: &[Candidate], roles: &[Role], replicas: &[u32]) -> f64 {
    let stage = |role: Role| stage_rate(cands, roles, replicas, role);
    let has = |r: Role| roles.contains(&r);
    let unified: f64 = stage(Role::Unified);
    if has(Role::Prefill) && has(Role::Decode) {
        unified + stage(Role::Prefill).min(stage(Role::Decode))
    } else {
        // Without both stages a lone prefill or decode variant carries nothing; without roles
        // every variant is unified.
        unified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATIO: Speeds<'static> = Speeds {
        concurrency: &[],
        per_replica: &[],
        min_ratio: 0.3,
    };

    const NO_SWITCH: SwitchCost<'static> = SwitchCost {
        current: &[],
        share: 0.0,
        dropped_share: 0.0,
    };

    fn cand(price: f64, devices: u32, pool: usize, rate: f64) -> Candidate {
        Candidate {
            price_per_hour: price,
            devices,
            pool,
            min_replicas: 0,
            max_replicas: 16,
            rate_per_replica: rate,
        }
    }

    #[test]
    fn picks_cheapest_per_capacity_and_fills_remainder_cheaply() {
        // h100: $4/h for 4 rps (1 $/rps); l40s: $1.5/h for 1 rps (1.5 $/rps).
        let c = [cand(4.0, 1, 0, 4.0), cand(1.5, 1, 1, 1.0)];
        let p = optimise(&c, &[8, 8], 8.5);
        // 2 h100 + 1 l40s = $9.5 beats 3 h100 = $12.
        assert_eq!(p.replicas, vec![2, 1]);
        assert!(!p.capacity_limited);
    }

    #[test]
    fn respects_pool_capacity_and_reports_limits() {
        let c = [cand(4.0, 1, 0, 4.0), cand(1.5, 1, 1, 1.0)];
        let p = optimise(&c, &[1, 2], 20.0);
        assert_eq!(p.replicas, vec![1, 2]);
        assert!(p.capacity_limited);
    }

    #[test]
    fn zero_demand_keeps_minimums() {
        let mut c = [cand(4.0, 1, 0, 4.0), cand(1.5, 1, 1, 1.0)];
        c[1].min_replicas = 1;
        assert_eq!(optimise(&c, &[8, 8], 0.0).replicas, vec![0, 1]);
    }

    #[test]
    fn comparable_mix_leaves_out_much_slower_variants() {
        // The plain plan covers the remainder with a replica a tenth as fast (2 h100 + 1 l40s);
        // the comparable plan takes one more h100 instead.
        let c = [cand(4.0, 1, 0, 4.0), cand(0.5, 1, 1, 0.4)];
        assert_eq!(optimise(&c, &[8, 8], 8.3).replicas, vec![2, 1]);
        let p = optimise_comparable(&c, &[8, 8], 8.3, RATIO, NO_SWITCH);
        assert_eq!(p.replicas, vec![3, 0]);
        assert!(p.capacity_rate >= 8.3);
        // Variants within the ratio still mix.
        let c = [cand(4.0, 1, 0, 4.0), cand(2.0, 1, 1, 1.6)];
        assert_eq!(
            optimise_comparable(&c, &[8, 8], 9.0, RATIO, NO_SWITCH).replicas,
            vec![2, 1]
        );
    }

    #[test]
    fn a_mix_runs_at_the_concurrency_of_its_most_limited_variant() {
        // A cheap slow variant (room for two) beside a fast one: cost alone mixes them, but
        // behind a router that balances outstanding requests the fast replicas would hold the
        // slow one's 6 requests instead of their 40, so the mix carries far less than its
        // rates add up to and the plan goes without it.
        let c = [cand(4.0, 1, 0, 10.0), cand(1.0, 1, 1, 3.0)];
        let pools = [8, 2];
        let blind = optimise_comparable(&c, &pools, 16.0, RATIO, NO_SWITCH);
        assert_eq!(blind.replicas, vec![1, 2]);
        let balanced = Speeds {
            concurrency: &[40.0, 6.0],
            ..RATIO
        };
        let p = optimise_comparable(&c, &pools, 16.0, balanced, NO_SWITCH);
        assert_eq!(p.replicas, vec![2, 0]);
        assert!(p.capacity_rate >= 16.0);
        // Where the slow variant holds as many requests as the fast one, they still mix.
        let even = Speeds {
            concurrency: &[40.0, 40.0],
            ..RATIO
        };
        assert_eq!(
            optimise_comparable(&c, &pools, 16.0, even, NO_SWITCH).replicas,
            vec![1, 2]
        );
        // The slow variant alone, within its own concurrency, keeps its whole rate.
        assert_eq!(
            optimise_comparable(&c, &pools, 5.0, balanced, NO_SWITCH).replicas,
            vec![0, 2]
        );
    }

    #[test]
    fn comparable_mix_may_use_a_slow_variant_alone() {
        // Little demand: one cheap slow replica carries it, with no faster one to compare with.
        let c = [cand(4.0, 1, 0, 4.0), cand(0.5, 1, 1, 0.4)];
        assert_eq!(
            optimise_comparable(&c, &[8, 8], 0.3, RATIO, NO_SWITCH).replicas,
            vec![0, 1]
        );
    }

    #[test]
    fn comparable_mix_falls_back_to_most_capacity_when_pools_run_out() {
        // One h100 fits; only mixing in the slow variant comes close to the demand.
        let c = [cand(4.0, 1, 0, 4.0), cand(0.5, 1, 1, 0.4)];
        let p = optimise_comparable(&c, &[1, 8], 10.0, RATIO, NO_SWITCH);
        assert!(p.capacity_limited);
        assert_eq!(p.replicas, optimise(&c, &[1, 8], 10.0).replicas);
    }

    #[test]
    fn starting_a_new_mix_must_pay_for_its_start_up() {
        // 10 rps: 3 h100 ($12/h) or 10 l40s ($10/h). From scratch the l40s fleet is cheaper; with
        // 3 h100 running, its 10 new replicas' start-up (0.8 x $10) outweighs the $2/h saved.
        let c = [cand(4.0, 1, 0, 4.0), cand(1.0, 1, 1, 1.0)];
        let from_scratch = SwitchCost {
            current: &[0, 0],
            share: 0.8,
            dropped_share: 0.2,
        };
        assert_eq!(
            optimise_comparable(&c, &[8, 16], 10.0, RATIO, from_scratch).replicas,
            vec![0, 10]
        );
        let running = SwitchCost {
            current: &[3, 0],
            share: 0.8,
            dropped_share: 0.2,
        };
        assert_eq!(
            optimise_comparable(&c, &[8, 16], 10.0, RATIO, running).replicas,
            vec![3, 0]
        );
        // Without the charge the cheaper mix wins even then.
        assert_eq!(
            optimise_comparable(
                &c,
                &[8, 16],
                10.0,
                RATIO,
                SwitchCost {
                    share: 0.0,
                    dropped_share: 0.0,
                    ..running
                }
            )
            .replicas,
            vec![0, 10]
        );
    }

    #[test]
    fn prefill_and_decode_each_carry_the_whole_demand() {
        // Prefill 4 rps per replica, decode 2: 8 rps needs 2 prefill and 4 decode replicas,
        // all on one 8-device pool.
        let c = [cand(1.0, 1, 0, 4.0), cand(1.0, 1, 0, 2.0)];
        let roles = [Role::Prefill, Role::Decode];
        let p = plan_by_role(&c, &roles, &[8], 8.0, optimise);
        assert_eq!(p.replicas, vec![2, 4]);
        assert!(!p.capacity_limited);
        assert_eq!(p.capacity_rate, 8.0);
        assert_eq!(carried_rate(&c, &roles, &p.replicas), 8.0);
        // One stage alone carries nothing.
        assert_eq!(carried_rate(&c, &roles, &[5, 0]), 0.0);
        // Decode is planned in what prefill leaves of the pool.
        let p = plan_by_role(&c, &roles, &[5], 8.0, optimise);
        assert!(p.capacity_limited);
        assert!(p.replicas.iter().sum::<u32>() <= 5);
    }

    #[test]
    fn the_cheaper_path_wins_between_unified_and_disaggregated() {
        // Unified 3 rps for $2; prefill 6 rps and decode 6 rps for $1 each: 12 rps costs $8
        // unified (4 replicas) or $4 disaggregated (2 + 2).
        let mut c = [
            cand(2.0, 1, 0, 3.0),
            cand(1.0, 1, 0, 6.0),
            cand(1.0, 1, 0, 6.0),
        ];
        let roles = [Role::Unified, Role::Prefill, Role::Decode];
        assert_eq!(
            plan_by_role(&c, &roles, &[16], 12.0, optimise).replicas,
            vec![0, 2, 2]
        );
        c[0].price_per_hour = 0.5;
        assert_eq!(
            plan_by_role(&c, &roles, &[16], 12.0, optimise).replicas,
            vec![4, 0, 0]
        );
        // Minimums of the path not taken still hold.
        c[1].min_replicas = 1;
        assert_eq!(
            plan_by_role(&c, &roles, &[16], 12.0, optimise).replicas,
            vec![4, 1, 0]
        );
    }

    #[test]
    fn replacing_a_running_mix_also_pays_for_the_replicas_it_drops() {
        // 10 rps: 3 h100 ($12/h) running, or 10 l40s ($6/h). Charged only for its start-up
        // (0.8 x $6) the l40s fleet still wins; the h100s it drops stay paid for beside it
        // until the window lets them go (0.2 x $12), which tips the balance.
        let c = [cand(4.0, 1, 0, 4.0), cand(0.6, 1, 1, 1.1)];
        let start_only = SwitchCost {
            current: &[3, 0],
            share: 0.8,
            dropped_share: 0.0,
        };
        assert_eq!(
            optimise_comparable(&c, &[8, 16], 10.0, RATIO, start_only).replicas,
            vec![0, 10]
        );
        let with_drops = SwitchCost {
            dropped_share: 0.2,
            ..start_only
        };
        assert_eq!(
            optimise_comparable(&c, &[8, 16], 10.0, RATIO, with_drops).replicas,
            vec![3, 0]
        );
        // A fleet shrinking in place pays for what it drops whichever plan it takes, so it
        // still shrinks: at 4 rps the running h100s go down to one.
        assert_eq!(
            optimise_comparable(&c, &[8, 16], 4.0, RATIO, with_drops).replicas,
            vec![1, 0]
        );
    }

    #[test]
    fn a_model_changes_path_only_when_the_saving_pays_for_the_new_fleet() {
        // Unified 4 rps for $4; prefill and decode 8 rps for $3.5 each: 16 rps costs $16
        // unified (4 replicas) or $14 disaggregated (2 + 2).
        let c = [
            cand(4.0, 1, 0, 4.0),
            cand(3.5, 1, 0, 8.0),
            cand(3.5, 1, 0, 8.0),
        ];
        let roles = [Role::Unified, Role::Prefill, Role::Decode];
        let plan = |switch| plan_by_role_switching(&c, &roles, &[16], 16.0, switch, optimise);
        // From scratch, or without a charge, the cheaper path wins.
        assert_eq!(plan(None).replicas, vec![0, 2, 2]);
        let from_scratch = SwitchCost {
            current: &[0, 0, 0],
            share: 0.8,
            dropped_share: 0.2,
        };
        assert_eq!(plan(Some(from_scratch)).replicas, vec![0, 2, 2]);
        // With the unified fleet running, the four new P/D replicas' start-up (0.8 x $14)
        // outweighs the $2/h the other path saves: the model stays where it is.
        let unified_running = SwitchCost {
            current: &[4, 0, 0],
            share: 0.8,
            dropped_share: 0.2,
        };
        assert_eq!(plan(Some(unified_running)).replicas, vec![4, 0, 0]);
        // Running on the P/D path, it stays there too.
        let pd_running = SwitchCost {
            current: &[0, 2, 2],
            share: 0.8,
            dropped_share: 0.2,
        };
        assert_eq!(plan(Some(pd_running)).replicas, vec![0, 2, 2]);
        // A path that saves more than its start-up costs still wins: unified at $1.5.
        let cheap = [
            Candidate {
                price_per_hour: 1.5,
                ..c[0]
            },
            c[1],
            c[2],
        ];
        assert_eq!(
            plan_by_role_switching(&cheap, &roles, &[16], 16.0, Some(pd_running), optimise)
                .replicas,
            vec![4, 0, 0]
        );
    }

    #[test]
    fn a_derated_fast_variant_does_not_make_slow_ones_comparable() {
        // H100 probed at 6 rps but derated to 3 for missing its SLO; L40S at 1.1. Judged on
        // the derated rate the L40S is within 0.3x and, cheaper per request, enters the plan;
        // judged on the probed speeds it stays out.
        let c = [cand(4.0, 1, 0, 3.0), cand(0.9, 1, 1, 1.1)];
        let probed = Speeds {
            concurrency: &[],
            per_replica: &[6.0, 1.1],
            min_ratio: 0.3,
        };
        let running = SwitchCost {
            current: &[10, 0],
            share: 0.8,
            dropped_share: 0.2,
        };
        assert!(optimise_comparable(&c, &[16, 32], 28.0, RATIO, running).replicas[1] > 0);
        assert_eq!(
            optimise_comparable(&c, &[16, 32], 28.0, probed, running).replicas,
            vec![10, 0]
        );
    }
}
