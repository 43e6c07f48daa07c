//! Just enough of a GraphQL document to know which kind of operation a request runs.
//!
//! Not a parser: a tokenizer that skips comments, strings and nested selections, and reads
//! the top-level definitions' keywords and names. Validation stays with the upstream.

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
    let mut tokens = Tokens { rest: document };
    let mut found = None;
    let mut operations = 0;
    loop {
        let definition = match tokens.next()? {
            Token::End => break,
            Token::Punct(b'{') => {
                tokens.skip_block()?;
                (OperationType::Query, None)
            }
            Token::Name(keyword) => {
                let kind = match keyword {
                    "query" => Some(OperationType::Query),
                    "mutation" => Some(OperationType::Mutation),
                    "subscription" => Some(OperationType::Subscription),
                    _ => None, // fragment, or type system definitions
                };
                let mut name = None;
                // Skip to the definition's selection set, noting its name.
                loop {
                    match tokens.next()? {
                        Token::Name(word) if name.is_none() && kind.is_some() => name = Some(word),
                        Token::Punct(b'{') => {
                            tokens.skip_block()?;
                            break;
                        }
                        Token::Punct(b'(') => tokens.skip_until(b')')?,
                        Token::End => return None,
                        _ => {}
                    }
                }
                match kind {
                    Some(kind) => (kind, name),
                    None => continue,
                }
            }
            _ => return None,
        };
        operations += 1;
        match operation_name {
            Some(wanted) if definition.1 == Some(wanted) => return Some(definition.0),
            Some(_) => {}
            None => found = Some(definition.0),
        }
    }
    // Without a name, the document must hold exactly one operation.
    if operations == 1 {
        found
    } else {
        None
    }
}

enum Token<'a> {
    Name(&'a str),
    Punct(u8),
    Other,
    End,
}

struct Tokens<'a> {
    rest: &'a str,
}

impl<'a> Tokens<'a> {
    /// The next significant token; `None` on an unterminated string.
    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let bytes = self.rest.as_bytes();
            let Some(&first) = bytes.first() else {
                return Some(Token::End);
            };
            match first {
                b' ' | b'\t' | b'\n' | b'\r' | b',' => self.rest = &self.rest[1..],
                0xEF if self.rest.starts_with('\u{FEFF}') => self.rest = &self.rest[3..],
                b'#' => {
                    let end = self.rest.find(['\n', '\r']).unwrap_or(self.rest.len());
                    self.rest = &self.rest[end..];
                }
                b'"' => {
                    self.skip_string()?;
                    return Some(Token::Other);
                }
                b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                    let end = bytes
                        .iter()
                        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                        .unwrap_or(bytes.len());
                    let (name, rest) = self.rest.split_at(end);
                    self.rest = rest;
                    return Some(Token::Name(name));
                }
                b'{' | b'}' | b'(' | b')' => {
                    self.rest = &self.rest[1..];
                    return Some(Token::Punct(first));
                }
                _ => {
                    let width = self.rest.chars().next().map_or(1, char::len_utf8);
                    self.rest = &self.rest[width..];
                    return Some(Token::Other);
                }
            }
        }
    }

    fn skip_string(&mut self) -> Option<()> {
        if let Some(body) = self.rest.strip_prefix("\"\"\"") {
            // Block string: ends at an unescaped """.
            let mut search = body;
            loop {
                let at = search.find("\"\"\"")?;
                if search[..at].ends_with('\\') {
                    search = &search[at + 3..];
                    continue;
                }
                self.rest = &search[at + 3..];
                return Some(());
            }
        }
        let mut escaped = false;
        for (i, c) in self.rest.char_indices().skip(1) {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    self.rest = &self.rest[i + 1..];
                    return Some(());
                }
                '\n' | '\r' => return None,
                _ => escaped = false,
            }
        }
        None
    }

    /// Skips a `{ ... }` whose opening brace was just read.
    fn skip_block(&mut self) -> Option<()> {
        let mut depth = 1usize;
        while depth > 0 {
            match self.next()? {
                Token::Punct(b'{') => depth += 1,
                Token::Punct(b'}') => depth -= 1,
                Token::End => return None,
                _ => {}
            }
        }
        Some(())
    }

    fn skip_until(&mut self, close: u8) -> Option<()> {
        loop {
            match self.next()? {
                Token::Punct(p) if p == close => return Some(()),
                Token::End => return None,
                _ => {}
            }
        }
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
    }
}
