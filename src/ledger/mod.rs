//! Where a node records the events it accepts: its own writer when it runs alone, or the cluster's
//! stream, which every node then applies. Either way the caller learns the outcome once the event
//! is durable and visible to this node's checks.

pub mod cluster;

use std::sync::Arc;

use crate::event::ValidEvent;
use crate::ledger::cluster::Cluster;
use crate::registry::Recorder;
use crate::store::{Applied, ApplyError, PendingApply, Store, StoreError};

/// Why an event was not recorded: the registry's refusal or failure, or what only a cluster node
/// meets on the way through the shared stream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A cluster node could not get the event into the shared stream, or not applied here in
    /// time: retrying is safe (the `report_id` makes it idempotent).
    #[error("{0}")]
    Unavailable(String),
    /// A cluster stream message that is not an idguard event: it registers nothing.
    #[error("{0}")]
    Unreadable(String),
}

impl From<StoreError> for RecordError {
    fn from(error: StoreError) -> Self {
        Self::Apply(error.into())
    }
}

/// A node's way of recording events, and the store its checks read.
#[derive(Clone)]
pub enum Ledger {
    /// One node: the embedded registry is the whole truth.
    Local(Arc<Store>),
    /// A cluster node: events go through the shared stream.
    Cluster(Arc<Cluster>),
}

impl Ledger {
    /// The registry this node reads.
    pub fn store(&self) -> &Arc<Store> {
        match self {
            Self::Local(store) => store,
            Self::Cluster(cluster) => cluster.store(),
        }
    }

    /// Sends one validated event on its way, waiting only for room; events sent one after the
    /// other are applied in that order.
    pub async fn enqueue(
        &self,
        event: ValidEvent,
        recorder: &Recorder,
    ) -> Result<PendingApply<RecordError>, RecordError> {
        match self {
            Self::Local(store) => {
                let pending = store.enqueue(event, recorder).await?;
                Ok(PendingApply::new(
                    async move { Ok(pending.outcome().await?) },
                ))
            }
            Self::Cluster(cluster) => cluster.enqueue(event, recorder).await,
        }
    }

    /// Records one validated event sent by `recorder`; resolves once it is durable and visible
    /// to this node's checks.
    pub async fn apply(
        &self,
        event: ValidEvent,
        recorder: &Recorder,
    ) -> Result<Applied, RecordError> {
        self.enqueue(event, recorder).await?.outcome().await
    }
}
