//! WireGuard keys: 32 bytes, written as standard base64 (44 characters), as `wg` writes them.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 32-byte Curve25519 key (public or private) in WireGuard's encoding.
///
/// `Debug` never prints the bytes, so a private key cannot leak through logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not base64")]
    NotBase64,
    #[error("decodes to {0} bytes, a key has 32")]
    WrongLength(usize),
}

impl Key {
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Clamps a random scalar the way `wg genkey` does, so stored private keys match byte for byte.
    pub fn clamped(mut bytes: [u8; 32]) -> Self {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Key(bytes)
    }
}

impl FromStr for Key {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError::NotBase64)?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Key(arr))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a WireGuard key: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_base64() {
        let k: Key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
            .parse()
            .unwrap();
        assert_eq!(
            k.to_base64(),
            "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
        );
        assert_eq!(format!("{k:?}"), "Key(..)");
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!("%%%".parse::<Key>(), Err(KeyError::NotBase64));
        assert_eq!("AAAA".parse::<Key>(), Err(KeyError::WrongLength(3)));
    }

    #[test]
    fn clamps_like_wg() {
        let k = Key::clamped([0xff; 32]);
        assert_eq!(k.0[0], 0xf8);
        assert_eq!(k.0[31], 0x7f);
        assert_eq!(Key::clamped([0; 32]).0[31], 0x40);
    }
}
