"""The experiment protocol around the bundles (not vendored into exported bundles): the resumable
runner, teacher-selection step, sweeps, comparisons, benchmarks, the report and the bundle generator."""
