-- Runs once, when the compose Postgres volume is created: the ledger's own database.
CREATE DATABASE contacts OWNER airflow;
