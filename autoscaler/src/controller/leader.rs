//! Leader election on a `coordination.k8s.io/v1` Lease, so that two controller replicas never
//! both act.
//!
//! A candidate takes the Lease when it does not exist, when it already holds it, or when the
//! holder has not renewed it for `leaseDurationSeconds`; every write is a replace carrying the
//! Lease's `resourceVersion`, so of two candidates racing for an expired Lease the API server
//! accepts one and answers the other 409 Conflict. The leader renews every third of the
//! duration; a leader that cannot renew within the duration stops leading (the caller exits).
//!
//! Data flow: `Api<Lease>` -> [`LeaseLock::try_acquire_or_renew`] (one round) ->
//! [`LeaseLock::hold`] (loop: wait for leadership, then keep renewing; the watch channel says
//! whether this process leads).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// One candidate's view of the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// Lease errors other than losing a race.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease {name}: {source}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: true when this candidate holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let now = Timestamp::now();
        let err = |source| LeaseError::Kube {
            name: self.name.clone(),
            source,
        };
        let current = match self.api.get_opt(&self.name).await.map_err(err)? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, None, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    // Another candidate created it first.
                    Err(e) if is_status(&e, 409) => Ok(false),
                    Err(e) => Err(err(e)),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map_or(self.duration.as_secs() as i64, i64::from);
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| t.0 + SignedDuration::from_secs(duration) < now);
        if !mine && !expired && spec.holder_identity.is_some() {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time } else { None };
        let mut next = current;
        next.spec = Some(self.spec(now, acquired, transitions));
        // The replace carries the resourceVersion read above: a concurrent writer wins, we lose.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    /// Competes for and keeps the Lease until `stop` fires; `leading` says whether this
    /// candidate leads. Returns when leadership is lost (renewal failed for a whole duration)
    /// or on `stop`.
    pub async fn hold(&self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let retry = (self.duration / 3).max(Duration::from_millis(200));
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            let ok = match self.try_acquire_or_renew().await {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::warn!(error = %e, "lease round failed");
                    false
                }
            };
            let now = tokio::time::Instant::now();
            if ok {
                last_renewed = Some(now);
                if !*leading.borrow() {
                    tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                    let _ = leading.send(true);
                }
            } else if *leading.borrow()
                && last_renewed.is_none_or(|t| now.duration_since(t) >= self.duration)
            {
                tracing::error!(identity = %self.identity, "lost the lease");
                let _ = leading.send(false);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
