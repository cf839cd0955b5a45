//! Intake: putting an accepted request on `normalise`, exactly once per
//! outside id.
//!
//! GitHub redelivers with the same `X-GitHub-Delivery`, and clients retry.
//! Each accepted request leaves a *mark* (its outside id -> the id of the
//! message it became) written in the same step as the enqueue, so a crash can
//! never leave one without the other. Two implementations:
//!
//! - [`RedisIntake`]: one transaction (LPUSH, then the Lua script
//!   `lua/intake.lua` that marks or takes back) over its own multiplexed
//!   connection; marks expire after the configured retention. Concurrent
//!   requests are group-committed: a writer task puts every request that
//!   arrived while the previous transaction was on its way into the next
//!   one, and answers each request with its own result once Redis replied.
//! - [`LocalIntake`]: marks in process memory, messages through any
//!   [`Backend`] (`hookbus dev` over the in-memory bus).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hookbus_bus::redis::{QueueKeys, RedisConnection, RedisTarget};
use hookbus_bus::{Backend, BusError, Envelope};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::wire::{self, Endpoint, Reply, Wire};

/// The queue the gateway feeds.
pub const QUEUE: &str = "normalise";

/// What a request is remembered by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mark {
    /// A webhook's `X-GitHub-Delivery`.
    Delivery(String),
    /// A client change's operation id.
    Change(String),
}

/// What [`Intake::admit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Stored on `normalise`; the mark now names this message.
    Queued,
    /// Already accepted as message `message_id`; nothing was written.
    Seen { message_id: String },
}

/// Why the store could not be reached or answered oddly. Always answered 503.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Bus(#[from] BusError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from the intake transaction: {0}")]
    Protocol(String),
    #[error("redis connection: {0}")]
    Connection(String),
    #[error("redis refused the intake transaction: {0}")]
    Refused(String),
}

/// Enqueues on `normalise` once per [`Mark`].
#[async_trait]
pub trait Intake: Send + Sync + 'static {
    /// Pushes `envelope` and sets `mark` to its id, unless `mark` already
    /// names a message other than `replacing`. Returns only after the store
    /// acknowledged the write, or with an error within the intake's bound
    /// (the timeout it was built with): callers need no timer of their own.
    async fn admit(&self, mark: &Mark, envelope: &Envelope, replacing: Option<&str>) -> Result<Admission, IntakeError>;

    /// The message id `mark` names, if it is still remembered.
    async fn lookup(&self, mark: &Mark) -> Result<Option<String>, IntakeError>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), IntakeError>;
}

/// The dedupe-and-mark script, sent with EVAL inside the batch's transaction.
const INTAKE_SCRIPT: &str = include_str!("lua/intake.lua");

/// [`INTAKE_SCRIPT`] without its whole-line comments: Redis takes the SHA1
/// of the text on every EVAL, and the header is two thirds of it.
fn intake_script() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| hookbus_bus::redis::lua_text(INTAKE_SCRIPT))
}

/// Requests in one transaction at most. Redis runs a transaction to the end
/// before serving anyone else, so a batch must stay short.
const BATCH_REQUESTS: usize = 128;
/// Envelope bytes in one transaction at most (a single larger request still
/// goes, alone).
const BATCH_BYTES: usize = 1024 * 1024;
/// Transactions on their way at once. More than one, so that a batch is
/// being cut while the previous one is in Redis; few, so that batches grow
/// under load instead of every request going alone. In alternating runs of
/// the ingest benchmark 4 took 4-7 % more webhooks/s than 2; 8 no more than
/// 4, with Redis spending more per webhook on smaller batches.
const CALLS_IN_FLIGHT: usize = 4;
/// Bytes of transaction buffer the wire writer keeps between batches, at most.
const KEPT_BUFFER: usize = 2 * BATCH_BYTES;
/// Requests waiting for the writer at most; past it, `admit` waits (within
/// the gateway's bound).
const WAITING: usize = 4096;

/// Marks and messages in Redis, written by one transaction per batch.
pub struct RedisIntake {
    conn: RedisConnection,
    /// One server: the transactions go over a connection of the writer's
    /// own ([`crate::wire`]); a cluster: through `conn`.
    endpoint: Option<Endpoint>,
    timeout: Duration,
    keys: QueueKeys,
    prefix: String,
    retention_ms: u64,
    /// The writer task's queue; the task is started by the first `admit`
    /// (so that it runs on the runtime serving requests).
    writer: OnceLock<mpsc::Sender<Request>>,
}

/// One `admit` waiting for its transaction.
struct Request {
    mark_key: String,
    /// Encoded by the writer straight into the transaction's LPUSH (its
    /// payload is shared, not copied, until then).
    envelope: Envelope,
    /// An upper bound of the envelope's wire form, for cutting batches.
    size: usize,
    /// `''` or the message id the mark must still name.
    replacing: String,
    /// When its caller is answered 503 if Redis has not answered yet: the
    /// writer keeps the bound, so no request holds a timer of its own (a
    /// timer per webhook was 2-3 % of a serving thread's time, and woke
    /// its runtime through an eventfd write for about one webhook in four).
    deadline: tokio::time::Instant,
    answer: oneshot::Sender<Result<Admission, IntakeError>>,
}

impl RedisIntake {
    /// Connects lazily to the server at `url` (a server that is down now is
    /// retried on use, with every call bounded by `timeout`).
    pub fn connect(
        url: &str,
        tls_insecure: bool,
        prefix: &str,
        retention: Duration,
        timeout: Duration,
    ) -> Result<Self, IntakeError> {
        Self::open(&RedisTarget::single(url, tls_insecure), prefix, retention, timeout)
    }

    /// Connects lazily to `target`, one server or a Redis Cluster: the
    /// transaction touches only `{normalise}` keys, so on a cluster it runs
    /// on the one master that owns that slot.
    pub fn open(
        target: &RedisTarget,
        prefix: &str,
        retention: Duration,
        timeout: Duration,
    ) -> Result<Self, IntakeError> {
        let conn = RedisConnection::open(target, timeout)?;
        let endpoint = match target.single_url() {
            Some(url) => Some(Endpoint::parse(url).map_err(IntakeError::Connection)?),
            None => None,
        };
        Ok(RedisIntake {
            conn,
            endpoint,
            timeout,
            keys: QueueKeys::new(prefix, QUEUE),
            prefix: prefix.to_string(),
            retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
            writer: OnceLock::new(),
        })
    }

    /// The Redis key of a mark; in the `{normalise}` slot, next to `pending`.
    pub fn mark_key(&self, mark: &Mark) -> String {
        mark_key(&self.prefix, mark)
    }

    fn writer(&self) -> &mpsc::Sender<Request> {
        self.writer.get_or_init(|| {
            let (sender, queue) = mpsc::channel(WAITING);
            let (pending, retention_ms) = (self.keys.pending(), self.retention_ms);
            match &self.endpoint {
                Some(endpoint) => {
                    let writer =
                        WireWriter { endpoint: endpoint.clone(), pending, retention_ms, timeout: self.timeout };
                    tokio::spawn(writer.run(queue));
                }
                None => {
                    let writer = Writer { conn: self.conn.clone(), pending, retention_ms, timeout: self.timeout };
                    tokio::spawn(writer.run(queue));
                }
            }
            sender
        })
    }
}

/// Group commit: cuts the waiting requests into batches, one transaction
/// each, and answers every request from its own entry of the reply. Ends
/// when the [`RedisIntake`] is dropped.
struct Writer {
    conn: RedisConnection,
    pending: String,
    retention_ms: u64,
    timeout: Duration,
}

impl Writer {
    async fn run(self, mut queue: mpsc::Receiver<Request>) {
        let this = Arc::new(self);
        let calls = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
        let mut carried: Option<Request> = None;
        loop {
            // Waiting for a free call first lets the batch grow meanwhile.
            let Ok(permit) = calls.clone().acquire_owned().await else { return };
            let first = match carried.take() {
                Some(request) => request,
                None => match queue.recv().await {
                    Some(request) => request,
                    None => return,
                },
            };
            let batch = cut(first, &mut carried, &mut queue, this.timeout);
            if batch.is_empty() {
                continue;
            }
            let this = this.clone();
            tokio::spawn(async move {
                this.commit(batch).await;
                drop(permit);
            });
        }
    }

    /// One transaction: LPUSH of every envelope (and the batch token), then
    /// the script that marks the new ones and takes duplicates back off
    /// (`lua/intake.lua` says why the envelopes stay out of Lua).
    async fn commit(&self, batch: Vec<Request>) {
        let token = format!("hookbus-intake-batch:{}", hookbus_bus::envelope::new_id());
        let bytes: usize = batch.iter().map(|request| request.size + 16).sum();
        let mut push = redis::Cmd::with_capacity(batch.len() + 3, bytes + self.pending.len() + token.len() + 64);
        push.arg("LPUSH").arg(&self.pending);
        // Each envelope is encoded into the command itself, sized up front:
        // no buffer of its own to copy from.
        for request in &batch {
            request.envelope.encode_to(&mut redis::RedisWrite::writer_for_next_arg(&mut push));
        }
        push.arg(&token);
        let mut decide = redis::cmd("EVAL");
        decide.arg(intake_script()).arg(1 + batch.len()).arg(&self.pending);
        for request in &batch {
            decide.arg(&request.mark_key);
        }
        decide.arg(self.retention_ms).arg(&token);
        for request in &batch {
            decide.arg(&request.envelope.id).arg(&request.replacing);
        }
        let mut transaction = redis::pipe();
        transaction.atomic().add_command(push).ignore().add_command(decide);
        let mut conn = self.conn.clone();
        let reply: Result<(Vec<(usize, String)>,), redis::RedisError> = transaction.query_async(&mut conn).await;
        match reply {
            Ok((duplicates,)) => answer_batch(batch, duplicates),
            Err(err) => answer_all(batch, || Err(IntakeError::Redis(err.clone()))),
        }
    }
}

/// The batch that starts with `first`: every request already waiting, up to
/// [`BATCH_REQUESTS`] and [`BATCH_BYTES`] (the one past the bytes is
/// `carried` to the next batch). A request whose caller gave up, or whose
/// deadline passed while it waited, is left out (the latter answered 503):
/// nothing stored for what was refused.
fn cut(
    first: Request,
    carried: &mut Option<Request>,
    queue: &mut mpsc::Receiver<Request>,
    timeout: Duration,
) -> Vec<Request> {
    let mut bytes = first.size;
    let mut batch = vec![first];
    while batch.len() < BATCH_REQUESTS {
        let Ok(request) = queue.try_recv() else { break };
        if bytes + request.size > BATCH_BYTES {
            *carried = Some(request);
            break;
        }
        bytes += request.size;
        batch.push(request);
    }
    let now = tokio::time::Instant::now();
    batch
        .into_iter()
        .filter_map(|request| match request.deadline <= now {
            true => {
                let _ = request.answer.send(Err(IntakeError::Timeout(timeout)));
                None
            }
            false => (!request.answer.is_closed()).then_some(request),
        })
        .collect()
}

/// The earliest deadline of a batch's requests: when the batch's
/// transaction is given up on.
fn batch_deadline(batch: &[Request], timeout: Duration) -> tokio::time::Instant {
    batch.iter().map(|request| request.deadline).min().unwrap_or_else(|| tokio::time::Instant::now() + timeout)
}

/// Answers every request of `batch` with `result`.
fn answer_all(batch: Vec<Request>, result: impl Fn() -> Result<Admission, IntakeError>) {
    for request in batch {
        let _ = request.answer.send(result());
    }
}

/// Answers each request of `batch` from the script's list of duplicates.
fn answer_batch(batch: Vec<Request>, duplicates: Vec<(usize, String)>) {
    match seen_by_position(duplicates, batch.len()) {
        Ok(seen) => {
            for (request, holder) in batch.into_iter().zip(seen) {
                let admission = match holder {
                    None => Admission::Queued,
                    Some(message_id) => Admission::Seen { message_id },
                };
                let _ = request.answer.send(Ok(admission));
            }
        }
        Err(reason) => answer_all(batch, || Err(IntakeError::Protocol(reason.clone()))),
    }
}

/// Group commit over a connection of its own ([`crate::wire`]): the same
/// batches and the same transaction as [`Writer`], but this one task writes
/// each transaction straight from the envelopes and reads the replies, with
/// up to [`CALLS_IN_FLIGHT`] transactions on the wire. A connection that
/// fails or stalls past the timeout fails every transaction on it (their
/// requests are answered 503; whatever Redis did run of them, ran whole) and
/// the next batch dials again.
struct WireWriter {
    endpoint: Endpoint,
    pending: String,
    retention_ms: u64,
    timeout: Duration,
}

/// Replies to one transaction: `MULTI`, `LPUSH`, `EVAL` (queued), `EXEC`.
const TRANSACTION_REPLIES: usize = 4;

/// A transaction written, waiting for its replies.
struct Sent {
    batch: Vec<Request>,
    /// The first error among the replies to `MULTI`, `LPUSH` and `EVAL`.
    refused: Option<String>,
    /// Replies still to come, of [`TRANSACTION_REPLIES`].
    awaited: usize,
    /// Its requests' earliest deadline: past it, the connection is given up
    /// (Redis may be stalled) and every transaction on it fails.
    deadline: tokio::time::Instant,
}

impl WireWriter {
    async fn run(self, mut queue: mpsc::Receiver<Request>) {
        let mut wire: Option<Wire> = None;
        let mut sent: VecDeque<Sent> = VecDeque::new();
        let mut carried: Option<Request> = None;
        let mut out = Vec::new();
        let mut open = true;
        // One timer for the oldest transaction, moved only when that changes
        // (a timer made afresh each turn registers afresh each turn).
        let timer = tokio::time::sleep(self.timeout);
        tokio::pin!(timer);
        while open || !sent.is_empty() {
            let deadline = sent.front().map(|call| call.deadline);
            if let Some(deadline) = deadline {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
            }
            tokio::select! {
                biased;
                // Read while idle too: a connection Redis closed (a restart)
                // is noticed now, not by failing the next batch on it.
                read = fill(&mut wire), if wire.is_some() => {
                    let taken = match (read, wire.as_mut()) {
                        (Ok(()), Some(conn)) => settle(conn, &mut sent),
                        (Err(reason), _) => Err(reason),
                        (Ok(()), None) => Err("the connection is gone".to_string()),
                    };
                    if let Err(reason) = taken {
                        fail(&mut sent, || IntakeError::Connection(reason.clone()));
                        wire = None;
                    }
                }
                () = &mut timer, if deadline.is_some() => {
                    let timeout = self.timeout;
                    fail(&mut sent, || IntakeError::Timeout(timeout));
                    wire = None;
                }
                first = next(&mut carried, &mut queue), if open && sent.len() < CALLS_IN_FLIGHT => {
                    let Some(first) = first else {
                        open = false;
                        continue;
                    };
                    let batch = cut(first, &mut carried, &mut queue, self.timeout);
                    if batch.is_empty() {
                        continue;
                    }
                    // Nothing on the wire outlives its requests' bound; a
                    // batch's own bound is its oldest request's.
                    let own = batch_deadline(&batch, self.timeout);
                    let limit = deadline.map_or(own, |oldest| oldest.min(own));
                    let conn = match wire.as_mut() {
                        Some(conn) => conn,
                        None => {
                            let left = limit.saturating_duration_since(tokio::time::Instant::now());
                            match Wire::connect(&self.endpoint, left.min(self.timeout)).await {
                                Ok(conn) => wire.insert(conn),
                                Err(reason) => {
                                    answer_all(batch, || Err(IntakeError::Connection(reason.clone())));
                                    continue;
                                }
                            }
                        }
                    };
                    out.clear();
                    self.encode(&batch, &mut out);
                    // Usually done at once: the timer is then never registered.
                    let written = match tokio::time::timeout_at(limit, conn.write(&out)).await {
                        Ok(written) => written,
                        Err(_) => Err(format!(
                            "redis did not take the write before its oldest request's deadline ({:?} after it came)",
                            self.timeout
                        )),
                    };
                    // Queued even when the write failed: part of it may have
                    // reached Redis, so it fails with the others on the wire.
                    sent.push_back(Sent { batch, refused: None, awaited: TRANSACTION_REPLIES, deadline: own });
                    if let Err(reason) = written {
                        fail(&mut sent, || IntakeError::Connection(reason.clone()));
                        wire = None;
                    }
                    // A 25 MiB webhook's buffer is not kept for the small ones.
                    if out.capacity() > KEPT_BUFFER {
                        out = Vec::new();
                    }
                }
            }
        }
    }

    /// `MULTI`, `LPUSH` of every envelope and the batch token, `EVAL` of the
    /// intake script, `EXEC`: the transaction of [`Writer::commit`], as RESP.
    fn encode(&self, batch: &[Request], out: &mut Vec<u8>) {
        let token = format!("hookbus-intake-batch:{}", hookbus_bus::envelope::new_id());
        let bytes: usize = batch.iter().map(|request| request.size + 16).sum();
        out.reserve(bytes + 512 + 128 * batch.len());
        wire::put_command(out, &[b"MULTI"]);
        wire::put_array(out, batch.len() + 3);
        wire::put_bulk(out, b"LPUSH");
        wire::put_bulk(out, self.pending.as_bytes());
        for request in batch {
            wire::put_bulk_with(out, |out| request.envelope.encode_to(out));
        }
        wire::put_bulk(out, token.as_bytes());
        wire::put_array(out, 3 + (1 + batch.len()) + 2 + 2 * batch.len());
        wire::put_bulk(out, b"EVAL");
        wire::put_bulk(out, intake_script().as_bytes());
        wire::put_bulk(out, itoa::Buffer::new().format(1 + batch.len()).as_bytes());
        wire::put_bulk(out, self.pending.as_bytes());
        for request in batch {
            wire::put_bulk(out, request.mark_key.as_bytes());
        }
        wire::put_bulk(out, itoa::Buffer::new().format(self.retention_ms).as_bytes());
        wire::put_bulk(out, token.as_bytes());
        for request in batch {
            wire::put_bulk(out, request.envelope.id.as_bytes());
            wire::put_bulk(out, request.replacing.as_bytes());
        }
        wire::put_command(out, &[b"EXEC"]);
    }
}

/// Reads more replies; never ends while there is no connection.
async fn fill(wire: &mut Option<Wire>) -> Result<(), String> {
    match wire {
        Some(conn) => conn.fill().await,
        None => std::future::pending().await,
    }
}

/// The next request: the one carried over from the last batch, or the
/// queue's next (`None` once every sender is gone).
async fn next(carried: &mut Option<Request>, queue: &mut mpsc::Receiver<Request>) -> Option<Request> {
    match carried.take() {
        Some(request) => Some(request),
        None => queue.recv().await,
    }
}

/// Hands every complete reply read so far to the transactions waiting, in
/// order, and answers those that are complete. An error means the
/// connection can no longer be trusted to line replies up with requests.
fn settle(conn: &mut Wire, sent: &mut VecDeque<Sent>) -> Result<(), String> {
    while let Some(reply) = conn.take()? {
        let Some(call) = sent.front_mut() else {
            return Err("redis answered more than was asked".to_string());
        };
        call.awaited -= 1;
        if call.awaited > 0 {
            match reply {
                Reply::Error(err) => {
                    call.refused.get_or_insert(err);
                }
                Reply::Status(_) => {}
                other => return Err(format!("{other:?} where a transaction's step is acknowledged")),
            }
            continue;
        }
        let Some(call) = sent.pop_front() else { continue };
        match (call.refused, exec_duplicates(reply)) {
            (Some(err), _) | (None, Err(IntakeError::Refused(err))) => {
                answer_all(call.batch, || Err(IntakeError::Refused(err.clone())));
            }
            (None, Err(err)) => {
                let reason = err.to_string();
                answer_all(call.batch, || Err(IntakeError::Protocol(reason.clone())));
            }
            (None, Ok(duplicates)) => answer_batch(call.batch, duplicates),
        }
    }
    Ok(())
}

/// Fails every transaction on the wire.
fn fail(sent: &mut VecDeque<Sent>, err: impl Fn() -> IntakeError) {
    for call in sent.drain(..) {
        answer_all(call.batch, || Err(err()));
    }
}

/// The duplicates the script listed, from `EXEC`'s reply: the `LPUSH`'s
/// length, then the script's array of positions and holders.
fn exec_duplicates(reply: Reply) -> Result<Vec<(usize, String)>, IntakeError> {
    let steps = match reply {
        Reply::Array(Some(steps)) => steps,
        Reply::Error(err) => return Err(IntakeError::Refused(err)),
        other => return Err(IntakeError::Protocol(format!("EXEC answered {other:?}"))),
    };
    let mut steps = steps.into_iter();
    match (steps.next(), steps.next(), steps.next()) {
        (Some(Reply::Error(err)), _, None) | (_, Some(Reply::Error(err)), None) => Err(IntakeError::Refused(err)),
        (Some(Reply::Integer(_)), Some(Reply::Array(Some(listed))), None) => {
            let mut duplicates = Vec::with_capacity(listed.len() / 2);
            let mut listed = listed.into_iter();
            while let Some(position) = listed.next() {
                match (position, listed.next()) {
                    (Reply::Integer(position), Some(Reply::Bulk(Some(holder)))) => {
                        let position = usize::try_from(position)
                            .map_err(|_| IntakeError::Protocol(format!("position {position}")))?;
                        let holder = String::from_utf8(holder)
                            .map_err(|_| IntakeError::Protocol("a holder that is not UTF-8".to_string()))?;
                        duplicates.push((position, holder));
                    }
                    (position, holder) => {
                        return Err(IntakeError::Protocol(format!("duplicate {position:?}, {holder:?}")));
                    }
                }
            }
            Ok(duplicates)
        }
        other => Err(IntakeError::Protocol(format!("EXEC answered {other:?}"))),
    }
}

/// The script's reply (the duplicates, as 1-based position and holder) as
/// one entry per request of a batch of `n`: the holder for a duplicate,
/// `None` for a request that was queued.
fn seen_by_position(duplicates: Vec<(usize, String)>, n: usize) -> Result<Vec<Option<String>>, String> {
    let mut seen = vec![None; n];
    for (position, holder) in duplicates {
        match position.checked_sub(1).and_then(|index| seen.get_mut(index)) {
            Some(slot @ None) => *slot = Some(holder),
            Some(Some(_)) => return Err(format!("request {position} answered twice")),
            None => return Err(format!("request {position} of a batch of {n}")),
        }
    }
    Ok(seen)
}

/// `<prefix>:{normalise}:delivery:<id>` or `<prefix>:{normalise}:change:<id>`.
/// Pieced together, not `format!`ed: made for every webhook, and the
/// formatting machinery was a third of a microsecond of it.
pub fn mark_key(prefix: &str, mark: &Mark) -> String {
    let (kind, id) = match mark {
        Mark::Delivery(id) => (":delivery:", id),
        Mark::Change(id) => (":change:", id),
    };
    let mut key = String::with_capacity(prefix.len() + QUEUE.len() + 3 + kind.len() + id.len());
    for part in [prefix, ":{", QUEUE, "}", kind, id] {
        key.push_str(part);
    }
    key
}

#[async_trait]
impl Intake for RedisIntake {
    async fn admit(&self, mark: &Mark, envelope: &Envelope, replacing: Option<&str>) -> Result<Admission, IntakeError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (answer, admission) = oneshot::channel();
        let request = Request {
            mark_key: self.mark_key(mark),
            envelope: envelope.clone(),
            size: envelope.encoded_len(),
            replacing: replacing.unwrap_or("").to_string(),
            deadline,
            answer,
        };
        let stopped = || IntakeError::Protocol("the intake writer task stopped".to_string());
        // A timer only while the writer's queue is full (a registered timer
        // is what costs; one never polled costs nothing).
        match tokio::time::timeout_at(deadline, self.writer().send(request)).await {
            Ok(sent) => sent.map_err(|_| stopped())?,
            Err(_) => return Err(IntakeError::Timeout(self.timeout)),
        }
        match &self.endpoint {
            // The wire writer answers every request by its deadline.
            Some(_) => admission.await.map_err(|_| stopped())?,
            // Through redis-rs (a cluster): bounded here.
            None => match tokio::time::timeout_at(deadline, admission).await {
                Ok(answered) => answered.map_err(|_| stopped())?,
                Err(_) => Err(IntakeError::Timeout(self.timeout)),
            },
        }
    }

    async fn lookup(&self, mark: &Mark) -> Result<Option<String>, IntakeError> {
        let mut conn = self.conn.clone();
        let holder: Option<String> = redis::cmd("GET").arg(self.mark_key(mark)).query_async(&mut conn).await?;
        Ok(holder)
    }

    async fn ping(&self) -> Result<(), IntakeError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

/// Marks in this process, messages through a [`Backend`]. Atomic within the
/// process (one lock around check, push and mark); for one-process dev mode.
pub struct LocalIntake {
    backend: Arc<dyn Backend>,
    retention: Duration,
    /// The bound on one `admit`.
    timeout: Duration,
    marks: tokio::sync::Mutex<HashMap<Mark, (String, Instant)>>,
    /// Pruning expired marks walks the map; done at most once a minute.
    last_prune: Mutex<Instant>,
}

impl LocalIntake {
    pub fn new(backend: Arc<dyn Backend>, retention: Duration, timeout: Duration) -> Self {
        LocalIntake {
            backend,
            retention,
            timeout,
            marks: tokio::sync::Mutex::new(HashMap::new()),
            last_prune: Mutex::new(Instant::now()),
        }
    }
}

#[async_trait]
impl Intake for LocalIntake {
    async fn admit(&self, mark: &Mark, envelope: &Envelope, replacing: Option<&str>) -> Result<Admission, IntakeError> {
        match tokio::time::timeout(self.timeout, self.admit_now(mark, envelope, replacing)).await {
            Ok(admitted) => admitted,
            Err(_) => Err(IntakeError::Timeout(self.timeout)),
        }
    }

    async fn lookup(&self, mark: &Mark) -> Result<Option<String>, IntakeError> {
        let marks = self.marks.lock().await;
        Ok(marks.get(mark).filter(|(_, expires)| *expires > Instant::now()).map(|(holder, _)| holder.clone()))
    }

    async fn ping(&self) -> Result<(), IntakeError> {
        Ok(self.backend.ping().await?)
    }
}

impl LocalIntake {
    async fn admit_now(
        &self,
        mark: &Mark,
        envelope: &Envelope,
        replacing: Option<&str>,
    ) -> Result<Admission, IntakeError> {
        let mut marks = self.marks.lock().await;
        let now = Instant::now();
        if let Ok(mut last) = self.last_prune.lock() {
            if now.duration_since(*last) > Duration::from_secs(60) {
                marks.retain(|_, (_, expires)| *expires > now);
                *last = now;
            }
        }
        if let Some((holder, expires)) = marks.get(mark) {
            if *expires > now && Some(holder.as_str()) != replacing {
                return Ok(Admission::Seen { message_id: holder.clone() });
            }
        }
        self.backend.push(QUEUE, std::slice::from_ref(envelope)).await?;
        marks.insert(mark.clone(), (envelope.id.clone(), now + self.retention));
        Ok(Admission::Queued)
    }
}

#[cfg(test)]
mod tests {
    use super::seen_by_position;

    #[test]
    fn mark_keys_name_the_delivery_or_the_change_in_the_normalise_slot() {
        use super::{mark_key, Mark};
        assert_eq!(mark_key("hookbus", &Mark::Delivery("d-1".into())), "hookbus:{normalise}:delivery:d-1");
        assert_eq!(mark_key("p", &Mark::Change("op".into())), "p:{normalise}:change:op");
    }

    #[test]
    fn duplicates_land_on_their_requests() {
        let seen = seen_by_position(vec![(2, "m-1".into()), (4, "m-2".into())], 4);
        assert_eq!(seen, Ok(vec![None, Some("m-1".to_string()), None, Some("m-2".to_string())]));
        assert_eq!(seen_by_position(Vec::new(), 3), Ok(vec![None, None, None]));
    }

    #[test]
    fn a_reply_that_does_not_fit_the_batch_is_refused() {
        assert!(seen_by_position(vec![(0, "m".into())], 2).is_err());
        assert!(seen_by_position(vec![(3, "m".into())], 2).is_err());
        assert!(seen_by_position(vec![(1, "m".into()), (1, "n".into())], 2).is_err());
    }
}
