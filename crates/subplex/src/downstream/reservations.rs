//! The single-connection SSE streams the gateway knows of: reserved with `PUT`, open, and
//! the operations posted to each (graphql-sse single-connection mode).
//!
//! A stream is reached by its token, and only with the security context that reserved it:
//! a token presented with other credentials is treated as unknown. Tokens are 256 bits
//! from the operating system's CSPRNG, and a reservation that is not opened within
//! `token_ttl` expires. Operations posted before the stream opens wait here (they are
//! bounded by `max_operations_per_stream`) and start once the stream's task takes them.
//!
//! One `std` mutex guards the map; it is never held across an `.await`, and every
//! operation on it is a map lookup plus small bookkeeping.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures_util::stream::{AbortHandle, AbortRegistration};
use subplex_protocol::GraphqlRequest;
use subplex_upstream::{ConnectParams, SecurityContext};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::operation::ClientContext;
use crate::config::SseSingleConnectionConfig;

/// Random bytes per token: 256 bits, far beyond guessing.
const TOKEN_BYTES: usize = 32;

/// An operation posted to a stream, not started yet.
#[derive(Debug)]
pub(crate) struct PendingOperation {
    pub client: Arc<ClientContext>,
    pub params: ConnectParams,
    pub request: GraphqlRequest,
}

/// An operation handed to the stream's task to start.
#[derive(Debug)]
pub(crate) struct StartedOperation {
    pub id: Arc<str>,
    /// Tells this run of `id` apart from a later one with the same id.
    pub serial: u64,
    pub pending: PendingOperation,
    /// Aborted when the client stops the operation with `DELETE`.
    pub abort: AbortRegistration,
}

#[derive(Debug)]
enum OperationState {
    Pending(PendingOperation),
    Running(AbortHandle),
}

#[derive(Debug)]
struct OperationSlot {
    serial: u64,
    state: OperationState,
}

#[derive(Debug)]
struct Reservation {
    key: SecurityContext,
    reserved_at: Instant,
    open: bool,
    operations: HashMap<Arc<str>, OperationSlot>,
    /// Wakes the stream's task when operations are posted.
    posted: Arc<Notify>,
}

/// Why a request about a stream cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StreamError {
    /// No such token, an expired one, or one reserved by another security context: these
    /// are not told apart, so a token's existence never leaks to other credentials.
    #[error("stream not found")]
    NotFound,
    #[error("stream already open")]
    AlreadyOpen,
    #[error("operation id is missing: send extensions.operationId (operationId for DELETE)")]
    MissingOperationId,
    #[error("operation with this id already exists")]
    DuplicateOperation,
    #[error("too many operations on this stream")]
    TooManyOperations { limit: usize },
    #[error("too many streams")]
    TooManyStreams { limit: usize },
    #[error("the system random number generator failed")]
    Random,
}

/// What the stream's task holds: its token and the notification of posted operations.
pub(crate) struct OpenStream {
    pub token: Arc<str>,
    pub posted: Arc<Notify>,
}

impl fmt::Debug for OpenStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a bearer secret.
        f.debug_struct("OpenStream").finish_non_exhaustive()
    }
}

/// Every single-connection stream of the gateway.
pub(crate) struct Reservations {
    settings: SseSingleConnectionConfig,
    inner: Mutex<Inner>,
}

impl fmt::Debug for Reservations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are bearer secrets: only how many there are. `try_lock`, so that Debug can
        // never wait on (or deadlock with) the lock.
        let streams = self.inner.try_lock().map(|inner| inner.streams.len()).ok();
        f.debug_struct("Reservations")
            .field("settings", &self.settings)
            .field("streams", &streams)
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    streams: HashMap<Arc<str>, Reservation>,
    next_serial: u64,
}

impl Reservations {
    pub fn new(settings: SseSingleConnectionConfig) -> Self {
        Reservations {
            settings,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only bookkeeping behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a stream for `key` and returns its token.
    pub fn reserve(&self, key: SecurityContext) -> Result<Arc<str>, StreamError> {
        let token: Arc<str> = new_token()?.into();
        let now = Instant::now();
        let ttl = self.settings.token_ttl;
        let mut inner = self.lock();
        // Expired reservations go before counting, so they never block new ones.
        inner
            .streams
            .retain(|_, r| r.open || now.duration_since(r.reserved_at) < ttl);
        let limit = self.settings.max_streams;
        if inner.streams.len() >= limit {
            return Err(StreamError::TooManyStreams { limit });
        }
        inner.streams.insert(
            token.clone(),
            Reservation {
                key,
                reserved_at: now,
                open: false,
                operations: HashMap::new(),
                posted: Arc::new(Notify::new()),
            },
        );
        Ok(token)
    }

    /// Runs `f` on the live reservation of `token` if `key` reserved it; an expired one is
    /// removed on the way.
    fn with_stream<T>(
        &self,
        token: &str,
        key: &SecurityContext,
        f: impl FnOnce(&mut Reservation, &mut u64) -> Result<T, StreamError>,
    ) -> Result<T, StreamError> {
        let mut inner = self.lock();
        let Inner {
            streams,
            next_serial,
        } = &mut *inner;
        let reservation = streams.get_mut(token).ok_or(StreamError::NotFound)?;
        if !reservation.open
            && Instant::now().duration_since(reservation.reserved_at) >= self.settings.token_ttl
        {
            streams.remove(token);
            return Err(StreamError::NotFound);
        }
        if reservation.key != *key {
            return Err(StreamError::NotFound);
        }
        f(reservation, next_serial)
    }

    /// Whether `key` may use the live stream of `token`.
    pub fn check(&self, token: &str, key: &SecurityContext) -> Result<(), StreamError> {
        self.with_stream(token, key, |_, _| Ok(()))
    }

    /// Marks the stream of `token` open; at most one stream per token.
    pub fn open(&self, token: &str, key: &SecurityContext) -> Result<OpenStream, StreamError> {
        self.with_stream(token, key, |reservation, _| {
            if reservation.open {
                return Err(StreamError::AlreadyOpen);
            }
            reservation.open = true;
            Ok(OpenStream {
                token: token.into(),
                posted: reservation.posted.clone(),
            })
        })
    }

    /// Posts an operation to the stream of `token`; it starts once the stream is open.
    pub fn post(
        &self,
        token: &str,
        key: &SecurityContext,
        id: &str,
        pending: PendingOperation,
    ) -> Result<(), StreamError> {
        let limit = self.settings.max_operations_per_stream;
        self.with_stream(token, key, |reservation, next_serial| {
            if reservation.operations.contains_key(id) {
                return Err(StreamError::DuplicateOperation);
            }
            if reservation.operations.len() >= limit {
                return Err(StreamError::TooManyOperations { limit });
            }
            *next_serial += 1;
            reservation.operations.insert(
                id.into(),
                OperationSlot {
                    serial: *next_serial,
                    state: OperationState::Pending(pending),
                },
            );
            reservation.posted.notify_one();
            Ok(())
        })
    }

    /// Stops operation `id` of the stream of `token`: a pending one never starts, a running
    /// one is aborted. Unknown ids are fine (the operation may have just completed).
    pub fn stop(&self, token: &str, key: &SecurityContext, id: &str) -> Result<(), StreamError> {
        self.with_stream(token, key, |reservation, _| {
            if let Some(OperationSlot {
                state: OperationState::Running(abort),
                ..
            }) = reservation.operations.remove(id)
            {
                abort.abort();
            }
            Ok(())
        })
    }

    /// Hands the stream's task every pending operation, marking each running.
    pub fn take_pending(&self, token: &str) -> Vec<StartedOperation> {
        let mut inner = self.lock();
        let Some(reservation) = inner.streams.get_mut(token) else {
            return Vec::new();
        };
        let mut started = Vec::new();
        for (id, slot) in reservation.operations.iter_mut() {
            if matches!(slot.state, OperationState::Running(_)) {
                continue;
            }
            let (handle, abort) = AbortHandle::new_pair();
            let OperationState::Pending(pending) =
                std::mem::replace(&mut slot.state, OperationState::Running(handle))
            else {
                continue;
            };
            started.push(StartedOperation {
                id: id.clone(),
                serial: slot.serial,
                pending,
                abort,
            });
        }
        started
    }

    /// Forgets run `serial` of operation `id` once it ended, so that the id can be reused.
    pub fn finished(&self, token: &str, id: &str, serial: u64) {
        let mut inner = self.lock();
        if let Some(reservation) = inner.streams.get_mut(token) {
            if reservation.operations.get(id).map(|slot| slot.serial) == Some(serial) {
                reservation.operations.remove(id);
            }
        }
    }

    /// The ids of the stream's operations that have not ended (running, or posted and not
    /// started yet), sorted: the gateway ends each of them when it drains.
    pub fn unfinished(&self, token: &str) -> Vec<Arc<str>> {
        let inner = self.lock();
        let mut unfinished: Vec<Arc<str>> = inner
            .streams
            .get(token)
            .map(|reservation| reservation.operations.keys().cloned().collect())
            .unwrap_or_default();
        unfinished.sort();
        unfinished
    }

    /// Forgets the stream of `token` when it ends; its token is no longer valid.
    pub fn close(&self, token: &str) {
        self.lock().streams.remove(token);
    }

    /// Streams reserved or open (for tests and logs).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().streams.len()
    }
}

/// A fresh token: 256 bits from the OS CSPRNG, hex-encoded (64 characters, URL-safe).
fn new_token() -> Result<String, StreamError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|_| StreamError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use subplex_protocol::RawJson;

    use super::*;

    fn settings() -> SseSingleConnectionConfig {
        SseSingleConnectionConfig {
            token_ttl: Duration::from_millis(1000),
            max_streams: 2,
            max_operations_per_stream: 2,
        }
    }

    fn key(user: &str) -> SecurityContext {
        SecurityContext::compute(
            "up",
            &subplex_upstream::SettingsFingerprint::default(),
            [("authorization", user.as_bytes())],
            &RawJson::empty_object(),
        )
    }

    fn pending(user: &str) -> PendingOperation {
        PendingOperation {
            client: Arc::new(ClientContext {
                transport: "sse-single-connection",
                path: "/graphql".into(),
                peer: ([127, 0, 0, 1], 1).into(),
                headers: Default::default(),
                init_payload: RawJson::empty_object(),
                hooks: None,
            }),
            params: ConnectParams {
                key: key(user),
                headers: Vec::new(),
                init_payload: RawJson::empty_object(),
            },
            request: GraphqlRequest::new("{ a }"),
        }
    }

    #[test]
    fn debug_never_shows_a_token() {
        let streams = Reservations::new(settings());
        let token = streams.reserve(key("alice")).unwrap();
        let open = streams.open(&token, &key("alice")).unwrap();
        let shown = format!("{streams:?} {open:?}");
        assert!(!shown.contains(&*token), "{shown}");
        assert!(shown.contains("streams: Some(1)"), "{shown}");
    }

    #[test]
    fn tokens_are_random_hex_of_256_bits() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_reservation_expires_after_the_ttl() {
        let streams = Reservations::new(settings());
        let token = streams.reserve(key("alice")).unwrap();
        tokio::time::advance(Duration::from_millis(999)).await;
        let kept = streams.reserve(key("alice")).unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            streams.open(&token, &key("alice")).unwrap_err(),
            StreamError::NotFound
        );
        assert_eq!(streams.len(), 1, "the expired one is gone");
        // An open stream does not expire.
        streams.open(&kept, &key("alice")).unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        streams
            .post(&kept, &key("alice"), "1", pending("alice"))
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn expired_reservations_do_not_count_against_the_limit() {
        let streams = Reservations::new(settings());
        streams.reserve(key("a")).unwrap();
        streams.reserve(key("a")).unwrap();
        assert_eq!(
            streams.reserve(key("a")).unwrap_err(),
            StreamError::TooManyStreams { limit: 2 }
        );
        tokio::time::advance(Duration::from_millis(1000)).await;
        streams.reserve(key("a")).unwrap();
        assert_eq!(streams.len(), 1);
    }

    #[tokio::test]
    async fn a_token_is_bound_to_the_context_that_reserved_it() {
        let streams = Reservations::new(settings());
        let token = streams.reserve(key("alice")).unwrap();
        let bob = key("bob");
        assert_eq!(
            streams.open(&token, &bob).unwrap_err(),
            StreamError::NotFound
        );
        assert_eq!(
            streams.post(&token, &bob, "1", pending("bob")).unwrap_err(),
            StreamError::NotFound
        );
        assert_eq!(
            streams.stop(&token, &bob, "1").unwrap_err(),
            StreamError::NotFound
        );
        streams.open(&token, &key("alice")).unwrap();
        assert_eq!(
            streams.open(&token, &key("alice")).unwrap_err(),
            StreamError::AlreadyOpen
        );
    }

    #[tokio::test]
    async fn operations_are_bounded_unique_and_reusable_after_they_end() {
        let streams = Reservations::new(settings());
        let alice = key("alice");
        let token = streams.reserve(alice).unwrap();
        let open = streams.open(&token, &alice).unwrap();
        streams.post(&token, &alice, "1", pending("alice")).unwrap();
        assert_eq!(
            streams
                .post(&token, &alice, "1", pending("alice"))
                .unwrap_err(),
            StreamError::DuplicateOperation
        );
        streams.post(&token, &alice, "2", pending("alice")).unwrap();
        assert_eq!(
            streams
                .post(&token, &alice, "3", pending("alice"))
                .unwrap_err(),
            StreamError::TooManyOperations { limit: 2 }
        );
        // Posting woke the task; it takes both at once.
        open.posted.notified().await;
        let mut started = streams.take_pending(&token);
        started.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(started.len(), 2);
        assert!(streams.take_pending(&token).is_empty());

        // A stale serial does not remove a newer run of the same id.
        streams.stop(&token, &alice, "1").unwrap();
        streams.post(&token, &alice, "1", pending("alice")).unwrap();
        streams.finished(&token, "1", started[0].serial);
        assert_eq!(
            streams
                .post(&token, &alice, "1", pending("alice"))
                .unwrap_err(),
            StreamError::DuplicateOperation
        );
        streams.finished(&token, "2", started[1].serial);
        streams.post(&token, &alice, "2", pending("alice")).unwrap();

        streams.close(&token);
        assert_eq!(
            streams
                .post(&token, &alice, "4", pending("alice"))
                .unwrap_err(),
            StreamError::NotFound
        );
    }

    #[tokio::test]
    async fn stopping_a_running_operation_aborts_it() {
        use futures_util::StreamExt;
        let streams = Reservations::new(settings());
        let alice = key("alice");
        let token = streams.reserve(alice).unwrap();
        streams.open(&token, &alice).unwrap();
        streams.post(&token, &alice, "1", pending("alice")).unwrap();
        let started = streams.take_pending(&token).pop().unwrap();
        let mut events = futures_util::stream::Abortable::new(
            futures_util::stream::pending::<()>(),
            started.abort,
        );
        streams.stop(&token, &alice, "1").unwrap();
        assert_eq!(events.next().await, None);
    }
}
