//! The credentials file (`[auth] credentials`): htdigest lines `user:realm:HA1`. Only lines
//! of sluice's realm are kept; an HA1 of 32 hex digits is MD5, of 64 SHA-256 (RFC 8760), and
//! a user may have one of each.

use std::collections::HashMap;

/// A user's precomputed `H(user:realm:password)` per algorithm, lowercase hex.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ha1 {
    pub md5: Option<String>,
    pub sha256: Option<String>,
}

/// Username -> HA1s for one realm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials(HashMap<String, Ha1>);

impl Credentials {
    pub fn get(&self, user: &str) -> Option<&Ha1> {
        self.0.get(user)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses an htdigest file for `realm`. Blank lines and `#` comments are skipped; the error
/// is the 1-based number of the first malformed line.
pub fn parse(text: &str, realm: &str) -> Result<Credentials, usize> {
    let mut map: HashMap<String, Ha1> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The user name may not hold ':', the realm may not either; HA1 is the last field.
        let mut parts = line.splitn(3, ':');
        let (Some(user), Some(line_realm), Some(ha1)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(i + 1);
        };
        if user.is_empty() || !ha1.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(i + 1);
        }
        if line_realm != realm {
            continue;
        }
        let entry = map.entry(user.to_string()).or_default();
        match ha1.len() {
            32 => entry.md5 = Some(ha1.to_ascii_lowercase()),
            64 => entry.sha256 = Some(ha1.to_ascii_lowercase()),
            _ => return Err(i + 1),
        }
    }
    Ok(Credentials(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htdigest_lines() {
        let md5 = "939e7578ed9e3c518a452acee763bce9";
        let sha = "a".repeat(64);
        let text = format!("# users\nacme:sluice:{md5}\nacme:sluice:{sha}\nbob:other:{md5}\n\n");
        let c = parse(&text, "sluice").unwrap();
        assert_eq!(c.len(), 1, "other realms are not ours");
        let acme = c.get("acme").unwrap();
        assert_eq!(acme.md5.as_deref(), Some(md5));
        assert_eq!(acme.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(parse("acme:sluice:xyz\n", "sluice"), Err(1));
        assert_eq!(parse("ok:sluice:939e7578ed9e3c518a452acee763bce9\nnocolon\n", "sluice"), Err(2));
    }
}
