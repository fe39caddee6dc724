//! A tiny authoritative DNS server on 127.0.0.1 (UDP) for the DNS SRV
//! bootstrap tests: answers SRV and A questions from a fixed table, NXDOMAIN
//! for names it does not know. Enough of RFC 1035 for a stub resolver.
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SRV: u16 = 33;
const A: u16 = 1;

/// One answer record.
#[derive(Debug, Clone)]
pub enum Record {
    Srv { port: u16, target: String },
    A(Ipv4Addr),
}

/// A running server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    /// Serves `records` (names lower case, with the trailing dot).
    pub fn start(records: HashMap<String, Vec<Record>>) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n], &records) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        DnsServer { addr, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn answer(q: &[u8], records: &HashMap<String, Vec<Record>>) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // The question: labels from byte 12, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    let name = format!("{}.", labels.join("."));
    let known = records.get(&name);
    let mut answers = Vec::new();
    for r in known.into_iter().flatten() {
        let mut rr = vec![0xC0, 0x0C]; // the question's name
        match r {
            Record::Srv { port, target } if qtype == SRV => {
                let mut rdata = Vec::new();
                rdata.extend_from_slice(&10u16.to_be_bytes()); // priority
                rdata.extend_from_slice(&10u16.to_be_bytes()); // weight
                rdata.extend_from_slice(&port.to_be_bytes());
                encode_name(target, &mut rdata);
                rr.extend_from_slice(&SRV.to_be_bytes());
                rr.extend_from_slice(&1u16.to_be_bytes());
                rr.extend_from_slice(&60u32.to_be_bytes());
                rr.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                rr.extend_from_slice(&rdata);
            }
            Record::A(ip) if qtype == A => {
                rr.extend_from_slice(&A.to_be_bytes());
                rr.extend_from_slice(&1u16.to_be_bytes());
                rr.extend_from_slice(&60u32.to_be_bytes());
                rr.extend_from_slice(&4u16.to_be_bytes());
                rr.extend_from_slice(&ip.octets());
            }
            _ => continue,
        }
        answers.push(rr);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&q[0..2]); // id
    let rd = q[2] & 0x01;
    out.push(0x84 | rd); // QR, AA, RD copied
    out.push(if known.is_none() { 3 } else { 0 }); // NXDOMAIN / NOERROR
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(q.get(12..question_end)?);
    for a in answers {
        out.extend_from_slice(&a);
    }
    Some(out)
}
