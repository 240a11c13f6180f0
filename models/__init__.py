"""The nets of the project: the model table (specs.py) and the NetSpec builders that
write models/<name>/*.prototxt (`make models`)."""
