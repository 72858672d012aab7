//! The simulator adapter: goodput's policy and the baselines implement
//! `goodput_sim::policy::Autoscaler`, so the simulator drives them exactly as a controller would
//! (one `ClusterView` snapshot per interval in, replica targets out). Nothing here does I/O.

use goodput_sim::policy::{Autoscaler, ClusterView, ScaleDecision};

use crate::baselines::{DynamoPlanner, HpaKv, KedaSlo, StaticPeak, WvaSaturation};
use crate::capacity::CapacityModel;
use crate::goodput::GoodputPolicy;

macro_rules! adapt {
    ($ty:ty, $name:expr) => {
        impl Autoscaler for $ty {
            fn name(&self) -> &str {
                $name
            }
            fn decide(&mut self, view: &ClusterView) -> Vec<ScaleDecision> {
                <$ty>::decide(self, view)
            }
        }
    };
}

impl<C: CapacityModel> Autoscaler for GoodputPolicy<C> {
    fn name(&self) -> &str {
        "goodput"
    }
    fn decide(&mut self, view: &ClusterView) -> Vec<ScaleDecision> {
        GoodputPolicy::decide(self, view)
    }
}

adapt!(StaticPeak, "static-peak");
adapt!(HpaKv, "hpa-kv");
adapt!(WvaSaturation, "wva-saturation");
adapt!(KedaSlo, "keda-slo");
adapt!(DynamoPlanner, "dynamo-planner");
