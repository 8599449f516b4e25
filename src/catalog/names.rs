//! Names and locations from users are hostile: a schema or table name becomes a folder, so it is
//! checked before it reaches the file system, and every location Sluice derives or deletes is
//! checked to stay inside the root it belongs to, after normalisation.

use std::path::{Component, Path, PathBuf};

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

/// `path` with `.` and `..` resolved lexically (no file system access); `None` when `..` would
/// climb above the start of a relative path or the root of an absolute one.
pub fn normalize(path: &Path) -> Option<PathBuf> {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !matches!(normal.components().next_back(), Some(Component::Normal(_))) {
                    return None;
                }
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    Some(normal)
}

/// A location as a local path: `file://` URLs and plain paths; `None` for other URL schemes.
pub fn local_path(location: &str) -> Option<PathBuf> {
    match location.strip_prefix("file://") {
        Some(path) => Some(PathBuf::from(path)),
        None if location.contains("://") => None,
        None => Some(PathBuf::from(location)),
    }
}

/// Whether `location` is strictly inside `root` once both are normalised (`root` itself is not
/// inside). Both may be paths or URLs of one scheme; URLs are compared by their path segments.
pub fn is_inside(root: &str, location: &str) -> bool {
    let split = |s: &str| -> Option<(String, PathBuf)> {
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (scheme.to_string(), rest),
            None => (String::new(), s),
        };
        Some((scheme, normalize(Path::new(rest))?))
    };
    match (split(root), split(location)) {
        (Some((root_scheme, root)), Some((scheme, location))) => {
            root_scheme == scheme && location != root && location.starts_with(&root)
        }
        _ => false,
    }
}

/// Whether `a` and `b` are the same folder or one lies inside the other (after normalisation,
/// both absolute).
pub fn overlaps(a: &Path, b: &Path) -> bool {
    match (normalize(a), normalize(b)) {
        (Some(a), Some(b)) => a.starts_with(&b) || b.starts_with(&a),
        _ => true,
    }
}

/// `path` made absolute and normalised, with the symbolic links of its longest existing ancestor
/// resolved (the rest does not exist yet, so it holds no links); `None` when `..` climbs above `/`.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    let path = normalize(&std::path::absolute(path).ok()?)?;
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return Some(rest.iter().rev().fold(real, |path: PathBuf, part| path.join(part)));
        }
        rest.push(existing.file_name()?.to_owned());
        existing = existing.parent()?;
    }
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

    #[test]
    fn locations_are_compared_after_normalisation() {
        assert!(is_inside("/w", "/w/s/t"));
        assert!(is_inside("file:///w/", "file:///w/s/t/data/f.parquet"));
        assert!(!is_inside("/w", "/w"));
        assert!(!is_inside("/w", "/w/s/../.."));
        assert!(!is_inside("/w", "/w/../other/t"));
        assert!(!is_inside("/w", "/wx/t"));
        assert!(!is_inside("file:///w", "s3://w/t"));
        assert!(!is_inside("/w", "/../w/t"), "climbing above the root is refused, not resolved");
        assert_eq!(normalize(Path::new("a/../../b")), None);
        assert!(overlaps(Path::new("/h"), Path::new("/h/warehouse")));
        assert!(!overlaps(Path::new("/h/out"), Path::new("/h/warehouse")));
    }
}
