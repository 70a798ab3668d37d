"""One module per command-line verb, each a thin layer over the Python API."""
