//! The request JSON envelope, the upstream `model` translation of an accepted body, and its prompt capture.
//! The checks live in `portcullis_server::fuzzing::request_body`.

fn main() {
    afl::fuzz!(|data: &[u8]| portcullis_server::fuzzing::request_body(data));
}
