//! The SSE scanner over a model server's stream, framed every which way.
//! The checks live in `portcullis_server::fuzzing::sse_scan`.

fn main() {
    afl::fuzz!(|data: &[u8]| portcullis_server::fuzzing::sse_scan(data));
}
