//! Byte layouts of the MVCC tables (see the `mvcc` module doc for the full picture).
//!
//! Owns: encoding and decoding of revision keys, version entries and meta values. Must never panic on bytes read from disk: every decode failure is
//! [`StorageError::Corrupt`].

use super::types::Revision;
use crate::error::{Result, StorageError};

/// Version of the entry layout written by this code.
pub(crate) const ENTRY_FORMAT: u8 = 2;
/// Entry flag: this version is a deletion tombstone.
pub(crate) const FLAG_TOMBSTONE: u8 = 0b0000_0001;

const KEY_LEN_BYTES: usize = 4;
const RECORD_HEADER_BYTES: usize = 1 + 1 + 8 + 8 + 8;

/// `main ++ sub`, big-endian: entries sort by revision.
pub(crate) fn revision_key(rev: Revision) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&rev.main.to_be_bytes());
    out[8..].copy_from_slice(&rev.sub.to_be_bytes());
    out
}

/// Inverse of [`revision_key`].
pub(crate) fn parse_revision_key(key: &[u8]) -> Result<Revision> {
    let raw: [u8; 16] = key
        .try_into()
        .map_err(|_| StorageError::corrupt("revision key length"))?;
    let rev = Revision {
        main: be_i64(&raw, 0),
        sub: be_i64(&raw, 8),
    };
    if rev.main < 0 || rev.sub < 0 {
        return Err(StorageError::corrupt("negative revision"));
    }
    Ok(rev)
}

/// One decoded key version, borrowing its value from the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VersionRecord<'a> {
    pub(crate) tombstone: bool,
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) value: &'a [u8],
}

/// Entry layout (all integers big-endian): `key_len u32 | key | format u8 (2) | flags u8 |
/// create_revision i64 | version i64 | lease i64 | value` (the value is the rest). The
/// backend's entry checksum covers all of it.
pub(crate) fn encode_entry(user_key: &[u8], record: &VersionRecord<'_>) -> Result<Vec<u8>> {
    let key_len = u32::try_from(user_key.len())
        .map_err(|_| StorageError::backend("key larger than 4 GiB"))?;
    let mut out = Vec::with_capacity(
        KEY_LEN_BYTES + user_key.len() + RECORD_HEADER_BYTES + record.value.len(),
    );
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(user_key);
    out.push(ENTRY_FORMAT);
    out.push(if record.tombstone { FLAG_TOMBSTONE } else { 0 });
    out.extend_from_slice(&record.create_revision.to_be_bytes());
    out.extend_from_slice(&record.version.to_be_bytes());
    out.extend_from_slice(&record.lease.to_be_bytes());
    out.extend_from_slice(record.value);
    Ok(out)
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(raw)
}

/// Decodes an entry written by [`encode_entry`] into (user key, record).
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<(&[u8], VersionRecord<'_>)> {
    let Some((len_raw, rest)) = bytes.split_first_chunk::<KEY_LEN_BYTES>() else {
        return Err(StorageError::corrupt("version entry too short"));
    };
    let key_len = u32::from_be_bytes(*len_raw) as usize;
    if rest.len() < key_len + RECORD_HEADER_BYTES {
        return Err(StorageError::corrupt("version entry too short"));
    }
    let (key, body) = rest.split_at(key_len);
    if body[0] != ENTRY_FORMAT {
        return Err(StorageError::corrupt(format!(
            "unknown version entry format {}",
            body[0]
        )));
    }
    let flags = body[1];
    if flags & !FLAG_TOMBSTONE != 0 {
        return Err(StorageError::corrupt("unknown version entry flags"));
    }
    let record = VersionRecord {
        tombstone: flags & FLAG_TOMBSTONE != 0,
        create_revision: be_i64(body, 2),
        version: be_i64(body, 10),
        lease: be_i64(body, 18),
        value: &body[RECORD_HEADER_BYTES..],
    };
    Ok((key, record))
}

/// Meta values are big-endian i64.
pub(crate) fn encode_i64(value: i64) -> [u8; 8] {
    value.to_be_bytes()
}

/// Inverse of [`encode_i64`].
pub(crate) fn decode_i64(bytes: &[u8], what: &str) -> Result<i64> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StorageError::corrupt(format!("meta {what}: bad length")))?;
    Ok(i64::from_be_bytes(raw))
}
