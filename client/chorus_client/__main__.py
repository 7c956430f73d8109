"""``python -m chorus_client``: the same command line as ``chorus-client``."""

from chorus_client.cli import main

raise SystemExit(main())
