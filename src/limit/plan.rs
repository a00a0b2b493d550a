//! Which limits apply to a new call: built once per configuration, then each INVITE gets its
//! list of demands (server, customer, ip, user, route, did) and, per candidate gateway in
//! route order, the carrier and gateway demands. Names are prebuilt so planning a call
//! allocates only the demand list.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::customers::CustomerId;
use super::{Demand, KeyName, LimitKey, Scope};
use crate::config::{CarrierId, Config, Pair};
use crate::peer::Peer;

/// A gateway a call may go to, with the egress demands it adds.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub carrier: CarrierId,
    pub gateway: usize,
    pub peer: Peer,
    pub demands: [Demand; 2],
}

/// Every limit a call is subject to.
#[derive(Debug, Clone)]
pub struct CallPlan {
    /// Server, customer, ip, user, route, did: must all fit.
    pub common: Vec<Demand>,
    /// Gateways in route order; the first whose carrier and gateway have room is used.
    pub candidates: Vec<Candidate>,
}

/// Which route table and entry routed the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRef {
    /// `None`: the global table; `Some(c)`: customer `c`'s own routes.
    pub customer: Option<CustomerId>,
    pub index: usize,
}

#[derive(Debug, Clone)]
struct Limited {
    key: LimitKey,
    limits: Pair,
    paced: bool,
}

impl Limited {
    fn new(key: LimitKey, limits: Pair) -> Self {
        Self { key, limits, paced: false }
    }

    fn demand(&self) -> Demand {
        demand(self.key.clone(), self.limits, self.paced)
    }
}

fn demand(key: LimitKey, p: Pair, paced: bool) -> Demand {
    Demand {
        key,
        cps: p.cps,
        cpm: p.cpm,
        channels: p.channels,
        paced: paced && p.cps.is_some(),
        shadow: p.shadow,
    }
}

/// A customer's own limits, its source/user defaults, and its ancestors (nearest first).
#[derive(Debug, Clone)]
struct CustomerPlan {
    limited: Limited,
    per_ip: Pair,
    per_user: Pair,
    ancestors: Vec<CustomerId>,
}

#[derive(Debug, Clone)]
pub struct Planner {
    server: Limited,
    per_ip: Pair,
    per_user: Pair,
    customers: Vec<CustomerPlan>,
    global_routes: Vec<Limited>,
    customer_routes: Vec<Vec<Limited>>,
    carriers: Vec<Limited>,
    gateways: Vec<Vec<(Limited, Peer)>>,
    dids: HashMap<String, Limited>,
    carrier_routes: Vec<Vec<CarrierId>>,
    customer_route_carriers: Vec<Vec<Vec<CarrierId>>>,
}

fn name(s: &str) -> Arc<str> {
    Arc::from(s)
}

impl Planner {
    pub fn new(config: &Config) -> Self {
        let route_key = |customer: Option<&str>, prefix: &str| match customer {
            Some(c) => name(&format!("{c}/{prefix}")),
            None => name(prefix),
        };
        Self {
            server: Limited::new(LimitKey::server(), config.limits.limits),
            per_ip: config.limits.per_ip,
            per_user: config.limits.per_user,
            customers: config
                .customers
                .iter()
                .map(|c| CustomerPlan {
                    limited: Limited::new(LimitKey::text(Scope::Customer, &name(&c.name)), c.limits),
                    per_ip: c.per_ip,
                    per_user: c.per_user,
                    ancestors: c.ancestors.clone(),
                })
                .collect(),
            global_routes: config
                .routes
                .routes
                .iter()
                .map(|r| Limited::new(LimitKey::text(Scope::Route, &route_key(None, &r.prefix)), r.limits))
                .collect(),
            customer_routes: config
                .customers
                .iter()
                .map(|c| {
                    c.routes.as_ref().map_or_else(Vec::new, |t| {
                        t.routes
                            .iter()
                            .map(|r| {
                                let key = LimitKey::text(Scope::Route, &route_key(Some(&c.name), &r.prefix));
                                Limited::new(key, r.limits)
                            })
                            .collect()
                    })
                })
                .collect(),
            carriers: config
                .carriers
                .iter()
                .map(|c| Limited {
                    key: LimitKey::text(Scope::Carrier, &name(&c.name)),
                    limits: c.limits,
                    paced: c.pacing,
                })
                .collect(),
            gateways: config
                .carriers
                .iter()
                .map(|c| {
                    c.gateways
                        .iter()
                        .map(|g| {
                            let limited = Limited {
                                key: LimitKey::text(Scope::Gateway, &name(&g.uri)),
                                limits: c.gateway_limits,
                                paced: c.pacing,
                            };
                            (limited, Peer { transport: g.transport, addr: g.addr, conn: None })
                        })
                        .collect()
                })
                .collect(),
            dids: config
                .dids
                .iter()
                .map(|d| {
                    (d.number.clone(), Limited::new(LimitKey::text(Scope::Did, &name(&d.number)), d.limits))
                })
                .collect(),
            carrier_routes: config.routes.routes.iter().map(|r| r.carriers.clone()).collect(),
            customer_route_carriers: config
                .customers
                .iter()
                .map(|c| {
                    c.routes
                        .as_ref()
                        .map_or_else(Vec::new, |t| t.routes.iter().map(|r| r.carriers.clone()).collect())
                })
                .collect(),
        }
    }

    /// The demands of a new call from `ip` (digest `user`, if any) to `number`, routed by
    /// `route`, for `customer` (if recognised).
    pub fn plan(
        &self,
        customer: Option<CustomerId>,
        ip: IpAddr,
        user: Option<&[u8]>,
        route: RouteRef,
        number: &[u8],
    ) -> CallPlan {
        let mut common = Vec::with_capacity(6);
        common.push(self.server.demand());
        let (per_ip, per_user) = match customer.and_then(|c| self.customers.get(c)) {
            Some(c) => {
                // A sub-account's call fits its own limits and every ancestor's.
                common.push(c.limited.demand());
                for a in c.ancestors.iter().filter_map(|&a| self.customers.get(a)) {
                    common.push(a.limited.demand());
                }
                (c.per_ip, c.per_user)
            }
            None => (self.per_ip, self.per_user),
        };
        common.push(demand(LimitKey::ip(ip), per_ip, false));
        if let Some(user) = user.and_then(|u| std::str::from_utf8(u).ok()).filter(|u| !u.is_empty()) {
            let key = LimitKey { scope: Scope::User, name: KeyName::Text(name(user)) };
            common.push(demand(key, per_user, false));
        }
        let (route_limited, carriers) = match route.customer {
            Some(c) => (
                self.customer_routes.get(c).and_then(|r| r.get(route.index)),
                self.customer_route_carriers.get(c).and_then(|r| r.get(route.index)),
            ),
            None => (self.global_routes.get(route.index), self.carrier_routes.get(route.index)),
        };
        if let Some(r) = route_limited {
            common.push(r.demand());
        }
        if let Some(did) = std::str::from_utf8(number).ok().and_then(|n| self.dids.get(n)) {
            common.push(did.demand());
        }
        let mut candidates = Vec::new();
        for &carrier in carriers.map(Vec::as_slice).unwrap_or_default() {
            let (Some(c), Some(gws)) = (self.carriers.get(carrier), self.gateways.get(carrier)) else {
                continue;
            };
            for (gateway, (g, peer)) in gws.iter().enumerate() {
                candidates.push(Candidate {
                    carrier,
                    gateway,
                    peer: *peer,
                    demands: [c.demand(), g.demand()],
                });
            }
        }
        CallPlan { common, candidates }
    }
}
