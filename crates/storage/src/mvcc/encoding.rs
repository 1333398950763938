//! Byte layouts of the MVCC tables (see the `mvcc` module doc for the full picture).
//!
//! Owns: encoding and decoding of version keys, version records, revision-index entries and
//! meta values. Must never panic on bytes read from disk: every decode failure is
//! [`StorageError::Corrupt`].

use super::types::Revision;
use crate::error::{Result, StorageError};

/// Version of the record layout written by this code.
pub(crate) const RECORD_FORMAT_V1: u8 = 1;
/// Record flag: this version is a deletion tombstone.
pub(crate) const FLAG_TOMBSTONE: u8 = 0b0000_0001;
/// Bytes of the inverted revision suffix of a version key.
pub(crate) const REVISION_SUFFIX_BYTES: usize = 16;

const RECORD_HEADER_BYTES: usize = 1 + 1 + 8 + 8 + 8 + 4;
const RECORD_CRC_BYTES: usize = 4;

/// Appends the memcomparable escape of `user_key`: 0x00 becomes 0x00 0xFF, then 0x00 0x00
/// terminates. Escaped keys order exactly as raw keys and none is a prefix of another.
pub(crate) fn escape_key(user_key: &[u8], out: &mut Vec<u8>) {
    out.reserve(user_key.len() + 2 + REVISION_SUFFIX_BYTES);
    for &byte in user_key {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// The escaped form of `user_key` (the common prefix of all its versions).
pub(crate) fn escaped(user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    escape_key(user_key, &mut out);
    out
}

/// Inverse of [`escape_key`]; `escaped` must be exactly one escaped key.
pub(crate) fn unescape_key(escaped: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        let byte = escaped[i];
        if byte != 0 {
            out.push(byte);
            i += 1;
            continue;
        }
        match escaped.get(i + 1) {
            Some(0xFF) => out.push(0),
            Some(0) if i + 2 == escaped.len() => return Ok(out),
            _ => return Err(StorageError::corrupt("bad key escape")),
        }
        i += 2;
    }
    Err(StorageError::corrupt("unterminated escaped key"))
}

fn invert(value: i64) -> [u8; 8] {
    (!(value as u64)).to_be_bytes()
}

fn uninvert(bytes: &[u8]) -> Result<i64> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StorageError::corrupt("short revision"))?;
    let value = !u64::from_be_bytes(raw) as i64;
    if value < 0 {
        return Err(StorageError::corrupt("negative revision"));
    }
    Ok(value)
}

/// `escaped_key ++ !main ++ !sub` (big-endian): newest version of a key sorts first.
pub(crate) fn version_key(escaped_key: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped_key.len() + REVISION_SUFFIX_BYTES);
    out.extend_from_slice(escaped_key);
    out.extend_from_slice(&invert(rev.main));
    out.extend_from_slice(&invert(rev.sub));
    out
}

/// Smallest version key of `escaped_key` whose main revision is at most `main`.
pub(crate) fn seek_key(escaped_key: &[u8], main: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped_key.len() + REVISION_SUFFIX_BYTES);
    out.extend_from_slice(escaped_key);
    out.extend_from_slice(&invert(main));
    out.extend_from_slice(&[0; 8]);
    out
}

/// Largest possible version key of `escaped_key` (inclusive upper bound of its versions).
pub(crate) fn last_key(escaped_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped_key.len() + REVISION_SUFFIX_BYTES);
    out.extend_from_slice(escaped_key);
    out.extend_from_slice(&[0xFF; REVISION_SUFFIX_BYTES]);
    out
}

/// Splits a version key into (escaped user key, revision).
pub(crate) fn split_version_key(key: &[u8]) -> Result<(&[u8], Revision)> {
    let Some(split) = key.len().checked_sub(REVISION_SUFFIX_BYTES) else {
        return Err(StorageError::corrupt("version key too short"));
    };
    let (prefix, suffix) = key.split_at(split);
    let main = uninvert(&suffix[..8])?;
    let sub = uninvert(&suffix[8..])?;
    Ok((prefix, Revision { main, sub }))
}

/// Revision-index key: `main ++ sub` big-endian, ascending.
pub(crate) fn rev_index_key(rev: Revision) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&rev.main.to_be_bytes());
    out[8..].copy_from_slice(&rev.sub.to_be_bytes());
    out
}

/// Inverse of [`rev_index_key`].
pub(crate) fn parse_rev_index_key(key: &[u8]) -> Result<Revision> {
    let raw: [u8; 16] = key
        .try_into()
        .map_err(|_| StorageError::corrupt("revision index key length"))?;
    Ok(Revision {
        main: be_i64(&raw, 0),
        sub: be_i64(&raw, 8),
    })
}

/// One decoded version record, borrowing its value from the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VersionRecord<'a> {
    pub(crate) tombstone: bool,
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) value: &'a [u8],
}

/// Record layout v1 (all integers big-endian):
/// `format u8 | flags u8 | create_revision i64 | version i64 | lease i64 |
///  value_len u32 | value | crc32c u32 (of everything before it)`.
pub(crate) fn encode_record(record: &VersionRecord<'_>) -> Result<Vec<u8>> {
    let value_len = u32::try_from(record.value.len())
        .map_err(|_| StorageError::backend("value larger than 4 GiB"))?;
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + record.value.len() + RECORD_CRC_BYTES);
    out.push(RECORD_FORMAT_V1);
    out.push(if record.tombstone { FLAG_TOMBSTONE } else { 0 });
    out.extend_from_slice(&record.create_revision.to_be_bytes());
    out.extend_from_slice(&record.version.to_be_bytes());
    out.extend_from_slice(&record.lease.to_be_bytes());
    out.extend_from_slice(&value_len.to_be_bytes());
    out.extend_from_slice(record.value);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(raw)
}

/// Decodes and verifies a record written by [`encode_record`].
pub(crate) fn decode_record(bytes: &[u8]) -> Result<VersionRecord<'_>> {
    if bytes.len() < RECORD_HEADER_BYTES + RECORD_CRC_BYTES {
        return Err(StorageError::corrupt("version record too short"));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - RECORD_CRC_BYTES);
    let mut crc_raw = [0; 4];
    crc_raw.copy_from_slice(crc_bytes);
    if crc32c::crc32c(body) != u32::from_be_bytes(crc_raw) {
        return Err(StorageError::corrupt("version record checksum mismatch"));
    }
    if body[0] != RECORD_FORMAT_V1 {
        return Err(StorageError::corrupt(format!(
            "unknown version record format {}",
            body[0]
        )));
    }
    let flags = body[1];
    if flags & !FLAG_TOMBSTONE != 0 {
        return Err(StorageError::corrupt("unknown version record flags"));
    }
    let mut len_raw = [0; 4];
    len_raw.copy_from_slice(&body[26..30]);
    let value_len = u32::from_be_bytes(len_raw) as usize;
    if body.len() != RECORD_HEADER_BYTES + value_len {
        return Err(StorageError::corrupt("version record length mismatch"));
    }
    Ok(VersionRecord {
        tombstone: flags & FLAG_TOMBSTONE != 0,
        create_revision: be_i64(body, 2),
        version: be_i64(body, 10),
        lease: be_i64(body, 18),
        value: &body[RECORD_HEADER_BYTES..],
    })
}

/// The checksummed-over part of a stored record minus its format byte: the logical content
/// fed to `HashKV`.
pub(crate) fn record_hash_body(bytes: &[u8]) -> &[u8] {
    let end = bytes.len().saturating_sub(RECORD_CRC_BYTES);
    bytes.get(1..end).unwrap_or_default()
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
