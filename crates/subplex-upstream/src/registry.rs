//! The pool's table of live connections, and the [`Registration`] each connection task
//! holds. The task reports its end through the registration (leave the table, count
//! down) and never sees the pool itself, so the dependency runs one way:
//! `pool` → `connection` → `registry` ← `pool`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio_util::task::TaskTracker;

use crate::handle::UpstreamHandle;
use crate::SecurityContext;

/// Handles only: every connection's state lives in its task.
#[derive(Debug)]
pub(crate) struct Registry {
    pub connections: DashMap<SecurityContext, UpstreamHandle>,
    open_connections: AtomicUsize,
    /// Connection tasks running per security context, for status pages. Touched once per
    /// connection (or SSE operation) start and end, never per event.
    open_by_context: DashMap<SecurityContext, usize>,
    /// Set when a connection failed in a protocol way: a probed protocol is stale.
    protocol_mismatch: AtomicBool,
    /// Every connection task, so that shutdown can wait until each has told its upstream
    /// goodbye (`complete` per operation, then the close) before the process exits.
    tasks: TaskTracker,
}

impl Registry {
    /// An empty table whose connection tasks are tracked by `tasks`.
    pub fn new(tasks: TaskTracker) -> Self {
        Registry {
            connections: DashMap::new(),
            open_connections: AtomicUsize::new(0),
            open_by_context: DashMap::new(),
            protocol_mismatch: AtomicBool::new(false),
            tasks,
        }
    }

    /// Counts a new connection task for `key` with handle id `id`; the registration
    /// counts it down when dropped.
    pub fn register(self: &Arc<Self>, key: SecurityContext, id: u64) -> Registration {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        *self.open_by_context.entry(key).or_insert(0) += 1;
        Registration {
            registry: self.clone(),
            key,
            id,
        }
    }

    /// Removes the entry for `key` if it is still connection `id` (a newer connection for
    /// the same key may have replaced it).
    pub fn remove(&self, key: &SecurityContext, id: u64) {
        self.connections.remove_if(key, |_, handle| handle.id == id);
    }

    /// Connection tasks currently running (connecting, serving, reconnecting or closing).
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    pub fn protocol_mismatch_seen(&self) -> bool {
        self.protocol_mismatch.load(Ordering::Relaxed)
    }

    /// Connection tasks running per security context.
    pub fn open_by_context(&self) -> Vec<(SecurityContext, usize)> {
        self.open_by_context
            .iter()
            .map(|entry| (*entry.key(), *entry.value()))
            .collect()
    }
}

/// A connection task's place in the registry.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Arc<Registry>,
    key: SecurityContext,
    id: u64,
}

impl Registration {
    /// The tracker the connection task must be spawned on (see `Registry::tasks`).
    pub fn tasks(&self) -> TaskTracker {
        self.registry.tasks.clone()
    }

    /// Leaves the table: later subscribers of this key get a new connection. Called before
    /// the task stops taking subscriptions, so none queues on a closing connection.
    pub fn leave(&self) {
        self.registry.remove(&self.key, self.id);
    }

    /// Records that this connection failed in a protocol way, for the pool's owner to
    /// probe again (`protocol = "auto"`).
    pub fn report_protocol_mismatch(&self) {
        self.registry
            .protocol_mismatch
            .store(true, Ordering::Relaxed);
    }

    /// Connection tasks of this upstream currently running, for logs.
    pub fn open_connections(&self) -> usize {
        self.registry.open_connections()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.leave();
        self.registry
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
        self.registry
            .open_by_context
            .remove_if_mut(&self.key, |_, open| {
                *open -= 1;
                *open == 0
            });
    }
}
