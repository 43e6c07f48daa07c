//! WebSocket clients in both dialects: [`upgrade`] answers the HTTP handshake and spawns
//! one [`session`] task per connection, which owns the socket, the protocol rules and the
//! client's running operations.
//!
//! The wire dialect is fixed at the upgrade, and every frame to the client is encoded by
//! that dialect's own types.

mod session;
mod upgrade;
mod write_through;

pub(crate) use upgrade::upgrade;
