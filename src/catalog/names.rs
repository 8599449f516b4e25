//! Names from users are hostile: a schema or table name becomes a folder, so it is checked before
//! it reaches the file system (locations are checked by [`crate::paths`]).

/// Longest schema or table name, in bytes (a folder name on common file systems).
pub const NAME_MAX_BYTES: usize = 255;

/// What kind of name is being checked, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A schema (Iceberg namespace, Delta folder) name for a new schema.
    Schema,
    /// The name of a schema that may exist already: a dot is let through, so that a schema an
    /// older version created with one can still be dropped.
    ExistingSchema,
    /// A table name.
    Table,
}

impl NameKind {
    fn as_str(self) -> &'static str {
        match self {
            NameKind::Schema | NameKind::ExistingSchema => "schema",
            NameKind::Table => "table",
        }
    }
}

/// Why a name is refused, or `None` when it is usable. Names may not be empty, `.` or `..`, hold a
/// path separator or control character, start or end with white space, or be longer than
/// [`NAME_MAX_BYTES`]. Schema names may not hold a dot: `catalog.schema.table` must read back,
/// and nested namespaces are not supported.
pub fn refusal(kind: NameKind, name: &str) -> Option<String> {
    let reason = if name.is_empty() {
        "it is empty".to_string()
    } else if name == "." || name == ".." {
        "`.` and `..` name folders, not tables".to_string()
    } else if name.contains(['/', '\\']) {
        "it contains a path separator (/ or \\)".to_string()
    } else if let Some(c) = name.chars().find(|c| c.is_control()) {
        format!("it contains the control character {c:?}")
    } else if name.trim() != name {
        "it starts or ends with white space".to_string()
    } else if name.len() > NAME_MAX_BYTES {
        format!("it is longer than {NAME_MAX_BYTES} bytes")
    } else if kind == NameKind::Schema && name.contains('.') {
        "it contains a dot (nested schemas are not supported)".to_string()
    } else {
        return None;
    };
    Some(format!("{} name {name:?} is not allowed: {reason}", kind.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for name in ["", ".", "..", "../../x", "/abs", "a/b", "a\\b", "a\0b", "a\nb", " a", "a "] {
            assert!(refusal(NameKind::Table, name).is_some(), "{name:?}");
        }
        assert!(refusal(NameKind::Schema, "a.b").unwrap().contains("dot"));
        assert_eq!(refusal(NameKind::ExistingSchema, "a.b"), None);
        assert!(refusal(NameKind::ExistingSchema, "..").unwrap().starts_with("schema name"));
        assert!(refusal(NameKind::Table, &"x".repeat(256)).is_some());
        for name in ["orders", "Orders 2026", "orders.v2", "ü-ñ", "t@1"] {
            assert_eq!(refusal(NameKind::Table, name), None, "{name:?}");
        }
    }
}
