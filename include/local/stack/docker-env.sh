#!/usr/bin/env bash
# Write .env for docker-compose.yaml (`make docker-env`): your uid, fresh secrets, and the mock ESP's
# profile unless a provider is set. Keys already in the file are kept and only missing ones are added, so
# it is safe to run again; .env.example documents every key.
#
#   bash include/local/stack/docker-env.sh [path, default .env]
set -euo pipefail
env_file="${1:-.env}"
touch "${env_file}"
chmod 600 "${env_file}"

# A key counts as set when it has a value: the empty ones of a copied .env.example are filled in place.
has() { grep -q "^$1=." "${env_file}"; }
add() {
    if has "$1"; then
        return
    elif grep -q "^$1=$" "${env_file}"; then
        sed -i.bak "s|^$1=\$|$1=$2|" "${env_file}" && rm "${env_file}.bak"
    else
        printf '%s=%s\n' "$1" "$2" >>"${env_file}"
    fi
}
# n random bytes, URL-safe base64 (32 bytes give a valid Fernet key).
random() { head -c "$1" /dev/urandom | base64 | tr '+/' '-_' | tr -d '\n'; }

add AIRFLOW_UID "$(id -u)"
add AIRFLOW_JWT_SECRET "$(random 32)"
add AIRFLOW_API_SECRET_KEY "$(random 32)"
add AIRFLOW_FERNET_KEY "$(random 32)"
add AIRFLOW_ADMIN_PASSWORD "$(random 18)"
# URL-safe: they go into database URLs as they are. A Postgres volume made before keeps the password it
# was made with: put that one here (an older version used "airflow").
add POSTGRES_PASSWORD "$(random 24)"
add LEDGER_DB_PASSWORD "$(random 24)"
add WELCOME_MAILER_ERASE_KEY "$(random 32)"
add WELCOME_MAILER_UNSUBSCRIBE_SECRET "$(random 32)"
if ! has AIRFLOW_CONN_ESP_DEFAULT; then
    # The mock ESP, and the secret its events are signed with: only where the mock runs.
    add COMPOSE_PROFILES mock-esp
    add MOCK_ESP_PUSH_SECRET "$(random 32)"
fi
echo "${env_file} is ready; log in as admin with the AIRFLOW_ADMIN_PASSWORD it holds"
