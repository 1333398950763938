//! keel-client: a small client for keel (or any etcd v3 server) with endpoint failover.
//!
//! Owns: choosing an endpoint per call and moving on when one is unreachable. Reads fail over
//! on any `Unavailable`; writes fail over only when the request cannot have been proposed
//! (the connection was never made, or the server said it has no leader), so a write is never
//! applied twice by a retry.
//! Must never: retry without bound (one pass over the endpoints per call).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel_api::error::EtcdError;
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use keel_api::mvccpb::KeyValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("bad endpoint {0}: {1}")]
    BadEndpoint(String, String),
    /// The server's answer (etcd's code and message), or the last endpoint's failure.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
}

/// A client over a fixed set of endpoints (`host:port` or `http://host:port`).
pub struct Client {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

#[derive(Clone, Copy, PartialEq)]
enum Retry {
    /// Safe to repeat anywhere (reads).
    Idempotent,
    /// Repeat only if it cannot have been proposed.
    NotProposed,
}

fn retryable(status: &Status, retry: Retry) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    match retry {
        Retry::Idempotent => true,
        Retry::NotProposed => {
            status.message() == EtcdError::NoLeader.to_string()
                || status.message().contains("tcp connect error")
        }
    }
}

impl Client {
    /// Prepares lazily connecting channels; nothing is dialled until the first call.
    /// Must be called inside a Tokio runtime.
    pub fn connect<S: AsRef<str>>(endpoints: &[S]) -> Result<Client, Error> {
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let mut channels = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let ep = ep.as_ref();
            let url = if ep.contains("://") {
                ep.to_string()
            } else {
                format!("http://{ep}")
            };
            let endpoint = Endpoint::from_shared(url)
                .map_err(|e| Error::BadEndpoint(ep.into(), e.to_string()))?;
            channels.push(
                endpoint
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy(),
            );
        }
        Ok(Client {
            channels,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `call` against endpoints in turn, starting where the last successful call was.
    async fn with_failover<T, F, Fut>(&self, retry: Retry, mut call: F) -> Result<T, Error>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let start = self.next.load(Ordering::Relaxed);
        let mut last = None;
        for offset in 0..self.channels.len() {
            let i = (start + offset) % self.channels.len();
            match call(KvClient::new(self.channels[i].clone())).await {
                Ok(resp) => {
                    self.next.store(i, Ordering::Relaxed);
                    return Ok(resp.into_inner());
                }
                Err(status) if retryable(&status, retry) => last = Some(status),
                Err(status) => return Err(Error::Status(status)),
            }
        }
        Err(Error::Status(last.unwrap_or_else(|| {
            Status::unavailable("no endpoint answered")
        })))
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Error> {
        self.with_failover(Retry::Idempotent, |mut c| {
            let req = req.clone();
            async move { c.range(req).await }
        })
        .await
    }

    /// The current value of one key (linearizable).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, Error> {
        let resp = self
            .range(RangeRequest {
                key: key.into(),
                ..Default::default()
            })
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutResponse, Error> {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        self.with_failover(Retry::NotProposed, |mut c| {
            let req = req.clone();
            async move { c.put(req).await }
        })
        .await
    }

    pub async fn delete(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        self.with_failover(Retry::NotProposed, |mut c| {
            let req = req.clone();
            async move { c.delete_range(req).await }
        })
        .await
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Error> {
        self.with_failover(Retry::NotProposed, |mut c| {
            let req = req.clone();
            async move { c.txn(req).await }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unproposed_writes_are_retried() {
        let no_leader = EtcdError::NoLeader.to_status();
        let timeout = EtcdError::Timeout.to_status();
        let compacted = EtcdError::Compacted.to_status();
        assert!(retryable(&no_leader, Retry::NotProposed));
        assert!(retryable(
            &Status::unavailable("tcp connect error"),
            Retry::NotProposed
        ));
        assert!(
            !retryable(&timeout, Retry::NotProposed),
            "a timed-out write may have been applied"
        );
        assert!(retryable(&timeout, Retry::Idempotent));
        assert!(!retryable(&compacted, Retry::Idempotent));
    }

    #[tokio::test]
    async fn endpoints_are_validated() {
        assert!(matches!(
            Client::connect::<&str>(&[]),
            Err(Error::NoEndpoints)
        ));
        assert!(Client::connect(&["127.0.0.1:2379", "http://127.0.0.1:2380"]).is_ok());
    }
}
