//! The pool key: which subscriptions may share one upstream connection.

use std::fmt;

use subplex_protocol::RawJson;

/// A blake3 hash over exactly the inputs that decide what an upstream believes about the
/// caller. Two subscriptions share an upstream connection if and only if their contexts
/// are equal.
///
/// Inputs, in order, each length-prefixed so no two input lists hash alike:
/// 1. the upstream name (different upstreams never share, even at the same URL);
/// 2. every `(header name, value)` pair the gateway sends to or keys on for the upstream,
///    names lower-cased, sorted, so header order does not matter;
/// 3. the exact `connection_init` payload bytes that will be sent.
///
/// Deliberately left out: the client's protocol, address and operation. They do not reach
/// the upstream's idea of identity, and including them would only defeat sharing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecurityContext([u8; 32]);

impl SecurityContext {
    /// Computes the context. `headers` holds the values of the configured
    /// `security_context` and `forward_headers` headers the request carried.
    pub fn compute<'a>(
        upstream: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        init_payload: &RawJson,
    ) -> Self {
        let mut pairs: Vec<(String, &[u8])> = headers
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
        pairs.sort();
        pairs.dedup();

        let mut hasher = blake3::Hasher::new();
        hasher.update(b"subplex security context v1");
        field(&mut hasher, upstream.as_bytes());
        hasher.update(&(pairs.len() as u64).to_le_bytes());
        for (name, value) in &pairs {
            field(&mut hasher, name.as_bytes());
            field(&mut hasher, value);
        }
        field(&mut hasher, init_payload.as_str().as_bytes());
        SecurityContext(*hasher.finalize().as_bytes())
    }

    /// The first 8 hex digits: enough to tell contexts apart in logs, useless to an attacker.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn field(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

impl fmt::Debug for SecurityContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecurityContext({})", self.short())
    }
}

impl fmt::Display for SecurityContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(upstream: &str, headers: &[(&str, &str)], init: &str) -> SecurityContext {
        SecurityContext::compute(
            upstream,
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            &RawJson::parse(init).unwrap(),
        )
    }

    #[test]
    fn header_names_are_case_and_order_independent() {
        assert_eq!(
            ctx("a", &[("Authorization", "x"), ("x-tenant", "t")], "{}"),
            ctx("a", &[("x-tenant", "t"), ("authorization", "x")], "{}")
        );
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = ctx("a", &[("authorization", "x")], "{}");
        assert_ne!(base, ctx("b", &[("authorization", "x")], "{}"));
        assert_ne!(base, ctx("a", &[("authorization", "y")], "{}"));
        assert_ne!(base, ctx("a", &[], "{}"));
        assert_ne!(base, ctx("a", &[("authorization", "x")], r#"{"a":1}"#));
        // Exact bytes: a re-ordered payload is a different payload upstream.
        assert_ne!(
            ctx("a", &[], r#"{"a":1,"b":2}"#),
            ctx("a", &[], r#"{"b":2,"a":1}"#)
        );
    }

    #[test]
    fn length_prefixes_prevent_ambiguity() {
        assert_ne!(ctx("a", &[("b", "c")], "{}"), ctx("a", &[("bc", "")], "{}"));
        assert_ne!(ctx("ab", &[], "{}"), ctx("a", &[("b", "")], "{}"));
    }

    #[test]
    fn debug_shows_only_a_prefix() {
        let c = ctx("a", &[("authorization", "Bearer secret")], "{}");
        let shown = format!("{c:?}");
        assert_eq!(shown.len(), "SecurityContext()".len() + 8);
    }
}
