//! The crate's one error type.

/// Everything that can go wrong while encoding, decoding, framing, signing or verifying.
///
/// [`Error::is_misbehaviour`] tells the transport what to do with an error that a peer caused:
/// `true` means the peer sent something no honest, correctly working peer sends (an oversize or
/// undecodable frame, a bad signature, a malformed batch, a list beyond its limit), so the
/// connection should be closed and the peer scored down. `false` means the error is benign or
/// local: an unknown message tag from a newer protocol version (ignore the frame), or an I/O,
/// key-file or encoding problem on this side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame's length prefix announced more than the codec's maximum; nothing was allocated.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The length the prefix announced.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The payload is not a valid postcard encoding of a known message.
    #[error("undecodable message: {0}")]
    Decode(#[source] postcard::Error),
    /// The payload decoded, but bytes were left over after the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The message tag is beyond the variants this version knows (a newer peer sent it).
    #[error("unknown message tag {tag}")]
    UnknownMessage {
        /// The tag read from the start of the payload.
        tag: u32,
    },
    /// A decoded list or string is longer than its protocol limit.
    #[error("{what} has {len} entries or bytes, more than the limit of {max}")]
    LimitExceeded {
        /// Which field broke its limit.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message is well formed but violates a protocol rule.
    #[error("invalid message: {0}")]
    InvalidMessage(&'static str),
    /// An ed25519 signature does not verify, or the claimed key is not a valid public key.
    #[error("bad signature")]
    BadSignature,
    /// A batch of events breaks a structural rule (empty, mixed origins, gaps in `seq`, ...).
    #[error("invalid batch: {0}")]
    InvalidBatch(&'static str),
    /// Signing was asked for events whose origin is not the signing identity.
    #[error("events originate from {origin}, not from the signing identity {signer}")]
    WrongSigner {
        /// The origin the events claim.
        origin: crate::NodeId,
        /// The identity asked to sign them.
        signer: crate::NodeId,
    },
    /// A message could not be encoded (never caused by a peer).
    #[error("cannot encode message: {0}")]
    Encode(#[source] postcard::Error),
    /// Reading or writing a socket or the key file failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The key file exists but does not hold a usable key, or the system RNG failed.
    #[error("identity key: {0}")]
    Key(String),
    /// A node id string is not 64 hexadecimal digits.
    #[error("invalid node id: {0}")]
    ParseNodeId(&'static str),
}

impl Error {
    /// Whether the peer that caused this error misbehaved and should be disconnected.
    ///
    /// See the type's documentation for the split.
    pub fn is_misbehaviour(&self) -> bool {
        match self {
            Error::FrameTooLarge { .. }
            | Error::Decode(_)
            | Error::TrailingBytes(_)
            | Error::LimitExceeded { .. }
            | Error::InvalidMessage(_)
            | Error::BadSignature
            | Error::InvalidBatch(_) => true,
            Error::UnknownMessage { .. }
            | Error::WrongSigner { .. }
            | Error::Encode(_)
            | Error::Io(_)
            | Error::Key(_)
            | Error::ParseNodeId(_) => false,
        }
    }
}
