"""Self-checks beyond the unit tests: long runs that must end cleanly (stress), every
pipeline at full size on made-up data (rehearsal), the datasets in real formats and
the local file server they and the tests use (fixtures), and made-up scored runs for the
results page with its timing on a split of 1,449 images (page_runs)."""
