"""`python -m edgempq`: run the command line."""

from .cli import main

main()
