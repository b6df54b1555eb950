//! The upstream client's response-head parser, as its read loop drives it.
//! The checks live in `portcullis_upstream::fuzzing::response_head`.

fn main() {
    afl::fuzz!(|data: &[u8]| portcullis_upstream::fuzzing::response_head(data));
}
