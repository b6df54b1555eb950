//! The upstream client's chunked decoder, fed in reads of every size.
//! The checks live in `portcullis_upstream::fuzzing::chunked_decode`.

fn main() {
    afl::fuzz!(|data: &[u8]| portcullis_upstream::fuzzing::chunked_decode(data));
}
