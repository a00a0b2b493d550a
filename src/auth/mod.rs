//! Digest authentication at the edge (`[auth]`, RFC 3261 §22.3, RFC 8760): sluice challenges
//! callers itself, so that the username customer recognition and `per_user` limits key on is
//! one the caller proved, not one it wrote. Nonces are stateless: an HMAC over the time they
//! were issued, the failed tries so far and the call they were issued for, so a captured
//! answer is good for that one call only and for `nonce_seconds` at most.

pub mod credentials;
pub mod digest;

pub use credentials::Credentials;
pub use digest::{Outcome, Verifier};
