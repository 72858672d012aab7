//! AcceleratorPools shared between models.
//!
//! An AcceleratorPool is cluster-scoped, and several ModelAutoscalers may name it; together
//! they must stay within its devices. Each reconcile plans one model within what the others
//! leave. What a model holds in a pool is, per variant, the larger of its workload's replicas
//! and its desired replicas (replicas starting, serving and draining all occupy devices), and
//! never less than its minimum, times its accelerators per replica.
//!
//! Two sources say what the others hold: the decisions this process made (the reconciler's
//! per-object state, updated under the same lock as every decision, so two reconciles never
//! plan into the same free devices), and each ModelAutoscaler's status (the only source for
//! one this process has not decided on yet, after a restart or a change of leader, and the
//! newer one when a target was scaled between decisions). Per pool the larger of the two
//! counts; only objects that still exist count.
//!
//! Sharing is first come, first served: a model keeps what it holds until its own scale-down
//! releases it, and a model that finds a pool taken is planned within the rest and reports
//! `CapacityLimited`. Minimum replicas are a guarantee and are not shed for other models, so
//! the minimums of all the models on a pool should fit in it.

use std::collections::BTreeMap;

use super::reconcile::Desired;
use crate::crd::{ModelAutoscalerSpec, ModelAutoscalerStatus};

/// Devices held per AcceleratorPool (by name).
pub type PoolHoldings = BTreeMap<String, u32>;

/// What a ModelAutoscaler holds as its spec and status say: per variant, at least its minimum
/// replicas (a guarantee, held even before the model's first decision), and the larger of the
/// current and desired replicas its status reports.
pub fn holdings_from_status(
    spec: &ModelAutoscalerSpec,
    status: Option<&ModelAutoscalerStatus>,
) -> PoolHoldings {
    let mut out = PoolHoldings::new();
    for v in &spec.variants {
        let reported = status
            .and_then(|st| st.variants.iter().find(|s| s.name == v.name))
            .map_or(0, |s| s.current_replicas.max(s.desired_replicas));
        let devices = reported
            .max(v.min_replicas)
            .saturating_mul(v.accelerators_per_replica);
        add(&mut out, &v.pool, devices);
    }
    out
}

/// What one decision holds: per variant, the larger of its current and desired replicas.
pub fn holdings_of(desired: &[Desired]) -> PoolHoldings {
    let mut out = PoolHoldings::new();
    for d in desired {
        let replicas = d.current.unwrap_or(0).max(d.replicas);
        add(
            &mut out,
            &d.pool,
            replicas.saturating_mul(d.devices_per_replica),
        );
    }
    out
}

/// Adds `devices` to `pool` (saturating; a pool with nothing held gets no entry).
pub fn add(holdings: &mut PoolHoldings, pool: &str, devices: u32) {
    if devices == 0 {
        return;
    }
    let slot = holdings.entry(pool.to_string()).or_default();
    *slot = slot.saturating_add(devices);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::VariantStatus;
    use goodput_core::Role;

    fn spec() -> ModelAutoscalerSpec {
        serde_saphyr::from_str(
            r#"
model: llama-3.1-8b
slo: { ttft: { targetMs: 1000 }, itl: { targetMs: 60 } }
variants:
  - { name: h100, pool: h100, scaleTargetRef: { name: a }, maxReplicas: 8 }
  - { name: v5e, pool: tpu, acceleratorsPerReplica: 4, scaleTargetRef: { name: b }, maxReplicas: 8 }
  - { name: h100-decode, role: decode, pool: h100, scaleTargetRef: { name: c }, maxReplicas: 8 }
"#,
        )
        .unwrap()
    }

    fn variant(name: &str, current: u32, desired: u32) -> VariantStatus {
        VariantStatus {
            name: name.into(),
            current_replicas: current,
            desired_replicas: desired,
            predicted_ttft_ms: None,
            predicted_itl_ms: None,
            reason: String::new(),
        }
    }

    #[test]
    fn a_status_holds_the_larger_of_current_and_desired_times_the_devices_per_replica() {
        let status = ModelAutoscalerStatus {
            variants: vec![
                variant("h100", 3, 1),        // draining: still holds 3
                variant("v5e", 1, 2),         // starting: holds 2 x 4
                variant("h100-decode", 2, 2), // same pool as h100
            ],
            ..ModelAutoscalerStatus::default()
        };
        let held = holdings_from_status(&spec(), Some(&status));
        assert_eq!(held.get("h100"), Some(&5));
        assert_eq!(held.get("tpu"), Some(&8));
        assert_eq!(held.len(), 2);
        assert!(holdings_from_status(&spec(), None).is_empty());
        // A variant the status does not name yet (just added to the spec) holds nothing known.
        let partial = ModelAutoscalerStatus {
            variants: vec![variant("v5e", 0, 0)],
            ..ModelAutoscalerStatus::default()
        };
        assert!(holdings_from_status(&spec(), Some(&partial)).is_empty());
        // Minimum replicas are held whatever the status says, and before there is one.
        let mut with_min = spec();
        with_min.variants[1].min_replicas = 1;
        let held = holdings_from_status(&with_min, None);
        assert_eq!(held.get("tpu"), Some(&4));
        assert_eq!(held.len(), 1);
        assert_eq!(
            holdings_from_status(&with_min, Some(&status)).get("tpu"),
            Some(&8)
        );
    }

    #[test]
    fn a_decision_holds_what_it_runs_and_what_it_starts() {
        let d = |pool: &str, devices: u32, current: Option<u32>, replicas: u32| Desired {
            variant: pool.into(),
            accelerator: pool.into(),
            pool: pool.into(),
            role: Role::Unified,
            devices_per_replica: devices,
            replicas,
            current,
            predicted_ttft_s: None,
            predicted_itl_s: None,
        };
        let held = holdings_of(&[
            d("h100", 1, Some(4), 2),
            d("tpu", 4, None, 3),
            d("h100", 2, Some(1), 1),
        ]);
        assert_eq!(held.get("h100"), Some(&6));
        assert_eq!(held.get("tpu"), Some(&12));
        let mut h = PoolHoldings::new();
        add(&mut h, "x", u32::MAX);
        add(&mut h, "x", 5);
        assert_eq!(h.get("x"), Some(&u32::MAX));
    }
}
