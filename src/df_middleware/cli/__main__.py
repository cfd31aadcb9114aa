"""`python -m df_middleware.cli`, the same as the `df-middleware` console script."""

from df_middleware.cli import main

main()
