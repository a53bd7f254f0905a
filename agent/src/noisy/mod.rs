//! The node's noisy-neighbour detector: a verdict per pod and window from its
//! pressure and run-queue culprits ([`verdict`]), hysteresis and the findings
//! it opens, updates and resolves ([`episodes`]). Pure logic, no I/O.

pub mod episodes;
pub mod verdict;

#[cfg(test)]
mod tests;
