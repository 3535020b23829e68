//! [`FileBody`]: a response body that reads a file chunk by chunk, only when polled.
//!
//! Why: memory per connection must be bounded (DESIGN property 8). A body that read its file
//! whole, or read ahead into a queue, holds megabytes for a client that does not read (or an
//! HTTP/2 stream whose window is shut); this one holds at most one [`CHUNK`] in flight, and hyper
//! asks for the next only when the previous one has left its buffers. Each chunk is one
//! positioned read (`pread`) on the blocking pool, so a slow disk never stalls the runtime.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

/// The most a file body reads at once.
pub(crate) const CHUNK: usize = 64 << 10;

/// `len` bytes of a file from its start, read one [`CHUNK`] at a time as the body is polled.
#[derive(Debug)]
pub(crate) struct FileBody {
    file: Arc<File>,
    /// Where the next read starts.
    offset: u64,
    /// Bytes still to send (the body's remaining length).
    left: u64,
    /// The read under way.
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    /// For the log, if a read fails.
    path: Arc<Path>,
}

impl FileBody {
    /// The first `len` bytes of `file`. A file that turns out shorter (truncated meanwhile)
    /// ends the body early, and hyper then cuts the connection: the client sees a short body
    /// rather than wrong bytes.
    pub(crate) fn new(file: File, len: u64, path: Arc<Path>) -> FileBody {
        FileBody {
            file: Arc::new(file),
            offset: 0,
            left: len,
            reading: None,
            path,
        }
    }
}

/// Read up to `want` bytes at `offset`.
fn read_chunk(file: &File, offset: u64, want: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(want);
    let n = loop {
        match file.read_at(&mut buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    buf.truncate(n);
    Ok(buf.freeze())
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(h) = &mut this.reading {
                let r = ready!(Pin::new(h).poll(cx));
                this.reading = None;
                match r {
                    Ok(Ok(b)) if !b.is_empty() => {
                        let n = (b.len() as u64).min(this.left);
                        this.left -= n;
                        this.offset += n;
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(path = %this.path.display(), error = %e, "static: read failed")
                    }
                    Err(e) => {
                        tracing::warn!(path = %this.path.display(), error = %e, "static: read task failed")
                    }
                }
                // Short or failed: end the body here (hyper cuts a body shorter than its length).
                this.left = 0;
                return Poll::Ready(None);
            }
            if this.left == 0 {
                return Poll::Ready(None);
            }
            let want = usize::try_from(this.left).map_or(CHUNK, |l| l.min(CHUNK));
            let (file, offset) = (this.file.clone(), this.offset);
            this.reading = Some(tokio::task::spawn_blocking(move || {
                read_chunk(&file, offset, want)
            }));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && self.reading.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn reads_the_file_in_chunks_on_demand() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let data: Vec<u8> = (0..CHUNK * 2 + 77).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut body = FileBody::new(
            File::open(&path).unwrap(),
            data.len() as u64,
            path.clone().into(),
        );
        assert!(
            body.reading.is_none(),
            "nothing is read before the first poll"
        );
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(f) = body.frame().await {
            let d = f.unwrap().into_data().unwrap();
            assert!(d.len() <= CHUNK);
            got.extend_from_slice(&d);
            chunks += 1;
        }
        assert_eq!(got, data);
        assert_eq!(chunks, 3);
        assert!(http_body::Body::is_end_stream(&body));
    }

    #[tokio::test]
    async fn a_file_shorter_than_announced_ends_early() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"short").unwrap();
        let body = FileBody::new(File::open(&path).unwrap(), 1000, path.clone().into());
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"short");
    }
}
