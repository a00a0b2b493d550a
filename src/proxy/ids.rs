//! The identifiers the proxy's tables key on, in a leaf module every other one may use
//! (so transactions, dialogs and timers do not need each other to name one another).

use tokio::time::Instant;

/// A transaction: its shard in the top 16 bits, a counter below.
pub type TxId = u64;

/// A scheduled timer: its deadline and a sequence number (unique per shard).
pub type TimerKey = (Instant, u64);

/// A call as RFC 3261 identifies its dialog from the proxy's seat: the Call-ID and the
/// caller's From tag (the callee's tag is learned from the 2xx). Two INVITEs with one Call-ID
/// and different From tags are two calls: neither can end, replace or release the other.
///
/// Shared (`Arc`): the timers and transactions of a call hold its key without copying it;
/// maps keyed by it are looked up with [`KeyBytes`] (no allocation).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(std::sync::Arc<[u8]>);

impl std::borrow::Borrow<[u8]> for CallKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// A call key's bytes for a lookup, on the stack when short (every realistic Call-ID).
pub enum KeyBytes {
    Stack([u8; 160], usize),
    Heap(Vec<u8>),
}

impl std::ops::Deref for KeyBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Stack(buf, len) => buf.get(..*len).unwrap_or_default(),
            Self::Heap(v) => v,
        }
    }
}

impl KeyBytes {
    /// Length-prefixed, so no Call-ID/tag pair can spell another pair's key.
    pub fn of(call_id: &[u8], caller_tag: &[u8]) -> Self {
        let len = u32::try_from(call_id.len()).unwrap_or(u32::MAX).to_be_bytes();
        let total = 4 + call_id.len() + caller_tag.len();
        if total <= 160 {
            let mut buf = [0u8; 160];
            buf[..4].copy_from_slice(&len);
            buf[4..4 + call_id.len()].copy_from_slice(call_id);
            buf[4 + call_id.len()..total].copy_from_slice(caller_tag);
            Self::Stack(buf, total)
        } else {
            let mut v = Vec::with_capacity(total);
            v.extend_from_slice(&len);
            v.extend_from_slice(call_id);
            v.extend_from_slice(caller_tag);
            Self::Heap(v)
        }
    }
}

impl CallKey {
    pub fn new(call_id: &[u8], caller_tag: &[u8]) -> Self {
        Self(std::sync::Arc::from(&*KeyBytes::of(call_id, caller_tag)))
    }

    /// The caller's From tag, the rest of the key.
    pub fn caller_tag(&self) -> &[u8] {
        let len = self.call_id().len();
        self.0.get(4 + len..).unwrap_or_default()
    }

    /// The Call-ID part, for logs.
    pub fn call_id(&self) -> &[u8] {
        let len = self.0.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_be_bytes);
        self.0.get(4..4 + len as usize).unwrap_or_default()
    }
}

impl std::fmt::Debug for CallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallKey({})", String::from_utf8_lossy(self.call_id()))
    }
}

/// A server transaction's key (RFC 3261 §17.2.3: branch, sent-by and method; the older
/// fallback for pre-3261 branches), kept as a keyed 64-bit hash of those fields instead of
/// their bytes: every lingering transaction is found by it, and at 7,000 calls/s about
/// 450,000 linger. The hash is keyed with the process's secret, so a caller cannot make two
/// requests collide on purpose; by chance, a new request meets one of a million live keys
/// with odds of 1 in 1.8·10^13.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey(pub(crate) u64);

/// Hashing for maps keyed by numbers no caller chooses: [`ServerKey`]s (already keyed
/// hashes) and [`TxId`]s (a shard number over a counter). One multiplication by an odd
/// constant spreads a counter's changes into the high bits the map's probing uses; SipHash
/// would only add cost, since there is nothing to defend against.
#[derive(Clone, Copy, Default)]
pub struct Spread;

#[derive(Default)]
pub struct SpreadHasher(u64);

impl std::hash::BuildHasher for Spread {
    type Hasher = SpreadHasher;

    fn build_hasher(&self) -> SpreadHasher {
        SpreadHasher(0)
    }
}

impl std::hash::Hasher for SpreadHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only fixed-size integers are hashed with this; anything else still spreads.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}
