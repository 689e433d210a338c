//! What an export will do: the teacher opened and checked, its geometry
//! settled, and the sub-networks chosen, before anything is written.

use std::path::{Path, PathBuf};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::{self, ConfigError, Overrides, PoaConfig};
use crate::family::{self, Costs, Family, FamilyError, OpenError, SubnetSpec, Teacher};

/// Which sub-networks to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every sub-network of the grid.
    All,
    /// Exactly these (checked against the family's grid).
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

impl Request {
    /// Every sub-network of `teacher`, its config found from its layout.
    pub fn all(teacher: impl Into<PathBuf>) -> Request {
        Request {
            teacher: teacher.into(),
            config: None,
            overrides: Overrides::default(),
            selection: Selection::All,
            max_params: None,
            max_macs: None,
        }
    }
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
    /// The teacher's family, which knows its grid, slicing and graphs.
    pub family: Box<dyn Family>,
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
    Teacher { path: PathBuf, source: FamilyError },
    #[error("sub-network {spec}")]
    Subnet {
        spec: SubnetSpec,
        source: FamilyError,
    },
    #[error("no sub-network of the grid fits {0}")]
    Empty(String),
}

impl Plan {
    pub fn new(req: &Request) -> Result<Plan, PlanError> {
        let checkpoint = Checkpoint::open(&req.teacher)?;
        let config_path = req
            .config
            .clone()
            .or_else(|| config::find_config(&req.teacher));
        let config = config_path.as_deref().map(PoaConfig::read).transpose()?;
        let Teacher {
            family,
            grid,
            assumptions,
        } = family::open(&checkpoint, config.as_ref(), &req.overrides).map_err(|e| match e {
            OpenError::Tensors(source) => PlanError::Teacher {
                path: req.teacher.clone(),
                source,
            },
            OpenError::Config(e) => PlanError::Config(e),
        })?;
        let specs = match &req.selection {
            Selection::All => grid,
            Selection::List(list) => list.clone(),
        };
        let mut subnets = Vec::with_capacity(specs.len());
        for spec in specs {
            let spec = family
                .check(&spec)
                .map_err(|source| PlanError::Subnet { spec, source })?;
            let costs = family.costs(&spec);
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
        // Every width's slice reads the same teacher tensors.
        let non_finite = family
            .width_slice(subnets[0].spec.width)
            .into_iter()
            .filter_map(|t| {
                let at = checkpoint.tensor(&t.name)?.first_non_finite()?;
                Some(format!("{} (first at element {at})", t.name))
            })
            .collect();
        Ok(Plan {
            checkpoint,
            config: config_path,
            family,
            subnets,
            assumptions,
            non_finite,
        })
    }

    /// The teacher file.
    pub fn teacher(&self) -> &Path {
        self.checkpoint.path()
    }

    /// The widths of the plan's sub-networks, each once, narrowest first:
    /// one shared weight file each.
    pub fn widths(&self) -> Vec<u32> {
        let mut widths: Vec<u32> = self.subnets.iter().map(|s| s.spec.width).collect();
        widths.dedup();
        widths
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
