//! Every limit of the agent in one place (design invariant 6). Limits that
//! etcd exposes as flags come from the config; the rest are constants here.

/// gRPC framing overhead etcd allows on top of `--max-request-bytes`
/// (etcd's `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Maximum size of a gRPC message we send (etcd: math.MaxInt32).
pub const GRPC_MAX_SEND_BYTES: usize = i32::MAX as usize;
/// Commands waiting in the raft driver's queue before clients are told
/// "etcdserver: too many requests".
pub const MAX_PENDING_PROPOSALS: usize = 4096;
/// Watchers one Watch stream may hold.
pub const MAX_WATCHERS_PER_STREAM: usize = 16 * 1024;
/// Responses queued towards one Watch or KeepAlive stream; a slower reader
/// makes the stream's task wait and later catch up from the store.
pub const STREAM_SEND_QUEUE: usize = 64;
/// Revisions held in memory for watchers that are caught up.
pub const WATCH_RING_REVISIONS: usize = 4096;
/// Bytes of event data held in that ring.
pub const WATCH_RING_BYTES: usize = 16 * 1024 * 1024;
/// Revisions read from the store per catch-up step of a lagging watch stream.
pub const WATCH_CATCHUP_REVISIONS: usize = 512;
/// Events put into one WatchResponse before it is split (at revision
/// boundaries) so that no single response grows without bound.
pub const WATCH_EVENTS_PER_RESPONSE: usize = 1000;
/// Keys per RangeStream chunk.
pub const RANGE_STREAM_CHUNK_KEYS: i64 = 1000;
/// Bytes per Snapshot chunk (etcd sends 32 KiB).
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
/// Versions looked at per physical-compaction step, so that compaction
/// never holds the store for long (a step's deletes are one batch).
pub const COMPACTION_STEP: usize = 1_000;
/// Shortest pause between physical-compaction steps (each pause is at
/// least as long as the step before it).
pub const COMPACTION_MIN_PAUSE: std::time::Duration = std::time::Duration::from_micros(200);
/// Lease revocations proposed per expiry pass (etcd: 1000/s).
pub const LEASE_REVOKES_PER_PASS: usize = 500;
/// Leases per checkpoint entry (etcd: maxLeaseCheckpointBatchSize).
pub const LEASE_CHECKPOINTS_PER_ENTRY: usize = 1000;
/// How often expired leases are looked for.
pub const LEASE_EXPIRY_CHECK_MS: u64 = 500;
/// Bytes of one HTTP/2 header block (HEADERS and CONTINUATION frames)
/// that the client-port connection wrapper holds while it looks at
/// `:authority` (`serve/authority.rs`); a larger block closes the connection.
pub const CLIENT_HEADER_BLOCK_BYTES_MAX: usize = 1024 * 1024;
/// Decoded bytes of one such header block (names, values and HPACK's 32 per
/// field), so that references to the dynamic table cannot inflate it.
pub const CLIENT_HEADER_LIST_BYTES_MAX: usize = 1024 * 1024;
/// Concurrent client connections per listener.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Concurrent requests and streams (watches included) on one client
/// connection: HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 10_000;
/// Raft messages queued towards one peer; beyond it they are dropped and
/// raft retransmits.
pub const PEER_SEND_QUEUE: usize = 4096;
/// TLS connections whose handshake finished, waiting for the server.
pub const TLS_ACCEPT_QUEUE: usize = 1024;
/// A client that has not finished its TLS handshake by then is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
