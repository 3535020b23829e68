//! Route table (being written).
use crate::config::{ConfigError, ServerConfig};
use crate::handler::{BoxFuture, Request};
use crate::host::Registry;

/// A server's routes.
pub struct RouteTable {}

impl RouteTable {
    /// Build from a server's config.
    pub fn build(_server: &ServerConfig, _registry: &Registry) -> Result<RouteTable, ConfigError> {
        todo!()
    }
    /// Route one request.
    pub fn dispatch(&self, _req: Request) -> BoxFuture {
        todo!()
    }
}
