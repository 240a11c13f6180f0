"""Reports gathered from run folders: the demo's (demo) and the reproduction table
(reproduction)."""
