import pytest

from frankenstein_utils.io import paths


def test_env_var_comes_first(tmp_path, monkeypatch):
    (tmp_path / "ict_facekit").mkdir()
    (tmp_path / "ict_facekit" / "ict_identity_model.npz").write_bytes(b"")
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    assert paths.data_roots()[0] == tmp_path
    assert paths.find_dataset("ict_facekit", "ict_identity_model.npz") == tmp_path / "ict_facekit"
    assert paths.find_data_root() == tmp_path


def test_search_order_repo_data_then_shared(monkeypatch):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    roots = paths.data_roots()
    assert roots == [paths.REPO_ROOT / "data", paths.REPO_ROOT.parent / "shared" / "data"]


def test_falls_through_to_next_root_when_file_missing(tmp_path, monkeypatch):
    (tmp_path / "ict_facekit").mkdir()  # folder present, model file absent: keep looking
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    found = paths.find_dataset("ict_facekit", "ict_identity_model.npz")
    assert found != tmp_path / "ict_facekit"


def test_missing_face_model_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "data_roots", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(paths.DataNotFoundError) as e:
        paths.find_dataset("ict_facekit", "ict_identity_model.npz")
    msg = str(e.value)
    assert "https://github.com/ICT-VGL/ICT-FaceKit" in msg
    assert str(tmp_path / "a" / "ict_facekit") in msg and "FRANKENSTEIN_DATA" in msg
    with pytest.raises(paths.DataNotFoundError, match="mmlab.ie.cuhk.edu.hk"):
        paths.find_dataset("celeba_10k")


def test_load_face_model_error_when_missing(tmp_path, monkeypatch):
    from frankenstein_utils.facemodel import model as facemodel

    monkeypatch.setattr(paths, "data_roots", lambda: [tmp_path])
    with pytest.raises(paths.DataNotFoundError, match="ICT-FaceKit"):
        facemodel.load_face_model()
