//! (being written)
/// A config error (being written).
#[derive(Debug, Clone)]
pub struct ConfigError;
/// A position.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pos;
