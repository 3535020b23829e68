//! (being written)
/// A node (being written).
#[derive(Debug, Clone)]
pub struct Node;
