//! The task that serves every operation of one security context on one upstream.
//!
//! It owns the operations, not just a socket: each [`Operation`] keeps its request, and
//! the task keeps the [`Dial`] parameters, so an operation outlives any one WebSocket.
//! When the socket fails in a retryable way (see [`UpstreamError::is_retryable`]) the task
//! dials again with backoff, sends the same `connection_init` and resubscribes every live
//! operation; subscribers notice nothing. Only when the outage outlasts
//! `give_up_after_ms`, or the failure is permanent, do they get the error.
//!
//! Operations whose requests are equal once normalised ([`RequestKey`]) run as one upstream
//! operation with several subscribers (deduplication, `dedup = true`): a client that joins
//! a running operation gets its events from then on, and the upstream operation stops
//! when its last subscriber leaves, whichever way it leaves. Each subscriber has its own
//! queue and gets each event separately, so whatever the gateway does per client (hooks,
//! framing) still runs per client.
//!
//! The reader never waits for a client: events are handed over with `try_send`, and a
//! subscriber whose queue is full is cut off (slow-consumer policy), alone: the others of
//! the same operation keep it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use subplex_protocol::client::ClientStep;
use subplex_protocol::{Event, GraphqlRequest, RawJson};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::error::ConnectCause;
use crate::handle::{Command, SubscribeRefused, UpstreamHandle};
use crate::reconnect::{Backoff, Retry};
use crate::registry::Registration;
use crate::request_key::RequestKey;
use crate::subscription::{self, HeldWrites, Leave, Subscriber};
use crate::ws::WsLink;
use crate::{SecurityContext, Subscription, UpstreamError, UpstreamSettings};

/// Subscribe requests queued per connection. Callers wait (backpressure) beyond this;
/// a burst of clients arriving while the connection is being established fits in it.
const COMMAND_QUEUE: usize = 256;

/// What every connection of one security context is opened with. Deliberately not
/// `Debug`: it holds credentials.
#[derive(Clone)]
pub(crate) struct Dial {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub init_payload: RawJson,
}

/// One live upstream operation: enough to start it again on a new socket, and everyone
/// it is for.
struct Operation {
    request: GraphqlRequest,
    /// Its entry in `UpstreamConnection::shared`, when deduplication is on.
    dedup_key: Option<RequestKey>,
    /// By subscriber id, in the order they joined. Most operations have one.
    subscribers: Vec<(u64, Subscriber)>,
}

/// Subscribers one task hands an event to. An operation with more is fanned out by
/// several tasks at once, on all of the runtime's threads: handing an event over can mean
/// writing it to the client's socket (write-through), a few microseconds each, and ten
/// thousand of those in one task would take the event's last client tens of
/// milliseconds more than it needs on a machine with idle cores.
const FAN_OUT_CHUNK: usize = 512;

/// Upstream frames handled as one burst at most (see `UpstreamConnection::on_burst`): a
/// held frame waits for the burst's end, so it stays short.
const MAX_BURST_FRAMES: usize = 16;

impl Operation {
    /// Hands `event` to every subscriber. A subscriber whose queue is full is failed with
    /// `slow` and dropped; one whose [`Subscription`] is gone is dropped too (its leave is
    /// queued and will find nothing). Returns how many were cut as too slow.
    ///
    /// Returns only once every subscriber has it, so each client's events stay in order.
    /// With `held`, write-through frames are held for the end of the burst (see
    /// [`HeldWrites`]).
    async fn fan_out(
        &mut self,
        event: &Event,
        slow: &UpstreamError,
        mut held: Option<&mut HeldWrites>,
    ) -> usize {
        // The frame was read just now; every client's latency starts here.
        let read_at = Instant::now();
        if self.subscribers.len() <= FAN_OUT_CHUNK {
            return hand_over(&mut self.subscribers, event, read_at, slow, held);
        }
        let holding = held.is_some();
        let mut subscribers = std::mem::take(&mut self.subscribers).into_iter();
        let mut tasks = Vec::new();
        loop {
            let mut chunk: Vec<_> = subscribers.by_ref().take(FAN_OUT_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            let (event, slow) = (event.clone(), slow.clone());
            tasks.push(tokio::spawn(async move {
                let mut chunk_held = HeldWrites::default();
                let cut = hand_over(
                    &mut chunk,
                    &event,
                    read_at,
                    &slow,
                    holding.then_some(&mut chunk_held),
                );
                (chunk, cut, chunk_held)
            }));
        }
        let mut cut = 0;
        for task in tasks {
            match task.await {
                Ok((chunk, chunk_cut, mut chunk_held)) => {
                    self.subscribers.extend(chunk);
                    cut += chunk_cut;
                    if let Some(held) = held.as_deref_mut() {
                        held.append(&mut chunk_held);
                    }
                }
                // Only a panic gets here; its subscribers were dropped with it, and their
                // clients see the operation end.
                Err(error) => warn!(%error, "a fan-out task failed"),
            }
        }
        cut
    }
}

/// [`Operation::fan_out`] for one group of subscribers.
fn hand_over(
    subscribers: &mut Vec<(u64, Subscriber)>,
    event: &Event,
    read_at: Instant,
    slow: &UpstreamError,
    mut held: Option<&mut HeldWrites>,
) -> usize {
    let mut cut = 0;
    subscribers.retain(|(_, subscriber)| {
        match subscriber.try_send_with(event.clone(), read_at, held.as_deref_mut()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                subscriber.fail(slow.clone());
                cut += 1;
                false
            }
        }
    });
    cut
}

pub(crate) struct UpstreamConnection {
    settings: Arc<UpstreamSettings>,
    registration: Registration,
    dial: Dial,
    commands: mpsc::Receiver<Command>,
    unsubscribe_tx: mpsc::UnboundedSender<Leave>,
    unsubscribes: mpsc::UnboundedReceiver<Leave>,
    /// Ordered so a resubscribe replays operations in the order clients started them.
    /// Ids are this task's, stable across reconnects (each socket is a new id space).
    operations: BTreeMap<u64, Operation>,
    /// The running operation of each deduplication key.
    shared: HashMap<RequestKey, u64>,
    next_operation: u64,
    /// Subscriber ids, unique on this connection.
    next_subscriber: u64,
    shutdown: CancellationToken,
}

/// How serving one socket, or waiting between sockets, ended.
enum Ending {
    /// No operations for `idle_timeout` (or none left to reconnect for): closed by us.
    Idle,
    Shutdown,
    Failed(UpstreamError),
}

impl UpstreamConnection {
    /// Spawns the task for a new connection and returns its handle. Connecting happens
    /// inside the task, so the caller never holds the pool map across the handshake.
    pub fn spawn(
        id: u64,
        key: SecurityContext,
        dial: Dial,
        settings: Arc<UpstreamSettings>,
        registration: Registration,
        shutdown: CancellationToken,
    ) -> UpstreamHandle {
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (unsubscribe_tx, unsubscribes) = mpsc::unbounded_channel();
        // A root span: the connection outlives the client whose request happened to open it.
        let span = tracing::info_span!(parent: None, "upstream", name = %settings.name, ctx = %key, conn = id);
        let tasks = registration.tasks();
        let connection = UpstreamConnection {
            settings,
            registration,
            dial,
            commands,
            unsubscribe_tx,
            unsubscribes,
            operations: BTreeMap::new(),
            shared: HashMap::new(),
            next_operation: 1,
            next_subscriber: 1,
            shutdown,
        };
        tasks.spawn(connection.run().instrument(span));
        UpstreamHandle {
            id,
            commands: commands_tx,
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(self.settings.reconnect);
        let mut reconnecting = false;
        let ending = 'serving: loop {
            let failure = match self.connect(backoff.give_up_at()).await {
                Ok(mut link) => {
                    backoff.reset();
                    if reconnecting {
                        self.settings.stats.reconnected();
                    }
                    info!(
                        open = self.registration.open_connections(),
                        resubscribed = self.operations.len(),
                        "upstream connection {}",
                        if reconnecting {
                            "re-established"
                        } else {
                            "established"
                        }
                    );
                    let ending = self.serve(&mut link).await;
                    self.close_link(&mut link, &ending).await;
                    match ending {
                        Ending::Failed(error) => error,
                        other => break other,
                    }
                }
                Err(Ending::Failed(error)) => error,
                Err(other) => break other,
            };
            if !failure.is_retryable() {
                break Ending::Failed(failure);
            }
            reconnecting = true;
            // One warning per outage; each further attempt is a debug line.
            let outage_begins = backoff.give_up_at().is_none();
            let mut retry = backoff.after_failure(Instant::now());
            // After a wait that reached the give-up instant, give up with the failure that
            // caused the wait rather than dial once more for nothing.
            let gave_up = loop {
                match retry {
                    Retry::GiveUp { waited } => break Some(waited),
                    Retry::At(when) => {
                        self.take_pending();
                        if self.operations.is_empty() {
                            // Nobody is waiting for the upstream to come back.
                            break 'serving Ending::Idle;
                        }
                        let retry_in_ms = (when - Instant::now()).as_millis() as u64;
                        let operations = self.operations.len();
                        if outage_begins {
                            warn!(error = %failure, operations, retry_in_ms, "upstream connection failed; reconnecting");
                        } else {
                            debug!(error = %failure, operations, retry_in_ms, "reconnect attempt failed");
                        }
                        if let Err(ending) = self.wait_until(when).await {
                            break 'serving ending;
                        }
                        if backoff.give_up_at().is_some_and(|at| Instant::now() < at) {
                            break None;
                        }
                        retry = backoff.after_failure(Instant::now());
                    }
                }
            };
            if let Some(waited) = gave_up {
                break Ending::Failed(UpstreamError::GaveUp {
                    upstream: self.settings.name.clone(),
                    waited_ms: waited.as_millis() as u64,
                    last: Box::new(failure),
                });
            }
        };
        self.finish(ending);
    }

    /// Dials and completes the handshake, racing shutdown and, during an outage, the
    /// give-up instant: a slow dial must not delay the verdict past `give_up_after_ms`.
    async fn connect(&mut self, give_up_at: Option<Instant>) -> Result<WsLink, Ending> {
        let protocol = self.settings.protocol;
        let connect = WsLink::connect(&self.settings, protocol, &self.dial);
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Err(Ending::Shutdown),
            _ = time::sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {
                Err(Ending::Failed(UpstreamError::Connect {
                    upstream: self.settings.name.clone(),
                    reason: "still connecting when give_up_after_ms ran out".into(),
                    cause: ConnectCause::Timeout,
                }))
            }
            result = connect => result.map_err(Ending::Failed),
        }
    }

    /// Ends the task: leave the pool, then settle everyone still waiting.
    fn finish(mut self, ending: Ending) {
        self.registration.leave();
        self.commands.close();
        let error = match ending {
            Ending::Idle => {
                debug!("idle upstream connection closed");
                None
            }
            Ending::Shutdown => Some(UpstreamError::ShuttingDown),
            Ending::Failed(error) => {
                if error.is_protocol_mismatch() {
                    self.registration.report_protocol_mismatch();
                }
                warn!(error = %error, subscribers = self.operations.len(), "upstream connection failed");
                Some(error)
            }
        };
        // Queued subscribes: a failed connection fails them (the same cause would fail a
        // retry at once); an idle close sends them to a fresh connection.
        while let Ok(Command::Subscribe { reply, .. }) = self.commands.try_recv() {
            let refusal = match &error {
                Some(error) => SubscribeRefused::Failed(error.clone()),
                None => SubscribeRefused::Closing,
            };
            let _ = reply.send(Err(refusal));
        }
        let error = error.unwrap_or(UpstreamError::ShuttingDown);
        for (_, operation) in std::mem::take(&mut self.operations) {
            for (_, subscriber) in &operation.subscribers {
                subscriber.fail(error.clone());
            }
        }
    }

    /// Sleeps until `when` while the upstream is down. New subscribes are taken (they start
    /// with the next socket) and stops are applied. Ends the task if every operation left:
    /// nobody is waiting for the upstream to come back.
    async fn wait_until(&mut self, when: Instant) -> Result<(), Ending> {
        loop {
            self.take_pending();
            if self.operations.is_empty() {
                return Err(Ending::Idle);
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(Ending::Shutdown),
                _ = time::sleep_until(when) => return Ok(()),
                Some(leave) = self.unsubscribes.recv() => {
                    self.leave(leave);
                }
                command = self.commands.recv() => match command {
                    Some(Command::Subscribe { request, dedup_key, reply }) => {
                        self.add_subscriber(request, dedup_key, reply);
                    }
                    None => return Err(Ending::Shutdown),
                },
            }
        }
    }

    /// Takes the subscribes queued while no socket was up, and applies the stops.
    fn take_pending(&mut self) {
        self.apply_unsubscribes();
        while let Ok(Command::Subscribe {
            request,
            dedup_key,
            reply,
        }) = self.commands.try_recv()
        {
            self.add_subscriber(request, dedup_key, reply);
        }
    }

    /// Applies the leaves that arrived while no socket could be told.
    fn apply_unsubscribes(&mut self) {
        if let Ok(first) = self.unsubscribes.try_recv() {
            self.leave(first);
        }
    }

    /// Takes `first` and every leave queued behind it off their operations. Returns the
    /// operations whose last subscriber left: they are gone and must be stopped upstream.
    ///
    /// Batched because clients leave in crowds (a deploy, a network blip, the end of a
    /// load test): one leave at a time, n clients of one shared operation leaving cost n
    /// scans of its n subscribers.
    fn leave(&mut self, first: Leave) -> Vec<u64> {
        let queued = std::iter::from_fn(|| self.unsubscribes.try_recv().ok());
        let leaves: Vec<Leave> = std::iter::once(first).chain(queued).collect();
        let emptied = remove_subscribers(&mut self.operations, leaves);
        for &id in &emptied {
            self.remove_operation(id);
        }
        emptied
    }

    /// Forgets operation `id`, and its deduplication entry, so a later identical request
    /// starts a new upstream operation.
    fn remove_operation(&mut self, id: u64) -> Option<Operation> {
        let operation = self.operations.remove(&id)?;
        if let Some(key) = operation.dedup_key {
            self.shared.remove(&key);
        }
        Some(operation)
    }

    /// Adds a subscriber for `request`: to the running operation with the same
    /// `dedup_key` if there is one, else to a new operation. Hands the subscription to the
    /// caller. Returns the id of a new operation, which the caller must start upstream;
    /// `None` if it joined a running one, or if the caller already gave up (client left).
    fn add_subscriber(
        &mut self,
        request: GraphqlRequest,
        dedup_key: Option<RequestKey>,
        reply: oneshot::Sender<Result<Subscription, SubscribeRefused>>,
    ) -> Option<u64> {
        let running = dedup_key.and_then(|key| self.shared.get(&key).copied());
        // A new id even if the caller turns out to be gone: its dropped subscription's
        // leave then names an id no other operation will have.
        let operation_id = running.unwrap_or_else(|| {
            self.next_operation += 1;
            self.next_operation - 1
        });
        let subscriber_id = self.next_subscriber;
        self.next_subscriber += 1;
        let (subscriber, subscription) = subscription::channel(
            self.settings.subscriber_queue,
            self.settings.subscriber_queue_bytes,
            self.unsubscribe_tx.clone(),
            Leave {
                operation: operation_id,
                subscriber: subscriber_id,
            },
        );
        if reply.send(Ok(subscription)).is_err() {
            return None;
        }
        if let Some(operation) = running.and_then(|id| self.operations.get_mut(&id)) {
            operation.subscribers.push((subscriber_id, subscriber));
            debug!(
                op = operation_id,
                subscribers = operation.subscribers.len(),
                "operation joined"
            );
            return None;
        }
        debug!(op = operation_id, "operation started");
        if let Some(key) = dedup_key {
            self.shared.insert(key, operation_id);
        }
        self.operations.insert(
            operation_id,
            Operation {
                request,
                dedup_key,
                subscribers: vec![(subscriber_id, subscriber)],
            },
        );
        Some(operation_id)
    }

    async fn serve(&mut self, link: &mut WsLink) -> Ending {
        let settings = self.settings.clone();
        // Operations that lived through an outage start again, with their original
        // requests; stops that arrived meanwhile are applied first so none is replayed.
        self.apply_unsubscribes();
        let mut resubscribe: Vec<u64> = self.operations.keys().copied().collect();
        for id in resubscribe.drain(..) {
            if let Err(error) = link.subscribe(id, &self.operations[&id].request).await {
                return Ending::Failed(error);
            }
        }

        let mut last_heard = Instant::now();
        let mut keepalive = time::interval_at(
            Instant::now() + settings.keepalive_interval,
            settings.keepalive_interval,
        );
        keepalive.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        // Armed while there are no operations.
        let idle = time::sleep(settings.idle_timeout);
        tokio::pin!(idle);
        let mut idle_armed = self.operations.is_empty();

        // Built once: a fresh `cancelled()` per iteration would re-register with the token
        // on every frame.
        let shutdown_token = self.shutdown.clone();
        let shutdown = shutdown_token.cancelled();
        tokio::pin!(shutdown);
        loop {
            // Biased: shutdown first so a draining gateway stops promptly; then socket reads
            // before new commands, so events already received are delivered before new work.
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ending::Shutdown,
                step = link.next_step() => {
                    last_heard = Instant::now();
                    let result = match step {
                        Err(error) => Err(error),
                        Ok(None) => Ok(()),
                        Ok(Some(step)) => self.on_step(link, step, None).await,
                    };
                    if let Err(error) = result {
                        return Ending::Failed(error);
                    }
                    // The frames already here are a burst (the upstream sent faster than
                    // the last fan-out took): their events are held and each client's go
                    // out in one write at the end. A lone frame, above, was written at
                    // once: holding costs a copy, and there was nothing to batch it with.
                    if let Err(error) = self.on_burst(link).await {
                        return Ending::Failed(error);
                    }
                }
                Some(leave) = self.unsubscribes.recv() => {
                    // Stopped at once, not at the operation's next event: a stream that
                    // sends nothing more must not stay open upstream.
                    for id in self.leave(leave) {
                        debug!(op = id, "operation stopped: its last subscriber left");
                        if let Err(error) = link.unsubscribe(id).await {
                            return Ending::Failed(error);
                        }
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::Subscribe { request, dedup_key, reply }) => {
                        if let Some(id) = self.add_subscriber(request, dedup_key, reply) {
                            if let Err(error) = link.subscribe(id, &self.operations[&id].request).await {
                                return Ending::Failed(error);
                            }
                        }
                    }
                    // Every handle is gone: the pool itself was dropped.
                    None => return Ending::Shutdown,
                },
                _ = keepalive.tick() => {
                    let silent = last_heard.elapsed();
                    if silent > settings.keepalive_interval + settings.keepalive_timeout {
                        return Ending::Failed(UpstreamError::Unresponsive {
                            upstream: settings.name.clone(),
                            silent_ms: silent.as_millis() as u64,
                        });
                    }
                    if let Err(error) = link.ping().await {
                        return Ending::Failed(error);
                    }
                }
                _ = &mut idle, if idle_armed => {
                    // Leave the pool first: a subscriber that finds no entry opens a new
                    // connection instead of queueing on this closing one.
                    self.registration.leave();
                    return Ending::Idle;
                }
            }

            let now_idle = self.operations.is_empty();
            if now_idle && !idle_armed {
                idle.as_mut().reset(Instant::now() + settings.idle_timeout);
            }
            idle_armed = now_idle;
        }
    }

    /// Handles the upstream frames that are ready now, at most [`MAX_BURST_FRAMES`], with
    /// their write-through frames held, then writes them.
    async fn on_burst(&mut self, link: &mut WsLink) -> Result<(), UpstreamError> {
        let mut held = HeldWrites::default();
        for _ in 0..MAX_BURST_FRAMES {
            let Some(step) = futures_util::future::poll_immediate(link.next_step()).await else {
                break;
            };
            if let Some(step) = step? {
                self.on_step(link, step, Some(&mut held)).await?;
            }
        }
        held.flush();
        Ok(())
    }

    /// Acts on one upstream frame; with `held`, its event's write-through frames are
    /// held for the end of the burst.
    async fn on_step(
        &mut self,
        link: &mut WsLink,
        step: ClientStep,
        held: Option<&mut HeldWrites>,
    ) -> Result<(), UpstreamError> {
        match step {
            ClientStep::Deliver { id, event } => {
                let Some(id) = id.parse::<u64>().ok() else {
                    return Ok(()); // Not an id we issued: ignore, as the spec says.
                };
                self.deliver(link, id, event, held).await
            }
            ClientStep::Pong => link.send_pong().await,
            ClientStep::ServerError { message } => {
                warn!(reason = %message, "upstream reported an error for no operation");
                Ok(())
            }
            // The link turns failures into errors; nothing else needs an answer.
            ClientStep::Ready | ClientStep::Nothing | ClientStep::Fail(_) => Ok(()),
        }
    }

    async fn deliver(
        &mut self,
        link: &mut WsLink,
        id: u64,
        event: Event,
        held: Option<&mut HeldWrites>,
    ) -> Result<(), UpstreamError> {
        let terminal = event.is_terminal();
        let Some(operation) = self.operations.get_mut(&id) else {
            return Ok(()); // Already stopped on our side; the upstream's late events race it.
        };
        let settings = &self.settings;
        // Once per upstream event, however many clients share the operation.
        settings.stats.event_in();
        let error = settings.slow_consumer();
        let cut = operation.fan_out(&event, &error, held).await;
        if cut > 0 {
            // Counted by the gateway once it ends each cut client's connection.
            let left = operation.subscribers.len();
            warn!(op = id, cut, left, %error, "subscriber too slow; cutting it off");
        }
        if terminal {
            self.remove_operation(id);
            return Ok(());
        }
        if operation.subscribers.is_empty() {
            // Everyone was cut or had left: stop it now rather than wait for the leaves.
            self.remove_operation(id);
            return link.unsubscribe(id).await;
        }
        Ok(())
    }

    async fn close_link(&mut self, link: &mut WsLink, ending: &Ending) {
        let (code, reason) = match ending {
            Ending::Failed(_) => return,
            Ending::Idle => (CloseCode::Normal, "idle"),
            Ending::Shutdown => (CloseCode::Away, "gateway shutting down"),
        };
        link.close(self.operations.keys().copied(), code, reason)
            .await;
    }
}

/// Takes each leaving subscriber off its operation, in one pass over each operation's
/// subscribers however many of them leave; the others keep their order. Returns the
/// operations left without subscribers, in id order.
fn remove_subscribers(operations: &mut BTreeMap<u64, Operation>, leaves: Vec<Leave>) -> Vec<u64> {
    let mut leaving: BTreeMap<u64, HashSet<u64>> = BTreeMap::new();
    for leave in leaves {
        leaving
            .entry(leave.operation)
            .or_default()
            .insert(leave.subscriber);
    }
    let mut emptied = Vec::new();
    for (id, subscribers) in leaving {
        let Some(operation) = operations.get_mut(&id) else {
            continue;
        };
        operation
            .subscribers
            .retain(|(subscriber, _)| !subscribers.contains(subscriber));
        if operation.subscribers.is_empty() {
            emptied.push(id);
        }
    }
    emptied
}

#[cfg(test)]
mod tests {
    use subplex_protocol::RawJson;

    use super::*;
    use crate::subscription::{self, Leave};

    fn next(n: usize) -> Event {
        Event::Next(RawJson::parse(&format!(r#"{{"data":{{"n":{n}}}}}"#)).unwrap())
    }

    /// A crowd leaving at once is taken off in one pass per operation: the leavers go,
    /// the others keep their order, and only an operation left empty is reported (leaves
    /// for unknown operations or subscribers change nothing).
    #[test]
    fn queued_leaves_are_taken_off_together() {
        let (unsubscribe, _leaves) = mpsc::unbounded_channel();
        let mut operations = BTreeMap::new();
        let mut subscriptions = Vec::new();
        for (id, members) in [(1u64, &[0u64, 1, 2, 3, 4][..]), (2, &[10, 11]), (3, &[20])] {
            let mut operation = Operation {
                request: GraphqlRequest::new("subscription { n }"),
                dedup_key: None,
                subscribers: Vec::new(),
            };
            for &member in members {
                let leave = Leave {
                    operation: id,
                    subscriber: member,
                };
                let (subscriber, subscription) =
                    subscription::channel(8, 1 << 20, unsubscribe.clone(), leave);
                operation.subscribers.push((member, subscriber));
                subscriptions.push(subscription);
            }
            operations.insert(id, operation);
        }
        let leave = |operation, subscriber| Leave {
            operation,
            subscriber,
        };
        let emptied = remove_subscribers(
            &mut operations,
            vec![
                leave(1, 1),
                leave(2, 10),
                leave(4, 7),
                leave(1, 3),
                leave(1, 99),
                leave(2, 11),
            ],
        );
        assert_eq!(emptied, [2]);
        let members = |id: u64| -> Vec<u64> {
            operations[&id]
                .subscribers
                .iter()
                .map(|(m, _)| *m)
                .collect()
        };
        assert_eq!(members(1), [0, 2, 4]);
        assert!(members(2).is_empty());
        assert_eq!(members(3), [20]);
    }

    /// More subscribers than one fan-out task takes: the event goes out from several tasks
    /// at once, yet every client gets every event in order, the subscribers stay in the
    /// order they joined, and only the one whose queue is full is cut.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_fan_out_reaches_everyone_in_order_and_cuts_only_the_full() {
        let (unsubscribe, _leaves) = mpsc::unbounded_channel();
        let clients = 3 * FAN_OUT_CHUNK + 7;
        let slow_client = FAN_OUT_CHUNK + 3;
        let mut operation = Operation {
            request: GraphqlRequest::new("subscription { n }"),
            dedup_key: None,
            subscribers: Vec::new(),
        };
        let mut subscriptions = Vec::new();
        for k in 0..clients {
            let capacity = if k == slow_client { 1 } else { 8 };
            let leave = Leave {
                operation: 1,
                subscriber: k as u64,
            };
            let (subscriber, subscription) =
                subscription::channel(capacity, 1 << 20, unsubscribe.clone(), leave);
            operation.subscribers.push((k as u64, subscriber));
            subscriptions.push(subscription);
        }
        let slow = UpstreamError::SlowConsumer {
            queued_events: 8,
            queued_bytes: 1 << 20,
        };
        let mut cuts = Vec::new();
        for n in 0..3 {
            cuts.push(operation.fan_out(&next(n), &slow, None).await);
        }
        assert_eq!(cuts, [0, 1, 0]);
        let ids: Vec<u64> = operation.subscribers.iter().map(|(id, _)| *id).collect();
        let expected: Vec<u64> = (0..clients as u64)
            .filter(|k| *k != slow_client as u64)
            .collect();
        assert_eq!(ids, expected);
        for (k, subscription) in subscriptions.iter_mut().enumerate() {
            if k == slow_client {
                assert_eq!(subscription.recv().await, Some(Err(slow.clone())));
                continue;
            }
            for n in 0..3 {
                assert_eq!(subscription.recv().await, Some(Ok(next(n))), "client {k}");
            }
        }
    }
}
