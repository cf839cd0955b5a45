//! Where `GET /api/v1/operations/{id}` reads operation records.
//!
//! Reconcile keeps the records (state, history, what canceled or dropped an
//! operation). The gateway library only knows this small trait, so it does
//! not depend on reconcile; whoever builds the gateway plugs a store in with
//! [`crate::Gateway::with_operations`]. With the `reconcile` feature (on by
//! default, and required by the `hookbus-gateway` binary), [`StoreLookup`]
//! adapts any `hookbus_reconcile::store::OperationStore`: `RedisStore` in
//! the binary, `MemoryStore` in `hookbus dev`.

use async_trait::async_trait;

/// Reads one operation record by id.
#[async_trait]
pub trait OperationLookup: Send + Sync + 'static {
    /// The record of `id` as JSON (at least `id` and `state`), `None` when
    /// the store has none. `Err` means the store could not answer (503); the
    /// message says what failed.
    async fn operation(&self, id: &str) -> Result<Option<serde_json::Value>, String>;

    /// Every record of one resource (its audit trail), newest first. The
    /// admin page's search; a lookup that cannot list answers none.
    async fn of_resource(&self, _key: &str) -> Result<Vec<serde_json::Value>, String> {
        Ok(Vec::new())
    }

    /// The records one webhook delivery (`X-GitHub-Delivery`) caused, newest
    /// first.
    async fn of_delivery(&self, _delivery: &str) -> Result<Vec<serde_json::Value>, String> {
        Ok(Vec::new())
    }
}

#[cfg(feature = "reconcile")]
pub use self::reconciled::StoreLookup;

#[cfg(feature = "reconcile")]
mod reconciled {
    use std::sync::Arc;

    use async_trait::async_trait;
    use hookbus_config::Settings;
    use hookbus_reconcile::store::{OperationStore, RedisStore, StoreError};

    use super::OperationLookup;

    /// Reconcile's operation records as the gateway's [`OperationLookup`]:
    /// `StoreLookup(Arc::new(MemoryStore::default()))`, or over any
    /// `Arc<dyn OperationStore>` (e.g. `Reconcile::store()`).
    pub struct StoreLookup<S: ?Sized>(pub Arc<S>);

    impl StoreLookup<RedisStore> {
        /// Over the records reconcile keeps in Redis (`redis.url`,
        /// `bus.prefix`, `reconcile.retention_ms`), as the binary wires it.
        /// Connects lazily: a server that is down now answers 503 per request.
        pub fn over_redis(settings: &Settings) -> Result<Self, StoreError> {
            Ok(StoreLookup(Arc::new(RedisStore::from_settings(settings)?)))
        }
    }

    #[async_trait]
    impl<S: OperationStore + ?Sized> OperationLookup for StoreLookup<S> {
        async fn operation(&self, id: &str) -> Result<Option<serde_json::Value>, String> {
            let record = self.0.operation(id).await.map_err(|err| format!("cannot read operation records: {err}"))?;
            record
                .map(|record| serde_json::to_value(&record))
                .transpose()
                .map_err(|err| format!("cannot encode the record of operation {id}: {err}"))
        }

        async fn of_resource(&self, key: &str) -> Result<Vec<serde_json::Value>, String> {
            let records =
                self.0.operations(key).await.map_err(|err| format!("cannot read operation records: {err}"))?;
            to_values(&records)
        }

        async fn of_delivery(&self, delivery: &str) -> Result<Vec<serde_json::Value>, String> {
            let records = self
                .0
                .operations_of_delivery(delivery)
                .await
                .map_err(|err| format!("cannot read operation records: {err}"))?;
            to_values(&records)
        }
    }

    fn to_values(records: &[hookbus_reconcile::book::OperationRecord]) -> Result<Vec<serde_json::Value>, String> {
        records
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()
            .map_err(|err| format!("cannot encode operation records: {err}"))
    }
}
