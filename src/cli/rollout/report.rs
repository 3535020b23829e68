//! What a rollout prints at its end: the table (target, old pid → new pid, handoff, outcome)
//! and the `--json` object, whose schema the README's "Rolling out to many hosts" shows.

use serde_json::json;

use crate::channel::RestartOutcome;
use crate::cli::rollout::plan::{Outcome, Rollout};
use crate::cli::rollout::probes::Probes;
use crate::cli::rollout::target::{Facts, Target};

/// What the rollout learned about one target.
#[derive(Debug, Default)]
pub(super) struct Row {
    /// The status before anything was done.
    pub(super) before: Option<Facts>,
    pub(super) probes: Option<Probes>,
    /// The restart to the new executable.
    pub(super) restart: Option<RestartOutcome>,
    /// The restart back.
    pub(super) rollback: Option<RestartOutcome>,
    /// Why it could not be asked before the rollout (the preflight).
    pub(super) refused: Option<String>,
}

/// The summary table.
pub(super) fn table(targets: &[Target], new_exe: bool, rollout: &Rollout, rows: &[Row]) -> String {
    let mut lines = vec![[
        "TARGET".to_string(),
        "PID".to_string(),
        "HANDOFF".to_string(),
        "OUTCOME".to_string(),
    ]];
    for (i, (t, r)) in targets.iter().zip(rows).enumerate() {
        let old = r
            .before
            .as_ref()
            .and_then(|f| f.worker_pid)
            .map_or_else(|| "-".to_string(), |p| p.to_string());
        let pid = match &r.restart {
            Some(o) => format!("{old} → {}", o.pid),
            None => old,
        };
        let handoff = r
            .restart
            .as_ref()
            .map_or_else(|| "-".to_string(), |o| human_ms(o.handoff_ms));
        let outcome = one_line(&describe(rollout.outcome(i), r, new_exe));
        lines.push([t.label.clone(), pid, handoff, outcome]);
    }
    let mut widths = [0usize; 3];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for l in lines {
        for (w, cell) in widths.iter().zip(l.iter()) {
            let pad = w - cell.chars().count();
            out.push_str(cell);
            out.push_str(&" ".repeat(pad + 2));
        }
        out.push_str(&l[3]);
        out.push('\n');
    }
    out
}

/// The `--json` object.
pub(super) fn json(
    targets: &[Target],
    exe: Option<&str>,
    rollout: &Rollout,
    rows: &[Row],
) -> serde_json::Value {
    let list: Vec<serde_json::Value> = targets
        .iter()
        .zip(rows)
        .enumerate()
        .map(|(i, (t, r))| {
            let o = rollout.outcome(i);
            let reason = match o {
                Outcome::Failed { reason, .. } | Outcome::RollbackFailed(reason) => {
                    Some(reason.clone())
                }
                _ => r.refused.clone(),
            };
            json!({
                "target": t.label,
                "outcome": o.word(),
                "reason": reason,
                "old_pid": r.before.as_ref().and_then(|f| f.worker_pid),
                "old_exe": r.before.as_ref().map(|f| &f.exe),
                "new_pid": r.restart.as_ref().map(|o| o.pid),
                "exe": r.restart.as_ref().map(|o| &o.exe),
                "handoff_ms": r.restart.as_ref().map(|o| o.handoff_ms),
                "mode": r.restart.as_ref().map(|o| &o.mode),
                "rollback": r.rollback.as_ref().map(|o| json!({
                    "pid": o.pid, "exe": o.exe, "handoff_ms": o.handoff_ms,
                })),
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ok": rollout.succeeded(),
        "exe": exe,
        "halted": rollout.halted().map(|h| json!({
            "target": h.target.map(|i| &targets[i].label),
            "reason": h.reason,
        })),
        "targets": list,
    })
}

/// The table's outcome cell.
fn describe(o: &Outcome, r: &Row, new_exe: bool) -> String {
    match o {
        Outcome::Untouched => match &r.refused {
            Some(why) => format!("untouched: {why}"),
            None => "untouched".into(),
        },
        Outcome::Upgraded if new_exe => "upgraded".into(),
        Outcome::Upgraded => "restarted".into(),
        Outcome::Failed { reason, moved } => {
            let state = if *moved {
                "runs the new executable"
            } else {
                "runs what it ran before"
            };
            format!("failed ({state}): {reason}")
        }
        Outcome::RolledBack => match (&r.rollback, &r.before) {
            (Some(b), Some(f)) => format!("rolled back to {} (pid {})", f.exe, b.pid),
            _ => "rolled back".into(),
        },
        Outcome::RollbackFailed(why) => {
            format!("roll-back failed (runs the new executable): {why}")
        }
    }
}

/// The most characters of an outcome the table shows (the whole reason is on stderr and in
/// the JSON).
const CELL_MAX: usize = 160;

/// `s` on one line (a reason may carry the end of a process's output), cut to [`CELL_MAX`].
fn one_line(s: &str) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > CELL_MAX {
        let cut: String = flat.chars().take(CELL_MAX - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// Milliseconds as people read them: the same words `apphost restart` prints.
pub(super) use crate::cli::client::human_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cells_are_one_line_and_bounded() {
        assert_eq!(
            one_line("failed: exit status 3; last output:\nthis build\n  is broken\n"),
            "failed: exit status 3; last output: this build is broken"
        );
        let long = one_line(&"x ".repeat(500));
        assert_eq!(long.chars().count(), CELL_MAX);
        assert!(long.ends_with('…'));
    }
}
