//! Recognising the customer of a call: by source address (longest CIDR match) first, then by
//! SIP username (the digest username of Authorization / Proxy-Authorization).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::Config;

/// Index into [`Config::customers`].
pub type CustomerId = usize;

#[derive(Debug, Clone, Default)]
pub struct CustomerIndex {
    /// (prefix length, network address) -> customer.
    nets: HashMap<(u8, IpAddr), CustomerId>,
    /// Distinct prefix lengths per family, longest first: a lookup probes only these.
    v4_lengths: Vec<u8>,
    v6_lengths: Vec<u8>,
    users: HashMap<String, CustomerId>,
}

impl CustomerIndex {
    pub fn new(config: &Config) -> Self {
        let mut index = Self::default();
        for (id, c) in config.customers.iter().enumerate() {
            for net in &c.ips {
                index.nets.insert((net.prefix_len(), net.network()), id);
                let lengths =
                    if net.addr().is_ipv4() { &mut index.v4_lengths } else { &mut index.v6_lengths };
                if !lengths.contains(&net.prefix_len()) {
                    lengths.push(net.prefix_len());
                }
            }
            for user in &c.users {
                index.users.insert(user.clone(), id);
            }
        }
        index.v4_lengths.sort_unstable_by(|a, b| b.cmp(a));
        index.v6_lengths.sort_unstable_by(|a, b| b.cmp(a));
        index
    }

    /// The customer for a source address and (optional) digest username.
    pub fn identify(&self, ip: IpAddr, user: Option<&[u8]>) -> Option<CustomerId> {
        // An IPv4-mapped IPv6 source is matched as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let lengths = if ip.is_ipv4() { &self.v4_lengths } else { &self.v6_lengths };
        for &len in lengths {
            if let Ok(net) = IpNet::new(ip, len) {
                if let Some(&id) = self.nets.get(&(len, net.network())) {
                    return Some(id);
                }
            }
        }
        let user = std::str::from_utf8(user?).ok()?;
        self.users.get(user).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_cidr_then_user() {
        let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"p\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"p\"]\n\
            [[customer]]\nname = \"wide\"\nips = [\"10.0.0.0/8\"]\nusers = [\"bob\"]\n\
            [[customer]]\nname = \"narrow\"\nips = [\"10.1.2.0/24\", \"2001:db8::/32\"]\n";
        let config = Config::parse("t", text).unwrap();
        let idx = CustomerIndex::new(&config);
        assert_eq!(idx.identify("10.1.2.3".parse().unwrap(), None), Some(1));
        assert_eq!(idx.identify("10.9.9.9".parse().unwrap(), None), Some(0));
        assert_eq!(idx.identify("2001:db8::1".parse().unwrap(), None), Some(1));
        assert_eq!(idx.identify("::ffff:10.1.2.3".parse().unwrap(), None), Some(1));
        assert_eq!(idx.identify("192.0.2.1".parse().unwrap(), Some(b"bob")), Some(0));
        assert_eq!(idx.identify("192.0.2.1".parse().unwrap(), Some(b"eve")), None);
        assert_eq!(idx.identify("192.0.2.1".parse().unwrap(), None), None);
    }
}
