//! The history of KV operations as clients saw them: what was asked, when, and what came
//! back. Owns the record types and their well-formedness rules; must never judge whether a
//! history is correct (that is [`crate::linearizability`]'s job).

use std::fmt;

/// An etcd revision (`mod_revision`, header `revision`). A fresh store is at revision 1, so
/// the first write gets revision 2; a key that does not exist has `mod_revision` 0.
pub type Revision = i64;

/// One client operation on one key.
///
/// `return_ns` is `None` when the outcome is unknown (timeout, connection lost, leader
/// lost): the operation may take effect at any time after `call_ns`, or never. Exactly the
/// operations with a `return_ns` carry a result in their [`OpKind`]; [`History::validate`]
/// enforces this. Definite failures (the server said "not applied") are not operations and
/// should not be recorded at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Which client issued it; informational (the checker does not assume clients are
    /// sequential, although well-behaved recorders make them so).
    pub client: u64,
    /// When the request was sent, on the recorder's clock.
    pub call_ns: u64,
    /// When the response was received; `None` = outcome unknown.
    pub return_ns: Option<u64>,
    /// The request, plus its result when known.
    pub kind: OpKind,
}

/// A KV request and, when the outcome is known, what the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `Put(key, value)`.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        result: Option<PutOk>,
    },
    /// Linearizable `Range` of one key.
    Get { key: Vec<u8>, result: Option<GetOk> },
    /// `DeleteRange` of one key.
    Delete {
        key: Vec<u8>,
        result: Option<DeleteOk>,
    },
    /// A `Txn` of the form `if <expect> then put(key, new_value)` (else: nothing).
    Cas {
        key: Vec<u8>,
        expect: CasExpect,
        new_value: Vec<u8>,
        result: Option<CasOk>,
    },
}

/// A successful put: the revision of the write (the key's new `mod_revision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOk {
    pub revision: Revision,
}

/// A read: the value (`None` = key absent), its `mod_revision` (0 when absent) and the
/// header revision the read was served at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetOk {
    pub value: Option<Vec<u8>>,
    pub mod_revision: Revision,
    pub revision: Revision,
}

/// A delete: whether the key existed; `revision` is the delete's revision when `deleted`,
/// otherwise the header (current) revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteOk {
    pub deleted: bool,
    pub revision: Revision,
}

/// A compare-and-swap: whether the compare held; `revision` is the write's revision when
/// `succeeded`, otherwise the header (current) revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CasOk {
    pub succeeded: bool,
    pub revision: Revision,
}

/// The compare of a [`OpKind::Cas`], with etcd's semantics for absent keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasExpect {
    /// `mod_revision(key) == r`; `ModRevision(0)` means "the key does not exist".
    ModRevision(Revision),
    /// `value(key) == v`; false when the key does not exist.
    Value(Vec<u8>),
}

impl Op {
    /// A put that returned `revision`.
    pub fn put(
        client: u64,
        call_ns: u64,
        return_ns: u64,
        key: &[u8],
        value: &[u8],
        revision: Revision,
    ) -> Op {
        let result = Some(PutOk { revision });
        Op::new(
            client,
            call_ns,
            Some(return_ns),
            OpKind::Put {
                key: key.to_vec(),
                value: value.to_vec(),
                result,
            },
        )
    }

    /// A put whose outcome is unknown.
    pub fn put_unknown(client: u64, call_ns: u64, key: &[u8], value: &[u8]) -> Op {
        Op::new(
            client,
            call_ns,
            None,
            OpKind::Put {
                key: key.to_vec(),
                value: value.to_vec(),
                result: None,
            },
        )
    }

    /// A read that returned `value` (`None` = absent) with `mod_revision` (0 when absent)
    /// at header `revision`.
    pub fn get(
        client: u64,
        call_ns: u64,
        return_ns: u64,
        key: &[u8],
        value: Option<&[u8]>,
        mod_revision: Revision,
        revision: Revision,
    ) -> Op {
        let result = Some(GetOk {
            value: value.map(<[u8]>::to_vec),
            mod_revision,
            revision,
        });
        Op::new(
            client,
            call_ns,
            Some(return_ns),
            OpKind::Get {
                key: key.to_vec(),
                result,
            },
        )
    }

    /// A delete that returned.
    pub fn delete(
        client: u64,
        call_ns: u64,
        return_ns: u64,
        key: &[u8],
        deleted: bool,
        revision: Revision,
    ) -> Op {
        let result = Some(DeleteOk { deleted, revision });
        Op::new(
            client,
            call_ns,
            Some(return_ns),
            OpKind::Delete {
                key: key.to_vec(),
                result,
            },
        )
    }

    /// A delete whose outcome is unknown.
    pub fn delete_unknown(client: u64, call_ns: u64, key: &[u8]) -> Op {
        Op::new(
            client,
            call_ns,
            None,
            OpKind::Delete {
                key: key.to_vec(),
                result: None,
            },
        )
    }

    /// A compare-and-swap that returned `outcome`.
    pub fn cas(
        client: u64,
        call_ns: u64,
        return_ns: u64,
        key: &[u8],
        expect: CasExpect,
        new_value: &[u8],
        outcome: CasOk,
    ) -> Op {
        let result = Some(outcome);
        let kind = OpKind::Cas {
            key: key.to_vec(),
            expect,
            new_value: new_value.to_vec(),
            result,
        };
        Op::new(client, call_ns, Some(return_ns), kind)
    }

    /// A compare-and-swap whose outcome is unknown.
    pub fn cas_unknown(
        client: u64,
        call_ns: u64,
        key: &[u8],
        expect: CasExpect,
        new_value: &[u8],
    ) -> Op {
        let kind = OpKind::Cas {
            key: key.to_vec(),
            expect,
            new_value: new_value.to_vec(),
            result: None,
        };
        Op::new(client, call_ns, None, kind)
    }

    fn new(client: u64, call_ns: u64, return_ns: Option<u64>, kind: OpKind) -> Op {
        Op {
            client,
            call_ns,
            return_ns,
            kind,
        }
    }

    /// The key this operation touches.
    pub fn key(&self) -> &[u8] {
        match &self.kind {
            OpKind::Put { key, .. }
            | OpKind::Get { key, .. }
            | OpKind::Delete { key, .. }
            | OpKind::Cas { key, .. } => key,
        }
    }

    /// Whether the kind carries a result.
    pub fn has_result(&self) -> bool {
        match &self.kind {
            OpKind::Put { result, .. } => result.is_some(),
            OpKind::Get { result, .. } => result.is_some(),
            OpKind::Delete { result, .. } => result.is_some(),
            OpKind::Cas { result, .. } => result.is_some(),
        }
    }

    /// The revision the server returned and whether it is a write's own revision (`true`)
    /// or a header revision of a read-only outcome (`false`); `None` when unknown.
    pub fn returned_revision(&self) -> Option<(Revision, bool)> {
        match &self.kind {
            OpKind::Put { result, .. } => result.map(|r| (r.revision, true)),
            OpKind::Get { result, .. } => result.as_ref().map(|r| (r.revision, false)),
            OpKind::Delete { result, .. } => result.map(|r| (r.revision, r.deleted)),
            OpKind::Cas { result, .. } => result.map(|r| (r.revision, r.succeeded)),
        }
    }
}

/// An ordered list of operations; an operation's index here is how every verdict names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn new(ops: Vec<Op>) -> History {
        History { ops }
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Checks the recording itself (not the server): returns never precede calls, and an
    /// operation has a result exactly when it has a return time.
    pub fn validate(&self) -> Result<(), HistoryError> {
        for (index, op) in self.ops.iter().enumerate() {
            match (op.return_ns, op.has_result()) {
                (Some(ret), true) if ret < op.call_ns => {
                    return Err(HistoryError::ReturnBeforeCall { op: index })
                }
                (Some(_), false) => return Err(HistoryError::ReturnWithoutResult { op: index }),
                (None, true) => return Err(HistoryError::ResultWithoutReturn { op: index }),
                _ => {}
            }
        }
        Ok(())
    }
}

/// A malformed recording: a bug in the recorder, not in the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    ReturnBeforeCall { op: usize },
    ReturnWithoutResult { op: usize },
    ResultWithoutReturn { op: usize },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::ReturnBeforeCall { op } => {
                write!(f, "op {op}: return_ns precedes call_ns")
            }
            HistoryError::ReturnWithoutResult { op } => {
                write!(f, "op {op}: has return_ns but no result")
            }
            HistoryError::ResultWithoutReturn { op } => {
                write!(
                    f,
                    "op {op}: has a result but no return_ns (unknown outcomes carry no result)"
                )
            }
        }
    }
}

impl std::error::Error for HistoryError {}
