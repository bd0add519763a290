//! Examples live beside this crate as `[[example]]` targets; what several of them share is here.

pub mod probes;
