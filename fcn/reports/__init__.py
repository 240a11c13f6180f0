"""Reports gathered from run folders: the demo's (demo), the reproduction table
(reproduction) and the results page of every run (page, its static files in page_site/)."""
