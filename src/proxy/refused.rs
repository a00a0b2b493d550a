//! Refusals under pressure. Answering an INVITE over a limit through a full server
//! transaction costs about a kilobyte for 32 s, so a flood of refused INVITEs would grow memory
//! with the attack rate. Past [`STATELESS_ABOVE`] live transactions, refusals are answered
//! statelessly: the same status and reason, and a To tag derived from a keyed hash of the
//! request, so a retransmitted INVITE gets the identical answer without any state.
//!
//! This small fixed table remembers recently refused requests (a keyed hash of the server
//! transaction key and how they were refused), so a retransmission is answered the same way
//! and counted once, even if a slot has freed meanwhile. Its size is fixed: 2^16 slots of
//! 16 bytes (1 MiB); a slot is overwritten by a later refusal, after which a retransmission of
//! the older one is handled as new (refused again if still over the limit).

/// Live transactions beyond which refusals carry no state.
pub const STATELESS_ABOVE: usize = 20_000;

const SLOTS: usize = 1 << 16;

/// How a request was refused, enough to give the same answer again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// A channels limit (else CPS).
    pub channels: bool,
    /// Answered 302 to the overflow servers (the server-wide limit was full).
    pub redirected: bool,
}

impl Refused {
    fn code(self) -> u64 {
        1 | u64::from(self.channels) << 1 | u64::from(self.redirected) << 2
    }

    fn from_code(code: u64) -> Option<Self> {
        (code & 1 == 1).then_some(Self { channels: code & 2 != 0, redirected: code & 4 != 0 })
    }
}

pub struct RecentRefusals {
    /// (request hash, refusal code); code 0 = empty.
    slots: Box<[(u64, u64)]>,
}

impl Default for RecentRefusals {
    fn default() -> Self {
        Self { slots: vec![(0, 0); SLOTS].into_boxed_slice() }
    }
}

impl RecentRefusals {
    /// How the request with this hash was refused, if it was recently.
    pub fn get(&self, hash: u64) -> Option<Refused> {
        let (h, code) = *self.slots.get(slot(hash))?;
        if h == hash { Refused::from_code(code) } else { None }
    }

    pub fn remember(&mut self, hash: u64, how: Refused) {
        if let Some(s) = self.slots.get_mut(slot(hash)) {
            *s = (hash, how.code());
        }
    }

    /// Bytes held (fixed).
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<(u64, u64)>()
    }
}

fn slot(hash: u64) -> usize {
    (hash as usize) & (SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_forgets_by_overwrite() {
        let mut r = RecentRefusals::default();
        let how = Refused { channels: true, redirected: false };
        assert_eq!(r.get(42), None);
        r.remember(42, how);
        assert_eq!(r.get(42), Some(how));
        r.remember(42 + SLOTS as u64, Refused { channels: false, redirected: true });
        assert_eq!(r.get(42), None, "a later refusal in the same slot replaces it");
        assert_eq!(r.heap_bytes(), 1 << 20);
    }
}
