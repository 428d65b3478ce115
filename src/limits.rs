//! Every bound the proxy puts on what others may ask of it, in one place, each with its unit and
//! the reason for its value (after awslabs/tough's `Limits`). A limit is named here once and used
//! by name wherever it applies; a test that probes a limit reads it from here.

use std::time::Duration;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

// The upstream store (SPEC §5, §6).

/// Largest catalog document accepted, in bytes: thousands of images fit in far less, and the
/// whole document is held in memory while its signature is checked.
pub const MAX_CATALOG_BYTES: u64 = 16 * MIB;

/// Largest detached OpenPGP signature accepted, of the catalog or of a file, in bytes: a
/// signature by a few keys is under 2 KiB; anything near this is not a signature.
pub const MAX_SIGNATURE_BYTES: u64 = 64 * KIB;

/// Largest keyring an upstream may offer beside its catalog for a key rollover, in bytes: a
/// distribution's archive keyring of a dozen keys is under 64 KiB; it is held in memory while
/// its signature is checked.
pub const MAX_OFFERED_KEYRING_BYTES: u64 = MIB;

/// Largest single file an image may declare, in bytes: above any OS image in use, below what
/// would let one catalog entry fill a cloud controller's disk by mistake.
pub const MAX_FILE_BYTES: u64 = 64 * GIB;

/// How long one catalog fetch (document or signature) may take before the dashboard is served
/// from the catalog already accepted.
pub const CATALOG_FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one fetch of a file's detached signature may take (retried as a download is).
pub const FILE_SIGNATURE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an upstream (or cloud) connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an upstream download may go without a single byte before it counts as cut (the
/// stall rule in `fetch::retry` judges slow trickles).
pub const UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes of a download held in memory before they are written: what a crash loses of a download
/// and fetches again after the restart, so it stays small; 64 KiB writes are still few syscalls.
pub const DOWNLOAD_WRITE_BUFFER: usize = 64 << 10;

/// How much of `--max-download-rate` the bucket saves up while downloads are idle, as time at
/// the rate: a quarter second lets a new download start at once without letting an idle minute
/// become a minute's worth of bytes at full speed.
pub const DOWNLOAD_RATE_BURST: Duration = Duration::from_millis(250);

/// Most connections one download is split over (`--download-connections`): each is another
/// request the upstream serves at once for one client, and a mirror that sees dozens from one
/// address may take it for abuse.
pub const MAX_DOWNLOAD_CONNECTIONS: u64 = 16;

/// Files smaller than this, in bytes, are fetched over one connection whatever
/// `--download-connections` says: a range must be long enough to get past TCP's slow start, and a
/// small file's resume stays one `Range: bytes=N-` from where its partial file ends.
pub const PARALLEL_DOWNLOAD_MIN_BYTES: u64 = 64 * MIB;

/// The piece a parallel download's connections take one after another, in file order, in bytes.
/// Each piece is one ranged request, so smaller costs more round trips; the in-order readers (the
/// hash, the bundler reading the file as it grows) trail the furthest byte by about one piece per
/// connection, so larger leaves more of their work until after the download. At 16 MiB a
/// connection at 10 MiB/s asks again every 1.6 s, and four trail by 64 MiB at most.
pub const DOWNLOAD_PIECE_BYTES: u64 = 16 * MIB;

// qcow2 whole disks (issue 14, `unpack/qcow2/`).

/// Largest virtual disk a qcow2 image may declare, in bytes: its raw form is what gets bundled
/// and uploaded, 2 TiB is above any cloud image's disk, and a few hundred bytes of header cannot
/// ask for 2^62 bytes of zeros.
pub const MAX_QCOW2_VIRTUAL_BYTES: u64 = 2048 * GIB;

/// Largest qcow2 L1 table (its used part) or refcount table read, in bytes: each is held in
/// memory, with a sorted list of the clusters it names, while the disk streams. 2 MiB of L1 maps
/// 128 TiB at the usual 64 KiB clusters (qemu's own caps are 32 MiB and 8 MiB), so only tiny
/// clusters on a huge disk meet it.
pub const MAX_QCOW2_TABLE_BYTES: u64 = 2 * MIB;

// Simplestreams upstreams (SPEC §5.2). Their documents are parsed only once verified, so these
// bound mistakes and a compromised mirror's key, not strangers.

/// Largest simplestreams index or products document accepted, in bytes: Canonical's released
/// and daily download products files are a few MiB each, and the whole document is parsed in memory.
pub const MAX_STREAM_DOCUMENT_BYTES: u64 = 64 * MIB;

/// Entries one object of a stream may hold (index entries, products of a file, versions of a
/// product, items of a version): the busiest real level, the products of a file, has a few hundred.
pub const MAX_STREAM_CHILDREN: usize = 65_536;

/// Items one products file may hold in all: filters and the version choice walk each one.
pub const MAX_STREAM_ITEMS: usize = 500_000;

/// Scalar fields one object of a stream may carry: real ones carry under 20; each is inherited
/// by every item below it.
pub const MAX_STREAM_FIELDS: usize = 1024;

/// Bytes that expanding a stream's `_aliases` may copy into the objects naming them: real
/// aliases are a region and an endpoint; without a cap a few large aliases named by every item
/// would grow a small document into gigabytes.
pub const MAX_STREAM_ALIAS_BYTES: u64 = 64 * MIB;

/// Most versions of each product a simplestreams upstream may be set to offer
/// (`max-versions`): each is a row of the Store tab, and Canonical keeps a few dozen serials.
pub const MAX_STREAM_VERSIONS_OFFERED: usize = 100;

/// Longest key, string value or path in a stream, in bytes: real ones are under 200 (a path).
pub const MAX_STREAM_STRING_BYTES: usize = 16 << 10;

// The cloud (SPEC §7).

/// How long one S3 or EC2 exchange may take before it is given up and tried again (see
/// [`cloud_exchange_timeout`]): the round trip, the cloud's own work and its reply.
pub const CLOUD_EXCHANGE_BASE: Duration = Duration::from_secs(30);

/// The slowest link to the cloud an exchange waits on, in bytes a second (2 Mbit/s): a 10 MiB
/// part may take 40 s on top of [`CLOUD_EXCHANGE_BASE`]. A cloud that stops answering costs one
/// such wait and a retry, not a hang.
pub const SLOWEST_CLOUD_LINK_BYTES_PER_SECOND: u64 = 256 << 10;

/// How long a reader of a file still downloading waits before it looks again, should no wake-up
/// come (the download wakes it on every chunk): a bound on a missed wake-up, not a pace.
pub const GROWING_FILE_POLL: Duration = Duration::from_millis(50);

/// Bytes of a bundle part read at a time, in bytes: to hash it before a PUT and as the PUT's
/// streamed body. Parts stream from disk instead of being held (10 MiB each): 100 MiB into moto
/// peaked at 75-77 MiB RSS held, 47-48 MiB streamed (`bench/transfers`, medians of 3); 256 KiB
/// chunks keep a PUT at a few syscalls per MiB.
pub const UPLOAD_READ_BUFFER: usize = 256 << 10;

/// The deadline of one cloud exchange that sends `body_bytes`.
pub fn cloud_exchange_timeout(body_bytes: u64) -> Duration {
    CLOUD_EXCHANGE_BASE + Duration::from_secs(body_bytes / SLOWEST_CLOUD_LINK_BYTES_PER_SECOND)
}

/// Most bundle parts in the air at once (`--upload-concurrency`): each part streams from its file
/// (one [`UPLOAD_READ_BUFFER`] chunk at a time, not the part), so the bound is the cloud's: its
/// S3 front end limits the connections of one client well before 64.
pub const MAX_UPLOAD_CONCURRENCY: u64 = 64;

/// Bytes of a cloud's error reply read to find its `<Code>` and `<Message>`: real ones are a few
/// hundred bytes; an endless one must not grow memory.
pub const MAX_CLOUD_ERROR_BYTES: usize = 64 << 10;

/// Largest file taken out of `euca_conf`'s credentials zip, in bytes: a eucarc and PEM keys and
/// certificates are a few KiB each; a zip entry that inflates past this is not one of them.
pub const MAX_CREDENTIAL_FILE_BYTES: u64 = MIB;

/// Longest image description registered, in characters: EC2's `RegisterImage` takes up to 255
/// and Eucalyptus keeps the same bound; a longer stream identity is cut, not refused.
pub const MAX_IMAGE_DESCRIPTION_CHARS: usize = 255;

// The UI API (SPEC §4).

/// How long a client has to send its request line and headers: a client trickling them a byte a
/// second is cut off and holds no worker.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) accepted, in bytes; larger ones get a 431.
/// The servlet sends well under 2 KiB.
pub const MAX_HEADER_BYTES: usize = 16 << 10;

/// Largest request body accepted, in bytes: a signed form of a few parameters; larger is refused
/// before it is read whole.
pub const MAX_BODY_BYTES: usize = 256 << 10;

/// How long a client has to send its body once its headers are in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for requests in flight before dropping their connections.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Live nonces remembered (16 bytes each, about 18 MiB full): far more than the UI produces (a
/// Store tab polls every 5 s, signatures live 30 s), and room for a benchmark's 20,000 signed
/// requests a second for half a minute. Just under a power-of-two table (2^20 buckets at 7/8
/// load), so a full book never doubles its table. A full book refuses (503) rather than forget a
/// live nonce early, which would let a replay through.
pub const NONCE_CAPACITY: usize = 900_000;

// Subscriptions and the cache budget (issue 17).

/// Versions of a product a subscription keeps installed unless `--keep` says otherwise: the one
/// running now and the one before it, to go back to if the new one misbehaves.
pub const DEFAULT_SUBSCRIPTION_KEEP: usize = 2;

// Splicing the upstream's deflate data into a bundle (bundle/splice).

/// Longest gzip header field (FNAME, FCOMMENT) the splicer reads past, in bytes: gzip writes a
/// file name there; anything longer is not an upstream's ordinary member, so it is recompressed.
pub const SPLICE_MAX_GZIP_HEADER_BYTES: usize = 64 * KIB as usize;
/// Compressed bytes read from the source at a time: large enough that a read costs little
/// against the inflate it feeds.
pub const SPLICE_READ_BYTES: usize = 256 * KIB as usize;
/// The splicer's inflate output buffer after deflate's 32 KiB of history, in bytes: large enough
/// that each hand-over of inflated bytes to the SHA-1 is worth its call, and that sliding the
/// history to its front costs little.
pub const SPLICE_WINDOW_BYTES: usize = 256 * KIB as usize;
/// The most of one upstream block a UEC splice holds, in bytes, counted apart for its compressed
/// bytes and its inflated bytes: a block is copied only once it has ended inside the image member,
/// so both are kept until then (the inflated ones deflate afresh if the block runs past the
/// member's end). GNU gzip's longest block inflates to 8.45 MB (32,767 matches of 258 bytes of
/// zeros), zlib's to 4.2 MB; a block bigger than this is deflated afresh instead, and copying
/// resumes at the next block.
pub const SPLICE_HOLD_MAX_BYTES: usize = 9 * MIB as usize;
