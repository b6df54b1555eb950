//! The conformance story: written by the store backends task.
