//! The word between two generations at a handoff, without the supervisor in between: the new
//! generation, once it has reported `ready` (its accept loops run), writes one byte to a pipe
//! ([`announce`]); the old one, which holds the read end ([`Watch`]), stops accepting when it
//! reads it. Connections then wait in the listen queue, which both share, for the new one: none
//! is refused, and none goes to the old generation in the moment its `drain` takes to come
//! through the supervisor.
//!
//! The supervisor makes the pipe when it starts a standby: the write end is inherited by the
//! standby (`APPHOST_ACCEPTING_FD`), the read end sent to the serving worker (`watch_successor`).
//! The new generation keeps the write end open for its whole life, so the pipe closes only when
//! that process is gone: if it closes while the old generation has not been told to drain (the
//! supervisor did not take the new one's `ready`, or it died), the old one accepts again.
//! Without a pipe (an older supervisor or worker on either side), the `drain` alone stops the
//! old generation, as before.

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;

/// What the pipe said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Said {
    /// The next generation is ready and accepting: stop accepting.
    Accepting,
    /// The pipe closed: that generation is gone; accept again.
    Gone,
}

/// The read end, watched by the serving generation.
#[derive(Debug)]
pub(super) struct Watch {
    fd: AsyncFd<OwnedFd>,
}

impl Watch {
    /// Watch `fd` (must be called inside the runtime).
    pub(super) fn new(fd: OwnedFd) -> std::io::Result<Watch> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Watch {
            fd: crate::sys::async_fd(fd)?,
        })
    }

    /// The next word on the pipe; never resolves without a watch.
    pub(super) async fn next(watch: Option<&Watch>) -> Said {
        let Some(w) = watch else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut guard) = w.fd.readable().await else {
                return Said::Gone;
            };
            let mut buf = [0u8; 8];
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut buf)?)) {
                Ok(Ok(0)) | Ok(Err(_)) => return Said::Gone,
                Ok(Ok(_)) => return Said::Accepting,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Tell the previous generation this one is accepting (one byte). `fd` must then stay open as
/// long as this process serves: its closing says the generation is gone.
pub(super) fn announce(fd: &OwnedFd) {
    if let Err(e) = rustix::io::write(fd, b"1") {
        // The old generation still stops at its `drain`.
        tracing::debug!("cannot tell the previous generation: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pipe_says_accepting_then_gone_when_its_writer_closes() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let watch = Watch::new(r).unwrap();
        announce(&w);
        assert_eq!(Watch::next(Some(&watch)).await, Said::Accepting);
        drop(w);
        assert_eq!(Watch::next(Some(&watch)).await, Said::Gone);
    }

    /// What the pipe leads to: a paused generation leaves new connections in the listen queue
    /// (none refused) and takes them when it resumes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_generation_leaves_connections_queued_and_takes_them_when_it_resumes() {
        use crate::serve::{self, Endpoint, Serving};
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let listener = serve::listen::adopt(OwnedFd::from(l))
            .unwrap()
            .into_tokio()
            .unwrap();
        let limits = serve::watchdog::Limits::all(Duration::from_secs(5));
        let serving = Serving::new(limits, 100, None);
        let endpoint = Endpoint {
            key: addr.to_string(),
            routes: std::sync::Arc::new(crate::routes::RouteTable::new()),
            tls: None,
            observer: None,
            proxy_protocol: false,
            limit: None,
        };
        serving.pause_accepting();
        tokio::spawn(serve::accept_loop(listener, endpoint, serving.clone()));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let waited =
            tokio::time::timeout(Duration::from_millis(300), c.read_to_end(&mut buf)).await;
        assert!(waited.is_err(), "answered while paused: {buf:?}");
        serving.resume_accepting();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
            .await
            .expect("an answer once resumed")
            .unwrap();
        let head = String::from_utf8_lossy(&buf);
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    }

    #[tokio::test]
    async fn a_writer_that_goes_without_a_word_is_gone() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let watch = Watch::new(r).unwrap();
        drop(w);
        assert_eq!(Watch::next(Some(&watch)).await, Said::Gone);
    }
}
