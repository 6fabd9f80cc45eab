//! Length-delimited framing of [`Message`]s for tokio streams.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::Error;
use crate::limits::MAX_FRAME_LEN;
use crate::message::{Message, decode, encode_into};

/// The length of the frame prefix: a big-endian `u32` payload length.
const PREFIX_LEN: usize = 4;

/// A [`Decoder`] and [`Encoder`] of [`Message`]s in frames of a big-endian `u32` length followed
/// by the postcard payload (the layout of tokio-util's `LengthDelimitedCodec` defaults).
///
/// The decoder reads the length first and refuses a frame longer than the codec's maximum with
/// [`Error::FrameTooLarge`] *before* allocating or buffering anything for it; the buffer only
/// ever grows with bytes that actually arrived.
///
/// A frame whose message tag is unknown (a newer peer's message) is consumed and skipped, and
/// counted in [`Codec::skipped_unknown`]: it is not returned as an error, because a tokio-util
/// `FramedRead` ends the stream after any decoder error. Every error the decoder does return
/// leaves the stream out of sync, so the connection should be closed; see
/// [`Error::is_misbehaviour`].
#[derive(Clone, Debug)]
pub struct Codec {
    max_frame_len: usize,
    skipped_unknown: u64,
}

impl Default for Codec {
    fn default() -> Codec {
        Codec::new(MAX_FRAME_LEN)
    }
}

impl Codec {
    /// A codec that refuses frames with payloads longer than `max_frame_len` bytes (in both
    /// directions). Values above `u32::MAX` are treated as `u32::MAX`.
    pub fn new(max_frame_len: usize) -> Codec {
        Codec {
            max_frame_len: max_frame_len.min(u32::MAX as usize),
            skipped_unknown: 0,
        }
    }

    /// The largest payload this codec accepts or produces.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// How many frames with an unknown message tag the decoder has skipped.
    pub fn skipped_unknown(&self) -> u64 {
        self.skipped_unknown
    }

    /// Encodes `message` once into a complete frame (prefix included) that can be written to
    /// any number of peers, through `Encoder<Bytes>` or straight to a socket.
    ///
    /// Refuses payloads above [`MAX_FRAME_LEN`] with [`Error::FrameTooLarge`].
    pub fn encode_frame(message: &Message) -> Result<Bytes, Error> {
        frame(message, MAX_FRAME_LEN).map(Bytes::from)
    }
}

/// Encodes `message` into prefix + payload, checking the payload against `max`.
fn frame(message: &Message, max: usize) -> Result<Vec<u8>, Error> {
    let mut buf = encode_into(message, vec![0; PREFIX_LEN])?;
    let len = buf.len() - PREFIX_LEN;
    if len > max {
        return Err(Error::FrameTooLarge { len, max });
    }
    // `max` never exceeds `u32::MAX` (see `Codec::new` and `MAX_FRAME_LEN`).
    let prefix = u32::try_from(len).map_err(|_| Error::FrameTooLarge { len, max })?;
    buf[..PREFIX_LEN].copy_from_slice(&prefix.to_be_bytes());
    Ok(buf)
}

impl Decoder for Codec {
    type Item = Message;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
        loop {
            let Some(prefix) = src.get(..PREFIX_LEN) else {
                return Ok(None);
            };
            let mut raw = [0u8; PREFIX_LEN];
            raw.copy_from_slice(prefix);
            let len = u32::from_be_bytes(raw) as usize;
            if len > self.max_frame_len {
                return Err(Error::FrameTooLarge {
                    len,
                    max: self.max_frame_len,
                });
            }
            if src.len() - PREFIX_LEN < len {
                // Deliberately no `reserve(len)`: a peer's claim alone never allocates.
                return Ok(None);
            }
            src.advance(PREFIX_LEN);
            let payload = src.split_to(len);
            match decode(&payload) {
                Err(Error::UnknownMessage { .. }) => self.skipped_unknown += 1,
                result => return result.map(Some),
            }
        }
    }
}

impl Encoder<&Message> for Codec {
    type Error = Error;

    fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(&frame(message, self.max_frame_len)?);
        Ok(())
    }
}

impl Encoder<Message> for Codec {
    type Error = Error;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode(&message, dst)
    }
}

/// Writes a complete frame made by [`Codec::encode_frame`] as it is.
///
/// Checks that the bytes are one frame (a prefix matching the length) within this codec's
/// maximum; anything else is [`Error::InvalidMessage`] or [`Error::FrameTooLarge`].
impl Encoder<Bytes> for Codec {
    type Error = Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), Error> {
        let Some(prefix) = frame.get(..PREFIX_LEN) else {
            return Err(Error::InvalidMessage(
                "not a frame: shorter than its prefix",
            ));
        };
        let mut raw = [0u8; PREFIX_LEN];
        raw.copy_from_slice(prefix);
        let len = frame.len() - PREFIX_LEN;
        if u32::from_be_bytes(raw) as usize != len {
            return Err(Error::InvalidMessage(
                "not a frame: prefix does not match length",
            ));
        }
        if len > self.max_frame_len {
            return Err(Error::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        dst.put(frame);
        Ok(())
    }
}
