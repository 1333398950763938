//! Test-only builders for client byte streams (frames and HPACK blocks the way grpc-go
//! writes them) and a reader for what the fix emits.

use bytes::{Bytes, BytesMut};

use super::hpack::{encode_int, huffman_encode, Decoder};
use super::rewrite::{
    FrameHead, FLAG_END_HEADERS, FLAG_PADDED, FLAG_PRIORITY, FRAME_HEAD_BYTES, PREFACE,
    TYPE_CONTINUATION, TYPE_HEADERS,
};

pub(super) const TYPE_DATA: u8 = 0x0;

pub(super) fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    FrameHead {
        len: payload.len(),
        kind,
        flags,
        stream_id,
    }
    .put(&mut out);
    out.extend_from_slice(payload);
    out.to_vec()
}

/// The preface followed by `frames`.
pub(super) fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    for frame in frames {
        out.extend_from_slice(frame);
    }
    out
}

fn string(value: &str, huffman: bool) -> Vec<u8> {
    let mut out = BytesMut::new();
    if huffman {
        let coded = huffman_encode(value.as_bytes());
        encode_int(coded.len(), 7, 0x80, &mut out);
        out.extend_from_slice(&coded);
    } else {
        encode_int(value.len(), 7, 0x00, &mut out);
        out.extend_from_slice(value.as_bytes());
    }
    out.to_vec()
}

/// A literal naming static entry `index`; `flags` 0x40 adds it to the client's table.
pub(super) fn literal_indexed_name(flags: u8, index: usize, value: &str) -> Vec<u8> {
    let prefix_bits = if flags == 0x40 { 6 } else { 4 };
    let mut out = BytesMut::new();
    encode_int(index, prefix_bits, flags, &mut out);
    let mut out = out.to_vec();
    out.extend_from_slice(&string(value, flags == 0x40));
    out
}

/// A literal with a new name, without indexing.
pub(super) fn literal_new_name(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend_from_slice(&string(name, false));
    out.extend_from_slice(&string(value, false));
    out
}

/// What grpc-go's encoder sends for an etcdctl request on a fresh connection: most fields
/// go into its dynamic table, strings mostly Huffman-coded.
pub(super) fn etcdctl_block(authority: &str) -> Vec<u8> {
    let mut out = vec![0x83, 0x86]; // :method POST, :scheme http
    out.extend_from_slice(&literal_indexed_name(
        0x40,
        4,
        "/etcdserverpb.Maintenance/Status",
    ));
    out.extend_from_slice(&literal_indexed_name(0x40, 1, authority));
    out.extend_from_slice(&literal_indexed_name(0x40, 31, "application/grpc"));
    out.push(0x40 | 58); // user-agent, plain value
    out.extend_from_slice(&string("grpc-go/1.26.0", false));
    out.push(0x40); // te, new name
    out.extend_from_slice(&string("te", false));
    out.extend_from_slice(&string("trailers", true));
    out
}

/// One whole HEADERS frame carrying `etcdctl_block(authority)` on `stream`.
pub(super) fn etcdctl_headers(stream: u32, authority: &str) -> Vec<u8> {
    frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS,
        stream,
        &etcdctl_block(authority),
    )
}

/// The same request again after `etcdctl_block`: every field now comes from the table
/// (te = 62, user-agent = 63, content-type = 64, :authority = 65, :path = 66).
pub(super) fn etcdctl_block_indexed() -> Vec<u8> {
    vec![
        0x83,
        0x86,
        0x80 | 66,
        0x80 | 65,
        0x80 | 64,
        0x80 | 63,
        0x80 | 62,
    ]
}

pub(super) fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

pub(super) fn etcdctl_fields(authority: &str) -> Vec<(String, String)> {
    pairs(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/etcdserverpb.Maintenance/Status"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-go/1.26.0"),
        ("te", "trailers"),
    ])
}

pub(super) fn parse_frames(mut bytes: &[u8]) -> Vec<(FrameHead, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let head = FrameHead::parse(bytes).expect("whole frame head");
        let end = FRAME_HEAD_BYTES + head.len;
        frames.push((head, bytes[FRAME_HEAD_BYTES..end].to_vec()));
        bytes = &bytes[end..];
    }
    frames
}

#[derive(Debug)]
pub(super) struct DecodedBlock {
    pub(super) stream_id: u32,
    /// The HEADERS frame's flags.
    pub(super) flags: u8,
    pub(super) fields: Vec<(String, String)>,
}

/// Every header block in the fix's output, each decoded by a FRESH decoder: that the
/// output needs no dynamic table state is part of what this checks.
pub(super) fn decode_output(out: &[u8]) -> Vec<DecodedBlock> {
    assert!(out.starts_with(PREFACE));
    let mut blocks: Vec<(DecodedBlock, Vec<u8>)> = Vec::new();
    for (head, payload) in parse_frames(&out[PREFACE.len()..]) {
        match head.kind {
            TYPE_HEADERS => {
                assert_eq!(head.flags & FLAG_PADDED, 0, "output is never padded");
                let skip = if head.flags & FLAG_PRIORITY != 0 {
                    5
                } else {
                    0
                };
                let block = DecodedBlock {
                    stream_id: head.stream_id,
                    flags: head.flags,
                    fields: Vec::new(),
                };
                blocks.push((block, payload[skip..].to_vec()));
            }
            TYPE_CONTINUATION => blocks.last_mut().unwrap().1.extend_from_slice(&payload),
            _ => {}
        }
    }
    blocks
        .into_iter()
        .map(|(mut block, fragment)| {
            let fields = Decoder::new()
                .decode(&Bytes::from(fragment), usize::MAX)
                .expect("output decodes with an empty table");
            block.fields = fields
                .iter()
                .map(|f| {
                    (
                        String::from_utf8(f.name.to_vec()).unwrap(),
                        String::from_utf8(f.value.to_vec()).unwrap(),
                    )
                })
                .collect();
            block
        })
        .collect()
}
