//! SIP byte handling: a byte-preserving scanner over received messages, the typed views the
//! proxy needs (Via, URIs, name-addrs, parameters), stream framing, in-place splicing of the
//! proxy's own edits, and the one builder for responses the proxy originates.
//!
//! Nothing here re-serialises a message: every view is a [`Span`] into the received bytes, so
//! headers the proxy does not own travel on exactly as they arrived.

pub mod auth;
pub mod edit;
pub mod framing;
pub mod header;
pub mod lex;
pub mod message;
pub mod name_addr;
pub mod params;
pub mod reply;
pub mod uri;
pub mod via;

pub use header::HeaderName;
pub use message::{Header, Message, Method, ParseError, Span, StartLine, parse};
