use super::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use AttemptResult::{ConnectFailed, Failed, Ok as Fine};

fn setup(n: usize, outlier: OutlierSettings) -> (Upstreams, Instant) {
    let addrs: Vec<std::net::SocketAddr> = (0..n)
        .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
        .collect();
    let members: Vec<UpstreamId> = (0..n as UpstreamId).collect();
    let now = Instant::now();
    let settings = Settings {
        outlier,
        ..Default::default()
    };
    let pools = [PoolSpec {
        name: "p",
        members: &members,
        checked: true,
    }];
    (
        Registry::new(now).reconcile(&addrs, &pools, &[], settings, now),
        now,
    )
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

/// Feeds `k` results of `latency` from `u`.
fn feed(
    up: &Upstreams,
    u: UpstreamId,
    k: usize,
    r: AttemptResult,
    latency: Duration,
    now: Instant,
) -> Vec<HealthEvent> {
    (0..k)
        .filter_map(|_| up.observe(u, r, latency, now, &mut rng()))
        .collect()
}

/// A non-idempotent pick: never a sample, so distributions show balancing alone.
fn pick(
    up: &Upstreams,
    protected: bool,
    exclude: &[UpstreamId],
    now: Instant,
    r: &mut SmallRng,
) -> Option<Pick> {
    up.pick(0, None, protected, false, exclude, now, r)
}

#[test]
fn p2c_steers_away_from_a_slow_upstream() {
    let (up, t0) = setup(3, OutlierSettings::default());
    for u in 0..3 {
        feed(&up, u, 5, Fine, if u == 2 { ms(300) } else { ms(1) }, t0);
    }
    let mut r = rng();
    let mut counts = [0; 3];
    for _ in 0..3000 {
        counts[pick(&up, false, &[], t0, &mut r).unwrap().upstream as usize] += 1;
    }
    // Two distinct candidates out of three: the slow one always loses its comparison.
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!(counts[0] > 1200 && counts[1] > 1200, "{counts:?}");
}

#[test]
fn an_idle_upstream_gets_one_sample_per_interval_from_idempotent_traffic() {
    let (up, t0) = setup(3, OutlierSettings::default());
    for u in 0..3 {
        feed(&up, u, 5, Fine, if u == 2 { ms(300) } else { ms(1) }, t0);
    }
    let mut r = rng();
    let mut samples = 0;
    // Two seconds of idempotent traffic, one request per millisecond.
    for i in 0..2000 {
        let now = t0 + ms(i);
        let p = up.pick(0, None, false, true, &[], now, &mut r).unwrap();
        if p.upstream == 2 {
            assert!(p.sample);
            samples += 1;
        }
    }
    // At 500, 1000 and 1500 ms: one every sample_interval.
    assert_eq!(samples, 3);
    // Protected traffic is never a sample.
    let (up, t0) = setup(2, OutlierSettings::default());
    feed(&up, 1, 1, Fine, ms(300), t0);
    for i in 0..100 {
        assert_eq!(
            up.pick(0, None, true, true, &[], t0 + ms(600 * i), &mut r)
                .unwrap()
                .upstream,
            0
        );
    }
}

#[test]
fn in_flight_requests_spread_load_and_are_released() {
    let (up, t0) = setup(2, OutlierSettings::default());
    feed(&up, 0, 1, Fine, ms(10), t0);
    feed(&up, 1, 1, Fine, ms(10), t0);
    let mut r = rng();
    let held: Vec<Pick> = (0..4)
        .map(|_| pick(&up, false, &[], t0, &mut r).unwrap())
        .collect();
    let on0 = held.iter().filter(|p| p.upstream == 0).count();
    assert_eq!(
        on0, 2,
        "equal latency: in-flight counts alternate the choice"
    );
    assert_eq!(up.view(0, t0).in_flight, 2);
    drop(held);
    assert_eq!(up.view(0, t0).in_flight, 0);
    assert_eq!(up.view(1, t0).in_flight, 0);
}

#[test]
fn protected_traffic_gets_the_cheapest_and_exclusions_are_honoured() {
    let (up, t0) = setup(3, OutlierSettings::default());
    feed(&up, 0, 3, Fine, ms(20), t0);
    feed(&up, 1, 3, Fine, ms(2), t0);
    feed(&up, 2, 3, Fine, ms(8), t0);
    let mut r = rng();
    for _ in 0..50 {
        assert_eq!(pick(&up, true, &[], t0, &mut r).unwrap().upstream, 1);
    }
    assert_eq!(pick(&up, true, &[1], t0, &mut r).unwrap().upstream, 2);
    assert!(pick(&up, true, &[0, 1, 2], t0, &mut r).is_none());
}

#[test]
fn protected_traffic_does_not_trust_an_idle_decay() {
    let (up, t0) = setup(2, OutlierSettings::default());
    feed(&up, 0, 3, Fine, ms(300), t0);
    feed(&up, 1, 3, Fine, ms(2), t0);
    let later = t0 + Duration::from_secs(60);
    // The fast one keeps serving; the slow one has been idle for a minute.
    feed(&up, 1, 3, Fine, ms(2), later);
    let mut r = rng();
    // Its decayed estimate (300 ms x e^-6, under 1 ms) looks cheaper than the busy one's 2 ms...
    assert!(up.cost(0, later, false) < up.cost(1, later, false));
    // ...but protected traffic goes by what was last seen.
    assert_eq!(pick(&up, true, &[], later, &mut r).unwrap().upstream, 1);
}

#[test]
fn consecutive_failures_eject_then_probes_readmit() {
    let (up, t0) = setup(3, OutlierSettings::default());
    // Reported once, not on every failure that follows.
    let ev = feed(&up, 1, 8, Failed, ms(1), t0);
    let until = match ev.as_slice() {
        [HealthEvent::Ejected {
            upstream: 1,
            route: None,
            reason: Reason::ConsecutiveFailures { count: 5 },
            until,
        }] => *until,
        other => panic!("{other:?}"),
    };
    assert!(until >= t0 + Duration::from_secs(30) && until <= t0 + Duration::from_secs(33));
    let mut r = rng();
    for _ in 0..200 {
        assert_ne!(
            up.pick(0, None, false, true, &[], t0, &mut r)
                .unwrap()
                .upstream,
            1
        );
    }
    assert_eq!(up.view(1, t0).state, "ejected");

    // Time's up: probing. Ordinary traffic probes it, one request at a time; protected never does.
    assert_eq!(
        up.sweep(until, &mut r),
        vec![HealthEvent::Probing {
            upstream: 1,
            route: None
        }]
    );
    assert_ne!(pick(&up, true, &[], until, &mut r).unwrap().upstream, 1);
    let probe = pick(&up, false, &[], until, &mut r).unwrap();
    assert!(probe.probe && probe.upstream == 1);
    let other = pick(&up, false, &[], until, &mut r).unwrap();
    assert_ne!(other.upstream, 1, "one probe at a time");
    drop((probe, other));
    for i in 0..3 {
        let p = pick(&up, false, &[], until, &mut r).unwrap();
        assert_eq!(p.upstream, 1);
        let ev = up.observe(1, Fine, ms(1), until, &mut r);
        assert_eq!(
            ev,
            (i == 2).then_some(HealthEvent::Restored {
                upstream: 1,
                route: None
            })
        );
    }
    assert_eq!(up.view(1, until).state, "healthy");
}

#[test]
fn a_refused_connection_ejects_and_a_failed_probe_ejects_for_longer() {
    let (up, t0) = setup(3, OutlierSettings::default());
    let ev = feed(&up, 0, 1, ConnectFailed, ms(1), t0);
    assert!(
        matches!(
            ev[..],
            [HealthEvent::Ejected {
                upstream: 0,
                reason: Reason::ConnectFailures { count: 1 },
                ..
            }]
        ),
        "{ev:?}"
    );
    let mut r = rng();
    let t1 = t0 + Duration::from_secs(34);
    up.sweep(t1, &mut r);
    let _probe = pick(&up, false, &[], t1, &mut r).unwrap();
    match up.observe(0, ConnectFailed, ms(1), t1, &mut r) {
        Some(HealthEvent::Ejected {
            reason: Reason::FailedProbe,
            until,
            ..
        }) => {
            assert!(
                until - t1 >= Duration::from_secs(60),
                "second ejection lasts 2 x base"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn never_ejects_more_than_the_pool_can_spare() {
    // 10% of 3 rounds down to 0: at least one may go, not two.
    let (up, t0) = setup(3, OutlierSettings::default());
    assert!(matches!(
        feed(&up, 0, 5, Failed, ms(1), t0)[..],
        [HealthEvent::Ejected { .. }]
    ));
    // Reported once, not on every failure that follows.
    let ev = feed(&up, 1, 8, Failed, ms(1), t0);
    assert!(
        matches!(
            ev[..],
            [HealthEvent::EjectionSuppressed { upstream: 1, .. }]
        ),
        "{ev:?}"
    );
    assert_eq!(up.view(1, t0).state, "healthy");
}

#[test]
fn panic_mode_uses_the_whole_pool_when_too_few_are_healthy() {
    let (up, t0) = setup(3, OutlierSettings::default());
    let mut r = rng();
    // Active checks take two of three down: 1 healthy of 3 is under 50%.
    for member in [0, 1] {
        for _ in 0..3 {
            up.record_check(0, member, false, 2, 3);
        }
    }
    assert!(!up.view(0, t0).active_up);
    let mut seen = [0; 3];
    for _ in 0..300 {
        let p = pick(&up, false, &[], t0, &mut r).unwrap();
        assert!(p.panic);
        seen[p.upstream as usize] += 1;
    }
    assert!(seen.iter().all(|c| *c > 0), "{seen:?}");
    // One back up: 2 of 3 healthy, no more panic, and the down one gets nothing.
    for _ in 0..2 {
        up.record_check(0, 0, true, 2, 3);
    }
    for _ in 0..300 {
        let p = pick(&up, false, &[], t0, &mut r).unwrap();
        assert!(!p.panic && p.upstream != 1);
    }
}

#[test]
fn failure_rate_and_latency_rules_eject() {
    let (up, t0) = setup(3, OutlierSettings::default());
    let mut r = rng();
    // Upstream 0: a long healthy history, then half its answers fail, never five in a row.
    feed(&up, 0, 100, Fine, ms(1), t0);
    let ev: Vec<_> = (0..20)
        .filter_map(|i| up.observe(0, if i % 2 == 0 { Failed } else { Fine }, ms(1), t0, &mut r))
        .collect();
    assert!(
        matches!(
            ev[..],
            [HealthEvent::Ejected {
                upstream: 0,
                reason: Reason::FailureRate { .. },
                ..
            }]
        ),
        "{ev:?}"
    );

    // A separate pool: upstream 2 answers a route fine but 300 ms slower than the others. Judged
    // on that route, where all three answer the same requests.
    let (up, t0) = setup_routes(OutlierSettings::default());
    feed_on(&up, 0, 0, 20, Fine, ms(2), t0);
    feed_on(&up, 0, 1, 20, Fine, ms(3), t0);
    feed_on(&up, 0, 2, 20, Fine, ms(302), t0);
    let ev = up.sweep(t0, &mut r);
    match ev[..] {
        [HealthEvent::Ejected {
            upstream: 2,
            route: Some(0),
            reason:
                Reason::Latency {
                    fastest_ms,
                    peers_ms,
                },
            ..
        }] => {
            assert!((fastest_ms - 302.0).abs() < 1.0 && peers_ms < 4.0);
        }
        _ => panic!("{ev:?}"),
    }
}

#[test]
fn a_route_that_mixes_fast_and_slow_requests_ejects_nobody_whose_answers_are_sometimes_fast() {
    // One route, two kinds of request: a 1 ms profile and a 1 s export, on every upstream.
    // Upstream 0 happened to get mostly exports, so its mean is far above its peers'; but it
    // answered a profile fast among its latest, so it is no slower than they are.
    let (up, t0) = setup_routes(OutlierSettings::default());
    let mut r = rng();
    for (u, exports_per_profile) in [(0, 4), (1, 1), (2, 1)] {
        for _ in 0..4 {
            feed_on(&up, 0, u, exports_per_profile, Fine, ms(1000), t0);
            feed_on(&up, 0, u, 1, Fine, ms(1), t0);
        }
    }
    assert_eq!(up.sweep(t0, &mut r), vec![], "nobody is an outlier");
    // Its latest five exports at 1 s are no outlier either (its peers' mean is about 0.7 s)...
    feed_on(&up, 0, 0, 5, Fine, ms(1000), t0);
    assert_eq!(up.sweep(t0, &mut r), vec![]);
    // ...but five answers at 3 s are: every latest answer over 3 x its peers'.
    feed_on(&up, 0, 0, 5, Fine, ms(3000), t0);
    let ev = up.sweep(t0, &mut r);
    assert!(
        matches!(
            ev[..],
            [HealthEvent::Ejected {
                upstream: 0,
                route: Some(0),
                reason: Reason::Latency { .. },
                ..
            }]
        ),
        "{ev:?}"
    );
}

#[test]
fn a_reconcile_keeps_what_is_known_by_address_and_starts_new_addresses_fresh() {
    let t0 = Instant::now();
    let reg = Registry::new(t0);
    let a: std::net::SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let b: std::net::SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let c: std::net::SocketAddr = "127.0.0.1:9002".parse().unwrap();
    let both = [0, 1];
    let first = reg.reconcile(
        &[a, b],
        &[PoolSpec {
            name: "p",
            members: &both,
            checked: true,
        }],
        &[],
        Settings::default(),
        t0,
    );
    // b is ejected and fails its checks; a pick on a is in flight.
    feed(&first, 1, 1, ConnectFailed, ms(1), t0);
    assert!(!first.serving(1));
    for _ in 0..3 {
        first.record_check(0, 1, false, 2, 3);
    }
    let held = pick(&first, false, &[1], t0, &mut rng()).unwrap();
    assert_eq!(held.upstream, 0);
    // The next configuration lists c before b, drops a, and the pool no longer checks.
    let two = [0, 1];
    let second = reg.reconcile(
        &[c, b],
        &[PoolSpec {
            name: "p",
            members: &two,
            checked: false,
        }],
        &[],
        Settings::default(),
        t0,
    );
    assert_eq!(second.find(b), Some(1));
    let v = second.view(1, t0);
    assert_eq!(
        (v.state, v.ejections),
        ("ejected", 1),
        "b kept its ejection"
    );
    assert!(
        v.active_up,
        "a pool that stopped checking holds nobody down"
    );
    assert!(second.serving(0), "c starts fresh");
    assert!(reg.node(a).is_none(), "a is forgotten");
    // The request that held a still finishes on it.
    assert_eq!(first.node(0).in_flight(), 1);
    drop(held);
    assert_eq!(first.node(0).in_flight(), 0);
    // The same address in a later configuration is the same node: b has one ejection on record.
    let third = reg.reconcile(
        &[b],
        &[PoolSpec {
            name: "q",
            members: &[0],
            checked: false,
        }],
        &[],
        Settings::default(),
        t0,
    );
    assert_eq!(third.view(0, t0).ejections, 1);
    assert!(Arc::ptr_eq(third.node(0), second.node(1)));
}

/// Three upstreams in one pool, used by two routes: 0 (the checkout) and 1 (the catalogue).
fn setup_routes(outlier: OutlierSettings) -> (Upstreams, Instant) {
    let addrs: Vec<std::net::SocketAddr> = (0..3)
        .map(|i| format!("127.0.0.1:{}", 9100 + i).parse().unwrap())
        .collect();
    let members: Vec<UpstreamId> = vec![0, 1, 2];
    let now = Instant::now();
    let settings = Settings {
        outlier,
        ..Default::default()
    };
    let pools = [PoolSpec {
        name: "p",
        members: &members,
        checked: false,
    }];
    let routes = [
        RouteSpec {
            name: "checkout",
            members: members.clone(),
        },
        RouteSpec {
            name: "catalogue",
            members: members.clone(),
        },
    ];
    (
        Registry::new(now).reconcile(&addrs, &pools, &routes, settings, now),
        now,
    )
}

/// Feeds `k` results of `latency` from `u` on route `r`; the health events.
fn feed_on(
    up: &Upstreams,
    r: RouteId,
    u: UpstreamId,
    k: usize,
    res: AttemptResult,
    latency: Duration,
    now: Instant,
) -> Vec<HealthEvent> {
    (0..k)
        .flat_map(|_| up.observe_on(Some(r), u, res, latency, now, &mut rng()))
        .collect()
}

#[test]
fn an_upstream_slow_on_one_route_is_avoided_there_and_used_elsewhere() {
    let (up, t0) = setup_routes(OutlierSettings::default());
    // Upstream 2 takes a second on the checkout and 1 ms on the catalogue, like the others.
    for u in 0..3 {
        feed_on(
            &up,
            0,
            u,
            10,
            Fine,
            if u == 2 { ms(1000) } else { ms(5) },
            t0,
        );
        feed_on(&up, 1, u, 200, Fine, ms(5), t0);
    }
    // As a whole it is not an outlier (its mean is mostly the catalogue's): the node stays in.
    let events = up.sweep(t0, &mut rng());
    let ejected: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            HealthEvent::Ejected {
                upstream, route, ..
            } => Some((*upstream, *route)),
            _ => None,
        })
        .collect();
    assert_eq!(ejected, vec![(2, Some(0))], "{events:?}");
    assert!(up.serving(2));
    assert!(!up.serving_on(Some(0), 2, t0));
    assert!(up.serving_on(Some(1), 2, t0));
    let mut r = rng();
    for i in 0..600 {
        let now = t0 + ms(i);
        let p = up.pick(0, Some(0), false, true, &[], now, &mut r).unwrap();
        assert_ne!(p.upstream, 2, "the checkout never goes there");
    }
    // The catalogue may (balancing weighs its cost), the checkout may not even as a last choice.
    let only_two = [0, 1];
    let p = up.pick(0, Some(1), false, false, &only_two, t0, &mut r);
    assert_eq!(p.map(|p| p.upstream), Some(2));
    assert!(up
        .pick(0, Some(0), false, false, &only_two, t0, &mut r)
        .is_none());
    let views = up.lane_views(2, t0);
    assert_eq!(views[0].state, "ejected");
    assert_eq!(views[1].state, "healthy");
}

#[test]
fn only_the_route_s_own_requests_probe_it_back_in_there() {
    let (up, t0) = setup_routes(OutlierSettings::default());
    for u in 0..3 {
        feed_on(
            &up,
            0,
            u,
            10,
            Fine,
            if u == 2 { ms(1000) } else { ms(5) },
            t0,
        );
        feed_on(&up, 1, u, 200, Fine, ms(5), t0);
    }
    up.sweep(t0, &mut rng());
    assert!(up.serving(2));
    assert!(!up.serving_on(Some(0), 2, t0));
    // The ejection (30 s and jitter) ends: probing on the checkout only.
    let later = t0 + Duration::from_secs(40);
    let probing: Vec<_> = up.sweep(later, &mut rng());
    assert!(
        probing.contains(&HealthEvent::Probing {
            upstream: 2,
            route: Some(0)
        }),
        "{probing:?}"
    );
    // Good answers on the catalogue say nothing about the checkout.
    feed_on(&up, 1, 2, 50, Fine, ms(5), later);
    assert!(!up.serving_on(Some(0), 2, later));
    // A catalogue request never takes the checkout's probe; a checkout request does, one at a time.
    let mut r = rng();
    let p1 = up
        .pick(0, Some(1), false, true, &[], later, &mut r)
        .unwrap();
    assert!(!p1.probe);
    let probe = up
        .pick(0, Some(0), false, true, &[], later, &mut r)
        .unwrap();
    assert!(probe.probe && probe.upstream == 2);
    let next = up
        .pick(0, Some(0), false, true, &[], later, &mut r)
        .unwrap();
    assert!(!(next.probe && next.upstream == 2), "one probe at a time");
    drop((probe, next));
    // Still slow on the checkout: the probe fails and it goes out for longer.
    let again = feed_on(&up, 0, 2, 1, Fine, ms(1000), later);
    assert!(
        matches!(
            again.as_slice(),
            [HealthEvent::Ejected {
                upstream: 2,
                route: Some(0),
                reason: Reason::FailedProbe,
                until
            }] if *until >= later + Duration::from_secs(60)
        ),
        "re-ejected for twice as long: {again:?}"
    );
    // Healed: three good checkout answers in a row re-admit it there.
    let healed = later + Duration::from_secs(200);
    up.sweep(healed, &mut rng());
    let back = feed_on(&up, 0, 2, 3, Fine, ms(5), healed);
    assert_eq!(
        back,
        vec![HealthEvent::Restored {
            upstream: 2,
            route: Some(0)
        }]
    );
    assert!(up.serving_on(Some(0), 2, healed));
}

#[test]
fn a_hung_upstream_is_avoided_as_soon_as_its_silence_passes_the_route_s_limit() {
    let (up, t0) = setup_routes(OutlierSettings::default());
    up.set_hung_after(0, Some(ms(1000)));
    let mut r = rng();
    // Two checkout requests go to upstream 1 and are never answered.
    let held: Vec<Pick> = (0..2)
        .map(|_| {
            up.pick(0, Some(0), false, false, &[0, 2], t0, &mut r)
                .unwrap()
        })
        .collect();
    assert!(held.iter().all(|p| p.upstream == 1));
    assert!(up.serving_on(Some(0), 1, t0 + ms(999)));
    let at = t0 + ms(1000);
    assert!(!up.serving_on(Some(0), 1, at), "avoided at once");
    assert!(
        up.serving_on(Some(1), 1, at),
        "the catalogue has not seen it hang"
    );
    for _ in 0..300 {
        assert_ne!(
            up.pick(0, Some(0), false, false, &[], at, &mut r)
                .unwrap()
                .upstream,
            1
        );
    }
    let events = up.sweep(at, &mut rng());
    assert!(
        events.iter().any(|e| matches!(
            e,
            HealthEvent::Ejected {
                upstream: 1,
                route: Some(0),
                reason: Reason::Hung { waiting: 2, .. },
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(up.lane_views(1, at)[0].state, "ejected");
}

#[test]
fn a_route_s_health_on_an_upstream_lasts_across_configurations_by_route_name() {
    let (addrs, members): (Vec<std::net::SocketAddr>, Vec<UpstreamId>) = (0..3)
        .map(|i| {
            (
                format!("127.0.0.1:{}", 9100 + i)
                    .parse::<std::net::SocketAddr>()
                    .unwrap(),
                i as UpstreamId,
            )
        })
        .unzip();
    let t0 = Instant::now();
    let reg = Registry::new(t0);
    let pools = [PoolSpec {
        name: "p",
        members: &members,
        checked: false,
    }];
    let spec = |name| RouteSpec {
        name,
        members: members.clone(),
    };
    let first = reg.reconcile(
        &addrs,
        &pools,
        &[spec("checkout"), spec("catalogue")],
        Settings::default(),
        t0,
    );
    for u in 0..3 {
        let slow = if u == 2 { ms(1000) } else { ms(5) };
        feed_on(&first, 0, u, 10, Fine, slow, t0);
    }
    first.sweep(t0, &mut rng());
    assert!(!first.serving_on(Some(0), 2, t0));
    // The next configuration puts the checkout second and adds a route: the checkout's lane
    // to upstream 2 is the same (still out), the new route's starts fresh.
    let second = reg.reconcile(
        &addrs,
        &pools,
        &[spec("search"), spec("checkout"), spec("catalogue")],
        Settings::default(),
        t0,
    );
    assert!(
        !second.serving_on(Some(1), 2, t0),
        "still out on the checkout"
    );
    assert!(
        second.serving_on(Some(0), 2, t0),
        "a new route starts fresh"
    );
    assert!(Arc::ptr_eq(
        first.lane(0, 2).unwrap(),
        second.lane(1, 2).unwrap()
    ));
    // A renamed route is another route.
    let third = reg.reconcile(
        &addrs,
        &pools,
        &[spec("checkout-v2")],
        Settings::default(),
        t0,
    );
    assert!(third.serving_on(Some(0), 2, t0));
}
