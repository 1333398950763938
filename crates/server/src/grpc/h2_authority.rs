//! etcdctl 3.4 compatibility: repairs a URL-shaped HTTP/2 `:authority` before h2 sees it.
//!
//! etcdctl 3.4 (`endpoint status`, `endpoint health --cluster`, ...) dials grpc-go with a
//! passthrough target, so its requests carry `:authority: http://127.0.0.1:2379`. grpc-go
//! servers (real etcd) accept that; h2, under hyper and tonic, rejects the request as a
//! "malformed authority" and resets the stream with PROTOCOL_ERROR. We can neither patch
//! nor vendor h2, so [`AuthorityFix`] sits between the accepted socket and h2: it follows
//! the client's frames, HPACK-decodes each header block with the client's dynamic table,
//! replaces an invalid `:authority` by its authority part (`127.0.0.1:2379`), or drops it
//! when there is none, and re-encodes every block statelessly so h2's decoder stays in step.
//! A connection whose first header block has a valid `:authority` (every client but etcdctl
//! 3.4) is left alone from that block on: the rewriting is paid only by the clients that need it.
//!
//! Owns: the read side of one connection up to h2 (writes pass untouched). Everything but
//! header blocks passes byte for byte; DATA payloads go straight from the socket into h2's
//! buffer. What is not HTTP/2 as we understand it (no prior-knowledge preface, a malformed
//! frame sequence, an HPACK error, a header frame above 16 KiB) passes through unchanged
//! from there on, so h2 raises its own error.
//!
//! Must never: alter anything but an invalid `:authority`; buffer more than one header
//! block of at most 1 MiB; panic or wait for bytes it does not need.
//!
//! Wiring (the listener of the client API):
//!
//! ```ignore
//! let incoming = TcpListenerStream::new(listener).map_ok(AuthorityFix::new);
//! Server::builder().add_routes(routes).serve_with_incoming_shutdown(incoming, shutdown)
//! ```

mod hpack;
mod rewrite;
#[cfg(test)]
mod test_support;

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use rewrite::{Rewriter, Step};

/// Most bytes zero-filled per read into the internal buffer, which only ever holds a
/// split frame head or a header block still arriving.
const HELD_READ_BYTES_MAX: usize = 8 * 1024;

/// An accepted server-side connection whose reads have invalid `:authority` values
/// repaired; see the module documentation.
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Bytes read from `inner` that start a unit still incomplete (a split frame head or
    /// a header block); empty on the fast path.
    held: BytesMut,
    /// How many more bytes `held` needs before `rewriter` can decide it.
    held_need: usize,
    /// Decided bytes waiting for room in the caller's buffer, in order.
    ready: VecDeque<Bytes>,
}

impl<S> AuthorityFix<S> {
    /// Wraps an accepted connection. Nothing is read until h2 reads.
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            held: BytesMut::new(),
            held_need: 0,
            ready: VecDeque::new(),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves as many ready bytes as fit into `buf`; true if it moved any.
    fn copy_ready(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let mut copied = false;
        while buf.remaining() > 0 {
            let Some(front) = self.ready.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                self.ready.pop_front();
            }
            copied = true;
        }
        copied
    }

    /// Decides `held` as far as it goes: afterwards `held` is empty or starts with an
    /// incomplete unit needing `held_need` more bytes.
    fn decide_held(&mut self) {
        while !self.held.is_empty() {
            match self.rewriter.step(&self.held) {
                Step::Pass(n) => self.ready.push_back(self.held.split_to(n).freeze()),
                Step::Block(len) => {
                    let frames = self.held.split_to(len);
                    self.ready.push_back(self.rewriter.rewrite(frames));
                }
                Step::Hold { need } => {
                    self.held_need = need;
                    return;
                }
            }
        }
    }

    /// Decides bytes just read into `buf[start..]` where they lie (the fast path): what
    /// passes stays, and from the first unit that needs rewriting or more bytes on,
    /// everything moves to `held`. True if the caller got at least one byte.
    fn decide_in_place(&mut self, buf: &mut ReadBuf<'_>, start: usize) -> bool {
        let end = buf.filled().len();
        let mut pos = start;
        while pos < end {
            match self.rewriter.step(&buf.filled()[pos..end]) {
                Step::Pass(n) => pos += n,
                Step::Hold { .. } | Step::Block(_) => {
                    self.held.extend_from_slice(&buf.filled()[pos..end]);
                    buf.set_filled(pos);
                    self.decide_held();
                    break;
                }
            }
        }
        pos > start
    }
}

impl<S: AsyncRead + Unpin> AuthorityFix<S> {
    /// Reads at most `held_need` bytes (capped) onto `held`; returns how many (0 at EOF).
    fn poll_fill_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let old_len = self.held.len();
        let want = self.held_need.clamp(1, HELD_READ_BYTES_MAX);
        // Zero-filling (rather than reading into spare capacity) keeps this free of
        // `unsafe`; it costs at most 8 KiB per read, on the slow path only.
        self.held.resize(old_len + want, 0);
        let mut read_buf = ReadBuf::new(&mut self.held[old_len..]);
        let result = Pin::new(&mut self.inner).poll_read(cx, &mut read_buf);
        let n = read_buf.filled().len();
        self.held.truncate(old_len + n);
        ready!(result)?;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 || this.copy_ready(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.held.is_empty() {
                // Fast path: read straight into the caller's buffer.
                let start = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if buf.filled().len() == start || this.decide_in_place(buf, start) {
                    return Poll::Ready(Ok(()));
                }
            } else {
                if ready!(this.poll_fill_held(cx))? == 0 {
                    // EOF inside a unit: h2 gets the truncated bytes and judges them.
                    this.rewriter.stop_at_eof();
                }
                this.decide_held();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Remote and local addresses stay those of the wrapped socket.
impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use keel_api::health::ServingStatus;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_stream::wrappers::TcpListenerStream;
    use tokio_stream::StreamExt;

    use super::hpack::Decoder;
    use super::rewrite::{
        FrameHead, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY, FRAME_HEAD_BYTES,
        PREFACE, TYPE_CONTINUATION, TYPE_HEADERS,
    };
    use super::test_support::*;
    use super::*;

    const TYPE_RST_STREAM: u8 = 0x3;
    const TYPE_SETTINGS: u8 = 0x4;
    const TYPE_PING: u8 = 0x6;
    const TYPE_GOAWAY: u8 = 0x7;
    const TYPE_WINDOW_UPDATE: u8 = 0x8;

    /// A peer that hands out `chunk` bytes per read, returning `Pending` (after waking)
    /// before every read, and keeps what is written to it.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
        pending_next: bool,
        written: Vec<u8>,
    }

    impl Trickle {
        fn new(data: &[u8], chunk: usize) -> Self {
            Trickle {
                data: data.to_vec(),
                pos: 0,
                chunk,
                pending_next: true,
                written: Vec::new(),
            }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.pending_next = !this.pending_next;
            if !this.pending_next {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = this
                .chunk
                .min(this.data.len() - this.pos)
                .min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Everything the fix yields for `input` served `chunk` bytes per read, read through
    /// a caller buffer of `read_len` bytes; also the fix itself, to inspect.
    async fn read_through(
        input: &[u8],
        chunk: usize,
        read_len: usize,
    ) -> (Vec<u8>, AuthorityFix<Trickle>) {
        let mut fix = AuthorityFix::new(Trickle::new(input, chunk));
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_len];
        loop {
            let n = fix.read(&mut buf).await.unwrap();
            if n == 0 {
                return (out, fix);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// A connection mixing every case: control frames, a URL authority, padding,
    /// priority, CONTINUATION, an indexed repeat and DATA frames of several sizes.
    fn mixed_connection() -> Vec<u8> {
        let block = etcdctl_block("http://127.0.0.1:2379");
        let mut padded = vec![2u8, 0x80, 0, 0, 1, 7];
        padded.extend_from_slice(&block[..10]);
        padded.extend_from_slice(&[0, 0]);
        connection(&[
            frame(TYPE_SETTINGS, 0, 0, &[0, 4, 0, 0x40, 0, 0]),
            frame(TYPE_WINDOW_UPDATE, 0, 0, &[0, 0x0f, 0, 1]),
            frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 1, &padded),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[10..]),
            frame(TYPE_DATA, 0, 1, &[7u8; 20_000]),
            frame(TYPE_DATA, FLAG_END_STREAM, 1, b"\0\0\0\0\0"),
            frame(TYPE_PING, 0, 0, b"12345678"),
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &etcdctl_block_indexed()),
            frame(TYPE_DATA, FLAG_END_STREAM, 3, &[9u8; 3]),
        ])
    }

    #[tokio::test]
    async fn split_reads_give_the_same_output_as_whole_reads() {
        let input = mixed_connection();
        let (whole, _) = read_through(&input, usize::MAX, 1 << 20).await;
        let blocks = decode_output(&whole);
        assert_eq!(blocks.len(), 2);
        assert!(blocks
            .iter()
            .all(|b| b.fields == etcdctl_fields("127.0.0.1:2379")));
        for (chunk, read_len) in [
            (1, 1 << 16),
            (1, 1),
            (7, 3),
            (13, 100),
            (4096, 5000),
            (9, 9),
        ] {
            let (split, _) = read_through(&input, chunk, read_len).await;
            assert!(split == whole, "chunk {chunk}, read_len {read_len}");
        }
    }

    #[tokio::test]
    async fn non_header_frames_and_preface_pass_byte_for_byte() {
        let control_only = connection(&[
            frame(TYPE_SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
            frame(TYPE_SETTINGS, 1, 0, &[]),
            frame(TYPE_WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]),
            frame(TYPE_DATA, 0, 1, &[1u8; 70_000][..16_384]),
            frame(TYPE_PING, 1, 0, b"abcdefgh"),
        ]);
        for chunk in [1, 5, 1 << 20] {
            assert_eq!(
                read_through(&control_only, chunk, 4096).await.0,
                control_only
            );
        }
        // Around a rewritten block, every other frame is still byte-for-byte.
        let input = mixed_connection();
        let (out, _) = read_through(&input, 1 << 20, 1 << 20).await;
        let not_headers = |bytes: &[u8]| -> Vec<(FrameHead, Vec<u8>)> {
            parse_frames(&bytes[PREFACE.len()..])
                .into_iter()
                .filter(|(head, _)| head.kind != TYPE_HEADERS && head.kind != TYPE_CONTINUATION)
                .collect()
        };
        assert_eq!(not_headers(&out), not_headers(&input));
        assert!(out.starts_with(PREFACE));
    }

    #[tokio::test]
    async fn data_payloads_bypass_the_internal_buffer() {
        let frames: Vec<Vec<u8>> = (0..64)
            .map(|i| frame(TYPE_DATA, 0, 1, &vec![i as u8; 16_000 + i]))
            .collect();
        let input = connection(&frames);
        let (out, fix) = read_through(&input, 4093, 8192).await;
        assert_eq!(out, input);
        // Only split frame heads (at most 8 bytes) were ever held.
        assert!(
            fix.held.capacity() <= 64,
            "held grew to {}",
            fix.held.capacity()
        );
    }

    #[tokio::test]
    async fn non_http2_stream_passes_through_unchanged() {
        let http1 = b"GET /health HTTP/1.1\r\nHost: http://127.0.0.1:2379\r\n\r\n".to_vec();
        let almost = b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n\0\0\x05\x01\x04\0\0\0\x01abcde".to_vec();
        let tls = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        for input in [http1, almost, tls] {
            for chunk in [1, 3, 1 << 20] {
                assert_eq!(read_through(&input, chunk, 7).await.0, input);
            }
        }
    }

    #[tokio::test]
    async fn connection_ending_inside_a_header_block_passes_it_and_ends() {
        let whole = connection(&[etcdctl_headers(1, "http://h:1")]);
        for cut in [PREFACE.len() + 4, PREFACE.len() + FRAME_HEAD_BYTES + 3] {
            let truncated = &whole[..cut];
            assert_eq!(read_through(truncated, 2, 64).await.0, truncated);
        }
    }

    #[tokio::test]
    async fn writes_pass_through_untouched() {
        let mut fix = AuthorityFix::new(Trickle::new(&[], 1));
        let bytes = etcdctl_headers(1, "http://h:1");
        fix.write_all(&bytes).await.unwrap();
        fix.flush().await.unwrap();
        assert_eq!(fix.get_ref().written, bytes);
    }

    // ----- end to end: a real tonic server behind the fix, a hand-written client -----

    /// How the server answered stream 1.
    #[derive(Debug, PartialEq, Eq)]
    enum Answer {
        Response { fields: Vec<(String, String)> },
        Reset { reason: u32 },
        GoAway,
    }

    async fn spawn_health_server(
        with_fix: bool,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, health) = keel_api::health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let server = tonic::transport::Server::builder().add_service(health);
        let incoming = TcpListenerStream::new(listener);
        let task = if with_fix {
            let incoming = incoming.map(|conn| conn.map(AuthorityFix::new));
            tokio::spawn(server.serve_with_incoming_shutdown(incoming, stop))
        } else {
            tokio::spawn(server.serve_with_incoming_shutdown(incoming, stop))
        };
        (addr, stop_tx, task)
    }

    /// What etcdctl 3.4 sends for a health check: `:authority` is the endpoint URL.
    fn health_check_request(authority: &str) -> Vec<u8> {
        let mut block = vec![0x83, 0x86];
        block.extend_from_slice(&literal_indexed_name(
            0x40,
            4,
            "/grpc.health.v1.Health/Check",
        ));
        block.extend_from_slice(&literal_indexed_name(0x40, 1, authority));
        block.extend_from_slice(&literal_indexed_name(0x40, 31, "application/grpc"));
        block.extend_from_slice(&literal_new_name("te", "trailers"));
        connection(&[
            frame(TYPE_SETTINGS, 0, 0, &[]),
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block),
            // An empty HealthCheckRequest: uncompressed, zero-length message.
            frame(TYPE_DATA, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0]),
        ])
    }

    /// Sends `request` and reads frames until stream 1 ends, is reset, or the
    /// connection goes away. Response headers and trailers are returned together.
    async fn answer_to(addr: SocketAddr, request: &[u8]) -> Answer {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(request).await.unwrap();
        let mut decoder = Decoder::new();
        let mut fields = Vec::new();
        let mut pending = Vec::new();
        let mut block = Vec::new();
        loop {
            while let Some(head) = FrameHead::parse(&pending) {
                let end = FRAME_HEAD_BYTES + head.len;
                if pending.len() < end {
                    break;
                }
                let payload: Vec<u8> = pending.drain(..end).skip(FRAME_HEAD_BYTES).collect();
                match head.kind {
                    TYPE_SETTINGS if head.flags & 1 == 0 => {
                        conn.write_all(&frame(TYPE_SETTINGS, 1, 0, &[]))
                            .await
                            .unwrap();
                    }
                    TYPE_HEADERS | TYPE_CONTINUATION => {
                        block.extend_from_slice(&payload);
                        if head.flags & FLAG_END_HEADERS == 0 {
                            continue;
                        }
                        let decoded = decoder
                            .decode(&Bytes::from(std::mem::take(&mut block)), usize::MAX)
                            .expect("server header block decodes");
                        fields.extend(decoded.into_iter().map(|f| {
                            (
                                String::from_utf8(f.name.to_vec()).unwrap(),
                                String::from_utf8(f.value.to_vec()).unwrap(),
                            )
                        }));
                        if head.flags & FLAG_END_STREAM != 0 {
                            return Answer::Response { fields };
                        }
                    }
                    TYPE_RST_STREAM if head.stream_id == 1 => {
                        let reason = u32::from_be_bytes(payload[..4].try_into().unwrap());
                        return Answer::Reset { reason };
                    }
                    TYPE_GOAWAY => return Answer::GoAway,
                    _ => {}
                }
            }
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "server closed the connection without answering");
            pending.extend_from_slice(&buf[..n]);
        }
    }

    fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn etcdctl_url_authority_gets_a_grpc_answer_through_the_fix() {
        let (addr, stop, server) = spawn_health_server(true).await;
        let request = health_check_request(&format!("http://{addr}"));
        let answer = tokio::time::timeout(Duration::from_secs(10), answer_to(addr, &request))
            .await
            .expect("answer within 10 s");
        let Answer::Response { fields } = answer else {
            panic!("expected a gRPC response, got {answer:?}");
        };
        assert_eq!(field(&fields, ":status"), Some("200"), "{fields:?}");
        assert_eq!(field(&fields, "grpc-status"), Some("0"), "{fields:?}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    /// Why the fix exists: h2 alone resets the very same request. If this starts failing,
    /// h2 accepts URL authorities and the fix may be retired.
    #[tokio::test]
    async fn h2_resets_url_authority_without_the_fix() {
        let (addr, stop, server) = spawn_health_server(false).await;
        let request = health_check_request(&format!("http://{addr}"));
        let answer = tokio::time::timeout(Duration::from_secs(10), answer_to(addr, &request))
            .await
            .expect("answer within 10 s");
        const PROTOCOL_ERROR: u32 = 0x1;
        assert_eq!(
            answer,
            Answer::Reset {
                reason: PROTOCOL_ERROR
            }
        );
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
