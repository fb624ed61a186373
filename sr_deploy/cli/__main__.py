"""`python -m sr_deploy.cli`, as before the command line became a package."""

from . import main

main()
