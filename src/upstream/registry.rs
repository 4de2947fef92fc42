//! The upstream state that lasts across configurations: one [`Node`] per address and one retry
//! budget per pool name. Each configuration is compiled against it ([`Registry::reconcile`]) into
//! that configuration's [`Upstreams`]: an address that stays keeps its node (health, ejection,
//! estimate, figures), a new one starts fresh, and a removed one is forgotten here while requests
//! still holding it finish on it. A pool that stays keeps its budget unless the budget's settings
//! changed, and a route that stays keeps its lanes (its health on each upstream) by route name and
//! address.

use super::budget::RetryBudget;
use super::lane::Lane;
use super::node::Node;
use super::{Pool, RouteLanes, Settings, Upstreams};
use crate::ids::{PoolId, UpstreamId};
use crate::names::Interner;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// A lane is known by its route's name and its upstream's address.
type LaneKey = (Arc<str>, SocketAddr);

/// Distinct upstream addresses a process remembers names for (journey steps); see `crate::names`.
const MAX_ADDRESSES: usize = u16::MAX as usize - 1;

pub struct Registry {
    base: Instant,
    nodes: Mutex<HashMap<SocketAddr, Arc<Node>>>,
    budgets: Mutex<HashMap<Arc<str>, Arc<Mutex<RetryBudget>>>>,
    lanes: Mutex<HashMap<LaneKey, Arc<Lane>>>,
    addrs: Interner<SocketAddr>,
}

/// One route of a configuration, as the registry needs it.
pub struct RouteSpec<'a> {
    pub name: &'a str,
    /// The upstreams it can use (its pool's and its reserved pool's), as indices into the
    /// configuration's distinct addresses.
    pub members: Vec<UpstreamId>,
}

/// One pool of a configuration, as the registry needs it.
pub struct PoolSpec<'a> {
    pub name: &'a str,
    /// Indices into the configuration's distinct addresses.
    pub members: &'a [UpstreamId],
    /// Whether the pool runs active health checks on its members.
    pub checked: bool,
}

impl Registry {
    pub fn new(now: Instant) -> Self {
        Registry {
            base: now,
            nodes: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            lanes: Mutex::new(HashMap::new()),
            addrs: Interner::new(MAX_ADDRESSES),
        }
    }

    /// Interned upstream addresses, as journey steps refer to them.
    pub fn addrs(&self) -> &Interner<SocketAddr> {
        &self.addrs
    }

    /// The node of `addr`, if the current configuration has it.
    pub fn node(&self, addr: SocketAddr) -> Option<Arc<Node>> {
        self.nodes.lock().get(&addr).cloned()
    }

    /// Compiles one configuration's pools and routes against what is known: `addrs` are its
    /// distinct upstream addresses (an [`UpstreamId`] is a position in it), `pools` its pools and
    /// `routes` its routes, in order.
    pub fn reconcile(
        &self,
        addrs: &[SocketAddr],
        pools: &[PoolSpec<'_>],
        routes: &[RouteSpec<'_>],
        settings: Settings,
        now: Instant,
    ) -> Upstreams {
        let mut known = self.nodes.lock();
        let nodes: Vec<Arc<Node>> = addrs
            .iter()
            .map(|a| {
                known.get(a).cloned().unwrap_or_else(|| {
                    let label = self.addrs.intern(a).unwrap_or(u16::MAX);
                    Arc::new(Node::new(*a, label, now))
                })
            })
            .collect();
        let names: Vec<Arc<str>> = pools.iter().map(|p| Arc::from(p.name)).collect();
        let mut pools_of = vec![Vec::new(); nodes.len()];
        for (pi, p) in pools.iter().enumerate() {
            for &u in p.members {
                if let Some(v) = pools_of.get_mut(u as usize) {
                    v.push(pi as PoolId);
                }
            }
        }
        for (u, node) in nodes.iter().enumerate() {
            let checking: Vec<Arc<str>> = pools_of[u]
                .iter()
                .filter(|p| pools[**p as usize].checked)
                .map(|p| names[*p as usize].clone())
                .collect();
            node.set_checked_by(&checking);
        }
        *known = nodes.iter().map(|n| (n.addr(), n.clone())).collect();
        drop(known);

        let mut budgets = self.budgets.lock();
        let pools: Vec<Pool> = pools
            .iter()
            .zip(&names)
            .map(|(p, name)| {
                let budget = budgets
                    .get(name)
                    .filter(|b| *b.lock().settings() == settings.budget)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Mutex::new(RetryBudget::new(settings.budget, now)))
                    });
                Pool {
                    name: name.clone(),
                    members: p.members.to_vec(),
                    budget,
                }
            })
            .collect();
        *budgets = pools
            .iter()
            .map(|p| (p.name.clone(), p.budget.clone()))
            .collect();
        drop(budgets);

        let mut lanes = self.lanes.lock();
        let mut kept = HashMap::new();
        let routes: Vec<RouteLanes> = routes
            .iter()
            .map(|r| {
                let name: Arc<str> = Arc::from(r.name);
                let mut by_upstream: Vec<Option<Arc<Lane>>> = vec![None; addrs.len()];
                for &u in &r.members {
                    let Some(&addr) = addrs.get(u as usize) else {
                        continue;
                    };
                    let key = (name.clone(), addr);
                    let lane = lanes
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Lane::new(name.clone(), addr, now)));
                    kept.insert(key, lane.clone());
                    by_upstream[u as usize] = Some(lane);
                }
                RouteLanes {
                    members: r.members.clone(),
                    lanes: by_upstream,
                }
            })
            .collect();
        *lanes = kept;
        Upstreams {
            settings,
            base: self.base,
            nodes,
            pools,
            pools_of,
            routes,
        }
    }
}
