//! systemd's notify protocol (`Type=notify`): `READY=1` once the agent
//! serves — a member that has a leader and has applied what was committed
//! when it found one, a proxy that the cluster answers through, and the
//! applications ready (DNS bound, the first full render done) —, `STATUS=`
//! lines on the way, and `WATCHDOG=1` pings when the unit sets
//! `WatchdogSec`. Without `NOTIFY_SOCKET` nothing is sent.
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Sends one notification (`READY=1`, `STATUS=...`). False when there is
/// no notify socket or the send failed (logged).
pub fn send(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let p = path.to_string_lossy().into_owned();
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
        if let Some(name) = p.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &p)
        }
    });
    match sent {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, socket = %p, "cannot notify systemd");
            false
        }
    }
}

/// What must be true before `READY=1`, each with the `STATUS=` shown while
/// waiting for it.
pub type Condition = (String, Pin<Box<dyn Future<Output = ()> + Send>>);

/// Waits for every condition in turn, then sends `READY=1`.
pub async fn ready_when(conditions: Vec<Condition>) {
    for (status, cond) in conditions {
        send(&format!("STATUS={status}"));
        cond.await;
    }
    if send("READY=1\nSTATUS=serving") {
        tracing::info!("told systemd READY=1");
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this
/// process when `WATCHDOG_PID` names one).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings `WATCHDOG=1` at half the interval while the runtime runs (a
/// wedged runtime stops the pings and systemd restarts the agent).
pub async fn watchdog(mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(every / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => { send("WATCHDOG=1"); }
            _ = stop.changed() => return,
        }
    }
}
