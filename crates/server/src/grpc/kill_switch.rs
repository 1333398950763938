//! Cutting every open connection of a member at once.
//!
//! Owns: `KillSwitch` and the `Killable` stream wrapper. A crashed process's sockets close
//! with it; an in-process member that is "killed" (tests) must get the same effect, or the
//! gRPC connection tasks (spawned per connection, outside the server future) keep the member's
//! state alive and its data directory locked until every client hangs up.
//! Must never: touch the bytes; after the switch flips, every read and write fails.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

#[derive(Default)]
pub struct KillSwitch {
    killed: AtomicBool,
    conns: Mutex<Vec<Weak<AtomicWaker>>>,
}

impl KillSwitch {
    /// Wraps a new connection.
    pub fn wrap<S>(self: &Arc<Self>, inner: S) -> Killable<S> {
        let waker = Arc::new(AtomicWaker::new());
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|w| w.strong_count() > 0);
        conns.push(Arc::downgrade(&waker));
        Killable {
            inner,
            switch: self.clone(),
            waker,
        }
    }

    /// Fails every wrapped connection from now on, and wakes the ones waiting for I/O.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for waker in conns.iter().filter_map(Weak::upgrade) {
            waker.wake();
        }
    }
}

pub struct Killable<S> {
    inner: S,
    switch: Arc<KillSwitch>,
    waker: Arc<AtomicWaker>,
}

impl<S> Killable<S> {
    /// Registers interest in the switch and reports whether it has flipped.
    fn killed(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.switch.killed.load(Ordering::SeqCst)
    }
}

fn aborted<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "member killed",
    )))
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return aborted();
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed(cx) {
            return aborted();
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return aborted();
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Killable<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn kill_fails_a_pending_read_and_later_writes() {
        let switch = Arc::new(KillSwitch::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut conn = switch.wrap(a);
        b.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf)
            .await
            .expect("read before the kill");
        assert_eq!(&buf, b"hi");
        let pending = tokio::spawn(async move {
            let mut one = [0u8; 1];
            let result = conn.read(&mut one).await;
            (result, conn)
        });
        switch.kill();
        let (result, mut conn) = tokio::time::timeout(std::time::Duration::from_secs(5), pending)
            .await
            .expect("the blocked read wakes up")
            .expect("join");
        assert_eq!(
            result.expect_err("read fails").kind(),
            io::ErrorKind::ConnectionAborted
        );
        assert!(
            conn.write_all(b"x").await.is_err(),
            "writes fail after the kill"
        );
    }
}
