//! Tests of the unsigned state machine: versions, ownership, caps.

use super::*;

const ME: NodeId = NodeId(1);
const O: NodeId = NodeId(7);

fn limits() -> DiscoveryLimits {
    DiscoveryLimits {
        max_origins_per_link: 4,
        max_entries_per_origin: 8,
        max_entries_per_link: 12,
        max_update_bytes: 4096,
    }
}

fn route(link: LinkId) -> Option<Route> {
    Some(Route {
        link,
        shard: 0,
        via: NodeId(99),
        hops: 2,
    })
}

fn op(announce: bool, name: &str) -> ServiceOp {
    ServiceOp {
        announce,
        port: 80,
        env: Bytes::new(),
        name: Bytes::copy_from_slice(name.as_bytes()),
    }
}

fn upd(origin: NodeId, full: bool, base: u64, version: u64, ops: Vec<ServiceOp>) -> ServicesUpdate {
    ServicesUpdate {
        origin: origin.0,
        base_version: base,
        version,
        full,
        hops: 1,
        ops,
        request: false,
        signed: None,
    }
}

fn names(d: &Discovery, o: NodeId) -> Vec<String> {
    let mut v: Vec<String> = d
        .entries_of(o)
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    v.sort();
    v
}

fn requests(out: &Out) -> Vec<(LinkId, u64)> {
    out.sends
        .iter()
        .filter_map(|s| match s {
            Send::To(l, Frame::Services(u)) if u.request => Some((*l, u.origin)),
            _ => None,
        })
        .collect()
}

#[test]
fn full_then_diffs_in_order_and_out_of_order() {
    let mut d = Discovery::new(ME, true, true, limits(), None, 1);
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(O, true, 0, 3, vec![op(true, "a")]),
        route(10),
        &mut out,
    );
    assert_eq!(names(&d, O), ["a"]);
    assert_eq!(out.seen.len(), 1);
    // Forwarded to every other link.
    assert!(out.sends.iter().any(|s| matches!(
        s,
        Send::All {
            except: Some(10),
            ..
        }
    )));
    // The next diff applies.
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(O, false, 3, 4, vec![op(true, "b")]),
        route(10),
        &mut out,
    );
    assert_eq!(names(&d, O), ["a", "b"]);
    // A diff from the future (a gap) is not applied: REQUEST goes back.
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(O, false, 6, 7, vec![op(true, "c")]),
        route(10),
        &mut out,
    );
    assert_eq!(names(&d, O), ["a", "b"]);
    assert_eq!(requests(&out), [(10, O.0)]);
    // A duplicate is ignored and not forwarded.
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(O, false, 3, 4, vec![op(true, "b")]),
        route(10),
        &mut out,
    );
    assert!(out.sends.is_empty() && out.seen.is_empty());
    // The full answer repairs the gap, withdrawing what is gone.
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(O, true, 0, 7, vec![op(true, "b"), op(true, "c")]),
        route(10),
        &mut out,
    );
    assert_eq!(names(&d, O), ["b", "c"]);
    assert_eq!(out.seen.iter().filter(|s| !s.up).count(), 1);
    // A diff for an origin never seen in full asks for it.
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(NodeId(8), false, 1, 2, vec![op(true, "x")]),
        route(10),
        &mut out,
    );
    assert_eq!(requests(&out), [(10, 8)]);
    assert_eq!(d.origin_count(), 1);
}

#[test]
fn only_the_route_to_an_origin_speaks_for_it() {
    let mut d = Discovery::new(ME, true, true, limits(), None, 1);
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(O, true, 0, 3, vec![op(true, "a")]),
        route(10),
        &mut out,
    );
    // Link 11 is not our route to O: it cannot erase, replace or add.
    let mut out = Out::default();
    d.on_update(11, &upd(O, true, 0, u64::MAX, vec![]), route(10), &mut out);
    d.on_update(
        11,
        &upd(O, false, 3, 4, vec![op(true, "evil")]),
        route(10),
        &mut out,
    );
    assert_eq!(names(&d, O), ["a"]);
    assert!(out.sends.is_empty());
    // No route at all: ignored.
    d.on_update(
        10,
        &upd(NodeId(9), true, 0, 1, vec![op(true, "z")]),
        None,
        &mut out,
    );
    assert_eq!(d.origin_count(), 1);
    // Our own id is never learned.
    d.on_update(
        10,
        &upd(ME, true, 0, 9, vec![op(true, "me")]),
        route(10),
        &mut out,
    );
    assert_eq!(d.origin_count(), 1);
}

#[test]
fn a_diff_cannot_jump_versions() {
    let mut d = Discovery::new(ME, true, true, limits(), None, 1);
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(O, true, 0, 3, vec![op(true, "a")]),
        route(10),
        &mut out,
    );
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(O, false, 3, u64::MAX, vec![op(false, "a")]),
        route(10),
        &mut out,
    );
    assert_eq!(names(&d, O), ["a"]);
    assert_eq!(requests(&out), [(10, O.0)]);
}

#[test]
fn route_moves_resync_and_unreachable_origins_go() {
    let mut d = Discovery::new(ME, true, true, limits(), None, 1);
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(O, true, 0, 5, vec![op(true, "a")]),
        route(10),
        &mut out,
    );
    // The route moves to link 11: entries stay, link 11 is asked for the whole.
    let mut out = Out::default();
    d.on_route(O, route(11), &mut out);
    assert_eq!(names(&d, O), ["a"]);
    assert_eq!(requests(&out), [(11, O.0)]);
    // Its answer replaces the entries even with a lower version (the origin
    // restarted, or the old path lied).
    let mut out = Out::default();
    d.on_update(
        11,
        &upd(O, true, 0, 2, vec![op(true, "b")]),
        route(11),
        &mut out,
    );
    assert_eq!(names(&d, O), ["b"]);
    // Unreachable: everything about O goes.
    let mut out = Out::default();
    d.on_route(O, None, &mut out);
    assert_eq!(d.origin_count(), 0);
    assert_eq!(d.entry_count(), 0);
    assert_eq!(
        out.seen,
        [Seen {
            up: false,
            origin: O,
            entry: Entry::from_op(&op(true, "b"))
        }]
    );
    // A newly reachable node is asked for its services.
    let mut out = Out::default();
    d.on_route(NodeId(5), route(12), &mut out);
    assert_eq!(requests(&out), [(12, 5)]);
}

#[test]
fn caps_refuse_whole_updates() {
    let mut d = Discovery::new(ME, true, true, limits(), None, 1);
    let mut out = Out::default();
    // Too many entries for one origin.
    let many: Vec<_> = (0..9).map(|i| op(true, &format!("s{i}"))).collect();
    d.on_update(10, &upd(O, true, 0, 1, many), route(10), &mut out);
    assert_eq!(d.origin_count(), 0);
    assert_eq!(d.limit_hits, 1);
    // Origins per link.
    for i in 0..6u64 {
        d.on_update(
            10,
            &upd(NodeId(100 + i), true, 0, 1, vec![op(true, "x")]),
            route(10),
            &mut out,
        );
    }
    assert_eq!(d.origin_count(), 4);
    assert_eq!(d.limit_hits, 3);
    // Entries per link: 4 held, 8 more fit, not 9.
    let eight: Vec<_> = (0..8).map(|i| op(true, &format!("e{i}"))).collect();
    d.on_update(
        10,
        &upd(NodeId(100), false, 1, 2, eight.clone()),
        route(10),
        &mut out,
    );
    assert_eq!(d.limit_hits, 4, "1 + 8 entries for one origin");
    d.on_update(
        10,
        &upd(NodeId(100), true, 0, 3, eight[..7].to_vec()),
        route(10),
        &mut out,
    );
    assert_eq!(d.entry_count(), 10);
    d.on_update(
        10,
        &upd(NodeId(101), true, 0, 3, eight[..4].to_vec()),
        route(10),
        &mut out,
    );
    assert_eq!(d.limit_hits, 5);
    // Another link has its own budget.
    d.on_update(
        11,
        &upd(NodeId(200), true, 0, 1, vec![op(true, "y")]),
        route(11),
        &mut out,
    );
    assert_eq!(d.origin_count(), 5);
    // Oversized update.
    let big = ServiceOp {
        name: Bytes::from(vec![b'n'; 5000]),
        ..op(true, "")
    };
    d.on_update(
        11,
        &upd(NodeId(201), true, 0, 1, vec![big]),
        route(11),
        &mut out,
    );
    assert_eq!(d.limit_hits, 6);
}

#[test]
fn an_origin_built_by_diffs_still_fits_one_frame() {
    let mut d = Discovery::new(
        ME,
        true,
        true,
        DiscoveryLimits {
            max_update_bytes: 100,
            ..limits()
        },
        None,
        1,
    );
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(
            O,
            true,
            0,
            1,
            vec![op(true, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")],
        ),
        route(10),
        &mut out,
    );
    let names = [
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "cccccccccccccccccccccccccccccc",
        "dddddddddddddddddddddddddddddd",
    ];
    for (v, name) in (1..).zip(names) {
        d.on_update(
            10,
            &upd(O, false, v, v + 1, vec![op(true, name)]),
            route(10),
            &mut out,
        );
    }
    // Each entry is 37 bytes: two fit in 100, the third diff is refused (and the
    // one after it, built on the refused version, is a gap: asked for in full).
    assert_eq!(d.entries_of(O).count(), 2);
    assert_eq!(d.limit_hits, 1);
    // Withdrawing makes room again.
    d.on_update(
        10,
        &upd(
            O,
            false,
            2,
            3,
            vec![op(false, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")],
        ),
        route(10),
        &mut out,
    );
    d.on_update(
        10,
        &upd(
            O,
            false,
            3,
            4,
            vec![op(true, "dddddddddddddddddddddddddddddd")],
        ),
        route(10),
        &mut out,
    );
    assert_eq!(d.entries_of(O).count(), 2);
    d.check(|_| Some(10));
}

#[test]
fn a_route_move_respects_the_new_links_caps() {
    let mut d = Discovery::new(
        ME,
        true,
        true,
        DiscoveryLimits {
            max_origins_per_link: 1,
            ..limits()
        },
        None,
        1,
    );
    let mut out = Out::default();
    d.on_update(
        10,
        &upd(O, true, 0, 1, vec![op(true, "a")]),
        route(10),
        &mut out,
    );
    d.on_update(
        11,
        &upd(NodeId(3), true, 0, 1, vec![op(true, "b")]),
        route(11),
        &mut out,
    );
    // O's route moves to link 11, which already holds its one origin.
    let mut out = Out::default();
    d.on_route(O, route(11), &mut out);
    assert_eq!(d.origin_count(), 1);
    assert_eq!(requests(&out), [(11, O.0)]);
    d.check(|_| Some(11));
}

#[test]
fn local_changes_are_versioned_diffs_and_requests_answered() {
    let mut d = Discovery::new(ME, true, false, limits(), None, 1);
    let e = Entry::from_op(&op(true, "svc"));
    let mut out = Out::default();
    d.local_change(true, e.clone(), &mut out);
    d.local_change(true, e.clone(), &mut out); // no change, no version
    match &out.sends[..] {
        [Send::All {
            frame: Frame::Services(u),
            except: None,
        }] => {
            assert_eq!((u.base_version, u.version, u.full), (1, 2, false));
        }
        other => panic!("{other:?}"),
    }
    let mut out = Out::default();
    d.on_update(
        3,
        &ServicesUpdate {
            request: true,
            ..upd(ME, false, 0, 0, vec![])
        },
        None,
        &mut out,
    );
    match &out.sends[..] {
        [Send::To(3, Frame::Services(u))] => {
            assert!(u.full && u.ops.len() == 1 && u.version == 2)
        }
        other => panic!("{other:?}"),
    }
    // A non-router neither forwards nor answers for others.
    let mut out = Out::default();
    d.on_update(
        3,
        &upd(O, true, 0, 1, vec![op(true, "a")]),
        route(3),
        &mut out,
    );
    assert!(out.sends.is_empty());
    assert_eq!(names(&d, O), ["a"]);
}
