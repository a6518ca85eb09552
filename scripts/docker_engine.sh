#!/usr/bin/env bash
# A private Docker engine for building and running normserve's images on a machine with no
# engine and no Docker Hub (see CONTAINERS.md in the shared docs): the recipe that was verified
# there, as four commands the tests and the README use.
#
#   scripts/docker_engine.sh deps           install docker.io, iptables, debootstrap,
#                                           docker-compose (and iproute2, procps) from Debian
#                                           when missing (root, apt)
#   scripts/docker_engine.sh start DIR      start dockerd with its state in DIR (empty or new);
#                                           prints `export DOCKER_HOST=unix://DIR/docker.sock`
#   scripts/docker_engine.sh base [TAG]     with DOCKER_HOST set: a Debian bookworm image with
#                                           Python 3.11 and venv, a stand-in for python:3.11-slim
#                                           (default TAG local/python:3.11-slim)
#                                           (NORMSERVE_BASE_CACHE=DIR keeps it between engines)
#   scripts/docker_engine.sh stop DIR       stop that engine, remove its bridge, mounts and DIR
#
# Every failure exits non-zero with the reason on stderr (the engine's log tail included), so a
# test that needs the engine fails with the engine's own error instead of passing or skipping.
set -euo pipefail

# Each engine gets a bridge of its own, nsdocker<N> on 172.31.<240+N>.1/24, so that engines of
# sessions running side by side (two `make test` at once) never share or delete each other's.
BRIDGE_PREFIX=nsdocker
BRIDGE_SLOTS=16
PACKAGES=(docker.io iptables debootstrap docker-compose iproute2 procps)
DEFAULT_BASE_TAG=local/python:3.11-slim
MARKER=.normserve-docker-engine

die() {
	echo "docker_engine.sh: $*" >&2
	exit 1
}

# The first binary of each package that says whether it is installed.
probe_command() {
	case "$1" in
	docker.io) echo dockerd ;;
	iptables) echo iptables ;;
	debootstrap) echo debootstrap ;;
	docker-compose) echo docker-compose ;;
	iproute2) echo ip ;;
	procps) echo pgrep ;;
	esac
}

cmd_deps() {
	local missing=() pkg
	for pkg in "${PACKAGES[@]}"; do
		command -v "$(probe_command "$pkg")" >/dev/null 2>&1 || missing+=("$pkg")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	[[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
	echo "installing ${missing[*]} from Debian" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2 || die "apt-get update failed"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
}

engine_log_tail() {
	[[ -f "$1/dockerd.log" ]] && tail -n 20 "$1/dockerd.log" >&2
	return 0
}

# The bridge's alias names the engine folder that owns it: a bridge whose folder is gone was left
# by an engine that was killed, and nothing else can own it. (One with no alias yet is being
# claimed by a start running right now: left alone.)
remove_stale_bridges() {
	local link owner
	for link in $(ip -o link show type bridge | awk -F': ' '{print $2}' |
		grep -E "^$BRIDGE_PREFIX[0-9]+$" || true); do
		owner=$(ip -o link show "$link" | sed -n 's/.* alias \(.*\)$/\1/p')
		if [[ -n "$owner" && ! -d "$owner" ]]; then
			ip link del "$link" 2>/dev/null || true
		fi
	done
}

# Create the first free bridge (creating it is the claim: `ip link add` fails when it exists).
claim_bridge() {
	local dir=$1 n link
	for n in $(seq 0 $((BRIDGE_SLOTS - 1))); do
		link="$BRIDGE_PREFIX$n"
		if ip link add name "$link" type bridge 2>/dev/null; then
			if ip link set dev "$link" alias "$dir" &&
				ip addr add "172.31.$((240 + n)).1/24" dev "$link" &&
				ip link set dev "$link" up; then
				echo "$link"
				return 0
			fi
			ip link del "$link" 2>/dev/null
			return 1
		fi
	done
	return 1
}

cmd_start() {
	local dir=${1:?usage: start DIR}
	command -v dockerd >/dev/null || die "dockerd is not installed: run '$0 deps' first"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	[[ -z "$(ls -A "$dir")" ]] || die "engine folder $dir is not empty"
	touch "$dir/$MARKER"
	local sock="$dir/docker.sock"
	# A unix socket path longer than 107 bytes cannot be bound.
	((${#sock} < 100)) || die "engine folder path too long for a socket: $dir"
	remove_stale_bridges
	local bridge
	bridge=$(claim_bridge "$dir") || die "no free bridge: $BRIDGE_SLOTS engines already run here"
	echo "$bridge" >"$dir/bridge"
	dockerd --storage-driver=overlay2 --iptables=false --ip-forward=false --ip-masq=false \
		--bridge "$bridge" --host "unix://$sock" --data-root "$dir/root" \
		--exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" >"$dir/dockerd.log" 2>&1 &
	local pid=$! i
	for i in $(seq 1 60); do
		if DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1; then
			echo "export DOCKER_HOST=unix://$sock"
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "docker_engine.sh: dockerd exited during start-up; its log ends:" >&2
			engine_log_tail "$dir"
			cmd_stop "$dir" >/dev/null 2>&1 || true
			exit 1
		fi
		sleep 0.5
	done
	echo "docker_engine.sh: dockerd did not answer within 30 s; its log ends:" >&2
	engine_log_tail "$dir"
	cmd_stop "$dir" >/dev/null 2>&1 || true
	exit 1
}

cmd_stop() {
	local dir=${1:?usage: stop DIR}
	[[ -d "$dir" ]] || return 0
	# Only a folder that start made is removed.
	[[ -f "$dir/$MARKER" ]] || die "$dir was not made by '$0 start': not touching it"
	if [[ -f "$dir/dockerd.pid" ]]; then
		local pid i
		pid=$(cat "$dir/dockerd.pid")
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid"
			for i in $(seq 1 60); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.5
			done
			kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
		fi
	fi
	# What dockerd leaves behind when it stops: its bridge and namespace/overlay mounts.
	if [[ -f "$dir/bridge" ]]; then
		ip link del "$(cat "$dir/bridge")" 2>/dev/null || true
	fi
	local mnt
	while read -r mnt; do
		umount -l "$mnt" 2>/dev/null || true
	done < <(awk -v d="$dir" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r)
	rm -rf "$dir"
}

# Python 3.11 + venv from Debian bookworm's packages, stripped like Debian's slim images, with the
# host's CA bundle trusted (outbound HTTPS goes through a proxy with its own CA).
cmd_base() {
	local tag=${1:-$DEFAULT_BASE_TAG}
	[[ -n "${DOCKER_HOST:-}" ]] || die "DOCKER_HOST is not set: start an engine first"
	command -v debootstrap >/dev/null || die "debootstrap is not installed: run '$0 deps' first"
	if docker image inspect "$tag" >/dev/null 2>&1; then
		echo "$tag already built" >&2
		return 0
	fi
	# NORMSERVE_BASE_CACHE (a folder) keeps the image between engines, for quick local loops.
	local cache=""
	if [[ -n "${NORMSERVE_BASE_CACHE:-}" ]]; then
		mkdir -p "$NORMSERVE_BASE_CACHE"
		cache="$NORMSERVE_BASE_CACHE/$(sha256sum "$0" | cut -c1-16)-${tag//[:\/]/_}.tar"
		if [[ -f "$cache" ]] && docker load -i "$cache" >/dev/null; then
			echo "loaded $tag from $cache" >&2
			return 0
		fi
	fi
	local mirror rootfs
	mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
	mirror=${mirror:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
	mirror=${mirror:-http://deb.debian.org/debian}
	rootfs=$(mktemp -d /tmp/normserve-rootfs.XXXXXX)
	trap 'rm -rf "$rootfs"' RETURN
	echo "debootstrap bookworm from $mirror" >&2
	debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 \
		bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
		tail -n 20 "$rootfs.log" >&2
		rm -f "$rootfs.log"
		die "debootstrap failed"
	}
	rm -f "$rootfs.log"
	mkdir -p "$rootfs/etc/ssl/certs"
	cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
	# What Debian's slim images leave out (their dpkg path excludes), and apt's caches.
	rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
		"$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
		"$rootfs"/usr/share/groff/* "$rootfs"/usr/share/lintian/* "$rootfs"/usr/share/locale/*
	tar -C "$rootfs" -c . | docker import \
		--change 'ENV LANG=C.UTF-8' \
		--change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
		--change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
		--change 'CMD ["python3"]' - "$tag" >/dev/null || die "docker import failed"
	if [[ -n "$cache" ]]; then
		docker save -o "$cache.tmp" "$tag" && mv "$cache.tmp" "$cache"
	fi
	echo "built $tag" >&2
}

case "${1:-}" in
deps) cmd_deps ;;
start) cmd_start "${2:-}" ;;
stop) cmd_stop "${2:-}" ;;
base) cmd_base "${2:-}" ;;
*) die "usage: $0 deps | start DIR | base [TAG] | stop DIR" ;;
esac
