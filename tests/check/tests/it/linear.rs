//! Hand-written histories for the linearizability checker: ones that must
//! pass, and one per anomaly that must fail.

use cairn_check::{Config, History, Op, Outcome, Ret, ViolationKind, check, check_with};

fn ok(ret: Ret) -> Outcome {
    Outcome::Ok(ret)
}

fn put(revision: i64) -> Outcome {
    ok(Ret::Put { revision })
}

fn got(value: Option<&str>, mod_revision: i64, revision: i64) -> Outcome {
    ok(Ret::get(value, mod_revision, revision))
}

fn lease(revision: i64) -> Outcome {
    ok(Ret::Lease { revision })
}

#[track_caller]
fn passes(h: &History) {
    if let Err(v) = check(h) {
        panic!("expected linearizable, got:\n{v}");
    }
}

#[track_caller]
fn fails(h: &History, kind: ViolationKind) -> String {
    match check(h) {
        Ok(r) => panic!("expected {kind:?}, passed: {r:?}"),
        Err(v) => {
            assert_eq!(v.kind, kind, "wrong kind:\n{v}");
            let shown = v.to_string();
            println!("{shown}");
            shown
        }
    }
}

// === histories that must pass ===

#[test]
fn sequential_put_get_delete() {
    let mut h = History::new();
    h.record(1, Op::get("a"), 0, 1, got(None, 0, 1));
    h.record(1, Op::put("a", "1"), 2, 3, put(2));
    h.record(1, Op::get("a"), 4, 5, got(Some("1"), 2, 2));
    h.record(1, Op::put("b", "x"), 6, 7, put(3));
    h.record(1, Op::get("a"), 8, 9, got(Some("1"), 2, 3));
    h.record(
        1,
        Op::delete("a"),
        10,
        11,
        ok(Ret::Delete {
            deleted: 1,
            revision: 4,
        }),
    );
    h.record(
        1,
        Op::delete("a"),
        12,
        13,
        ok(Ret::Delete {
            deleted: 0,
            revision: 4,
        }),
    );
    h.record(1, Op::get("a"), 14, 15, got(None, 0, 4));
    let r = check(&h).unwrap();
    assert_eq!((r.ops, r.ok, r.partitions), (8, 8, 2));
}

#[test]
fn concurrent_write_linearized_after_a_later_one() {
    // w1 is invoked first and spans everything; w2 and a read of w2 happen
    // inside it; only w2, r1, w1, r2 explains the results.
    let mut h = History::new();
    let w1 = h.invoke(1, 0, Op::put("k", "one"));
    h.record(2, Op::put("k", "two"), 10, 20, put(2));
    h.record(3, Op::get("k"), 30, 40, got(Some("two"), 2, 2));
    h.complete(w1, 100, put(3));
    h.record(3, Op::get("k"), 110, 120, got(Some("one"), 3, 3));
    passes(&h);
}

#[test]
fn concurrent_reads_see_the_write_at_different_points() {
    let mut h = History::new();
    h.record(1, Op::put("k", "a"), 0, 5, put(2));
    let w = h.invoke(1, 10, Op::put("k", "b"));
    // r1 finishes after r2 starts, yet sees the newer value while r2 sees
    // the older one: fine, they overlap each other and the write.
    h.record(2, Op::get("k"), 11, 30, got(Some("b"), 3, 3));
    h.record(3, Op::get("k"), 12, 40, got(Some("a"), 2, 2));
    h.complete(w, 50, put(3));
    passes(&h);
}

#[test]
fn compare_and_swap_race_one_wins() {
    let mut h = History::new();
    h.record(1, Op::put("k", "v0"), 0, 5, put(2));
    // Both read mod_revision 2 and race; client 2 wins.
    h.record(
        1,
        Op::cas_mod_revision("k", 2, "v1"),
        10,
        30,
        ok(Ret::cas_failed(Some("v2"), 3, 3)),
    );
    h.record(
        2,
        Op::cas_mod_revision("k", 2, "v2"),
        12,
        25,
        ok(Ret::cas_succeeded(3)),
    );
    h.record(
        3,
        Op::cas_value("k", "v2", "v3"),
        40,
        50,
        ok(Ret::cas_succeeded(4)),
    );
    h.record(
        3,
        Op::cas_value("k", "v2", "v4"),
        60,
        70,
        ok(Ret::cas_failed(Some("v3"), 4, 4)),
    );
    h.record(
        3,
        Op::cas_mod_revision("absent", 0, "new"),
        80,
        90,
        ok(Ret::cas_succeeded(5)),
    );
    passes(&h);
}

#[test]
fn unknown_write_that_took_effect_late() {
    let mut h = History::new();
    h.record(1, Op::put("k", "v1"), 0, 5, put(2));
    let lost = h.invoke(2, 10, Op::put("k", "v2"));
    h.complete(lost, 15, Outcome::Unknown);
    h.record(1, Op::get("k"), 20, 25, got(Some("v1"), 2, 2));
    h.record(3, Op::put("other", "x"), 30, 35, put(3));
    // Long after the client gave up, the write lands.
    h.record(1, Op::get("k"), 100, 105, got(Some("v2"), 4, 4));
    h.record(1, Op::get("k"), 110, 115, got(Some("v2"), 4, 4));
    passes(&h);
}

#[test]
fn unknown_write_that_never_took_effect() {
    let mut h = History::new();
    h.record(1, Op::put("k", "v1"), 0, 5, put(2));
    let lost = h.invoke(2, 10, Op::put("k", "v2"));
    h.complete(lost, 15, Outcome::Unknown);
    h.record(1, Op::get("k"), 100, 105, got(Some("v1"), 2, 2));
    // A pending op (never completed) counts as unknown too.
    h.invoke(3, 120, Op::delete("k"));
    h.record(1, Op::get("k"), 200, 205, got(Some("v1"), 2, 2));
    passes(&h);
}

#[test]
fn failed_ops_are_left_out() {
    let mut h = History::new();
    h.record(1, Op::put("k", "v1"), 0, 5, Outcome::Failed);
    h.record(1, Op::get("k"), 10, 15, got(None, 0, 1));
    passes(&h);
}

#[test]
fn lease_revoke_deletes_its_keys() {
    let mut h = History::new();
    h.record(1, Op::lease_grant(7, 10), 0, 5, lease(1));
    h.record(1, Op::put_with_lease("a", "1", 7), 10, 15, put(2));
    h.record(1, Op::put_with_lease("b", "2", 7), 20, 25, put(3));
    h.record(1, Op::put("c", "3"), 30, 35, put(4));
    h.record(1, Op::lease_revoke(7), 40, 45, lease(5));
    h.record(1, Op::get("a"), 50, 55, got(None, 0, 5));
    h.record(1, Op::get("b"), 50, 55, got(None, 0, 5));
    h.record(1, Op::get("c"), 50, 55, got(Some("3"), 4, 5));
    let r = check(&h).unwrap();
    // a, b and lease 7 in one partition; c in another.
    assert_eq!(r.partitions, 2);
}

#[test]
fn lease_expiry_at_an_unknown_point() {
    for seen in [true, false] {
        let mut h = History::new();
        h.record(1, Op::lease_grant(9, 1), 0, 5, lease(1));
        h.record(1, Op::put_with_lease("k", "v", 9), 10, 15, put(2));
        // The lease may expire any time after its grant.
        h.invoke(0, 5, Op::lease_expire(9));
        let r = if seen {
            got(Some("v"), 2, 2)
        } else {
            got(None, 0, 3)
        };
        h.record(2, Op::get("k"), 1000, 1005, r);
        passes(&h);
    }
}

#[test]
fn initial_state_is_respected() {
    let mut h = History::new().with_initial("k", "old", 7);
    h.record(1, Op::get("k"), 0, 1, got(Some("old"), 7, 9));
    h.record(1, Op::put("k", "new"), 2, 3, put(10));
    passes(&h);
}

// === histories that must fail, one per anomaly ===

#[test]
fn stale_read() {
    let mut h = History::new();
    h.record(1, Op::put("k", "v1"), 0, 5, put(2));
    h.record(1, Op::put("k", "v2"), 10, 15, put(3));
    h.record(2, Op::get("k"), 20, 25, got(Some("v1"), 2, 3));
    let s = fails(&h, ViolationKind::NotLinearizable);
    assert!(s.contains("key \"k\""), "{s}");
    assert!(
        s.contains("read a value other than the key's current one"),
        "{s}"
    );
}

#[test]
fn stale_read_with_a_stale_header_revision() {
    let mut h = History::new();
    h.record(1, Op::put("k", "v1"), 0, 5, put(2));
    h.record(1, Op::put("k", "v2"), 10, 15, put(3));
    h.record(2, Op::get("k"), 20, 25, got(Some("v1"), 2, 2));
    fails(&h, ViolationKind::RevisionWentBack);
}

#[test]
fn lost_acknowledged_write() {
    let mut h = History::new();
    h.record(1, Op::put("k", "v1"), 0, 5, put(2));
    h.record(1, Op::put("j", "x"), 6, 8, put(3));
    h.record(2, Op::get("k"), 10, 15, got(None, 0, 3));
    fails(&h, ViolationKind::NotLinearizable);
}

#[test]
fn revision_reused() {
    let mut h = History::new();
    h.record(1, Op::put("a", "1"), 0, 5, put(2));
    h.record(2, Op::put("b", "2"), 1, 6, put(2));
    let s = fails(&h, ViolationKind::RevisionReused);
    assert!(s.contains("both got revision 2"), "{s}");
}

#[test]
fn revision_reused_seen_through_a_read() {
    let mut h = History::new();
    h.record(1, Op::put("a", "1"), 0, 5, put(2));
    h.record(2, Op::get("b"), 10, 15, got(Some("x"), 2, 2));
    fails(&h, ViolationKind::RevisionReused);
}

#[test]
fn revision_going_back_in_real_time() {
    let mut h = History::new();
    h.record(1, Op::put("a", "1"), 0, 5, put(5));
    h.record(2, Op::put("b", "2"), 10, 15, put(4));
    let s = fails(&h, ViolationKind::RevisionWentBack);
    assert!(s.contains("not above revision 5"), "{s}");
}

#[test]
fn revision_going_back_within_a_key() {
    // Concurrent, so real time allows either order, but the read saw the
    // second write's value with a revision below the write's.
    let mut h = History::new();
    h.record(1, Op::put("k", "v1"), 0, 50, put(3));
    h.record(2, Op::get("k"), 10, 60, got(Some("v1"), 3, 2));
    fails(&h, ViolationKind::NotLinearizable);
}

#[test]
fn read_of_a_value_never_written() {
    let mut h = History::new();
    h.record(1, Op::put("k", "v1"), 0, 5, put(2));
    h.record(2, Op::get("k"), 3, 15, got(Some("ghost"), 2, 2));
    fails(&h, ViolationKind::NotLinearizable);
}

#[test]
fn unknown_write_cannot_explain_a_read_before_its_invocation() {
    let mut h = History::new();
    h.record(1, Op::get("k"), 0, 5, got(Some("v"), 2, 2));
    let w = h.invoke(2, 10, Op::put("k", "v"));
    h.complete(w, 20, Outcome::Unknown);
    fails(&h, ViolationKind::NotLinearizable);
}

#[test]
fn cas_succeeded_when_it_should_have_failed() {
    let mut h = History::new();
    h.record(1, Op::put("k", "v1"), 0, 5, put(2));
    h.record(
        2,
        Op::cas_mod_revision("k", 1, "v2"),
        10,
        15,
        ok(Ret::cas_succeeded(3)),
    );
    let s = fails(&h, ViolationKind::NotLinearizable);
    assert!(
        s.contains("compare-and-swap succeeded but its compare is false"),
        "{s}"
    );
}

#[test]
fn cas_failed_when_it_should_have_succeeded() {
    let mut h = History::new();
    h.record(1, Op::put("k", "v1"), 0, 5, put(2));
    h.record(
        2,
        Op::cas_value("k", "v1", "v2"),
        10,
        15,
        ok(Ret::cas_failed(Some("v1"), 2, 2)),
    );
    fails(&h, ViolationKind::NotLinearizable);
}

#[test]
fn revoked_lease_key_still_readable() {
    let mut h = History::new();
    h.record(1, Op::lease_grant(7, 10), 0, 5, lease(1));
    h.record(1, Op::put_with_lease("k", "v", 7), 10, 15, put(2));
    h.record(1, Op::lease_revoke(7), 20, 25, lease(3));
    h.record(2, Op::get("k"), 30, 35, got(Some("v"), 2, 3));
    let s = fails(&h, ViolationKind::NotLinearizable);
    assert!(s.contains("lease 7"), "{s}");
}

#[test]
fn expired_lease_key_still_readable() {
    let mut h = History::new();
    h.record(1, Op::lease_grant(7, 1), 0, 5, lease(1));
    h.record(1, Op::put_with_lease("k", "v", 7), 10, 15, put(2));
    // The test saw the lease gone (keep-alive: not found) between 20 and 30.
    h.record(0, Op::lease_expire(7), 20, 30, ok(Ret::Done));
    h.record(2, Op::get("k"), 40, 45, got(Some("v"), 2, 3));
    fails(&h, ViolationKind::NotLinearizable);
}

#[test]
fn put_on_a_revoked_lease() {
    let mut h = History::new();
    h.record(1, Op::lease_grant(7, 10), 0, 5, lease(1));
    h.record(1, Op::lease_revoke(7), 10, 15, lease(1));
    h.record(1, Op::put_with_lease("k", "v", 7), 20, 25, put(2));
    let s = fails(&h, ViolationKind::NotLinearizable);
    assert!(s.contains("not alive"), "{s}");
}

#[test]
fn budget_exhausted_is_inconclusive_not_a_pass() {
    // Sixteen writes with unknown outcomes, sixteen concurrent reads each
    // seeing one of them (any interleaving works), then a read that nothing
    // explains: proving it takes every interleaving.
    let mut h = History::new();
    for i in 0..16 {
        let w = h.invoke(i, 0, Op::put("k", format!("v{i}")));
        h.complete(w, 1, Outcome::Unknown);
    }
    for i in 0..16 {
        h.record(
            i,
            Op::get("k"),
            10,
            20,
            got(Some(&format!("v{i}")), 50 + i as i64, 100),
        );
    }
    h.record(99, Op::get("k"), 30, 40, got(Some("never"), 1, 100));
    let v = check_with(
        &h,
        &Config {
            states_max: 1_000,
            ..Config::default()
        },
    )
    .unwrap_err();
    assert_eq!(v.kind, ViolationKind::Inconclusive, "{v}");
    println!("{v}");
}
