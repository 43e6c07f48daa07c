//! The pool key: which subscriptions may share one upstream connection.

use std::fmt;

use subplex_protocol::RawJson;

/// A blake3 hash over exactly the inputs that decide what an upstream believes about the
/// caller. Two subscriptions share an upstream connection if and only if their contexts
/// are equal.
///
/// Inputs, in order, each length-prefixed so no two input lists hash alike:
/// 1. the upstream name (different upstreams never share, even at the same URL), and the
///    [`SettingsFingerprint`] of its settings (after a config reload that changed them, no
///    client rides a connection dialled under the old ones);
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
        settings: &SettingsFingerprint,
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
        hasher.update(&settings.0);
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

/// A hash of everything configured for an upstream that can affect its connections (the
/// gateway decides what goes in: URLs, protocol, headers, init settings, TLS CA and hook
/// script contents...). Equal fingerprints mean a config reload left the upstream as it was.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SettingsFingerprint([u8; 32]);

impl SettingsFingerprint {
    /// The fingerprint of these parts, in order, each length-prefixed.
    pub fn of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"subplex upstream settings v1");
        for part in parts {
            field(&mut hasher, part);
        }
        SettingsFingerprint(*hasher.finalize().as_bytes())
    }

    /// This fingerprint with more parts folded in.
    pub fn with<'a>(&'a self, parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        SettingsFingerprint::of(std::iter::once(&self.0[..]).chain(parts))
    }
}

impl fmt::Debug for SettingsFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short: String = self.0[..4].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "SettingsFingerprint({short})")
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
            &SettingsFingerprint::default(),
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
    fn the_settings_fingerprint_changes_the_key() {
        let init = RawJson::empty_object();
        let with = |settings: &SettingsFingerprint| {
            SecurityContext::compute("a", settings, [("authorization", &b"x"[..])], &init)
        };
        let old = SettingsFingerprint::of([&b"ws://127.0.0.1:1/graphql"[..]]);
        let new = SettingsFingerprint::of([&b"ws://127.0.0.1:2/graphql"[..]]);
        assert_eq!(with(&old), with(&old));
        assert_ne!(with(&old), with(&new));
        // Length-prefixed parts: moving a byte from one part to the next changes it.
        assert_ne!(
            SettingsFingerprint::of([&b"ab"[..], b"c"]),
            SettingsFingerprint::of([&b"a"[..], b"bc"])
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
