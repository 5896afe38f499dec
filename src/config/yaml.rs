//! YAML read once: a small tree with lines, a serde `Deserializer` over it, and line lookups.
//!
//! A suite file is parsed by [`yaml_rust2`]'s event parser into a [`Yaml`] tree (scalars with their
//! style and tag, sequences, mappings in document order, aliases pointing at the anchored node),
//! every node with its 1-based line. The raw suite types deserialize from that tree, and the
//! checks that run after deserialisation ask the same tree for lines ([`Yaml::line`]), so a file is
//! read once. Anchors, aliases and tags are accepted, as they were when suites were read by
//! serde_yaml.
//!
//! # Reference: serde_yaml 0.9.34
//!
//! Suites were deserialized by `serde_yaml::from_str` (crates.io `serde_yaml` 0.9.34, the last
//! release, file `src/de.rs`), and what a suite means must not change with the parser. The
//! deserializer below re-implements that file's behaviour; `serde_yaml` stays a dev-dependency as
//! the independent reference of the differential tests (`config::suite::yaml_tests`,
//! `config::yaml::tests`). What it does, quirks included:
//!
//! - **Scalar resolution** (what a `deserialize_any` visitor sees), for a plain scalar without a
//!   tag: empty, `~`, `null`, `Null`, `NULL` are null; `true`/`True`/`TRUE` and
//!   `false`/`False`/`FALSE` are booleans (not `yes`/`no`/`on`: YAML 1.2); integers in decimal,
//!   `0x`, `0o` and `0b`, with one optional `+` (and `-` before the prefix), tried as u64, then
//!   i64, then u128, then i128; then floats as Rust parses them, finite only, plus `.inf`,
//!   `+.inf`, `-.inf` and `.nan` in three capitalisations each (`-.nan` and `+.nan` are strings).
//!   A leading zero followed only by digits (`007`, `-01`) is a string, not octal or decimal
//!   (YAML 1.2), while `007.5` is a float. `1e400` (infinite once parsed), `inf`, `NaN` and
//!   `1_000` are strings. Quoted and block scalars are always strings.
//! - **Typed requests read plain scalars only**: a field of type `f64`, `u32`, `bool` parses the
//!   plain text with the rules above (tags ignored) and refuses a quoted `"0.5"` with serde's
//!   "invalid type: string \"0.5\", expected f64". A field of type `String` takes any scalar's
//!   text as written (`name: 123` is the string `123`), and refuses sequences and mappings.
//! - **`Option`**: a plain null or empty scalar is `None`; a quoted `""` or `"null"` is `Some`.
//! - **Empty values**: a plain empty scalar (`key:` with nothing after it) is also an empty
//!   sequence or an empty mapping where one is asked for.
//! - **Tags**: `!!bool`, `!!int`, `!!float`, `!!null` force that type (a mismatch is an "invalid
//!   value" error); `!!str` and other global tags read as strings; a local tag (`!name`) on a
//!   node read by `deserialize_any` or as an enum names an enum variant, and a plain scalar with
//!   a local tag is otherwise resolved as if untagged.
//! - **Enums**: a scalar is a unit variant; a tagged node (`!variant value`) is a variant with
//!   content; an untagged mapping or sequence is refused ("expected a YAML tag starting with
//!   '!'") — serde_yaml 0.9 does not read `{variant: value}` maps as enums, so neither do we.
//! - **Duplicate keys** are passed to the visitor in document order: a struct reports serde's
//!   "duplicate field", a map keeps the last value. Merge keys (`<<`) are ordinary keys.
//! - **Error positions**: an error raised by a visitor is given the line of the innermost node
//!   whose deserialisation it passed through, and the path of that node (`cases[0].expect`,
//!   `defaults.pass_at`), printed before the message unless it is the root. An unknown field
//!   points at its key and names the mapping's path; a missing or duplicate field points at the
//!   mapping. Values reached through an alias carry the anchored node's lines and the alias's
//!   path.
//! - **Limits**: 128 nested collections ("recursion limit exceeded", without a path); alias
//!   expansions bounded at 100 per node of the document ("repetition limit exceeded").
//! - **Documents**: a file holds one document; a second one is an error. A file with no
//!   document (comments only) reads as an empty plain scalar.
//!
//! Where we differ, on purpose: a syntax error is reported as yaml-rust2 words it (serde_yaml
//! reported libyaml's words, and only when deserialisation reached the broken part: the first
//! type error before it won), and errors that serde_yaml left without a position (a second
//! document, the repetition limit) get the line where they happen. A leading byte order mark is
//! skipped. Where we cannot help it: yaml-rust2 gives no position for a tag or an anchor, so a
//! node written `&a` (or `!t`) at the end of one line with its content on the next starts on
//! the content's line (libyaml: the anchor's); and the two parsers read a few spellings
//! differently (pinned by `tests::known_parser_differences`, listed in the README's migration
//! note): a tab alone after `key:` before a letter or digit, a `-` right before a flow
//! indicator in a plain scalar inside a flow collection (refused now), `:` then an indicator in
//! such a scalar, characters YAML does not allow raw (read now), a raw NEL (a character now,
//! not a line break), an empty block scalar at the end of the file (`"\n"` now, `""` before).

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Expected, Unexpected, Visitor};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::TScalarStyle;

use super::text::Seg;

/// How a scalar is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    /// `|` block.
    Literal,
    /// `>` block.
    Folded,
}

/// What a node holds. Children are indices into the tree's nodes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Scalar {
        text: String,
        style: Style,
    },
    Seq(Vec<usize>),
    /// Entries in document order, duplicate keys included.
    Map(Vec<(usize, usize)>),
    /// An alias (`*name`) at its own line, pointing at the anchored node.
    Alias(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// 1-based line where the node starts (for a block mapping: its first key).
    pub line: usize,
    /// The resolved tag (`!name`, or `tag:yaml.org,2002:int` for `!!int`), if any.
    pub tag: Option<Box<str>>,
    pub value: Value,
}

/// One YAML document.
#[derive(Debug)]
pub(crate) struct Yaml {
    nodes: Vec<Node>,
    root: usize,
}

const TAG_NULL: &str = "tag:yaml.org,2002:null";
const TAG_BOOL: &str = "tag:yaml.org,2002:bool";
const TAG_INT: &str = "tag:yaml.org,2002:int";
const TAG_FLOAT: &str = "tag:yaml.org,2002:float";

/// Collections nested deeper than this are refused while deserializing (serde_yaml's limit).
const MAX_DEPTH: u8 = 128;

impl Yaml {
    /// Parses one YAML document.
    pub(crate) fn parse(text: &str) -> Result<Yaml, Error> {
        // a byte order mark may start a YAML stream (yaml-rust2 would read it as text)
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut parser = Parser::new_from_str(text);
        let mut nodes: Vec<Node> = Vec::new();
        // anchor id (yaml-rust2's numbering) -> node
        let mut anchors: HashMap<usize, usize> = HashMap::new();
        // open collections: the node, and for a mapping the key waiting for its value
        let mut open: Vec<(usize, Option<usize>)> = Vec::new();
        let mut root = None;
        let mut documents = 0;
        let end = loop {
            let (event, mark) = parser.next_token().map_err(|e| Error {
                message: e.info().to_string(),
                line: Some(e.marker().line()),
                located: true,
            })?;
            let line = mark.line();
            let done = match event {
                Event::Nothing | Event::StreamStart | Event::DocumentEnd => None,
                Event::StreamEnd => break line,
                Event::DocumentStart => {
                    documents += 1;
                    if documents > 1 {
                        return Err(Error::at(
                            line,
                            "deserializing from YAML containing more than one document is not supported",
                        ));
                    }
                    None
                }
                Event::Alias(anchor) => {
                    let Some(&target) = anchors.get(&anchor) else {
                        return Err(Error::at(line, "unknown anchor"));
                    };
                    nodes.push(Node {
                        line,
                        tag: None,
                        value: Value::Alias(target),
                    });
                    Some(nodes.len() - 1)
                }
                Event::Scalar(text, style, anchor, tag) => {
                    let style = match style {
                        TScalarStyle::Plain => Style::Plain,
                        TScalarStyle::SingleQuoted => Style::SingleQuoted,
                        TScalarStyle::DoubleQuoted => Style::DoubleQuoted,
                        TScalarStyle::Literal => Style::Literal,
                        TScalarStyle::Folded => Style::Folded,
                    };
                    let id = push(
                        &mut nodes,
                        &mut anchors,
                        line,
                        anchor,
                        tag,
                        Value::Scalar { text, style },
                    );
                    Some(id)
                }
                Event::SequenceStart(anchor, tag) => {
                    let id = push(
                        &mut nodes,
                        &mut anchors,
                        line,
                        anchor,
                        tag,
                        Value::Seq(Vec::new()),
                    );
                    open.push((id, None));
                    None
                }
                Event::MappingStart(anchor, tag) => {
                    let id = push(
                        &mut nodes,
                        &mut anchors,
                        line,
                        anchor,
                        tag,
                        Value::Map(Vec::new()),
                    );
                    open.push((id, None));
                    None
                }
                Event::SequenceEnd | Event::MappingEnd => match open.pop() {
                    Some((id, None)) => Some(id),
                    _ => return Err(Error::at(line, "unbalanced collection end")),
                },
            };
            let Some(id) = done else { continue };
            match open.last_mut() {
                None => root = Some(id),
                Some((parent, pending)) => match &mut nodes[*parent].value {
                    Value::Seq(items) => items.push(id),
                    Value::Map(entries) => match pending.take() {
                        None => *pending = Some(id),
                        Some(key) => entries.push((key, id)),
                    },
                    _ => unreachable!("only collections are open"),
                },
            }
        };
        let root = match root {
            Some(root) => root,
            None => {
                // no document at all (only comments): an empty plain scalar, as serde_yaml reads it
                nodes.push(Node {
                    line: end,
                    tag: None,
                    value: Value::Scalar {
                        text: String::new(),
                        style: Style::Plain,
                    },
                });
                nodes.len() - 1
            }
        };
        Ok(Yaml { nodes, root })
    }

    /// Deserializes the document.
    pub(crate) fn deserialize<'de, T: de::Deserialize<'de>>(&'de self) -> Result<T, Error> {
        let jumps = Cell::new(0);
        T::deserialize(De {
            doc: self,
            node: self.root,
            path: Path::Root,
            depth: MAX_DEPTH,
            jumps: &jumps,
            tagged: None,
        })
    }

    /// The 1-based line of the node at `path` (for a key: the line of the key), or of the deepest
    /// ancestor that exists. An alias counts as its anchored node for the steps below it; its own
    /// line is where it is written. Of duplicate keys the last one is taken (the value a map
    /// keeps).
    pub(crate) fn line(&self, path: &[Seg]) -> Option<usize> {
        let mut node = self.root;
        let mut line = self.nodes[node].line;
        for seg in path {
            let here = self.resolve(node);
            match (seg, &self.nodes[here].value) {
                (Seg::Key(k), Value::Map(entries)) => {
                    let found = entries
                        .iter()
                        .rev()
                        .find(|(key, _)| self.scalar_text(*key) == Some(*k));
                    let Some(&(key, value)) = found else {
                        return Some(line);
                    };
                    line = self.nodes[key].line;
                    node = value;
                }
                (Seg::Index(i), Value::Seq(items)) => {
                    let Some(&item) = items.get(*i) else {
                        return Some(line);
                    };
                    node = item;
                    line = self.nodes[node].line;
                }
                _ => return Some(line),
            }
        }
        Some(line)
    }

    /// An alias's target (an alias never points at another alias), else the node itself.
    fn resolve(&self, id: usize) -> usize {
        match self.nodes[id].value {
            Value::Alias(target) => target,
            _ => id,
        }
    }

    fn scalar_text(&self, id: usize) -> Option<&str> {
        match &self.nodes[id].value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

fn push(
    nodes: &mut Vec<Node>,
    anchors: &mut HashMap<usize, usize>,
    line: usize,
    anchor: usize,
    tag: Option<Tag>,
    value: Value,
) -> usize {
    nodes.push(Node {
        line,
        tag: tag.map(|t| format!("{}{}", t.handle, t.suffix).into_boxed_str()),
        value,
    });
    let id = nodes.len() - 1;
    if anchor > 0 {
        anchors.insert(anchor, id);
    }
    id
}

/// Deserializes `text`, one YAML document, into `T`.
pub(crate) fn from_str<T: de::DeserializeOwned>(text: &str) -> Result<T, Error> {
    Yaml::parse(text)?.deserialize()
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A YAML error: the message (with the path of the node before it, as `cases[0]: ...`) and the
/// line where there is one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Error {
    message: String,
    line: Option<usize>,
    /// Whether the position is final (set by the innermost node the error passed through).
    located: bool,
}

impl Error {
    fn at(line: usize, message: &str) -> Error {
        Error {
            message: message.to_string(),
            line: Some(line),
            located: true,
        }
    }

    /// Gives an error raised by a visitor its node's line and path, unless an inner node did.
    fn locate(mut self, line: usize, path: &Path) -> Error {
        if !self.located {
            self.located = true;
            self.line = Some(line);
            if !matches!(path, Path::Root) {
                self.message = format!("{path}: {}", self.message);
            }
        }
        self
    }

    /// The message, without the line.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The 1-based line, where known.
    pub(crate) fn line(&self) -> Option<usize> {
        self.line
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} at line {l}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            message: msg.to_string(),
            line: None,
            located: false,
        }
    }
}

/// Where a node is in the document, for messages: `cases[0].expect`.
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Seq(&'p Path<'p>, usize),
    Map(&'p Path<'p>, &'p str),
    /// Under a key that is not a scalar.
    Unknown(&'p Path<'p>),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        // a child of the root has no prefix; a child of anything else has `parent.`
        fn prefix(parent: &Path, f: &mut fmt::Formatter) -> fmt::Result {
            match parent {
                Path::Root => Ok(()),
                p => write!(f, "{p}."),
            }
        }
        match self {
            Path::Root => f.write_str("."),
            Path::Seq(parent, i) => write!(f, "{parent}[{i}]"),
            Path::Map(parent, key) => {
                prefix(parent, f)?;
                f.write_str(key)
            }
            Path::Unknown(parent) => {
                prefix(parent, f)?;
                f.write_str("?")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scalars

fn is_null(s: &str) -> bool {
    matches!(s, "null" | "Null" | "NULL" | "~")
}

fn to_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// `0` followed by digits only (after one sign): a string in YAML 1.2, not a number.
fn leading_zero_digits(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    s.len() > 1 && s.starts_with('0') && s.bytes().skip(1).all(|b| b.is_ascii_digit())
}

type Parse<T> = fn(&str, u32) -> Result<T, std::num::ParseIntError>;

/// A non-negative integer: `+`? then `0x`/`0o`/`0b` digits or decimal digits.
fn unsigned<T>(s: &str, parse: Parse<T>) -> Option<T> {
    let body = s.strip_prefix('+').unwrap_or(s);
    for (prefix, base) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(digits) = body.strip_prefix(prefix) {
            if digits.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(v) = parse(digits, base) {
                return Some(v);
            }
        }
    }
    if body.starts_with(['+', '-']) || leading_zero_digits(s) {
        return None;
    }
    parse(body, 10).ok()
}

/// A negative integer (or any decimal the signed type parses): `-0x`/`-0o`/`-0b` digits, or
/// decimal.
fn negative<T>(s: &str, parse: Parse<T>) -> Option<T> {
    for (prefix, base) in [("-0x", 16), ("-0o", 8), ("-0b", 2)] {
        if let Some(digits) = s.strip_prefix(prefix)
            && let Ok(v) = parse(&format!("-{digits}"), base)
        {
            return Some(v);
        }
    }
    if leading_zero_digits(s) {
        return None;
    }
    parse(s, 10).ok()
}

/// An integer of a signed type asked for by name (`i64`): both signs, all prefixes.
fn signed<T>(s: &str, parse: Parse<T>) -> Option<T> {
    let body = match s.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return None,
        Some(rest) => rest,
        None => s,
    };
    for (prefix, base) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(digits) = body.strip_prefix(prefix) {
            if digits.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(v) = parse(digits, base) {
                return Some(v);
            }
        }
        if let Some(digits) = s.strip_prefix('-').and_then(|r| r.strip_prefix(prefix))
            && let Ok(v) = parse(&format!("-{digits}"), base)
        {
            return Some(v);
        }
    }
    if leading_zero_digits(s) {
        return None;
    }
    parse(body, 10).ok()
}

/// A finite float as Rust parses it, or one of YAML's spellings of infinity and NaN.
fn float(s: &str) -> Option<f64> {
    let body = match s.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return None,
        Some(rest) => rest,
        None => s,
    };
    if matches!(body, ".inf" | ".Inf" | ".INF") {
        return Some(f64::INFINITY);
    }
    if matches!(s, "-.inf" | "-.Inf" | "-.INF") {
        return Some(f64::NEG_INFINITY);
    }
    if matches!(s, ".nan" | ".NaN" | ".NAN") {
        return Some(f64::NAN);
    }
    body.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Visits an integer: u64, then negative i64, then u128, then negative i128. Gives the visitor
/// back when `s` is none of them.
fn visit_int<'de, V: Visitor<'de>>(visitor: V, s: &str) -> Result<Result<V::Value, Error>, V> {
    if let Some(v) = unsigned(s, u64::from_str_radix) {
        return Ok(visitor.visit_u64(v));
    }
    if let Some(v) = negative(s, i64::from_str_radix) {
        return Ok(visitor.visit_i64(v));
    }
    if let Some(v) = unsigned(s, u128::from_str_radix) {
        return Ok(visitor.visit_u128(v));
    }
    if let Some(v) = negative(s, i128::from_str_radix) {
        return Ok(visitor.visit_i128(v));
    }
    Err(visitor)
}

/// A plain scalar without a (type-forcing) tag: null, bool, integer, float, else string.
fn visit_plain<'de, V: Visitor<'de>>(visitor: V, s: &'de str) -> Result<V::Value, Error> {
    if s.is_empty() || is_null(s) {
        return visitor.visit_unit();
    }
    if let Some(b) = to_bool(s) {
        return visitor.visit_bool(b);
    }
    let visitor = match visit_int(visitor, s) {
        Ok(result) => return result,
        Err(visitor) => visitor,
    };
    if !leading_zero_digits(s)
        && let Some(f) = float(s)
    {
        return visitor.visit_f64(f);
    }
    visitor.visit_borrowed_str(s)
}

/// A scalar as `deserialize_any` sees it. `tagged` is true when the node's tag already named an
/// enum variant (the tag then says nothing about the type).
fn visit_scalar<'de, V: Visitor<'de>>(
    visitor: V,
    s: &'de str,
    style: Style,
    tag: Option<&str>,
    tagged: bool,
) -> Result<V::Value, Error> {
    match tag.filter(|_| !tagged) {
        Some(TAG_BOOL) => match to_bool(s) {
            Some(b) => visitor.visit_bool(b),
            None => Err(de::Error::invalid_value(Unexpected::Str(s), &"a boolean")),
        },
        Some(TAG_INT) => match visit_int(visitor, s) {
            Ok(result) => result,
            Err(_) => Err(de::Error::invalid_value(Unexpected::Str(s), &"an integer")),
        },
        Some(TAG_FLOAT) => match float(s) {
            Some(f) => visitor.visit_f64(f),
            None => Err(de::Error::invalid_value(Unexpected::Str(s), &"a float")),
        },
        Some(TAG_NULL) => match is_null(s) {
            true => visitor.visit_unit(),
            false => Err(de::Error::invalid_value(Unexpected::Str(s), &"null")),
        },
        Some(t) if t.starts_with('!') && style == Style::Plain => visit_plain(visitor, s),
        Some(_) => visitor.visit_borrowed_str(s),
        None if style == Style::Plain => visit_plain(visitor, s),
        None => visitor.visit_borrowed_str(s),
    }
}

/// The tag as an enum variant name: a local tag (`!name` gives `name`, a bare `!` gives `!`).
fn enum_tag(tag: Option<&str>) -> Option<&str> {
    let rest = tag?.strip_prefix('!')?;
    Some(if rest.is_empty() { "!" } else { rest })
}

// ---------------------------------------------------------------------------------------------
// The deserializer

/// The enum variant a node's tag named, while its content is deserialized.
#[derive(Clone, Copy)]
struct Tagged<'de> {
    name: Option<&'static str>,
    tag: &'de str,
}

#[derive(Clone, Copy)]
struct De<'de, 'p> {
    doc: &'de Yaml,
    node: usize,
    path: Path<'p>,
    /// Collections that may still be entered.
    depth: u8,
    /// Aliases followed so far in the whole document.
    jumps: &'p Cell<usize>,
    tagged: Option<Tagged<'de>>,
}

enum Never {}

/// A visitor that accepts nothing: turns a node into serde's "invalid type: X, expected Y".
struct Reject<'a>(&'a dyn Expected);

impl<'de> Visitor<'de> for Reject<'_> {
    type Value = Never;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, 'p> De<'de, 'p> {
    fn at(&self) -> &'de Node {
        &self.doc.nodes[self.node]
    }

    /// Steps from an alias to its anchored node (the step is counted, and bounded).
    fn follow(mut self) -> Result<Self, Error> {
        if let Value::Alias(target) = self.at().value {
            let n = self.jumps.get() + 1;
            self.jumps.set(n);
            if n > self.doc.nodes.len() * 100 {
                return Err(Error::at(self.at().line, "repetition limit exceeded"));
            }
            self.node = target;
            self.tagged = None;
        }
        Ok(self)
    }

    fn line(&self) -> usize {
        self.at().line
    }

    fn tag(&self) -> Option<&'de str> {
        self.at().tag.as_deref()
    }

    /// The "invalid type" error for this node against what `exp` expected.
    fn invalid_type(&self, exp: &dyn Expected) -> Error {
        match &self.at().value {
            Value::Scalar { text, style } => {
                match visit_scalar(Reject(exp), text, *style, self.tag(), false) {
                    Ok(never) => match never {},
                    Err(e) => e,
                }
            }
            Value::Seq(_) => de::Error::invalid_type(Unexpected::Seq, exp),
            Value::Map(_) => de::Error::invalid_type(Unexpected::Map, exp),
            Value::Alias(_) => unreachable!("aliases are followed first"),
        }
    }

    fn enter(&self) -> Result<u8, Error> {
        self.depth
            .checked_sub(1)
            .ok_or_else(|| Error::at(self.line(), "recursion limit exceeded"))
    }

    fn visit_seq<V: Visitor<'de>>(
        self,
        items: &'de [usize],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let depth = self.enter()?;
        let mut access = SeqAccess {
            de: De { depth, ..self },
            items,
            next: 0,
        };
        let value = visitor.visit_seq(&mut access)?;
        if access.next < items.len() {
            return Err(de::Error::invalid_length(
                items.len(),
                &ExpectedLen {
                    map: false,
                    read: access.next,
                },
            ));
        }
        Ok(value)
    }

    fn visit_map<V: Visitor<'de>>(
        self,
        entries: &'de [(usize, usize)],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let depth = self.enter()?;
        let mut access = MapAccess {
            de: De { depth, ..self },
            entries,
            next: 0,
            key: None,
        };
        let value = visitor.visit_map(&mut access)?;
        if access.next < entries.len() {
            return Err(de::Error::invalid_length(
                entries.len(),
                &ExpectedLen {
                    map: true,
                    read: access.next,
                },
            ));
        }
        Ok(value)
    }

    /// Whether this node stands for an empty collection: a plain empty scalar.
    fn is_empty_plain(&self) -> bool {
        matches!(&self.at().value, Value::Scalar { text, style: Style::Plain } if text.is_empty())
    }

    /// A plain (or `!!<type>`-tagged literal block) scalar's text, for typed requests.
    fn plain_text(&self, type_tag: &str) -> Option<&'de str> {
        match &self.at().value {
            Value::Scalar {
                text,
                style: Style::Plain,
            } => Some(text),
            Value::Scalar {
                text,
                style: Style::Literal,
            } if self.tagged.is_none() && self.tag() == Some(type_tag) => Some(text),
            _ => None,
        }
    }

    /// A typed scalar request (`bool`, `i64`, `f64`...): parse the plain text, else "invalid type".
    fn typed<V: Visitor<'de>>(
        self,
        type_tag: &str,
        visitor: V,
        visit: impl FnOnce(&'de str, V) -> Result<Result<V::Value, Error>, V>,
    ) -> Result<V::Value, Error> {
        let de = self.follow()?;
        let (line, path) = (de.line(), de.path);
        let result = match de.plain_text(type_tag) {
            Some(text) => match visit(text, visitor) {
                Ok(r) => r,
                Err(visitor) => Err(de.invalid_type(&visitor)),
            },
            None => Err(de.invalid_type(&visitor)),
        };
        result.map_err(|e| e.locate(line, &path))
    }
}

/// "sequence of 2 elements", "map containing 1 entry": what a visitor that stopped early read.
struct ExpectedLen {
    map: bool,
    read: usize,
}

impl Expected for ExpectedLen {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let n = self.read;
        match (self.map, n) {
            (false, 1) => f.write_str("sequence of 1 element"),
            (false, _) => write!(f, "sequence of {n} elements"),
            (true, 1) => f.write_str("map containing 1 entry"),
            (true, _) => write!(f, "map containing {n} entries"),
        }
    }
}

macro_rules! typed_int {
    ($method:ident, $parse:ident, $ty:ty, $visit:ident) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.typed(TAG_INT, visitor, |s, v| {
                match $parse(s, <$ty>::from_str_radix) {
                    Some(n) => Ok(v.$visit(n)),
                    None => Err(v),
                }
            })
        }
    };
}

impl<'de, 'p> de::Deserializer<'de> for De<'de, 'p> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let de = self.follow()?;
        let (line, path) = (de.line(), de.path);
        let tag = if de.tagged.is_some() {
            None
        } else {
            enum_tag(de.tag())
        };
        let result = match (&de.at().value, tag) {
            (Value::Alias(_), _) => unreachable!("aliases are followed first"),
            (_, Some(tag)) => visitor.visit_enum(EnumAccess {
                de,
                name: None,
                tag,
            }),
            (Value::Scalar { text, style }, None) => {
                visit_scalar(visitor, text, *style, de.tag(), de.tagged.is_some())
            }
            (Value::Seq(items), None) => de.visit_seq(items, visitor),
            (Value::Map(entries), None) => de.visit_map(entries, visitor),
        };
        result.map_err(|e| e.locate(line, &path))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.typed(TAG_BOOL, visitor, |s, v| match to_bool(s) {
            Some(b) => Ok(v.visit_bool(b)),
            None => Err(v),
        })
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    typed_int!(deserialize_i64, signed, i64, visit_i64);
    typed_int!(deserialize_i128, signed, i128, visit_i128);
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    typed_int!(deserialize_u64, unsigned, u64, visit_u64);
    typed_int!(deserialize_u128, unsigned, u128, visit_u128);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.typed(TAG_FLOAT, visitor, |s, v| match float(s) {
            Some(f) => Ok(v.visit_f64(f)),
            None => Err(v),
        })
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    /// Any scalar's text as written, whatever its style or tag.
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let de = self.follow()?;
        let result = match &de.at().value {
            Value::Scalar { text, .. } => visitor.visit_borrowed_str(text),
            _ => Err(de.invalid_type(&visitor)),
        };
        result.map_err(|e| e.locate(de.line(), &de.path))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error::at(
            self.line(),
            "serialization and deserialization of bytes in YAML is not implemented",
        ))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    /// `None` for a plain null or empty scalar (or `!!null` null); `Some` for anything else.
    /// Errors of the content are placed by the content; this level places none (as serde_yaml).
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let de = self.follow()?;
        let some = match &de.at().value {
            Value::Scalar { style, .. } if *style != Style::Plain => true,
            Value::Scalar { text, .. } => match de.tag().filter(|_| de.tagged.is_none()) {
                Some(TAG_NULL) if is_null(text) => false,
                Some(TAG_NULL) => {
                    return Err(de::Error::invalid_value(Unexpected::Str(text), &"null"));
                }
                Some(_) => true,
                None => !text.is_empty() && !is_null(text),
            },
            _ => true,
        };
        if some {
            visitor.visit_some(de)
        } else {
            visitor.visit_none()
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let de = self.follow()?;
        let result = match &de.at().value {
            Value::Scalar { text, style } => {
                let null = *style == Style::Plain
                    && match de.tag().filter(|_| de.tagged.is_none()) {
                        Some(tag) => tag == TAG_NULL && is_null(text),
                        None => text.is_empty() || is_null(text),
                    };
                if null {
                    visitor.visit_unit()
                } else {
                    Err(de::Error::invalid_value(Unexpected::Str(text), &"null"))
                }
            }
            _ => Err(de.invalid_type(&visitor)),
        };
        result.map_err(|e| e.locate(de.line(), &de.path))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let depth = self.enter()?;
        visitor.visit_newtype_struct(De { depth, ..self })
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let de = self.follow()?;
        let result = match &de.at().value {
            Value::Seq(items) => de.visit_seq(items, visitor),
            _ if de.is_empty_plain() => de.visit_seq(&[], visitor),
            _ => Err(de.invalid_type(&visitor)),
        };
        result.map_err(|e| e.locate(de.line(), &de.path))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let de = self.follow()?;
        let result = match &de.at().value {
            Value::Map(entries) => de.visit_map(entries, visitor),
            _ if de.is_empty_plain() => de.visit_map(&[], visitor),
            _ => Err(de.invalid_type(&visitor)),
        };
        result.map_err(|e| e.locate(de.line(), &de.path))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    /// A scalar is a unit variant; a node with a local tag is the tag's variant.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let de = self.follow()?;
        let (line, path) = (de.line(), de.path);
        let result = if let Some(current) = de.tagged {
            match &de.at().value {
                Value::Scalar { text, .. } if !text.is_empty() => {
                    visitor.visit_enum(UnitVariantAccess { de })
                }
                _ => Err(de::Error::custom(match current.name {
                    Some(outer) => format!(
                        "deserializing nested enum in {outer}::{} from YAML is not supported yet",
                        current.tag
                    ),
                    None => format!(
                        "deserializing nested enum in !{} from YAML is not supported yet",
                        current.tag
                    ),
                })),
            }
        } else if let Some(tag) = enum_tag(de.tag()) {
            // placed by the variant's content, or by the caller
            return visitor.visit_enum(EnumAccess {
                de,
                name: Some(name),
                tag,
            });
        } else {
            match &de.at().value {
                Value::Scalar { .. } => visitor.visit_enum(UnitVariantAccess { de }),
                Value::Map(_) => Err(de::Error::invalid_type(
                    Unexpected::Map,
                    &"a YAML tag starting with '!'",
                )),
                _ => Err(de::Error::invalid_type(
                    Unexpected::Seq,
                    &"a YAML tag starting with '!'",
                )),
            }
        };
        result.map_err(|e| e.locate(line, &path))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct SeqAccess<'de, 'p> {
    de: De<'de, 'p>,
    items: &'de [usize],
    next: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(&node) = self.items.get(self.next) else {
            return Ok(None);
        };
        let index = self.next;
        self.next += 1;
        seed.deserialize(De {
            node,
            path: Path::Seq(&self.de.path, index),
            tagged: None,
            ..self.de
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.next)
    }
}

struct MapAccess<'de, 'p> {
    /// The mapping's deserializer: keys are read with its path.
    de: De<'de, 'p>,
    entries: &'de [(usize, usize)],
    next: usize,
    /// The text of the key just read, when it is a scalar.
    key: Option<&'de str>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(&(key, _)) = self.entries.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        self.key = match &self.de.doc.nodes[key].value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        };
        seed.deserialize(De {
            node: key,
            tagged: None,
            ..self.de
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some(&(_, value)) = self.next.checked_sub(1).and_then(|i| self.entries.get(i)) else {
            return Err(de::Error::custom("value requested before its key"));
        };
        let path = match self.key {
            Some(key) => Path::Map(&self.de.path, key),
            None => Path::Unknown(&self.de.path),
        };
        seed.deserialize(De {
            node: value,
            path,
            tagged: None,
            ..self.de
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.next)
    }
}

/// A node whose local tag names the variant.
struct EnumAccess<'de, 'p> {
    de: De<'de, 'p>,
    name: Option<&'static str>,
    tag: &'de str,
}

impl<'de, 'p> de::EnumAccess<'de> for EnumAccess<'de, 'p> {
    type Error = Error;
    type Variant = De<'de, 'p>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, De<'de, 'p>), Error> {
        let variant = seed.deserialize(de::value::StrDeserializer::<Error>::new(self.tag))?;
        let content = De {
            tagged: Some(Tagged {
                name: self.name,
                tag: self.tag,
            }),
            ..self.de
        };
        Ok((variant, content))
    }
}

impl<'de> de::VariantAccess<'de> for De<'de, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

/// A scalar naming a unit variant.
struct UnitVariantAccess<'de, 'p> {
    de: De<'de, 'p>,
}

impl<'de, 'p> de::EnumAccess<'de> for UnitVariantAccess<'de, 'p> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        Ok((seed.deserialize(self.de)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariantAccess<'de, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, Error> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"newtype variant",
        ))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, Error> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"tuple variant",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"struct variant",
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests;
