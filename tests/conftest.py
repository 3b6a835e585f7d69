import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))
# the dlib judges are single-threaded: one process per core (up to 2) where a test does not say (same results)
os.environ.setdefault("FRANKENSTEIN_JUDGE_WORKERS", str(min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def face_model():
    from frankenstein_utils.facemodel.model import load_face_model

    return load_face_model()


@pytest.fixture(scope="session")
def ict_dir():
    from frankenstein_utils.io.paths import find_dataset

    return find_dataset("ict_facekit", "identity000.obj")
