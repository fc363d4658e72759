//! The live feed of row changes behind `GET /bookingLists/stream` (Server-Sent Events).
//!
//! Changes are read from the database, not taken from the consumer in passing: every row carries
//! the change number it was last written with ([`store::claim`]), and one poller per process reads
//! `change_seq > last` from the active table and fans the rows out to the connections of this
//! process. So a client sees only committed rows, and sees the changes applied by every replica,
//! whichever replica it is connected to. Each event carries the row as it is now (two quick
//! changes of one row may arrive as one) with its change number as the SSE `id`, so a client that
//! reconnects with `Last-Event-ID` is sent whatever it missed; one that falls behind the fan-out
//! catches up from the database the same way. After a rebuild is swapped in, the rows its replay
//! wrote carry newer change numbers and are sent again: the same rows, or corrections.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::Stream;
use platform::db::{Backend, Db};
use tokio::sync::{
    broadcast::{self, error::RecvError},
    watch,
};
use tokio_util::sync::CancellationToken;

use crate::{
    projection::BookingRow,
    query::FeedFilter,
    store::{self, ViewTable},
};

/// Rows read per query, by the poller and by a client catching up.
const BATCH: i64 = 500;
/// Changes buffered per connection before it has to catch up from the database.
const CAPACITY: usize = 1024;

/// A changed row and its change number.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub seq: i64,
    pub row: BookingRow,
}

/// What a feed connection yields.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    /// The connection is open; changes after `position` follow.
    Ready {
        position: i64,
    },
    Change(Arc<Change>),
}

#[derive(Clone)]
pub struct Feed {
    db: Db,
    sender: broadcast::Sender<Arc<Change>>,
    /// The newest change number fanned out so far.
    position: Arc<AtomicI64>,
}

impl Feed {
    /// The feed and its poller, which the caller runs until the service stops.
    /// It looks for changes after every commit the process reports through `commits`, and
    /// every `poll` for those made by other replicas.
    pub async fn start(
        db: Db,
        poll: Duration,
        commits: watch::Receiver<u64>,
        cancel: CancellationToken,
    ) -> anyhow::Result<(Feed, impl std::future::Future<Output = ()> + Send + 'static)> {
        let start = store::last_change(&db.pool).await?;
        let (sender, _) = broadcast::channel(CAPACITY);
        let feed = Feed {
            db,
            sender,
            position: Arc::new(AtomicI64::new(start)),
        };
        let poller = feed.clone().poll(poll, commits, cancel);
        Ok((feed, poller))
    }

    /// The changes after `last` in `table`, the active table as the poller last read it (read
    /// now if None). It runs after every commit, so it reads one statement's worth; the poller
    /// forgets the table at each timer tick, so a rebuild swapped in by any replica is followed
    /// within one poll interval.
    async fn changes_after(
        &self,
        last: i64,
        table: &mut Option<ViewTable>,
    ) -> Result<Vec<(i64, BookingRow)>, sqlx::Error> {
        let all = FeedFilter::default();
        // Once per timer tick at most: a reader will do.
        let active = match *table {
            Some(t) => t,
            None => *table.insert(store::active_table(&self.db.pool).await?),
        };
        match self.db.backend {
            // One round trip, with no transaction around it.
            Backend::Postgres => {
                store::changes_since(&self.db.pool, active, last, &all, BATCH).await
            }
            // On the write connection, where statements are calls, not a hop to a reader's
            // thread.
            Backend::Sqlite => {
                let mut tx = self.db.begin().await?;
                let changes = store::changes_since(&mut tx, active, last, &all, BATCH).await?;
                tx.commit().await?;
                Ok(changes)
            }
        }
    }

    async fn poll(
        self,
        every: Duration,
        mut commits: watch::Receiver<u64>,
        cancel: CancellationToken,
    ) {
        let mut last = self.position.load(Ordering::SeqCst);
        let mut table = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => table = None,
                changed = commits.changed() => {
                    if changed.is_err() {
                        // The signal is gone with the service; the timer still works.
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(every) => table = None,
                        }
                    }
                }
            }
            loop {
                let changes = self.changes_after(last, &mut table).await;
                let changes = match changes {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "live feed cannot read changes");
                        table = None;
                        break;
                    }
                };
                let full = changes.len() as i64 == BATCH;
                for (seq, row) in changes {
                    last = seq;
                    self.position.store(seq, Ordering::SeqCst);
                    // No receivers is fine: nobody is listening.
                    let _ = self.sender.send(Arc::new(Change { seq, row }));
                }
                if !full {
                    break;
                }
            }
        }
    }

    /// The changes matching `filter` from now on, or after change `resume_after` when the client
    /// says where it stopped. Ends when `cancel` fires.
    pub fn subscribe(
        &self,
        filter: FeedFilter,
        resume_after: Option<i64>,
        cancel: CancellationToken,
    ) -> impl Stream<Item = FeedItem> + Send + 'static {
        // Subscribe before reading the position, so nothing fanned out in between is lost.
        let receiver = self.sender.subscribe();
        let last = resume_after.unwrap_or_else(|| self.position.load(Ordering::SeqCst));
        let sub = Subscription {
            db: self.db.clone(),
            receiver,
            pending: VecDeque::new(),
            last,
            behind: resume_after.is_some(),
            filter,
            cancel,
            announced: false,
        };
        futures::stream::unfold(sub, Subscription::next)
    }
}

struct Subscription {
    db: Db,
    receiver: broadcast::Receiver<Arc<Change>>,
    pending: VecDeque<Arc<Change>>,
    /// The newest change number this connection has passed (sent or filtered out).
    last: i64,
    /// True while changes must be read from the database (after a resume or a lag).
    behind: bool,
    filter: FeedFilter,
    cancel: CancellationToken,
    announced: bool,
}

impl Subscription {
    async fn next(mut self) -> Option<(FeedItem, Self)> {
        if !self.announced {
            self.announced = true;
            let position = self.last;
            return Some((FeedItem::Ready { position }, self));
        }
        loop {
            if self.behind && self.pending.is_empty() {
                if let Err(e) = self.catch_up().await {
                    // The client reconnects with Last-Event-ID and resumes where it was.
                    tracing::warn!(error = %e, "live feed cannot catch up; closing the connection");
                    return None;
                }
            }
            while let Some(change) = self.pending.pop_front() {
                if change.seq <= self.last {
                    continue;
                }
                self.last = change.seq;
                if self.filter.matches(&change.row) {
                    return Some((FeedItem::Change(change), self));
                }
            }
            if self.behind {
                continue;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return None,
                received = self.receiver.recv() => match received {
                    Ok(change) => self.pending.push_back(change),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "live feed client fell behind; catching up");
                        // The database has everything that was fanned out, and more.
                        self.pending.clear();
                        self.behind = true;
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    async fn catch_up(&mut self) -> Result<(), sqlx::Error> {
        let table: ViewTable = store::active_table(&self.db.pool).await?;
        let changes =
            store::changes_since(&self.db.pool, table, self.last, &self.filter, BATCH).await?;
        self.behind = changes.len() as i64 == BATCH;
        // Filtered rows are skipped by the query; the position still moves past them.
        self.pending.extend(
            changes
                .into_iter()
                .map(|(seq, row)| Arc::new(Change { seq, row })),
        );
        Ok(())
    }
}
