//! Usage accounting: what each key spent, recorded off the hot path and kept in the store as
//! hourly roll-ups (see [`portcullis_store::UsageStore`]).

mod recorder;

pub use recorder::{CHANNEL_CAPACITY, RecorderTask, UsageRecorder};
