//! Where runs execute: this process, or a DataFusion Ballista cluster, chosen by
//! `EngineBuilder::cluster` (`sluice --cluster`), the home's `config.toml` (`cluster = "..."`),
//! or `SET sluice.cluster = 'df://host:port'` in a session (`''` or `'local'`: this process).

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;

use super::{Engine, Output};
use crate::cluster::{ClusterUrl, Member};
use crate::error::{Error, Result};

extensions_options! {
    /// Sluice's session settings: `SET sluice.<name> = ...`.
    pub struct SluiceOptions {
        /// The cluster runs execute on: `df://host:port` (a Ballista scheduler); empty or
        /// `local` for this process.
        pub cluster: String, default = String::new()
    }
}

impl ConfigExtension for SluiceOptions {
    const PREFIX: &'static str = "sluice";
}

/// The settings in the home's `config.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HomeConfig {
    /// The cluster runs execute on by default.
    pub cluster: Option<String>,
}

impl HomeConfig {
    /// Reads `<home>/config.toml`; none is the defaults.
    pub(super) fn read(home: &std::path::Path) -> Result<Self> {
        let path = home.join("config.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::Io { path: path.display().to_string(), source }),
        }
    }
}

/// The cluster `setting` names, if any (`''` and `local` name this process).
pub(super) fn parse_setting(setting: &str) -> Result<Option<ClusterUrl>> {
    let setting = setting.trim();
    if setting.is_empty() || setting.eq_ignore_ascii_case("local") {
        return Ok(None);
    }
    Ok(Some(ClusterUrl::parse(setting)?))
}

impl Engine {
    /// The cluster runs execute on now (`None`: this process).
    pub fn cluster(&self) -> Result<Option<ClusterUrl>> {
        let state = self.ctx.state();
        let options = state.config_options().extensions.get::<SluiceOptions>();
        parse_setting(options.map(|o| o.cluster.as_str()).unwrap_or_default())
    }

    /// `SHOW CLUSTER`: the scheduler and its executors, or this process.
    pub(super) async fn show_cluster(&self) -> Result<Output> {
        let members = match self.cluster()? {
            None => vec![Member {
                role: "local",
                id: "local".to_string(),
                address: "this process".to_string(),
                slots: Some(self.shards as u64),
                last_seen_ms: None,
                version: None,
            }],
            #[cfg(feature = "cluster")]
            Some(url) => crate::cluster::describe(&url).await?,
            #[cfg(not(feature = "cluster"))]
            Some(url) => {
                return Err(Error::Unsupported(format!(
                    "cluster {url}: this build of Sluice has no cluster support (cargo feature `cluster`)"
                )));
            }
        };
        Ok(Output::rows(crate::system::cluster_batch(&members)))
    }
}
