//! The DAG of a workflow: steps by index, their dependencies and dependents,
//! and a topological order. Building it refuses what the API server could
//! not check: a cycle (named step by step) or a dependency on a step that
//! does not exist. Pure.

use std::collections::HashMap;

use crate::api::workflow::WorkflowSpec;

/// Why a workflow's steps do not form a DAG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("step {step:?} depends on {missing:?}, which is not a step of this workflow")]
    UnknownDependency { step: String, missing: String },
    #[error("two steps are named {0:?}")]
    DuplicateStep(String),
    #[error("the steps form a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dag {
    pub names: Vec<String>,
    /// `deps[i]`: the steps `i` waits for.
    pub deps: Vec<Vec<usize>>,
    /// `dependents[i]`: the steps that wait for `i`.
    pub dependents: Vec<Vec<usize>>,
    /// A topological order (dependencies first).
    pub order: Vec<usize>,
}

impl Dag {
    pub fn from_spec(spec: &WorkflowSpec) -> Result<Self, DagError> {
        let edges: Vec<(String, Vec<String>)> = spec
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.depends_on.clone()))
            .collect();
        Self::new(&edges)
    }

    /// From `(name, dependsOn)` pairs.
    pub fn new(steps: &[(String, Vec<String>)]) -> Result<Self, DagError> {
        let mut index = HashMap::new();
        for (i, (name, _)) in steps.iter().enumerate() {
            if index.insert(name.as_str(), i).is_some() {
                return Err(DagError::DuplicateStep(name.clone()));
            }
        }
        let mut deps = vec![Vec::new(); steps.len()];
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, (name, depends_on)) in steps.iter().enumerate() {
            for dep in depends_on {
                let &d = index.get(dep.as_str()).ok_or_else(|| DagError::UnknownDependency {
                    step: name.clone(),
                    missing: dep.clone(),
                })?;
                if !deps[i].contains(&d) {
                    deps[i].push(d);
                    dependents[d].push(i);
                }
            }
        }
        let names: Vec<String> = steps.iter().map(|(n, _)| n.clone()).collect();
        let order = topological(&deps, &dependents)
            .map_err(|cycle| DagError::Cycle(cycle.iter().map(|&i| names[i].clone()).collect()))?;
        Ok(Self {
            names,
            deps,
            dependents,
            order,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// Kahn's algorithm; on a cycle, returns the steps of one cycle, closed
/// (`a -> b -> a`).
fn topological(deps: &[Vec<usize>], dependents: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..deps.len()).filter(|&i| waiting[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &d in dependents[i].iter().rev() {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() == deps.len() {
        return Ok(order);
    }
    // Walk dependencies from a step still waiting until one repeats.
    let Some(start) = (0..deps.len()).find(|&i| waiting[i] > 0) else {
        return Err(vec![]);
    };
    let mut path = vec![start];
    let mut current = start;
    loop {
        let Some(&next) = deps[current].iter().find(|&&d| waiting[d] > 0) else {
            return Err(path);
        };
        if let Some(at) = path.iter().position(|&p| p == next) {
            let mut cycle = path[at..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return Err(cycle);
        }
        path.push(next);
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(spec: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        spec.iter()
            .map(|(n, d)| ((*n).to_owned(), d.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn orders_dependencies_first() {
        let dag = Dag::new(&steps(&[("c", &["b"]), ("a", &[]), ("b", &["a"])])).expect("a DAG");
        let names: Vec<&str> = dag.order.iter().map(|&i| dag.names[i].as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn a_cycle_is_refused_and_named() {
        let err = Dag::new(&steps(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])])).expect_err("cycle");
        let DagError::Cycle(cycle) = &err else { panic!("{err}") };
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4, "{err}");
        assert!(err.to_string().starts_with("the steps form a cycle: "));
    }

    #[test]
    fn unknown_dependencies_are_refused() {
        let err = Dag::new(&steps(&[("a", &["ghost"])])).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "step \"a\" depends on \"ghost\", which is not a step of this workflow"
        );
    }
}
