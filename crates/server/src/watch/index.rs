//! Which synced watchers an event's key concerns.
//!
//! Owns: etcd's watch key-range forms ([`KeyRange`]) and the index of synced watchers by
//! range. Single-key and prefix watchers (nearly all real ones) are found by hash lookups:
//! O(1) per single key, O(distinct prefix lengths in use) per event for prefixes. Any other
//! range sits in a list scanned per event. Must never: know about streams or revisions.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::EMPTY_WATCHER_RANGE;

/// Hub-wide identity of one watcher (watch IDs are only unique per stream).
pub(crate) type WatcherKey = u64;

/// The keys one watcher covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyRange {
    /// Exactly this key.
    Single(Vec<u8>),
    /// Every key starting with this non-empty prefix.
    Prefix(Vec<u8>),
    /// `[start, end)`; `end == None` means every key >= `start`.
    Range {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

/// etcd's `GetPrefixRangeEnd`: the smallest key greater than every key with `prefix`, or
/// `None` when there is none (empty prefix or only 0xff bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    Some(keel_api::prefix_end(prefix)).filter(|end| end.as_slice() != [0])
}

impl KeyRange {
    /// etcd's interpretation of a watch create request's `key` / `range_end`: an empty key
    /// means `[0]`, an empty end one key, `[0]` every key from `key`; `key >= range_end`
    /// is rejected with etcd's text.
    pub(crate) fn from_request(key: &[u8], range_end: &[u8]) -> Result<KeyRange, &'static str> {
        let key = if key.is_empty() {
            vec![0]
        } else {
            key.to_vec()
        };
        if range_end.is_empty() {
            return Ok(KeyRange::Single(key));
        }
        if range_end == [0] {
            return Ok(KeyRange::Range {
                start: key,
                end: None,
            });
        }
        if key.as_slice() >= range_end {
            return Err(EMPTY_WATCHER_RANGE);
        }
        if prefix_end(&key).as_deref() == Some(range_end) {
            return Ok(KeyRange::Prefix(key));
        }
        Ok(KeyRange::Range {
            start: key,
            end: Some(range_end.to_vec()),
        })
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_slice() == key,
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Range { start, end } => {
                key >= start.as_slice() && end.as_ref().is_none_or(|e| key < e.as_slice())
            }
        }
    }
}

/// Synced watchers by key range.
#[derive(Default)]
pub(crate) struct SyncedIndex {
    single: HashMap<Vec<u8>, HashSet<WatcherKey>>,
    prefix: HashMap<Vec<u8>, HashSet<WatcherKey>>,
    /// Prefix length -> number of prefix watchers with it: the lengths worth probing.
    prefix_lens: BTreeMap<usize, usize>,
    other: HashMap<WatcherKey, KeyRange>,
}

impl SyncedIndex {
    pub(crate) fn insert(&mut self, watcher: WatcherKey, range: &KeyRange) {
        match range {
            KeyRange::Single(k) => {
                self.single.entry(k.clone()).or_default().insert(watcher);
            }
            KeyRange::Prefix(p) => {
                if self.prefix.entry(p.clone()).or_default().insert(watcher) {
                    *self.prefix_lens.entry(p.len()).or_default() += 1;
                }
            }
            KeyRange::Range { .. } => {
                self.other.insert(watcher, range.clone());
            }
        }
    }

    pub(crate) fn remove(&mut self, watcher: WatcherKey, range: &KeyRange) {
        match range {
            KeyRange::Single(k) => {
                remove_from(&mut self.single, k, watcher);
            }
            KeyRange::Prefix(p) => {
                if remove_from(&mut self.prefix, p, watcher) {
                    if let Some(n) = self.prefix_lens.get_mut(&p.len()) {
                        *n -= 1;
                        if *n == 0 {
                            self.prefix_lens.remove(&p.len());
                        }
                    }
                }
            }
            KeyRange::Range { .. } => {
                self.other.remove(&watcher);
            }
        }
    }

    /// Calls `f` once for every synced watcher whose range contains `key`.
    pub(crate) fn for_each_match(&self, key: &[u8], mut f: impl FnMut(WatcherKey)) {
        if let Some(set) = self.single.get(key) {
            set.iter().copied().for_each(&mut f);
        }
        for &len in self.prefix_lens.keys() {
            if len > key.len() {
                break;
            }
            if let Some(set) = self.prefix.get(&key[..len]) {
                set.iter().copied().for_each(&mut f);
            }
        }
        for (watcher, range) in &self.other {
            if range.contains(key) {
                f(*watcher);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.single.values().map(HashSet::len).sum::<usize>()
            + self.prefix.values().map(HashSet::len).sum::<usize>()
            + self.other.len()
    }
}

/// Removes `watcher` from the set under `key`, dropping the set when empty. Returns whether
/// it was there.
fn remove_from(
    map: &mut HashMap<Vec<u8>, HashSet<WatcherKey>>,
    key: &[u8],
    watcher: WatcherKey,
) -> bool {
    let Some(set) = map.get_mut(key) else {
        return false;
    };
    let removed = set.remove(&watcher);
    if set.is_empty() {
        map.remove(key);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(index: &SyncedIndex, key: &[u8]) -> Vec<WatcherKey> {
        let mut out = Vec::new();
        index.for_each_match(key, |w| out.push(w));
        out.sort_unstable();
        out
    }

    #[test]
    fn request_forms_map_to_etcd_ranges() {
        assert_eq!(
            KeyRange::from_request(b"a", b""),
            Ok(KeyRange::Single(b"a".to_vec()))
        );
        assert_eq!(
            KeyRange::from_request(b"", b""),
            Ok(KeyRange::Single(vec![0]))
        );
        assert_eq!(
            KeyRange::from_request(b"ab", b"ac"),
            Ok(KeyRange::Prefix(b"ab".to_vec()))
        );
        assert_eq!(
            KeyRange::from_request(b"a", &[0]),
            Ok(KeyRange::Range {
                start: b"a".to_vec(),
                end: None
            })
        );
        assert_eq!(KeyRange::from_request(b"b", b"a"), Err(EMPTY_WATCHER_RANGE));
        assert_eq!(KeyRange::from_request(b"a", b"a"), Err(EMPTY_WATCHER_RANGE));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn index_finds_exactly_the_covering_watchers() {
        let mut index = SyncedIndex::default();
        let ranges = [
            (1, KeyRange::Single(b"foo".to_vec())),
            (2, KeyRange::Prefix(b"fo".to_vec())),
            (3, KeyRange::Prefix(b"foo".to_vec())),
            (4, KeyRange::from_request(b"a", b"g").expect("range")),
            (5, KeyRange::from_request(b"g", &[0]).expect("from key")),
            (6, KeyRange::Single(b"bar".to_vec())),
        ];
        for (w, r) in &ranges {
            index.insert(*w, r);
        }
        assert_eq!(index.len(), 6);
        assert_eq!(matches(&index, b"foo"), vec![1, 2, 3, 4]);
        assert_eq!(matches(&index, b"fo"), vec![2, 4]);
        assert_eq!(matches(&index, b"food"), vec![2, 3, 4]);
        assert_eq!(matches(&index, b"zzz"), vec![5]);
        assert_eq!(matches(&index, b"g"), vec![5]);
        for (w, r) in &ranges {
            index.remove(*w, r);
        }
        assert_eq!(index.len(), 0);
        assert!(index.prefix_lens.is_empty());
        assert!(matches(&index, b"foo").is_empty());
    }
}
