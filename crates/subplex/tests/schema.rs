//! `gateway.schema.json` against the config types and against docs/configuration.md: the
//! committed schema is what the types generate, and the docs list exactly its keys.

use std::collections::BTreeSet;

use serde_json::Value;

const COMMITTED: &str = include_str!("../../../gateway.schema.json");
const DOCS: &str = include_str!("../../../docs/configuration.md");
const REGENERATE: &str = "cargo run -p subplex -- schema > gateway.schema.json";

#[test]
fn the_committed_schema_is_what_the_config_types_generate() {
    assert!(
        COMMITTED == subplex::config::json_schema(),
        "gateway.schema.json is stale: the config types changed. Regenerate it with `{REGENERATE}`"
    );
}

/// Every key of the schema as a dotted path: `server.listen`, `server.cors.allow_origins`,
/// `upstreams.<name>.reconnect.initial_ms`, `routes[].path`. Tables are paths, not keys.
fn schema_keys(schema: &Value) -> BTreeSet<String> {
    let defs = &schema["$defs"];
    let resolve = |node: &Value| -> Value {
        // An optional table (`Option<T>`) is `anyOf: [{$ref}, {type: null}]`.
        let reference = node["$ref"].as_str().or_else(|| {
            node["anyOf"]
                .as_array()?
                .iter()
                .find_map(|branch| branch["$ref"].as_str())
        });
        match reference {
            Some(reference) => defs[reference.trim_start_matches("#/$defs/")].clone(),
            None => node.clone(),
        }
    };
    fn walk(
        table: &Value,
        path: &str,
        resolve: &dyn Fn(&Value) -> Value,
        keys: &mut BTreeSet<String>,
    ) {
        let Some(properties) = table["properties"].as_object() else {
            return;
        };
        for (name, property) in properties {
            let child = format!("{path}{}{name}", if path.is_empty() { "" } else { "." });
            let property = resolve(property);
            if property["properties"].is_object() {
                walk(&property, &child, resolve, keys);
            } else if property["additionalProperties"]["$ref"].is_string() {
                let entry = resolve(&property["additionalProperties"]);
                walk(&entry, &format!("{child}.<name>"), resolve, keys);
            } else if property["items"]["$ref"].is_string() {
                let item = resolve(&property["items"]);
                walk(&item, &format!("{child}[]"), resolve, keys);
            } else {
                keys.insert(child);
            }
        }
    }
    let mut keys = BTreeSet::new();
    walk(schema, "", &resolve, &mut keys);
    keys
}

/// Every key row of the key tables in docs/configuration.md, under its section heading:
/// `## \`[upstreams.<name>]\`` and the row `| \`url\` | …` give `upstreams.<name>.url`.
fn documented_keys(docs: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section: Option<String> = None;
    for line in docs.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading
                .strip_prefix('`')
                .and_then(|rest| rest.strip_suffix('`'))
                .and_then(|table| {
                    if let Some(array) = table.strip_prefix("[[") {
                        return Some(format!("{}[]", array.strip_suffix("]]")?));
                    }
                    Some(table.strip_prefix('[')?.strip_suffix(']')?.to_owned())
                });
            continue;
        }
        let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) else {
            continue;
        };
        if let Some((key, _)) = row.split_once('`') {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

#[test]
fn every_key_of_the_schema_is_documented_and_every_documented_key_exists() {
    let schema: Value = serde_json::from_str(&subplex::config::json_schema()).unwrap();
    let in_schema = schema_keys(&schema);
    let in_docs = documented_keys(DOCS);
    assert!(in_schema.contains("upstreams.<name>.reconnect.give_up_after_ms"));
    assert!(in_schema.contains("routes[].path"));
    let undocumented: Vec<_> = in_schema.difference(&in_docs).collect();
    let unknown: Vec<_> = in_docs.difference(&in_schema).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md and the config types disagree.\n\
         keys missing from the docs' tables: {undocumented:?}\n\
         keys in the docs' tables that the config does not have: {unknown:?}"
    );
}
