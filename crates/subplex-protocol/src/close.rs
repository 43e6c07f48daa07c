//! Every WebSocket close code subplex sends, with its reason text, in one table.
//!
//! The 44xx codes are graphql-transport-ws's (graphql-ws `PROTOCOL.md`, `CloseCode` in
//! `src/common.ts`); legacy `graphql-ws` has no vocabulary of its own, so subplex uses the
//! same codes there, which subscriptions-transport-ws clients treat as an ordinary close.

/// A close code and the reason text that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

/// Normal closure, e.g. after `connection_terminate`.
pub const NORMAL: Close = Close {
    code: 1000,
    reason: "Normal closure",
};
/// The gateway is shutting down.
pub const GOING_AWAY: Close = Close {
    code: 1001,
    reason: "Gateway shutting down",
};
/// A frame over the configured size limit. The reason sent is the size check's own text
/// (sizes included), this one is the fallback.
pub const MESSAGE_TOO_BIG: Close = Close {
    code: 1009,
    reason: "Message too big",
};
/// The client fell behind an operation's events and was cut off (the slow-consumer
/// policy). 1013 "Try Again Later": graphql-ws clients retry it, as they do 1001 and 1012,
/// rather than treat it as fatal; the gateway is fine, this client was too slow.
pub const SLOW_CONSUMER: Close = Close {
    code: 1013,
    reason: "Subscriber too slow",
};
/// Legacy `graphql-ws` after `connection_error`, as the reference server does.
pub const LEGACY_CONNECTION_ERROR: Close = Close {
    code: 1011,
    reason: "Connection error",
};
/// Any malformed or unknown message (graphql-transport-ws 4400).
pub const BAD_REQUEST: Close = Close {
    code: 4400,
    reason: "Invalid message",
};
/// `subscribe` before `connection_ack`.
pub const UNAUTHORIZED: Close = Close {
    code: 4401,
    reason: "Unauthorized",
};
/// A hook script refused the client; the reason is the script's message, so only the
/// code is a constant.
pub const FORBIDDEN_CODE: u16 = 4403;
/// A hook script failed while deciding about the client (graphql-transport-ws 4500).
pub const HOOK_FAILED: Close = Close {
    code: 4500,
    reason: "Internal server error: the connection hook failed",
};
/// `connection_init` did not arrive in time.
pub const INIT_TIMEOUT: Close = Close {
    code: 4408,
    reason: "Connection initialisation timeout",
};
/// A second `connection_init`.
pub const TOO_MANY_INIT: Close = Close {
    code: 4429,
    reason: "Too many initialisation requests",
};
/// graphql-transport-ws 4409: the reason names the id, so it is built, not a constant.
pub const SUBSCRIBER_EXISTS_CODE: u16 = 4409;

/// The 4409 reason text, exactly as the graphql-ws reference server words it.
pub fn subscriber_exists_reason(id: &str) -> String {
    let mut reason = format!("Subscriber for {id} already exists");
    // A close reason must fit in a control frame (123 bytes of UTF-8).
    truncate_reason(&mut reason);
    reason
}

/// Shortens `reason` to what a close frame can carry, on a character boundary.
pub fn truncate_reason(reason: &mut String) {
    const MAX: usize = 123;
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_in_a_close_frame() {
        let long = "x".repeat(500);
        assert_eq!(subscriber_exists_reason(&long).len(), 123);
        let mut multibyte = "é".repeat(100);
        truncate_reason(&mut multibyte);
        assert!(multibyte.len() <= 123);
        assert_eq!(
            subscriber_exists_reason("1"),
            "Subscriber for 1 already exists"
        );
    }
}
