//! Which control plane leads: a lease in a NATS KV bucket, taken and renewed with
//! compare-and-set on the key's revision.
//!
//! The leader renews every `ttl / 5`. A follower that sees the same revision for a whole `ttl`
//! (by its own monotonic clock, so clocks need not agree) takes the key over with a CAS on that
//! revision; only one can win. The leader counts its lease from the moment it *sent* its last
//! successful renewal and stops leading at 80 % of `ttl` after it, before any follower can have
//! waited a whole `ttl` since seeing that revision: a deposed leader knows it before it could
//! be overtaken, and its appends are refused from then on (see [`Validity`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use tokio::sync::watch;

/// The bucket and key of the lease.
pub const BUCKET: &str = "gantry_leader";
const KEY: &str = "leader";

/// A control plane's claim to lead.
#[derive(Debug, Clone)]
pub struct Lease {
    kv: kv::Store,
    /// Unique per process: name and a random suffix.
    me: String,
    ttl: Duration,
}

/// A lease this process holds. Dropping it stops the renewals (the lease then runs out).
#[derive(Debug)]
pub struct Held {
    valid_until: Arc<Mutex<Instant>>,
    lost: watch::Receiver<bool>,
    renewals: tokio::task::JoinHandle<()>,
    revision: Arc<Mutex<u64>>,
    lease: Lease,
}

impl Lease {
    /// Opens (or creates) the lease bucket.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        name: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Lease, super::Error> {
        let kv = super::open_bucket(js, BUCKET, replicas)
            .await
            .map_err(|e| super::Error::Setup(format!("creating the leader lease bucket: {e}")))?;
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        Ok(Lease {
            kv,
            me: format!("{name}/{}", &suffix[suffix.len() - 8..]),
            ttl,
        })
    }

    /// Who this process is in the lease.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Waits until this process leads.
    pub async fn acquire(&self) -> Held {
        let poll = (self.ttl / 10).max(Duration::from_millis(50));
        let mut seen: Option<(u64, Instant)> = None;
        loop {
            let sent = Instant::now();
            let won = match self.kv.entry(KEY).await {
                Ok(None) => self.kv.create(KEY, self.me.clone().into()).await.ok(),
                Ok(Some(entry)) if entry.operation != Operation::Put || entry.value.is_empty() => {
                    // Resigned or deleted: free to take.
                    self.kv
                        .update(KEY, self.me.clone().into(), entry.revision)
                        .await
                        .ok()
                }
                Ok(Some(entry)) => match seen {
                    Some((revision, since)) if revision == entry.revision => {
                        if since.elapsed() >= self.ttl {
                            tracing::warn!(holder = %String::from_utf8_lossy(&entry.value), "the leader's lease ran out; taking over");
                            self.kv
                                .update(KEY, self.me.clone().into(), entry.revision)
                                .await
                                .ok()
                        } else {
                            None
                        }
                    }
                    _ => {
                        seen = Some((entry.revision, Instant::now()));
                        None
                    }
                },
                Err(error) => {
                    tracing::debug!(%error, "lease not readable");
                    None
                }
            };
            if let Some(revision) = won {
                return self.hold(revision, sent);
            }
            tokio::time::sleep(poll).await;
        }
    }

    fn hold(&self, revision: u64, sent: Instant) -> Held {
        let valid_until = Arc::new(Mutex::new(sent + self.ttl.mul_f32(0.8)));
        let revision = Arc::new(Mutex::new(revision));
        let (lost_tx, lost) = watch::channel(false);
        let renewals = {
            let (lease, valid_until, revision) =
                (self.clone(), valid_until.clone(), revision.clone());
            tokio::spawn(async move {
                let every = lease.ttl / 5;
                loop {
                    tokio::time::sleep(every).await;
                    let sent = Instant::now();
                    let current = *revision.lock().unwrap_or_else(|e| e.into_inner());
                    match lease.kv.update(KEY, lease.me.clone().into(), current).await {
                        Ok(next) => {
                            *revision.lock().unwrap_or_else(|e| e.into_inner()) = next;
                            *valid_until.lock().unwrap_or_else(|e| e.into_inner()) =
                                sent + lease.ttl.mul_f32(0.8);
                        }
                        Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                            tracing::error!("another control plane took the lease; stepping down");
                            *valid_until.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                            let _ = lost_tx.send(true);
                            return;
                        }
                        Err(error) => tracing::warn!(%error, "lease not renewed; trying again"),
                    }
                    let until = *valid_until.lock().unwrap_or_else(|e| e.into_inner());
                    if Instant::now() >= until {
                        tracing::error!("lease ran out before it could be renewed; stepping down");
                        let _ = lost_tx.send(true);
                        return;
                    }
                }
            })
        };
        Held {
            valid_until,
            lost,
            renewals,
            revision,
            lease: self.clone(),
        }
    }
}

impl Held {
    /// Whether this process still leads, readable from anywhere: a deposed leader must not
    /// append.
    pub fn validity(&self) -> Validity {
        Validity(self.valid_until.clone())
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }
}

/// Dropping a lease still held gives it up at once (a clean shutdown), so a follower takes over
/// without waiting for it to run out; one already lost is left alone.
impl Drop for Held {
    fn drop(&mut self) {
        self.renewals.abort();
        if *self.lost.borrow() {
            return;
        }
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let revision = *self.revision.lock().unwrap_or_else(|e| e.into_inner());
        let kv = self.lease.kv.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = kv.update(KEY, Vec::new().into(), revision).await {
                    tracing::warn!(%error, "lease not given up; it runs out on its own");
                }
            });
        }
    }
}

/// Whether a lease is still held, readable from anywhere.
#[derive(Debug, Clone)]
pub struct Validity(Arc<Mutex<Instant>>);

impl Validity {
    pub fn is_valid(&self) -> bool {
        Instant::now() < *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
