"""compare: runs workloads eagerly, traced and compiled, beside peers; checks, times and reports."""
