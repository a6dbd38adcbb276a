//! The log file format, shared by the embedded store and `gantry log export`.
//!
//! ```text
//! header  = magic "GANTRYLG" (8) ‖ format u32 LE (= 1) ‖ reserved u32 (= 0)
//!           ‖ first_seq u64 LE ‖ anchor (32: hash of entry first_seq - 1, or GENESIS)
//! frame   = length u32 LE ‖ flags u8 ‖ entry (length bytes)
//! flags   : bit 0 set = the last entry of an atomic batch; other bits zero
//! ```
//!
//! See `events/FORMAT.md` for the full contract.

use std::io::{self, Read};

use bytes::Bytes;

use crate::log::MAX_ENTRY_BYTES;
use crate::{Entry, Hash};

/// The first eight bytes of every gantry log file.
pub const MAGIC: &[u8; 8] = b"GANTRYLG";
/// The file format this build writes and reads.
pub const FILE_FORMAT: u32 = 1;
/// Bytes in the header.
pub const HEADER_LEN: usize = 56;
/// Bytes before each entry: length and flags.
pub const FRAME_OVERHEAD: usize = 5;
/// Flag: this entry ends an atomic batch.
pub const FLAG_BATCH_END: u8 = 0x01;

/// A file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Sequence of the first entry in the file.
    pub first_seq: u64,
    /// Hash of the entry before `first_seq`; [`Hash::GENESIS`] when `first_seq` is 1.
    pub anchor: Hash,
}

impl Header {
    pub const GENESIS: Header = Header {
        first_seq: 1,
        anchor: Hash::GENESIS,
    };

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&FILE_FORMAT.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        out[24..56].copy_from_slice(&self.anchor.0);
        out
    }

    /// Parses a header; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Header, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "header is {} bytes, expected {HEADER_LEN}",
                bytes.len()
            ));
        }
        if &bytes[..8] != MAGIC {
            return Err("missing GANTRYLG magic".into());
        }
        let format = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if format != FILE_FORMAT {
            return Err(format!(
                "file format {format}, this build reads {FILE_FORMAT}"
            ));
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[16..24]);
        let first_seq = u64::from_le_bytes(seq);
        if first_seq == 0 {
            return Err("first sequence is 0".into());
        }
        let mut anchor = [0u8; 32];
        anchor.copy_from_slice(&bytes[24..56]);
        Ok(Header {
            first_seq,
            anchor: Hash(anchor),
        })
    }
}

/// Appends one frame to `buf`.
pub fn write_frame(buf: &mut Vec<u8>, entry: &[u8], flags: u8) {
    debug_assert!(entry.len() <= MAX_ENTRY_BYTES);
    buf.extend_from_slice(&(entry.len() as u32).to_le_bytes());
    buf.push(flags);
    buf.extend_from_slice(entry);
}

/// How reading frames stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEnd {
    /// The input ended exactly after a frame.
    Clean,
    /// The input ended inside a frame: a write that never completed.
    Torn { offset: u64 },
    /// A frame header is impossible (length 0 or over the limit, unknown flags).
    Corrupt { offset: u64, reason: String },
}

/// One frame as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Offset of the frame's first byte in the input (the header counted).
    pub offset: u64,
    pub flags: u8,
    pub entry: Bytes,
}

/// Reads frames one by one from any reader positioned after the header.
#[derive(Debug)]
pub struct FrameReader<R> {
    input: R,
    offset: u64,
    end: Option<FrameEnd>,
}

impl<R: Read> FrameReader<R> {
    /// `offset` is the position of the reader in its file (for error messages and recovery).
    pub fn new(input: R, offset: u64) -> FrameReader<R> {
        FrameReader {
            input,
            offset,
            end: None,
        }
    }

    /// How reading stopped, once [`FrameReader::next_frame`] has returned `Ok(None)`.
    pub fn end(&self) -> Option<&FrameEnd> {
        self.end.as_ref()
    }

    /// The next frame, or `None` at the end of the input or at the first bad frame (see
    /// [`FrameReader::end`]).
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let start = self.offset;
        let mut head = [0u8; FRAME_OVERHEAD];
        let got = read_full(&mut self.input, &mut head)?;
        if got == 0 {
            self.end = Some(FrameEnd::Clean);
            return Ok(None);
        }
        if got < FRAME_OVERHEAD {
            self.end = Some(FrameEnd::Torn { offset: start });
            return Ok(None);
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let flags = head[4];
        if len == 0 || len > MAX_ENTRY_BYTES || flags & !FLAG_BATCH_END != 0 {
            self.end = Some(FrameEnd::Corrupt {
                offset: start,
                reason: format!("impossible frame header (length {len}, flags {flags:#04x})"),
            });
            return Ok(None);
        }
        let mut entry = vec![0u8; len];
        let got = read_full(&mut self.input, &mut entry)?;
        if got < len {
            self.end = Some(FrameEnd::Torn { offset: start });
            return Ok(None);
        }
        self.offset += (FRAME_OVERHEAD + len) as u64;
        Ok(Some(Frame {
            offset: start,
            flags,
            entry: Bytes::from(entry),
        }))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Parses frames held in memory (a range read back from the store) into entries numbered from
/// `first_seq`. Bytes are shared, not copied.
pub fn parse_frames(buf: &Bytes, first_seq: u64) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut seq = first_seq;
    while at < buf.len() {
        if buf.len() - at < FRAME_OVERHEAD {
            return Err(format!("truncated frame header at byte {at}"));
        }
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let start = at + FRAME_OVERHEAD;
        if len == 0 || len > MAX_ENTRY_BYTES || start + len > buf.len() {
            return Err(format!("impossible frame length {len} at byte {at}"));
        }
        out.push(Entry {
            seq,
            bytes: buf.slice(start..start + len),
        });
        seq += 1;
        at = start + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_strangers() {
        let h = Header {
            first_seq: 42,
            anchor: Hash::of(b"a"),
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        assert!(Header::decode(b"short").is_err());
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(Header::decode(&bad).is_err());
    }

    #[test]
    fn frames_round_trip_and_torn_tail_is_seen() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"one", 0);
        write_frame(&mut buf, b"two!", FLAG_BATCH_END);
        let whole = buf.len();
        buf.extend_from_slice(&[9, 0, 0, 0, 1, b'x']); // a frame cut short
        let mut reader = FrameReader::new(&buf[..], 0);
        let a = reader.next_frame().expect("io").expect("frame");
        let b = reader.next_frame().expect("io").expect("frame");
        assert_eq!((a.entry.as_ref(), a.flags), (&b"one"[..], 0));
        assert_eq!((b.entry.as_ref(), b.flags, b.offset), (&b"two!"[..], 1, 8));
        assert_eq!(reader.next_frame().expect("io"), None);
        assert_eq!(
            reader.end(),
            Some(&FrameEnd::Torn {
                offset: whole as u64
            })
        );
        let entries = parse_frames(&Bytes::from(buf[..whole].to_vec()), 5).expect("parse");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].seq, 6);
    }

    #[test]
    fn impossible_lengths_are_corruption() {
        let buf = [0u8, 0, 0, 0, 1];
        let mut reader = FrameReader::new(&buf[..], 56);
        assert_eq!(reader.next_frame().expect("io"), None);
        assert!(matches!(
            reader.end(),
            Some(FrameEnd::Corrupt { offset: 56, .. })
        ));
    }
}
