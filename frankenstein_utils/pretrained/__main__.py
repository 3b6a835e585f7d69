"""``python -m frankenstein_utils.pretrained``: the shipped models' command line (``cli.py``)."""
from .cli import main

raise SystemExit(main())
