//! A bound on YAML alias expansion, checked on the parser's events before the document is
//! loaded.
//!
//! Each alias (`*name`) becomes a full copy of its anchor's value when the document is loaded,
//! so a few nested anchors expand exponentially (the "billion laughs"). `saphyr` has a node
//! budget for this, but it counts a mapping key as one node whatever the key holds, so anchors
//! used as mapping keys slip through: an 810-byte file took 3 GB. It also counts nodes, not
//! bytes, so a long string copied 100,000 times passes.
//!
//! This pass walks the events once (linear in the text) and weighs what each anchor expands to:
//! every node, key or value, weighs [`NODE_WEIGHT`] plus its scalar's bytes, and a collection
//! the sum of its contents, aliases counted at their anchor's weight. The weight all aliases
//! produce together must stay under [`MAX_ALIAS_WEIGHT`]; the alias that crosses it is reported.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

use super::error::Pos;

/// What one node is taken to cost, in bytes, besides its text.
const NODE_WEIGHT: u64 = 64;

/// The most (in bytes, roughly) that all aliases of a document may expand to: far more than any
/// config shares through anchors, far less than a machine's memory.
pub(super) const MAX_ALIAS_WEIGHT: u64 = 4 * 1024 * 1024;

/// Check that the aliases of `text` expand to at most [`MAX_ALIAS_WEIGHT`]. A syntax error ends
/// the check without an error: the loader reports it with its own message.
pub(super) fn check(text: &str) -> Result<(), (Pos, String)> {
    check_with(text, MAX_ALIAS_WEIGHT)
}

fn check_with(text: &str, limit: u64) -> Result<(), (Pos, String)> {
    // Open collections: (weight so far, anchor id or 0).
    let mut open: Vec<(u64, usize)> = Vec::new();
    let mut anchors: HashMap<usize, u64> = HashMap::new();
    let mut expanded: u64 = 0;
    let add = |open: &mut Vec<(u64, usize)>, w: u64| {
        if let Some(top) = open.last_mut() {
            top.0 = top.0.saturating_add(w);
        }
    };
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else {
            return Ok(());
        };
        match event {
            Event::Scalar(v, _, anchor, _) => {
                let w = NODE_WEIGHT.saturating_add(v.len() as u64);
                if anchor > 0 {
                    anchors.insert(anchor, w);
                }
                add(&mut open, w);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push((NODE_WEIGHT, anchor));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((w, anchor)) = open.pop() {
                    if anchor > 0 {
                        anchors.insert(anchor, w);
                    }
                    add(&mut open, w);
                }
            }
            Event::Alias(id) => {
                let w = anchors.get(&id).copied().unwrap_or(0);
                expanded = expanded.saturating_add(w);
                if expanded > limit {
                    let m = span.start;
                    return Err((
                        Pos::new(m.line(), m.col() + 1),
                        format!(
                            "YAML aliases expand to more than {} KiB here (each alias is a copy \
                             of its anchor's value; nested anchors multiply): refusing to load it",
                            limit / 1024
                        ),
                    ));
                }
                add(&mut open, w);
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anchors nested `levels` deep, each level holding `fan` aliases of the previous one, the
    /// copies hidden in a mapping key at every other level (where `saphyr`'s budget does not
    /// look).
    fn bomb(levels: usize, fan: usize) -> String {
        let mut s = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..=levels {
            let prev = format!("*l{}", i - 1);
            if i % 2 == 1 {
                s.push_str(&format!("l{i}: &l{i} {{ ? {prev} : 1 }}\n"));
            } else {
                let items = vec![prev; fan].join(", ");
                s.push_str(&format!("l{i}: &l{i} [{items}]\n"));
            }
        }
        s
    }

    #[test]
    fn ordinary_aliases_pass() {
        assert_eq!(
            check("a: &x 5s\nb: *x\nc: [*x, *x]\nd: &m {k: v}\ne: *m\n"),
            Ok(())
        );
        // A syntax error is left to the loader.
        assert_eq!(check("a: [1\n"), Ok(()));
        assert_eq!(check("a: *nope\n"), Ok(()));
    }

    #[test]
    fn aliases_in_mapping_keys_are_weighed() {
        let text = bomb(20, 9);
        assert!(text.len() < 1024, "{}", text.len());
        let (pos, msg) = check(&text).unwrap_err();
        assert!(
            msg.contains("YAML aliases expand to more than 4096 KiB"),
            "{msg}"
        );
        assert!(pos.line > 2 && pos.line <= 21, "{pos}");
    }

    #[test]
    fn a_long_string_copied_many_times_is_weighed() {
        let long = "y".repeat(10_000);
        let text = format!("a: &a {long}\nb: [{}]\n", vec!["*a"; 1000].join(","));
        assert!(check(&text).is_err());
        assert_eq!(check_with(&text, u64::MAX), Ok(()));
    }
}
