//! The client fails over from a dead endpoint to a live one.

use keel_client::Client;
use keel_server::{Config, Listeners, Node};
use tokio::net::TcpListener;

#[tokio::test]
async fn reads_and_writes_fail_over_past_a_dead_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client_url = format!("http://{}", client_listener.local_addr().expect("addr"));
    let peer_url = format!("http://{}", peer_listener.local_addr().expect("addr"));
    // A port that was bound and released: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let data_dir = dir.path().join("m0").display().to_string();
    let cluster = format!("m0={peer_url}");
    let args = [
        "keel",
        "--name",
        "m0",
        "--data-dir",
        &data_dir,
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        &cluster,
        "--heartbeat-interval",
        "20",
        "--election-timeout",
        "200",
    ];
    let config = <Config as clap::Parser>::try_parse_from(args).expect("config");
    let node = Node::start(
        &config,
        Listeners {
            client: vec![client_listener],
            peer: vec![peer_listener],
        },
    )
    .await
    .expect("start");

    let client = Client::connect(&[format!("http://{dead}"), client_url.clone()]).expect("client");
    let put = client
        .put("k", "v")
        .await
        .expect("put fails over to the live endpoint");
    assert_eq!(put.header.expect("header").revision, 2);
    let kv = client.get("k").await.expect("get").expect("key exists");
    assert_eq!(kv.value, b"v");

    node.stop().await;
}
