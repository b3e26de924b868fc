"""``python -m proxy_addons.cli``: the ``jectguard`` command where its script is not on PATH."""

import sys

from proxy_addons.cli import main

sys.exit(main())
