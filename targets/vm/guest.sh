#!/bin/bash
# Runs inside the VM at every boot (vmcheck.service, from the host's 9p share
# at /mnt/vmcheck): the checks of one session of targets/vm/check.sh, in
# phases that survive a reboot (/var/lib/vmcheck/phase on the guest's disk).
# Each check appends `PASS|FAIL NAME SECONDS DETAIL` to the share's
# `results`, its whole output to `log/NAME.log`; the session ends with a
# `DONE` line and a power-off.
#
# Sessions (the share's `session` file):
#   deb  apt install the .deb; the service, its API, reload, power mode,
#        kill -9, MemoryMax=, upgrade of the .deb while running (its
#        runtime.toml edited), apt purge
#   tar  install.sh from the tar.gz; reboot (a cache hit, active sooner);
#        upgrade with install.sh while running (runtime.toml unedited);
#        systemd-analyze security; install.sh --uninstall
#   fleet-reference  install.sh, a normal selection, `runtime cache export`
#        to the share (with this boot's selection and probe, for the next)
#   fleet-warm  (a fresh disk) install.sh of the pack the host made with
#        those decisions: the same device fingerprint, and the first
#        selection measures the shipped winner alone
set -uo pipefail

share=/mnt/vmcheck
state=/var/lib/vmcheck
results=$share/results
api=http://127.0.0.1:8470
mkdir -p "$state" "$share/log"
session=$(cat "$share/session")
# The pack's --target: generic-x86_64 or generic-aarch64.
board=$(cat "$share/board")
phase=$(cat "$state/phase" 2>/dev/null || echo 1)
# Generous: TCG runs the measurements some ten times slower than the host,
# and an emulated aarch64 board `slowdown` times slower again (the share's
# file; 1 for x86_64). The unit's own TimeoutStartSec= is stretched alike,
# by a drop-in that is no part of the pack (removed before the leftovers
# are counted).
slowdown=$(cat "$share/slowdown")
start_timeout=$((900 * slowdown))
emulated=/etc/systemd/system/tailor.service.d/emulated.conf
if ((slowdown > 1)) && [[ $phase == 1 ]]; then
    mkdir -p "$(dirname "$emulated")"
    printf '[Service]\nTimeoutStartSec=%s\n' "$((600 * slowdown))" >"$emulated"
fi

note() { echo "vmcheck: $*" >/dev/console; }

# check NAME FUNCTION [ARGS...]: runs FUNCTION in a subshell (where `fail`
# ends it), records its verdict, time and the last line it printed.
failed=0
check() {
    local name=$1
    shift
    local t0=$EPOCHREALTIME verdict=PASS line
    note "$name ..."
    if ! ("$@") >"$share/log/$name.log" 2>&1; then
        verdict=FAIL
        failed=1
    fi
    line=$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v v="$verdict" -v n="$name" -v o="$(tail -n 1 "$share/log/$name.log")" \
        'BEGIN { printf "%s %s %.1fs %s", v, n, b - a, o }')
    echo "$line" >>"$results"
    note "$line"
    sync
}

fail() {
    echo "$*"
    exit 1
}

# --- what the checks read ---

prop() { systemctl show -p "$1" --value tailor.service; }
selection() { curl -sf "$api/v1/selection"; }
served() { curl -sf "$api/v1/health" | jq -r .subnet; }
journal_since() { journalctl -u tailor.service --no-pager -o cat --after-cursor="$1"; }
cursor() { journalctl -u tailor.service -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p'; }
seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

# Seconds from the service's start to `active`, from systemd's timestamps.
activation_s() { seconds_between "$(prop InactiveExitTimestampMonotonic)" "$(prop ActiveEnterTimestampMonotonic)"; }

# wait_active: until tailor.service is active and answers; prints the states
# it went through. Fails if it fails or takes longer than $start_timeout.
wait_active() {
    local deadline=$((SECONDS + start_timeout)) seen="" now
    while ((SECONDS < deadline)); do
        now=$(systemctl is-active tailor.service)
        [[ " $seen " == *" $now "* ]] || seen="$seen $now"
        case $now in
        active)
            curl -sf "$api/v1/health" >/dev/null && {
                echo "states:$seen"
                return 0
            }
            ;;
        failed)
            systemctl status tailor.service --no-pager
            fail "tailor.service failed (states:$seen)"
            return
            ;;
        esac
        sleep 0.5
    done
    fail "not active after ${start_timeout}s (states:$seen)"
}

# wait_journal CURSOR PATTERN SECONDS: until the service's journal since
# CURSOR has a line matching PATTERN; prints it.
wait_journal() {
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        journal_since "$1" | grep -E -m1 "$2" && return 0
        sleep 0.5
    done
    journal_since "$1"
    fail "no journal line matching '$2' within $3 s"
}

# The restarts systemd made since the last call, then the new main PID serving.
wait_new_pid() {
    local old=$1 deadline=$((SECONDS + start_timeout))
    while ((SECONDS < deadline)); do
        local pid
        pid=$(prop MainPID)
        if [[ $pid != 0 && $pid != "$old" ]] && systemctl is-active -q tailor.service &&
            curl -sf "$api/v1/health" >/dev/null; then
            echo "$pid"
            return 0
        fi
        sleep 0.5
    done
    fail "no new serving process after ${start_timeout}s (still $old)"
}

# The predicted footprint of a sub-network, (weights + activations) * 5/4,
# from the installed manifest, in bytes.
footprint() {
    jq --arg id "$1" '.subnets[] | select(.id == $id) | (.weight_bytes + .activation_bytes) * 5 / 4 | floor' \
        /opt/tailor/bundle/manifest.json
}

# --- the checks ---

# first_start [miss|shipped]: after an install, `activating` while
# selecting, `active` once it serves (Type=notify), never active with a
# socket that does not answer. The selection is a cache miss, or with
# decisions in the pack, `shipped`; when those were ignored, the runtime's
# note says which part of the key differed.
first_start() {
    local expected=${1:-miss}
    wait_active || return
    local report took cache
    report=$(selection) || fail "no /v1/selection"
    took=$(activation_s)
    echo "$report" | jq '{subnet: .subnet.id, cache, candidates_measured, selection_ms, notes}'
    cache=$(echo "$report" | jq -r .cache)
    [[ $cache == "$expected" ]] ||
        fail "a fresh install's selection was a cache $cache, not $expected: $(echo "$report" | jq -r '.notes | join("; ")')"
    local ms measured
    ms=$(echo "$report" | jq .selection_ms)
    measured=$(echo "$report" | jq .candidates_measured)
    ((measured >= 1)) || fail "nothing measured"
    # Active no sooner than the selection took: READY=1 comes after it.
    awk -v t="$took" -v ms="$ms" 'BEGIN { exit !(t * 1000 >= ms) }' ||
        fail "active after ${took}s, before its ${ms} ms selection ended"
    echo "$took" >"$state/first_activation_s"
    echo "active ${took}s after start (selection ${ms} ms, $measured candidates measured)"
}

status_shows_subnet() {
    local id
    id=$(selection | jq -r .subnet.id)
    local status
    status=$(systemctl status tailor.service --no-pager)
    echo "$status"
    echo "$status" | grep -F "Status: \"serving $id" || fail "systemctl status does not show 'serving $id'"
}

curl_health() {
    local body
    body=$(curl -sf "$api/v1/health") || fail "GET /v1/health failed"
    echo "$body"
    [[ $(echo "$body" | jq -r .status) == ok ]] || fail "status is not ok"
    [[ $(echo "$body" | jq -r .subnet) == $(selection | jq -r .subnet.id) ]] || fail "health and selection disagree"
}

curl_selection() {
    local body
    body=$(selection) || fail "GET /v1/selection failed"
    echo "$body" | jq -c '{subnet, limits, engine, cache}'
    echo "$body" | jq -e '.subnet.id and .limits.latency_ms and (.limits.memory_mb > 0)' >/dev/null ||
        fail "the selection report lacks the subnet or its limits"
}

curl_embed() {
    local body id width
    body=$(curl -sf -H 'Content-Type: image/png' --data-binary "@$share/image.png" "$api/v1/embed") ||
        fail "POST /v1/embed failed: $(curl -s -H 'Content-Type: image/png' --data-binary "@$share/image.png" "$api/v1/embed")"
    id=$(selection | jq -r .subnet.id)
    width=$(selection | jq -r .subnet.width)
    echo "$body" | jq -c '{subnet, latency_ms, cls: (.cls_token | length)}'
    echo "$body" | jq -e --arg id "$id" --argjson w "$width" \
        '.subnet == $id and (.cls_token | length) == $w and all(.cls_token[]; isnormal or . == 0)' >/dev/null ||
        fail "the embedding is not $width finite numbers from $id"
}

reload_reselects() {
    local c pid
    c=$(cursor)
    pid=$(prop MainPID)
    systemctl reload tailor.service || fail "systemctl reload failed"
    wait_journal "$c" "re-selected on SIGHUP" $((600 * slowdown)) || return
    [[ $(prop MainPID) == "$pid" ]] || fail "reload restarted the process"
    [[ $(selection | jq -r .cache) == hit ]] || fail "the same config re-selected without the cache"
    echo "re-selected in place (pid $pid), from the cache"
}

# set_power_mode MODE EXPECTED_CACHE: writes nvpmodel's status file (or
# removes it for MODE `none`) and waits for the re-selection.
set_power_mode() {
    local c
    c=$(cursor)
    if [[ $1 == none ]]; then
        rm -f /var/lib/nvpmodel/status
    else
        mkdir -p /var/lib/nvpmodel
        echo "pmode:000$1 fmode:quiet" >/var/lib/nvpmodel/status
    fi
    wait_journal "$c" "re-selected on power mode change" $((900 * slowdown)) || return
    local report
    report=$(selection)
    echo "mode $1: $(echo "$report" | jq -c '{subnet: .subnet.id, cache, candidates_measured}')"
    [[ $(echo "$report" | jq -r .cache) == "$2" ]] || fail "mode $1: expected a cache $2"
    if [[ $2 == hit ]]; then
        [[ $(echo "$report" | jq .candidates_measured) == 0 ]] || fail "a cache hit measured candidates"
    fi
}

power_mode_reselects() {
    set_power_mode 1 miss || return
    set_power_mode 2 miss || return
    set_power_mode 1 hit || return
    set_power_mode none hit || return
    echo "new modes measured, modes seen before taken from the cache"
}

kill_restarts() {
    local pid new
    pid=$(prop MainPID)
    kill -9 "$pid"
    new=$(wait_new_pid "$pid") || return
    curl_health >/dev/null || fail "not serving after the restart"
    echo "killed $pid; restarted as $new ($(prop NRestarts) restarts), serving $(served)"
}

# A MemoryMax= drop-in tighter than the unconstrained winner needs: the
# runtime reads the cgroup's limit and picks a sub-network that fits.
# The runtime allows memory_fraction of what the cgroup has left when it
# probes, so a loose MemoryMax= first tells what the service uses by then;
# the second leaves the winner's measured peak 1.5 MB short.
memory_max() {
    local dropin=/etc/systemd/system/tailor.service.d/memory.conf
    local free_id free_peak fraction
    free_id=$(selection | jq -r .subnet.id)
    free_peak=$(selection | jq .measured.peak_mb)
    fraction=$(sed -n 's/^memory_fraction = //p' /etc/tailor/runtime.toml)
    [[ -n $fraction ]] || fail "runtime.toml has no memory_fraction"
    echo "unconstrained: $free_id, peak $free_peak MB; memory_fraction $fraction"
    local loose=$((512 * 1048576)) limit_mb used target report id
    limited "$loose" || return
    limit_mb=$(selection | jq .limits.memory_mb)
    used=$(awk -v x="$loose" -v l="$limit_mb" -v f="$fraction" 'BEGIN { printf "%d", x - l * 1048576 / f }')
    echo "MemoryMax=$loose: limit $limit_mb MB, so $((used / 1048576)) MiB in use when it probed"
    target=$(awk -v u="$used" -v p="$free_peak" -v f="$fraction" 'BEGIN { printf "%d", u + (p - 1.5) * 1048576 / f }')
    limited "$target" || return
    report=$(selection)
    rm -f "$dropin"
    systemctl daemon-reload
    echo "$report" | jq -c '{subnet: .subnet.id, memory_mb: .limits.memory_mb, peak_mb: .measured.peak_mb, cache, candidates_measured, notes}'
    id=$(echo "$report" | jq -r .subnet.id)
    limit_mb=$(echo "$report" | jq .limits.memory_mb)
    awk -v l="$limit_mb" -v m="$target" -v f="$fraction" 'BEGIN { exit !(l * 1048576 <= m * f) }' ||
        fail "the memory limit ${limit_mb} MB is not within $fraction of MemoryMax=$target"
    echo "$report" | jq -e '.measured.peak_mb <= .limits.memory_mb' >/dev/null || fail "$id peaked over the limit"
    awk -v l="$limit_mb" -v p="$free_peak" 'BEGIN { exit !(l < p) }' ||
        fail "the limit ${limit_mb} MB still admits $free_id (${free_peak} MB): the check's arithmetic is off"
    [[ $id != "$free_id" ]] || fail "still $free_id under MemoryMax=$target"
    echo "MemoryMax=$((target / 1048576)) MiB: limit ${limit_mb} MB, picked $id instead of $free_id"
}

# limited BYTES: restarts the service under MemoryMax=BYTES.
limited() {
    mkdir -p /etc/systemd/system/tailor.service.d
    printf '[Service]\nMemoryMax=%s\n' "$1" >/etc/systemd/system/tailor.service.d/memory.conf
    systemctl daemon-reload
    # Blocks until READY=1 (Type=notify) or the start failed.
    systemctl restart tailor.service
    wait_active
}

# What an upgrade must leave: the new runtime running, the new bundle whole,
# an edited config kept with the pack's beside it, an unedited one replaced,
# nothing staged left behind.
upgraded_to() {
    local pack=$1 old_pid=$2 config=$3
    local new packed=$pack/root/opt/tailor/runtime.toml
    new=$(wait_new_pid "$old_pid") || return
    cmp "$pack/root/opt/tailor/bin/runtime" /opt/tailor/bin/runtime || fail "the runtime is not the new one"
    cmp "$pack/root/opt/tailor/bin/runtime" "/proc/$new/exe" || fail "the service does not run the new runtime"
    diff -r "$pack/root/opt/tailor/bundle" /opt/tailor/bundle || fail "the bundle is not the new one, whole"
    case $config in
    edited)
        grep -q '^# edited in the VM' /etc/tailor/runtime.toml || fail "the edited runtime.toml was replaced"
        cmp "$packed" /etc/tailor/runtime.toml.new || fail "the pack's runtime.toml is not beside the edited one"
        ;;
    unedited)
        cmp "$packed" /etc/tailor/runtime.toml || fail "the unedited runtime.toml was not replaced by the pack's"
        [[ ! -e /etc/tailor/runtime.toml.new ]] || fail "runtime.toml.new beside an unedited runtime.toml"
        ;;
    esac
    local stray
    stray=$(find /opt/tailor /etc/tailor -name '*.tailor-*' -o -name '.tailor-*' -o -name '*.dpkg-*')
    [[ -z $stray ]] || fail "left behind: $stray"
    echo "running the new runtime as $new, bundle $(jq -r '[.subnets[].id] | join(",")' /opt/tailor/bundle/manifest.json)"
}

# The device fingerprint `runtime probe` prints, and the parts of the probe
# it digests (DeviceInfo::fingerprint), to say which one differs.
fingerprint() { /opt/tailor/bin/runtime probe | sed -n 's/^fingerprint: //p'; }
identity() {
    jq -S '{arch: .cpu.arch, model: .cpu.model, cores: .cpu.logical_cores, clusters: .cpu.clusters,
        features: .cpu.features, mem_total: .memory.total_bytes, cgroup_limit: .memory.cgroup_limit_bytes,
        board: .board.model, compatible: .board.compatible, l4t: .board.l4t_release, accelerators}' "$@"
}

# The reference board's decisions, exported to the share for the host's
# `exporter pack --decisions`, with what this boot selected and probed.
cache_export() {
    selection >"$share/reference-selection.json" || fail "no /v1/selection"
    /opt/tailor/bin/runtime probe --json >"$share/reference-probe.json" || fail "runtime probe failed"
    fingerprint >"$share/reference-fingerprint"
    /opt/tailor/bin/runtime cache export --cache /var/cache/tailor/decisions.postcard \
        --to "$share/decisions.postcard" || fail "runtime cache export failed"
}

# A copy of the same image under the same QEMU flags is the same device:
# the fingerprint the reference boot probed is this boot's.
same_fingerprint() {
    local here reference=$share/reference-fingerprint
    here=$(fingerprint)
    [[ -n $here ]] || fail "runtime probe printed no fingerprint"
    if [[ $here != $(cat "$reference") ]]; then
        /opt/tailor/bin/runtime probe --json | identity >/root/probe-identity.json
        identity "$share/reference-probe.json" | diff /dev/stdin /root/probe-identity.json
        fail "fingerprint $here, the reference's $(cat "$reference"): $(identity "$share/reference-probe.json" |
            jq -r --slurpfile here /root/probe-identity.json \
                '[to_entries[] | select(.value != $here[0][.key]) | .key] | join(", ")') differ"
    fi
    echo "fingerprint $here on both boots"
}

# The first selection on a board of the fleet: the reference's winner,
# measured alone, and the journal says so.
shipped_confirmed() {
    local report reference=$share/reference-selection.json id
    report=$(selection) || fail "no /v1/selection"
    id=$(echo "$report" | jq -r .subnet.id)
    [[ $(echo "$report" | jq .candidates_measured) == 1 ]] ||
        fail "$(echo "$report" | jq .candidates_measured) candidates measured, not 1"
    [[ $id == $(jq -r .subnet.id "$reference") ]] || fail "chose $id, not the shipped $(jq -r .subnet.id "$reference")"
    journalctl -b -u tailor.service -o cat --no-pager | grep -F "shipped decision confirmed: 1 candidate measured" ||
        fail "the journal does not say the shipped decision was confirmed"
    echo "$id, 1 candidate measured in $(echo "$report" | jq '.selection_ms | floor') ms" \
        "(the reference: $(jq .candidates_measured "$reference") in $(jq '.selection_ms | floor' "$reference") ms)"
}

unpack() {
    rm -rf "/root/$1" && mkdir -p "/root/$1" && tar xzf "$share/$1.tar.gz" -C "/root/$1" &&
        echo "/root/$1/tailor-$board"
}

# upgrade deb|tar edited|unedited: installs v2 (whose runtime.toml differs
# from v1's) over the running v1, its runtime.toml edited or not. apt runs
# with no terminal, as an unattended upgrade does.
upgrade() {
    local form=$1 config=$2 pid pack
    pid=$(prop MainPID)
    pack=$(unpack v2) || return
    [[ $config == edited ]] && echo "# edited in the VM" >>/etc/tailor/runtime.toml
    case $form in
    deb)
        cp "$share/v2.deb" /root/ && apt-get install -y --reinstall /root/v2.deb </dev/null || fail "apt install of v2 failed"
        ;;
    tar)
        "$pack/install.sh" || fail "install.sh of v2 failed"
        ;;
    esac || return
    upgraded_to "$pack" "$pid" "$config"
}

# What may remain after removal: the decisions (and, on a Jetson, engines).
leftovers() {
    local left=()
    rm -rf "$(dirname "$emulated")"
    systemctl daemon-reload
    for path in /opt/tailor /etc/tailor /etc/systemd/system/tailor.service \
        /usr/lib/sysusers.d/tailor.conf /etc/systemd/system/multi-user.target.wants/tailor.service; do
        [[ -e $path ]] && left+=("$path")
    done
    getent passwd tailor >/dev/null && left+=("user tailor")
    systemctl cat tailor.service >/dev/null 2>&1 && left+=("unit tailor.service")
    [[ -f /var/cache/tailor/decisions.json || -n $(ls -A /var/cache/tailor 2>/dev/null) ]] ||
        fail "the decision cache was removed too"
    if ((${#left[@]})); then
        fail "left: ${left[*]}"
        return
    fi
    echo "only the cache is left: $(ls /var/cache/tailor | tr '\n' ' ')"
}

deb_install() {
    cp "$share/v1.deb" /root/ && apt-get install -y /root/v1.deb || fail "apt install failed"
}

# tar_install [PACK]: install.sh from PACK.tar.gz (v1).
tar_install() {
    local pack
    pack=$(unpack "${1:-v1}") || return
    "$pack/install.sh" || fail "install.sh failed"
}

security() {
    systemd-analyze security tailor.service --no-pager | tee /dev/stderr | tail -n 1
}

reboot_hit() {
    wait_active || return
    local report took first
    report=$(selection)
    took=$(activation_s)
    first=$(cat "$state/first_activation_s")
    echo "$report" | jq -c '{subnet: .subnet.id, cache, candidates_measured, selection_ms}'
    [[ $(echo "$report" | jq -r .cache) == hit && $(echo "$report" | jq .candidates_measured) == 0 ]] ||
        fail "the second boot's selection was not a cache hit with nothing measured"
    journalctl -b -u tailor.service -o cat --no-pager | grep -E "cache hit|from the cache" ||
        fail "this boot's journal does not say the decision came from the cache"
    awk -v a="$took" -v b="$first" 'BEGIN { exit !(a < b) }' || fail "active after ${took}s, not sooner than the first ${first}s"
    echo "cache hit, 0 measured; active ${took}s after start (first boot ${first}s)"
}

finish() {
    echo "DONE $failed" >>"$results"
    sync
    systemctl poweroff
    exit 0
}

note "session $session, phase $phase"
case $session:$phase in
deb:1)
    check deb-install deb_install
    check active-after-selection first_start
    check status-shows-subnet status_shows_subnet
    check curl-health curl_health
    check curl-selection curl_selection
    check curl-embed curl_embed
    check reload-reselects reload_reselects
    check power-mode-reselects power_mode_reselects
    check kill-9-restarts kill_restarts
    check memory-max memory_max
    check upgrade-deb-while-running upgrade deb edited
    check apt-purge apt-get purge -y "tailor-$board"
    check apt-purge-leaves-the-cache leftovers
    finish
    ;;
tar:1)
    check tar-install tar_install
    check active-after-selection first_start
    check curl-health curl_health
    check systemd-analyze-security security
    echo 2 >"$state/phase"
    sync
    note "rebooting"
    systemctl reboot
    ;;
tar:2)
    check reboot-cache-hit reboot_hit
    check curl-embed curl_embed
    check upgrade-install-sh-while-running upgrade tar unedited
    check uninstall bash -c '/opt/tailor/install.sh --uninstall'
    check uninstall-leaves-the-cache leftovers
    finish
    ;;
fleet-reference:1)
    check tar-install tar_install
    check active-after-selection first_start
    check cache-export cache_export
    finish
    ;;
fleet-warm:1)
    check tar-install-with-decisions tar_install fleet
    check active-after-selection first_start shipped
    check same-device-fingerprint same_fingerprint
    check shipped-decision-confirmed shipped_confirmed
    check curl-embed curl_embed
    finish
    ;;
*)
    note "nothing to do for $session:$phase"
    finish
    ;;
esac
