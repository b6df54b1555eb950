//! The configuration file: TOML text through parsing, `${VAR}` substitution and validation.
//! The checks live in `portcullis_config::fuzzing::config`.

fn main() {
    afl::fuzz!(|data: &[u8]| portcullis_config::fuzzing::config(data));
}
