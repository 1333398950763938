//! The frame half of the `:authority` fix: splits what the client sends into units (the
//! preface, frame heads, pass-through payloads, whole header blocks) and rewrites header
//! blocks. Pure: bytes in, decisions and bytes out, no I/O.
//!
//! Must never: change a byte of anything but a header block; keep rewriting after the
//! stream stopped making sense (h2 must see the original bytes and raise its own error).

use bytes::{BufMut, Bytes, BytesMut};

use super::hpack::{self, Decoder, Field};

/// RFC 9113 section 3.4 client connection preface.
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(super) const FRAME_HEAD_BYTES: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE that h2 advertises (the HTTP/2 default; tonic keeps it). A
/// larger header frame is h2's FRAME_SIZE_ERROR to raise, not ours to re-frame.
pub(super) const FRAME_PAYLOAD_BYTES_MAX: usize = 16_384;
/// Largest header block (all its frames, heads included) we buffer; larger ones, and
/// everything after them, pass through untouched.
pub(super) const HEADER_BLOCK_BYTES_MAX: usize = 1 << 20;
/// Largest decoded header list we re-encode (indexed references can make it far larger
/// than the block).
const HEADER_LIST_BYTES_MAX: usize = 1 << 20;

pub(super) const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
pub(super) const TYPE_CONTINUATION: u8 = 0x9;
pub(super) const FLAG_END_STREAM: u8 = 0x1;
pub(super) const FLAG_END_HEADERS: u8 = 0x4;
pub(super) const FLAG_PADDED: u8 = 0x8;
pub(super) const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_BYTES: usize = 5;

/// What to do with the bytes at the front of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The next `n` bytes (n > 0) go to h2 unchanged.
    Pass(usize),
    /// The input starts with an incomplete unit that needs at least `need` more bytes.
    Hold { need: usize },
    /// The input starts with a complete header block, `len` bytes of HEADERS and
    /// CONTINUATION frames: hand exactly those to [`Rewriter::rewrite`].
    Block(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Matching the client preface; `matched` bytes of it have passed.
    Preface { matched: usize },
    /// At a frame boundary, or `payload_left` bytes into a pass-through frame's payload.
    Frames { payload_left: usize },
    /// Not HTTP/2 as we understand it: everything passes unchanged from here on.
    Passthrough,
}

/// One connection's read-side state: where we are in the frame stream, and the client's
/// HPACK dynamic table.
#[derive(Debug)]
pub(super) struct Rewriter {
    mode: Mode,
    decoder: Decoder,
    /// No header block has been decoded yet on this connection.
    first_block: bool,
}

impl Rewriter {
    pub(super) fn new() -> Self {
        Rewriter {
            mode: Mode::Preface { matched: 0 },
            decoder: Decoder::new(),
            first_block: true,
        }
    }

    /// Decides the front of `input` (which must not be empty). `Hold` and `Block` leave
    /// the state unchanged, so the same bytes can be offered again with more behind them.
    pub(super) fn step(&mut self, input: &[u8]) -> Step {
        debug_assert!(!input.is_empty());
        match self.mode {
            Mode::Passthrough => Step::Pass(input.len()),
            Mode::Preface { matched } => {
                let expected = &PREFACE[matched..];
                let n = expected.len().min(input.len());
                if input[..n] != expected[..n] {
                    return self.stop("no HTTP/2 prior-knowledge preface", input.len());
                }
                self.mode = if matched + n == PREFACE.len() {
                    Mode::Frames { payload_left: 0 }
                } else {
                    Mode::Preface {
                        matched: matched + n,
                    }
                };
                Step::Pass(n)
            }
            Mode::Frames { payload_left } if payload_left > 0 => {
                let n = payload_left.min(input.len());
                self.mode = Mode::Frames {
                    payload_left: payload_left - n,
                };
                Step::Pass(n)
            }
            Mode::Frames { .. } => self.step_frame(input),
        }
    }

    /// Stops rewriting for good; used when the connection ends inside a unit.
    pub(super) fn stop_at_eof(&mut self) {
        self.mode = Mode::Passthrough;
    }

    /// Rewrites one complete header block as returned by [`Step::Block`]. On any
    /// malformation the original bytes come back and rewriting stops for the connection.
    ///
    /// A connection whose first header block needs no fix passes through untouched from
    /// then on: clients keep one `:authority` per connection (only etcdctl 3.4's is bad, on
    /// every request), h2 saw the client's own encoding so its HPACK table stays in step,
    /// and decoding and re-encoding every block cost about 10% of a member's CPU at
    /// range-s/c256.
    pub(super) fn rewrite(&mut self, frames: BytesMut) -> Bytes {
        match self.try_rewrite(&frames) {
            Ok(Some(rewritten)) => rewritten,
            Ok(None) => {
                self.mode = Mode::Passthrough;
                frames.freeze()
            }
            Err(reason) => {
                self.stop(reason, 0);
                frames.freeze()
            }
        }
    }

    fn step_frame(&mut self, input: &[u8]) -> Step {
        let Some(head) = FrameHead::parse(input) else {
            return Step::Hold {
                need: FRAME_HEAD_BYTES - input.len(),
            };
        };
        match head.kind {
            TYPE_HEADERS => self.step_header_block(input, head.stream_id),
            // A CONTINUATION out of place is a connection error; a client's PUSH_PROMISE
            // is too, and it would feed HPACK state we do not track.
            TYPE_CONTINUATION | TYPE_PUSH_PROMISE => {
                self.stop("unexpected CONTINUATION or PUSH_PROMISE", input.len())
            }
            _ => {
                self.mode = Mode::Frames {
                    payload_left: head.len,
                };
                Step::Pass(FRAME_HEAD_BYTES)
            }
        }
    }

    /// Walks HEADERS and its CONTINUATIONs up to END_HEADERS without consuming anything.
    fn step_header_block(&mut self, input: &[u8], stream_id: u32) -> Step {
        let mut offset = 0;
        loop {
            let Some(head) = FrameHead::parse(&input[offset..]) else {
                return Step::Hold {
                    need: offset + FRAME_HEAD_BYTES - input.len(),
                };
            };
            if offset > 0 && (head.kind != TYPE_CONTINUATION || head.stream_id != stream_id) {
                return self.stop("header block interrupted", input.len());
            }
            if head.len > FRAME_PAYLOAD_BYTES_MAX {
                return self.stop("header frame above SETTINGS_MAX_FRAME_SIZE", input.len());
            }
            let end = offset + FRAME_HEAD_BYTES + head.len;
            if end > HEADER_BLOCK_BYTES_MAX {
                return self.stop("header block above 1 MiB", input.len());
            }
            if input.len() < end {
                return Step::Hold {
                    need: end - input.len(),
                };
            }
            if head.flags & FLAG_END_HEADERS != 0 {
                return Step::Block(end);
            }
            offset = end;
        }
    }

    /// The rewritten block, or `None` for a first block that needs no fix.
    fn try_rewrite(&mut self, frames: &[u8]) -> Result<Option<Bytes>, &'static str> {
        let head = FrameHead::parse(frames).ok_or("short header block")?;
        let payload = frames
            .get(FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + head.len)
            .ok_or("short HEADERS frame")?;
        let (priority, fragment) = split_headers_payload(head.flags, payload)?;
        let mut block = BytesMut::with_capacity(frames.len());
        block.extend_from_slice(fragment);
        let mut offset = FRAME_HEAD_BYTES + head.len;
        while offset < frames.len() {
            let continuation = FrameHead::parse(&frames[offset..]).ok_or("short CONTINUATION")?;
            let start = offset + FRAME_HEAD_BYTES;
            offset = start + continuation.len;
            block.extend_from_slice(frames.get(start..offset).ok_or("short CONTINUATION")?);
        }
        let mut fields = self
            .decoder
            .decode(&block.freeze(), HEADER_LIST_BYTES_MAX)
            .map_err(|_| "HPACK decoding failed")?;
        let first_block = std::mem::replace(&mut self.first_block, false);
        if !fix_authority(&mut fields) && first_block {
            return Ok(None);
        }
        Ok(Some(frame_header_block(head, priority, &fields)))
    }

    fn stop(&mut self, reason: &'static str, pass: usize) -> Step {
        tracing::debug!(
            reason,
            "h2 authority fix: passing the rest of the connection through"
        );
        self.mode = Mode::Passthrough;
        Step::Pass(pass)
    }
}

/// A frame's 9-byte head (RFC 9113 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FrameHead {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream_id: u32,
}

impl FrameHead {
    pub(super) fn parse(bytes: &[u8]) -> Option<FrameHead> {
        let head = bytes.get(..FRAME_HEAD_BYTES)?;
        Some(FrameHead {
            len: usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]),
            kind: head[3],
            flags: head[4],
            stream_id: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        })
    }

    pub(super) fn put(&self, dst: &mut BytesMut) {
        debug_assert!(self.len < 1 << 24);
        dst.put_uint(self.len as u64, 3);
        dst.put_u8(self.kind);
        dst.put_u8(self.flags);
        dst.put_u32(self.stream_id);
    }
}

/// Strips HEADERS padding and splits off the priority fields, as h2 would read them.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let mut fragment = payload;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = fragment.split_first().ok_or("PADDED without pad length")?;
        let unpadded = rest
            .len()
            .checked_sub(usize::from(pad))
            .ok_or("padding longer than the payload")?;
        fragment = &rest[..unpadded];
    }
    let mut priority: &[u8] = &[];
    if flags & FLAG_PRIORITY != 0 {
        if fragment.len() < PRIORITY_BYTES {
            return Err("PRIORITY without its 5 bytes");
        }
        (priority, fragment) = fragment.split_at(PRIORITY_BYTES);
    }
    Ok((priority, fragment))
}

/// One HEADERS frame (END_STREAM and PRIORITY kept, PADDED dropped) and as many
/// CONTINUATION frames as the stateless encoding needs.
fn frame_header_block(head: FrameHead, priority: &[u8], fields: &[Field]) -> Bytes {
    let mut block = BytesMut::with_capacity(hpack::encoded_len_max(fields));
    hpack::encode(fields, &mut block);
    let first_len = block.len().min(FRAME_PAYLOAD_BYTES_MAX - priority.len());
    let (first, mut rest) = block.split_at(first_len);
    let frames = 1 + rest.len().div_ceil(FRAME_PAYLOAD_BYTES_MAX);
    let mut out = BytesMut::with_capacity(FRAME_HEAD_BYTES * frames + priority.len() + block.len());
    let mut flags = head.flags & (FLAG_END_STREAM | FLAG_PRIORITY);
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    FrameHead {
        len: priority.len() + first.len(),
        kind: TYPE_HEADERS,
        flags,
        stream_id: head.stream_id,
    }
    .put(&mut out);
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(FRAME_PAYLOAD_BYTES_MAX));
        rest = tail;
        FrameHead {
            len: chunk.len(),
            kind: TYPE_CONTINUATION,
            flags: if rest.is_empty() { FLAG_END_HEADERS } else { 0 },
            stream_id: head.stream_id,
        }
        .put(&mut out);
        out.extend_from_slice(chunk);
    }
    out.freeze()
}

/// Replaces every invalid `:authority` by its authority part, or drops it when there is
/// none (`:authority` is optional in HTTP/2). Valid ones, and every other field, stay.
/// True if it changed anything.
fn fix_authority(fields: &mut Vec<Field>) -> bool {
    let mut changed = false;
    fields.retain_mut(|field| {
        if field.name.as_ref() != b":authority" || is_valid_authority(&field.value) {
            return true;
        }
        let fixed = authority_part(&field.value);
        tracing::debug!(
            original = %String::from_utf8_lossy(&field.value),
            fixed = ?fixed.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
            "h2 authority fix: rewrote an invalid :authority"
        );
        changed = true;
        match fixed {
            Some(value) => {
                field.value = value;
                true
            }
            None => false,
        }
    });
    changed
}

fn is_valid_authority(value: &Bytes) -> bool {
    http::uri::Authority::from_maybe_shared(value.clone()).is_ok()
}

/// `http://127.0.0.1:2379/x` becomes `127.0.0.1:2379`: the scheme and everything from the
/// first `/`, `?` or `#` after it go. `None` when what is left is still not an authority.
fn authority_part(value: &Bytes) -> Option<Bytes> {
    let start = value
        .windows(3)
        .position(|window| window == b"://")
        .map_or(0, |scheme_end| scheme_end + 3);
    let end = value[start..]
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .map_or(value.len(), |offset| start + offset);
    let candidate = value.slice(start..end);
    is_valid_authority(&candidate).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    fn rewrite_all(input: &[u8]) -> Vec<u8> {
        let mut rewriter = Rewriter::new();
        let mut held = BytesMut::from(input);
        let mut out = Vec::new();
        while !held.is_empty() {
            match rewriter.step(&held) {
                Step::Pass(n) => out.extend_from_slice(&held.split_to(n)),
                Step::Block(len) => out.extend_from_slice(&rewriter.rewrite(held.split_to(len))),
                Step::Hold { .. } => panic!("complete input held"),
            }
        }
        out
    }

    #[test]
    fn etcdctl_url_authority_becomes_host_port() {
        let input = connection(&[etcdctl_headers(1, "http://127.0.0.1:2379")]);
        let blocks = decode_output(&rewrite_all(&input));
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].fields, etcdctl_fields("127.0.0.1:2379"));
        assert_eq!(blocks[0].flags, FLAG_END_HEADERS);
        assert_eq!(blocks[0].stream_id, 1);
    }

    #[test]
    fn valid_authority_keeps_its_meaning() {
        let input = connection(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &etcdctl_block("127.0.0.1:2379"),
        )]);
        let blocks = decode_output(&rewrite_all(&input));
        assert_eq!(blocks[0].fields, etcdctl_fields("127.0.0.1:2379"));
        assert_eq!(blocks[0].flags, FLAG_END_HEADERS | FLAG_END_STREAM);
    }

    #[test]
    fn a_connection_that_starts_with_a_valid_authority_passes_byte_for_byte() {
        let input = connection(&[
            etcdctl_headers(1, "127.0.0.1:2379"),
            frame(TYPE_DATA, FLAG_END_STREAM, 1, b"\0\0\0\0\0"),
            // Later blocks are not looked at, whatever they carry.
            etcdctl_headers(3, "http://127.0.0.1:2379"),
        ]);
        assert_eq!(rewrite_all(&input), input);
    }

    #[test]
    fn indexed_authority_in_later_block_is_resolved() {
        let input = connection(&[
            etcdctl_headers(1, "http://127.0.0.1:2379"),
            frame(TYPE_DATA, FLAG_END_STREAM, 1, b"\0\0\0\0\0"),
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &etcdctl_block_indexed()),
        ]);
        let blocks = decode_output(&rewrite_all(&input));
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].fields, etcdctl_fields("127.0.0.1:2379"));
        assert_eq!(blocks[1].fields, etcdctl_fields("127.0.0.1:2379"));
        assert_eq!(blocks[1].stream_id, 3);
    }

    #[test]
    fn continuation_padding_and_priority_are_reframed() {
        let block = etcdctl_block("http://127.0.0.1:2379");
        let (a, rest) = block.split_at(7);
        let (b, c) = rest.split_at(20);
        let priority = [0x80, 0, 0, 0, 0x0f];
        let mut first = vec![3u8]; // pad length
        first.extend_from_slice(&priority);
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0, 0]);
        let input = connection(&[
            frame(
                TYPE_HEADERS,
                FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
                5,
                &first,
            ),
            frame(TYPE_CONTINUATION, 0, 5, b),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, c),
        ]);
        let out = rewrite_all(&input);
        let frames = parse_frames(&out[PREFACE.len()..]);
        assert_eq!(frames.len(), 1, "one HEADERS frame, no CONTINUATION needed");
        let (head, payload) = &frames[0];
        assert_eq!(head.kind, TYPE_HEADERS);
        assert_eq!(
            head.flags,
            FLAG_END_STREAM | FLAG_PRIORITY | FLAG_END_HEADERS
        );
        assert_eq!(payload[..5], priority);
        let blocks = decode_output(&out);
        assert_eq!(blocks[0].fields, etcdctl_fields("127.0.0.1:2379"));
    }

    #[test]
    fn block_above_max_frame_size_is_split_into_continuations() {
        let mut block = etcdctl_block("http://127.0.0.1:2379");
        let big = "v".repeat(40_000);
        block.extend_from_slice(&literal_new_name("x-big", &big));
        let input = connection(&[
            frame(TYPE_HEADERS, 0, 1, &block[..16_000]),
            frame(TYPE_CONTINUATION, 0, 1, &block[16_000..32_000]),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[32_000..]),
        ]);
        let out = rewrite_all(&input);
        let frames = parse_frames(&out[PREFACE.len()..]);
        let kinds: Vec<(u8, u8, usize)> = frames
            .iter()
            .map(|(h, _)| (h.kind, h.flags, h.len))
            .collect();
        assert_eq!(kinds[0], (TYPE_HEADERS, 0, FRAME_PAYLOAD_BYTES_MAX));
        assert_eq!(kinds[1], (TYPE_CONTINUATION, 0, FRAME_PAYLOAD_BYTES_MAX));
        assert_eq!(kinds[2].0, TYPE_CONTINUATION);
        assert_eq!(kinds[2].1, FLAG_END_HEADERS);
        let mut expected = etcdctl_fields("127.0.0.1:2379");
        expected.push(("x-big".into(), big));
        assert_eq!(decode_output(&out)[0].fields, expected);
    }

    #[test]
    fn authority_without_host_is_dropped() {
        let mut block = Vec::new();
        block.extend_from_slice(&[0x83, 0x86]);
        block.extend_from_slice(&literal_indexed_name(0x00, 4, "/a"));
        block.extend_from_slice(&literal_indexed_name(0x00, 1, "unix:///var/run/etcd.sock"));
        let input = connection(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block)]);
        assert_eq!(
            decode_output(&rewrite_all(&input))[0].fields,
            pairs(&[(":method", "POST"), (":scheme", "http"), (":path", "/a")])
        );
    }

    #[test]
    fn authority_part_cuts_scheme_and_path() {
        let part = |s: &'static str| authority_part(&Bytes::from_static(s.as_bytes()));
        assert_eq!(part("http://127.0.0.1:2379").unwrap(), "127.0.0.1:2379");
        assert_eq!(part("https://[::1]:2379/v3?x#y").unwrap(), "[::1]:2379");
        assert_eq!(part("localhost:2379/x").unwrap(), "localhost:2379");
        assert_eq!(part("http://"), None);
        assert_eq!(part("unix:///tmp/etcd.sock"), None);
    }

    #[test]
    fn hpack_error_passes_the_rest_through_unchanged() {
        let frames = [
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80]), // index 0: COMPRESSION_ERROR
            etcdctl_headers(3, "http://h:1"),
            frame(TYPE_DATA, 0, 3, b"data"),
        ];
        let input = connection(&frames);
        assert_eq!(rewrite_all(&input), input);
    }

    #[test]
    fn interrupted_or_misplaced_header_frames_pass_through_unchanged() {
        let interrupted = connection(&[
            frame(TYPE_HEADERS, 0, 1, &etcdctl_block("http://h:1")),
            frame(TYPE_DATA, 0, 1, b"x"),
        ]);
        assert_eq!(rewrite_all(&interrupted), interrupted);
        let orphan = connection(&[
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b"\x82"),
            etcdctl_headers(3, "http://h:1"),
        ]);
        assert_eq!(rewrite_all(&orphan), orphan);
        let too_much_padding = connection(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &[9, 0x82],
        )]);
        assert_eq!(rewrite_all(&too_much_padding), too_much_padding);
    }

    #[test]
    fn header_block_above_one_mib_passes_through_unchanged() {
        let mut frames = vec![frame(TYPE_HEADERS, 0, 1, &etcdctl_block("http://h:1"))];
        let filler = literal_new_name("x", &"f".repeat(16_000));
        frames.extend((0..70).map(|_| frame(TYPE_CONTINUATION, 0, 1, &filler)));
        frames.push(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]));
        let input = connection(&frames);
        let mut rewriter = Rewriter::new();
        assert_eq!(rewriter.step(&input), Step::Pass(PREFACE.len()));
        assert_eq!(
            rewriter.step(&input[PREFACE.len()..]),
            Step::Pass(input.len() - PREFACE.len())
        );
        assert_eq!(rewriter.mode, Mode::Passthrough);
    }
}
