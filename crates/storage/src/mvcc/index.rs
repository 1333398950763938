//! The in-memory key index: every stored revision of every key, by key (etcd's `treeIndex`).
//!
//! Owns: answering "which version of key K does a read at revision R see" and range scans
//! at R without touching the backend, the lease -> live keys attachments (etcd's lessor
//! keeps them in memory too), undoing the revisions of a batch that did not commit, and
//! forgetting revisions that compaction removed. Must never do I/O: it is built from the
//! `Kv` table at open and after a restore, and kept in step by the store's writers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use smallvec::{smallvec, SmallVec};

use super::encoding::VersionRecord;
use super::types::Revision;
use crate::error::{Result, StorageError};

/// One stored version of a key, with the numbers a put of the key's next version needs, so
/// that a put reads nothing from the backend (etcd's `keyIndex` keeps them the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    pub(crate) rev: Revision,
    /// The lease the version is attached to (0 for none, and for a tombstone).
    pub(crate) lease: i64,
    /// The revision that created this generation of the key (0 for a tombstone).
    pub(crate) create_revision: i64,
    /// The version within the generation: 1 for its first put; 0 means a tombstone.
    pub(crate) version: i64,
}

impl Version {
    /// The index entry of the stored version `record` at `rev`.
    pub(crate) fn of(rev: Revision, record: &VersionRecord<'_>) -> Version {
        if record.tombstone {
            return Version {
                rev,
                lease: 0,
                create_revision: 0,
                version: 0,
            };
        }
        Version {
            rev,
            lease: record.lease,
            create_revision: record.create_revision,
            // A live version is at least 1 (a put writes its generation's count from 1 up).
            version: record.version.max(1),
        }
    }

    pub(crate) fn tombstone(&self) -> bool {
        self.version == 0
    }

    /// The lease a key whose newest version is this one is attached to, if any.
    pub(crate) fn attached_to(&self) -> Option<i64> {
        (!self.tombstone() && self.lease != 0).then_some(self.lease)
    }
}

/// A key's versions in ascending revision order. Most keys have one, which sits in the map's
/// own node: with a million single-version keys this saves a 48-byte allocation per key.
type Versions = SmallVec<[Version; 1]>;

/// Every key's versions in ascending revision order.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    /// Keys as boxed slices: 8 bytes per key fewer than a `Vec` in every tree node.
    keys: BTreeMap<Box<[u8]>, Versions>,
    /// Lease -> the keys whose newest version is attached to it.
    attached: HashMap<i64, BTreeSet<Vec<u8>>>,
    /// Revisions below this may have been forgotten by compaction: reads there are refused.
    floor: i64,
}

/// The index shared by a store's readers and its one writer at a time.
#[derive(Clone, Debug)]
pub(crate) struct SharedIndex(Arc<RwLock<KeyIndex>>);

impl SharedIndex {
    pub(crate) fn new(index: KeyIndex) -> SharedIndex {
        SharedIndex(Arc::new(RwLock::new(index)))
    }

    // Nothing that can panic runs under the lock, so a poisoned lock guards a whole index.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, KeyIndex> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The version of `versions` a read at `at_main` sees (tombstones included).
fn visible(versions: &[Version], at_main: i64) -> Option<Version> {
    // Writes and most reads are at the current revision: the newest version, without a
    // binary search over the key's whole history (a cache miss per step).
    if let Some(newest) = versions.last().filter(|v| v.rev.main <= at_main) {
        return Some(*newest);
    }
    let seen = versions.partition_point(|v| v.rev.main <= at_main);
    seen.checked_sub(1).map(|i| versions[i])
}

impl KeyIndex {
    pub(crate) fn with_floor(floor: i64) -> KeyIndex {
        KeyIndex {
            floor,
            ..KeyIndex::default()
        }
    }

    /// Refuses reads at revisions compaction may already have forgotten.
    pub(crate) fn check_readable(&self, at_main: i64) -> Result<()> {
        if at_main < self.floor {
            return Err(StorageError::Compacted);
        }
        Ok(())
    }

    /// Refuses history from `start_main` on (events with their previous versions) once
    /// compaction at or above it may have forgotten versions, as etcd refuses a watch from
    /// the compact revision itself.
    pub(crate) fn check_history(&self, start_main: i64) -> Result<()> {
        if start_main <= self.floor {
            return Err(StorageError::Compacted);
        }
        Ok(())
    }

    /// The version of `key` a read at `at_main` sees, tombstones included.
    pub(crate) fn visible(&self, key: &[u8], at_main: i64) -> Option<Version> {
        visible(self.keys.get(key)?, at_main)
    }

    /// The newest version of `key` older than `rev`.
    pub(crate) fn before(&self, key: &[u8], rev: Revision) -> Option<Version> {
        let versions = self.keys.get(key)?;
        let older = versions.partition_point(|v| v.rev < rev);
        older.checked_sub(1).map(|i| versions[i])
    }

    /// Calls `visit(key, version)` for every key in `bounds`, in key order, that is live at
    /// `at_main`, until it returns `false`.
    pub(crate) fn visit_live(
        &self,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        at_main: i64,
        visit: &mut dyn FnMut(&[u8], &Version) -> bool,
    ) {
        for (key, versions) in self.keys.range::<[u8], _>(bounds) {
            let live = visible(versions, at_main).filter(|v| !v.tombstone());
            if live.is_some_and(|v| !visit(key, &v)) {
                return;
            }
        }
    }

    /// Records a new version; `rev` is newer than every version already indexed.
    pub(crate) fn push(&mut self, key: &[u8], version: Version) {
        let was = match self.keys.get_mut(key) {
            Some(versions) => {
                let was = versions.last().and_then(Version::attached_to);
                versions.push(version);
                was
            }
            None => {
                self.keys.insert(key.into(), smallvec![version]);
                None
            }
        };
        self.reattach(key, was, version.attached_to());
    }

    fn reattach(&mut self, key: &[u8], was: Option<i64>, now: Option<i64>) {
        if was == now {
            return;
        }
        if let Some(lease) = was {
            if let Some(keys) = self.attached.get_mut(&lease) {
                keys.remove(key);
                if keys.is_empty() {
                    self.attached.remove(&lease);
                }
            }
        }
        if let Some(lease) = now {
            self.attached.entry(lease).or_default().insert(key.to_vec());
        }
    }

    /// The keys attached to `lease` now (newest versions, committed or not), in key order.
    pub(crate) fn attached(&self, lease: i64) -> impl Iterator<Item = &[u8]> {
        self.attached
            .get(&lease)
            .into_iter()
            .flatten()
            .map(Vec::as_slice)
    }

    /// Forgets every version of `keys` newer than main revision `above` (a batch that did
    /// not commit).
    pub(crate) fn roll_back(&mut self, keys: &[Vec<u8>], above: i64) {
        for key in keys {
            let Some(versions) = self.keys.get_mut(key.as_slice()) else {
                continue;
            };
            let was = versions.last().and_then(Version::attached_to);
            let kept = versions.partition_point(|v| v.rev.main <= above);
            versions.truncate(kept);
            let now = versions.last().and_then(Version::attached_to);
            if versions.is_empty() {
                self.keys.remove(key.as_slice());
            }
            self.reattach(key, was, now);
        }
    }

    /// Whether compaction at `compact_main` removes version `rev` of `key`: an older
    /// version than the one a read at `compact_main` sees, or that one if it is a tombstone.
    /// A version the index does not know is not needed by any read.
    pub(crate) fn doomed(&self, key: &[u8], rev: Revision, compact_main: i64) -> bool {
        match self.visible(key, compact_main) {
            Some(kept) => rev < kept.rev || (rev == kept.rev && kept.tombstone()),
            None => true,
        }
    }

    /// Forgets versions compaction at `compact_main` removes; reads below it fail from now on.
    pub(crate) fn forget(&mut self, doomed: &[(Vec<u8>, Revision)], compact_main: i64) {
        self.floor = self.floor.max(compact_main);
        for (key, rev) in doomed {
            let Some(versions) = self.keys.get_mut(key.as_slice()) else {
                continue;
            };
            versions.retain(|v| v.rev != *rev);
            if versions.is_empty() {
                self.keys.remove(key.as_slice());
            }
        }
    }

    /// Number of keys with at least one stored version (tests).
    #[cfg(test)]
    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(main: i64, tombstone: bool) -> Version {
        leased(main, tombstone, 0)
    }

    fn leased(main: i64, tombstone: bool, lease: i64) -> Version {
        Version {
            rev: Revision { main, sub: 0 },
            lease: if tombstone { 0 } else { lease },
            create_revision: if tombstone { 0 } else { main },
            version: if tombstone { 0 } else { 1 },
        }
    }

    #[test]
    fn a_keys_only_version_is_kept_inline() {
        let one: Versions = smallvec![version(2, false)];
        assert!(!one.spilled());
        assert_eq!(
            std::mem::size_of::<Versions>(),
            std::mem::size_of::<Version>() + std::mem::size_of::<usize>()
        );
    }

    fn attached(index: &KeyIndex, lease: i64) -> Vec<&[u8]> {
        index.attached(lease).collect()
    }

    #[test]
    fn keys_are_attached_to_the_lease_of_their_newest_version() {
        let mut index = KeyIndex::default();
        index.push(b"b", leased(2, false, 7));
        index.push(b"a", leased(3, false, 7));
        index.push(b"c", leased(3, false, 8));
        assert_eq!(attached(&index, 7), vec![&b"a"[..], b"b"]);
        index.push(b"a", leased(4, false, 8));
        index.push(b"b", leased(5, true, 0));
        index.push(b"c", leased(5, false, 0));
        assert!(attached(&index, 7).is_empty());
        assert_eq!(attached(&index, 8), vec![&b"a"[..]]);
        index.roll_back(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], 3);
        assert_eq!(attached(&index, 7), vec![&b"a"[..], b"b"]);
        assert_eq!(attached(&index, 8), vec![&b"c"[..]]);
        index.roll_back(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], 1);
        assert!(attached(&index, 7).is_empty() && attached(&index, 8).is_empty());
        assert!(index.attached.is_empty(), "no empty lease entries left");
    }

    fn live(index: &KeyIndex, at: i64) -> Vec<(Vec<u8>, i64)> {
        let mut out = Vec::new();
        index.visit_live((Bound::Unbounded, Bound::Unbounded), at, &mut |k, v| {
            out.push((k.to_vec(), v.rev.main));
            true
        });
        out
    }

    #[test]
    fn reads_see_the_newest_version_at_their_revision() {
        let mut index = KeyIndex::default();
        index.push(b"a", version(2, false));
        index.push(b"b", version(3, false));
        index.push(b"a", version(4, true));
        index.push(b"a", version(6, false));
        assert_eq!(live(&index, 1), vec![]);
        assert_eq!(
            live(&index, 3),
            vec![(b"a".to_vec(), 2), (b"b".to_vec(), 3)]
        );
        assert_eq!(live(&index, 5), vec![(b"b".to_vec(), 3)]);
        assert_eq!(
            live(&index, 9),
            vec![(b"a".to_vec(), 6), (b"b".to_vec(), 3)]
        );
        assert_eq!(index.visible(b"a", 5), Some(version(4, true)));
        assert_eq!(index.visible(b"a", 6), Some(version(6, false)));
        assert_eq!(index.visible(b"a", 9), Some(version(6, false)));
        assert_eq!(index.visible(b"a", 1), None);
        assert_eq!(
            index.before(b"a", version(6, false).rev),
            Some(version(4, true))
        );
        assert_eq!(index.before(b"a", version(2, false).rev), None);
    }

    #[test]
    fn roll_back_forgets_only_the_uncommitted_versions() {
        let mut index = KeyIndex::default();
        index.push(b"a", version(2, false));
        index.push(b"a", version(3, false));
        index.push(b"b", version(3, false));
        index.roll_back(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], 2);
        assert_eq!(live(&index, 9), vec![(b"a".to_vec(), 2)]);
        assert_eq!(index.key_count(), 1);
    }

    #[test]
    fn compaction_keeps_what_reads_at_the_compact_revision_see() {
        let mut index = KeyIndex::default();
        index.push(b"a", version(2, false));
        index.push(b"a", version(3, false));
        index.push(b"a", version(5, false));
        index.push(b"b", version(2, false));
        index.push(b"b", version(4, true));
        let doomed: Vec<_> = [(b"a", 2), (b"a", 3), (b"a", 5), (b"b", 2), (b"b", 4)]
            .into_iter()
            .filter(|(k, main)| {
                index.doomed(
                    *k,
                    Revision {
                        main: *main,
                        sub: 0,
                    },
                    4,
                )
            })
            .map(|(k, main)| (k.to_vec(), Revision { main, sub: 0 }))
            .collect();
        assert_eq!(
            doomed,
            vec![
                (b"a".to_vec(), Revision { main: 2, sub: 0 }),
                (b"b".to_vec(), Revision { main: 2, sub: 0 }),
                (b"b".to_vec(), Revision { main: 4, sub: 0 }),
            ]
        );
        index.forget(&doomed, 4);
        assert!(matches!(
            index.check_readable(3),
            Err(StorageError::Compacted)
        ));
        assert!(index.check_readable(4).is_ok());
        assert!(matches!(
            index.check_history(4),
            Err(StorageError::Compacted)
        ));
        assert!(index.check_history(5).is_ok());
        assert_eq!(live(&index, 4), vec![(b"a".to_vec(), 3)]);
        assert_eq!(live(&index, 9), vec![(b"a".to_vec(), 5)]);
        assert_eq!(index.key_count(), 1);
    }
}
