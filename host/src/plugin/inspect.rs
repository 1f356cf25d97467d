//! `sluice plugin inspect`: what a component is (contract, role, world), what it exports and
//! imports, and what it declares it needs for a given config.

use std::path::Path;
use std::sync::Arc;

use super::{PluginRuntime, Requirement, Role, exported_roles};
use crate::error::{Error, Result};
use crate::spec::{PluginConfig, PluginSpec};

/// What `sluice plugin inspect` prints.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PluginReport {
    /// The contract package and version, e.g. `sluice:plugin@0.2.0`.
    pub contract: String,
    /// The world the component targets (one per role), if it plays one.
    pub world: Option<String>,
    /// The role it plays, if any.
    pub role: Option<Role>,
    /// Names of its exports.
    pub exports: Vec<String>,
    /// Names of its imports (WASI interfaces and `sluice:plugin/log`).
    pub imports: Vec<String>,
    /// What it declares it needs for the given config.
    pub requirements: Vec<Requirement>,
    /// Size of the component in bytes.
    pub size: usize,
    /// blake3 of the component's bytes.
    pub hash: String,
}

impl std::fmt::Display for PluginReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "contract:     {}", self.contract)?;
        writeln!(f, "world:        {}", self.world.as_deref().unwrap_or("(none: exports no Sluice role)"))?;
        writeln!(f, "size:         {} bytes", self.size)?;
        writeln!(f, "blake3:       {}", self.hash)?;
        writeln!(f, "exports:")?;
        for e in &self.exports {
            writeln!(f, "  {e}")?;
        }
        writeln!(f, "imports:")?;
        for i in &self.imports {
            writeln!(f, "  {i}")?;
        }
        if self.requirements.is_empty() {
            writeln!(f, "requirements: none (for this config)")
        } else {
            writeln!(f, "requirements (for this config):")?;
            for r in &self.requirements {
                writeln!(f, "  {r}")?;
            }
            Ok(())
        }
    }
}

impl PluginRuntime {
    /// Inspects the component at `path`; with `config`, asks it what that config requires.
    pub(crate) async fn inspect(&self, path: &Path, config: PluginConfig) -> Result<PluginReport> {
        let mut spec = PluginSpec::new(path);
        spec.config = config;
        let bytes =
            Arc::new(tokio::fs::read(path).await.map_err(|source| Error::Io { path: path.to_path_buf(), source })?);
        let component = self.compile(&spec.name, path, bytes.clone()).await?;
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let exports = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        let imports = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        let (contract, roles) = exported_roles(engine, &component);
        let world = match (contract, roles.first()) {
            (super::Contract::V0_1, Some(_)) => Some("transform".to_string()),
            (_, Some(r)) => Some(r.world().to_string()),
            (_, None) => None,
        };
        let requirements = match roles.first() {
            Some(role) if *role != Role::Transform || contract == super::Contract::V0_2 => {
                self.load_bytes(&spec, *role, bytes.clone()).await?.requirements().await?
            }
            _ => Vec::new(),
        };
        Ok(PluginReport {
            contract: contract.to_string(),
            world,
            role: roles.first().copied(),
            exports,
            imports,
            requirements,
            size: bytes.len(),
            hash: blake3::hash(&bytes).to_hex().to_string(),
        })
    }
}
