//! What an export will do: the teacher opened and checked, its geometry
//! settled, and the sub-networks chosen, before anything is written.

use std::path::{Path, PathBuf};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::{self, ConfigError, Overrides, PoaConfig, Resolved};
use crate::family::vit::{self, Costs, Geometry, VitError};
use crate::family::SubnetSpec;

/// Which sub-networks to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every (width, depth) of the grid.
    All,
    /// Exactly these.
    List(Vec<SubnetSpec>),
}

/// Everything the user asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub teacher: PathBuf,
    /// `config.yaml`; found from POA's layout when absent.
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
    pub selection: Selection,
    pub max_params: Option<u64>,
    pub max_macs: Option<u64>,
}

/// A sub-network of the plan with its costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedSubnet {
    pub spec: SubnetSpec,
    pub costs: Costs,
}

/// A checked export plan.
#[derive(Debug)]
pub struct Plan {
    pub checkpoint: Checkpoint,
    /// The config file used, if any.
    pub config: Option<PathBuf>,
    pub geometry: Geometry,
    pub subnets: Vec<PlannedSubnet>,
    /// Facts that had to be assumed, to be shown to the user.
    pub assumptions: Vec<String>,
    /// Tensors holding NaN or Inf, to be shown to the user.
    pub non_finite: Vec<String>,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}")]
    Teacher { path: PathBuf, source: VitError },
    #[error("sub-network {spec}")]
    Subnet { spec: SubnetSpec, source: VitError },
    #[error("no sub-network of the grid fits {0}")]
    Empty(String),
}

impl Plan {
    pub fn new(req: &Request) -> Result<Plan, PlanError> {
        let checkpoint = Checkpoint::open(&req.teacher)?;
        let teacher_err = |source| PlanError::Teacher {
            path: req.teacher.clone(),
            source,
        };
        let facts = vit::tensor_facts(&checkpoint).map_err(teacher_err)?;
        let config_path = req
            .config
            .clone()
            .or_else(|| config::find_config(&req.teacher));
        let config = config_path.as_deref().map(PoaConfig::read).transpose()?;
        let Resolved {
            geometry,
            widths,
            depths,
            assumptions,
        } = config::resolve(
            &facts,
            config_path.as_deref().zip(config.as_ref()),
            &req.overrides,
        )?;
        let specs: Vec<SubnetSpec> = match &req.selection {
            Selection::All => widths
                .iter()
                .flat_map(|&width| depths.iter().map(move |&depth| SubnetSpec { width, depth }))
                .collect(),
            Selection::List(list) => list.clone(),
        };
        let mut subnets = Vec::with_capacity(specs.len());
        for spec in specs {
            geometry
                .check(spec)
                .map_err(|source| PlanError::Subnet { spec, source })?;
            let costs = geometry.costs(spec);
            let fits = req.max_params.is_none_or(|m| costs.params <= m)
                && req.max_macs.is_none_or(|m| costs.macs <= m);
            if fits && !subnets.iter().any(|s: &PlannedSubnet| s.spec == spec) {
                subnets.push(PlannedSubnet { spec, costs });
            }
        }
        subnets.sort_by_key(|s| s.spec);
        if subnets.is_empty() {
            return Err(PlanError::Empty(limits_text(req)));
        }
        let non_finite = geometry
            .params()
            .filter_map(|p| {
                let name = p.teacher_name();
                let at = checkpoint.tensor(&name)?.first_non_finite()?;
                Some(format!("{name} (first at element {at})"))
            })
            .collect();
        Ok(Plan {
            checkpoint,
            config: config_path,
            geometry,
            subnets,
            assumptions,
            non_finite,
        })
    }

    /// The teacher file.
    pub fn teacher(&self) -> &Path {
        self.checkpoint.path()
    }
}

fn limits_text(req: &Request) -> String {
    let mut parts = Vec::new();
    if let Some(p) = req.max_params {
        parts.push(format!("--max-params {p}"));
    }
    if let Some(m) = req.max_macs {
        parts.push(format!("--max-macs {m}"));
    }
    if parts.is_empty() {
        "the selection".into()
    } else {
        parts.join(" and ")
    }
}
