"""`python -m router.cli`: the `router` command."""
from router.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
