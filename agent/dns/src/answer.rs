//! Answers from the index: CoreDNS's etcd plugin (`plugin/backend_lookup.go`,
//! `plugin/etcd/handler.go`) record by record, as a pure function of the
//! index, the question and the time (for lease TTLs).
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::index::{Index, Item, in_zone};

/// CoreDNS's `maxCnameChainLength`.
const MAX_CNAME_CHAIN: usize = 10;

/// What to do with a question.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Authoritative: the name is in a configured zone.
    Reply(Reply),
    /// Outside every zone, with no upstream configured.
    Refused,
    /// Outside every zone: ask the upstreams.
    Forward,
}

/// An authoritative answer.
#[derive(Debug, Default, PartialEq)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

/// How a record's `host` reads (CoreDNS's `HostType`).
enum Host {
    V4(std::net::Ipv4Addr),
    V6(std::net::Ipv6Addr),
    Name,
    Text,
}

fn host_type(item: &Item) -> Host {
    match item.record.host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Host::V4(a),
        Ok(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
            Some(v4) => Host::V4(v4),
            None => Host::V6(a),
        },
        Err(_) if item.record.text.is_empty() => Host::Name,
        Err(_) => Host::Text,
    }
}

/// A lower-case, fully qualified name string.
pub fn fqdn(s: &str) -> String {
    format!("{}.", s.trim_end_matches('.')).to_ascii_lowercase()
}

fn name(s: &str) -> Name {
    Name::from_ascii(fqdn(s)).unwrap_or_else(|_| Name::root())
}

/// CoreDNS's `targetStrip`: drop `n` labels from the left, unless that
/// leaves nothing.
fn target_strip(target: &str, n: i32) -> String {
    if n <= 0 {
        return target.to_string();
    }
    let labels: Vec<&str> = target
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .collect();
    if n as usize >= labels.len() {
        return target.to_string();
    }
    format!("{}.", labels[n as usize..].join("."))
}

/// CoreDNS's `split255`: TXT strings of at most 255 bytes.
fn split255(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    if b.len() < 255 {
        return vec![s.to_string()];
    }
    b.chunks(255)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

/// Answers `qname`/`qtype` from `index` at `now`.
pub fn answer(index: &Index, qname: &Name, qtype: RecordType, now: Instant) -> Outcome {
    let q = fqdn(&qname.to_ascii());
    let Some(zone) = index.zone_of(&q) else {
        return if index.settings.forward {
            Outcome::Forward
        } else {
            Outcome::Refused
        };
    };
    let cx = Cx { index, zone, now };
    let owner = qname.clone();
    let mut reply = Reply::default();
    // `None`: the name does not exist.
    let found: Option<(Vec<Record>, Vec<Record>)> = match qtype {
        RecordType::A | RecordType::AAAA => cx
            .address(&q, &owner, qtype, &mut Vec::new())
            .map(|r| (r, vec![])),
        RecordType::TXT => cx.txt(&q, &owner, &mut Vec::new()).map(|r| (r, vec![])),
        RecordType::SRV => cx.srv(&q, &owner),
        RecordType::MX => cx.mx(&q, &owner),
        RecordType::CNAME => cx.cname(&q, &owner),
        RecordType::PTR => cx.ptr(&q, &owner),
        RecordType::SOA if q == zone => Some((vec![cx.soa()], vec![])),
        RecordType::NS if q == zone => Some(cx.ns(&owner)),
        // Any other type: NODATA if the name exists.
        _ => index.exists(&q).then(|| (vec![], vec![])),
    };
    match found {
        Some((answers, additional)) if !answers.is_empty() => {
            reply.answers = answers;
            reply.additional = additional;
        }
        // The apex always exists; any other name exists when a key is at
        // or below it.
        Some(_) => reply.authority.push(cx.soa()),
        None if q == zone || index.exists(&q) => reply.authority.push(cx.soa()),
        None => {
            reply.rcode = ResponseCode::NXDomain;
            reply.authority.push(cx.soa());
        }
    }
    Outcome::Reply(reply)
}

struct Cx<'a> {
    index: &'a Index,
    zone: &'a str,
    now: Instant,
}

impl Cx<'_> {
    fn ttl(&self, item: &Item) -> u32 {
        self.index.ttl(item, self.now)
    }

    fn rr(&self, owner: &Name, item: &Item, data: RData) -> Record {
        Record::from_rdata(owner.clone(), self.ttl(item), data)
    }

    /// The zone's SOA (CoreDNS's `plugin.SOA`; the serial is the index's
    /// revision, so it moves when the data does).
    fn soa(&self) -> Record {
        let s = &self.index.settings;
        let min = s.min_ttl;
        Record::from_rdata(
            name(self.zone),
            min.min(300),
            RData::SOA(SOA::new(
                name(&format!("ns.dns.{}", self.zone)),
                name(&format!("hostmaster.{}", self.zone)),
                self.index.revision as u32,
                7200,
                1800,
                86_400,
                min,
            )),
        )
    }

    /// The services of a name; at the apex, those under `apex.dns` first
    /// (CoreDNS's `checkForApex`).
    fn services(&self, q: &str, qtxt: bool) -> Option<Vec<&Item>> {
        if q == self.zone
            && let Some(s) = self.index.services(&format!("apex.dns.{q}"), qtxt)
        {
            return Some(s);
        }
        self.index.services(q, qtxt)
    }

    /// A CNAME to `target` if the chain allows it (CoreDNS: no `x CNAME x`,
    /// no repeated link, at most 10 links).
    fn link(
        &self,
        q: &str,
        owner: &Name,
        item: &Item,
        chain: &[(String, String)],
    ) -> Option<(Record, String)> {
        let target = fqdn(&item.record.host);
        if target == q || chain.len() > MAX_CNAME_CHAIN {
            return None;
        }
        if chain.iter().any(|(o, t)| *o == q && *t == target) {
            return None;
        }
        let rr = self.rr(owner, item, RData::CNAME(CNAME(name(&target))));
        Some((rr, target))
    }

    /// A and AAAA (CoreDNS's `plugin.A`/`plugin.AAAA`): addresses of the
    /// subtree, CNAMEs for name hosts, followed inside the zone (an
    /// out-of-zone target is left to the client's resolver).
    fn address(
        &self,
        q: &str,
        owner: &Name,
        qtype: RecordType,
        chain: &mut Vec<(String, String)>,
    ) -> Option<Vec<Record>> {
        let services = self.services(q, false)?;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for s in services {
            match host_type(s) {
                Host::Name => out.extend(self.follow(q, owner, s, chain, |cx, t, chain| {
                    cx.address(t, &name(t), qtype, chain)
                })),
                Host::V4(a) if qtype == RecordType::A && seen.insert(s.record.host.clone()) => {
                    out.push(self.rr(owner, s, RData::A(A(a))));
                }
                Host::V6(a) if qtype == RecordType::AAAA && seen.insert(s.record.host.clone()) => {
                    out.push(self.rr(owner, s, RData::AAAA(AAAA(a))));
                }
                _ => {}
            }
        }
        Some(out)
    }

    fn txt(&self, q: &str, owner: &Name, chain: &mut Vec<(String, String)>) -> Option<Vec<Record>> {
        let services = self.index.services(q, true)?;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for s in services {
            match host_type(s) {
                Host::Name => out.extend(self.follow(q, owner, s, chain, |cx, t, chain| {
                    cx.txt(t, &name(t), chain)
                })),
                Host::Text if seen.insert(s.record.text.clone()) => {
                    let txt = TXT::new(split255(&s.record.text));
                    out.push(self.rr(owner, s, RData::TXT(txt)));
                }
                _ => {}
            }
        }
        Some(out)
    }

    /// A record whose host is a name: its CNAME, followed by what `next`
    /// answers for the target when the target is inside the zone (nothing
    /// at all when that is empty); an out-of-zone target is left to the
    /// client's resolver (the CNAME alone).
    fn follow(
        &self,
        q: &str,
        owner: &Name,
        s: &Item,
        chain: &mut Vec<(String, String)>,
        next: impl FnOnce(&Self, &str, &mut Vec<(String, String)>) -> Option<Vec<Record>>,
    ) -> Vec<Record> {
        let Some((cname, target)) = self.link(q, owner, s, chain) else {
            return Vec::new();
        };
        if !in_zone(&target, self.zone) {
            return vec![cname];
        }
        chain.push((q.to_string(), target.clone()));
        let next = next(self, &target, chain).unwrap_or_default();
        if next.is_empty() {
            return Vec::new();
        }
        let mut out = vec![cname];
        out.extend(next);
        out
    }

    /// Addresses of an in-zone target, for the additional section.
    fn glue(&self, target: &str) -> Vec<Record> {
        if !in_zone(target, self.zone) {
            return Vec::new();
        }
        let owner = name(target);
        let mut out = Vec::new();
        for t in [RecordType::A, RecordType::AAAA] {
            out.extend(
                self.address(target, &owner, t, &mut Vec::new())
                    .unwrap_or_default(),
            );
        }
        out
    }

    fn address_rr(&self, item: &Item, target: &str, host: &Host) -> Option<Record> {
        let data = match host {
            Host::V4(a) => RData::A(A(*a)),
            Host::V6(a) => RData::AAAA(AAAA(*a)),
            _ => return None,
        };
        Some(self.rr(&name(target), item, data))
    }

    /// SRV (CoreDNS's `plugin.SRV`): weights split per priority; IP hosts
    /// get a target named after their key, with the address in additional.
    fn srv(&self, q: &str, owner: &Name) -> Option<(Vec<Record>, Vec<Record>)> {
        let services = self.index.services(q, false)?;
        let priority = |s: &Item| {
            if s.record.priority == 0 {
                10
            } else {
                s.record.priority
            }
        };
        let weight = |s: &Item| {
            if s.record.weight == 0 {
                100
            } else {
                s.record.weight
            }
        };
        let mut total = std::collections::HashMap::new();
        for s in &services {
            *total.entry(priority(s)).or_insert(0i64) += weight(s) as i64;
        }
        let (mut records, mut extra) = (Vec::new(), Vec::new());
        let mut dup = HashSet::new();
        let mut looked = HashSet::new();
        for s in services {
            let share = 100.0 / total[&priority(s)] as f64 * weight(s) as f64;
            let w = (share.floor() as u16).max(1);
            let host = host_type(s);
            let (target, is_ip) = match host {
                Host::V4(_) | Host::V6(_) => (
                    target_strip(&self.index.name_of(&s.key), s.record.targetstrip),
                    true,
                ),
                _ => (
                    target_strip(&fqdn(&s.record.host), s.record.targetstrip),
                    false,
                ),
            };
            let rr = self.rr(
                owner,
                s,
                RData::SRV(SRV::new(
                    priority(s) as u16,
                    w,
                    s.record.port,
                    name(&target),
                )),
            );
            if is_ip {
                if dup.insert((target.clone(), s.record.port.to_string())) {
                    records.push(rr);
                }
                if dup.insert((target.clone(), s.record.host.clone()))
                    && let Some(a) = self.address_rr(s, &target, &host)
                {
                    extra.push(a);
                }
            } else {
                records.push(rr);
                if looked.insert(target.clone()) {
                    extra.extend(self.glue(&target));
                }
            }
        }
        Some((records, extra))
    }

    /// MX (CoreDNS's `plugin.MX`): `mail: true` records; `priority` is the
    /// preference.
    fn mx(&self, q: &str, owner: &Name) -> Option<(Vec<Record>, Vec<Record>)> {
        let services = self.index.services(q, false)?;
        let (mut records, mut extra) = (Vec::new(), Vec::new());
        let mut dup = HashSet::new();
        let mut looked = HashSet::new();
        for s in services.into_iter().filter(|s| s.record.mail) {
            let pref = if s.record.priority == 0 {
                10
            } else {
                s.record.priority
            } as u16;
            let host = host_type(s);
            match host {
                Host::V4(_) | Host::V6(_) => {
                    let target = target_strip(&self.index.name_of(&s.key), s.record.targetstrip);
                    if dup.insert((target.clone(), pref.to_string())) {
                        records.push(self.rr(owner, s, RData::MX(MX::new(pref, name(&target)))));
                    }
                    if dup.insert((target.clone(), s.record.host.clone()))
                        && let Some(a) = self.address_rr(s, &target, &host)
                    {
                        extra.push(a);
                    }
                }
                _ => {
                    let target = target_strip(&fqdn(&s.record.host), s.record.targetstrip);
                    records.push(self.rr(owner, s, RData::MX(MX::new(pref, name(&target)))));
                    if looked.insert(target.clone()) {
                        extra.extend(self.glue(&target));
                    }
                }
            }
        }
        Some((records, extra))
    }

    /// CNAME: the name's own key (CoreDNS reads it exactly), else the
    /// first record of its subtree whose host is a name.
    fn cname(&self, q: &str, owner: &Name) -> Option<(Vec<Record>, Vec<Record>)> {
        let services = match self.index.exact(q) {
            Some(s) => s,
            None => self.index.services(q, false)?,
        };
        let first = services
            .into_iter()
            .find(|s| matches!(host_type(s), Host::Name | Host::Text));
        let records = first
            .map(|s| {
                let target = fqdn(&s.record.host);
                vec![self.rr(owner, s, RData::CNAME(CNAME(name(&target))))]
            })
            .unwrap_or_default();
        Some((records, vec![]))
    }

    /// PTR (CoreDNS's `plugin.PTR`): the exact key of the reverse name.
    fn ptr(&self, q: &str, owner: &Name) -> Option<(Vec<Record>, Vec<Record>)> {
        let services = match self.index.exact(q) {
            Some(s) => s,
            None if self.index.exists(q) => Vec::new(),
            None => return None,
        };
        let mut seen = HashSet::new();
        let records = services
            .into_iter()
            .filter(|s| matches!(host_type(s), Host::Name | Host::Text))
            .filter(|s| seen.insert(fqdn(&s.record.host)))
            .map(|s| self.rr(owner, s, RData::PTR(PTR(name(&s.record.host)))))
            .collect();
        Some((records, vec![]))
    }

    /// NS at the apex (CoreDNS's `plugin.NS`): address records under
    /// `ns.dns.<zone>`, each named after its key; without any, the SOA's
    /// `ns.dns.<zone>`.
    fn ns(&self, owner: &Name) -> (Vec<Record>, Vec<Record>) {
        let (mut records, mut extra) = (Vec::new(), Vec::new());
        let mut seen = HashSet::new();
        let services = self
            .index
            .services(&format!("ns.dns.{}", self.zone), false)
            .unwrap_or_default();
        for s in services {
            let host = host_type(s);
            if !matches!(host, Host::V4(_) | Host::V6(_)) {
                continue;
            }
            let target = target_strip(&self.index.name_of(&s.key), s.record.targetstrip);
            if let Some(a) = self.address_rr(s, &target, &host) {
                extra.push(a);
            }
            if seen.insert(target.clone()) {
                records.push(self.rr(owner, s, RData::NS(NS(name(&target)))));
            }
        }
        if records.is_empty() {
            let s = &self.index.settings;
            records.push(Record::from_rdata(
                owner.clone(),
                s.ttl,
                RData::NS(NS(name(&format!("ns.dns.{}", self.zone)))),
            ));
        }
        (records, extra)
    }
}
