//! Cross-key revision rules, checked before the per-key search because they are cheap and
//! their explanations are short. Owns: uniqueness of write revisions, and real-time order of
//! all returned revisions (strict serializability of etcd's single global revision). Must
//! never look at values.

use crate::history::{History, Revision};
use crate::linearizability::{CheckKind, Violation};

#[derive(Clone, Copy, Debug)]
struct Stamped {
    index: usize,
    call_ns: u64,
    return_ns: u64,
    revision: Revision,
    /// A write's own revision (must be unique and strictly above earlier ones) rather than
    /// the header revision of an outcome that changed nothing.
    write: bool,
}

/// Checks, over known-outcome operations of all keys:
/// - no two writes (puts, deletes that deleted, compares that succeeded) share a revision;
/// - if `a` returned before `b` was called, `a.revision < b.revision` when `b` is a write,
///   and `a.revision <= b.revision` when `b` only read: a read sees every write that
///   completed before it started, and a write lands after everything that completed
///   before it started.
pub fn check_revisions(history: &History) -> Option<Violation> {
    let stamped: Vec<Stamped> = history
        .ops
        .iter()
        .enumerate()
        .filter_map(|(index, op)| {
            let (revision, write) = op.returned_revision()?;
            Some(Stamped {
                index,
                call_ns: op.call_ns,
                return_ns: op.return_ns?,
                revision,
                write,
            })
        })
        .collect();
    unique_write_revisions(&stamped).or_else(|| real_time_order(&stamped))
}

fn unique_write_revisions(stamped: &[Stamped]) -> Option<Violation> {
    let mut writes: Vec<&Stamped> = stamped.iter().filter(|s| s.write).collect();
    writes.sort_by_key(|s| (s.revision, s.index));
    let pair = writes.windows(2).find(|w| w[0].revision == w[1].revision)?;
    Some(Violation {
        check: CheckKind::RevisionUnique,
        key: None,
        ops: vec![pair[0].index, pair[1].index],
        minimal: true,
        detail: format!("two writes both returned revision {}", pair[0].revision),
    })
}

/// Sweeps operations by call time while admitting, by return time, everything that returned
/// strictly before: the largest admitted revision bounds the next call's revision.
fn real_time_order(stamped: &[Stamped]) -> Option<Violation> {
    let mut by_return: Vec<&Stamped> = stamped.iter().collect();
    by_return.sort_by_key(|s| (s.return_ns, s.index));
    let mut by_call: Vec<&Stamped> = stamped.iter().collect();
    by_call.sort_by_key(|s| (s.call_ns, s.index));
    let mut admitted = 0;
    let mut max_before: Option<&Stamped> = None;
    for b in by_call {
        while admitted < by_return.len() && by_return[admitted].return_ns < b.call_ns {
            let a = by_return[admitted];
            if max_before.is_none_or(|m| a.revision > m.revision) {
                max_before = Some(a);
            }
            admitted += 1;
        }
        let Some(a) = max_before else { continue };
        let broken = if b.write {
            a.revision >= b.revision
        } else {
            a.revision > b.revision
        };
        if broken {
            let what = if b.write { "write" } else { "read" };
            let detail = format!(
                "op {} returned revision {} before op {} ({what}) was called, which returned revision {}",
                a.index, a.revision, b.index, b.revision
            );
            let ops = vec![a.index, b.index];
            return Some(Violation {
                check: CheckKind::RevisionOrder,
                key: None,
                ops,
                minimal: true,
                detail,
            });
        }
    }
    None
}
