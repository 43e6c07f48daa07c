//! The two WebSocket subprotocols and `Sec-WebSocket-Protocol` negotiation.

use std::fmt;

/// A GraphQL WebSocket subprotocol, named after its wire string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subprotocol {
    /// `graphql-transport-ws`: the graphql-ws library (Yoga, Apollo Server 4+, Hasura's new mode).
    GraphqlTransportWs,
    /// `graphql-ws`: the legacy subscriptions-transport-ws library (Hasura, older Apollo).
    GraphqlWs,
}

impl Subprotocol {
    /// The `Sec-WebSocket-Protocol` token.
    pub const fn wire_name(self) -> &'static str {
        match self {
            Subprotocol::GraphqlTransportWs => "graphql-transport-ws",
            Subprotocol::GraphqlWs => "graphql-ws",
        }
    }

    /// The subprotocol with this exact wire name.
    pub fn from_wire_name(name: &str) -> Option<Self> {
        match name {
            "graphql-transport-ws" => Some(Subprotocol::GraphqlTransportWs),
            "graphql-ws" => Some(Subprotocol::GraphqlWs),
            _ => None,
        }
    }

    /// Picks the subprotocol for a client from its `Sec-WebSocket-Protocol` header values,
    /// honouring the client's order of preference (RFC 6455 §4.2.2).
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        offered
            .into_iter()
            .flat_map(|value| value.split(','))
            .find_map(|token| Self::from_wire_name(token.trim()))
    }
}

impl fmt::Display for Subprotocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_in_client_order() {
        assert_eq!(
            Subprotocol::negotiate(["graphql-ws, graphql-transport-ws"]),
            Some(Subprotocol::GraphqlWs)
        );
        assert_eq!(
            Subprotocol::negotiate(["chat", "graphql-transport-ws"]),
            Some(Subprotocol::GraphqlTransportWs)
        );
        assert_eq!(Subprotocol::negotiate(["chat, mqtt"]), None);
        assert_eq!(Subprotocol::negotiate([]), None);
    }

    #[test]
    fn wire_names_round_trip() {
        for p in [Subprotocol::GraphqlTransportWs, Subprotocol::GraphqlWs] {
            assert_eq!(Subprotocol::from_wire_name(p.wire_name()), Some(p));
        }
    }
}
