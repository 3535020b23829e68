//! (being written)
/// A listen address (being written).
#[derive(Debug, Clone)]
pub struct ListenAddr;
