//! Connections a member serves that do not come from a TCP listener: the deterministic
//! simulation hands each member a stream of connections accepted on turmoil's simulated
//! network.
//!
//! Owns: the boxed connection type ([`StreamConn`]) and listener ([`StreamListener`]).
//! Must never: be used by the `keel` binary, which serves real TCP listeners (node.rs).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Any byte stream a gRPC connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// One accepted connection.
pub struct StreamConn(pub Box<dyn Io>);

/// Accepted connections and the address they were accepted on.
pub struct StreamListener {
    pub addr: SocketAddr,
    pub incoming: BoxStream<'static, io::Result<StreamConn>>,
}

impl AsyncRead for StreamConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for StreamConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl Connected for StreamConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}
