//! Per-connection limits that the server rules of both WebSocket dialects enforce.

/// Bounds on what one client connection may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationLimits {
    /// Operations running at once on one connection; more are refused one by one.
    pub max_operations: usize,
    /// Longest operation id accepted, in bytes. Ids are echoed in every event and kept
    /// for the operation's life, so an unbounded id is unbounded memory per operation.
    pub max_id_bytes: usize,
}

impl Default for OperationLimits {
    /// 200 operations, 128-byte ids: graphql-ws ids are UUIDs (36 bytes) and
    /// subscriptions-transport-ws ids are counters.
    fn default() -> Self {
        OperationLimits {
            max_operations: 200,
            max_id_bytes: 128,
        }
    }
}

impl OperationLimits {
    /// The message a refused operation's client sees.
    pub fn too_many_operations(&self) -> String {
        format!(
            "too many operations on this connection: at most {} may run at once \
             (server.max_operations_per_connection); complete one first",
            self.max_operations
        )
    }

    /// The message for an over-long id.
    pub fn id_too_long(&self, len: usize) -> String {
        format!(
            "operation id of {len} bytes is longer than the {} byte limit \
             (server.max_operation_id_bytes)",
            self.max_id_bytes
        )
    }
}
