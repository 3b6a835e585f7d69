"""``python -m frankenstein_utils.facemodel``: the old command of the face model's .obj export (``model.py``)."""
from .model import main

raise SystemExit(main())
