//! Declared catalogs: one TOML file per catalog, the file name being the catalog's name.
//!
//! ```toml
//! # <home>/catalogs/analytics.toml  →  tables are analytics.<schema>.<table>
//! type = "iceberg-sql"
//! uri = "sqlite:analytics/catalog.db"   # relative paths are relative to this file's folder
//! warehouse = "analytics/warehouse"
//! ```
//!
//! ```toml
//! # <home>/catalogs/delta.toml  →  tables are delta.<schema>.<table>, at <root>/<schema>/<table>
//! type = "delta"
//! root = "/data/delta"
//! ```
//!
//! ```toml
//! # <home>/catalogs/shared.toml  →  an Iceberg REST catalog; secrets come from the environment
//! type = "iceberg-rest"
//! uri = "https://catalog.example.com/api/catalog"
//! warehouse = "analytics"
//! token_env = "SHARED_CATALOG_TOKEN"
//! ```
//!
//! Files are read from `<home>/catalogs/` and from any folder given with `--catalogs DIR`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A catalog file that cannot be used, with the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("catalog file {path}: {message}")]
pub struct CatalogConfigError {
    /// The file (or folder) at fault.
    pub path: PathBuf,
    /// What is wrong, naming the key when one is.
    pub message: String,
}

/// How to reach one catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogConfig {
    /// An Iceberg catalog in a SQL database (the JDBC `iceberg_tables` layout).
    IcebergSql(IcebergSqlConfig),
    /// An Iceberg REST catalog.
    IcebergRest(IcebergRestConfig),
    /// A folder of Delta tables: table `<schema>.<table>` is `<root>/<schema>/<table>`.
    Delta(DeltaConfig),
}

/// `type = "iceberg-rest"`. Secrets are never written in the file: it names the environment
/// variables that hold them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergRestConfig {
    /// The catalog's base URL, e.g. `https://catalog.example.com/api/catalog`.
    pub uri: String,
    /// The warehouse to ask the catalog for, when it serves several.
    pub warehouse: Option<String>,
    /// Environment variable holding a bearer token.
    pub token_env: Option<String>,
    /// Environment variable holding an OAuth2 client credential, `client_id:client_secret`.
    pub credential_env: Option<String>,
}

/// `type = "delta"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaConfig {
    /// The folder (or `file://` URL) holding one sub-folder per schema, or an object store prefix
    /// (`s3://bucket/prefix`, `gs://...`, `az://...`, `abfss://...`).
    pub root: String,
    /// How to reach the root's object store beyond the environment (`[storage]`).
    #[serde(default)]
    pub storage: crate::storage::StoreSettings,
}

/// `type = "iceberg-sql"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergSqlConfig {
    /// Database URI: `sqlite:PATH` (created if missing) or `postgres://user@host:port/database`.
    pub uri: String,
    /// Where new tables are placed: a folder (or `file://` URL), or an object store prefix
    /// (`s3://bucket/prefix`, `gs://...`, `az://...`, `abfss://...`).
    pub warehouse: String,
    /// How to reach the warehouse's object store beyond the environment (`[storage]`).
    #[serde(default)]
    pub storage: crate::storage::StoreSettings,
}

impl CatalogConfig {
    /// Resolves relative paths against `base`, the folder holding the file.
    fn anchored(self, base: &Path) -> Self {
        match self {
            CatalogConfig::IcebergSql(c) => CatalogConfig::IcebergSql(IcebergSqlConfig {
                uri: match c.uri.strip_prefix("sqlite:") {
                    Some(path) if !path.starts_with('/') && !path.starts_with(':') => {
                        format!("sqlite:{}", base.join(path).display())
                    }
                    _ => c.uri,
                },
                warehouse: anchor(base, c.warehouse),
                storage: c.storage,
            }),
            CatalogConfig::Delta(c) => {
                CatalogConfig::Delta(DeltaConfig { root: anchor(base, c.root), storage: c.storage })
            }
            rest @ CatalogConfig::IcebergRest(_) => rest,
        }
    }
}

/// A folder relative to `base`, unless it is absolute or a URL.
fn anchor(base: &Path, location: String) -> String {
    if location.contains("://") || location.starts_with('/') {
        location
    } else {
        base.join(location).display().to_string()
    }
}

/// Parses one catalog file's text; `path` is only used in errors and to anchor relative paths.
pub fn parse_catalog(path: &Path, text: &str) -> Result<CatalogConfig, CatalogConfigError> {
    let config = parse_typed(text).map_err(|message| CatalogConfigError { path: path.to_path_buf(), message })?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(config.anchored(base))
}

/// Reads `type`, then the rest of the file as that type's settings. (serde's tagged enums read
/// the file into a buffer first, and their errors lose the line and key.)
fn parse_typed(text: &str) -> Result<CatalogConfig, String> {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: Option<toml::Spanned<String>>,
    }
    let kind = toml::from_str::<Kind>(text).map_err(|e| toml_error(text, &e))?.kind;
    let Some(kind) = kind else { return Err("missing field `type` (iceberg-sql, iceberg-rest or delta)".into()) };
    // The settings are the file without its `type` line; the other lines keep their numbers.
    let span = kind.span();
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[span.end..].find('\n').map_or(text.len(), |i| span.end + i);
    let settings = format!("{}{}", &text[..line_start], &text[line_end..]);
    let read = |e: toml::de::Error| toml_error(&settings, &e);
    match kind.get_ref().as_str() {
        "iceberg-sql" => toml::from_str(&settings).map(CatalogConfig::IcebergSql).map_err(read),
        "iceberg-rest" => toml::from_str(&settings).map(CatalogConfig::IcebergRest).map_err(read),
        "delta" => toml::from_str(&settings).map(CatalogConfig::Delta).map_err(read),
        other => {
            Err(format!("unknown variant `{other}` of `type`, expected one of `iceberg-sql`, `iceberg-rest`, `delta`"))
        }
    }
}

/// toml's error on one line: the line, its key, and what is wrong.
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    // A missing key has no line of its own.
    let Some(span) = error.span().filter(|_| !error.message().starts_with("missing field")) else {
        return error.message().to_string();
    };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let key = text.lines().nth(line - 1).and_then(|l| l.split('=').next()).map(str::trim).unwrap_or_default();
    match key.is_empty() {
        true => format!("line {line}: {}", error.message()),
        false => format!("line {line}, key `{key}`: {}", error.message()),
    }
}

/// Reads every `*.toml` in `dirs` (missing folders are skipped), keyed by catalog name.
pub fn load_catalogs(dirs: &[PathBuf]) -> Result<BTreeMap<String, (PathBuf, CatalogConfig)>, CatalogConfigError> {
    let mut catalogs: BTreeMap<String, (PathBuf, CatalogConfig)> = BTreeMap::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CatalogConfigError { path: dir.clone(), message: e.to_string() }),
        };
        let mut files: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
        files.sort();
        for path in files {
            let error = |message: String| CatalogConfigError { path: path.clone(), message };
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(error(format!(
                    "`{name}` is not a valid catalog name (lower-case letters, digits and _, not starting with a digit)"
                )));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
            let config = parse_catalog(&path, &text)?;
            if let Some((first, _)) = catalogs.get(&name) {
                return Err(error(format!("catalog `{name}` is also declared in {}", first.display())));
            }
            catalogs.insert(name, (path, config));
        }
    }
    Ok(catalogs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_anchored_at_the_file() {
        let config = parse_catalog(
            Path::new("/etc/sluice/a.toml"),
            "type = \"iceberg-sql\"\nuri = \"sqlite:a.db\"\nwarehouse = \"wh\"\n",
        )
        .unwrap();
        assert_eq!(
            config,
            CatalogConfig::IcebergSql(IcebergSqlConfig {
                uri: "sqlite:/etc/sluice/a.db".into(),
                warehouse: "/etc/sluice/wh".into(),
                storage: Default::default(),
            })
        );
    }

    #[test]
    fn bad_keys_and_types_are_named() {
        let path = Path::new("c.toml");
        let unknown =
            parse_catalog(path, "type = \"iceberg-sql\"\nuri = \"sqlite:a.db\"\nwarehous = \"wh\"\n").unwrap_err();
        assert!(unknown.to_string().contains("unknown field `warehous`"), "{unknown}");
        let missing = parse_catalog(path, "type = \"iceberg-sql\"\nuri = \"sqlite:a.db\"\n").unwrap_err();
        assert!(missing.to_string().contains("missing field `warehouse`"), "{missing}");
        let bad_type = parse_catalog(path, "type = \"delta\"\nroot = 5\n").unwrap_err();
        assert!(bad_type.to_string().contains("line 2, key `root`: invalid type: integer `5`"), "{bad_type}");
        let kind = parse_catalog(path, "type = \"hive\"\n").unwrap_err();
        assert!(kind.to_string().contains("unknown variant `hive`"), "{kind}");
        assert!(kind.to_string().starts_with("catalog file c.toml: "), "{kind}");
    }
}
