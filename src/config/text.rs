//! Small serde helpers shared by the suite and models.toml readers, and the YAML line locator.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// A scalar read as text: YAML users write `answers: [2, two, 3]` and mean strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(if v { "yes" } else { "no" }.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One string or a list of strings (`not_contains: x` or `not_contains: [x, y]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(Text(s)) = seq.next_element::<Text>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A step in a path into a YAML document.
#[derive(Debug, Clone, Copy)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Finds the line of a node in a YAML document, for errors found after deserialisation
/// (a missing image, a duplicate id). A document the locator cannot parse gives no lines.
pub struct Locator {
    root: Option<marked_yaml::Node>,
}

impl Locator {
    pub fn new(text: &str) -> Self {
        let opts = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(false);
        Self {
            root: marked_yaml::parse_yaml_with_options(0, text, opts).ok(),
        }
    }

    /// The 1-based line of the node at `path` (for a key: the line of the key), or of the deepest
    /// ancestor that exists.
    pub fn line(&self, path: &[Seg]) -> Option<usize> {
        let mut node = self.root.as_ref()?;
        let mut line = start_line(node);
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    let map = node.as_mapping()?;
                    let Some((key, value)) = map.iter().find(|(key, _)| key.as_str() == *k) else {
                        return line;
                    };
                    line = key.span().start().map(|m| m.line()).or(line);
                    node = value;
                }
                Seg::Index(i) => {
                    let Some(next) = node.as_sequence().and_then(|s| s.get_node(*i)) else {
                        return line;
                    };
                    node = next;
                    line = start_line(node).or(line);
                }
            }
        }
        line
    }
}

fn start_line(node: &marked_yaml::Node) -> Option<usize> {
    node.span().start().map(|m| m.line())
}

/// Splits a serde_yaml error into its message and line.
pub fn yaml_error(e: &serde_yaml::Error) -> (String, Option<usize>) {
    let line = e.location().map(|l| l.line());
    let mut msg = e.to_string();
    if let Some(loc) = e.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(pos) = msg.find(&suffix) {
            msg.replace_range(pos..pos + suffix.len(), "");
        }
    }
    (msg, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_finds_keys_and_items() {
        let doc = "name: x\ncases:\n  - id: a\n    image: a.png\n  - { id: b, question: q }\n";
        let loc = Locator::new(doc);
        assert_eq!(loc.line(&[Seg::Key("name")]), Some(1));
        assert_eq!(loc.line(&[Seg::Key("cases"), Seg::Index(0)]), Some(3));
        assert_eq!(
            loc.line(&[Seg::Key("cases"), Seg::Index(0), Seg::Key("image")]),
            Some(4)
        );
        assert_eq!(loc.line(&[Seg::Key("cases"), Seg::Index(1)]), Some(5));
        // a missing key falls back to its parent's line
        assert_eq!(
            loc.line(&[Seg::Key("cases"), Seg::Index(1), Seg::Key("nope")]),
            Some(5)
        );
    }

    #[test]
    fn text_accepts_numbers_and_booleans() {
        let v: Vec<Text> = serde_yaml::from_str("[2, two, 2.5, true]").unwrap();
        let v: Vec<String> = v.into_iter().map(|t| t.0).collect();
        assert_eq!(v, ["2", "two", "2.5", "yes"]);
    }
}
