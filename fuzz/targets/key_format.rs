//! The `pcl_`/`pct_` secret format: parsing arbitrary text, and secrets built by the documented rule.
//! The checks live in `portcullis_auth::fuzzing::key_format`.

fn main() {
    afl::fuzz!(|data: &[u8]| portcullis_auth::fuzzing::key_format(data));
}
