//! Item filters with sstream-mirror's syntax (SPEC §5.2; python-simplestreams' `filters.py`):
//! `key=val`, `key!=val`, `key~regex`, `key!~regex`, judged on an item's resolved fields, all
//! of a list AND-ed. A key the item lacks compares as the empty string, and `~` searches (it is
//! not anchored), as there. A filter on a product-level key (`release=noble`) so excludes every
//! item of the other products, and with them the products. Regular expressions are the `regex`
//! crate's, which lacks Python's look-around and back-references: such a filter is refused.

use super::ResolvedItem;
use regex::Regex;
use std::fmt;
use std::sync::LazyLock;

/// Why a filter expression is refused. A regex error's own text spans lines (it draws a caret
/// under the pattern), so its last line is kept as `reason` instead of the error itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter {expression:?} is not key=value, key!=value, key~regex or key!~regex")]
    Syntax { expression: String },
    #[error("filter {expression:?} has a regular expression that cannot be compiled: {reason}")]
    Regex { expression: String, reason: String },
}

/// What a filter asks of the value of its key.
#[derive(Debug, Clone)]
enum Test {
    Equals(String),
    NotEquals(String),
    Matches(Regex),
    NotMatches(Regex),
}

/// One parsed filter expression.
#[derive(Debug, Clone)]
pub struct ItemFilter {
    expression: String,
    key: String,
    test: Test,
}

/// `filters.py`'s grammar: a key of word characters, `-` or `|`, spaces, the operator, spaces,
/// then the value to the end (trailing spaces included, as there).
static GRAMMAR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([\w|\-]+) *(!?[=~]) *(.*)$").expect("a fixed pattern"));

impl ItemFilter {
    pub fn parse(expression: &str) -> Result<Self, FilterError> {
        let syntax = || FilterError::Syntax {
            expression: expression.to_owned(),
        };
        let parts = GRAMMAR.captures(expression).ok_or_else(syntax)?;
        let (key, operator, value) = (&parts[1], &parts[2], &parts[3]);
        let compile = |pattern: &str| {
            Regex::new(pattern).map_err(|error| FilterError::Regex {
                expression: expression.to_owned(),
                reason: last_line(&error.to_string()),
            })
        };
        let test = match operator {
            "=" => Test::Equals(value.to_owned()),
            "!=" => Test::NotEquals(value.to_owned()),
            "~" => Test::Matches(compile(value)?),
            "!~" => Test::NotMatches(compile(value)?),
            _ => return Err(syntax()),
        };
        Ok(Self {
            expression: expression.to_owned(),
            key: key.to_owned(),
            test,
        })
    }

    /// The default filter for a cloud of `architecture` (as EC2 names it: `x86_64`, `arm64` …):
    /// the item's `arch` is that architecture under either its EC2 or its Ubuntu name.
    pub fn for_cloud_architecture(architecture: &str) -> Result<Self, FilterError> {
        let alternatives = match architecture {
            "x86_64" | "amd64" => "(amd64|x86_64)",
            "arm64" | "aarch64" => "(arm64|aarch64)",
            "i386" | "i686" => "(i386|i686)",
            "armhf" | "armv7l" => "(armhf|armv7l)",
            "ppc64el" | "ppc64le" => "(ppc64el|ppc64le)",
            other => return Self::parse(&format!("arch={other}")),
        };
        Self::parse(&format!("arch~{alternatives}"))
    }

    /// Whether `item` passes this filter.
    pub fn matches(&self, item: &ResolvedItem<'_>) -> bool {
        self.matches_value(item.get(&self.key))
    }

    /// Whether a thing whose value of [`Self::key`] is `value` passes (`None`: it lacks the
    /// key, which compares as the empty string): the same test over any fields, such as a
    /// catalog image's for a subscription.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        let value = value.unwrap_or("");
        match &self.test {
            Test::Equals(expected) => value == expected,
            Test::NotEquals(expected) => value != expected,
            Test::Matches(regex) => regex.is_match(value),
            Test::NotMatches(regex) => !regex.is_match(value),
        }
    }

    /// The key this filter judges.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for ItemFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

/// Whether `item` passes every filter of `filters` (an empty list passes everything).
pub fn passes_all(filters: &[ItemFilter], item: &ResolvedItem<'_>) -> bool {
    filters.iter().all(|filter| filter.matches(item))
}

/// The last non-blank line of a multi-line message, trimmed.
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("invalid pattern")
        .to_owned()
}
