//! Raw frames on the command socket, for clients that misbehave.

use std::io;

use corral::proto;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use super::PATIENCE;

/// Reads one length-prefixed frame; `Ok(None)` on a clean EOF before any
/// byte of a frame.
pub async fn read_frame_raw(s: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = s.read(&mut len[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside a length prefix"));
        }
        got += n;
    }
    let n = u32::from_be_bytes(len) as usize;
    assert!(n <= 16 * 1024 * 1024, "corrald sent a frame of {n} bytes");
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Reads one frame within the test's patience.
pub async fn read_frame(s: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    tokio::time::timeout(PATIENCE, read_frame_raw(s))
        .await
        .expect("corrald sent nothing and did not close the connection in time")
}

pub async fn read_response(s: &mut tokio::net::UnixStream, what: &str) -> proto::Response {
    let body = read_frame(s)
        .await
        .unwrap_or_else(|e| panic!("{what}: reading a response failed: {e}"))
        .unwrap_or_else(|| panic!("{what}: EOF instead of a response"));
    proto::Response::decode(body.as_slice()).unwrap_or_else(|e| panic!("{what}: undecodable response: {e}"))
}

/// Asserts that corrald closed the connection: a clean EOF and no further frame.
pub async fn expect_eof(s: &mut tokio::net::UnixStream, what: &str) {
    match read_frame(s).await {
        Ok(None) => {}
        Ok(Some(body)) => {
            panic!("{what}: expected EOF, got another frame: {:?}", proto::Response::decode(body.as_slice()))
        }
        Err(e) => panic!("{what}: expected a clean EOF, got {e}"),
    }
}

pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}
