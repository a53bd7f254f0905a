//! Kernel receive timestamps (SO_TIMESTAMPNS), so the test DNS server's "held"
//! time starts when a query reached its socket rather than when its thread
//! next ran: on a busy 2-CPU machine that wakeup can take milliseconds, which
//! the client does wait for and the agent does measure.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::RawFd,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Result};

pub fn enable(fd: RawFd) -> Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to an int we own and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), 0, a.sin6_scope_id)))
        }
        _ => None,
    }
}

/// One recvmsg: bytes read, the sender (datagram sockets), and when the
/// kernel received the data (None when the socket gave no timestamp).
pub fn recv(fd: RawFd, buf: &mut [u8]) -> Result<(usize, Option<SocketAddr>, Option<SystemTime>)> {
    // SAFETY: every pointer handed to recvmsg points into locals that outlive
    // the call, with their true sizes; the cmsg walk stays within `control`.
    unsafe {
        let mut from: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            bail!("recvmsg: {}", std::io::Error::last_os_error());
        }
        let mut at = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                at = Some(SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let from = if msg.msg_namelen > 0 { addr(&from) } else { None };
        Ok((n as usize, from, at))
    }
}

/// Fills `buf` from a stream; returns when the last byte arrived (None at
/// EOF before `buf` was full).
pub fn read_exact(fd: RawFd, buf: &mut [u8]) -> Result<Option<Option<SystemTime>>> {
    let mut got = 0;
    let mut last = None;
    while got < buf.len() {
        let (n, _, at) = recv(fd, &mut buf[got..])?;
        if n == 0 {
            return Ok(None);
        }
        got += n;
        last = at.or(last);
    }
    Ok(Some(last))
}

/// Time since `rx` (the kernel's receive time), or since `fallback` without one.
pub fn since(rx: Option<SystemTime>, fallback: std::time::Instant) -> Duration {
    match rx {
        Some(t) => SystemTime::now().duration_since(t).unwrap_or_default(),
        None => fallback.elapsed(),
    }
}
