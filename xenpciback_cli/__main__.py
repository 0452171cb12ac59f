"""Allow ``python -m xenpciback_cli``."""

from xenpciback_cli.cli import main

if __name__ == "__main__":
    main()
