//! The worker side of the worker channel, for workers written in Rust with
//! tokio.
//!
//! A worker group in `protocol` stop mode gets one end of a socketpair from
//! corrald, its descriptor number in `CORRAL_WORKER_FD` (the same hand-over as
//! systemd's `LISTEN_FDS`). Over it the worker says when it is ready and
//! answers stop requests, so corrald knows a drain really finished instead of
//! guessing from a signal and a timeout. Pings, corrald's liveness check, are
//! answered inside [`WorkerRequests::recv`], with no code of the worker's.
//!
//! ```no_run
//! # async fn demo() -> Result<(), corral::worker::WorkerChannelError> {
//! use corral::proto::{worker_request::Command, Status};
//! use corral::worker::WorkerChannel;
//!
//! let Some(channel) = WorkerChannel::from_env()? else {
//!     return Ok(()); // signal mode: handle SIGTERM instead
//! };
//! let (mut requests, responses) = channel.split();
//! responses.ready().await?;
//! while let Some(request) = requests.recv().await? {
//!     if let Some(Command::SoftStop(_)) = request.command {
//!         responses.reply(request.id, Status::Processing, "").await?;
//!         // ... finish in-flight work ...
//!         responses.reply(request.id, Status::Ok, "").await?;
//!         std::process::exit(0);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};
use nix::sys::stat::{fstat, SFlag};
use prost::Message;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::frame;
use crate::proto::worker_request::Command;
use crate::proto::{Status, WorkerEvent, WorkerRequest, WorkerResponse};

/// Holds the descriptor number of the worker channel.
pub const ENV_FD: &str = "CORRAL_WORKER_FD";
/// Holds the name of the worker's group.
pub const ENV_GROUP: &str = "CORRAL_GROUP";
/// Holds the worker's id, `<group>-<n>`.
pub const ENV_WORKER_ID: &str = "CORRAL_WORKER_ID";

/// Why the worker channel could not be taken over or used.
#[derive(Debug, thiserror::Error)]
pub enum WorkerChannelError {
    #[error("{ENV_FD}={0:?} is not a descriptor number of 3 or more")]
    BadNumber(OsString),
    #[error("{ENV_FD}={fd} is not an open descriptor: {errno}")]
    NotOpen { fd: RawFd, errno: Errno },
    #[error("{ENV_FD}={fd} is not a unix stream socket")]
    NotUnixStream { fd: RawFd },
    #[error("{ENV_FD}={fd}: {errno}")]
    Sys { fd: RawFd, errno: Errno },
    #[error("worker channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("worker channel: undecodable request: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// The worker's end of the worker channel, before it is split into its two
/// directions.
#[derive(Debug)]
pub struct WorkerChannel {
    stream: UnixStream,
}

impl WorkerChannel {
    /// Takes over the descriptor named by `CORRAL_WORKER_FD`.
    ///
    /// `Ok(None)` means the variable is unset: the worker runs in signal mode
    /// or was started by hand, and should stop on SIGTERM instead.
    ///
    /// The variable is removed from the environment whether or not the
    /// descriptor turns out usable, like `sd_listen_fds(1)`: a second call
    /// must not build a second owner of the same descriptor, and the worker's
    /// children must not believe they have a channel. For the same reason the
    /// descriptor is marked close-on-exec. Because removing a variable races
    /// with other threads reading the environment, call this early, before
    /// starting threads of your own.
    ///
    /// Descriptors 0 to 2 are refused: corrald never hands over a standard
    /// stream, so such a value is a mistake, and owning it would close the
    /// worker's stdio when the channel is dropped.
    ///
    /// Must be called inside a tokio runtime with I/O enabled.
    pub fn from_env() -> Result<Option<Self>, WorkerChannelError> {
        let Some(value) = std::env::var_os(ENV_FD) else {
            return Ok(None);
        };
        std::env::remove_var(ENV_FD);
        let fd = value
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
            .filter(|fd| *fd >= 3)
            .ok_or(WorkerChannelError::BadNumber(value))?;
        check_unix_stream(fd)?;
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|errno| WorkerChannelError::Sys { fd, errno })?;
        // SAFETY: the descriptor is open and a socket (checked above), and the
        // environment variable that named it is gone, so nothing else in this
        // process will take ownership of it.
        let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        std_stream.set_nonblocking(true)?;
        Ok(Some(Self::from_stream(UnixStream::from_std(std_stream)?)))
    }

    /// Wraps an already connected stream, for tests that build the channel
    /// from their own socketpair.
    pub fn from_stream(stream: UnixStream) -> Self {
        Self { stream }
    }

    /// Splits the channel so requests can be awaited in one task while
    /// replies are sent from others, e.g. once in-flight work has drained.
    pub fn split(self) -> (WorkerRequests, WorkerResponder) {
        let (read, write) = self.stream.into_split();
        let codec = frame::codec(frame::MAX_WORKER_FRAME);
        let responder = WorkerResponder { frames: Arc::new(Mutex::new(FramedWrite::new(write, codec.clone()))) };
        (WorkerRequests { frames: FramedRead::new(read, codec), pongs: responder.clone() }, responder)
    }
}

/// Checks before taking ownership, so a wrong number yields an error instead
/// of closing some unrelated descriptor when the stream is dropped.
fn check_unix_stream(fd: RawFd) -> Result<(), WorkerChannelError> {
    let stat = fstat(fd).map_err(|errno| WorkerChannelError::NotOpen { fd, errno })?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(WorkerChannelError::NotUnixStream { fd });
    }
    let addr = getsockname::<SockaddrStorage>(fd).map_err(|errno| WorkerChannelError::Sys { fd, errno })?;
    // SAFETY: fstat just showed the descriptor is open, and it is only
    // borrowed for the getsockopt call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let kind = getsockopt(&borrowed, sockopt::SockType).map_err(|errno| WorkerChannelError::Sys { fd, errno })?;
    if addr.family() != Some(AddressFamily::Unix) || kind != SockType::Stream {
        return Err(WorkerChannelError::NotUnixStream { fd });
    }
    Ok(())
}

/// Requests from corrald.
#[derive(Debug)]
pub struct WorkerRequests {
    frames: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    /// Where pings are answered from.
    pongs: WorkerResponder,
}

impl WorkerRequests {
    /// The next request; `None` once corrald has closed its end (it exited or
    /// gave up on this worker).
    ///
    /// Cancel-safe, so it can sit in a `select!` loop beside the worker's own
    /// work. A frame that is too large or does not decode is an error: the
    /// two sides disagree about the protocol, and guessing would risk
    /// ignoring a stop.
    ///
    /// A `Ping` is answered here and never returned: corrald's liveness
    /// check asks only that the worker keeps reading its channel, so a
    /// worker stuck elsewhere (a deadlock, a blocked runtime) stops
    /// answering exactly when it stops calling this. Cancelled while a
    /// ping's answer is being written, no request is lost: the answer goes
    /// out with the next message or not at all, a missed ping, which
    /// corrald tolerates up to its group's `misses`.
    pub async fn recv(&mut self) -> Result<Option<WorkerRequest>, WorkerChannelError> {
        loop {
            let Some(frame) = self.frames.next().await else { return Ok(None) };
            let request = WorkerRequest::decode(frame?)?;
            if let Some(Command::Ping(_)) = request.command {
                self.pongs.reply(request.id, Status::Ok, "").await?;
                continue;
            }
            return Ok(Some(request));
        }
    }
}

/// Sends responses to corrald. Cheap to clone; each message goes out whole
/// even when several clones send at once.
#[derive(Debug, Clone)]
pub struct WorkerResponder {
    frames: Arc<Mutex<FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>>>,
}

impl WorkerResponder {
    /// Tells corrald the worker can serve; until then corrald counts it as
    /// starting, and rolling restarts wait for it.
    pub async fn ready(&self) -> Result<(), WorkerChannelError> {
        self.send(&WorkerResponse { id: 0, event: WorkerEvent::Ready.into(), ..Default::default() }).await
    }

    /// Answers request `id`. Send `Processing` at once to acknowledge a
    /// request that takes time, then exactly one `Ok` or `Failure`.
    pub async fn reply(&self, id: u64, status: Status, message: impl Into<String>) -> Result<(), WorkerChannelError> {
        self.send(&WorkerResponse { id, status: status.into(), message: message.into(), ..Default::default() }).await
    }

    /// Sends any response, flushing it before returning so a worker that
    /// exits right after still gets its answer out.
    pub async fn send(&self, response: &WorkerResponse) -> Result<(), WorkerChannelError> {
        self.frames.lock().await.send(frame::encode(response)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::worker_request;

    #[tokio::test]
    async fn pings_are_answered_inside_recv_and_other_requests_returned() {
        let (corrald, worker) = UnixStream::pair().expect("a socketpair");
        let (mut requests, _responder) = WorkerChannel::from_stream(worker).split();
        let codec = frame::codec(frame::MAX_WORKER_FRAME);
        let (read, write) = corrald.into_split();
        let mut to_worker = FramedWrite::new(write, codec.clone());
        let mut from_worker = FramedRead::new(read, codec);
        let ping = WorkerRequest { id: 7, command: Some(worker_request::Command::Ping(crate::proto::Ping {})) };
        let stop = WorkerRequest { id: 8, command: Some(worker_request::Command::SoftStop(crate::proto::SoftStop {})) };
        to_worker.send(frame::encode(&ping)).await.expect("send a ping");
        to_worker.send(frame::encode(&stop)).await.expect("send a stop");

        let got = requests.recv().await.expect("a request").expect("not closed");
        assert_eq!(got, stop, "the ping is not handed to the worker");
        let answer = from_worker.next().await.expect("an answer").expect("a frame");
        let answer = WorkerResponse::decode(answer).expect("a response");
        assert_eq!((answer.id, answer.status()), (7, Status::Ok));
    }
}
