//! The credential headers: `Authorization: Bearer`, `x-api-key`, and the client address from `X-Forwarded-For`.
//! The checks live in `portcullis_server::fuzzing::credential_header`.

fn main() {
    afl::fuzz!(|data: &[u8]| portcullis_server::fuzzing::credential_header(data));
}
