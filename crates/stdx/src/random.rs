//! Randomness from the kernel's generator. A failure is an error, never zeros: tokens,
//! uids and keys made from a failed read would be guessable.

/// Fills `buffer` from the kernel's generator (the getrandom call, which waits only until
/// the generator is first seeded; no file is opened).
pub fn fill(buffer: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(buffer).map_err(|e| {
        std::io::Error::other(format!("the kernel's random generator (getrandom): {e}"))
    })
}

/// `bytes` random bytes as lowercase hex.
pub fn hex(bytes: usize) -> std::io::Result<String> {
    let mut buffer = vec![0u8; bytes];
    fill(&mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random (version 4) UUID.
pub fn uuid() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    fill(&mut bytes)?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuids_are_version_4_and_differ() {
        let a = super::uuid().expect("uuid");
        let b = super::uuid().expect("uuid");
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(["8", "9", "a", "b"].contains(&&a[19..20]), "{a}");
        assert_eq!(super::hex(8).expect("hex").len(), 16);
    }
}
