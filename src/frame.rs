//! Length-prefixed protobuf frames, shared by the command socket and the
//! worker channel: a 4-byte big-endian length, then the message.

use bytes::Bytes;
use prost::Message;
use tokio_util::codec::LengthDelimitedCodec;

/// The largest frame corrald accepts on the command socket by default. Requests
/// are small; this bounds what a confused or hostile client can make us buffer.
pub const MAX_COMMAND_FRAME: usize = 1024 * 1024;

/// The largest frame on a worker channel.
pub const MAX_WORKER_FRAME: usize = 64 * 1024;

/// A codec for frames of at most `max_len` bytes.
pub fn codec(max_len: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(4).big_endian().max_frame_length(max_len).new_codec()
}

/// Encodes a message into a frame body (the codec adds the length).
pub fn encode<M: Message>(msg: &M) -> Bytes {
    Bytes::from(msg.encode_to_vec())
}

/// Encodes a message as a whole frame, length included, for a writer that
/// sends one frame now and then and keeps no codec buffer meanwhile.
pub fn encode_with_length<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut frame).expect("a Vec grows as needed");
    frame
}
