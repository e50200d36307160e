# Welcome mailer: every command a user or CI needs. `make help` lists them.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
CSV    ?= input.csv

.DEFAULT_GOAL := help
.PHONY: help venv run test test-fast lint esp smtp-relay bounce-mailbox events input bench lock clean stack-up stack-down \
        stack-status docker-env contact suppressions bench-ui

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

venv: $(BIN)/.installed  ## create .venv from requirements-dev.lock (runtime + tests), welcome_mailer installed editable

run: venv  ## run welcome_emails once on the embedded default: make run [CSV=path/to/file.csv] [TEMPLATE=name]
	$(BIN)/python -m include.local.run_embedded $(CSV) $(if $(TEMPLATE),--template $(TEMPLATE))

# Two parts: every test but those marked `alone` on two processes (the stack tests together on one, sharing
# one stack), then the `alone` ones (wall clocks, Postgres counters) one at a time. Fails if either part fails.
TEST_WORKERS ?= 2
test: venv  ## the whole test suite (unit, DAG, integration, end-to-end); Postgres tests skip without a server unless CI=true
	@status=0; \
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) -m "not alone" || status=$$?; \
	$(BIN)/python -m pytest tests -m alone || status=$$?; \
	exit $$status

test-fast: venv  ## everything but the end-to-end runs (embedded and stack)
	$(BIN)/python -m pytest tests -m "not slow"

lint: venv  ## ruff (including Airflow's AIR rules)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

esp: venv  ## start the mock ESP in the foreground on 127.0.0.1:8025 (flags: python -m include.mocks.esp --help)
	$(BIN)/python -m include.mocks.esp

smtp-relay: venv  ## start the mock SMTP relay in the foreground on 127.0.0.1:2525 (flags: python -m include.mocks.smtp_relay --help)
	$(BIN)/python -m include.mocks.smtp_relay

bounce-mailbox: venv  ## serve the mock relay's bounce reports over IMAP (Dovecot) on 127.0.0.1:2143
	$(BIN)/python -m include.mocks.imap_server

events: venv  ## serve the provider event and unsubscribe endpoints on their own, on make run's ledger (127.0.0.1:8026/welcome-mailer/)
	WELCOME_MAILER_HOME=$${WELCOME_MAILER_HOME:-$(CURDIR)} $(BIN)/python -m welcome_mailer.web

input: venv  ## regenerate input.csv (deterministic)
	$(BIN)/python -m include.tools.generate_contacts --rows 10000 --seed 42 --output input.csv

bench: venv  ## benchmark: 10k/100k end to end (embedded and on the Celery stack), each as a ratio to the lean durable yardstick; 1M parse + claim (RATED=100000: also at RATE=500 messages/s, against rows / rate + its fixed cost); appends to bench/results.jsonl
	$(BIN)/python -m include.bench --stack $(if $(RATED),--rated $(RATED) --rate $(or $(RATE),500))

bench-ui: venv  ## the ledger pages on a generated 10M-contact Postgres ledger: lookup, overview and contact-list page times (CONTACTS=n)
	$(BIN)/python -m include.bench.bench_ui $(if $(CONTACTS),--contacts $(CONTACTS))

stack-up: venv  ## start the local Celery stack (needs PostgreSQL and Redis): UI/API on 127.0.0.1:28080
	$(BIN)/python -m include.local.stack up

stack-down: venv  ## stop every process stack-up started
	$(BIN)/python -m include.local.stack down

stack-status: venv  ## show the stack's processes and health
	$(BIN)/python -m include.local.stack status

# Operator commands act on the ledger make run uses (<WELCOME_MAILER_HOME>/data/ledger.db, the home being this
# directory unless set), unless AIRFLOW_CONN_CONTACTS_DB names another.
LEDGER_ARGS = $(if $(AIRFLOW_CONN_CONTACTS_DB),,--url "$$($(BIN)/python -c 'from include.local.run_embedded import embedded_ledger_url as u; print(u())')")
OPERATOR_ENV = WELCOME_MAILER_HOME=$${WELCOME_MAILER_HOME:-$(CURDIR)} $(if $(AIRFLOW_CONN_CONTACTS_DB),,\
	WELCOME_MAILER_ERASE_KEY=$${WELCOME_MAILER_ERASE_KEY:-$$($(BIN)/python -c 'from include.local.run_embedded import embedded_erase_key as k; print(k())')})

contact: venv  ## one contact: make contact EMAIL=a@b.c [ACTION=suppress|erase|release REASON="why"] (default: lookup)
	$(OPERATOR_ENV) $(BIN)/welcome-mailer contact $(or $(ACTION),lookup) "$(EMAIL)" $(if $(REASON),--reason "$(REASON)") $(LEDGER_ARGS)

suppressions: venv  ## suppress every address of a CSV: make suppressions FILE=list.csv REASON="why"
	$(OPERATOR_ENV) $(BIN)/welcome-mailer suppressions import "$(FILE)" --reason "$(REASON)" $(LEDGER_ARGS)

lock: venv  ## rewrite requirements.lock (runtime) and requirements-dev.lock from the venv (after changing requirements*.txt)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m include.tools.lock requirements.txt > requirements.lock.new
	$(BIN)/python -m include.tools.lock requirements-dev.txt > requirements-dev.lock.new
	mv requirements.lock.new requirements.lock && mv requirements-dev.lock.new requirements-dev.lock

clean:  ## remove the local Airflow homes, ledger, reports and logs (not the venv; stop the stack first)
	rm -rf .airflow .stack data

docker-env:  ## write .env for docker compose: your uid, fresh secrets, the mock ESP (keeps what .env has)
	bash include/local/stack/docker-env.sh .env
