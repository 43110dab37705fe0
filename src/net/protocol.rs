//! Wire messages, their postcard codec, size limits and protocol names.
//!
//! Every message is serde + postcard. postcard has a stable, documented wire
//! format; the protocol version lives in the protocol name. Every read is
//! bounded: a frame larger than its limit is refused before it is decoded,
//! and a frame with trailing bytes is refused too, so one message has
//! exactly one encoding. See `docs/protocol.md` for every field.

use std::io;

use futures::prelude::*;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::{PeerId, StreamProtocol};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::core::calendar::{Condition, Reservation};
use crate::core::constraints::Constraints;
use crate::core::groups::{GroupEvent, GroupId};
use crate::core::pools::PoolEvent;
use crate::model::{
    Announcement, Capacity, Denial, Lease, LeaseId, NodeId, Priority, ResourceRequirements,
    TaskResult, TaskSpec,
};

/// Allocation protocol: allocate, renew, release.
pub const ALLOC_PROTOCOL: StreamProtocol = StreamProtocol::new("/lanswarm/alloc/2");
/// Sync-on-connect protocol: two peers swap every announcement they hold.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/lanswarm/sync/2");
/// Task protocol: run work under a lease, cancel it, ask after it; the
/// owner pushes streamed pieces and the result back the same way.
pub const TASK_PROTOCOL: StreamProtocol = StreamProtocol::new("/lanswarm/task/2");
/// Health-check protocol: "how are you?", answered with the node's own
/// state (seed 004's `HealthCheck`).
pub const HEALTH_PROTOCOL: StreamProtocol = StreamProtocol::new("/lanswarm/health/1");
/// Largest health-check message, bytes.
pub const MAX_HEALTH_MESSAGE: usize = 64 * 1024;
/// Gossipsub topic for signed capacity announcements.
pub const CAPACITY_TOPIC: &str = "lanswarm/capacity/2";
/// Gossipsub topic for signed swarm-state events (groups and pools).
pub const STATE_TOPIC: &str = "lanswarm/state/1";

/// Largest allocation request or response, bytes.
pub const MAX_ALLOC_MESSAGE: usize = 16 * 1024;
/// Largest task message, bytes: a result carries at most two outputs of
/// [`crate::core::tasks::MAX_OUTPUT_LIMIT`] each, plus its fields.
pub const MAX_TASK_MESSAGE: usize = 9 * 1024 * 1024;
/// Largest single streamed piece of an answer, bytes.
pub const MAX_TASK_CHUNK: usize = 64 * 1024;
/// Largest signed announcement (payload + key + signature), bytes.
pub const MAX_ANNOUNCEMENT: usize = 32 * 1024;
/// Largest sync message, bytes (a full view of a large LAN).
pub const MAX_SYNC_MESSAGE: usize = 4 * 1024 * 1024;
/// Most announcements accepted in one sync message.
pub const MAX_SYNC_ANNOUNCEMENTS: usize = 1024;
/// Largest signed state event (payload + key + signature), bytes.
pub const MAX_STATE_EVENT: usize = 64 * 1024;
/// Most state events sent or accepted in one sync message.
pub const MAX_SYNC_EVENTS: usize = 8192;

/// Domain separation for announcement signatures, so a signature made for
/// anything else can never pass as an announcement.
const ANNOUNCE_SIGNING_DOMAIN: &[u8] = b"lanswarm/announcement/1:";
/// Domain separation for state-event signatures.
const EVENT_SIGNING_DOMAIN: &[u8] = b"lanswarm/state-event/1:";

/// A request on `/lanswarm/alloc/2`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocRequest {
    /// Ask for a new lease. The owner chooses the lease id.
    Allocate {
        request_id: String,
        req: ResourceRequirements,
        task_type: String,
        priority: Priority,
        lease_ms: u64,
        /// How long the requester will wait in the owner's queue, ms (0:
        /// not at all).
        wait_ms: u64,
        /// A hard end, ms after the grant: the lease ends then, renewed
        /// or not.
        duration_ms: Option<u64>,
        /// The requester lets the owner preempt lower-priority leases for
        /// this request (its last resort, after owners with room).
        preempt: bool,
        /// What the request needs of the node; the owner checks them
        /// against itself and uses only the GPUs they allow.
        constraints: Constraints,
    },
    /// Extend a lease this peer holds.
    Renew { lease_id: LeaseId, lease_ms: u64 },
    /// Give a lease back, stop waiting for one (a queue ticket), or cancel
    /// a reservation. Idempotent.
    Release { lease_id: LeaseId },
    /// Book resources for a future window `[start_ms, end_ms)` (the
    /// owner's clock, ms since the epoch).
    Reserve {
        request_id: String,
        req: ResourceRequirements,
        task_type: String,
        priority: Priority,
        start_ms: u64,
        end_ms: u64,
        /// Become active only once this holds (within the window).
        condition: Option<Condition>,
        /// Pooled: the members of this group draw leases from it.
        shared_with: Option<GroupId>,
    },
    /// Draw a lease from an active pooled reservation on the owner. The
    /// owner chooses the lease id; the lease ends with the reservation.
    Draw {
        reservation: LeaseId,
        request_id: String,
        req: ResourceRequirements,
        task_type: String,
        lease_ms: u64,
        /// A hard end, ms after the grant (capped at the reservation's end).
        duration_ms: Option<u64>,
    },
    /// Holder → owner: post a named event for the asker's reservations
    /// waiting on it. Answered `EventPosted`.
    PostEvent { name: String },
    /// Owner → holder: something happened to one of its leases or
    /// tickets. Answered with `Ack`.
    Notice(Notice),
}

/// What an owner tells a holder without being asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// A queued request (its ticket is the lease id) was granted.
    Granted(Lease),
    /// A reservation's window began: this is its lease.
    ReservationStarted(Lease),
    /// A lease or ticket ended early: preempted, or the wait ran out.
    Ended { lease_id: LeaseId, denial: Denial },
    /// A reservation changed without a lease of the holder's starting: a
    /// pooled one opened for draws, or one ended (expired, unmet,
    /// cancelled). This is its new state.
    Reservation(Reservation),
}

/// A request on `/lanswarm/task/2`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskRequest {
    /// Requester → owner: run `spec` under `allocation_id`, a lease the
    /// requester holds on the owner. The requester chooses `task_id` (a
    /// UUID). Answered `Accepted` or `Refused` at once; the result follows
    /// as a `Finished` request the other way.
    Run {
        task_id: String,
        allocation_id: LeaseId,
        spec: TaskSpec,
    },
    /// Requester → owner: stop a task. Idempotent.
    Cancel { task_id: String },
    /// Requester → owner: how is this task? Answered `Status`.
    Poll { task_id: String },
    /// Owner → requester: the next piece of a streamed answer (`seq`
    /// counts from 0).
    Chunk {
        task_id: String,
        seq: u64,
        text: String,
    },
    /// Owner → requester: the task ended.
    Finished(Box<TaskResult>),
}

/// Why an owner would not run a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskRefuseReason {
    /// No active lease with that id held by the asking peer.
    NoLease,
    /// The owner declares no template of that name.
    UnknownTemplate,
    /// A parameter is undeclared, missing, or of the wrong type.
    BadParams,
    /// The owner serves no such model.
    UnknownModel,
    /// The owner has no model server, or it is down.
    NoModelServer,
    /// A task already runs on that lease, or the owner runs its most tasks.
    Busy,
    /// Anything else malformed (ids, sizes).
    BadRequest,
    /// The requester's role lacks the permission (`run_task` or `infer`).
    Forbidden,
}

impl TaskRefuseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskRefuseReason::NoLease => "no_lease",
            TaskRefuseReason::UnknownTemplate => "unknown_template",
            TaskRefuseReason::BadParams => "bad_params",
            TaskRefuseReason::UnknownModel => "unknown_model",
            TaskRefuseReason::NoModelServer => "no_model_server",
            TaskRefuseReason::Busy => "busy",
            TaskRefuseReason::BadRequest => "bad_request",
            TaskRefuseReason::Forbidden => "forbidden",
        }
    }
}

/// How a task stands on its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Running {
        started_at_ms: u64,
    },
    Finished(Box<TaskResult>),
    /// The owner does not know the task (never ran here, forgotten, or the
    /// owner restarted).
    Unknown,
}

/// The answer on `/lanswarm/task/2`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskResponse {
    Accepted,
    Refused {
        reason: TaskRefuseReason,
        message: String,
    },
    Status(TaskState),
    Ack,
}

/// A request on `/lanswarm/health/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRequest {
    /// The asker's clock when it asked, ms (echoed back).
    pub sent_at_ms: u64,
}

/// The answer on `/lanswarm/health/1`: the node's own view of itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReply {
    /// Echo of the request's `sent_at_ms`.
    pub sent_at_ms: u64,
    /// The node's clock when it answered, ms.
    pub now_ms: u64,
    pub name: String,
    pub version: String,
    /// Since when this process runs, ms since the epoch.
    pub started_at_ms: u64,
    pub capacity: Capacity,
    pub free: Capacity,
    pub gpus: Vec<crate::model::GpuInfo>,
    pub machine_cpu_cores: u32,
    pub machine_memory_mb: u64,
    pub cpu_usage_pct: f32,
    pub active_allocations: u32,
    pub queued: u32,
    /// Tasks it runs for peers right now.
    pub running_tasks: u32,
    /// Whether it is shutting down.
    pub leaving: bool,
}

/// The answer on `/lanswarm/alloc/2`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocResponse {
    /// A new lease, already written to the owner's store.
    Granted(Lease),
    /// The renewed lease, with its new `expires_at_ms`.
    Renewed(Lease),
    /// The lease is gone; `existed` says whether this call removed it.
    Released { lease_id: LeaseId, existed: bool },
    /// Refused, with a machine-readable reason.
    Denied(Denial),
    /// Waiting in the owner's queue: `ticket` becomes the lease id when
    /// granted; `position` is 1-based, in grant order.
    Queued { ticket: LeaseId, position: u32 },
    /// A reservation was booked.
    Reserved(Reservation),
    /// An event was posted: the asker's reservations whose condition it
    /// met.
    EventPosted { met: Vec<LeaseId> },
    /// A notice was received.
    Ack,
}

/// What goes back on `/lanswarm/alloc/2`: the answer, and the owner's free
/// capacity right after it, so the requester's view of the owner is fresh
/// without waiting for the next announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocReply {
    pub answer: AllocResponse,
    /// The owner's free capacity after this answer.
    pub free: Capacity,
    /// The owner's number of active leases after this answer.
    pub active_leases: u32,
}

/// An announcement with its signature, as gossiped and synced.
///
/// `payload` is the postcard encoding of an [`Announcement`], `public_key`
/// the protobuf encoding of the announcer's libp2p public key, and
/// `signature` that key's signature over the domain tag followed by the
/// payload. Because each announcement carries its own signature, any peer
/// can relay another peer's announcement (sync on connect) without being
/// able to forge it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAnnouncement {
    pub payload: Vec<u8>,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// A request on `/lanswarm/sync/2`: everything the asker knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub announcements: Vec<SignedAnnouncement>,
    /// Every swarm-state event the asker holds (groups and pools).
    pub events: Vec<SignedEvent>,
}

/// The answer on `/lanswarm/sync/2`: everything the answerer knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    pub announcements: Vec<SignedAnnouncement>,
    /// Every swarm-state event the answerer holds (groups and pools).
    pub events: Vec<SignedEvent>,
}

/// One change to the replicated swarm state. Each is made, and signed, by
/// its actor; nobody can make an event in another node's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateEvent {
    Group(GroupEvent),
    Pool(PoolEvent),
}

impl StateEvent {
    /// The node that made the event, which must be the node that signed it.
    pub fn actor(&self) -> &NodeId {
        match self {
            StateEvent::Group(e) => &e.actor,
            StateEvent::Pool(e) => &e.actor,
        }
    }
}

/// A state event with its signature, as gossiped on [`STATE_TOPIC`],
/// synced and stored. Like [`SignedAnnouncement`], it carries its own
/// signature, so any peer can relay it and none can forge it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEvent {
    /// postcard encoding of a [`StateEvent`].
    pub payload: Vec<u8>,
    /// Protobuf encoding of the actor's libp2p public key.
    pub public_key: Vec<u8>,
    /// Signature over the domain tag followed by the payload.
    pub signature: Vec<u8>,
}

impl SignedEvent {
    /// Encode and sign an event with the node's key.
    pub fn sign(ev: &StateEvent, key: &Keypair) -> Result<Self, AnnounceError> {
        let (payload, public_key, signature) = seal(EVENT_SIGNING_DOMAIN, ev, key)?;
        Ok(SignedEvent {
            payload,
            public_key,
            signature,
        })
    }

    /// Size on the wire, roughly (the three byte strings).
    pub fn len(&self) -> usize {
        self.payload.len() + self.public_key.len() + self.signature.len()
    }

    /// Whether all three parts are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Check the size, the signature and that the signer is the event's
    /// actor, then decode. The event's own rules (names, sizes) are the
    /// core's to check.
    pub fn verify(&self) -> Result<StateEvent, AnnounceError> {
        if self.len() > MAX_STATE_EVENT {
            return Err(AnnounceError::TooLarge(self.len()));
        }
        let (ev, signer): (StateEvent, _) = open(
            EVENT_SIGNING_DOMAIN,
            &self.payload,
            &self.public_key,
            &self.signature,
        )?;
        check_signer(ev.actor(), signer)?;
        Ok(ev)
    }
}

/// A signed message's parts: payload, public key, signature.
type Sealed = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Encode `value` and sign it under `domain`.
fn seal<T: Serialize>(domain: &[u8], value: &T, key: &Keypair) -> Result<Sealed, AnnounceError> {
    let payload =
        postcard::to_stdvec(value).map_err(|e| AnnounceError::BadPayload(e.to_string()))?;
    let mut msg = Vec::with_capacity(domain.len() + payload.len());
    msg.extend_from_slice(domain);
    msg.extend_from_slice(&payload);
    let signature = key
        .sign(&msg)
        .map_err(|e| AnnounceError::BadKey(e.to_string()))?;
    Ok((payload, key.public().encode_protobuf(), signature))
}

/// Check a signature under `domain` and decode the payload exactly. Gives
/// the value and the signer's id.
fn open<T: DeserializeOwned>(
    domain: &[u8],
    payload: &[u8],
    public_key: &[u8],
    signature: &[u8],
) -> Result<(T, String), AnnounceError> {
    let key = PublicKey::try_decode_protobuf(public_key)
        .map_err(|e| AnnounceError::BadKey(e.to_string()))?;
    let mut msg = Vec::with_capacity(domain.len() + payload.len());
    msg.extend_from_slice(domain);
    msg.extend_from_slice(payload);
    if !key.verify(&msg, signature) {
        return Err(AnnounceError::BadSignature);
    }
    let value = decode_exact(payload).map_err(|e| AnnounceError::BadPayload(e.to_string()))?;
    Ok((value, key.to_peer_id().to_base58()))
}

/// The node a message claims to come from must be the one that signed it.
fn check_signer(claimed: &NodeId, signer: String) -> Result<(), AnnounceError> {
    if claimed.0 != signer {
        return Err(AnnounceError::WrongSigner {
            claimed: claimed.0.clone(),
            signer,
        });
    }
    Ok(())
}

/// Why a signed announcement or state event was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnounceError {
    #[error("message is {0} bytes, over its limit")]
    TooLarge(usize),
    #[error("public key does not decode: {0}")]
    BadKey(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("payload does not decode: {0}")]
    BadPayload(String),
    #[error("message claims to be {claimed} but is signed by {signer}")]
    WrongSigner { claimed: String, signer: String },
    #[error("announcement is out of bounds: {0}")]
    OutOfBounds(&'static str),
}

impl SignedAnnouncement {
    /// Encode and sign an announcement with the node's key.
    pub fn sign(ann: &Announcement, key: &Keypair) -> Result<Self, AnnounceError> {
        let (payload, public_key, signature) = seal(ANNOUNCE_SIGNING_DOMAIN, ann, key)?;
        Ok(SignedAnnouncement {
            payload,
            public_key,
            signature,
        })
    }

    /// Size on the wire, roughly (the three byte strings).
    pub fn len(&self) -> usize {
        self.payload.len() + self.public_key.len() + self.signature.len()
    }

    /// Whether all three parts are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Check the signature and the signer, decode, and bound-check.
    ///
    /// On success the announcement's `node_id` is the `PeerId` of the key
    /// that signed it.
    pub fn verify(&self) -> Result<Announcement, AnnounceError> {
        if self.len() > MAX_ANNOUNCEMENT {
            return Err(AnnounceError::TooLarge(self.len()));
        }
        let (ann, signer): (Announcement, _) = open(
            ANNOUNCE_SIGNING_DOMAIN,
            &self.payload,
            &self.public_key,
            &self.signature,
        )?;
        check_signer(&ann.node_id, signer)?;
        check_bounds(&ann)?;
        Ok(ann)
    }
}

/// Sanity limits on an announcement's contents, so one peer cannot make
/// every other node hold megabytes of junk.
fn check_bounds(ann: &Announcement) -> Result<(), AnnounceError> {
    if ann.name.len() > 64 || ann.version.len() > 64 {
        return Err(AnnounceError::OutOfBounds("name or version longer than 64"));
    }
    if ann.addrs.len() > 32 || ann.addrs.iter().any(|a| a.len() > 256) {
        return Err(AnnounceError::OutOfBounds("too many or too long addresses"));
    }
    if ann.models.len() > 256 || ann.models.iter().any(|m| m.is_empty() || m.len() > 128) {
        return Err(AnnounceError::OutOfBounds("too many or bad model names"));
    }
    if ann.loaded_models.len() > 256
        || ann
            .loaded_models
            .iter()
            .any(|m| m.is_empty() || m.len() > 128)
    {
        return Err(AnnounceError::OutOfBounds(
            "too many or bad loaded model names",
        ));
    }
    if ann.templates.len() > 128 || ann.templates.iter().any(|t| t.is_empty() || t.len() > 64) {
        return Err(AnnounceError::OutOfBounds("too many or bad template names"));
    }
    if ann.gpus.len() > 64 || ann.capacity.gpus.len() > 64 || ann.free.gpus.len() > 64 {
        return Err(AnnounceError::OutOfBounds("more than 64 GPUs"));
    }
    if ann.capacity.custom.len() > 64 || ann.free.custom.len() > 64 {
        return Err(AnnounceError::OutOfBounds("more than 64 custom resources"));
    }
    if ann.labels.len() > 32
        || ann
            .labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 128)
    {
        return Err(AnnounceError::OutOfBounds("too many or bad labels"));
    }
    if ann.usage.len() > 256
        || ann
            .usage
            .iter()
            .any(|h| h.holder.0.len() > 128 || h.usage.custom.len() > 64)
    {
        return Err(AnnounceError::OutOfBounds("usage list too long"));
    }
    if ann.refusals.len() > crate::core::bottleneck::MAX_ANNOUNCED
        || ann
            .refusals
            .iter()
            .any(|d| d.dimension.len() > crate::core::bottleneck::MAX_DIM_LEN)
    {
        return Err(AnnounceError::OutOfBounds("refusal counts too long"));
    }
    if ann.access.allow.len() > 256 || ann.access.allow.iter().any(|n| n.0.len() > 128) {
        return Err(AnnounceError::OutOfBounds(
            "access hint allow list too long",
        ));
    }
    if !ann.cpu_usage_pct.is_finite() {
        return Err(AnnounceError::OutOfBounds("cpu usage is not finite"));
    }
    for c in [ann.location.latitude, ann.location.longitude]
        .into_iter()
        .flatten()
    {
        if !c.is_finite() {
            return Err(AnnounceError::OutOfBounds("coordinates are not finite"));
        }
    }
    Ok(())
}

/// The peer id of a node id, if it is one.
pub fn peer_id_of(node: &NodeId) -> Option<PeerId> {
    node.0.parse().ok()
}

/// The node id of a peer.
pub fn node_id_of(peer: &PeerId) -> NodeId {
    NodeId(peer.to_base58())
}

/// Decode a postcard message that must use every byte.
pub fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// An inbound request as read off the wire: either a message, or the reason
/// the frame was refused (too large, truncated, does not decode).
///
/// Bad frames are surfaced to the node instead of failing inside the codec,
/// because libp2p-request-response reports no event at all for a request
/// that fails to decode, and the node must know whom to penalise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<T> {
    Valid(T),
    Invalid(String),
}

/// A request-response codec: one postcard message per stream direction,
/// bounded by `max_request` / `max_response` bytes.
#[derive(Debug)]
pub struct PostcardCodec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    _types: std::marker::PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Clone for PostcardCodec<Req, Resp> {
    fn clone(&self) -> Self {
        PostcardCodec::new(self.max_request, self.max_response)
    }
}

impl<Req, Resp> PostcardCodec<Req, Resp> {
    pub fn new(max_request: usize, max_response: usize) -> Self {
        PostcardCodec {
            max_request,
            max_response,
            _types: std::marker::PhantomData,
        }
    }
}

/// Read a whole frame, refusing one larger than `max` without buffering it.
async fn read_bounded<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

fn decode_io<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    decode_exact(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_msg<T: AsyncWrite + Unpin + Send, M: Serialize>(
    io: &mut T,
    msg: M,
    max: usize,
) -> io::Result<()> {
    let bytes = postcard::to_stdvec(&msg).map_err(io::Error::other)?;
    drop(msg);
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds {max}", bytes.len()),
        ));
    }
    io.write_all(&bytes).await?;
    io.close().await
}

impl<Req, Resp> libp2p::request_response::Codec for PostcardCodec<Req, Resp>
where
    Req: Send + Serialize + DeserializeOwned,
    Resp: Send + Serialize + DeserializeOwned,
{
    type Protocol = StreamProtocol;
    type Request = Frame<Req>;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame<Req>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = match read_bounded(io, self.max_request).await {
            // A stream closed before anything was written: a request given
            // up on (timeout, connection lost), not a malformed one.
            Ok(bytes) if bytes.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "empty request",
                ))
            }
            Ok(bytes) => match decode_exact(&bytes) {
                Ok(req) => Frame::Valid(req),
                Err(e) => Frame::Invalid(format!("{} bytes that do not decode: {e}", bytes.len())),
            },
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Frame::Invalid(e.to_string()),
            Err(e) => return Err(e),
        };
        Ok(frame)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode_io(&read_bounded(io, self.max_response).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame<Req>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Frame::Valid(req) => write_msg(io, req, self.max_request).await,
            Frame::Invalid(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to send an invalid frame",
            )),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_msg(io, resp, self.max_response).await
    }
}

/// Codec for `/lanswarm/alloc/2`.
pub type AllocCodec = PostcardCodec<AllocRequest, AllocReply>;
/// Codec for `/lanswarm/task/2`.
pub type TaskCodec = PostcardCodec<TaskRequest, TaskResponse>;
/// Codec for `/lanswarm/health/1` (a request is a small fixed message).
pub type HealthCodec = PostcardCodec<HealthRequest, HealthReply>;
/// Codec for `/lanswarm/sync/2`.
pub type SyncCodec = PostcardCodec<SyncRequest, SyncResponse>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Capacity, Location};

    fn ann(key: &Keypair) -> Announcement {
        Announcement {
            node_id: NodeId(key.public().to_peer_id().to_base58()),
            seq: 7,
            issued_at_ms: 1,
            name: "n".into(),
            version: "0".into(),
            addrs: vec![],
            api: None,
            capacity: Capacity::default(),
            free: Capacity::default(),
            gpus: vec![],
            machine_cpu_cores: 2,
            machine_memory_mb: 1024,
            cpu_usage_pct: 0.0,
            models: vec![],
            location: Location::default(),
            weight: 1,
            active_leases: 0,
            labels: Default::default(),
            access: crate::model::AccessHint {
                allow_remote: true,
                ..Default::default()
            },
            arch: "x86_64".into(),
            usage: vec![],
            queued: 0,
            preemption: false,
            refusals: vec![],
            leaving: false,
            loaded_models: vec![],
            templates: vec![],
            instance: 1,
            started_at_ms: 0,
        }
    }

    #[test]
    fn signed_announcement_round_trips() {
        let key = Keypair::generate_ed25519();
        let a = ann(&key);
        let s = SignedAnnouncement::sign(&a, &key).unwrap();
        assert_eq!(s.verify().unwrap(), a);
    }

    #[test]
    fn refusal_counts_round_trip_and_too_many_are_refused() {
        use crate::core::bottleneck::{DimCount, MAX_ANNOUNCED};
        let key = Keypair::generate_ed25519();
        let mut a = ann(&key);
        let dim = |d: &str| DimCount {
            dimension: d.into(),
            count: 3,
        };
        a.refusals = vec![dim("memory_mb"), dim("gpus")];
        let s = SignedAnnouncement::sign(&a, &key).unwrap();
        assert_eq!(s.verify().unwrap().refusals, a.refusals);
        a.refusals = vec![dim("cpu_cores"); MAX_ANNOUNCED + 1];
        let s = SignedAnnouncement::sign(&a, &key).unwrap();
        assert!(matches!(s.verify(), Err(AnnounceError::OutOfBounds(_))));
        a.refusals = vec![dim(&"x".repeat(200))];
        let s = SignedAnnouncement::sign(&a, &key).unwrap();
        assert!(matches!(s.verify(), Err(AnnounceError::OutOfBounds(_))));
    }

    #[test]
    fn tampered_payload_fails() {
        let key = Keypair::generate_ed25519();
        let mut s = SignedAnnouncement::sign(&ann(&key), &key).unwrap();
        let last = s.payload.len() - 1;
        s.payload[last] ^= 1;
        assert_eq!(s.verify(), Err(AnnounceError::BadSignature));
    }

    #[test]
    fn announcement_for_another_node_fails() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let s = SignedAnnouncement::sign(&ann(&other), &key).unwrap();
        assert!(matches!(s.verify(), Err(AnnounceError::WrongSigner { .. })));
    }

    fn group_event(actor: &Keypair) -> StateEvent {
        StateEvent::Group(GroupEvent {
            group: "g".into(),
            actor: node_id_of(&actor.public().to_peer_id()),
            clock: 1,
            kind: crate::core::groups::GroupEventKind::Join,
        })
    }

    #[test]
    fn signed_event_round_trips() {
        let key = Keypair::generate_ed25519();
        let ev = group_event(&key);
        let signed = SignedEvent::sign(&ev, &key).unwrap();
        assert_eq!(signed.verify().unwrap(), ev);
    }

    #[test]
    fn event_in_another_nodes_name_fails() {
        let (alice, mallory) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let forged = SignedEvent::sign(&group_event(&alice), &mallory).unwrap();
        assert!(matches!(
            forged.verify(),
            Err(AnnounceError::WrongSigner { .. })
        ));
        let mut tampered = SignedEvent::sign(&group_event(&alice), &alice).unwrap();
        let last = tampered.payload.len() - 1;
        tampered.payload[last] ^= 1;
        assert!(tampered.verify().is_err());
    }

    #[test]
    fn an_announcement_signature_never_passes_as_an_event() {
        // Domain separation: the same bytes signed as an announcement do
        // not verify as an event.
        let key = Keypair::generate_ed25519();
        let ev = group_event(&key);
        let payload = postcard::to_stdvec(&ev).unwrap();
        let mut msg = ANNOUNCE_SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&payload);
        let wrong = SignedEvent {
            payload,
            public_key: key.public().encode_protobuf(),
            signature: key.sign(&msg).unwrap(),
        };
        assert_eq!(wrong.verify(), Err(AnnounceError::BadSignature));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = postcard::to_stdvec(&AllocRequest::Release {
            lease_id: LeaseId("x".into()),
        })
        .unwrap();
        assert!(decode_exact::<AllocRequest>(&bytes).is_ok());
        bytes.push(0);
        assert!(decode_exact::<AllocRequest>(&bytes).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..(seed % 64))
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) as u8)
                .collect();
            let _ = decode_exact::<AllocRequest>(&bytes);
            let _ = decode_exact::<SyncRequest>(&bytes);
            let _ = SignedAnnouncement {
                payload: bytes.clone(),
                public_key: bytes.clone(),
                signature: bytes,
            }
            .verify();
        }
    }
}
