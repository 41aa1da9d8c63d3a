//! One accepted client connection: its place under the cap on open connections, and its idle
//! timer.
//!
//! HTTP/2 keepalive pings notice a peer that vanished, but a live peer that just sits on a
//! connection answers them, so they never close it: enough such connections would fill the cap
//! and lock every other unit out. So each connection counts the calls in flight on it (see
//! [`ConnectionInfo::call_started`], which `crate::call` asks for every call) and the time of the
//! last one's start or end, and a
//! connection with no call in flight for the idle timeout is closed. A long `Watch` stream is a
//! call in flight: it keeps its connection, however quiet.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::transport::server::{Connected, TlsConnectInfo};

/// Accepted connections, at most `max` open at once: past it the listener is not read, so that
/// the kernel's backlog, not this process, holds the excess. Each is closed once idle for
/// `idle_timeout`.
pub fn limited_incoming(
    listener: TcpListener,
    max: usize,
    idle_timeout: Duration,
) -> ReceiverStream<std::io::Result<Accepted>> {
    let permits = Arc::new(Semaphore::new(max));
    let (connections, incoming) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let accepted = listener.accept().await.map(|(stream, _)| {
                // Checks are small writes that must not wait for Nagle's algorithm.
                let _ = stream.set_nodelay(true);
                Accepted::new(stream, permit, idle_timeout)
            });
            if connections.send(accepted).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(incoming)
}

/// What the calls on one connection are doing, shared by the connection and its calls.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    calls: AtomicUsize,
    /// When the last call started or ended, in milliseconds after `opened`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            calls: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(elapsed, Ordering::Relaxed);
    }

    /// Counts a call in flight until the returned guard is dropped.
    fn call_started(self: &Arc<Self>) -> CallInFlight {
        self.calls.fetch_add(1, Ordering::AcqRel);
        self.touch();
        CallInFlight(Arc::clone(self))
    }

    /// When the connection is next to be looked at, or `None` if it has been idle for
    /// `timeout` and is to be closed.
    fn next_look(&self, timeout: Duration) -> Option<Instant> {
        let now = Instant::now();
        if self.calls.load(Ordering::Acquire) > 0 {
            return Some(now + timeout);
        }
        let idle_since = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let deadline = idle_since + timeout;
        (deadline > now).then_some(deadline)
    }
}

/// One call counted in flight on its connection, until it is dropped.
#[derive(Debug)]
pub struct CallInFlight(Arc<Activity>);

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the server knows of a connection, in every call's extensions.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    activity: Arc<Activity>,
}

impl ConnectionInfo {
    /// The connection's info among a call's extensions, under TLS or not.
    fn of(extensions: &http::Extensions) -> Option<&Self> {
        extensions.get::<Self>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<Self>>()
                .map(TlsConnectInfo::get_ref)
        })
    }

    /// Counts the call whose extensions these are in flight on its connection, until the guard
    /// is dropped (`None` for a call that came over no [`Accepted`] connection).
    pub fn call_started(extensions: &http::Extensions) -> Option<CallInFlight> {
        Self::of(extensions).map(|info| info.activity.call_started())
    }

    /// The certificate chain the client presented over TLS, if any.
    pub fn peer_certs(
        extensions: &http::Extensions,
    ) -> Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>> {
        extensions
            .get::<TlsConnectInfo<Self>>()
            .and_then(TlsConnectInfo::peer_certs)
    }
}

/// A connection that holds one of [`limited_incoming`]'s permits while it is open, and reads as
/// ended once it has been idle too long.
pub struct Accepted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    next_look: Pin<Box<Sleep>>,
}

impl Accepted {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        Self {
            stream,
            _permit: permit,
            activity: Arc::new(Activity::new()),
            idle_timeout,
            next_look: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }
}

impl Connected for Accepted {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            activity: Arc::clone(&self.activity),
        }
    }
}

impl AsyncRead for Accepted {
    /// HTTP/2 always has a read pending on a connection, so this is where the idle timer is
    /// watched: past it, the connection reads as closed by the peer, and the server drops it.
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.next_look.as_mut().poll(context).is_ready() {
            match self.activity.next_look(self.idle_timeout) {
                Some(at) => self.next_look.as_mut().reset(at),
                None => {
                    tracing::debug!("closing a connection idle for {:?}", self.idle_timeout);
                    return Poll::Ready(Ok(()));
                }
            }
        }
        Pin::new(&mut self.stream).poll_read(context, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
}
