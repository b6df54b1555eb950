//! The chunked transfer coding (RFC 9112 §7.1), decoded in place: chunk data comes out as
//! `Bytes` split off the connection's read buffer (no copy); sizes, extensions and trailers are
//! consumed and dropped. Line endings must be CRLF: a model server has no reason to send
//! anything else, and a lenient parser is how request smuggling starts.

use bytes::{Buf, Bytes, BytesMut};

/// Chunk extensions and trailer fields are skipped, but no more than this many bytes of them
/// in one body, so a server sending an endless extension is an error rather than a busy loop.
const MAX_SKIPPED: usize = 16 * 1024;

/// A chunk size has at most this many hex digits (leading zeros included): 2^64 − 1.
const MAX_SIZE_DIGITS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size {
        size: u64,
        digits: u32,
    },
    /// After the size: whitespace or an extension, up to CR.
    Extension {
        size: u64,
    },
    /// CR seen at the end of the size line.
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer field line, or of the empty line that ends the body.
    TrailerStart,
    TrailerLine,
    TrailerLineLf,
    FinalLf,
    Done,
}

/// What one call to [`ChunkedDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Some chunk data (never empty).
    Data(Bytes),
    /// The buffer ends inside the coding: read more and call again.
    NeedMore,
    /// The last chunk and its trailers are consumed; the buffer holds what follows the body.
    End,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body: {0}")]
pub struct ChunkedError(&'static str);

#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    skipped: usize,
}

impl ChunkedDecoder {
    pub(crate) fn new() -> ChunkedDecoder {
        ChunkedDecoder { state: State::Size { size: 0, digits: 0 }, skipped: 0 }
    }

    /// Consumes framing from the front of `buffer` until it can return some data, needs more
    /// input, or reaches the end of the body.
    pub(crate) fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, ChunkedError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Data { remaining } => {
                    if buffer.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let available = u64::try_from(buffer.len()).unwrap_or(u64::MAX);
                    let take = remaining.min(available);
                    // `take` is at most `buffer.len()`, so it fits a usize.
                    let data = buffer.split_to(usize::try_from(take).unwrap_or(buffer.len())).freeze();
                    let left = remaining - take;
                    self.state = if left == 0 { State::DataCr } else { State::Data { remaining: left } };
                    return Ok(Decoded::Data(data));
                }
                _ => {
                    let Some(&byte) = buffer.first() else {
                        return Ok(Decoded::NeedMore);
                    };
                    buffer.advance(1);
                    self.state = self.step(byte)?;
                }
            }
        }
    }

    /// One byte of framing (sizes, CRLFs, extensions, trailers).
    fn step(&mut self, byte: u8) -> Result<State, ChunkedError> {
        let next = match self.state {
            State::Size { size, digits } => match hex_value(byte) {
                Some(_) if digits == MAX_SIZE_DIGITS => return Err(ChunkedError("chunk size too large")),
                Some(value) => State::Size { size: (size << 4) | value, digits: digits + 1 },
                None if digits == 0 => return Err(ChunkedError("chunk size missing")),
                None => match byte {
                    b'\r' => State::SizeLf { size },
                    b';' | b' ' | b'\t' => State::Extension { size },
                    _ => return Err(ChunkedError("invalid chunk size")),
                },
            },
            State::Extension { size } => match byte {
                b'\r' => State::SizeLf { size },
                b'\n' => return Err(ChunkedError("bare LF in chunk extension")),
                _ => {
                    self.skip()?;
                    State::Extension { size }
                }
            },
            State::SizeLf { size } => match (byte, size) {
                (b'\n', 0) => State::TrailerStart,
                (b'\n', size) => State::Data { remaining: size },
                _ => return Err(ChunkedError("expected LF after chunk size")),
            },
            State::DataCr => expect(byte, b'\r', State::DataLf, "expected CR after chunk data")?,
            State::DataLf => expect(byte, b'\n', State::Size { size: 0, digits: 0 }, "expected LF after chunk data")?,
            State::TrailerStart => match byte {
                b'\r' => State::FinalLf,
                _ => {
                    self.skip()?;
                    State::TrailerLine
                }
            },
            State::TrailerLine => match byte {
                b'\r' => State::TrailerLineLf,
                b'\n' => return Err(ChunkedError("bare LF in trailer")),
                _ => {
                    self.skip()?;
                    State::TrailerLine
                }
            },
            State::TrailerLineLf => expect(byte, b'\n', State::TrailerStart, "expected LF after trailer field")?,
            State::FinalLf => expect(byte, b'\n', State::Done, "expected LF at the end of the body")?,
            // `decode` handles these without stepping.
            state @ (State::Data { .. } | State::Done) => state,
        };
        Ok(next)
    }

    fn skip(&mut self) -> Result<(), ChunkedError> {
        self.skipped += 1;
        if self.skipped > MAX_SKIPPED {
            return Err(ChunkedError("chunk extensions or trailers too long"));
        }
        Ok(())
    }
}

fn expect(byte: u8, wanted: u8, next: State, problem: &'static str) -> Result<State, ChunkedError> {
    if byte == wanted { Ok(next) } else { Err(ChunkedError(problem)) }
}

fn hex_value(byte: u8) -> Option<u64> {
    char::from(byte).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Feeds `input` in pieces of the given sizes, decoding after each, and returns the data
    /// and what was left after the end.
    fn decode_in_pieces(input: &[u8], pieces: &[usize]) -> Result<(Vec<u8>, Vec<u8>), ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut buffer = BytesMut::new();
        let mut data = Vec::new();
        let mut rest = input;
        let mut sizes = pieces.iter().copied().cycle();
        loop {
            match decoder.decode(&mut buffer)? {
                Decoded::Data(bytes) => {
                    assert!(!bytes.is_empty(), "no empty data frames");
                    data.extend_from_slice(&bytes);
                }
                Decoded::End => return Ok((data, buffer.to_vec())),
                Decoded::NeedMore => {
                    if rest.is_empty() {
                        return Err(ChunkedError("truncated (test)"));
                    }
                    let size = sizes.next().unwrap_or(1).clamp(1, rest.len());
                    buffer.extend_from_slice(&rest[..size]);
                    rest = &rest[size..];
                }
            }
        }
    }

    fn decode_whole(input: &str) -> Result<(Vec<u8>, Vec<u8>), ChunkedError> {
        decode_in_pieces(input.as_bytes(), &[input.len().max(1)])
    }

    /// Encodes `chunks` the way a server would, with optional extensions and trailers.
    fn encode(chunks: &[Vec<u8>], extension: bool, trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks.iter().filter(|chunk| !chunk.is_empty()) {
            out.extend_from_slice(format!("{:X}", chunk.len()).as_bytes());
            if extension {
                out.extend_from_slice(b" ;name=\"value\"");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        if trailer {
            out.extend_from_slice(b"x-checksum: abc\r\nx-other: 1\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn data_comes_out_and_what_follows_the_body_stays_in_the_buffer() {
        let (data, rest) = decode_whole("5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\nHTTP/1.1").unwrap();
        assert_eq!(data, b"hello, world");
        assert_eq!(rest, b"HTTP/1.1");
    }

    #[test]
    fn trailers_and_leading_zeros_are_accepted() {
        let (data, _) = decode_whole("0003\r\nabc\r\n0\r\nx-a: 1\r\nx-b: 2\r\n\r\n").unwrap();
        assert_eq!(data, b"abc");
    }

    #[test]
    fn malformed_framing_is_an_error() {
        for (input, problem) in [
            ("\r\nabc", "chunk size missing"),
            ("g\r\n", "chunk size missing"),
            ("3x\r\nabc", "invalid chunk size"),
            ("3\nabc", "invalid chunk size"),
            ("3\r\nabcd\r\n", "expected CR after chunk data"),
            ("3\r\nabc\rX", "expected LF after chunk data"),
            ("3;ext\n", "bare LF in chunk extension"),
            ("0\r\nx-a: 1\n", "bare LF in trailer"),
            ("0\r\n\rX", "expected LF at the end of the body"),
            ("10000000000000000\r\n", "chunk size too large"),
        ] {
            assert_eq!(decode_whole(input), Err(ChunkedError(problem)), "{input:?}");
        }
    }

    #[test]
    fn sixteen_hex_digits_are_the_largest_size() {
        let mut decoder = ChunkedDecoder::new();
        let mut buffer = BytesMut::from(&b"FFFFFFFFFFFFFFFF\r\nab"[..]);
        assert_eq!(decoder.decode(&mut buffer), Ok(Decoded::Data(Bytes::from_static(b"ab"))));
        assert_eq!(decoder.decode(&mut buffer), Ok(Decoded::NeedMore));
    }

    #[test]
    fn endless_extensions_are_cut_off() {
        let mut input = b"1;".to_vec();
        input.resize(MAX_SKIPPED + 10, b'a');
        assert_eq!(decode_in_pieces(&input, &[100]), Err(ChunkedError("chunk extensions or trailers too long")));
    }

    proptest! {
        /// However the bytes are split across reads, the decoded data is the original.
        #[test]
        fn any_split_decodes_to_the_original(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
            pieces in prop::collection::vec(1usize..20, 1..6),
            extension in any::<bool>(),
            trailer in any::<bool>(),
        ) {
            let encoded = encode(&chunks, extension, trailer);
            let mut input = encoded.clone();
            input.extend_from_slice(b"next");
            let (data, rest) = decode_in_pieces(&input, &pieces).unwrap();
            prop_assert_eq!(data, chunks.concat());
            // Pieces may stop short of the trailing bytes; whatever was read stays unconsumed.
            prop_assert!(b"next".starts_with(&rest));
        }
    }
}
