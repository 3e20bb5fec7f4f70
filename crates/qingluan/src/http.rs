//! A minimal HTTP/1.1 client over a unix socket, for the management API and the Docker
//! Engine API.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Sends one request and returns status and body; fails after `timeout`.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    tokio::time::timeout(timeout, async {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("Host", "localhost")
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        // The connection is driven here, beside the request, and dropped with it.
        let exchange = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes().to_vec();
            anyhow::Ok((status, bytes))
        };
        // When the connection ends first (closed or failed), the exchange fails or has
        // its answer already: it decides.
        let drive = async move {
            let _ = conn.await;
            std::future::pending::<std::convert::Infallible>().await
        };
        tokio::select! {
            r = exchange => r,
            never = drive => match never {},
        }
    })
    .await
    .with_context(|| format!("no answer from {} within {timeout:?}", socket.display()))?
}
