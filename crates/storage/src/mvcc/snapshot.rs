//! Snapshot dump and restore of every table (Raft snapshots, `etcdctl snapshot`).
//!
//! Owns: the dump stream format. Must never apply a byte of a dump before all of it has
//! been verified: restore writes into one write transaction that commits only after the
//! end frame checks out, so a corrupt or truncated dump changes nothing.
//!
//! # Format 2 (integers big-endian; format 1 held the store format 2 tables)
//!
//! `magic "KEELDUMP" | format u32 (2)`, then frames:
//! `kind u8 | payload_len u32 | crc32c u32 (of kind, payload_len and payload) | payload`.
//! * kind 1, records: repeated `table u8 | key_len u32 | value_len u32 | key | value`.
//! * kind 2, end: `record_count u64`; nothing may follow.

use std::io::{Read, Write};
use std::ops::Bound;
use std::sync::PoisonError;

use super::index::SharedIndex;
use super::{load_index, Store};
use crate::backend::{Direction, Table, WriteTxn};
use crate::error::{Result, StorageError};

const MAGIC: &[u8; 8] = b"KEELDUMP";
const DUMP_FORMAT: u32 = 2;
const FRAME_RECORDS: u8 = 1;
const FRAME_END: u8 = 2;
const FRAME_HEADER_BYTES: usize = 9;
/// Records are flushed once a frame reaches this size.
const FRAME_TARGET_BYTES: usize = 64 * 1024;
/// Upper bound on a frame's payload, so a corrupt length cannot make us allocate wildly.
const FRAME_MAX_BYTES: usize = 64 * 1024 * 1024;

fn frame_crc(kind: u8, payload: &[u8]) -> u32 {
    let len = (payload.len() as u32).to_be_bytes();
    let crc = crc32c::crc32c(&[kind]);
    let crc = crc32c::crc32c_append(crc, &len);
    crc32c::crc32c_append(crc, payload)
}

fn write_frame(w: &mut dyn Write, kind: u8, payload: &[u8]) -> Result<()> {
    let len =
        u32::try_from(payload.len()).map_err(|_| StorageError::backend("dump frame too large"))?;
    w.write_all(&[kind])?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&frame_crc(kind, payload).to_be_bytes())?;
    w.write_all(payload)?;
    Ok(())
}

fn push_record(frame: &mut Vec<u8>, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
    let too_big = |_| StorageError::backend("dump record too large");
    let key_len = u32::try_from(key.len()).map_err(too_big)?;
    let value_len = u32::try_from(value.len()).map_err(too_big)?;
    frame.push(table.id());
    frame.extend_from_slice(&key_len.to_be_bytes());
    frame.extend_from_slice(&value_len.to_be_bytes());
    frame.extend_from_slice(key);
    frame.extend_from_slice(value);
    Ok(())
}

impl Store {
    /// Streams a consistent snapshot of every table to `w`.
    pub fn dump(&self, w: &mut dyn Write) -> Result<()> {
        let txn = self.backend.begin_read()?;
        w.write_all(MAGIC)?;
        w.write_all(&DUMP_FORMAT.to_be_bytes())?;
        let mut frame = Vec::with_capacity(FRAME_TARGET_BYTES * 2);
        let mut records: u64 = 0;
        for table in Table::ALL {
            let bounds = (Bound::Unbounded, Bound::Unbounded);
            txn.scan(table, bounds, Direction::Forward, &mut |k, v| {
                push_record(&mut frame, table, k, v)?;
                records += 1;
                if frame.len() >= FRAME_TARGET_BYTES {
                    write_frame(w, FRAME_RECORDS, &frame)?;
                    frame.clear();
                }
                Ok(true)
            })?;
        }
        if !frame.is_empty() {
            write_frame(w, FRAME_RECORDS, &frame)?;
        }
        write_frame(w, FRAME_END, &records.to_be_bytes())?;
        w.flush()?;
        Ok(())
    }

    /// Replaces the whole content with the dump read from `r`, atomically and durably.
    /// Any checksum, format or length error leaves the store untouched.
    pub fn restore(&self, r: &mut dyn Read) -> Result<()> {
        read_header(r)?;
        let mut txn = self.backend.begin_write()?;
        for table in Table::ALL {
            txn.clear(table)?;
        }
        let mut records: u64 = 0;
        loop {
            let (kind, payload) = read_frame(r)?;
            match kind {
                FRAME_RECORDS => records += apply_records(&mut *txn, &payload)?,
                FRAME_END => {
                    check_end(r, &payload, records)?;
                    break;
                }
                other => return Err(StorageError::corrupt(format!("dump frame kind {other}"))),
            }
        }
        let index = SharedIndex::new(load_index(&*txn)?);
        // No read snapshot opens between the commit and the index that matches it.
        let mut current = self.index.write().unwrap_or_else(PoisonError::into_inner);
        txn.commit(true)?;
        *current = index;
        Ok(())
    }
}

fn read_header(r: &mut dyn Read) -> Result<()> {
    let mut header = [0u8; 12];
    read_exact(r, &mut header)?;
    if &header[..8] != MAGIC {
        return Err(StorageError::corrupt("not a keel dump"));
    }
    let format = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    if format != DUMP_FORMAT {
        return Err(StorageError::corrupt(format!("dump format {format}")));
    }
    Ok(())
}

// A truncated dump is corruption, not an I/O failure.
fn read_exact(r: &mut dyn Read, buf: &mut [u8]) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StorageError::corrupt("dump truncated"),
        _ => StorageError::Io(e),
    })
}

fn read_frame(r: &mut dyn Read) -> Result<(u8, Vec<u8>)> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    read_exact(r, &mut header)?;
    let kind = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let crc = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    if len > FRAME_MAX_BYTES {
        return Err(StorageError::corrupt(format!("dump frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    read_exact(r, &mut payload)?;
    if frame_crc(kind, &payload) != crc {
        return Err(StorageError::corrupt("dump frame checksum mismatch"));
    }
    Ok((kind, payload))
}

fn take<'a>(payload: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if payload.len() < n {
        return Err(StorageError::corrupt("dump record truncated"));
    }
    let (head, tail) = payload.split_at(n);
    *payload = tail;
    Ok(head)
}

fn take_u32(payload: &mut &[u8]) -> Result<usize> {
    let b = take(payload, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn apply_records(txn: &mut dyn WriteTxn, mut payload: &[u8]) -> Result<u64> {
    let mut records = 0;
    while !payload.is_empty() {
        let id = take(&mut payload, 1)?[0];
        let table = Table::from_id(id)
            .ok_or_else(|| StorageError::corrupt(format!("dump table id {id}")))?;
        let key_len = take_u32(&mut payload)?;
        let value_len = take_u32(&mut payload)?;
        let key = take(&mut payload, key_len)?;
        let value = take(&mut payload, value_len)?;
        txn.put(table, key, value)?;
        records += 1;
    }
    Ok(records)
}

fn check_end(r: &mut dyn Read, payload: &[u8], records: u64) -> Result<()> {
    let raw: [u8; 8] = payload
        .try_into()
        .map_err(|_| StorageError::corrupt("dump end frame length"))?;
    let expected = u64::from_be_bytes(raw);
    if expected != records {
        return Err(StorageError::corrupt(format!(
            "dump has {records} records, end frame says {expected}"
        )));
    }
    let mut trailing = [0u8; 1];
    if r.read(&mut trailing)? != 0 {
        return Err(StorageError::corrupt("bytes after dump end frame"));
    }
    Ok(())
}
