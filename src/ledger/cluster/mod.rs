//! Beyond one machine: nodes that share one registry through a NATS JetStream stream.
//!
//! A node publishes each accepted event to the stream, with its `report_id` as the message id so
//! that JetStream's de-duplication window drops a retry before it is stored. Every node, the
//! publisher included, follows the stream in order and applies each message through its own
//! writer with the stream sequence as the registry sequence, writing how far it has applied in the
//! same batch; so a restarted node resumes exactly where it stopped, and every node folds the same
//! events in the same order into the same registry. Publishing answers once JetStream has stored
//! the event and this node has applied it (read-your-writes here; `min_sequence` elsewhere).
//!
//! A message that registers nothing (a duplicate `report_id` beyond the window, which the stored
//! report turns into a duplicate, or a refused event) leaves a hole in the registry's sequences,
//! the same hole on every node.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use prost::Message;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

mod seal;

pub use seal::{StreamKeys, StreamKeysError};

use crate::event::{ValidEvent, validate_event};
use crate::ledger::RecordError;
use crate::proto::{self, v1 as pb};
use crate::registry::{Grant, Recorder};
use crate::store::{Applied, ApplyError, PendingApply, Store, StoreError};

/// Outcomes of recent stream messages kept for the publishers waiting on them.
const REMEMBERED_OUTCOMES: usize = 1 << 16;
/// The longest a publisher waits for its own node to apply what the stream stored.
const APPLY_WAIT: Duration = Duration::from_secs(30);
/// The pause before a node that lost the stream follows it again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long a consumer may deliver nothing before the node asks whether the stream has moved on.
const STALL_CHECK: Duration = Duration::from_secs(2);
/// Stream messages read ahead of the writer.
const FOLLOW_AHEAD: usize = 4096;

/// Where the stream is and how it is made.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs.
    pub servers: Vec<String>,
    /// The stream's name; its subject is `<name>.events`.
    pub stream: String,
    /// Replicas, and the de-duplication window, used when this node creates the stream.
    pub replicas: usize,
    pub duplicate_window: Duration,
    /// The stream keys file (see [`seal`]).
    pub keys: Option<std::path::PathBuf>,
}

impl ClusterConfig {
    fn subject(&self) -> String {
        format!("{}.events", self.stream)
    }

    /// The stream as this node would create it: kept forever (the registry's history), never
    /// edited (no deletes, purges or roll-ups), on disk.
    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            description: Some("idguard registry events".into()),
            subjects: vec![self.subject()],
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        }
    }
}

/// Why a node could not join or follow its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--cluster: no NATS server URL given")]
    NoServers,
    #[error("--cluster: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cluster stream {stream}: {why}")]
    Stream { stream: String, why: String },
    #[error(
        "cluster stream {stream}: the NATS servers refuse it: {why} (a stream of \
         --cluster-replicas N needs a JetStream cluster of at least N servers)"
    )]
    Refused { stream: String, why: String },
    #[error(
        "--cluster-keys FILE is required with --cluster: every event on the stream is signed by \
         its node, and a node applies only what its trusted keys signed (see \
         docs/cluster.md)"
    )]
    NoKeys,
    #[error(transparent)]
    Keys(#[from] seal::StreamKeysError),
}

/// This node's membership of a cluster: publishes events, and follows the stream into the store.
pub struct Cluster {
    jetstream: jetstream::Context,
    subject: String,
    stream: String,
    keys: Arc<StreamKeys>,
    store: Arc<Store>,
    outcomes: Arc<Outcomes>,
    follower: Mutex<Option<JoinHandle<()>>>,
}

impl Cluster {
    /// Binds `store` to the stream for good (see [`Store::bind_stream`]), connects to NATS and
    /// starts following the stream. NATS need not be up yet: the node serves checks from its own
    /// copy meanwhile, and connects, creates the stream if needed and catches up once it can.
    pub async fn join(config: &ClusterConfig, store: Arc<Store>) -> Result<Self, ClusterError> {
        if config.servers.is_empty() {
            return Err(ClusterError::NoServers);
        }
        let keys = Arc::new(StreamKeys::read(
            config.keys.as_deref().ok_or(ClusterError::NoKeys)?,
        )?);
        metrics::gauge!("idguard_cluster_connected").set(0.0);
        let client = async_nats::ConnectOptions::new()
            .name("idguard")
            .retry_on_initial_connect()
            .event_callback(|event| async move { observe_connection(&event) })
            .connect(config.servers.as_slice())
            .await?;
        // The follower's requests (stream and consumer info, creating the consumer) give up
        // sooner than a publish's ack: after a NATS server is lost it retries until the new
        // leaders answer, and each try should not outlast their election by long.
        let following = jetstream::ContextBuilder::new()
            .timeout(STALL_CHECK)
            .build(client.clone());
        refuse_a_refused_stream(&following, config).await?;
        let name = config.stream.clone();
        store.read(move |store| store.bind_stream(&name)).await?;
        let jetstream = jetstream::new(client);
        let outcomes = Arc::new(Outcomes::new(store.log().sequence()));
        let follower = tokio::spawn(follow(
            following,
            config.clone(),
            Arc::clone(&keys),
            Arc::clone(&store),
            Arc::clone(&outcomes),
        ));
        Ok(Self {
            jetstream,
            subject: config.subject(),
            stream: config.stream.clone(),
            keys,
            store,
            outcomes,
            follower: Mutex::new(Some(follower)),
        })
    }

    /// The registry this node applies the stream to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Publishes `event` to the stream, waiting only until it is sent; the outcome resolves once
    /// JetStream has stored it and this node has applied it. Events published one after the other
    /// are stored in that order.
    pub async fn enqueue(
        &self,
        event: ValidEvent,
        recorder: &Recorder,
    ) -> Result<PendingApply<RecordError>, RecordError> {
        let message = pb::RegistryChange {
            sequence: 0,
            event: Some(event.canonical().clone()),
            recorded_at: Some(proto::timestamp(OffsetDateTime::now_utc())),
            recorded_by: recorder.principal.clone(),
            grant: Some(recorder.grant.to_wire()),
        };
        let key = event.report_key();
        let payload = message.encode_to_vec();
        // JetStream deduplicates by message id: the id in its province, as the registry keys it,
        // so that one province's ids never drop another's messages.
        let publish = jetstream::message::PublishMessage::build()
            .headers(self.keys.seal(&self.stream, &payload))
            .message_id(String::from_utf8_lossy(key.as_bytes()).as_ref())
            .payload(payload.into());
        let stored = self
            .jetstream
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(unavailable)?;
        let outcomes = Arc::clone(&self.outcomes);
        let store = Arc::clone(&self.store);
        let recorder = recorder.clone();
        Ok(PendingApply::new(async move {
            let stored = stored.await.map_err(unavailable)?;
            if stored.duplicate {
                // JetStream kept the first message with this report_id, not this one.
                as_duplicate(&store, &outcomes, event, recorder, stored.sequence).await
            } else {
                outcomes.wait(stored.sequence).await?
            }
        }))
    }

    /// Stops following the stream, so that the store can close.
    pub async fn leave(&self) {
        let follower = self
            .follower
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(follower) = follower {
            follower.abort();
            let _ = follower.await;
        }
    }
}

/// Finds or creates the stream once before serving, so that a stream the NATS servers refuse
/// (3 replicas asked of a single server, a name or subject taken) stops the node with their
/// reason, instead of a node that serves on while every write fails. Only the servers' answers in
/// [`PERMANENT_REFUSALS`] count: servers that do not answer yet, or answer that JetStream is not
/// ready (a cluster still electing its leader), are the follower's to wait for.
async fn refuse_a_refused_stream(
    jetstream: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<(), ClusterError> {
    let found = tokio::time::timeout(
        STALL_CHECK,
        jetstream.get_or_create_stream(config.stream_config()),
    )
    .await;
    match found {
        Ok(Err(error)) if is_permanent_refusal(error.kind()) => Err(ClusterError::Refused {
            stream: config.stream.clone(),
            why: error.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The JetStream answers to creating the stream that no wait will change.
const PERMANENT_REFUSALS: [jetstream::ErrorCode; 6] = [
    jetstream::ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
    jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP,
    jetstream::ErrorCode::STREAM_NAME_EXIST,
    jetstream::ErrorCode::STREAM_INVALID_CONFIG,
    jetstream::ErrorCode::JETSTREAM_NOT_ENABLED,
    jetstream::ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
];

fn is_permanent_refusal(kind: jetstream::context::CreateStreamErrorKind) -> bool {
    match kind {
        jetstream::context::CreateStreamErrorKind::JetStream(error) => {
            PERMANENT_REFUSALS.contains(&error.error_code())
        }
        _ => false,
    }
}

fn unavailable(error: impl std::fmt::Display) -> RecordError {
    RecordError::Unavailable(format!(
        "the cluster stream did not store the event ({error}); retrying is safe"
    ))
}

/// What publishing `event` amounted to when the stream already held a message with its
/// `report_id`, at `first`: a duplicate if the registry holds the same event, a conflict if it
/// holds another, else the first message's refusal. The first message may predate this process,
/// so the registry decides rather than the outcomes remembered here.
async fn as_duplicate(
    store: &Arc<Store>,
    outcomes: &Outcomes,
    event: ValidEvent,
    recorder: Recorder,
    first: u64,
) -> Result<Applied, RecordError> {
    outcomes.reached(first).await?;
    match store
        .read(move |store| Ok(store.log().judge_retry(&event, &recorder)))
        .await??
    {
        Some(retry) => Ok(retry),
        None => outcomes.wait(first).await?,
    }
}

/// The outcomes of the stream messages this node applied lately, for the publishers among them.
struct Outcomes {
    recent: Mutex<BTreeMap<u64, Result<Applied, RecordError>>>,
    /// The last stream sequence whose outcome is known.
    recorded: watch::Sender<u64>,
}

impl Outcomes {
    fn new(applied: u64) -> Self {
        Self {
            recent: Mutex::new(BTreeMap::new()),
            recorded: watch::Sender::new(applied),
        }
    }

    fn record(&self, sequence: u64, outcome: Result<Applied, RecordError>) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.insert(sequence, outcome);
            while recent.len() > REMEMBERED_OUTCOMES {
                recent.pop_first();
            }
        }
        self.recorded.send_replace(sequence);
    }

    /// Resolves once this node has applied stream message `sequence`.
    async fn reached(&self, sequence: u64) -> Result<(), RecordError> {
        let mut recorded = self.recorded.subscribe();
        let reached = tokio::time::timeout(
            APPLY_WAIT,
            recorded.wait_for(|&recorded| recorded >= sequence),
        )
        .await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(RecordError::Unavailable(format!(
                "the cluster stream stored the event at sequence {sequence}, but this node did \
                 not apply it within {APPLY_WAIT:?}; retrying is safe"
            ))),
        }
    }

    /// The outcome of stream message `sequence`, once this node has applied it.
    async fn wait(&self, sequence: u64) -> Result<Result<Applied, RecordError>, RecordError> {
        self.reached(sequence).await?;
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.get(&sequence).cloned().ok_or_else(|| {
            RecordError::Unavailable(format!(
                "the outcome of stream sequence {sequence} is no longer known here; retrying is safe"
            ))
        })
    }
}

/// Makes the node's connection to NATS visible to operators: while it is down the node answers
/// from its own copy and takes no writes, which they should hear of even when it comes back by
/// itself (the ordered consumer then resumes without a follow restart).
fn observe_connection(event: &async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            metrics::gauge!("idguard_cluster_connected").set(1.0);
            tracing::info!("connected to NATS");
        }
        async_nats::Event::Disconnected => {
            metrics::gauge!("idguard_cluster_connected").set(0.0);
            metrics::counter!("idguard_cluster_disconnects_total").increment(1);
            tracing::warn!("disconnected from NATS; checks answer from this node's copy");
        }
        other => tracing::info!(event = %other, "NATS connection"),
    }
}

/// Follows the stream into the store until the store closes, starting again after the last
/// applied message whenever the stream is lost.
async fn follow(
    jetstream: jetstream::Context,
    config: ClusterConfig,
    keys: Arc<StreamKeys>,
    store: Arc<Store>,
    outcomes: Arc<Outcomes>,
) {
    loop {
        match follow_once(&jetstream, &config, &keys, &store, &outcomes).await {
            Ok(()) => return,
            Err(error) => {
                metrics::counter!("idguard_cluster_follow_restarts_total").increment(1);
                tracing::warn!(%error, applied = store.log().sequence(), "following the cluster stream");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Follows the stream from the message after the last applied one, until the stream fails
/// (`Err`) or the store closes (`Ok`).
async fn follow_once(
    jetstream: &jetstream::Context,
    config: &ClusterConfig,
    keys: &StreamKeys,
    store: &Arc<Store>,
    outcomes: &Arc<Outcomes>,
) -> Result<(), ClusterError> {
    let failed = |why: String| ClusterError::Stream {
        stream: config.stream.clone(),
        why,
    };
    let stream = jetstream
        .get_or_create_stream(config.stream_config())
        .await
        .map_err(|error| failed(error.to_string()))?;
    let from = store.log().sequence() + 1;
    let state = stream
        .get_info()
        .await
        .map_err(|error| failed(error.to_string()))?
        .state;
    if state.messages > 0 && from < state.first_sequence {
        return Err(failed(format!(
            "it now starts at sequence {}, and this node has applied up to {} only: restore a \
             backup taken at sequence {} or later",
            state.first_sequence,
            from - 1,
            state.first_sequence - 1
        )));
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|error| failed(error.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| failed(error.to_string()))?;
    tracing::info!(stream = %config.stream, from, "following the cluster stream");
    let (queued, applying) = mpsc::channel(FOLLOW_AHEAD);
    let recorder = tokio::spawn(record_outcomes(applying, Arc::clone(outcomes)));
    let read = async {
        let mut last_read = from - 1;
        let mut progressed = false;
        let mut watchdog = tokio::time::interval(STALL_CHECK);
        watchdog.reset();
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = watchdog.tick() => {
                    let stored = stream_last_sequence(&stream).await;
                    let behind = stored.is_some_and(|stored| stored > last_read);
                    if !std::mem::take(&mut progressed) && behind {
                        return Err(failed(format!(
                            "no message for {STALL_CHECK:?} after sequence {last_read} while the \
                             stream holds later ones"
                        )));
                    }
                    continue;
                }
                // The recorder stopped: a message was not applied, so reading on would skip it.
                () = queued.closed() => return Ok(()),
            };
            let Some(message) = message else {
                return Err(failed("the stream ended".into()));
            };
            let message = message.map_err(|error| failed(error.to_string()))?;
            let info = message.info().map_err(|error| failed(error.to_string()))?;
            let sequence = info.stream_sequence;
            let sealed = keys.open(&config.stream, &message.payload, message.headers.as_ref());
            let (event, recorder, recorded_at) = match sealed {
                Ok(()) => read_event(&message.payload, info.published),
                Err(why) => refused_message(sequence, why, info.published),
            };
            let (event, refusal) = match event {
                Ok(event) => (Some(event), None),
                Err(refusal) => (None, Some(refusal)),
            };
            let passing = match store
                .enqueue_from_stream(event, &recorder, sequence, recorded_at)
                .await
            {
                Ok(pending) => pending,
                Err(ApplyError::Closed) => return Ok(()),
                Err(error) => return Err(failed(error.to_string())),
            };
            // A message that is no event is passed like any other; its outcome is its refusal.
            let pending = PendingApply::new(async move {
                let passed = passing.outcome().await?;
                refusal.map_or(Ok(passed), Err)
            });
            if queued.send((sequence, pending)).await.is_err() {
                return Ok(());
            }
            last_read = sequence;
            progressed = true;
        }
    };
    let read: Result<(), ClusterError> = read.await;
    drop(queued);
    // Every message read is applied or known not to be before following starts again, from the
    // store's sequence.
    let recorded = recorder
        .await
        .map_err(|error| failed(format!("applying stream messages: {error}")))?;
    read?;
    match recorded {
        Ok(()) | Err(RecordError::Apply(ApplyError::Closed)) => Ok(()),
        Err(error) => Err(failed(format!("applying a stream message: {error}"))),
    }
}

/// The stream's last sequence, also exported as `idguard_cluster_stream_sequence` so that a
/// node's lag (it minus `idguard_registry_sequence`) can be alerted on; `None` when NATS does not
/// answer. A consumer that delivered nothing for a while although the stream has moved on is
/// stuck (its server died, say, and the client keeps asking that server) and is replaced.
async fn stream_last_sequence(stream: &stream::Stream) -> Option<u64> {
    let info = tokio::time::timeout(STALL_CHECK, stream.get_info()).await;
    let last = info.ok()?.ok()?.state.last_sequence;
    metrics::gauge!("idguard_cluster_stream_sequence").set(last as f64);
    Some(last)
}

/// Waits for each queued message's outcome in order and records it for its publisher. Stops at a
/// message that was not applied (a failed write, the store closing), which must be read again.
async fn record_outcomes(
    mut applying: mpsc::Receiver<(u64, PendingApply<RecordError>)>,
    outcomes: Arc<Outcomes>,
) -> Result<(), RecordError> {
    while let Some((sequence, pending)) = applying.recv().await {
        let outcome = pending.outcome().await;
        if let Err(
            error @ RecordError::Apply(
                ApplyError::Store(_) | ApplyError::Closed | ApplyError::OutOfTurn { .. },
            ),
        ) = &outcome
        {
            return Err(error.clone());
        }
        outcomes.record(sequence, outcome);
    }
    Ok(())
}

/// A stream message that fails verification, refused loudly: it registers nothing, but the node
/// moves past it as every other node does.
fn refused_message(
    sequence: u64,
    why: String,
    published: OffsetDateTime,
) -> (Result<ValidEvent, RecordError>, Recorder, OffsetDateTime) {
    tracing::error!(
        sequence,
        %why,
        "refused a cluster stream message that fails verification: check who may publish on the \
         stream's subject"
    );
    metrics::counter!("idguard_cluster_messages_refused_total").increment(1);
    let refusal = RecordError::Unreadable(format!("stream message {sequence} refused: {why}"));
    (Err(refusal), nobody(), published)
}

/// The recorder of a message that is no idguard event: allowed nothing.
fn nobody() -> Recorder {
    Recorder {
        principal: String::new(),
        grant: Grant::nothing(),
    }
}

/// The event a stream message carries, who recorded it (with what grant) and when; a message
/// that is not a valid event (published by something other than idguard) becomes its refusal.
/// Events are validated as of their recording time, so that every node reaches the same verdict
/// whenever it reads them.
fn read_event(
    payload: &[u8],
    published: OffsetDateTime,
) -> (Result<ValidEvent, RecordError>, Recorder, OffsetDateTime) {
    let message = match pb::RegistryChange::decode(payload) {
        Ok(message) => message,
        Err(error) => {
            let refusal = RecordError::Unreadable(format!("not a registry event: {error}"));
            return (Err(refusal), nobody(), published);
        }
    };
    let recorded_at = message
        .recorded_at
        .as_ref()
        .and_then(proto::instant)
        .unwrap_or(published);
    let event = match message.event {
        Some(event) => {
            validate_event(event, recorded_at).map_err(|error| RecordError::Apply(error.into()))
        }
        None => Err(RecordError::Unreadable(
            "a registry change without its event".into(),
        )),
    };
    let recorder = Recorder {
        principal: message.recorded_by,
        grant: Grant::from_wire(message.grant.as_ref()),
    };
    (event, recorder, recorded_at)
}
