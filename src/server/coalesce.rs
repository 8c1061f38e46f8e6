//! Fewer system calls per HTTP/2 flush; see [`CoalescingWrites`].

/// An accepted connection that gathers HTTP/2's writes into one system
/// call per flush.
///
/// h2 copies DATA frames into its 16 KiB write buffer only up to a
/// threshold (256 bytes when the socket supports vectored writes, 1 KiB
/// otherwise) and writes each larger frame with its own system call. A
/// revision fanned out to the hundred watch streams of one connection then
/// cost a hundred writes, and every resolve answer (about 1.2 KB) two.
/// This wrapper reports no vectored writes (so small frames are copied into
/// h2's buffer) and keeps what h2 writes in `pending` until h2 flushes.
///
/// h2 flushes in two places: before every frame it could not buffer (any
/// DATA frame over 1 KiB: every resolve answer) and when the connection has
/// nothing more to do. It cannot tell which, and neither can the socket;
/// but the second comes with no write since the previous flush. So a flush
/// that follows writes only wakes the connection's task and returns: the
/// task runs again after the stream tasks already queued (which hand it
/// more frames), and a flush with nothing written since goes to the socket.
/// A batch therefore covers every answer ready by then, in one `write`.
/// `PENDING_LIMIT` and `MAX_DEFERRED` bound the wait under steady load.
pub(super) struct CoalescingWrites {
    io: tokio::net::TcpStream,
    /// Written by h2, not yet by the socket. Bounded by `PENDING_LIMIT`
    /// (plus one write); released after each flush, so an idle connection
    /// holds nothing.
    pending: Vec<u8>,
    /// h2 wrote since its last flush.
    wrote: bool,
    /// Flushes put off in a row.
    deferred: u32,
    /// Whether flushes may be put off at all: not during a TLS handshake,
    /// whose peer waits for each flight before it answers.
    coalesce: bool,
}

/// Most flushes put off in a row before one goes to the socket.
const MAX_DEFERRED: u32 = 64;

/// Above this, a write goes to the socket at once instead of waiting for
/// the flush.
const PENDING_LIMIT: usize = 64 * 1024;
/// The first allocation of a batch: h2's own write buffer is 16 KiB.
const PENDING_START: usize = 16 * 1024;

impl CoalescingWrites {
    pub(super) fn new(io: tokio::net::TcpStream) -> Self {
        CoalescingWrites {
            io,
            pending: Vec::new(),
            wrote: false,
            deferred: 0,
            coalesce: true,
        }
    }

    /// Turns putting off flushes on or off.
    pub(super) fn set_coalescing(&mut self, on: bool) {
        self.coalesce = on;
    }

    pub(super) fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.io.peer_addr().ok()
    }

    /// The first bytes the peer sent, left to be read.
    pub(super) async fn peek(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.io.peek(buf).await
    }

    /// Writes out `pending`, as far as the socket takes it.
    fn poll_write_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        use tokio::io::AsyncWrite as _;
        while !self.pending.is_empty() {
            match std::pin::Pin::new(&mut self.io).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Do not keep a large buffer on an idle connection.
        self.pending = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl tonic::transport::server::Connected for CoalescingWrites {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl tokio::io::AsyncRead for CoalescingWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CoalescingWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        this.wrote = true;
        if this.pending.len() + buf.len() <= PENDING_LIMIT {
            if this.pending.capacity() == 0 {
                // One allocation per batch rather than a dozen doublings
                // (the buffer is released after every flush).
                this.pending.reserve(buf.len().max(PENDING_START));
            }
            this.pending.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // Too much to hold: what is pending goes first, then this write.
        std::task::ready!(this.poll_write_pending(cx))?;
        std::pin::Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.coalesce && this.wrote && this.deferred < MAX_DEFERRED && !this.pending.is_empty() {
            // Put off: h2 flushes again when the task runs next.
            this.wrote = false;
            this.deferred += 1;
            cx.waker().wake_by_ref();
            return std::task::Poll::Ready(Ok(()));
        }
        this.wrote = false;
        this.deferred = 0;
        std::task::ready!(this.poll_write_pending(cx))?;
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_write_pending(cx))?;
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}
