"""`python -m nbhr` is the same as the `nbhr` console script."""

from nbhr.cli import main

main()
