//! `genkey` and `pubkey`, byte-compatible with `wg genkey` and `wg pubkey`.

use boringtun::x25519::{PublicKey, StaticSecret};
use liqonet_proto::Key;

/// A new private key from the OS's random source, clamped as `wg genkey` does.
pub fn generate() -> std::io::Result<Key> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Key::clamped(bytes))
}

pub fn public_of(private: &Key) -> Key {
    Key(PublicKey::from(&StaticSecret::from(private.0)).to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc7748_test_vector() {
        // RFC 7748 section 6.1: Alice's private and public keys.
        let private = Key(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            public_of(&private).0,
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.0[0] & 7, 0);
        assert_eq!(a.0[31] & 0xc0, 0x40);
    }

    fn hex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
