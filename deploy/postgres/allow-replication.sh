#!/bin/sh
# Run once by the postgres image's entrypoint when it creates the primary's data
# (docker-compose.yml mounts it into /docker-entrypoint-initdb.d/): the standby
# connects for replication as the same user as the processes.
set -eu
echo "host replication ${POSTGRES_USER} all scram-sha-256" >> "$PGDATA/pg_hba.conf"
