//! Locations are hostile too: every location Sluice derives or deletes is checked to stay
//! inside the root it belongs to, after normalisation. Pure path arithmetic, no file system
//! access except in [`resolve`].

use std::path::{Component, Path, PathBuf};

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
