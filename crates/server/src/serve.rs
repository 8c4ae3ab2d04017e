//! Our own accept loop, so that slow and idle clients cannot hold the server's connections:
//!
//! - a request's head must arrive within `header_read_timeout` (hyper's HTTP/1 header timer,
//!   with a tokio timer: `axum::serve` sets none, so a half-sent request line stayed forever);
//! - a connection with no request in progress and nothing received is closed after
//!   `keep_alive` (hyper's header timer runs between requests too, so an idle connection
//!   lives at most the shorter of the two);
//! - at most `max_connections` are open; at the cap the connection idle the longest is closed
//!   for the new one (then one still sending its head; never one with a request in flight),
//!   and if every one is busy the new one is closed at once. The cap stays below the
//!   open-files limit, which [`raise_open_files_limit`] lifts to the hard limit at start-up;
//! - at shutdown the listener closes at once and requests in flight get `shutdown_grace`;
//! - the listening socket's backlog is [`LISTEN_BACKLOG`] (tokio's `TcpListener::bind` asks for
//!   1024): connections the kernel has completed but the loop has not taken yet wait there, and
//!   when it is full a new client's SYN is dropped and only retried a second later.

use axum::Router;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

/// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`, 4096 on Linux
/// since 5.4): room for a flood of thousands of connections while the accept loop catches up,
/// so that a normal client's connection is not dropped behind them.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR` on Unix, as
/// `TcpListener::bind` sets it, so a restarted server binds despite connections in TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What the accept loop enforces.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub keep_alive: Duration,
    pub max_connections: usize,
    /// A connection with a request in flight that moves no byte either way for this long is
    /// closed: a client that stops reading its answers cannot hold a connection (and a place
    /// under the cap) for ever. Longer than the request timeout, so a slow handler is not one.
    pub stall_timeout: Duration,
    /// At shutdown, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
}

/// Raise the soft open-files limit to the hard limit; returns the soft limit in force after.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let Some(hard) = current.maximum else {
        // No hard limit: nothing to raise to.
        return current.current;
    };
    if current.current.is_some_and(|soft| soft >= hard) {
        return current.current;
    }
    let raised = rustix::process::Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Some(hard),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit to its hard limit");
            current.current
        }
    }
}

/// The connection cap when `max_connections` is not set: the open-files limit less what the
/// databases may hold open (each tenant pool up to 2 connections of 3 files) and a margin.
pub fn default_max_connections(open_files: Option<u64>, tenant_pool_max_open: usize) -> usize {
    let limit = open_files.and_then(|n| usize::try_from(n).ok()).unwrap_or(1024);
    let reserve = 256 + 6 * tenant_pool_max_open;
    limit.saturating_sub(reserve).max(64)
}

/// One connection as the accept loop sees it.
struct Conn {
    /// Milliseconds since the registry's epoch of the last accepted connection, finished
    /// response or received byte.
    last_activity: AtomicU64,
    in_flight: AtomicUsize,
    /// Bytes came in since the last response finished: a request is on its way.
    receiving: AtomicBool,
    close: Notify,
}

struct Registry {
    epoch: Instant,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self, c: &Conn) {
        c.last_activity.store(self.now_ms(), Ordering::Relaxed);
    }

    fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Close the connection idle the longest (no request in flight; those that received
    /// nothing first). False when every connection is busy.
    fn evict_one(&self) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let victim = conns
            .iter()
            .filter(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, c)| {
                (
                    c.receiving.load(Ordering::Relaxed),
                    c.last_activity.load(Ordering::Relaxed),
                )
            })
            .map(|(id, _)| *id);
        match victim.and_then(|id| conns.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serve `router` on `listener` until `shutdown` completes; requests in flight then finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        conns: Mutex::new(HashMap::new()),
    });
    let stopping = Arc::new(tokio::sync::watch::Sender::new(false));
    let mut next_id: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of files or a connection reset before we took it: the next accept
                    // may work; do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if registry.len() >= limits.max_connections && !registry.evict_one() {
            tracing::debug!(%peer, "connection cap reached with every connection busy; closing the new one");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        next_id = next_id.wrapping_add(1);
        let conn = Arc::new(Conn {
            last_activity: AtomicU64::new(registry.now_ms()),
            in_flight: AtomicUsize::new(0),
            receiving: AtomicBool::new(false),
            close: Notify::new(),
        });
        registry
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(next_id, conn.clone());
        tokio::spawn(serve_connection(
            next_id,
            stream,
            peer,
            router.clone(),
            limits,
            registry.clone(),
            conn,
            stopping.subscribe(),
        ));
    }
    // No new connection: the listening socket is closed at once (connecting gets refused).
    // Requests in flight finish (each connection closes after its response; idle ones close
    // now), for at most `shutdown_grace`; every connection task holds a receiver.
    drop(listener);
    let _ = stopping.send(true);
    let open = registry.len();
    if tokio::time::timeout(limits.shutdown_grace, stopping.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = registry.len(),
            "requests still in flight after the shutdown grace period; stopping anyway"
        );
    } else {
        tracing::info!(connections = open, "connections finished after the shutdown signal");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments, reason = "one connection's whole context, passed once")]
async fn serve_connection(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    registry: Arc<Registry>,
    conn: Arc<Conn>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let io = TokioIo::new(Tracked {
        inner: stream,
        conn: conn.clone(),
        registry: registry.clone(),
    });
    let service = {
        let conn = conn.clone();
        let registry = registry.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            conn.in_flight.fetch_add(1, Ordering::Relaxed);
            let done = InFlight {
                conn: conn.clone(),
                registry: registry.clone(),
            };
            let router = router.clone();
            async move {
                let resp = match router.oneshot(req.map(axum::body::Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                // The request counts as in flight until its response body is written.
                Ok::<_, std::convert::Infallible>(resp.map(move |body| {
                    axum::body::Body::new(body.map_frame(move |f| {
                        let _ = &done;
                        f
                    }))
                }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut graceful = false;
    // When a busy connection is looked at again (a request in flight or on its way).
    let mut recheck = tokio::time::Instant::now();
    loop {
        let last = tokio::time::Instant::from_std(
            registry.epoch + Duration::from_millis(conn.last_activity.load(Ordering::Relaxed)),
        );
        let idle_deadline = (last + limits.keep_alive).max(recheck);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = conn.close.notified() => {
                tracing::debug!(%peer, "closing a connection to make room under the cap");
                break;
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                let busy = conn.in_flight.load(Ordering::Relaxed) > 0 || conn.receiving.load(Ordering::Relaxed);
                let since = tokio::time::Instant::from_std(
                    registry.epoch + Duration::from_millis(conn.last_activity.load(Ordering::Relaxed)),
                );
                if !busy && since + limits.keep_alive <= tokio::time::Instant::now() {
                    tracing::debug!(%peer, "closing an idle connection");
                    break;
                }
                if busy && since + limits.stall_timeout <= tokio::time::Instant::now() {
                    tracing::debug!(%peer, "closing a connection whose request made no progress");
                    break;
                }
                if busy {
                    // Its request is governed by the header and request timeouts, and by the
                    // stall timeout; look again a keep-alive period from now.
                    recheck = tokio::time::Instant::now() + limits.keep_alive;
                }
            }
            changed = stopping.changed(), if !graceful => {
                if changed.is_err() || *stopping.borrow() {
                    graceful = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
    registry.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
}

/// Ends a request's "in flight" when its response body is done (or dropped).
struct InFlight {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.receiving.store(false, Ordering::Relaxed);
        self.registry.touch(&self.conn);
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The TCP stream, noting when bytes come in.
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.receiving.store(true, Ordering::Relaxed);
            this.registry.touch(&this.conn);
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.registry.touch(&this.conn);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.registry.touch(&this.conn);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
