//! The rollout's decisions, without I/O: which targets go next, when the bake runs, when the
//! rollout halts, which targets are rolled back, and how an error rate is judged. The driver
//! (`rollout::run`) asks [`Rollout::next_step`] what to do, does it, and reports each result
//! back; the unit tests below feed results and check the steps.
//!
//! The order: the first `canary` targets one at a time, then (when `bake` is on) a bake of
//! those canaries, then the rest `parallel` at a time. The first failure halts it: nothing
//! more is started, and targets not yet asked stay as they are. With `rollback`, every target
//! that this rollout moved to the new executable (the canaries, and any batch already done) is
//! restarted back to the executable it ran before.

use crate::cli::rollout::metrics::Tally;

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Restart these targets (at the same time) to the new executable, then check each is
    /// ready; report each with [`Rollout::restarted`].
    Restart(Vec<usize>),
    /// Watch these canaries for the bake; report with [`Rollout::baked`].
    Bake(Vec<usize>),
    /// Restart these targets back to the executable they ran before; report each with
    /// [`Rollout::rolled_back`].
    RollBack(Vec<usize>),
    /// Nothing more: see [`Rollout::succeeded`] and [`Rollout::outcome`].
    Done,
}

/// How a target's restart ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Restarted {
    /// It runs the new executable and its `ready` route answers.
    Ok,
    /// The restart failed: the host still runs what it ran before.
    Refused(String),
    /// The restart succeeded but the target is not ready: it runs the new executable.
    NotReady(String),
}

/// Where a target ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not asked (the rollout halted before it, or never started).
    Untouched,
    /// Runs the new executable.
    Upgraded,
    /// Asked and failed; whether it runs the new executable is in `moved`.
    Failed {
        /// Why.
        reason: String,
        /// It runs the new executable (the restart worked, what came after did not).
        moved: bool,
    },
    /// Moved, then restarted back to its executable from before.
    RolledBack,
    /// Moved, and the restart back failed: it still runs the new executable.
    RollbackFailed(String),
}

impl Outcome {
    /// A word for the table and the JSON.
    pub(crate) fn word(&self) -> &'static str {
        match self {
            Outcome::Untouched => "untouched",
            Outcome::Upgraded => "upgraded",
            Outcome::Failed { .. } => "failed",
            Outcome::RolledBack => "rolled_back",
            Outcome::RollbackFailed(_) => "rollback_failed",
        }
    }
}

/// The rollout's settings that decide its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// How many targets there are.
    pub targets: usize,
    /// The first `canary` targets go first, one at a time.
    pub canary: usize,
    /// Watch the canaries before going on.
    pub bake: bool,
    /// Then this many at a time (at least 1).
    pub parallel: usize,
    /// On a halt, restart moved targets back.
    pub rollback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Going through the targets; `next` is the first not asked.
    Rolling,
    /// Waiting for the results of these.
    Waiting(Vec<usize>),
    /// The bake is under way.
    Baking,
    /// The roll-back is under way.
    RollingBack(Vec<usize>),
    Done,
}

/// Why a rollout halted: the first failure, and the target it happened on (none when the
/// rollout was refused before it started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Halt {
    /// The target, by index.
    pub target: Option<usize>,
    /// What happened.
    pub reason: String,
}

/// The rollout's state.
#[derive(Debug)]
pub(crate) struct Rollout {
    shape: Shape,
    next: usize,
    baked: bool,
    phase: Phase,
    outcomes: Vec<Outcome>,
    /// Why it halted: the first failure.
    halt: Option<Halt>,
}

impl Rollout {
    /// A rollout of `shape.targets` targets, none asked yet.
    pub(crate) fn new(shape: Shape) -> Rollout {
        let canary = shape.canary.min(shape.targets);
        Rollout {
            shape: Shape {
                canary,
                parallel: shape.parallel.max(1),
                bake: shape.bake && canary > 0,
                ..shape
            },
            next: 0,
            baked: false,
            phase: Phase::Rolling,
            outcomes: vec![Outcome::Untouched; shape.targets],
            halt: None,
        }
    }

    /// What to do next. Call it again after reporting every result it asked for.
    pub(crate) fn next_step(&mut self) -> Step {
        match &self.phase {
            Phase::Waiting(_) | Phase::Baking | Phase::RollingBack(_) => {
                // Results are still missing: the driver has nothing new to start.
                return Step::Done;
            }
            Phase::Done => return Step::Done,
            Phase::Rolling => {}
        }
        if self.halt.is_some() {
            let back: Vec<usize> = (0..self.outcomes.len())
                .filter(|&i| self.moved(i))
                .collect();
            if self.shape.rollback && !back.is_empty() {
                self.phase = Phase::RollingBack(back.clone());
                return Step::RollBack(back);
            }
            self.phase = Phase::Done;
            return Step::Done;
        }
        let s = self.shape;
        if self.next < s.canary {
            let i = self.next;
            self.next += 1;
            self.phase = Phase::Waiting(vec![i]);
            return Step::Restart(vec![i]);
        }
        if s.bake && !self.baked {
            self.phase = Phase::Baking;
            return Step::Bake((0..s.canary).collect());
        }
        if self.next < s.targets {
            let batch: Vec<usize> = (self.next..s.targets.min(self.next + s.parallel)).collect();
            self.next += batch.len();
            self.phase = Phase::Waiting(batch.clone());
            return Step::Restart(batch);
        }
        self.phase = Phase::Done;
        Step::Done
    }

    /// Whether target `i` runs the new executable because of this rollout.
    fn moved(&self, i: usize) -> bool {
        matches!(
            self.outcomes[i],
            Outcome::Upgraded | Outcome::Failed { moved: true, .. }
        )
    }

    /// The result of restarting target `i` (asked by a [`Step::Restart`]).
    pub(crate) fn restarted(&mut self, i: usize, r: Restarted) {
        let Phase::Waiting(w) = &mut self.phase else {
            return;
        };
        let Some(pos) = w.iter().position(|&x| x == i) else {
            return;
        };
        w.remove(pos);
        let done = w.is_empty();
        self.outcomes[i] = match r {
            Restarted::Ok => Outcome::Upgraded,
            Restarted::Refused(reason) => {
                self.halt_with(Some(i), reason.clone());
                Outcome::Failed {
                    reason,
                    moved: false,
                }
            }
            Restarted::NotReady(reason) => {
                self.halt_with(Some(i), reason.clone());
                Outcome::Failed {
                    reason,
                    moved: true,
                }
            }
        };
        if done {
            self.phase = Phase::Rolling;
        }
    }

    /// The bake's verdict: `Err` names the canary and why.
    pub(crate) fn baked(&mut self, r: Result<(), (usize, String)>) {
        if self.phase != Phase::Baking {
            return;
        }
        self.baked = true;
        if let Err((i, reason)) = r {
            let reason = format!("the bake: {reason}");
            self.halt_with(Some(i), reason.clone());
            self.outcomes[i] = Outcome::Failed {
                reason,
                moved: true,
            };
        }
        self.phase = Phase::Rolling;
    }

    /// The result of restarting target `i` back (asked by a [`Step::RollBack`]).
    pub(crate) fn rolled_back(&mut self, i: usize, r: Result<(), String>) {
        let Phase::RollingBack(w) = &mut self.phase else {
            return;
        };
        let Some(pos) = w.iter().position(|&x| x == i) else {
            return;
        };
        w.remove(pos);
        if w.is_empty() {
            self.phase = Phase::Done;
        }
        self.outcomes[i] = match r {
            Ok(()) => Outcome::RolledBack,
            Err(reason) => Outcome::RollbackFailed(reason),
        };
    }

    fn halt_with(&mut self, target: Option<usize>, reason: String) {
        if self.halt.is_none() {
            self.halt = Some(Halt { target, reason });
        }
    }

    /// Why the rollout halted, if it did.
    pub(crate) fn halted(&self) -> Option<&Halt> {
        self.halt.as_ref()
    }

    /// Where target `i` ended up.
    pub(crate) fn outcome(&self, i: usize) -> &Outcome {
        &self.outcomes[i]
    }

    /// Every target runs the new executable.
    pub(crate) fn succeeded(&self) -> bool {
        self.halt.is_none() && self.outcomes.iter().all(|o| *o == Outcome::Upgraded)
    }

    /// Halt before anything was started (a target could not be asked, a bad setting): every
    /// target stays untouched.
    pub(crate) fn refuse(&mut self, target: Option<usize>, reason: String) {
        self.halt_with(target, reason);
        self.phase = Phase::Done;
    }
}

/// At least this many requests must have been counted before a bake halts early on the error
/// rate; at the end of the bake, whatever was counted is judged.
pub(crate) const EARLY_VERDICT_REQUESTS: f64 = 20.0;

/// The error-rate verdict on `t` (requests counted since the bake began) against `max_rate`
/// (a fraction: 0.01 for 1 %). `last`: the bake's last look. `Err` says why it failed.
pub(crate) fn judge(t: Tally, max_rate: f64, last: bool) -> Result<(), String> {
    if t.total <= 0.0 || (!last && t.total < EARLY_VERDICT_REQUESTS) {
        return Ok(());
    }
    let rate = t.errors / t.total;
    if rate > max_rate {
        Err(format!(
            "{} of {} requests answered 5xx ({}), above the limit of {}",
            t.errors,
            t.total,
            percent(rate),
            percent(max_rate)
        ))
    } else {
        Ok(())
    }
}

/// `0.0123` as `1.23 %`, `0.01` as `1 %`.
pub(crate) fn percent(f: f64) -> String {
    let p = f * 100.0;
    let s = format!("{p:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} %")
}

/// Parse `--max-error-rate`: `1%`, `0.5%`, `0` (a percentage from 0 to 100).
pub(crate) fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let num = match t.strip_suffix('%') {
        Some(n) => n.trim(),
        None if t == "0" => "0",
        None => return Err(format!("{text:?}: write a percentage, e.g. 1% or 0.5%")),
    };
    let p: f64 = num
        .parse()
        .map_err(|_| format!("{text:?}: not a percentage (e.g. 1% or 0.5%)"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("{text:?}: a percentage from 0% to 100%"));
    }
    Ok(p / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(targets: usize, canary: usize, parallel: usize) -> Shape {
        Shape {
            targets,
            canary,
            bake: true,
            parallel,
            rollback: false,
        }
    }

    #[test]
    fn canaries_one_at_a_time_then_the_bake_then_batches() {
        let mut r = Rollout::new(shape(6, 2, 3));
        assert_eq!(r.next_step(), Step::Restart(vec![0]));
        // Nothing new while a result is missing.
        assert_eq!(r.next_step(), Step::Done);
        r.restarted(0, Restarted::Ok);
        assert_eq!(r.next_step(), Step::Restart(vec![1]));
        r.restarted(1, Restarted::Ok);
        assert_eq!(r.next_step(), Step::Bake(vec![0, 1]));
        r.baked(Ok(()));
        assert_eq!(r.next_step(), Step::Restart(vec![2, 3, 4]));
        r.restarted(3, Restarted::Ok);
        r.restarted(2, Restarted::Ok);
        assert_eq!(r.next_step(), Step::Done, "4 is still missing");
        r.restarted(4, Restarted::Ok);
        assert_eq!(r.next_step(), Step::Restart(vec![5]));
        r.restarted(5, Restarted::Ok);
        assert_eq!(r.next_step(), Step::Done);
        assert!(r.succeeded());
        assert!(r.halted().is_none());
    }

    #[test]
    fn no_canary_means_no_bake_and_more_canaries_than_targets_is_all() {
        let mut r = Rollout::new(shape(2, 0, 5));
        assert_eq!(r.next_step(), Step::Restart(vec![0, 1]));
        r.restarted(0, Restarted::Ok);
        r.restarted(1, Restarted::Ok);
        assert_eq!(r.next_step(), Step::Done);
        assert!(r.succeeded());

        let mut r = Rollout::new(shape(1, 3, 1));
        assert_eq!(r.next_step(), Step::Restart(vec![0]));
        r.restarted(0, Restarted::Ok);
        assert_eq!(r.next_step(), Step::Bake(vec![0]));
        r.baked(Ok(()));
        assert_eq!(r.next_step(), Step::Done);
        assert!(r.succeeded());
    }

    #[test]
    fn a_failed_first_canary_halts_and_leaves_the_rest_untouched() {
        let mut r = Rollout::new(Shape {
            rollback: true,
            ..shape(3, 1, 1)
        });
        assert_eq!(r.next_step(), Step::Restart(vec![0]));
        r.restarted(
            0,
            Restarted::Refused("the new process failed: exit 3".into()),
        );
        // Nothing to roll back: the host never left its executable.
        assert_eq!(r.next_step(), Step::Done);
        assert!(!r.succeeded());
        assert!(r.halted().unwrap().reason.contains("exit 3"));
        assert_eq!(r.halted().unwrap().target, Some(0));
        assert!(matches!(r.outcome(0), Outcome::Failed { moved: false, .. }));
        assert_eq!(r.outcome(1), &Outcome::Untouched);
        assert_eq!(r.outcome(2), &Outcome::Untouched);
    }

    #[test]
    fn a_failed_bake_rolls_the_canaries_back_when_asked() {
        let mut r = Rollout::new(Shape {
            rollback: true,
            ..shape(4, 2, 2)
        });
        r.next_step();
        r.restarted(0, Restarted::Ok);
        r.next_step();
        r.restarted(1, Restarted::Ok);
        assert_eq!(r.next_step(), Step::Bake(vec![0, 1]));
        r.baked(Err((1, "3 of 4 requests answered 5xx".into())));
        assert_eq!(r.next_step(), Step::RollBack(vec![0, 1]));
        assert_eq!(r.next_step(), Step::Done, "waiting for the roll-back");
        r.rolled_back(1, Ok(()));
        r.rolled_back(0, Err("busy".into()));
        assert_eq!(r.next_step(), Step::Done);
        assert_eq!(r.outcome(0), &Outcome::RollbackFailed("busy".into()));
        assert_eq!(r.outcome(1), &Outcome::RolledBack);
        assert_eq!(r.outcome(2), &Outcome::Untouched);
        assert_eq!(
            r.halted(),
            Some(&Halt {
                target: Some(1),
                reason: "the bake: 3 of 4 requests answered 5xx".into()
            })
        );
        assert!(!r.succeeded());
    }

    #[test]
    fn without_rollback_a_failed_bake_just_halts() {
        let mut r = Rollout::new(shape(3, 1, 1));
        r.next_step();
        r.restarted(0, Restarted::Ok);
        r.next_step();
        r.baked(Err((0, "not ready: 503".into())));
        assert_eq!(r.next_step(), Step::Done);
        assert!(matches!(r.outcome(0), Outcome::Failed { moved: true, .. }));
    }

    #[test]
    fn a_failure_in_a_batch_lets_the_batch_finish_and_rolls_back_everything_moved() {
        let mut r = Rollout::new(Shape {
            rollback: true,
            ..shape(5, 1, 2)
        });
        r.next_step();
        r.restarted(0, Restarted::Ok);
        r.next_step();
        r.baked(Ok(()));
        assert_eq!(r.next_step(), Step::Restart(vec![1, 2]));
        r.restarted(1, Restarted::NotReady("ready answered 503".into()));
        assert_eq!(r.next_step(), Step::Done, "2 is still under way");
        r.restarted(2, Restarted::Ok);
        assert_eq!(r.next_step(), Step::RollBack(vec![0, 1, 2]));
        for i in [0, 1, 2] {
            r.rolled_back(i, Ok(()));
        }
        assert_eq!(r.next_step(), Step::Done);
        assert_eq!(r.outcome(3), &Outcome::Untouched);
        assert_eq!(r.outcome(4), &Outcome::Untouched);
    }

    #[test]
    fn a_refusal_before_the_start_touches_nothing() {
        let mut r = Rollout::new(shape(2, 1, 1));
        r.refuse(Some(1), "unreachable".into());
        assert_eq!(r.next_step(), Step::Done);
        assert_eq!(r.outcome(0), &Outcome::Untouched);
        assert!(!r.succeeded());
    }

    #[test]
    fn error_rates_are_judged_early_only_on_enough_requests() {
        let t = |total, errors| Tally { total, errors };
        assert!(judge(t(0.0, 0.0), 0.01, true).is_ok());
        assert!(
            judge(t(5.0, 5.0), 0.01, false).is_ok(),
            "too few to halt early"
        );
        assert!(judge(t(5.0, 5.0), 0.01, true).is_err(), "judged at the end");
        let e = judge(t(40.0, 10.0), 0.01, false).unwrap_err();
        assert_eq!(
            e,
            "10 of 40 requests answered 5xx (25 %), above the limit of 1 %"
        );
        assert!(judge(t(1000.0, 10.0), 0.01, true).is_ok(), "exactly 1 %");
        assert!(judge(t(1000.0, 11.0), 0.01, true).is_err());
        assert!(judge(t(100.0, 1.0), 0.0, true).is_err());
    }

    #[test]
    fn rates_are_percentages() {
        assert_eq!(parse_rate("1%"), Ok(0.01));
        assert_eq!(parse_rate(" 0.5 %"), Ok(0.005));
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert!(parse_rate("1").unwrap_err().contains("percentage"));
        assert!(parse_rate("101%").is_err());
        assert!(parse_rate("x%").is_err());
        assert_eq!(percent(0.0123), "1.23 %");
        assert_eq!(percent(0.25), "25 %");
    }
}
