//! The endpoint URL joined with the client path, and the request head written from them.
//! The checks live in `portcullis_upstream::fuzzing::upstream_path`.

fn main() {
    afl::fuzz!(|data: &[u8]| portcullis_upstream::fuzzing::upstream_path(data));
}
