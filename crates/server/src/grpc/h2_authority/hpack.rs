//! The HPACK (RFC 7541) half of the `:authority` fix: a stateful decoder that mirrors the
//! client's dynamic table, and a stateless encoder for what we hand to h2.
//!
//! h2 keeps its own HPACK codec private (even behind its `unstable` feature), so this is a
//! small, strict implementation of just what the fix needs. Names and values stay raw
//! bytes: judging them is h2's job, and it sees exactly the bytes the client sent.
//!
//! Must never: emit a representation that touches the receiver's dynamic table (indexed
//! fields, incremental indexing, table size updates), so h2 can decode our output with an
//! empty table whatever the client's encoder did.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

/// SETTINGS_HEADER_TABLE_SIZE that h2's server advertises (it keeps the HTTP/2 default):
/// the most a client may grow its dynamic table to.
pub(super) const TABLE_BYTES_MAX: usize = 4096;

/// RFC 7541 section 4.1: each table entry costs its name, its value and 32 bytes.
const ENTRY_OVERHEAD_BYTES: usize = 32;

/// One decoded header field, in the order the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Field {
    pub(super) name: Bytes,
    pub(super) value: Bytes,
    /// Sent as "literal never indexed": intermediaries must keep it that way.
    pub(super) never_indexed: bool,
}

impl Field {
    /// RFC 7541 section 4.1 size, also what SETTINGS_MAX_HEADER_LIST_SIZE counts.
    fn size_bytes(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD_BYTES
    }
}

/// Why a header block could not be decoded. Any of these makes the caller stop rewriting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DecodeError {
    Truncated,
    IntegerOverflow,
    InvalidIndex,
    InvalidHuffman,
    SizeUpdateNotAtStart,
    SizeUpdateTooLarge,
    HeaderListTooLarge,
}

/// Decodes one connection's header blocks in order; the dynamic table persists between
/// blocks exactly as the client's encoder maintains it.
#[derive(Debug)]
pub(super) struct Decoder {
    /// Newest entry first, as HPACK indexes it (dynamic index 62 is `table[0]`).
    table: VecDeque<(Bytes, Bytes)>,
    table_bytes: usize,
    table_bytes_max: usize,
}

impl Decoder {
    pub(super) fn new() -> Self {
        Decoder {
            table: VecDeque::new(),
            table_bytes: 0,
            table_bytes_max: TABLE_BYTES_MAX,
        }
    }

    /// Decodes one complete header block. `list_bytes_max` bounds the decoded size, which
    /// indexed references can make far larger than the block itself.
    pub(super) fn decode(
        &mut self,
        block: &Bytes,
        list_bytes_max: usize,
    ) -> Result<Vec<Field>, DecodeError> {
        let mut cursor = Cursor {
            block,
            pos: 0,
            // Huffman output is at most 8/5 of its input (the shortest code is 5 bits), so
            // one allocation serves every string of the block.
            huffman_out: BytesMut::with_capacity(block.len() * 8 / 5 + 1),
        };
        let mut fields = Vec::new();
        let mut list_bytes = 0usize;
        while let Some(&first) = block.get(cursor.pos) {
            let field = if first & 0x80 != 0 {
                let (name, value) = self.entry(cursor.int(7)?)?;
                Field {
                    name,
                    value,
                    never_indexed: false,
                }
            } else if first & 0x40 != 0 {
                let field = self.literal(&mut cursor, 6, false)?;
                self.insert(field.name.clone(), field.value.clone());
                field
            } else if first & 0x20 != 0 {
                // RFC 7541 section 4.2: size updates only open a block.
                if !fields.is_empty() {
                    return Err(DecodeError::SizeUpdateNotAtStart);
                }
                self.resize(cursor.int(5)?)?;
                continue;
            } else {
                let never_indexed = first & 0x10 != 0;
                self.literal(&mut cursor, 4, never_indexed)?
            };
            list_bytes += field.size_bytes();
            if list_bytes > list_bytes_max {
                return Err(DecodeError::HeaderListTooLarge);
            }
            fields.push(field);
        }
        Ok(fields)
    }

    fn literal(
        &self,
        cursor: &mut Cursor<'_>,
        prefix_bits: u8,
        never_indexed: bool,
    ) -> Result<Field, DecodeError> {
        let name = match cursor.int(prefix_bits)? {
            0 => cursor.string()?,
            index => self.entry(index)?.0,
        };
        let value = cursor.string()?;
        Ok(Field {
            name,
            value,
            never_indexed,
        })
    }

    fn entry(&self, index: usize) -> Result<(Bytes, Bytes), DecodeError> {
        match index {
            0 => Err(DecodeError::InvalidIndex),
            1..=STATIC_LEN => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((
                    Bytes::from_static(name.as_bytes()),
                    Bytes::from_static(value.as_bytes()),
                ))
            }
            _ => self
                .table
                .get(index - STATIC_LEN - 1)
                .cloned()
                .ok_or(DecodeError::InvalidIndex),
        }
    }

    fn insert(&mut self, name: Bytes, value: Bytes) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        // RFC 7541 section 4.4: an entry larger than the table empties it and is not kept.
        self.table_bytes += size;
        self.table.push_front((name, value));
        self.evict();
    }

    fn resize(&mut self, size: usize) -> Result<(), DecodeError> {
        if size > TABLE_BYTES_MAX {
            return Err(DecodeError::SizeUpdateTooLarge);
        }
        self.table_bytes_max = size;
        self.evict();
        Ok(())
    }

    fn evict(&mut self) {
        while self.table_bytes > self.table_bytes_max {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.table_bytes -= name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        }
    }
}

/// Reading position inside one header block.
struct Cursor<'a> {
    block: &'a Bytes,
    pos: usize,
    huffman_out: BytesMut,
}

impl Cursor<'_> {
    /// RFC 7541 section 5.1 integer with an N-bit prefix; like h2, at most 5 bytes.
    fn int(&mut self, prefix_bits: u8) -> Result<usize, DecodeError> {
        let mask = (1u8 << prefix_bits) - 1;
        let first = *self.block.get(self.pos).ok_or(DecodeError::Truncated)? & mask;
        self.pos += 1;
        if first < mask {
            return Ok(usize::from(first));
        }
        let mut value = usize::from(mask);
        for shift in [0u32, 7, 14, 21] {
            let byte = *self.block.get(self.pos).ok_or(DecodeError::Truncated)?;
            self.pos += 1;
            value += usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::IntegerOverflow)
    }

    /// RFC 7541 section 5.2 string literal. Plain strings are slices of the block (no
    /// copy); Huffman strings are decoded into the block's shared scratch allocation.
    fn string(&mut self) -> Result<Bytes, DecodeError> {
        let huffman = *self.block.get(self.pos).ok_or(DecodeError::Truncated)? & 0x80 != 0;
        let len = self.int(7)?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.block.len())
            .ok_or(DecodeError::Truncated)?;
        let start = std::mem::replace(&mut self.pos, end);
        if !huffman {
            return Ok(self.block.slice(start..end));
        }
        huffman_decode(&self.block[start..end], &mut self.huffman_out)?;
        Ok(self.huffman_out.split().freeze())
    }
}

/// Appends a stateless encoding of `fields` to `dst`: every field is a literal without
/// indexing (or never indexed, if the client marked it so), naming a static-table entry
/// where one matches and never using Huffman coding.
pub(super) fn encode(fields: &[Field], dst: &mut BytesMut) {
    for field in fields {
        let flags = if field.never_indexed { 0x10 } else { 0x00 };
        match static_name_index(&field.name) {
            Some(index) => encode_int(index, 4, flags, dst),
            None => {
                dst.put_u8(flags);
                encode_string(&field.name, dst);
            }
        }
        encode_string(&field.value, dst);
    }
}

/// Upper bound of what `encode` appends, to allocate once.
pub(super) fn encoded_len_max(fields: &[Field]) -> usize {
    // Each integer takes at most 6 bytes for lengths below 2^35.
    fields
        .iter()
        .map(|field| field.name.len() + field.value.len() + 3 * 6)
        .sum()
}

pub(super) fn encode_int(value: usize, prefix_bits: u8, flags: u8, dst: &mut BytesMut) {
    let mask = (1u8 << prefix_bits) - 1;
    if value < usize::from(mask) {
        // value < mask < 256: the cast cannot truncate.
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | mask);
    let mut rest = value - usize::from(mask);
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

fn encode_string(bytes: &[u8], dst: &mut BytesMut) {
    encode_int(bytes.len(), 7, 0x00, dst);
    dst.extend_from_slice(bytes);
}

fn static_name_index(name: &[u8]) -> Option<usize> {
    STATIC_TABLE
        .iter()
        .position(|(static_name, _)| static_name.as_bytes() == name)
        .map(|position| position + 1)
}

/// Decodes RFC 7541 Huffman code into `dst`. Strict like h2: the EOS symbol, padding
/// longer than 7 bits or padding that is not all ones is an error.
fn huffman_decode(src: &[u8], dst: &mut BytesMut) -> Result<(), DecodeError> {
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            // Canonical code: the codes of one length are consecutive, and every prefix
            // of a longer code sorts after them, so one subtraction tells a hit.
            let offset = code.wrapping_sub(HUFFMAN.first_code[len]);
            if offset < u32::from(HUFFMAN.count[len]) {
                let symbol =
                    HUFFMAN.symbols[usize::from(HUFFMAN.first_symbol[len]) + offset as usize];
                let byte = u8::try_from(symbol).map_err(|_| DecodeError::InvalidHuffman)?;
                dst.put_u8(byte);
                code = 0;
                len = 0;
            } else if len == HUFFMAN_CODE_BITS_MAX {
                return Err(DecodeError::InvalidHuffman);
            }
        }
    }
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(DecodeError::InvalidHuffman);
    }
    Ok(())
}

const HUFFMAN_CODE_BITS_MAX: usize = 30;

/// RFC 7541 Appendix B code lengths, symbol 0..=255 then EOS (256). The code is canonical
/// (codes assigned in order of length, then symbol), so the lengths define it entirely;
/// `huffman_table_matches_rfc_codes` checks that against codes printed in the RFC.
const HUFFMAN_CODE_BITS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

/// Canonical-code decoding tables, indexed by code length in bits.
struct Huffman {
    /// Code of the first symbol of each length.
    first_code: [u32; HUFFMAN_CODE_BITS_MAX + 1],
    /// How many symbols have each length.
    count: [u16; HUFFMAN_CODE_BITS_MAX + 1],
    /// Where each length's symbols start in `symbols`.
    first_symbol: [u16; HUFFMAN_CODE_BITS_MAX + 1],
    /// Symbols sorted by (length, symbol).
    symbols: [u16; 257],
}

const HUFFMAN: Huffman = build_huffman();

const fn build_huffman() -> Huffman {
    let mut table = Huffman {
        first_code: [0; HUFFMAN_CODE_BITS_MAX + 1],
        count: [0; HUFFMAN_CODE_BITS_MAX + 1],
        first_symbol: [0; HUFFMAN_CODE_BITS_MAX + 1],
        symbols: [0; 257],
    };
    let mut symbol = 0;
    while symbol < 257 {
        table.count[HUFFMAN_CODE_BITS[symbol] as usize] += 1;
        symbol += 1;
    }
    let mut code = 0u32;
    let mut next = 0u16;
    let mut len = 1;
    while len <= HUFFMAN_CODE_BITS_MAX {
        table.first_code[len] = code;
        table.first_symbol[len] = next;
        code = (code + table.count[len] as u32) << 1;
        next += table.count[len];
        len += 1;
    }
    let mut filled = [0u16; HUFFMAN_CODE_BITS_MAX + 1];
    let mut symbol = 0;
    while symbol < 257 {
        let len = HUFFMAN_CODE_BITS[symbol] as usize;
        table.symbols[(table.first_symbol[len] + filled[len]) as usize] = symbol as u16;
        filled[len] += 1;
        symbol += 1;
    }
    table
}

const STATIC_LEN: usize = 61;

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); STATIC_LEN] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Test-only Huffman encoder, to build inputs the way grpc-go's encoder does.
#[cfg(test)]
pub(super) fn huffman_encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u64;
    let mut bits = 0u32;
    for &byte in src {
        let (code, len) = huffman_code(usize::from(byte));
        acc = (acc << len) | u64::from(code);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        // Pad with the most significant bits of EOS (all ones).
        out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
    }
    out
}

#[cfg(test)]
fn huffman_code(symbol: usize) -> (u32, u32) {
    let len = usize::from(HUFFMAN_CODE_BITS[symbol]);
    let start = usize::from(HUFFMAN.first_symbol[len]);
    let rank = HUFFMAN.symbols[start..start + usize::from(HUFFMAN.count[len])]
        .iter()
        .position(|&s| usize::from(s) == symbol)
        .expect("every symbol has a code");
    (HUFFMAN.first_code[len] + rank as u32, len as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Bytes {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    fn pairs(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8(f.name.to_vec()).unwrap(),
                    String::from_utf8(f.value.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn huffman_table_matches_rfc_codes() {
        // Codes printed in RFC 7541 Appendix B.
        assert_eq!(huffman_code(0), (0x1ff8, 13));
        assert_eq!(huffman_code(usize::from(b'0')), (0x0, 5));
        assert_eq!(huffman_code(usize::from(b' ')), (0x14, 6));
        assert_eq!(huffman_code(usize::from(b'\n')), (0x3ffffffc, 30));
        assert_eq!(huffman_code(usize::from(b'z')), (0x7b, 7));
        assert_eq!(huffman_code(255), (0x3ffffee, 26));
        assert_eq!(huffman_code(256), (0x3fffffff, 30));
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut out = BytesMut::new();
        huffman_decode(&huffman_encode(&all), &mut out).unwrap();
        assert_eq!(&out[..], &all[..]);
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        let mut out = BytesMut::new();
        // "0" is 00000; padding with zeros instead of ones.
        assert_eq!(
            huffman_decode(&[0b0000_0000], &mut out),
            Err(DecodeError::InvalidHuffman)
        );
        // A full byte of padding (8 ones) is too long.
        assert_eq!(
            huffman_decode(&[0b0000_0111, 0xff], &mut out),
            Err(DecodeError::InvalidHuffman)
        );
        // EOS itself (30 ones) inside a string.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(DecodeError::InvalidHuffman)
        );
    }

    /// RFC 7541 Appendix C.4: three requests with Huffman coding and a shared table.
    #[test]
    fn decodes_rfc_c4_requests_with_dynamic_table() {
        let mut decoder = Decoder::new();
        let first = decoder
            .decode(
                &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
                usize::MAX,
            )
            .unwrap();
        assert_eq!(
            pairs(&first),
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        let second = decoder
            .decode(&hex("8286 84be 5886 a8eb 1064 9cbf"), usize::MAX)
            .unwrap();
        assert_eq!(
            pairs(&second),
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        let third = decoder
            .decode(
                &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
                usize::MAX,
            )
            .unwrap();
        assert_eq!(
            pairs(&third),
            owned(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(decoder.table_bytes, 164);
    }

    #[test]
    fn size_update_evicts_and_is_bounded() {
        let mut decoder = Decoder::new();
        decoder
            .decode(&hex("418c f1e3 c2e5 f23a 6ba0 ab90 f4ff"), usize::MAX)
            .unwrap();
        assert_eq!(decoder.table.len(), 1);
        // Size update to 0 empties the table, so index 62 no longer exists.
        assert_eq!(
            decoder.decode(&hex("20 be"), usize::MAX),
            Err(DecodeError::InvalidIndex)
        );
        // Larger than SETTINGS_HEADER_TABLE_SIZE.
        assert_eq!(
            decoder.decode(&hex("3fe2 1f"), usize::MAX),
            Err(DecodeError::SizeUpdateTooLarge)
        );
        // Not at the start of the block.
        assert_eq!(
            decoder.decode(&hex("82 20"), usize::MAX),
            Err(DecodeError::SizeUpdateNotAtStart)
        );
    }

    #[test]
    fn rejects_malformed_blocks() {
        let mut decoder = Decoder::new();
        assert_eq!(
            decoder.decode(&hex("80"), usize::MAX),
            Err(DecodeError::InvalidIndex)
        );
        assert_eq!(
            decoder.decode(&hex("04 05 2f"), usize::MAX),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decoder.decode(&hex("ff ff ff ff ff 0f"), usize::MAX),
            Err(DecodeError::IntegerOverflow)
        );
        assert_eq!(
            decoder.decode(&hex("82 86"), 40),
            Err(DecodeError::HeaderListTooLarge)
        );
    }

    #[test]
    fn encoding_is_stateless_and_round_trips() {
        let fields = vec![
            Field {
                name: Bytes::from_static(b":path"),
                value: Bytes::from(vec![b'/'; 300]),
                never_indexed: false,
            },
            Field {
                name: Bytes::from_static(b"x-custom"),
                value: Bytes::from_static(b"v"),
                never_indexed: false,
            },
            Field {
                name: Bytes::from_static(b"authorization"),
                value: Bytes::from_static(b"secret"),
                never_indexed: true,
            },
        ];
        let mut dst = BytesMut::new();
        encode(&fields, &mut dst);
        assert!(dst.len() <= encoded_len_max(&fields));
        let block = dst.freeze();
        // Two fresh decoders agree, and neither table grew: nothing was indexed.
        let mut decoder = Decoder::new();
        assert_eq!(decoder.decode(&block, usize::MAX).unwrap(), fields);
        assert_eq!(decoder.decode(&block, usize::MAX).unwrap(), fields);
        assert!(decoder.table.is_empty());
        // Literal without indexing, name index 4 (:path); never indexed, name index 23.
        assert_eq!(block[0], 0x04);
        assert!(block.ends_with(b"\x1f\x08\x06secret"));
    }
}
