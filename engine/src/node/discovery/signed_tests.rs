//! Tests of signed discovery (PROTOCOL.md §11.5) with the test-double identity: real
//! origins and routers (`Discovery` instances) exchange frames, and an attacker on
//! the path forges, alters, injects and replays.
//!
//! Topology: origin O (7) —link 20— honest router R (2) —link 10— victim V (1). The
//! attacker speaks on link 10, V's route to O: the reverse-path check lets it
//! through, only signatures stop it.

use super::*;
use crate::node::auth::AuthError;
use crate::node::test_auth::TestAuth;

const SEED: u64 = 42;
const V: NodeId = NodeId(1);
const R: NodeId = NodeId(2);
const O: NodeId = NodeId(7);
const ATTACKER: NodeId = NodeId(66);
/// O's first version (a wall-clock time in the node).
const START: u64 = 1_000;

fn limits() -> DiscoveryLimits {
    DiscoveryLimits {
        max_origins_per_link: 4,
        max_entries_per_origin: 8,
        max_entries_per_link: 12,
        max_update_bytes: 4096,
    }
}

fn node_with(id: NodeId, forwards: bool, auth: TestAuth) -> Discovery {
    Discovery::new(id, true, forwards, limits(), Some(Arc::new(auth)), START)
}

fn node(id: NodeId, forwards: bool) -> Discovery {
    node_with(id, forwards, TestAuth::new(SEED, id.0))
}

fn route(link: LinkId) -> Option<Route> {
    Some(Route {
        link,
        shard: 0,
        via: R,
        hops: 2,
    })
}

fn svc(name: &str) -> Entry {
    Entry {
        env: Bytes::new(),
        name: Bytes::copy_from_slice(name.as_bytes()),
        port: 80,
    }
}

fn addr_op(addr: &str) -> ServiceOp {
    ServiceOp {
        announce: true,
        port: 0,
        env: Bytes::from_static(ADDR_ENV.as_bytes()),
        name: Bytes::copy_from_slice(addr.as_bytes()),
    }
}

/// The SERVICES updates among `out`'s sends (any destination).
fn updates(out: &Out) -> Vec<ServicesUpdate> {
    out.sends
        .iter()
        .filter_map(|s| match s {
            Send::To(_, Frame::Services(u))
            | Send::All {
                frame: Frame::Services(u),
                ..
            } => Some(u.clone()),
            _ => None,
        })
        .collect()
}

/// Delivers `us` to `d` over `link` (its route to every origin); returns the output.
fn deliver(d: &mut Discovery, link: LinkId, us: &[ServicesUpdate]) -> Out {
    let mut out = Out::default();
    for u in us {
        d.on_update(link, u, route(link), &mut out);
    }
    out
}

fn names(d: &Discovery, o: NodeId) -> Vec<String> {
    d.entries_of(o)
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
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

fn reasons(out: &Out) -> Vec<Reject> {
    out.rejected.iter().map(|r| r.why.clone()).collect()
}

/// O announces `a` and `b`; V learned them through R. Returns (O, R, V) and O's
/// updates so far.
fn mesh() -> (Discovery, Discovery, Discovery, Vec<ServicesUpdate>) {
    let (mut o, mut r, mut v) = (node(O, false), node(R, true), node(V, true));
    let mut out = Out::default();
    o.local_change(true, svc("a"), &mut out);
    o.link_up(20, &mut out);
    o.local_change(true, svc("b"), &mut out);
    let from_o = updates(&out);
    let via_r = updates(&deliver(&mut r, 20, &from_o));
    let got = deliver(&mut v, 10, &via_r);
    assert!(got.rejected.is_empty(), "{:?}", got.rejected);
    assert_eq!(names(&v, O), ["a", "b"]);
    (o, r, v, from_o)
}

fn check(d: &Discovery, link: LinkId) {
    d.check(|_| Some(link));
}

#[test]
fn a_signed_chain_of_diffs_and_fulls_crosses_a_router() {
    let (mut o, mut r, mut v, from_o) = mesh();
    // The chain: a diff (before the link), the full on link up, a diff after it.
    let kinds: Vec<(bool, bool)> = from_o
        .iter()
        .map(|u| {
            (
                u.full,
                u.signed.as_ref().is_some_and(|s| !s.credentials.is_empty()),
            )
        })
        .collect();
    assert_eq!(kinds, [(false, false), (true, true), (false, false)]);
    assert_eq!(v.version_of(O), Some(START + 2));
    // O withdraws `a`: the diff crosses R and applies at V.
    let mut out = Out::default();
    o.local_change(false, svc("a"), &mut out);
    let via_r = updates(&deliver(&mut r, 20, &updates(&out)));
    let got = deliver(&mut v, 10, &via_r);
    assert_eq!(names(&v, O), ["b"]);
    assert_eq!(got.seen.len(), 1);
    // A node that never linked with O learns it from R's full update (R's copy of
    // O's signature and credentials) and forwards what it accepted.
    let mut w = node(NodeId(3), true);
    let mut out = Out::default();
    r.link_up(30, &mut out);
    let got = deliver(&mut w, 30, &updates(&out));
    assert_eq!(names(&w, O), ["b"]);
    assert!(got.rejected.is_empty());
    // R's own full update and O's, both forwarded onwards.
    assert_eq!(updates(&got).len(), 2);
    assert_eq!(names(&w, R), Vec::<String>::new());
    // R answers a REQUEST for O with a full update V accepts (same version: no-op).
    let mut out = Out::default();
    r.on_update(10, &request_for(O), None, &mut out);
    let got = deliver(&mut v, 10, &updates(&out));
    assert!(got.rejected.is_empty() && got.seen.is_empty());
    assert_eq!((v.rejected, r.rejected, w.rejected), (0, 0, 0));
    check(&v, 10);
    check(&r, 20);
    check(&w, 30);
}

fn request_for(origin: NodeId) -> ServicesUpdate {
    match request(origin) {
        Frame::Services(u) => u,
        _ => unreachable!(),
    }
}

#[test]
fn a_forged_update_for_another_origin_is_rejected_and_counted() {
    let (_o, _r, mut v, _) = mesh();
    let attacker = TestAuth::new(SEED, ATTACKER.0);
    let evil = |full: bool, signed: Option<ServicesSig>| ServicesUpdate {
        origin: O.0,
        base_version: START + 2,
        version: START + 3,
        full,
        hops: 1,
        ops: vec![svc("evil").op(true)],
        request: false,
        signed,
    };
    // Signed by the attacker, with its own (valid) credentials: they are not O's.
    let msg = message(O, START + 3, [svc("evil")].iter(), 0);
    let own_creds = Some(ServicesSig {
        signature: attacker.sign_bytes(&msg),
        credentials: attacker.credentials_bytes(),
    });
    // No credentials: checked with O's key, which did not sign it.
    let no_creds = Some(ServicesSig {
        signature: attacker.sign_bytes(&msg),
        credentials: Bytes::new(),
    });
    let got = deliver(
        &mut v,
        10,
        &[
            evil(true, own_creds),
            evil(true, no_creds.clone()),
            evil(false, no_creds),
            evil(true, None),
        ],
    );
    assert_eq!(
        reasons(&got),
        [
            Reject::Credentials(AuthError::WrongOrigin(ATTACKER)),
            Reject::BadSignature,
            Reject::BadSignature,
            Reject::Unsigned,
        ]
    );
    assert!(got.rejected.iter().all(|r| r.link == 10 && r.origin == O));
    assert_eq!(v.rejected, 4);
    assert_eq!(names(&v, O), ["a", "b"]);
    assert_eq!(v.version_of(O), Some(START + 2));
    // Nothing appeared, nothing is forwarded; the failed diff asks for the whole.
    assert!(got.seen.is_empty() && got.new_addrs.is_empty());
    assert!(updates(&got).iter().all(|u| u.request));
    assert_eq!(requests(&got), [(10, O.0)]);
    // An origin V never heard of can't be made up either.
    let ghost = NodeId(9);
    let msg = message(ghost, 1, [svc("x")].iter(), 0);
    let u = ServicesUpdate {
        origin: ghost.0,
        base_version: 0,
        version: 1,
        full: true,
        hops: 1,
        ops: vec![svc("x").op(true)],
        request: false,
        signed: Some(ServicesSig {
            signature: attacker.sign_bytes(&msg),
            credentials: Bytes::new(),
        }),
    };
    let got = deliver(&mut v, 10, &[u]);
    assert_eq!(reasons(&got), [Reject::NoCredentials]);
    assert_eq!(v.origin_count(), 1);
    check(&v, 10);
}

#[test]
fn credentials_for_another_origin_or_another_mesh_are_rejected() {
    let (_o, _r, mut v, _) = mesh();
    // R's genuine credentials and signature, claimed for O.
    let router = TestAuth::new(SEED, R.0);
    let msg = message(O, START + 9, [svc("x")].iter(), 0);
    let mut u = ServicesUpdate {
        origin: O.0,
        base_version: 0,
        version: START + 9,
        full: true,
        hops: 1,
        ops: vec![svc("x").op(true)],
        request: false,
        signed: Some(ServicesSig {
            signature: router.sign_bytes(&msg),
            credentials: router.credentials_bytes(),
        }),
    };
    let got = deliver(&mut v, 10, std::slice::from_ref(&u));
    assert_eq!(
        reasons(&got),
        [Reject::Credentials(AuthError::WrongOrigin(R))]
    );
    // O's id, signed by a key of another mesh (another CA).
    let stranger = TestAuth::new(SEED + 1, O.0);
    u.signed = Some(ServicesSig {
        signature: stranger.sign_bytes(&msg),
        credentials: stranger.credentials_bytes(),
    });
    let got = deliver(&mut v, 10, &[u]);
    assert!(matches!(
        reasons(&got)[..],
        [Reject::Credentials(AuthError::Untrusted(_))]
    ));
    assert_eq!(v.rejected, 2);
    assert_eq!(names(&v, O), ["a", "b"]);
}

#[test]
fn an_altered_version_is_rejected() {
    let (_o, _r, mut v, from_o) = mesh();
    // O's genuine full update (signed for START + 1), sent as a newer version.
    let mut u = from_o[1].clone();
    assert!(u.full);
    u.version = START + 50;
    u.ops.truncate(1);
    let mut bumped = from_o[1].clone();
    bumped.version = START + 50;
    let got = deliver(&mut v, 10, &[bumped, u]);
    assert_eq!(reasons(&got), [Reject::BadSignature, Reject::BadSignature]);
    assert_eq!(v.version_of(O), Some(START + 2));
    // O's genuine last diff with its version and base moved on by one: applies on
    // top of what V holds, but O never signed that version.
    let mut d = from_o[2].clone();
    d.version = START + 3;
    d.base_version = START + 2;
    d.ops = vec![svc("a").op(false)];
    let got = deliver(&mut v, 10, &[d]);
    assert_eq!(reasons(&got), [Reject::BadSignature]);
    assert_eq!(names(&v, O), ["a", "b"]);
    assert_eq!(v.rejected, 3);
    check(&v, 10);
}

#[test]
fn an_injected_address_record_is_rejected_and_nothing_is_dialed() {
    let (_o, _r, mut v, from_o) = mesh();
    // As a diff on top of what V holds, with O's last genuine signature.
    let mut d = from_o[2].clone();
    d.base_version = START + 2;
    d.version = START + 3;
    d.ops = vec![addr_op("tcp:192.0.2.1:7000")];
    // As a full update: O's genuine entries plus the record, O's credentials, a
    // newer version.
    let mut f = from_o[1].clone();
    f.version = START + 3;
    f.ops = vec![
        svc("a").op(true),
        svc("b").op(true),
        addr_op("tcp:192.0.2.1:7000"),
    ];
    let got = deliver(&mut v, 10, &[d, f]);
    assert_eq!(reasons(&got), [Reject::BadSignature, Reject::BadSignature]);
    assert!(got.new_addrs.is_empty(), "no direct-upgrade dial");
    assert!(v.entries_of(O).all(|e| !e.is_addr()));
    assert_eq!(v.rejected, 2);
    // The same injection in an unsigned mesh is taken, and would be dialed: what
    // the signature prevents.
    let mut plain = Discovery::new(V, true, true, limits(), None, 1);
    let mut f = from_o[1].clone();
    f.signed = None;
    f.ops.push(addr_op("tcp:192.0.2.1:7000"));
    let got = deliver(&mut plain, 10, &[f]);
    assert_eq!(got.new_addrs, [O]);
}

#[test]
fn a_replayed_older_signed_state_is_not_accepted() {
    let (mut o, mut r, mut v, from_o) = mesh();
    // O's genuine full update at START + 1 (it held `a` only), replayed.
    let old = from_o[1].clone();
    assert_eq!(old.version, START + 1);
    let got = deliver(&mut v, 10, std::slice::from_ref(&old));
    assert!(got.seen.is_empty() && got.sends.is_empty());
    assert_eq!(names(&v, O), ["a", "b"]);
    // Also when it answers the REQUEST V sends after its route to O moved (an
    // unsigned mesh takes any version then; a signed one only a newer one).
    let mut out = Out::default();
    v.on_route(O, route(11), &mut out);
    assert_eq!(requests(&out), [(11, O.0)]);
    let got = deliver(&mut v, 11, &[old]);
    assert!(got.seen.is_empty());
    assert_eq!(names(&v, O), ["a", "b"]);
    // The current state answers it (a no-op), and O's next diff applies over link 11.
    let mut out = Out::default();
    r.on_update(11, &request_for(O), None, &mut out);
    deliver(&mut v, 11, &updates(&out));
    let mut out = Out::default();
    o.local_change(true, svc("c"), &mut out);
    let via_r = updates(&deliver(&mut r, 20, &updates(&out)));
    deliver(&mut v, 11, &via_r);
    assert_eq!(names(&v, O), ["a", "b", "c"]);
    assert_eq!(v.rejected, 0, "a stale state is ignored, not counted");
    check(&v, 11);
}

#[test]
fn a_rotated_key_is_learned_through_request_and_full() {
    let auth = TestAuth::new(SEED, O.0);
    let mut o = node_with(O, false, auth.clone());
    let mut v = node(V, true);
    let mut out = Out::default();
    o.local_change(true, svc("a"), &mut out);
    o.link_up(10, &mut out);
    deliver(&mut v, 10, &updates(&out));
    assert_eq!(names(&v, O), ["a"]);
    // O reloads its certificate. A diff signed with the new key (credentials not
    // sent: as if its full update was lost) fails with the key V holds: V asks.
    auth.rotate();
    let mut out = Out::default();
    o.local_change(true, svc("b"), &mut out);
    let mut diff = updates(&out).remove(0);
    assert!(diff.full, "a change after a rotation goes out in full");
    diff.full = false;
    diff.base_version = START + 1;
    diff.ops = vec![svc("b").op(true)];
    diff.signed.as_mut().unwrap().credentials = Bytes::new();
    let got = deliver(&mut v, 10, &[diff]);
    assert_eq!(reasons(&got), [Reject::BadSignature]);
    assert_eq!(requests(&got), [(10, O.0)]);
    // O's answer carries its new credentials: taken.
    let mut out = Out::default();
    o.on_update(10, &request_for(O), None, &mut out);
    let got = deliver(&mut v, 10, &updates(&out));
    assert!(got.rejected.is_empty());
    assert_eq!(names(&v, O), ["a", "b"]);
    // Rotation without a change: the same version under new credentials is taken
    // (the key is refreshed), and later diffs verify with the new key.
    auth.rotate();
    let mut out = Out::default();
    o.on_update(10, &request_for(O), None, &mut out);
    let got = deliver(&mut v, 10, &updates(&out));
    assert!(got.rejected.is_empty());
    assert_eq!(v.version_of(O), Some(START + 2));
    // An explicit reload notice re-announces at a new version.
    auth.rotate();
    let mut out = Out::default();
    o.credentials_changed(&mut out);
    o.local_change(true, svc("c"), &mut out);
    let got = deliver(&mut v, 10, &updates(&out));
    assert!(got.rejected.is_empty(), "{:?}", got.rejected);
    assert_eq!(names(&v, O), ["a", "b", "c"]);
    assert_eq!(v.rejected, 1);
    check(&v, 10);
}

#[test]
fn the_real_origins_updates_are_still_accepted_after_an_attack() {
    let (mut o, mut r, mut v, from_o) = mesh();
    // A burst of forgeries of every kind.
    let mut forged = from_o[1].clone();
    forged.version = START + 3;
    forged.ops.push(svc("evil").op(true));
    let mut diff = from_o[2].clone();
    diff.base_version = START + 2;
    diff.version = START + 3;
    diff.ops = vec![svc("a").op(false)];
    let got = deliver(&mut v, 10, &[forged, diff]);
    assert_eq!(got.rejected.len(), 2);
    // O's own next change (the version the forgeries claimed) still applies.
    let mut out = Out::default();
    o.local_change(true, svc("c"), &mut out);
    let via_r = updates(&deliver(&mut r, 20, &updates(&out)));
    let got = deliver(&mut v, 10, &via_r);
    assert!(got.rejected.is_empty());
    assert_eq!(names(&v, O), ["a", "b", "c"]);
    assert_eq!(v.version_of(O), Some(START + 3));
    assert_eq!(v.rejected, 2);
    check(&v, 10);
}
