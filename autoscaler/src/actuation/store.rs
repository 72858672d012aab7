//! The desired replica counts the KEDA external scaler answers from: written by the controller
//! after each reconcile, read by gRPC calls, with a change signal for `StreamIsActive`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

/// (namespace, ModelAutoscaler name, variant name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DesiredKey {
    pub namespace: String,
    pub autoscaler: String,
    pub variant: String,
}

/// Shared desired counts; clone to share.
#[derive(Clone)]
pub struct DesiredStore {
    map: Arc<RwLock<HashMap<DesiredKey, u32>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for DesiredStore {
    fn default() -> Self {
        Self {
            map: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl DesiredStore {
    /// Sets one variant's count; wakes streams when it changed.
    pub fn set(&self, key: DesiredKey, replicas: u32) {
        let old = self
            .map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, replicas);
        if old != Some(replicas) {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Removes every variant of one ModelAutoscaler.
    pub fn remove_autoscaler(&self, namespace: &str, autoscaler: &str) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !(k.namespace == namespace && k.autoscaler == autoscaler));
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn get(&self, key: &DesiredKey) -> Option<u32> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// A receiver that changes whenever any count does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
