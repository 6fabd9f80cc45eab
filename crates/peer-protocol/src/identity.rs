//! Node identity: ed25519 keys, node ids, signatures and the transcripts each side signs.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::Error;

/// The length of a secret key file in bytes.
const SECRET_LEN: usize = 32;

/// A node's identity on the network: the 32 bytes of its ed25519 public key.
///
/// Ordered and hashed by its bytes, so every node sorts node ids the same way (the total order
/// of events breaks `lamport` ties by origin). `Display` and `FromStr` use 64 lowercase hex
/// digits; serde uses that hex string in human-readable formats (JSON) and the raw 32 bytes in
/// binary ones (postcard).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Wraps public key bytes. The bytes are not checked to be a valid curve point here;
    /// [`verify`] rejects signatures for ids that are not.
    pub const fn from_bytes(bytes: [u8; 32]) -> NodeId {
        NodeId(bytes)
    }

    /// The public key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex digits, for log lines.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", hex(&self.0))
    }
}

impl FromStr for NodeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<NodeId, Error> {
        parse_hex::<32>(s).map(NodeId)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NodeId, D::Error> {
        if deserializer.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            s.parse().map_err(de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(deserializer).map(NodeId)
        }
    }
}

/// An ed25519 signature (64 bytes).
///
/// Serde writes it as a byte string in binary formats and as 128 hex digits in human-readable
/// ones.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Wraps signature bytes (not checked until [`verify`]).
    pub const fn from_bytes(bytes: [u8; 64]) -> Signature {
        Signature(bytes)
    }

    /// The signature bytes.
    pub const fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex(&self.0[..8]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&hex(&self.0))
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Signature, D::Error> {
        struct SigVisitor;

        impl<'de> Visitor<'de> for SigVisitor {
            type Value = Signature;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes or 128 hex digits")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                <[u8; 64]>::try_from(v)
                    .map(Signature)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Signature, E> {
                parse_hex::<64>(v).map(Signature).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Signature, A::Error> {
                let mut out = [0u8; 64];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(de::Error::invalid_length(65, &self));
                }
                Ok(Signature(out))
            }
        }

        if deserializer.is_human_readable() {
            deserializer.deserialize_str(SigVisitor)
        } else {
            deserializer.deserialize_bytes(SigVisitor)
        }
    }
}

/// This node's ed25519 signing key.
///
/// `Debug` prints only the node id: the secret never reaches a log line, and the key is
/// zeroized when dropped. Share one identity between tasks with an `Arc` rather than clones.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    node_id: NodeId,
}

impl Identity {
    /// A fresh key from the operating system's random number generator.
    ///
    /// # Panics
    /// If the operating system cannot provide randomness at all (see [`Identity::try_generate`]
    /// for the fallible version).
    pub fn generate() -> Identity {
        match Identity::try_generate() {
            Ok(identity) => identity,
            Err(e) => panic!("the system random number generator failed: {e}"),
        }
    }

    /// A fresh key from the operating system's random number generator, or
    /// [`Error::Key`] if the generator is unavailable.
    pub fn try_generate() -> Result<Identity, Error> {
        let mut secret = [0u8; SECRET_LEN];
        getrandom::fill(&mut secret).map_err(|e| Error::Key(format!("system rng: {e}")))?;
        Ok(Identity::from_secret_bytes(&secret))
    }

    /// The identity whose 32-byte ed25519 secret key is `secret` (deterministic; for tests and
    /// key files).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Identity {
        let key = SigningKey::from_bytes(secret);
        let node_id = NodeId(key.verifying_key().to_bytes());
        Identity { key, node_id }
    }

    /// Loads the raw 32-byte secret key stored at `path`, or creates one there if the file does
    /// not exist.
    ///
    /// A new file is written in full to a temporary file with mode `0600`, synced, and then
    /// linked into place without replacing anything, so a crash never leaves a truncated key and
    /// two processes racing on one path end up with the same identity. Missing parent
    /// directories are created. A file of any size other than 32 bytes is [`Error::Key`].
    pub fn load_or_create(path: &Path) -> Result<Identity, Error> {
        match Identity::load(path) {
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let identity = Identity::try_generate()?;
        let tmp = temp_path(path);
        let result = write_new_key(&tmp, &identity.key.to_bytes()).and_then(|()| {
            // A hard link fails if `path` already exists: another process won the race, and
            // its key (loaded below) is the one to use.
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e.into()),
            }
        });
        let _ = std::fs::remove_file(&tmp);
        if result? {
            sync_parent(path)?;
            Ok(identity)
        } else {
            Identity::load(path)
        }
    }

    /// Loads the raw 32-byte secret key stored at `path`.
    pub fn load(path: &Path) -> Result<Identity, Error> {
        let file = std::fs::File::open(path)?;
        let mut secret = Vec::with_capacity(SECRET_LEN);
        // Read at most one byte more than a key, whatever the file's size.
        file.take(SECRET_LEN as u64 + 1).read_to_end(&mut secret)?;
        let secret: [u8; SECRET_LEN] = secret.as_slice().try_into().map_err(|_| {
            Error::Key(format!(
                "{} does not hold a 32-byte ed25519 secret key",
                path.display()
            ))
        })?;
        Ok(Identity::from_secret_bytes(&secret))
    }

    /// This identity's node id (its public key).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Signs `msg`. Use a domain-separated transcript (such as [`handshake_transcript`]) rather
    /// than raw data, so a signature made for one purpose never verifies for another.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.key.sign(msg).to_bytes())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Checks that `sig` is `node_id`'s signature of `msg`.
///
/// Strict verification: non-canonical signatures and weak (small-order) keys are rejected, so a
/// valid signature cannot be altered into another valid one. Any failure, including a node id
/// that is not a valid public key, is [`Error::BadSignature`].
pub fn verify(node_id: &NodeId, msg: &[u8], sig: &Signature) -> Result<(), Error> {
    let key = VerifyingKey::from_bytes(node_id.as_bytes()).map_err(|_| Error::BadSignature)?;
    let sig = ed25519_dalek::Signature::from_bytes(sig.as_bytes());
    key.verify_strict(msg, &sig)
        .map_err(|_| Error::BadSignature)
}

/// The bytes `signer` signs in the handshake to prove it holds the key of the node id it claims
/// on this connection: a domain tag, the network id, the signer's id and the nonce the *other*
/// side sent in its `Hello`. A fresh nonce per connection makes the proof unusable on any other
/// connection or network.
pub fn handshake_transcript(network_id: &str, signer: &NodeId, peer_nonce: &[u8; 32]) -> Vec<u8> {
    let mut out = transcript(b"p2p-exchange/handshake/v1", network_id);
    out.extend_from_slice(signer.as_bytes());
    out.extend_from_slice(peer_nonce);
    out
}

/// The bytes a newcomer signs in a `JoinRequest` to ask a member of `network_id` to admit it.
pub fn join_transcript(network_id: &str, node_id: &NodeId) -> Vec<u8> {
    let mut out = transcript(b"p2p-exchange/join/v1", network_id);
    out.extend_from_slice(node_id.as_bytes());
    out
}

/// The bytes a member whose own incarnation is `voter_epoch` signs to vote, in voting `round`,
/// for evicting `target`'s incarnation `epoch`, fixing the target's last valid event at
/// `last_seq`. The voter is the key that signs, so it is not part of the bytes.
pub fn vote_transcript(
    network_id: &str,
    voter_epoch: u64,
    target: &NodeId,
    epoch: u64,
    round: u32,
    last_seq: u64,
) -> Vec<u8> {
    let mut out = transcript(b"p2p-exchange/evict-vote/v2", network_id);
    out.extend_from_slice(&voter_epoch.to_be_bytes());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&round.to_be_bytes());
    out.extend_from_slice(&last_seq.to_be_bytes());
    out
}

/// A domain tag, a zero byte, then the length-prefixed network id: unambiguous for any input.
fn transcript(domain: &[u8], network_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + 9 + network_id.len() + 80);
    out.extend_from_slice(domain);
    out.push(0);
    out.extend_from_slice(&(network_id.len() as u64).to_be_bytes());
    out.extend_from_slice(network_id.as_bytes());
    out
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

fn write_new_key(tmp: &Path, secret: &[u8; 32]) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(tmp)?;
    file.write_all(secret)?;
    file.sync_all()?;
    Ok(())
}

fn sync_parent(path: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    if let Some(parent) = path.parent() {
        let dir = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], Error> {
    let digits = s.as_bytes();
    if digits.len() != N * 2 {
        return Err(Error::ParseNodeId("wrong number of hex digits"));
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = hex_value(pair[0]).ok_or(Error::ParseNodeId("not a hex digit"))?;
        let lo = hex_value(pair[1]).ok_or(Error::ParseNodeId("not a hex digit"))?;
        *byte = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_display_parse_and_short() {
        let id = Identity::from_secret_bytes(&[7; 32]).node_id();
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<NodeId>().unwrap(), id);
        assert_eq!(id.short(), text[..8]);
        assert!("zz".repeat(32).parse::<NodeId>().is_err());
        assert!("ab".parse::<NodeId>().is_err());
    }

    #[test]
    fn node_id_and_signature_serde_in_json_and_postcard() {
        let identity = Identity::from_secret_bytes(&[9; 32]);
        let id = identity.node_id();
        let sig = identity.sign(b"hello");
        let json = serde_json::to_string(&(id, sig)).unwrap();
        assert!(json.contains(&id.to_string()));
        assert_eq!(
            serde_json::from_str::<(NodeId, Signature)>(&json).unwrap(),
            (id, sig)
        );
        let bin = postcard::to_allocvec(&(id, sig)).unwrap();
        assert_eq!(bin.len(), 32 + 1 + 64);
        assert_eq!(
            postcard::from_bytes::<(NodeId, Signature)>(&bin).unwrap(),
            (id, sig)
        );
    }

    #[test]
    fn sign_and_verify() {
        let alice = Identity::from_secret_bytes(&[1; 32]);
        let bob = Identity::from_secret_bytes(&[2; 32]);
        let sig = alice.sign(b"msg");
        verify(&alice.node_id(), b"msg", &sig).unwrap();
        assert!(matches!(
            verify(&alice.node_id(), b"msh", &sig),
            Err(Error::BadSignature)
        ));
        assert!(matches!(
            verify(&bob.node_id(), b"msg", &sig),
            Err(Error::BadSignature)
        ));
        let mut bytes = *sig.as_bytes();
        bytes[10] ^= 1;
        assert!(verify(&alice.node_id(), b"msg", &Signature::from_bytes(bytes)).is_err());
    }

    #[test]
    fn generated_identities_differ() {
        assert_ne!(
            Identity::generate().node_id(),
            Identity::generate().node_id()
        );
    }

    #[test]
    fn transcripts_are_domain_separated() {
        let id = Identity::from_secret_bytes(&[3; 32]).node_id();
        let nonce = [5; 32];
        assert_ne!(
            handshake_transcript("a", &id, &nonce),
            handshake_transcript("b", &id, &nonce)
        );
        assert_ne!(
            handshake_transcript("ab", &id, &nonce)[..],
            join_transcript("ab", &id)[..]
        );
        assert_ne!(
            vote_transcript("n", 0, &id, 1, 0, 2),
            vote_transcript("n", 0, &id, 2, 0, 1)
        );
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let secret = [0xab; 32];
        let identity = Identity::from_secret_bytes(&secret);
        let debug = format!("{identity:?}");
        assert!(!debug.contains(&hex(&secret)));
        assert!(!debug.contains(&hex(&secret[..4])));
        assert!(debug.contains(&identity.node_id().to_string()));
    }

    #[test]
    fn load_or_create_creates_once_with_mode_0600_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("node.key");
        let first = Identity::load_or_create(&path).unwrap();
        let again = Identity::load_or_create(&path).unwrap();
        assert_eq!(first.node_id(), again.node_id());
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "the temporary file is removed");
    }

    #[test]
    fn load_rejects_a_file_of_the_wrong_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert!(matches!(
            Identity::load_or_create(&path),
            Err(Error::Key(_))
        ));
        std::fs::write(&path, [1u8; 33]).unwrap();
        assert!(matches!(
            Identity::load_or_create(&path),
            Err(Error::Key(_))
        ));
    }
}
