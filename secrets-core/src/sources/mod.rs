//! Built-in sources, always compiled: [`MemorySource`] (the embedded default), [`EnvSource`]
//! (`env://VAR`) and [`FileSource`] (`file:///dir/name`, a directory as mounted by a volume).

mod env;
mod file;
mod memory;

pub use env::EnvSource;
pub use file::FileSource;
pub use memory::{MemoryCalls, MemorySource};
