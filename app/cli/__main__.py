"""``python -m app.cli``: the ``chorus`` command without its console script."""

from app.cli import main

if __name__ == "__main__":
    main()
