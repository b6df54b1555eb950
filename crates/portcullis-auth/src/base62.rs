//! Base62 with the alphabet `0-9A-Za-z`, as used in key bodies and checksums.

pub(crate) const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `value` as exactly `width` base62 digits, most significant first, zero-padded.
pub(crate) fn encode_fixed(mut value: u64, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    digits.into_iter().map(char::from).collect()
}

pub(crate) fn is_digit(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_zero_padding() {
        assert_eq!(encode_fixed(0, 6), "000000");
        assert_eq!(encode_fixed(61, 2), "0z");
        assert_eq!(encode_fixed(62, 2), "10");
        // The largest CRC-32 still fits six digits (62^6 > 2^32).
        assert_eq!(encode_fixed(u64::from(u32::MAX), 6).len(), 6);
    }
}
