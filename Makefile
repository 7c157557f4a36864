# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench docs clean mutate torture

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tachyond needs Python >= 3.11")'
	@# Progress goes to stderr: `make run`'s standard output is the daemon's export line alone.
	@echo "installing tachyond into $(VENV) (first run, or pyproject.toml changed)..." >&2
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip 1>&2
	@$(BIN)/python -m pip install -q -e '.[test,lint]' 1>&2
	@# Editable installs get no bytecode, and PYTHONDONTWRITEBYTECODE (set on some machines) stops imports
	@# from caching it: compile once, so tachyon-ctl does not recompile itself on every start.
	@$(BIN)/python -m compileall -q tachyond tachyon_ctl plugins 1>&2
	@touch $(STAMP)

install: $(STAMP)

run: install
	@$(BIN)/tachyond --dev

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Crash, fault and abuse run (docs/reliability.md): 100 SIGKILLs by default; TORTURE_KILLS=10 for a short one,
# TORTURE_SEED=N to repeat a run's random choices. Needs root for the disk-full phase (it mounts a small tmpfs).
torture: install
	$(BIN)/python -m torture $(TORTURE_ARGS)

# ruff: lint and import order (pyproject.toml [tool.ruff]); mypy: types of tachyond and tachyon_ctl.
lint: install
	$(BIN)/ruff check tachyond tachyon_ctl plugins tests bench tools torture
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/run_all.py

docs: install
	$(BIN)/python -m tachyond.rpc.docgen docs/rpc.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .tachyon-dev mutants

# Mutation testing of the money code (docs/reliability.md). The modules are listed once, in pyproject.toml
# ([tool.mutmut] only_mutate); MUTATE_FUNCTIONS names the money functions in them (mutmut's mutant names:
# module.x_function, or module.xǁClassǁmethod). Low priority: the machine is shared.
MUTATE_FUNCTIONS ?= \
  'tachyond.amounts.*' \
  'tachyond.dex.market.*' \
  'tachyond.ledger.journal.x_lock_postings__*' 'tachyond.ledger.journal.x_release_postings__*' \
  'tachyond.ledger.journal.x_check_amount_minor__*' 'tachyond.ledger.journal.x__check_text__*' \
  'tachyond.ledger.journal.xǁLedgerTxǁpost_entry__*' 'tachyond.ledger.journal.xǁLedgerTxǁ_check_posting__*' \
  'tachyond.ledger.journal.xǁLedgerTxǁ_check_effects__*' 'tachyond.ledger.journal.xǁLedgerTxǁ_apply__*' \
  'tachyond.ledger.journal.xǁLedgerTxǁbalance__*' 'tachyond.ledger.journal.xǁLedgerTxǁhold_remaining__*' \
  'tachyond.ledger.service.xǁLedgerǁ_external__*' 'tachyond.ledger.service.xǁLedgerǁtransfer__*' \
  'tachyond.ledger.service.xǁLedgerǁdeposit__*' 'tachyond.ledger.service.xǁLedgerǁwithdraw__*' \
  'tachyond.dex.store.x_record_orders_op__*' 'tachyond.dex.store.x_settle_op__*' \
  'tachyond.dex.store.x__apply_fill__*' 'tachyond.dex.store.x_coid_repeat__*' \
  'tachyond.dex.store.x__seal_order__*' 'tachyond.dex.store.x_set_engine_seq_op__*' \
  'tachyond.dex.store.x_set_engine_feed_op__*' \
  'tachyond.dex.fused.x_settle_in_tx__*' 'tachyond.dex.fused.x_place_orders_op__*' \
  'tachyond.dex.fused.x_cancel_op__*' 'tachyond.dex.fused.x_reseed_op__*'
MUTATE_JOBS ?= 1

mutate: install
	@$(BIN)/python -c 'import mutmut' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[mutate]' 1>&2
	nice -n 10 $(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTATE_FUNCTIONS)
	$(BIN)/mutmut results
