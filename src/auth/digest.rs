//! The digest computation and the stateless nonces (see the module above).

use std::time::Duration;

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::Credentials;
use crate::sip::message::trim;
use crate::sip::params::split_list;

/// Failed answers to one call's challenges before the caller gets `403`.
pub const MAX_TRIES: u8 = 3;

/// What a request's credentials for sluice's realm amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A correct answer to a live nonce of this call: the verified username.
    Ok(String),
    /// No credentials for our realm: challenge.
    Missing,
    /// A correct answer to a nonce that has expired: challenge again with `stale=true`.
    Stale,
    /// Wrong password, unknown user, another call's nonce, a forged nonce: challenge again
    /// (with the tries counted) or, at [`MAX_TRIES`], refuse.
    Failed { tries: u8 },
}

/// Checks digest credentials against the credentials file and issues challenges.
pub struct Verifier {
    realm: String,
    credentials: Credentials,
    lifetime: Duration,
    key: [u8; 32],
    /// Nonce times are seconds since this instant (a nonce is good on this process only).
    epoch: Instant,
}

/// One `Digest` credentials value's parameters (unquoted).
#[derive(Debug, Default)]
struct Params<'a> {
    username: Option<&'a [u8]>,
    realm: Option<&'a [u8]>,
    nonce: Option<&'a [u8]>,
    uri: Option<&'a [u8]>,
    response: Option<&'a [u8]>,
    algorithm: Option<&'a [u8]>,
    qop: Option<&'a [u8]>,
    nc: Option<&'a [u8]>,
    cnonce: Option<&'a [u8]>,
}

fn params(value: &[u8]) -> Option<Params<'_>> {
    let value = trim(value);
    let space = value.iter().position(|b| b.is_ascii_whitespace())?;
    if !value[..space].eq_ignore_ascii_case(b"Digest") {
        return None;
    }
    let rest = &value[space..];
    let mut p = Params::default();
    for r in split_list(rest) {
        let item = &rest[r];
        let Some(eq) = memchr::memchr(b'=', item) else { continue };
        let name = trim(&item[..eq]);
        let v = trim(&item[eq + 1..]);
        let v = v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v);
        let slot = match name.to_ascii_lowercase().as_slice() {
            b"username" => &mut p.username,
            b"realm" => &mut p.realm,
            b"nonce" => &mut p.nonce,
            b"uri" => &mut p.uri,
            b"response" => &mut p.response,
            b"algorithm" => &mut p.algorithm,
            b"qop" => &mut p.qop,
            b"nc" => &mut p.nc,
            b"cnonce" => &mut p.cnonce,
            _ => continue,
        };
        *slot = Some(v);
    }
    Some(p)
}

/// The realm of a `Digest` credentials value (to find the one meant for sluice).
pub fn realm_of(value: &[u8]) -> Option<&[u8]> {
    params(value)?.realm
}

#[derive(Clone, Copy)]
enum Algorithm {
    Md5,
    Sha256,
}

fn hex_digest(algorithm: Algorithm, parts: &[&[u8]]) -> String {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                d.update(b":");
            }
            d.update(p);
        }
        d.finalize().to_vec()
    }
    let bytes = match algorithm {
        Algorithm::Md5 => run::<Md5>(parts),
        Algorithm::Sha256 => run::<Sha256>(parts),
    };
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// Compares without an early exit, so timing says nothing about how much matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Verifier {
    pub fn new(auth: &crate::config::Auth, epoch: Instant) -> Self {
        let mut key = [0u8; 32];
        if getrandom::getrandom(&mut key).is_err() {
            // No OS randomness: fall back to std's randomly keyed hasher (still per process).
            use std::hash::BuildHasher;
            for (i, chunk) in key.chunks_mut(8).enumerate() {
                chunk.copy_from_slice(&std::hash::RandomState::new().hash_one(i).to_le_bytes());
            }
        }
        Self::with_key(auth, epoch, key)
    }

    pub fn with_key(auth: &crate::config::Auth, epoch: Instant, key: [u8; 32]) -> Self {
        Self {
            realm: auth.realm.clone(),
            credentials: auth.credentials.clone(),
            lifetime: auth.nonce_lifetime,
            key,
            epoch,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// New credentials (a reload) keep the key, so nonces already issued stay good.
    pub fn update(&mut self, auth: &crate::config::Auth) {
        self.realm.clone_from(&auth.realm);
        self.credentials = auth.credentials.clone();
        self.lifetime = auth.nonce_lifetime;
    }

    fn mac(&self, issued: u64, tries: u8, call: &[u8]) -> String {
        // HMAC accepts keys of any length: this cannot fail.
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.key) else { return String::new() };
        m.update(&issued.to_be_bytes());
        m.update(&[tries]);
        m.update(call);
        hex(&m.finalize().into_bytes()[..16])
    }

    /// A nonce for `call` (its Call-ID and From tag) after `tries` failed answers.
    fn nonce(&self, now: Instant, tries: u8, call: &[u8]) -> String {
        let issued = now.saturating_duration_since(self.epoch).as_secs();
        format!("{issued:x}.{tries}.{}", self.mac(issued, tries, call))
    }

    /// The two `Proxy-Authenticate` values of a challenge, SHA-256 first (RFC 8760 §2.4:
    /// the preferred algorithm first), then MD5 for older phones.
    pub fn challenge(&self, now: Instant, call: &[u8], tries: u8, stale: bool) -> [String; 2] {
        let nonce = self.nonce(now, tries, call);
        let stale = if stale { ", stale=true" } else { "" };
        ["SHA-256", "MD5"].map(|algorithm| {
            format!(
                "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={algorithm}, qop=\"auth\"{stale}",
                self.realm
            )
        })
    }

    /// Checks one credentials value meant for our realm, for a request of `call` with this
    /// method and Request-URI.
    pub fn verify(
        &self,
        now: Instant,
        call: &[u8],
        method: &[u8],
        request_uri: &[u8],
        value: &[u8],
    ) -> Outcome {
        let Some(p) = params(value) else { return Outcome::Failed { tries: 1 } };
        // Our own nonce, untampered and for this very call, or nothing counts.
        let Some((issued, tries)) = p.nonce.and_then(|n| self.open_nonce(n, call)) else {
            return Outcome::Failed { tries: 1 };
        };
        let failed = Outcome::Failed { tries: tries.saturating_add(1) };
        let algorithm = match p.algorithm {
            None => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case(b"MD5") => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case(b"SHA-256") => Algorithm::Sha256,
            Some(_) => return failed,
        };
        let (Some(user), Some(uri), Some(response), Some(nonce)) = (p.username, p.uri, p.response, p.nonce)
        else {
            return failed;
        };
        // The answer covers the digest-uri; it must be this request's, or an answer for one
        // number could be spent on another.
        if uri != request_uri {
            return failed;
        }
        let Some(ha1) = std::str::from_utf8(user).ok().and_then(|u| self.credentials.get(u)) else {
            return failed;
        };
        let Some(ha1) = (match algorithm {
            Algorithm::Md5 => ha1.md5.as_deref(),
            Algorithm::Sha256 => ha1.sha256.as_deref(),
        }) else {
            return failed;
        };
        let ha2 = hex_digest(algorithm, &[method, uri]);
        let expected = match p.qop {
            Some(q) if q.eq_ignore_ascii_case(b"auth") => {
                let (Some(nc), Some(cnonce)) = (p.nc, p.cnonce) else { return failed };
                hex_digest(algorithm, &[ha1.as_bytes(), nonce, nc, cnonce, b"auth", ha2.as_bytes()])
            }
            Some(_) => return failed,
            None => hex_digest(algorithm, &[ha1.as_bytes(), nonce, ha2.as_bytes()]),
        };
        if !same(expected.as_bytes(), &response.to_ascii_lowercase()) {
            return failed;
        }
        let age = now.saturating_duration_since(self.epoch).as_secs().saturating_sub(issued);
        if age > self.lifetime.as_secs() {
            return Outcome::Stale;
        }
        Outcome::Ok(String::from_utf8_lossy(user).into_owned())
    }

    /// The issue time and tries of a nonce this process made for `call`.
    fn open_nonce(&self, nonce: &[u8], call: &[u8]) -> Option<(u64, u8)> {
        let text = std::str::from_utf8(nonce).ok()?;
        let mut parts = text.splitn(3, '.');
        let issued = u64::from_str_radix(parts.next()?, 16).ok()?;
        let tries: u8 = parts.next()?.parse().ok()?;
        let mac = parts.next()?;
        same(mac.as_bytes(), self.mac(issued, tries, call).as_bytes()).then_some((issued, tries))
    }

    /// An answer as a UA computes it: for tests and benches.
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        challenge: &str,
        user: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> Option<String> {
        let p = params(challenge.as_bytes())?;
        let realm = std::str::from_utf8(p.realm?).ok()?;
        let nonce = std::str::from_utf8(p.nonce?).ok()?;
        let (algorithm, name) = match p.algorithm {
            Some(a) if a.eq_ignore_ascii_case(b"SHA-256") => (Algorithm::Sha256, "SHA-256"),
            _ => (Algorithm::Md5, "MD5"),
        };
        let ha1 = hex_digest(algorithm, &[user.as_bytes(), realm.as_bytes(), password.as_bytes()]);
        let ha2 = hex_digest(algorithm, &[method.as_bytes(), uri.as_bytes()]);
        let response = hex_digest(
            algorithm,
            &[ha1.as_bytes(), nonce.as_bytes(), b"00000001", cnonce.as_bytes(), b"auth", ha2.as_bytes()],
        );
        Some(format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm={name}, qop=auth, nc=00000001, cnonce=\"{cnonce}\""
        ))
    }

    /// The htdigest lines for one user (MD5 and SHA-256), as an operator's file holds them.
    pub fn htdigest(user: &str, realm: &str, password: &str) -> String {
        format!(
            "{user}:{realm}:{}\n{user}:{realm}:{}\n",
            Self::ha1(false, user, realm, password),
            Self::ha1(true, user, realm, password)
        )
    }

    /// `H(user:realm:password)` in hex, as an htdigest line holds it.
    pub fn ha1(sha256: bool, user: &str, realm: &str, password: &str) -> String {
        let algorithm = if sha256 { Algorithm::Sha256 } else { Algorithm::Md5 };
        hex_digest(algorithm, &[user.as_bytes(), realm.as_bytes(), password.as_bytes()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Auth, AuthRequire};

    fn verifier(t0: Instant) -> Verifier {
        let line = Verifier::htdigest("acme", "sluice", "secret");
        let auth = Auth {
            realm: "sluice".into(),
            credentials_file: "x".into(),
            credentials: super::super::credentials::parse(&line, "sluice").unwrap(),
            require: AuthRequire::All,
            nonce_lifetime: Duration::from_secs(300),
        };
        Verifier::with_key(&auth, t0, [7; 32])
    }

    #[test]
    fn known_md5_vector() {
        // RFC 2617 §3.5's example: HA1 of Mufasa:testrealm@host.com:Circle Of Life.
        assert_eq!(
            Verifier::ha1(false, "Mufasa", "testrealm@host.com", "Circle Of Life"),
            "939e7578ed9e3c518a452acee763bce9"
        );
    }

    #[test]
    fn right_password_both_algorithms() {
        let t0 = Instant::now();
        let v = verifier(t0);
        for challenge in v.challenge(t0, b"call-1", 0, false) {
            let a = Verifier::answer(&challenge, "acme", "secret", "INVITE", "sip:100@h", "c1").unwrap();
            assert_eq!(
                v.verify(t0, b"call-1", b"INVITE", b"sip:100@h", a.as_bytes()),
                Outcome::Ok("acme".into())
            );
        }
    }

    #[test]
    fn lies_fail() {
        let t0 = Instant::now();
        let v = verifier(t0);
        let [challenge, _] = v.challenge(t0, b"call-1", 0, false);
        let good = Verifier::answer(&challenge, "acme", "secret", "INVITE", "sip:100@h", "c1").unwrap();
        let wrong = Verifier::answer(&challenge, "acme", "guess", "INVITE", "sip:100@h", "c1").unwrap();
        let failed = Outcome::Failed { tries: 1 };
        assert_eq!(v.verify(t0, b"call-1", b"INVITE", b"sip:100@h", wrong.as_bytes()), failed);
        // A captured answer replayed for another call, another number or another method.
        assert_eq!(v.verify(t0, b"call-2", b"INVITE", b"sip:100@h", good.as_bytes()), failed);
        assert_eq!(v.verify(t0, b"call-1", b"INVITE", b"sip:200@h", good.as_bytes()), failed);
        assert_eq!(v.verify(t0, b"call-1", b"MESSAGE", b"sip:100@h", good.as_bytes()), failed);
        // A nonce the caller made up, or one with its tries count edited down.
        let forged = good.replace("nonce=\"0.0.", "nonce=\"0.1.");
        assert_eq!(v.verify(t0, b"call-1", b"INVITE", b"sip:100@h", forged.as_bytes()), failed);
        // Expired: stale (the password was right, the phone just retries).
        let later = t0 + Duration::from_secs(301);
        assert_eq!(v.verify(later, b"call-1", b"INVITE", b"sip:100@h", good.as_bytes()), Outcome::Stale);
        // Tries accumulate through the nonce.
        let [second, _] = v.challenge(t0, b"call-1", 2, false);
        let wrong = Verifier::answer(&second, "acme", "guess", "INVITE", "sip:100@h", "c1").unwrap();
        assert_eq!(
            v.verify(t0, b"call-1", b"INVITE", b"sip:100@h", wrong.as_bytes()),
            Outcome::Failed { tries: 3 }
        );
    }
}
