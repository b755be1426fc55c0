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
//!
//! The stamps are on the system clock (`CLOCK_REALTIME`); a record's times are monotonic. A
//! stamp is turned into the record's clock by its age when the bytes are parsed, so only a
//! step of the system clock in that instant could skew a time, and the client still keeps each
//! token between the previous one's time and the parse.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The kernel's receive time of the newest bytes of a read, in ns since the UNIX epoch; 0 when
/// the read had none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Stamp(u64);

impl Stamp {
    /// When the bytes arrived, on the caller's clock: `now` is the caller's time (ns) at this
    /// instant, and the result is `now` minus how long ago the kernel received them. `now`
    /// itself without a stamp (a platform without `SO_TIMESTAMPNS`, or a kernel that gave
    /// none).
    pub(crate) fn at(self, now: u64) -> u64 {
        if self.0 == 0 {
            return now;
        }
        now.saturating_sub(unix_ns().saturating_sub(self.0))
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A TCP connection whose reads record the kernel's receive time.
pub(crate) struct RxTcp {
    tcp: TcpStream,
    /// The last read's.
    stamp: Stamp,
    /// Room for one `SO_TIMESTAMPNS` control message.
    #[cfg(target_os = "linux")]
    cmsg: Vec<u8>,
}

impl RxTcp {
    /// Asks the kernel to stamp what `tcp` receives. If the option cannot be set, reads carry
    /// no stamp and are timed when they are parsed.
    pub(crate) fn new(tcp: TcpStream) -> Self {
        #[cfg(target_os = "linux")]
        if let Err(e) =
            nix::sys::socket::setsockopt(&tcp, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        {
            tracing::debug!(error = %e, "no kernel receive timestamps; reads are timed when parsed");
        }
        RxTcp {
            tcp,
            stamp: Stamp::default(),
            #[cfg(target_os = "linux")]
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
        }
    }

    /// The kernel's receive time of what the last read returned.
    pub(crate) fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// Whether an idle connection can no longer carry a request: the peer closed it, or sent
    /// something unasked. Costs a system call only when the socket became readable.
    pub(crate) fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        // Pending: nothing arrived, the connection is fine.
        self.tcp
            .poll_peek(&mut cx, &mut ReadBuf::new(&mut probe))
            .is_ready()
    }
}

impl AsyncRead for RxTcp {
    #[cfg(target_os = "linux")]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        let RxTcp {
            tcp,
            stamp: last,
            cmsg,
            ..
        } = self.get_mut();
        loop {
            std::task::ready!(tcp.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            let want = dst.len();
            // A read shorter than asked for emptied the socket: report it as would-block to
            // tokio, which then forgets the readiness (as its own reads do) instead of costing
            // another `recvmsg` that finds nothing. The result is kept here.
            let mut short = None;
            let read = tcp.try_io(tokio::io::Interest::READABLE, || {
                let mut iov = [io::IoSliceMut::new(dst)];
                let msg = recvmsg::<()>(tcp.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
                    .map_err(io::Error::from)?;
                let mut stamp = 0;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmTimestampns(ts) = c {
                            let ns =
                                i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec());
                            stamp = u64::try_from(ns).unwrap_or(0);
                        }
                    }
                }
                if msg.bytes > 0 && msg.bytes < want {
                    short = Some((msg.bytes, stamp));
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok((msg.bytes, stamp))
            });
            let (n, stamp) = match (read, short) {
                (_, Some(got)) | (Ok(got), None) => got,
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
            };
            // A read without a stamp clears the last one: its bytes are then timed when
            // parsed, never by an older packet's arrival.
            *last = Stamp(stamp);
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for RxTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
