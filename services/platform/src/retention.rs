//! What each service keeps only for a while: published outbox rows ([`outbox::RETENTION`],
//! except each booking's latest event) and the ids of the messages its consumers applied
//! ([`db::PROCESSED_RETENTION`]). A task of its own prunes both at start-up and then every
//! hour, so a long pass (a large table after an upgrade) holds up neither publishing nor
//! consuming.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{db, outbox};

/// How often the tables are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Prunes at start-up and then every hour until `cancel` fires.
pub async fn prune_regularly(db: db::Db, cancel: CancellationToken) {
    let processed_retention =
        i64::try_from(db::PROCESSED_RETENTION.as_millis()).unwrap_or(i64::MAX);
    loop {
        let now = crate::time::now_millis();
        match outbox::prune(&db, now, &cancel).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "pruned published outbox rows"),
            Err(e) => tracing::warn!(error = %e, "pruning the outbox failed"),
        }
        let cutoff = now.saturating_sub(processed_retention);
        match db::prune_processed(&db, cutoff, &cancel).await {
            Ok(0) => {}
            Ok(ids) => tracing::info!(ids, "forgot the ids of messages applied long ago"),
            Err(e) => tracing::warn!(error = %e, "forgetting applied message ids failed"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
