//! The edge's own digest authentication of initial requests (`[auth]`): which requests must
//! prove a username, the 407 challenge, and what a failed proof gets. The digest and nonce
//! arithmetic lives in [`crate::auth`]; this is the protocol step on the data path.

use tokio::time::Instant;

use super::dialog::KeyBytes;
use super::{Action, Answer, Proxy};
use crate::auth::Outcome;
use crate::auth::digest::{MAX_TRIES, realm_of};
use crate::config::AuthRequire;
use crate::peer::Peer;
use crate::sip::{HeaderName, Message};
use crate::stats::AuthResult;

impl Proxy {
    /// Authenticates an initial request under `[auth]`. `Some(user)`: go on with this
    /// verified username (`None` when the source need not authenticate and sent nothing for
    /// our realm). `None`: the request was answered (407 or 403) and goes no further.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        source: Peer,
        msg: &Message<'_>,
        out: &mut Vec<Action>,
    ) -> Option<Option<String>> {
        let verifier = self.auth.as_ref()?;
        let require = self.config.auth.as_ref().map_or(AuthRequire::None, |a| a.require);
        let must = match require {
            AuthRequire::All => true,
            AuthRequire::Unknown => self.customers.identify(source.addr.ip(), None).is_none(),
            AuthRequire::None => false,
        };
        let realm = verifier.realm().as_bytes();
        let ours = msg
            .all(HeaderName::ProxyAuthorization)
            .map(|h| msg.bytes(h.value))
            .find(|v| realm_of(v) == Some(realm));
        let call =
            KeyBytes::of(msg.call_id().unwrap_or_default(), msg.tag(HeaderName::From).unwrap_or_default());
        let method = match msg.start {
            crate::sip::StartLine::Request { method_name, .. } => msg.bytes(method_name),
            crate::sip::StartLine::Response { .. } => b"",
        };
        let outcome = match ours {
            Some(value) => verifier.verify(now, &call, method, msg.request_uri().unwrap_or_default(), value),
            None if must => Outcome::Missing,
            None => return Some(None),
        };
        let (tries, stale) = match outcome {
            Outcome::Ok(user) => {
                self.stats.auth(AuthResult::Ok);
                return Some(Some(user));
            }
            Outcome::Missing => {
                self.stats.auth(AuthResult::Challenged);
                (0, false)
            }
            Outcome::Stale => {
                self.stats.auth(AuthResult::Stale);
                (0, true)
            }
            Outcome::Failed { tries } => {
                self.stats.auth(AuthResult::Failed);
                if self.warn.allow(now) {
                    tracing::info!(event = "auth.failed", source = %source, call_id = %String::from_utf8_lossy(msg.call_id().unwrap_or_default()), tries, "digest credentials refused");
                }
                if tries >= MAX_TRIES {
                    self.reply(now, msg, source, Answer::new(403, "Forbidden"), &[], out);
                    return None;
                }
                (tries, false)
            }
        };
        let [sha256, md5] = verifier.challenge(now, &call, tries, stale);
        self.reply(
            now,
            msg,
            source,
            Answer::new(407, "Proxy Authentication Required"),
            &[("Proxy-Authenticate", sha256.as_bytes()), ("Proxy-Authenticate", md5.as_bytes())],
            out,
        );
        None
    }
}
