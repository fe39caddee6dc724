//! The answer logic record by record, with the examples of CoreDNS's etcd
//! plugin (`plugin/etcd/README.md`, `lookup_test.go`, `other_test.go`,
//! `group_test.go`) turned into expected answers.
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};

use crate::answer::{Outcome, Reply, answer};
use crate::index::{Index, LeaseTtl, Settings};

fn settings(zones: &[&str]) -> Arc<Settings> {
    let mut zones: Vec<String> = zones.iter().map(|z| z.to_string()).collect();
    zones.sort_by_key(|z| std::cmp::Reverse(z.len()));
    Arc::new(Settings {
        zones,
        path: "/skydns".into(),
        ttl: 300,
        min_ttl: 30,
        max_ttl: 86_400,
        forward: false,
    })
}

/// An index of `(name the key encodes, JSON, lease)`, as CoreDNS's tests
/// write their services (the key is the name's path).
fn index(zones: &[&str], services: &[(&str, &str, i64)]) -> Index {
    let s = settings(zones);
    let keys: Vec<(String, Vec<u8>, i64)> = services
        .iter()
        .map(|(n, v, l)| {
            (
                cairn_view::skydns::key_of("/skydns", n),
                v.as_bytes().to_vec(),
                *l,
            )
        })
        .collect();
    Index::build(
        s,
        42,
        keys.iter()
            .map(|(k, v, l)| (k.as_bytes(), v.as_slice(), *l, 1)),
        None,
    )
}

fn ask_at(idx: &Index, name: &str, t: RecordType, now: Instant) -> Reply {
    match answer(idx, &Name::from_ascii(name).unwrap(), t, now) {
        Outcome::Reply(r) => r,
        other => panic!("{name} {t}: expected an answer, got {other:?}"),
    }
}

fn ask(idx: &Index, name: &str, t: RecordType) -> Reply {
    ask_at(idx, name, t, Instant::now())
}

/// Records as zone-file lines, sorted (CoreDNS's tests sort too).
fn lines(rrs: &[hickory_proto::rr::Record]) -> Vec<String> {
    let mut v: Vec<String> = rrs
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r.name.to_ascii().to_ascii_lowercase(),
                r.ttl,
                r.record_type(),
                &r.data
            )
        })
        .collect();
    v.sort();
    v
}

fn answers(idx: &Index, name: &str, t: RecordType) -> Vec<String> {
    let r = ask(idx, name, t);
    assert_eq!(r.rcode, ResponseCode::NoError, "{name} {t}: {r:?}");
    lines(&r.answers)
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[track_caller]
fn assert_nodata(idx: &Index, name: &str, t: RecordType) {
    let r = ask(idx, name, t);
    assert_eq!(r.rcode, ResponseCode::NoError, "{name} {t}: {r:?}");
    assert!(r.answers.is_empty(), "{name} {t}: {r:?}");
    assert_eq!(r.authority.len(), 1);
    assert_eq!(r.authority[0].record_type(), RecordType::SOA);
}

#[track_caller]
fn assert_nxdomain(idx: &Index, name: &str, t: RecordType) {
    let r = ask(idx, name, t);
    assert_eq!(r.rcode, ResponseCode::NXDomain, "{name} {t}: {r:?}");
    assert!(r.answers.is_empty());
    assert_eq!(r.authority[0].record_type(), RecordType::SOA);
}

/// `lookup_test.go`'s services.
fn lookup_services() -> Index {
    index(
        &[
            "skydns.test.",
            "skydns_zonea.test.",
            "skydns_zoneb.test.",
            "skydns_zonec.test.",
            "skydns_zoned.test.",
            "in-addr.arpa.",
        ],
        &[
            (
                "a.server1.dev.region1.skydns.test.",
                r#"{"host":"dev.server1","port":8080}"#,
                0,
            ),
            (
                "a.server1.prod.region1.skydns.test.",
                r#"{"host":"10.0.0.1","port":8080}"#,
                0,
            ),
            (
                "b.server1.prod.region1.skydns.test.",
                r#"{"host":"10.0.0.2","port":8080}"#,
                0,
            ),
            (
                "b.server6.prod.region1.skydns.test.",
                r#"{"host":"::1","port":8080}"#,
                0,
            ),
            (
                "a.txt.server1.prod.region1.skydns.test.",
                r#"{"text":"sometext"}"#,
                0,
            ),
            (
                "b.txt.server1.prod.region1.skydns.test.",
                r#"{"text":"moretext"}"#,
                0,
            ),
            (
                "cname.prod.region1.skydns.test.",
                r#"{"host":"unresolvable.skydns.test"}"#,
                0,
            ),
            (
                "priority.skydns.test.",
                r#"{"host":"priority.server1","priority":333,"port":8080}"#,
                0,
            ),
            (
                "a.sub.region1.skydns.test.",
                r#"{"host":"sub.server1","port":0}"#,
                0,
            ),
            (
                "b.sub.region1.skydns.test.",
                r#"{"host":"sub.server2","port":80}"#,
                0,
            ),
            (
                "c.sub.region1.skydns.test.",
                r#"{"host":"10.0.0.1","port":8080}"#,
                0,
            ),
            (
                "a.targetstrip.skydns.test.",
                r#"{"host":"10.0.0.1","port":8080,"targetstrip":1}"#,
                0,
            ),
            (
                "b.cname.skydns.test.",
                r#"{"host":"a.cname.skydns.test"}"#,
                0,
            ),
            (
                "a.cname.skydns.test.",
                r#"{"host":"b.cname.skydns.test"}"#,
                0,
            ),
            ("a.ns.dns.skydns.test.", r#"{"host":"10.0.0.2"}"#, 0),
            ("b.ns.dns.skydns.test.", r#"{"host":"10.0.0.3"}"#, 0),
            (
                "ns1.c.ns.dns.skydns.test.",
                r#"{"host":"10.0.0.4","targetstrip":1}"#,
                0,
            ),
            (
                "ns2.c.ns.dns.skydns.test.",
                r#"{"host":"10.0.0.5","targetstrip":1}"#,
                0,
            ),
            ("x.skydns_zonea.test.", r#"{"host":"10.0.0.2"}"#, 0),
            ("y.skydns_zonea.test.", r#"{"host":"10.0.0.3"}"#, 0),
            ("x.skydns_zoneb.test.", r#"{"host":"10.0.0.2"}"#, 0),
            ("y.skydns_zoneb.test.", r#"{"host":"10.0.0.3"}"#, 0),
            ("apex.dns.skydns_zoneb.test.", r#"{"host":"10.0.0.4"}"#, 0),
            ("x.skydns_zonec.test.", r#"{"host":"10.0.0.2"}"#, 0),
            ("y.skydns_zonec.test.", r#"{"host":"10.0.0.3"}"#, 0),
            (
                "a1.apex.dns.skydns_zonec.test.",
                r#"{"host":"10.0.0.4"}"#,
                0,
            ),
            (
                "a2.apex.dns.skydns_zonec.test.",
                r#"{"host":"10.0.0.5"}"#,
                0,
            ),
            ("x.skydns_zoned.test.", r#"{"host":"10.0.0.2"}"#, 0),
            ("y.skydns_zoned.test.", r#"{"host":"10.0.0.3"}"#, 0),
            (
                "a1.apex.dns.skydns_zoned.test.",
                r#"{"host":"10.0.0.4"}"#,
                0,
            ),
            (
                "a2.apex.dns.skydns_zoned.test.",
                r#"{"host":"10.0.0.5"}"#,
                0,
            ),
            (
                "a3.apex.dns.skydns_zoned.test.",
                r#"{"host":"2003::8:1"}"#,
                0,
            ),
            (
                "a4.apex.dns.skydns_zoned.test.",
                r#"{"host":"2003::8:2"}"#,
                0,
            ),
            (
                "1.0.0.10.in-addr.arpa.",
                r#"{"host":"reverse.example.com"}"#,
                0,
            ),
        ],
    )
}

#[test]
fn srv_with_a_name_target() {
    let idx = lookup_services();
    assert_eq!(
        answers(&idx, "a.server1.dev.region1.skydns.test.", RecordType::SRV),
        ["a.server1.dev.region1.skydns.test. 300 SRV 10 100 8080 dev.server1."]
    );
    // Case does not matter for the lookup; the owner keeps the question's.
    let r = ask(&idx, "a.SERVer1.dEv.region1.skydns.tEst.", RecordType::SRV);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(
        r.answers[0].name.to_ascii(),
        "a.SERVer1.dEv.region1.skydns.tEst."
    );
}

#[test]
fn a_aaaa_and_srv_with_ip_targets() {
    let idx = lookup_services();
    assert_eq!(
        answers(&idx, "a.server1.prod.region1.skydns.test.", RecordType::A),
        ["a.server1.prod.region1.skydns.test. 300 A 10.0.0.1"]
    );
    let r = ask(&idx, "a.server1.prod.region1.skydns.test.", RecordType::SRV);
    assert_eq!(
        lines(&r.answers),
        [
            "a.server1.prod.region1.skydns.test. 300 SRV 10 100 8080 a.server1.prod.region1.skydns.test."
        ]
    );
    assert_eq!(
        lines(&r.additional),
        ["a.server1.prod.region1.skydns.test. 300 A 10.0.0.1"]
    );
    assert_eq!(
        answers(
            &idx,
            "b.server6.prod.region1.skydns.test.",
            RecordType::AAAA
        ),
        ["b.server6.prod.region1.skydns.test. 300 AAAA ::1"]
    );
    // An IPv6 host has no A record: the name exists, NODATA.
    assert_nodata(&idx, "b.server6.prod.region1.skydns.test.", RecordType::A);
}

#[test]
fn a_name_returns_its_whole_subtree() {
    let idx = lookup_services();
    assert_eq!(
        answers(&idx, "server1.prod.region1.skydns.test.", RecordType::A),
        sorted(&[
            "server1.prod.region1.skydns.test. 300 A 10.0.0.1",
            "server1.prod.region1.skydns.test. 300 A 10.0.0.2",
        ])
    );
    // Subdomain SRV: weights split three ways (floor(100/300*100) = 33).
    let r = ask(&idx, "sub.region1.skydns.test.", RecordType::SRV);
    assert_eq!(
        lines(&r.answers),
        sorted(&[
            "sub.region1.skydns.test. 300 SRV 10 33 0 sub.server1.",
            "sub.region1.skydns.test. 300 SRV 10 33 80 sub.server2.",
            "sub.region1.skydns.test. 300 SRV 10 33 8080 c.sub.region1.skydns.test.",
        ])
    );
    assert_eq!(
        lines(&r.additional),
        ["c.sub.region1.skydns.test. 300 A 10.0.0.1"]
    );
}

#[test]
fn srv_priority_targetstrip_and_weights() {
    let idx = lookup_services();
    assert_eq!(
        answers(&idx, "priority.skydns.test.", RecordType::SRV),
        ["priority.skydns.test. 300 SRV 333 100 8080 priority.server1."]
    );
    let r = ask(&idx, "targetstrip.skydns.test.", RecordType::SRV);
    assert_eq!(
        lines(&r.answers),
        ["targetstrip.skydns.test. 300 SRV 10 100 8080 targetstrip.skydns.test."]
    );
    assert_eq!(
        lines(&r.additional),
        ["targetstrip.skydns.test. 300 A 10.0.0.1"]
    );
    // crates notes / CoreDNS: 120/100/130 in one priority → 34/28/37.
    let idx = index(
        &["skydns.local."],
        &[
            (
                "a.w.skydns.local.",
                r#"{"host":"a.example.","port":1,"weight":120}"#,
                0,
            ),
            (
                "b.w.skydns.local.",
                r#"{"host":"b.example.","port":1,"weight":100}"#,
                0,
            ),
            (
                "c.w.skydns.local.",
                r#"{"host":"c.example.","port":1,"weight":130}"#,
                0,
            ),
            (
                "d.w.skydns.local.",
                r#"{"host":"d.example.","port":1,"priority":20}"#,
                0,
            ),
        ],
    );
    assert_eq!(
        answers(&idx, "w.skydns.local.", RecordType::SRV),
        sorted(&[
            "w.skydns.local. 300 SRV 10 34 1 a.example.",
            "w.skydns.local. 300 SRV 10 28 1 b.example.",
            "w.skydns.local. 300 SRV 10 37 1 c.example.",
            "w.skydns.local. 300 SRV 20 100 1 d.example.",
        ])
    );
}

#[test]
fn nxdomain_and_nodata_carry_the_soa() {
    let idx = lookup_services();
    assert_nxdomain(&idx, "doesnotexist.skydns.test.", RecordType::A);
    assert_nxdomain(
        &idx,
        "a.server1.nonexistent.region1.skydns.test.",
        RecordType::HINFO,
    );
    // CoreDNS's NODATA case asks TXT of a record whose host is the name
    // `dev.server1`: CoreDNS asks its upstream for it and, failing, answers
    // nothing. cairn answers the CNAME alone (RFC 1034 4.3.2: the client's
    // resolver restarts at the target), so an address host stands in here.
    assert_nodata(&idx, "a.server1.prod.region1.skydns.test.", RecordType::TXT);
    assert_eq!(
        answers(&idx, "a.server1.dev.region1.skydns.test.", RecordType::TXT),
        ["a.server1.dev.region1.skydns.test. 300 CNAME dev.server1."]
    );
    assert_nodata(
        &idx,
        "a.server1.dev.region1.skydns.test.",
        RecordType::HINFO,
    );
    // A name with only keys below it (an empty non-terminal) exists.
    assert_nodata(&idx, "region1.skydns.test.", RecordType::HINFO);
    // NS below the apex: the name does not exist.
    assert_nxdomain(&idx, "a.skydns.test.", RecordType::NS);
    let r = ask(&idx, "doesnotexist.skydns.test.", RecordType::A);
    assert_eq!(
        lines(&r.authority),
        ["skydns.test. 30 SOA ns.dns.skydns.test. hostmaster.skydns.test. 42 7200 1800 86400 30"]
    );
}

#[test]
fn cnames_unresolvable_and_loops() {
    let idx = lookup_services();
    // A CNAME to an in-zone name with no address: NODATA (CoreDNS).
    assert_nodata(&idx, "cname.prod.region1.skydns.test.", RecordType::A);
    // a → b → a: the loop is cut, nothing answered.
    assert_nodata(&idx, "a.cname.skydns.test.", RecordType::A);
    // A CNAME question answers the name's own key.
    assert_eq!(
        answers(&idx, "cname.prod.region1.skydns.test.", RecordType::CNAME),
        ["cname.prod.region1.skydns.test. 300 CNAME unresolvable.skydns.test."]
    );
    // An in-zone chain is followed; an out-of-zone target is answered as the
    // CNAME alone, for the client's resolver to follow.
    let idx = index(
        &["skydns.local."],
        &[
            ("www.skydns.local.", r#"{"host":"web.skydns.local"}"#, 0),
            ("web.skydns.local.", r#"{"host":"10.0.0.7"}"#, 0),
            ("ext.skydns.local.", r#"{"host":"example.com."}"#, 0),
        ],
    );
    assert_eq!(
        answers(&idx, "www.skydns.local.", RecordType::A),
        sorted(&[
            "www.skydns.local. 300 CNAME web.skydns.local.",
            "web.skydns.local. 300 A 10.0.0.7",
        ])
    );
    assert_eq!(
        answers(&idx, "ext.skydns.local.", RecordType::A),
        ["ext.skydns.local. 300 CNAME example.com."]
    );
}

#[test]
fn txt_records() {
    let idx = lookup_services();
    assert_eq!(
        answers(
            &idx,
            "txt.server1.prod.region1.skydns.test.",
            RecordType::TXT
        ),
        sorted(&[
            "txt.server1.prod.region1.skydns.test. 300 TXT moretext",
            "txt.server1.prod.region1.skydns.test. 300 TXT sometext",
        ])
    );
    // README: text records of the zone, with their own TTL.
    let idx = index(
        &["skydns.local."],
        &[
            (
                "x6.skydns.local.",
                r#"{"ttl":60,"text":"this is a random text message."}"#,
                0,
            ),
            (
                "x7.skydns.local.",
                r#"{"ttl":60,"text":"this is a another random text message."}"#,
                0,
            ),
            (
                "big.skydns.local.",
                &format!(r#"{{"text":"{}"}}"#, "0".repeat(600)),
                0,
            ),
        ],
    );
    let r = answers(&idx, "x6.skydns.local.", RecordType::TXT);
    assert_eq!(
        r,
        ["x6.skydns.local. 60 TXT this is a random text message."]
    );
    // Long text is split in 255-byte strings.
    let r = ask(&idx, "big.skydns.local.", RecordType::TXT);
    match &r.answers[0].data {
        hickory_proto::rr::RData::TXT(t) => {
            let parts: Vec<usize> = t.txt_data.iter().map(|p| p.len()).collect();
            assert_eq!(parts, [255, 255, 90]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wildcards_star_and_any() {
    let idx = lookup_services();
    let r = ask(&idx, "*.region1.skydns.test.", RecordType::SRV);
    assert_eq!(
        lines(&r.answers),
        sorted(&[
            "*.region1.skydns.test. 300 SRV 10 12 0 sub.server1.",
            "*.region1.skydns.test. 300 SRV 10 12 0 unresolvable.skydns.test.",
            "*.region1.skydns.test. 300 SRV 10 12 80 sub.server2.",
            "*.region1.skydns.test. 300 SRV 10 12 8080 a.server1.prod.region1.skydns.test.",
            "*.region1.skydns.test. 300 SRV 10 12 8080 b.server1.prod.region1.skydns.test.",
            "*.region1.skydns.test. 300 SRV 10 12 8080 b.server6.prod.region1.skydns.test.",
            "*.region1.skydns.test. 300 SRV 10 12 8080 c.sub.region1.skydns.test.",
            "*.region1.skydns.test. 300 SRV 10 12 8080 dev.server1.",
        ])
    );
    assert_eq!(
        lines(&r.additional),
        sorted(&[
            "a.server1.prod.region1.skydns.test. 300 A 10.0.0.1",
            "b.server1.prod.region1.skydns.test. 300 A 10.0.0.2",
            "b.server6.prod.region1.skydns.test. 300 AAAA ::1",
            "c.sub.region1.skydns.test. 300 A 10.0.0.1",
        ])
    );
    for q in ["prod.*.skydns.test.", "prod.any.skydns.test."] {
        let r = ask(&idx, q, RecordType::SRV);
        let want: Vec<String> = [
            "SRV 10 25 0 unresolvable.skydns.test.",
            "SRV 10 25 8080 a.server1.prod.region1.skydns.test.",
            "SRV 10 25 8080 b.server1.prod.region1.skydns.test.",
            "SRV 10 25 8080 b.server6.prod.region1.skydns.test.",
        ]
        .iter()
        .map(|s| format!("{q} 300 {s}"))
        .collect();
        assert_eq!(lines(&r.answers), want, "{q}");
        assert_eq!(r.additional.len(), 3, "{q}");
    }
}

#[test]
fn apex_soa_ns_and_address_records() {
    let idx = lookup_services();
    assert_eq!(
        answers(&idx, "skydns.test.", RecordType::SOA),
        ["skydns.test. 30 SOA ns.dns.skydns.test. hostmaster.skydns.test. 42 7200 1800 86400 30"]
    );
    let r = ask(&idx, "skydns.test.", RecordType::NS);
    assert_eq!(
        lines(&r.answers),
        sorted(&[
            "skydns.test. 300 NS a.ns.dns.skydns.test.",
            "skydns.test. 300 NS b.ns.dns.skydns.test.",
            "skydns.test. 300 NS c.ns.dns.skydns.test.",
        ])
    );
    assert_eq!(
        lines(&r.additional),
        sorted(&[
            "a.ns.dns.skydns.test. 300 A 10.0.0.2",
            "b.ns.dns.skydns.test. 300 A 10.0.0.3",
            "c.ns.dns.skydns.test. 300 A 10.0.0.4",
            "c.ns.dns.skydns.test. 300 A 10.0.0.5",
        ])
    );
    assert_eq!(
        answers(&idx, "ns.dns.skydns.test.", RecordType::A),
        sorted(&[
            "ns.dns.skydns.test. 300 A 10.0.0.2",
            "ns.dns.skydns.test. 300 A 10.0.0.3",
            "ns.dns.skydns.test. 300 A 10.0.0.4",
            "ns.dns.skydns.test. 300 A 10.0.0.5",
        ])
    );
    // Zone name as A: the whole zone without apex.dns, else apex.dns only.
    assert_eq!(
        answers(&idx, "skydns_zonea.test.", RecordType::A),
        sorted(&[
            "skydns_zonea.test. 300 A 10.0.0.2",
            "skydns_zonea.test. 300 A 10.0.0.3"
        ])
    );
    assert_eq!(
        answers(&idx, "skydns_zoneb.test.", RecordType::A),
        ["skydns_zoneb.test. 300 A 10.0.0.4"]
    );
    assert_eq!(
        answers(&idx, "skydns_zonec.test.", RecordType::A),
        sorted(&[
            "skydns_zonec.test. 300 A 10.0.0.4",
            "skydns_zonec.test. 300 A 10.0.0.5"
        ])
    );
    assert_eq!(
        answers(&idx, "skydns_zoned.test.", RecordType::AAAA),
        sorted(&[
            "skydns_zoned.test. 300 AAAA 2003::8:1",
            "skydns_zoned.test. 300 AAAA 2003::8:2"
        ])
    );
    // A zone without NS keys still answers NS at its apex (the SOA's name).
    let idx = index(&["skydns.local."], &[]);
    assert_eq!(
        answers(&idx, "skydns.local.", RecordType::NS),
        ["skydns.local. 300 NS ns.dns.skydns.local."]
    );
    assert_nodata(&idx, "skydns.local.", RecordType::A);
}

#[test]
fn reverse_zone_ptr() {
    let idx = lookup_services();
    assert_eq!(
        answers(&idx, "1.0.0.10.in-addr.arpa.", RecordType::PTR),
        ["1.0.0.10.in-addr.arpa. 300 PTR reverse.example.com."]
    );
    assert_nxdomain(&idx, "2.0.0.10.in-addr.arpa.", RecordType::PTR);
    // README: /skydns/arpa/in-addr/10/0/0/127 in zone 0.0.10.in-addr.arpa.
    let idx = index(
        &["skydns.local.", "0.0.10.in-addr.arpa."],
        &[(
            "127.0.0.10.in-addr.arpa.",
            r#"{"host":"reverse.skydns.local."}"#,
            0,
        )],
    );
    assert_eq!(
        idx.key_of("127.0.0.10.in-addr.arpa."),
        "/skydns/arpa/in-addr/10/0/0/127"
    );
    assert_eq!(
        answers(&idx, "127.0.0.10.in-addr.arpa.", RecordType::PTR),
        ["127.0.0.10.in-addr.arpa. 300 PTR reverse.skydns.local."]
    );
}

#[test]
fn mx_records() {
    let idx = index(
        &["skydns.test."],
        &[
            (
                "a.server1.dev.region1.skydns.test.",
                r#"{"host":"dev.server1","port":8080}"#,
                0,
            ),
            (
                "a.mail.skydns.test.",
                r#"{"host":"mx.skydns.test","priority":50,"mail":true}"#,
                0,
            ),
            (
                "b.mail.skydns.test.",
                r#"{"host":"mx.miek.nl","priority":50,"mail":true}"#,
                0,
            ),
            (
                "a.mx.skydns.test.",
                r#"{"host":"a.ipaddr.skydns.test","priority":30,"mail":true}"#,
                0,
            ),
            (
                "a.mx2.skydns.test.",
                r#"{"host":"a.ipaddr.skydns.test","mail":true}"#,
                0,
            ),
            (
                "b.mx2.skydns.test.",
                r#"{"host":"b.ipaddr.skydns.test","mail":true}"#,
                0,
            ),
            (
                "a.mx3.skydns.test.",
                r#"{"host":"a.ipaddr.skydns.test","priority":20,"mail":true}"#,
                0,
            ),
            (
                "b.mx3.skydns.test.",
                r#"{"host":"a.ipaddr.skydns.test","priority":30,"mail":true}"#,
                0,
            ),
            ("a.ipaddr.skydns.test.", r#"{"host":"172.16.1.1"}"#, 0),
            ("b.ipaddr.skydns.test.", r#"{"host":"172.16.1.2"}"#, 0),
            ("mx.skydns.test.", r#"{"host":"a.ipaddr.skydns.test"}"#, 0),
            ("ipmx.skydns.test.", r#"{"host":"10.1.1.1","mail":true}"#, 0),
        ],
    );
    // Not a mail record: NODATA.
    assert_nodata(&idx, "a.server1.dev.region1.skydns.test.", RecordType::MX);
    let r = ask(&idx, "a.mail.skydns.test.", RecordType::MX);
    assert_eq!(
        lines(&r.answers),
        ["a.mail.skydns.test. 300 MX 50 mx.skydns.test."]
    );
    assert_eq!(
        lines(&r.additional),
        sorted(&[
            "a.ipaddr.skydns.test. 300 A 172.16.1.1",
            "mx.skydns.test. 300 CNAME a.ipaddr.skydns.test."
        ])
    );
    let r = ask(&idx, "mx2.skydns.test.", RecordType::MX);
    assert_eq!(
        lines(&r.answers),
        sorted(&[
            "mx2.skydns.test. 300 MX 10 a.ipaddr.skydns.test.",
            "mx2.skydns.test. 300 MX 10 b.ipaddr.skydns.test."
        ])
    );
    assert_eq!(
        lines(&r.additional),
        sorted(&[
            "a.ipaddr.skydns.test. 300 A 172.16.1.1",
            "b.ipaddr.skydns.test. 300 A 172.16.1.2"
        ])
    );
    let r = ask(&idx, "mx3.skydns.test.", RecordType::MX);
    assert_eq!(
        lines(&r.answers),
        sorted(&[
            "mx3.skydns.test. 300 MX 20 a.ipaddr.skydns.test.",
            "mx3.skydns.test. 300 MX 30 a.ipaddr.skydns.test."
        ])
    );
    assert_eq!(
        lines(&r.additional),
        ["a.ipaddr.skydns.test. 300 A 172.16.1.1"]
    );
    // An address host: the exchange is named after the key.
    let r = ask(&idx, "ipmx.skydns.test.", RecordType::MX);
    assert_eq!(
        lines(&r.answers),
        ["ipmx.skydns.test. 300 MX 10 ipmx.skydns.test."]
    );
    assert_eq!(lines(&r.additional), ["ipmx.skydns.test. 300 A 10.1.1.1"]);
}

#[test]
fn groups_limit_aggregation() {
    let idx = index(
        &["skydns.test."],
        &[
            (
                "a.dom.skydns.test.",
                r#"{"host":"127.0.0.1","group":"g1"}"#,
                0,
            ),
            (
                "b.sub.dom.skydns.test.",
                r#"{"host":"127.0.0.2","group":"g1"}"#,
                0,
            ),
            (
                "a.dom2.skydns.test.",
                r#"{"host":"127.0.0.1","group":"g1"}"#,
                0,
            ),
            (
                "b.sub.dom2.skydns.test.",
                r#"{"host":"127.0.0.2","group":""}"#,
                0,
            ),
            (
                "a.dom1.skydns.test.",
                r#"{"host":"127.0.0.1","group":"g1"}"#,
                0,
            ),
            (
                "b.sub.dom1.skydns.test.",
                r#"{"host":"127.0.0.2","group":"g2"}"#,
                0,
            ),
            ("a.dom3.skydns.test.", r#"{"text":"foo","group":"g1"}"#, 0),
            (
                "b.sub.dom3.skydns.test.",
                r#"{"text":"bar","group":"g1"}"#,
                0,
            ),
        ],
    );
    assert_eq!(
        answers(&idx, "dom.skydns.test.", RecordType::A),
        sorted(&[
            "dom.skydns.test. 300 A 127.0.0.1",
            "dom.skydns.test. 300 A 127.0.0.2"
        ])
    );
    assert_eq!(
        answers(&idx, "dom2.skydns.test.", RecordType::A),
        sorted(&[
            "dom2.skydns.test. 300 A 127.0.0.1",
            "dom2.skydns.test. 300 A 127.0.0.2"
        ])
    );
    assert_eq!(
        answers(&idx, "dom1.skydns.test.", RecordType::A),
        ["dom1.skydns.test. 300 A 127.0.0.1"]
    );
    assert_eq!(
        answers(&idx, "dom3.skydns.test.", RecordType::TXT),
        sorted(&[
            "dom3.skydns.test. 300 TXT bar",
            "dom3.skydns.test. 300 TXT foo"
        ])
    );
}

#[test]
fn ttl_is_the_lower_of_the_record_and_the_lease() {
    let mut idx = index(
        &["skydns.local."],
        &[
            ("plain.skydns.local.", r#"{"host":"10.0.0.1"}"#, 0),
            ("own.skydns.local.", r#"{"host":"10.0.0.2","ttl":60}"#, 0),
            (
                "leased.skydns.local.",
                r#"{"host":"10.0.0.3","ttl":600}"#,
                7,
            ),
            ("short.skydns.local.", r#"{"host":"10.0.0.4"}"#, 8),
            (
                "unknown.skydns.local.",
                r#"{"host":"10.0.0.5","ttl":90}"#,
                9,
            ),
        ],
    );
    let t0 = Instant::now();
    idx.leases.insert(
        7,
        LeaseTtl {
            ttl: 120,
            fetched: t0,
        },
    );
    idx.leases.insert(
        8,
        LeaseTtl {
            ttl: 5,
            fetched: t0,
        },
    );
    let ttl = |name: &str, at: Instant| ask_at(&idx, name, RecordType::A, at).answers[0].ttl;
    assert_eq!(ttl("plain.skydns.local.", t0), 300, "CoreDNS's default");
    assert_eq!(ttl("own.skydns.local.", t0), 60);
    assert_eq!(ttl("leased.skydns.local.", t0), 120, "the lease is shorter");
    // The remaining TTL counts down from when it was asked.
    assert_eq!(
        ttl("leased.skydns.local.", t0 + Duration::from_secs(50)),
        70
    );
    // ... but never below min_ttl (CoreDNS's min-lease-ttl).
    assert_eq!(ttl("short.skydns.local.", t0), 30);
    assert_eq!(
        ttl("leased.skydns.local.", t0 + Duration::from_secs(500)),
        30
    );
    // A lease not (yet) known: the record's own TTL.
    assert_eq!(ttl("unknown.skydns.local.", t0), 90);
}

#[test]
fn names_outside_the_zones_are_refused_or_forwarded() {
    let idx = index(
        &["skydns.local."],
        &[("a.skydns.local.", r#"{"host":"10.0.0.1"}"#, 0)],
    );
    let q = Name::from_ascii("example.com.").unwrap();
    assert_eq!(
        answer(&idx, &q, RecordType::A, Instant::now()),
        Outcome::Refused
    );
    // A name that merely ends like the zone is outside it.
    let q = Name::from_ascii("xskydns.local.").unwrap();
    assert_eq!(
        answer(&idx, &q, RecordType::A, Instant::now()),
        Outcome::Refused
    );
    let mut s = (*idx.settings).clone();
    s.forward = true;
    let idx = Index {
        settings: Arc::new(s),
        ..idx
    };
    let q = Name::from_ascii("example.com.").unwrap();
    assert_eq!(
        answer(&idx, &q, RecordType::A, Instant::now()),
        Outcome::Forward
    );
}

#[test]
fn rebuilding_reuses_unchanged_items_and_skips_bad_values() {
    let s = settings(&["skydns.local."]);
    let k1 = b"/skydns/local/skydns/a".as_slice();
    let k2 = b"/skydns/local/skydns/b".as_slice();
    let first = Index::build(
        s.clone(),
        5,
        [
            (k1, br#"{"host":"10.0.0.1"}"#.as_slice(), 0, 3),
            (k2, b"not json".as_slice(), 0, 4),
        ],
        None,
    );
    assert_eq!(first.items.len(), 1);
    assert_eq!(first.invalid, 1);
    let second = Index::build(
        s,
        6,
        [
            (k1, br#"{"host":"10.0.0.9"}"#.as_slice(), 0, 3),
            (k2, br#"{"host":"10.0.0.2"}"#.as_slice(), 0, 6),
        ],
        Some(&first),
    );
    // Same mod revision: the parsed item is shared, not re-read.
    assert!(Arc::ptr_eq(
        &first.items["/skydns/local/skydns/a"],
        &second.items["/skydns/local/skydns/a"]
    ));
    assert_eq!(
        second.items["/skydns/local/skydns/b"].record.host,
        "10.0.0.2"
    );
}
