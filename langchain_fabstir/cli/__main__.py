"""``python -m langchain_fabstir.cli``: the ``fabstir`` command."""

import sys

from langchain_fabstir.cli import main

sys.exit(main())
