//! Simplestreams JSON as it travels (SPEC §5.2): an index (`index:1.0`) or a products file
//! (`products:1.0`). Only this file knows the JSON; `index.rs` and `products.rs` make validated
//! values of what it reads. Every object of the tree is read into a [`WireNode`]: its scalar
//! fields stringified as python-simplestreams' `stringitems` does (strings as they are, numbers
//! and booleans as Python's `str()` prints them, anything else dropped), plus the children of the
//! one key that nests at that level (`products` → `versions` → `items`, or an index's `index`).
//! Unknown fields are tolerated; nested values other than the children are skipped without being
//! kept. The caps of [`crate::limits`] are checked as the parser goes, so a huge level is refused
//! before it is all in memory.

use crate::limits::{
    MAX_STREAM_ALIAS_BYTES, MAX_STREAM_CHILDREN, MAX_STREAM_FIELDS, MAX_STREAM_ITEMS,
    MAX_STREAM_STRING_BYTES,
};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

/// Where a node sits in its document, which says which of its keys holds its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    ProductsTop,
    Product,
    Version,
    Item,
    IndexTop,
    IndexEntry,
    /// One entry of an alias group of a top's `_aliases`: the fields it stands for.
    Alias,
}

impl Level {
    /// The key whose object holds this level's children, and the children's level.
    fn children(self) -> Option<(&'static str, Level)> {
        match self {
            Level::ProductsTop => Some(("products", Level::Product)),
            Level::Product => Some(("versions", Level::Version)),
            Level::Version => Some(("items", Level::Item)),
            Level::IndexTop => Some(("index", Level::IndexEntry)),
            Level::Item | Level::IndexEntry | Level::Alias => None,
        }
    }

    /// Whether this level may carry `_aliases`: a document's top.
    fn has_aliases(self) -> bool {
        matches!(self, Level::ProductsTop | Level::IndexTop)
    }

    /// The key holding a list of names at this level: an index entry's `products`.
    fn names(self) -> Option<&'static str> {
        (self == Level::IndexEntry).then_some("products")
    }
}

/// One object of a stream: its scalar fields (stringified), its children by name, for an index
/// entry the product names it lists, and for a top its `_aliases`.
#[derive(Debug, Default)]
pub(super) struct WireNode {
    pub fields: BTreeMap<String, String>,
    pub children: BTreeMap<String, WireNode>,
    pub names: Vec<String>,
    pub aliases: Aliases,
}

/// A top's `_aliases` (`util.expand_tree`): group (a field name) → value → the fields that value
/// stands for. Canonical uses them in `image-ids` streams (`crsn` → `region`, `endpoint`).
pub(super) type Aliases = BTreeMap<String, BTreeMap<String, WireNode>>;

/// Why a document's `_aliases` cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    #[error("{group:?} {name:?} is not defined in its \"_aliases\"")]
    Unknown { group: String, name: String },
    #[error("expanding its \"_aliases\" would copy more than {cap} bytes")]
    TooLarge { cap: u64 },
    #[error("expanding its \"_aliases\" gives an object more than {cap} fields")]
    TooManyFields { cap: usize },
}

/// Expands `aliases` in `node` and every node below it, as `util.expand_data` does: a field
/// whose key is an alias group and whose value is a non-empty string gains the fields of that
/// alias (keys in order; a later field sees the values an earlier expansion set). What it copies
/// is counted against [`MAX_STREAM_ALIAS_BYTES`] (`budget` is what is left).
pub(super) fn expand_aliases(
    node: &mut WireNode,
    aliases: &Aliases,
    budget: &mut u64,
) -> Result<(), AliasError> {
    if aliases.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = node.fields.keys().cloned().collect();
    for key in keys {
        let Some(group) = aliases.get(&key).filter(|group| !group.is_empty()) else {
            continue;
        };
        let Some(name) = node.fields.get(&key).filter(|name| !name.is_empty()) else {
            continue;
        };
        let alias = group.get(name).ok_or_else(|| AliasError::Unknown {
            group: key.clone(),
            name: name.clone(),
        })?;
        for (field, value) in &alias.fields {
            let cost = (field.len() + value.len()) as u64;
            *budget = budget.checked_sub(cost).ok_or(AliasError::TooLarge {
                cap: MAX_STREAM_ALIAS_BYTES,
            })?;
            node.fields.insert(field.clone(), value.clone());
        }
        if node.fields.len() > MAX_STREAM_FIELDS {
            return Err(AliasError::TooManyFields {
                cap: MAX_STREAM_FIELDS,
            });
        }
    }
    for child in node.children.values_mut() {
        expand_aliases(child, aliases, budget)?;
    }
    Ok(())
}

/// Parses `data` as one document whose top object is at `level`.
pub(super) fn parse(data: &[u8], level: Level) -> Result<WireNode, serde_json::Error> {
    let items = Cell::new(0);
    let mut deserializer = serde_json::Deserializer::from_slice(data);
    let node = NodeSeed {
        level,
        items: &items,
    }
    .deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(node)
}

fn check_string<E: de::Error>(what: &str, text: &str) -> Result<(), E> {
    if text.len() > MAX_STREAM_STRING_BYTES {
        return Err(E::custom(format_args!(
            "a {what} of {} bytes is above the cap of {MAX_STREAM_STRING_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

struct NodeSeed<'c> {
    level: Level,
    /// Items read so far in the whole document, against [`MAX_STREAM_ITEMS`].
    items: &'c Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = WireNode;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<WireNode, D::Error> {
        if self.level == Level::Item {
            let n = self.items.get() + 1;
            if n > MAX_STREAM_ITEMS {
                return Err(de::Error::custom(format_args!(
                    "more than {MAX_STREAM_ITEMS} items in one products file"
                )));
            }
            self.items.set(n);
        }
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = WireNode;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireNode, A::Error> {
        let mut node = WireNode::default();
        let children = self.level.children();
        while let Some(key) = map.next_key::<String>()? {
            check_string("key", &key)?;
            match children {
                Some((name, level)) if key == name => {
                    node.children = map.next_value_seed(ChildrenSeed {
                        level,
                        items: self.items,
                    })?;
                    continue;
                }
                _ => {}
            }
            if self.level.has_aliases() && key == "_aliases" {
                node.aliases = map.next_value_seed(AliasesSeed { items: self.items })?;
                continue;
            }
            if self.level.names() == Some(key.as_str()) {
                node.names = map.next_value::<Names>()?.0;
                continue;
            }
            // Python's dict keeps the last of duplicate keys, and `stringitems` then drops a
            // non-scalar: a later non-scalar removes an earlier scalar of the same key.
            match map.next_value::<Scalar>()? {
                Scalar::Text(text) => {
                    check_string("value", &text)?;
                    node.fields.insert(key, text);
                    if node.fields.len() > MAX_STREAM_FIELDS {
                        return Err(de::Error::custom(format_args!(
                            "more than {MAX_STREAM_FIELDS} fields in one object"
                        )));
                    }
                }
                Scalar::Other => {
                    node.fields.remove(&key);
                }
            }
        }
        Ok(node)
    }
}

struct ChildrenSeed<'c> {
    level: Level,
    items: &'c Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for ChildrenSeed<'_> {
    type Value = BTreeMap<String, WireNode>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChildrenSeed<'_> {
    type Value = BTreeMap<String, WireNode>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of named entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut children = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            check_string("name", &name)?;
            let child = map.next_value_seed(NodeSeed {
                level: self.level,
                items: self.items,
            })?;
            children.insert(name, child);
            if children.len() > MAX_STREAM_CHILDREN {
                return Err(de::Error::custom(format_args!(
                    "more than {MAX_STREAM_CHILDREN} entries in one object"
                )));
            }
        }
        Ok(children)
    }
}

/// A top's `_aliases`: groups of named aliases.
struct AliasesSeed<'c> {
    items: &'c Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for AliasesSeed<'_> {
    type Value = Aliases;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Aliases, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AliasesSeed<'_> {
    type Value = Aliases;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of alias groups")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Aliases, A::Error> {
        let mut groups = Aliases::new();
        while let Some(group) = map.next_key::<String>()? {
            check_string("alias group", &group)?;
            let aliases = map.next_value_seed(ChildrenSeed {
                level: Level::Alias,
                items: self.items,
            })?;
            groups.insert(group, aliases);
            if groups.len() > MAX_STREAM_CHILDREN {
                return Err(de::Error::custom(format_args!(
                    "more than {MAX_STREAM_CHILDREN} alias groups"
                )));
            }
        }
        Ok(groups)
    }
}

/// A field's value as `stringitems` sees it: a scalar's text, or something it drops.
enum Scalar {
    Text(String),
    Other,
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        // Python's bool is an int, and str(True) is "True".
        Ok(Scalar::Text(if v { "True" } else { "False" }.to_owned()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Text(python_float_text(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

/// An index entry's `products`: the string members of the list (anything else is skipped).
struct Names(Vec<String>);

impl<'de> serde::Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NamesVisitor)
    }
}

struct NamesVisitor;

impl<'de> Visitor<'de> for NamesVisitor {
    type Value = Names;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of product names")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
        let mut names = Vec::new();
        while let Some(value) = seq.next_element::<Scalar>()? {
            if let Scalar::Text(name) = value {
                check_string("product name", &name)?;
                names.push(name);
                if names.len() > MAX_STREAM_CHILDREN {
                    return Err(de::Error::custom(format_args!(
                        "more than {MAX_STREAM_CHILDREN} product names in one index entry"
                    )));
                }
            }
        }
        Ok(Names(names))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Names, A::Error> {
        ScalarVisitor.visit_map(map).map(|_| Names(Vec::new()))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Names, E> {
        Ok(Names(Vec::new()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Names, E> {
        Ok(Names(Vec::new()))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Names, E> {
        Ok(Names(Vec::new()))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Names, E> {
        Ok(Names(Vec::new()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Names, E> {
        Ok(Names(Vec::new()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Names, E> {
        Ok(Names(Vec::new()))
    }
}

/// A float as Python's `str()` prints it, so a filter compares the same text: the shortest
/// round-trip digits, `.0` on whole numbers, and exponent form (`1e+16`, `1.5e-05`) outside
/// 1e-4 ≤ |x| < 1e16.
fn python_float_text(v: f64) -> String {
    let magnitude = v.abs();
    if v == 0.0 || (1e-4..1e16).contains(&magnitude) {
        let text = format!("{v}");
        if text.contains('.') {
            text
        } else {
            format!("{text}.0")
        }
    } else {
        let text = format!("{v:e}");
        let (mantissa, exponent) = text.split_once('e').expect("{:e} has an exponent");
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(digits) => ('-', digits),
            None => ('+', exponent),
        };
        format!("{mantissa}e{sign}{digits:0>2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_read_as_python_prints_them() {
        let node = parse(
            br#"{"s": "x", "i": 585498624, "n": -3, "t": true, "f": false, "x": 1.5, "w": 100.0,
                "big": 1e16, "small": 0.00001, "null": null, "list": [1], "map": {"a": 1},
                "dup": "kept?", "dup": {"no": 1}}"#,
            Level::Item,
        )
        .unwrap();
        let f = |k: &str| node.fields.get(k).map(String::as_str);
        assert_eq!(f("s"), Some("x"));
        assert_eq!(f("i"), Some("585498624"));
        assert_eq!(f("n"), Some("-3"));
        assert_eq!(f("t"), Some("True"));
        assert_eq!(f("f"), Some("False"));
        assert_eq!(f("x"), Some("1.5"));
        assert_eq!(f("w"), Some("100.0"));
        assert_eq!(f("big"), Some("1e+16"));
        assert_eq!(f("small"), Some("1e-05"));
        for dropped in ["null", "list", "map", "dup"] {
            assert_eq!(f(dropped), None, "{dropped}");
        }
    }

    #[test]
    fn caps_refuse_before_the_level_is_whole() {
        let many: String = (0..=MAX_STREAM_FIELDS)
            .map(|n| format!("\"k{n}\": 1"))
            .collect::<Vec<_>>()
            .join(",");
        let error = parse(format!("{{{many}}}").as_bytes(), Level::Item).unwrap_err();
        assert!(
            error.to_string().contains("fields in one object"),
            "{error}"
        );
        let long = "a".repeat(MAX_STREAM_STRING_BYTES + 1);
        let error = parse(format!("{{\"k\": \"{long}\"}}").as_bytes(), Level::Item).unwrap_err();
        assert!(error.to_string().contains("above the cap"), "{error}");
    }
}
