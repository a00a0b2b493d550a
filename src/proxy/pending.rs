//! What a new call carries while it waits for admission (spike buffer, a shared store's
//! answer), and what an admission decision is logged with. Data only: `admit.rs` acts on it.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::limit::Rejection;
use crate::limit::customers::CustomerId;
use crate::limit::plan::CallPlan;
use crate::peer::Peer;

/// What the admission decision is logged with.
pub(super) struct CallContext<'a> {
    pub call_id: &'a [u8],
    pub source: Peer,
    pub customer: Option<CustomerId>,
    pub user: Option<&'a [u8]>,
    pub number: &'a [u8],
}

/// A new call waiting in the spike buffer (RFC-wise: an INVITE server transaction that has
/// sent 100 Trying and nothing else yet).
#[derive(Debug)]
pub(crate) struct PendingCall {
    pub(super) plan: Arc<CallPlan>,
    pub(super) count_cps: bool,
    pub(super) customer: Option<CustomerId>,
    pub(super) user: Option<Bytes>,
    pub(super) number: Bytes,
    pub(super) from_tag: Bytes,
    /// The limit that made it wait (and, at the deadline, the answer it gets).
    pub(super) rejection: Rejection,
    pub(super) since: Instant,
}

impl PendingCall {
    pub(super) fn context<'a>(&'a self, call_id: &'a [u8], source: Peer) -> CallContext<'a> {
        CallContext {
            call_id,
            source,
            customer: self.customer,
            user: self.user.as_deref(),
            number: &self.number,
        }
    }
}
