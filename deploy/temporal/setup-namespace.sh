#!/bin/sh
# One-shot (temporalio/admin-tools), after the server is healthy: create the namespace if it is
# missing and register the engine's search attributes (SEARCH_ATTRIBUTES="Name=Type ...", the
# list in docker-compose.yml, which tests/test_compose.py keeps equal to
# dunning.domain.SEARCH_ATTRIBUTES). Idempotent.
set -eu
: "${TEMPORAL_ADDRESS:=temporal:7233}"
: "${NAMESPACE:=default}"
: "${NAMESPACE_RETENTION:=30d}"
: "${SEARCH_ATTRIBUTES:?SEARCH_ATTRIBUTES is required}"

tries=0
until temporal operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then echo "Temporal at $TEMPORAL_ADDRESS is not healthy" >&2; exit 1; fi
  sleep 2
done

t() { temporal --address "$TEMPORAL_ADDRESS" "$@"; }

if t operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1; then
  echo "namespace $NAMESPACE exists"
else
  t operator namespace create --namespace "$NAMESPACE" --retention "$NAMESPACE_RETENTION"
  echo "namespace $NAMESPACE created"
fi

# A new namespace can take a moment to be usable everywhere.
tries=0
until existing=$(t operator search-attribute list --namespace "$NAMESPACE" 2>/dev/null); do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then echo "cannot list search attributes" >&2; exit 1; fi
  sleep 2
done

for spec in $SEARCH_ATTRIBUTES; do
  name=${spec%%=*}
  type=${spec#*=}
  if printf '%s\n' "$existing" | grep -Eqi "^[[:space:]]*$name[[:space:]]+$type[[:space:]]*$"; then
    echo "search attribute $name ($type) exists"
  elif printf '%s\n' "$existing" | grep -qw "$name"; then
    echo "search attribute $name exists with a type other than $type:" >&2
    printf '%s\n' "$existing" | grep -w "$name" >&2
    exit 1
  else
    t operator search-attribute create --namespace "$NAMESPACE" --name "$name" --type "$type"
    echo "search attribute $name ($type) created"
  fi
done
