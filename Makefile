# improvd: `make demo` and `make test` work on a fresh machine with python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# .venv in two steps: improvd with matplotlib is all `make demo` needs (no TensorFlow, about 300 MB);
# `make test` and `make model` add training (TensorFlow, music21) and the test tools (about 2.5 GB).
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed

.PHONY: demo test model lint bench clean install-service uninstall-service

$(RUNTIME): pyproject.toml
	test -e $(VENV)/pyvenv.cfg || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[plot]'
	touch $@

$(STAMP): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@

demo: $(RUNTIME)
	$(BIN)/improvd --seed-file examples/motif.mid --output-file continuation.mid --plot continuation.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check improvd improvd_train tests bench

# Continues the model exported/ ships: its int8 weights, dequantised, are the starting point (a copy
# of it and its card go to runs/start/, so the card's lineage can name it), trained further on the
# performance MIDI in $(DATA) (ASAP + POP909) with a fresh learning-rate schedule that decays linearly
# over MINUTES of wall clock; then export int8 (the card gains one lineage entry), evaluate, and the
# listener checks. About 2 min to prepare, MINUTES to train on 2 cores. See docs/training.md.
DATA ?= ../shared/data
MINUTES ?= 150
RUN ?= runs/default

model: $(STAMP)
	$(BIN)/python -m improvd_train.prepare --corpus '' --performances $(DATA)/asap --folder $(DATA)/pop909 \
		--out data/performance
	rm -rf runs/start $(RUN) && mkdir -p runs/start && cp exported/improvd.onnx exported/improvd.json runs/start/
	$(BIN)/python -m improvd_train.train --data data/performance --out $(RUN) --init runs/start/improvd.onnx \
		--layers 3 --units 256 --embedding 128 --seq-len 512 --batch 32 --dropout 0 --clip-norm 3 \
		--transpose 6 --stretch 0.15 --velocity-scale 0.2 --steps-per-epoch 200 --epochs 1000 --patience 1000 \
		--lr 1e-3 --lr-final 0.05 --warmup-steps 100 --max-minutes $(MINUTES)
	$(BIN)/python -m improvd_train.export --run $(RUN) --out exported/improvd --quantize
	$(BIN)/python -m improvd_train.evaluate --model exported/improvd.onnx --data data/performance \
		--report exported/improvd.eval.json
	$(BIN)/python -m improvd_train.listen --model exported/improvd.onnx --data data/performance \
		--report exported/improvd.listen.json --candidates 1,8 --plots 3

bench: $(STAMP)
	$(BIN)/python bench/step.py

# Run as a service (systemd/ and README "Run as a service"). Both install improvd, with its model,
# into an environment of its own (PREFIX), so the checkout can be cleaned, moved or deleted after:
#   make install-service                 venv in ~/.local/share/improvd, user unit -> ~/.config/systemd/user,
#                                        config.toml -> ~/.config/improvd/ (kept if present);
#                                        then: systemctl --user enable --now improvd
#   sudo make install-service SYSTEM=1   venv in /opt/improvd, user "improvd" (group audio), config
#                                        /etc/improvd/config.toml (kept if present), system unit as
#                                        /etc/systemd/system/improvd.service; then: systemctl enable --now improvd
# Upgrade: the same command again from the new checkout, then restart the service.
# make uninstall-service [SYSTEM=1] removes the unit and the venv, and keeps the config file.
XDG_DATA_HOME ?= $(HOME)/.local/share
XDG_CONFIG_HOME ?= $(HOME)/.config
PREFIX ?= $(if $(filter 1,$(SYSTEM)),/opt/improvd,$(XDG_DATA_HOME)/improvd)
USER_UNIT := $(XDG_CONFIG_HOME)/systemd/user/improvd.service
SYSTEM_UNIT := /etc/systemd/system/improvd.service
# The installed config leaves model.path unset: improvd then runs the model inside its package.
UNSET_MODEL_PATH := s|^path = "exported/improvd.onnx"|\# path = "exported/improvd.onnx"|
SYSTEMCTL ?= systemctl

install-service:
ifeq ($(SYSTEM),1)
	@test "$$(id -u)" = 0 || { echo "install-service SYSTEM=1 needs root: sudo make install-service SYSTEM=1"; exit 1; }
	umask 022 && { test -e $(PREFIX)/pyvenv.cfg || $(PYTHON) -m venv $(PREFIX); } && \
		$(PREFIX)/bin/pip install --quiet --upgrade pip && $(PREFIX)/bin/pip install --quiet --upgrade .
	getent group audio >/dev/null || groupadd --system audio
	id -u improvd >/dev/null 2>&1 || useradd --system --user-group --groups audio --home-dir /nonexistent \
		--no-create-home --shell /usr/sbin/nologin --comment "improvd MIDI daemon" improvd
	install -d -m 755 /etc/improvd
	test -e /etc/improvd/config.toml || { umask 022 && sed -e '$(UNSET_MODEL_PATH)' \
		-e 's|^realtime = false|realtime = true|' config.toml > /etc/improvd/config.toml; }
	umask 022 && sed 's|/opt/improvd/|$(PREFIX)/|' systemd/improvd-system.service > $(SYSTEM_UNIT)
	$(SYSTEMCTL) daemon-reload
	@echo "installed in $(PREFIX); start it with: systemctl enable --now improvd"
else
	test -e $(PREFIX)/pyvenv.cfg || $(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install --quiet --upgrade .
	install -d $(dir $(USER_UNIT)) $(XDG_CONFIG_HOME)/improvd
	sed 's|%h/.local/share/improvd/|$(PREFIX)/|' systemd/improvd.service > $(USER_UNIT)
	test -e $(XDG_CONFIG_HOME)/improvd/config.toml || \
		sed '$(UNSET_MODEL_PATH)' config.toml > $(XDG_CONFIG_HOME)/improvd/config.toml
	$(SYSTEMCTL) --user daemon-reload || echo "no user systemd here: run 'systemctl --user daemon-reload' in your session"
	@echo "installed in $(PREFIX); start it with: systemctl --user enable --now improvd"
endif

uninstall-service:
ifeq ($(SYSTEM),1)
	@test "$$(id -u)" = 0 || { echo "uninstall-service SYSTEM=1 needs root: sudo make uninstall-service SYSTEM=1"; exit 1; }
	-$(SYSTEMCTL) disable --now improvd
	rm -f $(SYSTEM_UNIT)
	$(SYSTEMCTL) daemon-reload
	test ! -e $(PREFIX)/pyvenv.cfg || rm -rf $(PREFIX)
	@echo "removed the unit and $(PREFIX); kept /etc/improvd/config.toml and the user improvd (userdel improvd)"
else
	-$(SYSTEMCTL) --user disable --now improvd
	rm -f $(USER_UNIT)
	$(SYSTEMCTL) --user daemon-reload || true
	test ! -e $(PREFIX)/pyvenv.cfg || rm -rf $(PREFIX)
	@echo "removed the unit and $(PREFIX); kept $(XDG_CONFIG_HOME)/improvd/config.toml"
endif

clean:
	rm -rf $(VENV) *.egg-info build
