//! Which kind of operation a request runs, read with `apollo-parser` (the spec-compliant
//! parser of apollo-rs): the one GraphQL parser of the workspace. Validation stays with the
//! upstream.

use apollo_parser::cst::{self, Definition};
use apollo_parser::Parser;

/// The kind of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationType {
    Query,
    Mutation,
    Subscription,
}

/// The type of the operation `operation_name` selects in `document` (the only operation
/// when the name is absent). `None` when the document has no such operation or cannot be
/// read; the upstream then reports the precise error.
pub fn operation_type(document: &str, operation_name: Option<&str>) -> Option<OperationType> {
    let tree = Parser::new(document).parse();
    // apollo-parser recovers from errors and still builds a tree; a guess from a broken
    // document would be no better than the upstream's own syntax error.
    if tree.errors().next().is_some() {
        return None;
    }
    let mut operations = tree
        .document()
        .definitions()
        .filter_map(|definition| match definition {
            Definition::OperationDefinition(operation) => Some(operation),
            _ => None, // fragments, type system definitions
        });
    let operation = match operation_name {
        Some(wanted) => {
            operations.find(|op| op.name().is_some_and(|name| name.text() == wanted))?
        }
        // Without a name, the document must hold exactly one operation.
        None => match (operations.next(), operations.next()) {
            (Some(only), None) => only,
            _ => return None,
        },
    };
    Some(kind(&operation))
}

/// The type of `operation`; the `{ ... }` shorthand is a query.
fn kind(operation: &cst::OperationDefinition) -> OperationType {
    match operation.operation_type() {
        Some(keyword) if keyword.mutation_token().is_some() => OperationType::Mutation,
        Some(keyword) if keyword.subscription_token().is_some() => OperationType::Subscription,
        _ => OperationType::Query,
    }
}

#[cfg(test)]
mod tests {
    use super::OperationType::*;
    use super::*;

    #[test]
    fn single_operations() {
        assert_eq!(operation_type("{ hello }", None), Some(Query));
        assert_eq!(operation_type("query { hello }", None), Some(Query));
        assert_eq!(
            operation_type("query Q($a: Int = 1) @d { a }", None),
            Some(Query)
        );
        assert_eq!(
            operation_type("mutation M { echo(message: \"}\") }", None),
            Some(Mutation)
        );
        assert_eq!(
            operation_type("subscription { ticks(count: 3) { n } }", None),
            Some(Subscription)
        );
        assert_eq!(
            operation_type("\u{FEFF}# c { \n subscription{a}", None),
            Some(Subscription)
        );
    }

    #[test]
    fn named_selection_and_fragments() {
        let doc = r#"
            fragment F on Tick { n }
            query Q { hello }
            mutation M { echo(message: """ a } " \""" b""") }
            subscription S { ticks { ...F } }
        "#;
        assert_eq!(operation_type(doc, Some("Q")), Some(Query));
        assert_eq!(operation_type(doc, Some("M")), Some(Mutation));
        assert_eq!(operation_type(doc, Some("S")), Some(Subscription));
        assert_eq!(operation_type(doc, Some("X")), None);
        assert_eq!(operation_type(doc, None), None, "ambiguous without a name");
    }

    #[test]
    fn unreadable_documents() {
        assert_eq!(operation_type("", None), None);
        assert_eq!(operation_type("query { a", None), None);
        assert_eq!(operation_type("query { a(b: \"unterminated) }", None), None);
        assert_eq!(operation_type("}", None), None);
        assert_eq!(operation_type("mutation { a } }", None), None);
        assert_eq!(operation_type("query ($a: Int { a }", None), None);
        assert_eq!(operation_type("fragment F on Q { a }", None), None);
        assert_eq!(operation_type("type Query { a: Int }", None), None);
    }
}
