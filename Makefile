# Two commands on a fresh clone (Python 3.11, nothing else installed):
#   make run    executes notebooks 01..04 with papermill at default size; results in outputs/
#   make test   runs the whole test suite
# Both create the virtualenv .venv and install requirements.txt first (once; again when it changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PARAMS ?= notebooks/params/default.yaml

.PHONY: run test bench venv browser mediapipe clean-outputs
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

run: venv
	$(PY) -m frankenstein_utils.apps.notebooks --params $(PARAMS) --out outputs/notebooks

# tests/test_browser.py drives JupyterLab in Debian's Chromium (Playwright's own browser download is not reachable):
# installed once with apt-get (CI runs as root on a fresh machine); a no-op when it is already there.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# MediaPipe FaceMesh (landmarks for a user's own photos) needs protobuf<5: its own environment, .venv-mediapipe.
mediapipe: $(VENV)-mediapipe/.installed
$(VENV)-mediapipe/.installed: frankenstein_utils/data/landmarks.py | venv
	$(PY) -m frankenstein_utils.data.landmarks --make-env
	touch $@

test: venv browser mediapipe
	$(PY) -m pytest -q tests

bench: venv
	$(PY) bench/bench_depth.py
	$(PY) bench/bench_generate.py
	$(PY) bench/bench_buffers.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_data.py
	$(PY) bench/bench_slider.py
	$(PY) bench/bench_fit.py
	$(PY) bench/input_gap.py

clean-outputs:
	rm -rf outputs/notebooks outputs/figures outputs/depth_synthetic outputs/tiny
