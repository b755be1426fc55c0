//! Kernel receive timestamps: when the newest bytes of each read reached the socket.
//!
//! A client that is busy with other streams, or whose core is taken by another process, reads
//! a token some time after it arrived. Timing the read would add that wait to TTFT and ITL.
//! With `SO_TIMESTAMPNS` the kernel stamps every packet as it is received (on loopback, in
//! the sender's transmit path) and `recvmsg` returns the stamp of the newest packet a read
//! consumed, so the measurement no longer depends on when the client got to the socket.
//!
//! The kernel merges packets that queue up unread into one, keeping the newest stamp; when
//! a read finds several tokens waiting, all of them get the newest one's arrival. That is
//! never earlier than the truth and never later than the read.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The kernel's receive time of the newest bytes read on one connection, shared between the
/// stream (which writes it) and the request that parses what was read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Arrival(Arc<AtomicU64>);

impl Arrival {
    /// When the bytes read last arrived, on the caller's clock: `now` is the caller's time
    /// (ns) at this instant, and the result is `now` minus how long ago the kernel received
    /// them. `now` itself when the last read had no stamp (a platform without
    /// `SO_TIMESTAMPNS`, or a kernel that gave none).
    pub(crate) fn at(&self, now: u64) -> u64 {
        let stamp = self.0.load(Ordering::Relaxed);
        if stamp == 0 {
            return now;
        }
        now.saturating_sub(unix_ns().saturating_sub(stamp))
    }

    fn set(&self, unix_ns: u64) {
        self.0.store(unix_ns, Ordering::Relaxed);
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A TCP connection whose reads record the kernel's receive time in an [`Arrival`].
pub(crate) struct RxStream {
    io: TokioIo<TcpStream>,
    arrival: Arrival,
    /// Room for one `SO_TIMESTAMPNS` control message.
    #[cfg(target_os = "linux")]
    cmsg: Vec<u8>,
}

impl RxStream {
    /// Asks the kernel to stamp what `tcp` receives. If the option cannot be set, reads carry
    /// no stamp and are timed when they happen.
    fn new(io: TokioIo<TcpStream>) -> Self {
        #[cfg(target_os = "linux")]
        if let Err(e) = nix::sys::socket::setsockopt(
            io.inner(),
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        ) {
            tracing::debug!(error = %e, "no kernel receive timestamps; reads are timed in user space");
        }
        RxStream {
            io,
            arrival: Arrival::default(),
            #[cfg(target_os = "linux")]
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
        }
    }

    /// The handle through which requests on this connection see arrival times.
    pub(crate) fn arrival(&self) -> Arrival {
        self.arrival.clone()
    }
}

#[cfg(target_os = "linux")]
thread_local! {
    /// Where reads land before they are copied into hyper's buffer: hyper hands out
    /// uninitialised memory, which safe code cannot pass to `recvmsg`. One per thread, since a
    /// read finishes within one poll, so per-connection memory stays small.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

impl Read for RxStream {
    #[cfg(target_os = "linux")]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        let this = self.get_mut();
        let tcp = this.io.inner();
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            let got = SCRATCH.with_borrow_mut(|scratch| {
                let want = buf.remaining().min(scratch.len());
                // A read shorter than asked for emptied the socket: report it as would-block
                // to tokio, which then forgets the readiness (as its own reads do) instead of
                // costing another `recvmsg` that finds nothing. The bytes are kept here.
                let mut short = None;
                let read = tcp.try_io(tokio::io::Interest::READABLE, || {
                    let mut iov = [io::IoSliceMut::new(&mut scratch[..want])];
                    let msg = recvmsg::<()>(
                        tcp.as_raw_fd(),
                        &mut iov,
                        Some(&mut this.cmsg),
                        MsgFlags::empty(),
                    )
                    .map_err(io::Error::from)?;
                    let mut stamp = None;
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                                let ns = i128::from(ts.tv_sec()) * 1_000_000_000
                                    + i128::from(ts.tv_nsec());
                                stamp = u64::try_from(ns).ok().filter(|&n| n > 0);
                            }
                        }
                    }
                    if msg.bytes > 0 && msg.bytes < want {
                        short = Some((msg.bytes, stamp));
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok((msg.bytes, stamp))
                });
                let read = match (read, short) {
                    (Err(_), Some(got)) => Ok(got),
                    (read, _) => read,
                };
                read.map(|(n, stamp)| {
                    buf.put_slice(&scratch[..n]);
                    (n, stamp)
                })
            });
            match got {
                Ok((_, stamp)) => {
                    // A read without a stamp clears the last one: its bytes are then timed
                    // when parsed, never by an older packet's arrival.
                    this.arrival.set(stamp.unwrap_or(0));
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for RxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connection for RxStream {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// hyper-util's TCP connector, with each connection wrapped in an [`RxStream`].
#[derive(Clone)]
pub(crate) struct RxConnector(pub(crate) HttpConnector);

type Connecting =
    Pin<Box<dyn std::future::Future<Output = Result<RxStream, io::Error>> + Send + 'static>>;

impl tower_service::Service<http::Uri> for RxConnector {
    type Response = RxStream;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Uri>::poll_ready(&mut self.0, cx).map_err(io::Error::other)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = tower_service::Service::call(&mut self.0, uri);
        Box::pin(async move {
            let io = connecting.await.map_err(io::Error::other)?;
            Ok(RxStream::new(io))
        })
    }
}
