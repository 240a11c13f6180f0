"""Self-checks beyond the unit tests: long runs that must end cleanly (stress), every
pipeline at full size on made-up data (rehearsal), and the datasets in real formats and
the local file server they and the tests use (fixtures)."""
