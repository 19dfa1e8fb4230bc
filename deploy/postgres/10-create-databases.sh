#!/bin/sh
# Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d).
# Two roles with their own passwords: `temporal` (creates and owns Temporal's `temporal` and
# `temporal_visibility` databases through temporal-sql-tool) and `dunning` (owns the engine's
# `dunning` database). Changing the passwords later needs ALTER ROLE; this script won't rerun.
set -e
: "${TEMPORAL_DB_PASSWORD:?TEMPORAL_DB_PASSWORD is required}"
: "${APP_DB_PASSWORD:?APP_DB_PASSWORD is required}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  --set=temporal_pw="$TEMPORAL_DB_PASSWORD" --set=app_pw="$APP_DB_PASSWORD" <<'SQL'
CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'temporal_pw';
CREATE ROLE dunning LOGIN PASSWORD :'app_pw';
CREATE DATABASE dunning OWNER dunning;
SQL
