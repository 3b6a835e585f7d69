"""``python -m frankenstein_utils.train``: the training command line (``cli.py``)."""
from .cli import main

raise SystemExit(main())
