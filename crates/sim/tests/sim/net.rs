//! gRPC over turmoil's simulated TCP: the dialer every member and client uses, and the
//! listener a member serves on.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use keel_server::transport::{StreamConn, StreamListener};
use tonic::transport::{Channel, Endpoint, Uri};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// Connects a keel peer endpoint (built by keel with its timeouts and keepalive) over the
/// simulated network; installed with `keel_raft::set_peer_dialer`.
pub fn dial_peer(endpoint: Endpoint) -> Channel {
    endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
        let addr = uri_addr(&uri)?;
        let stream = turmoil::net::TcpStream::connect(addr).await?;
        Ok::<_, io::Error>(TokioIo::new(stream))
    }))
}

/// A simulated client's channel to `http://ip:port`, with keepalive like etcd's clients, so a
/// connection whose packets a partition dropped is replaced instead of stalling forever.
pub fn dial(url: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    Ok(dial_peer(endpoint))
}

fn uri_addr(uri: &Uri) -> io::Result<SocketAddr> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad sim URI {uri}"));
    let ip: IpAddr = uri.host().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, uri.port_u16().ok_or_else(bad)?))
}

/// Binds `port` on the current simulated host and turns accepted connections into a stream.
pub async fn listen(ip: IpAddr, port: u16) -> io::Result<StreamListener> {
    let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let listener = turmoil::net::TcpListener::bind(bind).await?;
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let conn = listener
            .accept()
            .await
            .map(|(stream, _)| StreamConn(Box::new(stream)));
        Some((conn, listener))
    })
    .boxed();
    Ok(StreamListener {
        addr: SocketAddr::new(ip, port),
        incoming,
    })
}
