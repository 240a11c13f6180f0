"""Datasets: their sources and preparation (data.prepare), dataset checks, the toy set,
and the published weights table (data.weights)."""
