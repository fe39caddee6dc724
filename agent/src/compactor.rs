//! Automatic compaction (`--auto-compaction-mode`,
//! `--auto-compaction-retention`), run by the leader only, as etcd's
//! `v3compactor`:
//!
//! - **periodic** (retention a duration; a bare number is hours): a
//!   revision is sampled every tenth of the period (at most every 6 min);
//!   the first compaction comes one period after start, then one every
//!   `min(period, 1h)`, each to the revision sampled one period before.
//! - **revision** (retention a number of revisions): every 5 minutes
//!   (`--auto-compaction-interval`), compact to `current - retention`
//!   unless that was the last one.
//! - **adaptive** (cairn's own; retention as periodic): a compaction that
//!   falls due while the member is busy (more than
//!   `--auto-compaction-busy-rate` requests/s over the last seconds) is
//!   postponed until traffic drops, but never longer than
//!   `--auto-compaction-max-delay`, so that compaction stays out of the
//!   traffic's way and space is still reclaimed.
//!
//! [`Schedule`] is the decision, pure and driven by a clock the caller
//! passes; [`run`] feeds it once a second and proposes the compactions.
use std::collections::VecDeque;
use std::time::Duration;

use cairn_proto::cairnpb::command::Op;
use cairn_proto::etcdserverpb::CompactionRequest;

use crate::api::Api;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Periodic,
    Revision,
    Adaptive,
}

/// The auto-compaction settings after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoCompaction {
    pub mode: Mode,
    /// Periodic/adaptive: the period. Revision: unused.
    pub period: Duration,
    /// Revision: revisions to keep.
    pub keep: i64,
    /// How often revision mode looks (etcd: 5 min).
    pub check_interval: Duration,
    /// Adaptive: requests/s above which the member counts as busy.
    pub busy_rate: f64,
    /// Adaptive: longest postponement of a due compaction.
    pub max_delay: Duration,
}

impl AutoCompaction {
    /// Parses etcd's `--auto-compaction-mode` and `--auto-compaction-retention`
    /// (None: off, the default "0").
    pub fn parse(
        mode: &str,
        retention: &str,
        check_interval: Option<Duration>,
        busy_rate: f64,
        max_delay: Duration,
    ) -> Result<Option<AutoCompaction>, String> {
        let mode = match mode {
            "" | "periodic" => Mode::Periodic,
            "revision" => Mode::Revision,
            "adaptive" => Mode::Adaptive,
            m => {
                return Err(format!(
                    "unknown mode {m:?} (periodic, revision or adaptive)"
                ));
            }
        };
        let retention = retention.trim();
        let (period, keep) = match mode {
            Mode::Revision => {
                let n: i64 = retention
                    .parse()
                    .map_err(|_| format!("retention {retention:?} is not a number of revisions"))?;
                (Duration::ZERO, n)
            }
            _ => {
                let d = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => crate::config::parse_duration(retention).ok_or_else(|| {
                        format!("retention {retention:?} is not a duration (like 1h, 30m) or hours")
                    })?,
                };
                (d, 0)
            }
        };
        if period.is_zero() && keep <= 0 {
            return Ok(None);
        }
        Ok(Some(AutoCompaction {
            mode,
            period,
            keep,
            check_interval: check_interval.unwrap_or(Duration::from_secs(300)),
            busy_rate,
            max_delay,
        }))
    }

    fn sample_interval(&self) -> Duration {
        self.period.min(Duration::from_secs(3600)) / 10
    }
}

/// The decision: fed the time, the current revision and the recent request
/// rate; answers the revision to compact to, if one is due.
#[derive(Debug)]
pub struct Schedule {
    cfg: AutoCompaction,
    /// (time, revision) samples, oldest first (periodic, adaptive).
    samples: VecDeque<(Duration, i64)>,
    next_sample: Duration,
    last_success: Duration,
    /// Whether a compaction has succeeded (the first waits a full period).
    compacted_once: bool,
    /// Revision mode: the next look and the last compaction.
    next_check: Duration,
    prev: i64,
    /// Adaptive: since when a compaction is due (postponed).
    due_since: Option<Duration>,
}

/// What the schedule decided at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Wait,
    Compact(i64),
    /// Due, but the member is busy (adaptive).
    Postponed,
}

impl Schedule {
    pub fn new(cfg: AutoCompaction, now: Duration) -> Schedule {
        Schedule {
            next_check: now + cfg.check_interval,
            cfg,
            samples: VecDeque::new(),
            next_sample: now,
            last_success: now,
            compacted_once: false,
            prev: 0,
            due_since: None,
        }
    }

    pub fn tick(&mut self, now: Duration, rev: i64, rate: f64) -> Decision {
        match self.cfg.mode {
            Mode::Revision => {
                if now < self.next_check {
                    return Decision::Wait;
                }
                self.next_check = now + self.cfg.check_interval;
                let target = rev - self.cfg.keep;
                if target <= 0 || target == self.prev {
                    return Decision::Wait;
                }
                Decision::Compact(target)
            }
            Mode::Periodic | Mode::Adaptive => {
                if now >= self.next_sample {
                    self.samples.push_back((now, rev));
                    let keep = (self.cfg.period.as_nanos()
                        / self.cfg.sample_interval().as_nanos().max(1))
                        as usize
                        + 1;
                    while self.samples.len() > keep {
                        self.samples.pop_front();
                    }
                    self.next_sample = now + self.cfg.sample_interval();
                }
                let every = if self.compacted_once {
                    self.cfg.period.min(Duration::from_secs(3600))
                } else {
                    self.cfg.period
                };
                if now.saturating_sub(self.last_success) < every {
                    return Decision::Wait;
                }
                // The newest sample at least one period old.
                let Some(&(_, target)) = self
                    .samples
                    .iter()
                    .rev()
                    .find(|(t, _)| now.saturating_sub(*t) >= self.cfg.period)
                    .or(self.samples.front())
                else {
                    return Decision::Wait;
                };
                if self.cfg.mode == Mode::Adaptive && rate > self.cfg.busy_rate {
                    let since = *self.due_since.get_or_insert(now);
                    if now.saturating_sub(since) < self.cfg.max_delay {
                        return Decision::Postponed;
                    }
                }
                Decision::Compact(target)
            }
        }
    }

    /// The compaction to `rev` was done (or was already).
    pub fn done(&mut self, now: Duration, rev: i64) {
        self.last_success = now;
        self.compacted_once = true;
        self.prev = rev;
        self.due_since = None;
    }
}

/// Feeds the schedule once a second on this member; proposes the
/// compactions while it leads (etcd pauses its compactor elsewhere).
pub async fn run(api: Api, cfg: AutoCompaction, mut stop: tokio::sync::watch::Receiver<bool>) {
    let start = tokio::time::Instant::now();
    let mut schedule = Schedule::new(cfg.clone(), Duration::ZERO);
    let tick_every =
        Duration::from_millis((cfg.sample_interval().as_millis() as u64).clamp(50, 1000))
            .min(cfg.check_interval.max(Duration::from_millis(50)));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Requests seen: reads plus applied entries, sampled over ~5 s.
    let requests = |api: &Api| api.metrics.range_total.get() + api.metrics.applied.get();
    let mut window: VecDeque<(Duration, u64)> = VecDeque::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = start.elapsed();
        window.push_back((now, requests(&api)));
        while window.len() > 2 && now - window[0].0 > Duration::from_secs(5) {
            window.pop_front();
        }
        let rate = match (window.front(), window.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
            _ => 0.0,
        };
        let decision = schedule.tick(now, api.mvcc.current_revision(), rate);
        if !api.is_leader() {
            continue;
        }
        match decision {
            Decision::Wait => {}
            Decision::Postponed => {
                api.metrics.compactions_postponed.inc();
            }
            Decision::Compact(rev) => {
                let out = api
                    .propose(Op::Compaction(CompactionRequest {
                        revision: rev,
                        physical: false,
                    }))
                    .await;
                match out.map(|a| a.result) {
                    Ok(Ok(_)) | Ok(Err(cairn_mvcc::MvccError::Compacted)) => {
                        tracing::info!(revision = rev, mode = ?cfg.mode, "auto compaction");
                        schedule.done(start.elapsed(), rev);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(revision = rev, error = %e, "auto compaction failed")
                    }
                    Err(e) => tracing::warn!(revision = rev, error = %e, "auto compaction failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn cfg(mode: Mode, period: Duration, keep: i64) -> AutoCompaction {
        AutoCompaction {
            mode,
            period,
            keep,
            check_interval: s(300),
            busy_rate: 100.0,
            max_delay: s(600),
        }
    }

    #[test]
    fn retention_is_parsed_as_etcd_does() {
        let p = |m, r| AutoCompaction::parse(m, r, None, 1.0, s(1));
        assert_eq!(p("periodic", "0").unwrap(), None);
        assert_eq!(p("periodic", "1").unwrap().unwrap().period, s(3600));
        assert_eq!(p("periodic", "30m").unwrap().unwrap().period, s(1800));
        assert_eq!(p("", "2s").unwrap().unwrap().period, s(2));
        assert_eq!(p("revision", "1000").unwrap().unwrap().keep, 1000);
        assert!(
            p("revision", "1h")
                .unwrap_err()
                .contains("number of revisions")
        );
        assert!(p("weekly", "1").unwrap_err().contains("unknown mode"));
        assert!(
            p("periodic", "soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn periodic_compacts_to_the_revision_one_period_old_then_every_period() {
        // 1 h period: samples every 6 min, first compaction at 1 h.
        let mut sch = Schedule::new(cfg(Mode::Periodic, s(3600), 0), s(0));
        let mut decisions = Vec::new();
        for minute in 0..=130u64 {
            let rev = 1 + minute as i64 * 100; // 100 revisions a minute
            let d = sch.tick(s(minute * 60), rev, 0.0);
            if let Decision::Compact(r) = d {
                sch.done(s(minute * 60), r);
                decisions.push((minute, r));
            }
        }
        // At 60 min: the sample from 0 min; at 120 min: the one from 60.
        assert_eq!(decisions, vec![(60, 1), (120, 6001)]);
    }

    #[test]
    fn revision_mode_keeps_the_last_n_and_skips_repeats() {
        let mut sch = Schedule::new(cfg(Mode::Revision, Duration::ZERO, 1000), s(0));
        assert_eq!(sch.tick(s(100), 5000, 0.0), Decision::Wait, "not yet 5 min");
        assert_eq!(sch.tick(s(300), 5000, 0.0), Decision::Compact(4000));
        sch.done(s(300), 4000);
        assert_eq!(sch.tick(s(600), 5000, 0.0), Decision::Wait, "same target");
        assert_eq!(
            sch.tick(s(900), 800, 0.0),
            Decision::Wait,
            "nothing to keep"
        );
        assert_eq!(sch.tick(s(1200), 7000, 0.0), Decision::Compact(6000));
    }

    #[test]
    fn adaptive_waits_for_a_lull_but_not_past_the_maximum_delay() {
        let mut c = cfg(Mode::Adaptive, s(600), 0);
        c.max_delay = s(120);
        let mut sch = Schedule::new(c, s(0));
        for t in (0..600).step_by(60) {
            assert_eq!(sch.tick(s(t), 1 + t as i64, 500.0), Decision::Wait);
        }
        // Due at 600 s, busy: postponed.
        assert_eq!(sch.tick(s(600), 601, 500.0), Decision::Postponed);
        assert_eq!(sch.tick(s(660), 661, 500.0), Decision::Postponed);
        // Traffic drops: done at once.
        // (the newest sample a period old: the one from 60 s)
        assert_eq!(sch.tick(s(670), 671, 10.0), Decision::Compact(61));
        sch.done(s(670), 61);
        // Next one due 600 s later; busy all along: done at the bound.
        let mut t = 680;
        let at = loop {
            match sch.tick(s(t), t as i64, 500.0) {
                Decision::Compact(_) => break t,
                _ => t += 10,
            }
        };
        assert_eq!(at, 670 + 600 + 120);
    }
}
