//! The echo service of `--serve`: one tokio task per stream, at most `max` at once.

use std::io;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// Echoes every stream accepted on `l` (bytes back until the client half-closes, then
/// half-close) until the node shuts down. Beyond `max` streams at once, new ones wait
/// in the listener's backlog.
pub async fn serve(l: astranet::AsyncListener, max: usize) -> io::Result<()> {
    if max == 0 || max > Semaphore::MAX_PERMITS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--max-streams must be at least 1",
        ));
    }
    let sem = Arc::new(Semaphore::new(max));
    loop {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let s = match l.accept().await {
            Ok(s) => s,
            // The node shut down.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => return Ok(()),
            Err(e) => return Err(e),
        };
        tokio::spawn(async move {
            let _permit = permit;
            let (mut r, mut w) = tokio::io::split(astranet::TokioStream::new(s));
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}
