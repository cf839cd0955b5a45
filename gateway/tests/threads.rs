//! `serve_on_threads`: how `hookbus-gateway` spreads its connections over
//! serving threads, over real HTTP.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hookbus_bus::Shutdown;
use hookbus_gateway::{serve_on_threads, GatewayError};

/// A router that answers with the name of the thread serving the request.
fn thread_name_router() -> Result<Router, GatewayError> {
    Ok(Router::new().route("/thread", get(|| async { std::thread::current().name().unwrap_or("unnamed").to_string() })))
}

/// `GET /thread` over `connection`, HTTP/1.1 kept alive; the body.
async fn get_thread_name(connection: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    connection.write_all(b"GET /thread HTTP/1.1\r\nhost: gateway\r\n\r\n").await.expect("request");
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let read = connection.read(&mut chunk).await.expect("response");
        assert!(read > 0, "connection closed mid-response: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&received).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        if body.len() >= length {
            return body[..length].to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_stays_on_one_serving_thread_and_connections_take_turns() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = Shutdown::new();
    let server =
        tokio::spawn(serve_on_threads(listener, 3, thread_name_router, shutdown.clone(), Duration::from_secs(5)));

    let mut threads = Vec::new();
    for _ in 0..6 {
        // One TCP connection each, kept alive between its requests (a
        // pooling client may open another while the last is being put back).
        let mut connection = tokio::net::TcpStream::connect(address).await.expect("connect");
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            seen.insert(get_thread_name(&mut connection).await);
        }
        assert_eq!(seen.len(), 1, "one connection moved between threads: {seen:?}");
        threads.extend(seen);
    }
    // Handed out in turn: six connections, three threads, two each.
    for name in ["gateway-0", "gateway-1", "gateway-2"] {
        assert_eq!(threads.iter().filter(|t| *t == name).count(), 2, "{threads:?}");
    }

    shutdown.trigger();
    let stopped = tokio::time::timeout(Duration::from_secs(10), server).await.expect("stops").expect("task");
    assert!(stopped.is_ok(), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_whose_gateway_cannot_be_built_stops_them_all_with_its_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let built = std::sync::atomic::AtomicUsize::new(0);
    let build = move || {
        // The second thread to build fails.
        if built.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            return Err(GatewayError::Setup("no redis today".to_string()));
        }
        thread_name_router()
    };
    let served = tokio::time::timeout(
        Duration::from_secs(10),
        serve_on_threads(listener, 2, build, Shutdown::new(), Duration::from_secs(5)),
    )
    .await
    .expect("returns instead of serving half a gateway");
    let err = served.expect_err("the build error");
    assert!(err.to_string().contains("no redis today"), "{err}");
}
