//! The detector's capture socket: an `AF_PACKET` socket bound to a capture port's reader
//! end, in promiscuous mode (the mirrored frames are addressed to other MACs), with a large
//! receive buffer and a receive timeout so its thread can look up between frames.
//!
//! No crate wraps `AF_PACKET` receive sockets with what this needs (binding by index,
//! membership, `PACKET_STATISTICS`) short of a full capture library, so these few calls
//! go to libc directly.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::libc;

/// A socket that receives every frame arriving on one interface.
pub struct Capture {
    fd: OwnedFd,
}

/// `ETH_P_ALL` in network byte order, as `AF_PACKET` wants it.
fn all_protocols() -> u16 {
    (libc::ETH_P_ALL as u16).to_be()
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
}

impl Capture {
    /// Opens a capture of `iface`, a receive waiting at most `timeout`.
    pub fn open(iface: &str, timeout: Duration) -> io::Result<Capture> {
        let index = nix::net::if_::if_nametoindex(iface).map_err(io::Error::from)?;
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(all_protocols()),
            )
        };
        check(raw)?;
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all_protocols();
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a sockaddr_ll of the size passed.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        let membership = libc::packet_mreq {
            mr_ifindex: index as i32,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        set_option(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &membership,
        )?;
        let buffer: libc::c_int = 32 << 20;
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &buffer)
            .or_else(|_| set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &buffer))?;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        Ok(Capture { fd })
    }

    /// The next frame into `buf` (its length, cut to `buf`), or `None` when none came
    /// within the timeout.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some((n as usize).min(buf.len())))
    }

    /// Frames the kernel dropped since the last call because the socket's buffer was full.
    pub fn drops(&self) -> u64 {
        // SAFETY: an all-zero tpacket_stats is valid.
        let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `stats` and `len` describe a writable tpacket_stats.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return 0;
        }
        u64::from(stats.tp_drops)
    }
}
