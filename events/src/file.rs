//! The log file format, shared by the embedded store and `gantry log export`.
//!
//! ```text
//! header    = magic "GANTRYLG" (8) ‖ format u32 LE ‖ reserved u32 (= 0)
//!             ‖ first_seq u64 LE ‖ anchor (32: hash of entry first_seq - 1, or GENESIS)
//! format 2  : frame = length u32 LE ‖ flags u8 ‖ crc u32 LE ‖ entry (length bytes)
//!             crc   = CRC32C(length ‖ flags ‖ entry), length and flags as stored
//! format 1  : frame = length u32 LE ‖ flags u8 ‖ entry (length bytes)
//! flags     : bit 0 set = the last entry of an atomic batch; other bits zero
//! ```
//!
//! This build writes format 2 and reads both. The checksum is what lets the embedded store
//! tell a frame that was never completely written (a crash or power loss during the last
//! write, never acknowledged) from one that was written, synced, acknowledged and damaged
//! later; the rules are in [`crate::embedded`]. The chain hash, not the checksum, is what
//! `verify` judges: a checksum covers one frame and proves nothing about its neighbours.
//!
//! See `events/FORMAT.md` section 4 for the full contract.

use std::fmt;
use std::io::{self, Read};

use bytes::Bytes;

use crate::log::MAX_ENTRY_BYTES;
use crate::{Entry, Hash};

/// The first eight bytes of every gantry log file.
pub const MAGIC: &[u8; 8] = b"GANTRYLG";
/// The file format this build writes (it reads format 1 too, see [`Format`]).
pub const FILE_FORMAT: u32 = 2;
/// Bytes in the header.
pub const HEADER_LEN: usize = 56;
/// Bytes before each entry in the format this build writes: length, flags and checksum.
pub const FRAME_OVERHEAD: usize = 9;
/// Flag: this entry ends an atomic batch.
pub const FLAG_BATCH_END: u8 = 0x01;
/// The unit a disk writes whole: bytes of a write interrupted by a power loss that never
/// landed read back as zeros from a multiple of this (counted from the start of the file).
/// 512 also covers 4096-byte blocks and pages, which are multiples of it.
pub const SECTOR: u64 = 512;

/// A file's frame layout, named by the header's `format` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Format 1: `length ‖ flags ‖ entry`, no checksum. Files written before format 2.
    V1,
    /// Format 2: `length ‖ flags ‖ crc ‖ entry`, every frame checksummed.
    V2,
}

impl Format {
    /// The format this build writes.
    pub const CURRENT: Format = Format::V2;

    /// The number stored in the header.
    pub fn number(self) -> u32 {
        match self {
            Format::V1 => 1,
            Format::V2 => 2,
        }
    }

    /// The format a header number names, if this build knows it.
    pub fn from_number(number: u32) -> Option<Format> {
        match number {
            1 => Some(Format::V1),
            2 => Some(Format::V2),
            _ => None,
        }
    }

    /// Bytes before each entry.
    pub fn frame_overhead(self) -> usize {
        match self {
            Format::V1 => 5,
            Format::V2 => FRAME_OVERHEAD,
        }
    }

    /// Whether frames carry a CRC32C.
    pub fn has_checksums(self) -> bool {
        self == Format::V2
    }
}

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

    /// The header of a file in the format this build writes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        self.encode_as(Format::CURRENT)
    }

    /// The header of a file in `format`.
    pub fn encode_as(&self, format: Format) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&format.number().to_le_bytes());
        out[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        out[24..56].copy_from_slice(&self.anchor.0);
        out
    }

    /// Parses a header of the format this build writes; the error says what is wrong.
    ///
    /// A format 1 file is refused here rather than misread, because the caller will read its
    /// frames with [`FrameReader::new`], which expects format 2 frames. Readers that handle
    /// both use [`Header::decode_any`] and [`FrameReader::with_format`].
    pub fn decode(bytes: &[u8]) -> Result<Header, String> {
        match Header::decode_any(bytes)? {
            (header, Format::CURRENT) => Ok(header),
            (_, other) => Err(format!(
                "file format {} (frames without checksums) is not read here; this reader takes \
                 format {FILE_FORMAT}",
                other.number()
            )),
        }
    }

    /// Parses a header of any format this build reads, and says which.
    pub fn decode_any(bytes: &[u8]) -> Result<(Header, Format), String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "header is {} bytes, expected {HEADER_LEN}",
                bytes.len()
            ));
        }
        if &bytes[..8] != MAGIC {
            return Err("missing GANTRYLG magic".into());
        }
        let number = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let format = Format::from_number(number).ok_or_else(|| {
            format!("file format {number}, this build reads formats 1 and {FILE_FORMAT}")
        })?;
        let reserved = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if reserved != 0 {
            return Err(format!("reserved header field is {reserved}, must be 0"));
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[16..24]);
        let first_seq = u64::from_le_bytes(seq);
        if first_seq == 0 {
            return Err("first sequence is 0".into());
        }
        let mut anchor = [0u8; 32];
        anchor.copy_from_slice(&bytes[24..56]);
        Ok((
            Header {
                first_seq,
                anchor: Hash(anchor),
            },
            format,
        ))
    }
}

/// CRC32C (Castagnoli) of a frame: its length and flags as stored (the 5 bytes before the
/// checksum), then its entry. Covering length and flags means a damaged header is caught too,
/// not only a damaged entry.
pub fn frame_checksum(length_and_flags: &[u8], entry: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(length_and_flags), entry)
}

/// Appends one frame, in the format this build writes, to `buf`.
pub fn write_frame(buf: &mut Vec<u8>, entry: &[u8], flags: u8) {
    write_frame_as(buf, entry, flags, Format::CURRENT);
}

/// Appends one frame in `format` to `buf`.
pub fn write_frame_as(buf: &mut Vec<u8>, entry: &[u8], flags: u8, format: Format) {
    debug_assert!(!entry.is_empty() && entry.len() <= MAX_ENTRY_BYTES);
    let start = buf.len();
    buf.resize(start + format.frame_overhead(), 0);
    buf.extend_from_slice(entry);
    seal_frame(&mut buf[start..], flags, format);
}

/// Fills in the header of a frame whose entry is already in place: `frame` is the frame's
/// bytes, header space first. Lets the writer seal an entry straight into its write buffer
/// and frame it afterwards, without copying it.
pub fn seal_frame(frame: &mut [u8], flags: u8, format: Format) {
    let overhead = format.frame_overhead();
    debug_assert!(
        frame.len() > overhead,
        "a frame holds at least one entry byte"
    );
    debug_assert!(frame.len() - overhead <= MAX_ENTRY_BYTES);
    let len = (frame.len() - overhead) as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4] = flags;
    if format.has_checksums() {
        let (head, entry) = frame.split_at_mut(FRAME_OVERHEAD);
        let crc = frame_checksum(&head[..5], entry);
        head[5..9].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Why a frame header cannot be one gantry wrote: length 0 or over the limit, unknown flags.
fn impossible_header(len: usize, flags: u8) -> Option<String> {
    if len == 0 || len > MAX_ENTRY_BYTES || flags & !FLAG_BATCH_END != 0 {
        Some(format!(
            "impossible frame header (length {len}, flags {flags:#04x})"
        ))
    } else {
        None
    }
}

/// A complete frame whose stored checksum is not that of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub stored: u32,
    pub computed: u32,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checksum mismatch (stored {:08x}, computed {:08x})",
            self.stored, self.computed
        )
    }
}

/// How reading frames stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEnd {
    /// The input ended exactly after a frame.
    Clean,
    /// The input ended inside a frame (its header or its entry).
    Torn { offset: u64 },
    /// A frame header is impossible (length 0 or over the limit, unknown flags), or (from
    /// [`FrameReader::next_frame`]) a complete frame's checksum does not match.
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

impl Frame {
    /// Offset of the first byte after this frame, in a file of `format`.
    pub fn end(&self, format: Format) -> u64 {
        self.offset + (format.frame_overhead() + self.entry.len()) as u64
    }
}

/// Reads frames one by one from any reader positioned after the header.
#[derive(Debug)]
pub struct FrameReader<R> {
    input: R,
    offset: u64,
    format: Format,
    end: Option<FrameEnd>,
}

impl<R: Read> FrameReader<R> {
    /// Reads frames of the format this build writes. `offset` is the position of the reader in
    /// its file (for error messages and recovery).
    pub fn new(input: R, offset: u64) -> FrameReader<R> {
        FrameReader::with_format(input, offset, Format::CURRENT)
    }

    /// Reads frames of `format` (from the file's header, [`Header::decode_any`]).
    pub fn with_format(input: R, offset: u64, format: Format) -> FrameReader<R> {
        FrameReader {
            input,
            offset,
            format,
            end: None,
        }
    }

    /// The layout being read.
    pub fn format(&self) -> Format {
        self.format
    }

    /// How reading stopped, once [`FrameReader::next_frame`] has returned `Ok(None)`.
    pub fn end(&self) -> Option<&FrameEnd> {
        self.end.as_ref()
    }

    /// The next intact frame, or `None` at the end of the input or at the first frame that is
    /// not intact (see [`FrameReader::end`]): a checksum mismatch ends reading like an
    /// impossible header does.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        match self.next_frame_or_mismatch()? {
            Some((frame, None)) => Ok(Some(frame)),
            Some((frame, Some(mismatch))) => {
                self.end = Some(FrameEnd::Corrupt {
                    offset: frame.offset,
                    reason: mismatch.to_string(),
                });
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The next complete frame, with its checksum mismatch if it has one; `None` at the end of
    /// the input, at a frame cut short or at an impossible header. Recovery reads on past a
    /// mismatch to show what follows the damage.
    pub fn next_frame_or_mismatch(&mut self) -> io::Result<Option<(Frame, Option<Mismatch>)>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let start = self.offset;
        let overhead = self.format.frame_overhead();
        let mut head = [0u8; FRAME_OVERHEAD];
        let head = &mut head[..overhead];
        let got = read_full(&mut self.input, head)?;
        if got == 0 {
            self.end = Some(FrameEnd::Clean);
            return Ok(None);
        }
        if got < overhead {
            self.end = Some(FrameEnd::Torn { offset: start });
            return Ok(None);
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let flags = head[4];
        if let Some(reason) = impossible_header(len, flags) {
            self.end = Some(FrameEnd::Corrupt {
                offset: start,
                reason,
            });
            return Ok(None);
        }
        let mut entry = vec![0u8; len];
        let got = read_full(&mut self.input, &mut entry)?;
        if got < len {
            self.end = Some(FrameEnd::Torn { offset: start });
            return Ok(None);
        }
        let mismatch = if self.format.has_checksums() {
            let stored = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
            let computed = frame_checksum(&head[..5], &entry);
            (stored != computed).then_some(Mismatch { stored, computed })
        } else {
            None
        };
        self.offset += (overhead + len) as u64;
        Ok(Some((
            Frame {
                offset: start,
                flags,
                entry: Bytes::from(entry),
            },
            mismatch,
        )))
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

/// The length of the intact frame at the start of `bytes`, if one starts there: a possible
/// header, the whole entry inside `bytes` and (format 2) a matching checksum.
pub fn intact_frame_len(bytes: &[u8], format: Format) -> Option<usize> {
    let overhead = format.frame_overhead();
    if bytes.len() < overhead {
        return None;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if impossible_header(len, bytes[4]).is_some() || bytes.len() - overhead < len {
        return None;
    }
    if format.has_checksums() {
        let stored = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        if frame_checksum(&bytes[..5], &bytes[overhead..overhead + len]) != stored {
            return None;
        }
    }
    Some(overhead + len)
}

/// For a frame the file ends inside (`tail`: its bytes up to the end of the file), why it is
/// damage rather than an interrupted write, or `None` when an interrupted write explains it.
///
/// A write cut short leaves a prefix of what was written, so nothing intact can follow the
/// frame it stopped in. Two things say otherwise, and need a checksum to be seen (format 2):
/// the frame is whole and intact once its length is taken to reach the end of the file (its
/// length field was damaged), or an intact frame starts later in `tail` (a damaged length
/// swallowed the frames after it). The loop is bounded: a frame the file ends inside is
/// shorter than [`FRAME_OVERHEAD`] + [`MAX_ENTRY_BYTES`].
pub fn cut_short_is_damage(tail: &[u8], format: Format) -> Option<String> {
    if !format.has_checksums() || tail.len() <= FRAME_OVERHEAD {
        return None;
    }
    let actual = tail.len() - FRAME_OVERHEAD;
    let stored = u32::from_le_bytes([tail[5], tail[6], tail[7], tail[8]]);
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&(actual as u32).to_le_bytes());
    head[4] = tail[4];
    if actual <= MAX_ENTRY_BYTES && frame_checksum(&head, &tail[FRAME_OVERHEAD..]) == stored {
        let claimed = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        return Some(format!(
            "length field damaged: it says {claimed}, but the frame is intact with length {actual}"
        ));
    }
    (1..tail.len())
        .find(|&at| intact_frame_len(&tail[at..], format).is_some())
        .map(|at| {
            format!(
                "frame runs past the end of the file, but an intact frame starts {at} bytes into it"
            )
        })
}

/// The last multiple of [`SECTOR`] strictly inside a frame spanning `start..end`: where a
/// power loss could have stopped writing it midway.
pub fn last_sector_boundary_inside(start: u64, end: u64) -> Option<u64> {
    let boundary = end.checked_sub(1)? / SECTOR * SECTOR;
    (boundary > start).then_some(boundary)
}

/// Parses frames of `format` held in memory (a range read back from the store) into entries
/// numbered from `first_seq`. Bytes are shared, not copied.
///
/// Checksums are not checked here: reads serve the stored bytes, and `verify` judges them by
/// the chain, which names the precise fault (a store opened with damage keeps serving its
/// damaged frame so that it can).
pub fn parse_frames(buf: &Bytes, first_seq: u64, format: Format) -> Result<Vec<Entry>, String> {
    let overhead = format.frame_overhead();
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut seq = first_seq;
    while at < buf.len() {
        if buf.len() - at < overhead {
            return Err(format!("truncated frame header at byte {at}"));
        }
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let start = at + overhead;
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

    fn frames(format: Format, entries: &[(&[u8], u8)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (entry, flags) in entries {
            write_frame_as(&mut buf, entry, *flags, format);
        }
        buf
    }

    #[test]
    fn header_round_trips_and_rejects_strangers() {
        let h = Header {
            first_seq: 42,
            anchor: Hash::of(b"a"),
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        assert_eq!(Header::decode_any(&h.encode()), Ok((h, Format::V2)));
        assert_eq!(
            Header::decode_any(&h.encode_as(Format::V1)),
            Ok((h, Format::V1))
        );
        // A format 1 file is refused by the format 2 reader rather than misread.
        assert!(Header::decode(&h.encode_as(Format::V1)).is_err());
        assert!(Header::decode(b"short").is_err());
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(Header::decode(&bad).is_err());
        let mut future = h.encode();
        future[8] = 3;
        assert!(Header::decode_any(&future).is_err());
        // The reserved field is 0; anything else is refused, not ignored.
        let mut reserved = h.encode();
        reserved[12] = 1;
        assert_eq!(
            Header::decode_any(&reserved),
            Err("reserved header field is 1, must be 0".to_owned())
        );
    }

    /// The worked example of FORMAT.md section 4, byte for byte.
    #[test]
    fn a_frame_matches_the_documented_bytes() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            frames(Format::V2, &[(b"abc", FLAG_BATCH_END)]),
            [3, 0, 0, 0, 1, 0x96, 0x03, 0x06, 0xdc, b'a', b'b', b'c']
        );
        assert_eq!(
            frames(Format::V1, &[(b"abc", FLAG_BATCH_END)]),
            [3, 0, 0, 0, 1, b'a', b'b', b'c']
        );
    }

    #[test]
    fn frames_round_trip_and_torn_tail_is_seen() {
        for format in [Format::V1, Format::V2] {
            let overhead = format.frame_overhead();
            let mut buf = frames(format, &[(b"one", 0), (b"two!", FLAG_BATCH_END)]);
            let whole = buf.len();
            buf.extend_from_slice(&[9, 0, 0, 0, 1, 0, 0, 0, 0, b'x']); // a frame cut short
            let mut reader = FrameReader::with_format(&buf[..], 0, format);
            let a = reader.next_frame().expect("io").expect("frame");
            let b = reader.next_frame().expect("io").expect("frame");
            assert_eq!((a.entry.as_ref(), a.flags), (&b"one"[..], 0));
            assert_eq!(
                (b.entry.as_ref(), b.flags, b.offset),
                (&b"two!"[..], 1, (overhead + 3) as u64)
            );
            assert_eq!(b.end(format), whole as u64);
            assert_eq!(reader.next_frame().expect("io"), None);
            assert_eq!(
                reader.end(),
                Some(&FrameEnd::Torn {
                    offset: whole as u64
                })
            );
            let entries =
                parse_frames(&Bytes::from(buf[..whole].to_vec()), 5, format).expect("parse");
            assert_eq!(entries.len(), 2);
            assert_eq!(entries[1].seq, 6);
            assert_eq!(entries[1].bytes.as_ref(), b"two!");
        }
    }

    #[test]
    fn impossible_lengths_are_corruption() {
        let buf = [0u8; 9];
        let mut reader = FrameReader::new(&buf[..], 56);
        assert_eq!(reader.next_frame().expect("io"), None);
        assert!(matches!(
            reader.end(),
            Some(FrameEnd::Corrupt { offset: 56, .. })
        ));
    }

    /// No flipped bit yields a frame: the checksum catches it, or the length it changed no
    /// longer fits (which recovery then judges with [`cut_short_is_damage`]).
    #[test]
    fn a_flipped_bit_anywhere_in_a_frame_fails_its_checksum() {
        let buf = frames(Format::V2, &[(b"some entry bytes", FLAG_BATCH_END)]);
        assert_eq!(intact_frame_len(&buf, Format::V2), Some(buf.len()));
        for at in 0..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x10;
            let mut reader = FrameReader::new(&bad[..], 0);
            assert_eq!(reader.next_frame().expect("io"), None, "byte {at}");
            assert!(
                matches!(
                    reader.end(),
                    Some(FrameEnd::Corrupt { offset: 0, .. } | FrameEnd::Torn { offset: 0 })
                ),
                "byte {at}: {:?}",
                reader.end()
            );
        }
        // The lenient reader hands the damaged frame over with its mismatch and reads on.
        let mut two = buf.clone();
        two[12] ^= 0x01;
        two.extend_from_slice(&buf);
        let mut reader = FrameReader::new(&two[..], 0);
        let (_, mismatch) = reader.next_frame_or_mismatch().expect("io").expect("frame");
        assert!(mismatch.is_some());
        let (_, mismatch) = reader.next_frame_or_mismatch().expect("io").expect("frame");
        assert_eq!(mismatch, None);
    }

    #[test]
    fn a_frame_cut_short_is_told_from_a_damaged_length() {
        let buf = frames(Format::V2, &[(b"a sixteen byte e", FLAG_BATCH_END)]);
        // A prefix of a write: torn.
        assert_eq!(cut_short_is_damage(&buf[..buf.len() - 3], Format::V2), None);
        assert_eq!(cut_short_is_damage(&buf[..4], Format::V2), None);
        // The whole frame, but its length field says more: damage.
        let mut longer = buf.clone();
        longer[0] = 200;
        assert!(cut_short_is_damage(&longer, Format::V2).is_some());
        // A length that swallows the frame after it: damage.
        let mut swallowing = frames(Format::V2, &[(b"first entry", 0)]);
        swallowing.extend_from_slice(&buf);
        swallowing[0] = 250;
        assert!(cut_short_is_damage(&swallowing, Format::V2).is_some());
        // Format 1 cannot tell.
        let mut v1 = frames(Format::V1, &[(b"abc", FLAG_BATCH_END)]);
        v1[0] = 200;
        assert_eq!(cut_short_is_damage(&v1, Format::V1), None);
    }

    #[test]
    fn sector_boundaries_inside_a_frame() {
        assert_eq!(last_sector_boundary_inside(500, 1100), Some(1024));
        assert_eq!(last_sector_boundary_inside(500, 1025), Some(1024));
        assert_eq!(last_sector_boundary_inside(500, 1024), Some(512));
        assert_eq!(last_sector_boundary_inside(512, 1024), None);
        assert_eq!(last_sector_boundary_inside(600, 1000), None);
    }
}
