#!/bin/sh
# Write the compose fleet's secrets (deploy/README.md, "Try it with Docker Compose") into DIR (default: the
# secrets/ folder next to this script): the PostgreSQL and collector MQTT passwords, the HTTP bearer token and
# the collectors' MQTT share-group name. Random; a file that already exists is kept (running it again changes
# nothing). The files are mode 0644: the collectors run as a non-root user and read them through a bind mount.
set -eu
dir=${1:-"$(dirname "$0")/secrets"}
umask 077   # the folder: only its owner may list it
mkdir -p "$dir"
umask 022
rand_hex() {   # $1 random bytes as hex
    head -c "$1" /dev/urandom | od -An -v -tx1 | tr -d ' \n'
}
for s in pg_password mqtt_password fleet_token; do
    [ -s "$dir/$s" ] || { rand_hex 24; echo; } > "$dir/$s"
done
# The share group is a secret too: a device that knows it joins the group and takes a share of the telemetry.
[ -s "$dir/share_group" ] || { printf 'ftedge-'; rand_hex 16; echo; } > "$dir/share_group"
echo "secrets in $dir: pg_password mqtt_password fleet_token share_group"
