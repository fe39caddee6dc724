//! A UDP relay the tests control, to cut a member's peer traffic.
//!
//! A member advertises the relay's address as its peer URL and listens
//! behind it; the relay forwards datagrams both ways, like a NAT: each
//! sender gets an upstream socket of its own, and what comes back on it goes
//! to that sender. Cutting the relay drops everything through it; blocking a
//! source drops what one sender sends and what comes back to it.
//!
//! cairn's peers speak QUIC, and a QUIC endpoint sends from the socket it
//! listens on, so the relay in front of member A sees member B's real peer
//! address as the source: a member is isolated by cutting its own relay and
//! blocking its address at every other relay. (etcd's peers speak TCP from
//! ephemeral ports over streams that either side may have dialled, so this
//! relay cannot isolate an etcd member.)
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Default)]
struct Rules {
    cut: AtomicBool,
    blocked: Mutex<HashSet<SocketAddr>>,
}

impl Rules {
    fn drops(&self, sender: SocketAddr) -> bool {
        self.cut.load(Ordering::Acquire) || self.blocked.lock().unwrap().contains(&sender)
    }
}

pub struct UdpRelay {
    addr: SocketAddr,
    rules: Arc<Rules>,
    stop: Arc<AtomicBool>,
}

impl UdpRelay {
    /// A relay on a free 127.0.0.1 port forwarding to `target`.
    pub fn start(target: SocketAddr) -> UdpRelay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind relay");
        front
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = front.local_addr().unwrap();
        let rules = Arc::new(Rules::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (rules.clone(), stop.clone());
        thread::Builder::new()
            .name(format!("relay-{}", addr.port()))
            .spawn(move || forward(front, target, r, s))
            .expect("relay thread");
        UdpRelay { addr, rules, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops (true) or passes (false) everything through this relay.
    pub fn cut(&self, cut: bool) {
        self.rules.cut.store(cut, Ordering::Release);
    }

    /// Drops (true) or passes (false) what `sender` sends through this relay
    /// and what comes back to it.
    pub fn block(&self, sender: SocketAddr, block: bool) {
        let mut b = self.rules.blocked.lock().unwrap();
        if block {
            b.insert(sender);
        } else {
            b.remove(&sender);
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn forward(front: UdpSocket, target: SocketAddr, rules: Arc<Rules>, stop: Arc<AtomicBool>) {
    let front = Arc::new(front);
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Acquire) {
        let (n, sender) = match front.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => continue,
        };
        if rules.drops(sender) {
            continue;
        }
        let up = upstreams.entry(sender).or_insert_with(|| {
            let up = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
            up.connect(target).expect("connect upstream");
            up.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let up = Arc::new(up);
            let (up2, front2, rules2, stop2) =
                (up.clone(), front.clone(), rules.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop2.load(Ordering::Acquire) {
                    if let Ok(n) = up2.recv(&mut buf)
                        && !rules2.drops(sender)
                    {
                        let _ = front2.send_to(&buf[..n], sender);
                    }
                }
            });
            up
        });
        let _ = up.send(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
        addr
    }

    fn ask(c: &UdpSocket, relay: SocketAddr, what: &[u8]) -> Option<Vec<u8>> {
        c.send_to(what, relay).unwrap();
        let mut buf = [0u8; 1500];
        c.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }

    #[test]
    fn forwards_both_ways_and_drops_when_cut_or_blocked() {
        let relay = UdpRelay::start(echo());
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
        }
        assert_eq!(ask(&a, relay.addr(), b"one").as_deref(), Some(&b"one"[..]));
        relay.block(a.local_addr().unwrap(), true);
        assert_eq!(ask(&a, relay.addr(), b"two"), None);
        assert_eq!(
            ask(&b, relay.addr(), b"three").as_deref(),
            Some(&b"three"[..])
        );
        relay.block(a.local_addr().unwrap(), false);
        relay.cut(true);
        assert_eq!(ask(&b, relay.addr(), b"four"), None);
        relay.cut(false);
        assert_eq!(
            ask(&a, relay.addr(), b"five").as_deref(),
            Some(&b"five"[..])
        );
    }
}
