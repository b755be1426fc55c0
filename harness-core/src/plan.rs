//! The plan: the cartesian product of an experiment's sweep axes, one [`Cell`] per point.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Experiment;
use crate::config::values::{AxisValue, format_number};
use crate::error::{Error, Result};

/// The most cells one plan may hold.
pub const MAX_CELLS: usize = 100_000;

/// A stable, readable cell id such as `concurrency=64,isl=1024,osl=1024`.
///
/// It names the cell's folder in the store, its row in tables and its point in charts. It is
/// a valid single path segment in every store: `A-Z a-z 0-9 . _ - = ,` only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CellId(String);

impl CellId {
    /// Validates a cell id.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `s` is empty, too long, or has a character outside the set.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 512
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '=' | ','));
        if ok {
            Ok(CellId(s))
        } else {
            Err(Error::invalid(
                format!("cell id `{s}`"),
                "expected 1 to 512 characters of A-Z a-z 0-9 . _ - = , not starting with `.`",
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CellId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        CellId::new(s)
    }
}

impl From<CellId> for String {
    fn from(c: CellId) -> String {
        c.0
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The value of one parameter of a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// A word.
    Str(String),
}

impl ParamValue {
    /// The value as a whole number, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ParamValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Int(v) => Some(*v as f64),
            ParamValue::Float(v) => Some(*v),
            ParamValue::Str(_) => None,
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Int(v) => write!(f, "{v}"),
            ParamValue::Float(v) => f.write_str(&format_number(*v)),
            ParamValue::Str(s) => f.write_str(s),
        }
    }
}

impl From<&AxisValue> for ParamValue {
    fn from(v: &AxisValue) -> Self {
        match v {
            AxisValue::Int(i) => ParamValue::Int(*i),
            AxisValue::Float(x) => ParamValue::Float(*x),
            AxisValue::Str(s) => ParamValue::Str(s.as_str().to_owned()),
        }
    }
}

/// One point of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Cell {
    /// The stable id.
    pub id: CellId,
    /// Its position in the plan, from 0.
    pub index: usize,
    /// The parameters, in id order.
    pub params: Vec<(String, ParamValue)>,
}

impl Cell {
    /// Builds a cell from named parameters; the id is `name=value` joined by `,`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a name or value cannot stand in an id.
    pub fn new(index: usize, params: Vec<(String, ParamValue)>) -> Result<Self> {
        let id = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cell {
            id: CellId::new(id)?,
            index,
            params,
        })
    }

    /// A parameter by name.
    pub fn param(&self, name: &str) -> Option<&ParamValue> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// The cells of an experiment, in run order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    cells: Vec<Cell>,
}

impl Plan {
    /// The cells.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// How many cells.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether there are no cells.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// A cell by id.
    pub fn cell(&self, id: &CellId) -> Option<&Cell> {
        self.cells.iter().find(|c| &c.id == id)
    }
}

struct Axis {
    /// Parameter names this axis sets (ISL/OSL sets two).
    values: Vec<Vec<(String, ParamValue)>>,
}

impl Experiment {
    /// Expands the sweep into cells.
    ///
    /// Run order: treatments outermost (each is deployed once for its cells), then ISL/OSL
    /// pairs, then user axes, then request rates, then concurrency innermost, so a series
    /// (one ISL/OSL) runs together. Ids list `treatment`, `concurrency`, `request_rate`,
    /// `isl`, `osl`, then user axes by name.
    ///
    /// With `search`, the searched axis holds every candidate value (and, with `confirm`,
    /// `repeat=2` and `repeat=3` twins of each, for probes of a value again); the runner
    /// probes those the search needs and marks the others skipped.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the product has more than [`MAX_CELLS`] cells.
    pub fn plan(&self) -> Result<Plan> {
        let mut axes: Vec<(usize, Axis)> = Vec::new(); // (id position, axis)
        if !self.treatments.is_empty() {
            axes.push((
                0,
                Axis {
                    values: self
                        .treatments
                        .iter()
                        .map(|t| {
                            vec![(
                                "treatment".to_owned(),
                                ParamValue::Str(t.name.as_str().to_owned()),
                            )]
                        })
                        .collect(),
                },
            ));
        }
        axes.push((
            3,
            Axis {
                values: self
                    .benchmark
                    .isl_osl
                    .values()
                    .iter()
                    .map(|p| {
                        vec![
                            ("isl".to_owned(), ParamValue::Int(i64::from(p.isl.get()))),
                            ("osl".to_owned(), ParamValue::Int(i64::from(p.osl.get()))),
                        ]
                    })
                    .collect(),
            },
        ));
        for (i, (name, sweep)) in self.sweep.iter().enumerate() {
            axes.push((
                4 + i,
                Axis {
                    values: sweep
                        .values()
                        .iter()
                        .map(|v| vec![(name.as_str().to_owned(), ParamValue::from(v))])
                        .collect(),
                },
            ));
        }
        let searched = self.search.as_ref().map(|s| s.axis);
        if let Some(search) = &self.search {
            let position = match search.axis {
                crate::config::SearchAxis::Concurrency => 1,
                crate::config::SearchAxis::RequestRate => 2,
            };
            axes.push((
                position,
                Axis {
                    values: search
                        .candidates()
                        .into_iter()
                        .map(|v| {
                            let value = match search.axis {
                                crate::config::SearchAxis::Concurrency => {
                                    ParamValue::Int(v.round() as i64)
                                }
                                crate::config::SearchAxis::RequestRate => ParamValue::Float(v),
                            };
                            vec![(search.axis.param().to_owned(), value)]
                        })
                        .collect(),
                },
            ));
            if search.confirm {
                axes.push((
                    usize::MAX,
                    Axis {
                        values: (1..=i64::from(crate::search::MAX_REPEATS))
                            .map(|n| match n {
                                1 => Vec::new(),
                                n => vec![("repeat".to_owned(), ParamValue::Int(n))],
                            })
                            .collect(),
                    },
                ));
            }
        }
        if let Some(rates) = &self.request_rate
            && searched.is_none()
        {
            axes.push((
                2,
                Axis {
                    values: rates
                        .values()
                        .iter()
                        .map(|r| vec![("request_rate".to_owned(), ParamValue::Float(r.get()))])
                        .collect(),
                },
            ));
        }
        if let Some(conc) = &self.concurrency
            && searched.is_none()
        {
            axes.push((
                1,
                Axis {
                    values: conc
                        .values()
                        .iter()
                        .map(|c| {
                            vec![(
                                "concurrency".to_owned(),
                                ParamValue::Int(i64::from(c.get())),
                            )]
                        })
                        .collect(),
                },
            ));
        }
        let total = axes
            .iter()
            .try_fold(1usize, |acc, (_, a)| acc.checked_mul(a.values.len()))
            .filter(|n| *n <= MAX_CELLS)
            .ok_or_else(|| {
                Error::invalid(
                    "plan",
                    format!("the sweep expands to more than {MAX_CELLS} cells"),
                )
            })?;
        let mut cells = Vec::with_capacity(total);
        let mut index = vec![0usize; axes.len()];
        for n in 0..total {
            let mut picked: Vec<(usize, &Vec<(String, ParamValue)>)> = axes
                .iter()
                .zip(&index)
                .map(|((pos, axis), i)| (*pos, &axis.values[*i]))
                .collect();
            picked.sort_by_key(|(pos, _)| *pos);
            let params = picked
                .into_iter()
                .flat_map(|(_, kv)| kv.iter().cloned())
                .collect();
            cells.push(Cell::new(n, params)?);
            // Advance the odometer: the last axis turns fastest.
            for k in (0..axes.len()).rev() {
                index[k] += 1;
                if index[k] < axes[k].1.values.len() {
                    break;
                }
                index[k] = 0;
            }
        }
        Ok(Plan { cells })
    }
}
