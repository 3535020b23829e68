//! Observing a host: what it did, for operators (the product layer's `observe` room).
//!
//! - [`access_log`]: each server's access log, one line per request, in the combined or JSON
//!   format; [`line`] formats a line, [`sink`] buffers lines and writes them from a thread of
//!   its own (bounded; several generations append to one file without interleaving).
//! - [`request_id`]: the `x-request-id` each request gets (its own, if acceptable, or a new one).
//!
//! What is observed comes from the one point where serving records a request, when its last
//! byte has been written: [`crate::serve::exchange`]. The types here implement its `Observer`
//! and the worker hands them down to each listener; serving never imports this module.

pub(crate) mod access_log;
pub(crate) mod line;
pub(crate) mod request_id;
pub(crate) mod sink;
