//! A cap on open client connections: past it the node stops accepting (new
//! connections wait in the listen backlog) until one closes, instead of
//! growing without bound.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection holding one of the node's connection slots.
pub struct Limited {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// The node's open-connections gauge, decremented on drop.
    open: Gauge,
}

/// Wraps `incoming` so at most `max` accepted connections are open at once.
pub fn limit(
    incoming: impl Stream<Item = io::Result<TcpStream>> + Send + 'static,
    max: usize,
    open: Gauge,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(max));
    incoming.then(move |conn| {
        let slots = slots.clone();
        let open = open.clone();
        async move {
            let io = conn?;
            if slots.available_permits() == 0 {
                tracing::warn!(max, "connection limit reached; new connections wait");
            }
            let slot = slots
                .acquire_owned()
                .await
                .map_err(|_| io::Error::other("connection slots closed"))?;
            open.inc();
            Ok(Limited {
                io,
                _slot: slot,
                open,
            })
        }
    })
}

impl Drop for Limited {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
