//! The attach protocol between a `berth` command and a container's monitor: frames of
//! `[kind: u8][length: u32 big-endian][payload]` over a Unix stream socket.

use std::io::{Read, Write};

/// Input for the container.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// The container ended; payload: its exit code as i32 big-endian.
pub const EXIT: u8 = 3;
/// The terminal's size changed; payload: rows and columns as u16 big-endian.
pub const RESIZE: u8 = 4;
/// No more input: the container's stdin is closed.
pub const STDIN_EOF: u8 = 5;
/// The container could not be started; payload: the reason.
pub const ERROR: u8 = 6;
/// The container runs; payload: its init's pid as i32 big-endian.
pub const STARTED: u8 = 7;

/// Largest payload accepted; bigger frames mean a confused peer.
const MAX_FRAME: u32 = 1 << 20;

pub fn write_frame(out: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    out.write_all(&frame)
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame(input: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if length > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "attach frame too large"));
    }
    let mut payload = vec![0u8; length as usize];
    input.read_exact(&mut payload)?;
    Ok(Some((header[0], payload)))
}

/// Splits a byte buffer into whole frames, leaving an incomplete tail in place.
pub fn take_frames(buffer: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buffer.len() - at >= 5 {
        let length =
            u32::from_be_bytes([buffer[at + 1], buffer[at + 2], buffer[at + 3], buffer[at + 4]])
                as usize;
        if buffer.len() - at - 5 < length {
            break;
        }
        frames.push((buffer[at], buffer[at + 5..at + 5 + length].to_vec()));
        at += 5 + length;
    }
    buffer.drain(..at);
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split() {
        let mut wire = Vec::new();
        write_frame(&mut wire, STDOUT, b"hello").unwrap();
        write_frame(&mut wire, EXIT, &3i32.to_be_bytes()).unwrap();
        let mut reader = &wire[..];
        assert_eq!(read_frame(&mut reader).unwrap(), Some((STDOUT, b"hello".to_vec())));
        assert_eq!(read_frame(&mut reader).unwrap(), Some((EXIT, 3i32.to_be_bytes().to_vec())));
        assert_eq!(read_frame(&mut reader).unwrap(), None);
        let mut partial = wire[..7].to_vec();
        assert!(take_frames(&mut partial).is_empty());
        partial.extend_from_slice(&wire[7..]);
        assert_eq!(take_frames(&mut partial).len(), 2);
        assert!(partial.is_empty());
        let mut huge = vec![STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut &huge[..]).is_err());
        huge.clear();
    }
}
