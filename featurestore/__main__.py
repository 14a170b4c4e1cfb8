"""``python -m featurestore``: the same as the ``featurestore`` command."""
from featurestore.cli import main

main(prog_name="featurestore")
