#!/usr/bin/env bash
# Build the time-sync base image (Debian bookworm + redis-server + rabbitmq-server)
# WITHOUT any container registry: debootstrap a rootfs from the machine's apt
# mirror and `docker import` it.
#
# Usage: docker/build-base.sh [IMAGE_NAME]        (default: time-sync-base:bookworm)
# Env:   TS_MIRROR=http://...   override the Debian mirror
#        TS_SUITE=bookworm      override the suite
#
# Idempotent: exits 0 at once if the image already exists.
set -euo pipefail

NAME="${1:-time-sync-base:bookworm}"
SUITE="${TS_SUITE:-bookworm}"
INCLUDE="redis-server,rabbitmq-server,ca-certificates,iproute2,procps"
IMG_PATH='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

die()  { echo "build-base: error: $*" >&2; exit 1; }
log()  { echo "build-base: $*" >&2; }
now()  { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found in PATH"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (is dockerd running? permissions on /var/run/docker.sock?)"

if docker image inspect "$NAME" >/dev/null 2>&1; then
    echo "base image $NAME already present"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap needs root)"

# --- mirror from the machine's apt sources ---------------------------------
find_mirror() {
    local f uri
    # deb822 *.sources: first "URIs:" of a stanza whose Suites include a plain
    # suite name (not -security / -updates).
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri="$(awk '
            /^[[:space:]]*$/ { if (u != "" && ok && on) { print u; exit } u = ""; ok = 0; on = 1; next }
            NR == 1                      { on = 1 }
            tolower($1) == "uris:"       { u = $2 }
            tolower($1) == "enabled:"    { if (tolower($2) == "no") on = 0 }
            tolower($1) == "suites:"     { for (i = 2; i <= NF; i++) if ($i !~ /-(security|updates|backports)$/) ok = 1 }
            END { if (u != "" && ok && on) print u }
        ' "$f" | head -n1)"
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    # one-line format
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        uri="$(awk '$1 == "deb" {
                   i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                   if ($(i+1) !~ /-(security|updates|backports)$/) { print $i; exit } }' "$f")"
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    echo "http://deb.debian.org/debian"
}
MIRROR="${TS_MIRROR:-$(find_mirror)}"
case "$MIRROR" in
    http://*|https://*|file:/*) ;;
    *) die "unusable mirror '$MIRROR' (set TS_MIRROR=http://...)" ;;
esac

# --- debootstrap -------------------------------------------------------------
if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    t0=$(now)
    DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null; } \
        || die "apt-get install debootstrap failed"
    log "debootstrap installed in $(secs "$t0" "$(now)") s"
fi

ROOTFS="$(mktemp -d /var/tmp/ts-rootfs.XXXXXX)" || die "mktemp under /var/tmp failed"
cleanup() {
    local rc=$?
    if [ -n "${ROOTFS:-}" ] && [ -d "$ROOTFS" ]; then
        # never follow mounts debootstrap may have left behind
        for m in proc sys dev/pts dev; do
            mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" 2>/dev/null || true
        done
        rm -rf --one-file-system "$ROOTFS"
    fi
    [ -n "${DEB_LOG:-}" ] && rm -f "$DEB_LOG"
    exit "$rc"
}
CHILD=""
on_signal() {
    # debootstrap runs in its own session (setsid): stop it and its children
    # (wget, chroot dpkg) before the EXIT trap removes the rootfs.
    if [ -n "$CHILD" ]; then
        kill -TERM -- "-$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    echo "build-base: error: interrupted; removing $ROOTFS" >&2
    exit 130
}
trap cleanup EXIT
trap on_signal INT TERM HUP

T_ALL=$(now)
log "debootstrap $SUITE from $MIRROR into $ROOTFS (include: $INCLUDE)"
t0=$(now)
DEB_LOG="$ROOTFS.debootstrap.log"
setsid -w debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" >"$DEB_LOG" 2>&1 </dev/null &
CHILD=$!
DEB_RC=0
wait "$CHILD" || DEB_RC=$?
CHILD=""
if [ "$DEB_RC" -ne 0 ]; then
    tail -n 20 "$DEB_LOG" >&2 || true
    [ -r "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 20 "$ROOTFS/debootstrap/debootstrap.log" >&2
    rm -f "$DEB_LOG"
    die "debootstrap failed with status $DEB_RC (mirror $MIRROR); see output above"
fi
rm -f "$DEB_LOG"
T_DEB=$(secs "$t0" "$(now)")
log "debootstrap: ${T_DEB} s"

# --- slim down (cheap, safe) ------------------------------------------------
t0=$(now)
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/usr/share/doc/* \
       "$ROOTFS"/usr/share/man/* \
       "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/usr/share/lintian \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* \
       "$ROOTFS"/var/cache/debconf/*-old \
       "$ROOTFS"/tmp/* 2>/dev/null || true
# keep locales: only C/POSIX are needed (C.UTF-8 lives in /usr/lib/locale)
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
# the host's resolv.conf/hostname must not be baked in; docker bind-mounts them
: > "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
rm -f "$ROOTFS/etc/hostname"
# rabbitmq must not inherit a node name / cookie from build time
rm -f "$ROOTFS/var/lib/rabbitmq/.erlang.cookie"
rm -rf "$ROOTFS"/var/lib/rabbitmq/mnesia/* 2>/dev/null || true
# apt inside the image: same mirror as the host
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > "$ROOTFS/etc/apt/sources.list"
T_SLIM=$(secs "$t0" "$(now)")
log "slim: ${T_SLIM} s (rootfs $(du -sh --one-file-system "$ROOTFS" | cut -f1))"

# --- import ------------------------------------------------------------------
t0=$(now)
tar --numeric-owner -C "$ROOTFS" -c . \
    | docker import -c "ENV $IMG_PATH" -c 'CMD ["/bin/bash"]' -m "time-sync base: debootstrap $SUITE minbase + $INCLUDE" - "$NAME" >/dev/null \
    || die "docker import of $ROOTFS as $NAME failed"
T_IMP=$(secs "$t0" "$(now)")
log "docker import: ${T_IMP} s"

t0=$(now)
rm -rf --one-file-system "$ROOTFS"
T_RM=$(secs "$t0" "$(now)")
ROOTFS=""

SIZE="$(docker image inspect -f '{{.Size}}' "$NAME" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
echo "built $NAME ($SIZE): debootstrap ${T_DEB} s, slim ${T_SLIM} s, import ${T_IMP} s, cleanup ${T_RM} s, total $(secs "$T_ALL" "$(now)") s"
