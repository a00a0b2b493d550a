//! Maps a key path (`carrier[1].gateways[0]`) back to a line of the TOML source, so every
//! validation error names the file, the line and the key.

use toml_edit::{ImDocument, Item, Value};

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

/// Renders a path as operators write it: `customer[0].route[1].carriers`.
pub fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The 1-based line of the deepest element of `path` found in `source`.
pub fn line_of(source: &str, path: &[Seg]) -> Option<usize> {
    let doc = ImDocument::parse(source).ok()?;
    let mut best = None;
    let mut item: Option<&Item> = None;
    let mut value: Option<&Value> = None;
    let mut table = Some(doc.as_table());
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if let Some(t) = table {
                    best = t.key(k).and_then(|key| key.span()).or(best);
                    item = t.get(k);
                    value = item.and_then(Item::as_value);
                } else if let Some(inline) = value.and_then(Value::as_inline_table) {
                    best = inline.key(k).and_then(|key| key.span()).or(best);
                    value = inline.get(k);
                    item = None;
                } else {
                    break;
                }
                table = item.and_then(Item::as_table);
            }
            Seg::Index(i) => {
                if let Some(aot) = item.and_then(Item::as_array_of_tables) {
                    let t = aot.get(*i);
                    best = t.and_then(|t| t.span()).or(best);
                    table = t;
                    item = None;
                    value = None;
                } else if let Some(arr) = value.and_then(Value::as_array) {
                    value = arr.get(*i);
                    best = value.and_then(Value::span).or(best);
                    table = None;
                    item = None;
                } else {
                    break;
                }
            }
        }
    }
    best.map(|span| line_at(source, span.start))
}

/// 1-based line number of a byte offset.
pub fn line_at(source: &str, offset: usize) -> usize {
    source.as_bytes()[..offset.min(source.len())].iter().filter(|b| **b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys() {
        let src = "[server]\nlisten = []\n\n[[carrier]]\nname = \"a\"\n\n[[carrier]]\nname = \"b\"\ngateways = [\n  \"x\",\n  \"y\",\n]\n\n[limits]\nper_ip = { cps = 3 }\n";
        use Seg::*;
        assert_eq!(line_of(src, &[Key("carrier"), Index(1), Key("gateways"), Index(1)]), Some(11));
        assert_eq!(line_of(src, &[Key("carrier"), Index(1), Key("name")]), Some(8));
        assert_eq!(line_of(src, &[Key("limits"), Key("per_ip"), Key("cps")]), Some(15));
        assert_eq!(render(&[Key("carrier"), Index(1), Key("gateways"), Index(1)]), "carrier[1].gateways[1]");
    }
}
