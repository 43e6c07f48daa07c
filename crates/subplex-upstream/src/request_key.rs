//! The deduplication key: which operations of one connection may share one upstream
//! operation.

use subplex_protocol::{normalised_request, operation_type, GraphqlRequest, OperationType};

/// A blake3 hash of a request's normalised text ([`normalised_request`]: the document's
/// tokens, the operation name, and `variables` and `extensions` with sorted keys). Within
/// one connection, and so one security context, operations with equal keys run as one
/// upstream operation. Only the hash is kept: 32 bytes per operation instead of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RequestKey([u8; 32]);

impl RequestKey {
    /// The key of a subscription; `None` for anything else. Queries and mutations sent
    /// over WebSocket are never shared: each must run (a mutation has effects) and each
    /// client must get its own single result, which a late joiner would miss.
    pub fn for_subscription(request: &GraphqlRequest) -> Option<Self> {
        let kind = operation_type(&request.query, request.operation_name.as_deref());
        (kind == Some(OperationType::Subscription)).then(|| Self::of(request))
    }

    fn of(request: &GraphqlRequest) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"subplex request v1\0");
        hasher.update(normalised_request(request).as_bytes());
        RequestKey(*hasher.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subscriptions_are_keyed() {
        let key = |query: &str| RequestKey::for_subscription(&GraphqlRequest::new(query));
        assert!(key("subscription { ticks { n } }").is_some());
        assert_eq!(
            key("subscription { ticks { n } }"),
            key("subscription{ticks{n}}")
        );
        assert!(key("mutation { echo(message: \"x\") }").is_none());
        assert!(key("{ hello }").is_none());
        assert!(key("query { hello }").is_none());
        // Unreadable documents are left to the upstream, unshared.
        assert!(key("subscription {").is_none());
    }
}
