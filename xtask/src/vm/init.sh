#!/bin/busybox sh
# The guest's init (`cargo xtask vm-test`): mounts what portmon and the
# tests read, loads the sock_diag modules, runs the integration tests, and
# powers off. Everything the host parses goes to the second serial port,
# away from the kernel's messages on the first; the last line is
# `portmon-vm: exit STATUS`.

/bin/busybox --install -s /bin
# The real ip, ss and setpriv before busybox's smaller ones.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
# Plain log lines in the harness's output.
export NO_COLOR=1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# No tmpfs on /tmp: the initramfs is writable memory already, and the
# files the tests open by their build-time path live under /tmp when the
# checkout does; a mount there would hide them.
mount -t tmpfs tmpfs /run
# The tests and the daemon find it through /proc/self/mountinfo.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpffs /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
ip link set lo up

result=/dev/ttyS1
stty -F "$result" raw -echo

{
    echo "portmon-vm: kernel $(uname -r)"
    for module in $(ls /portmon/modules 2>/dev/null | sort); do
        insmod "/portmon/modules/$module" || echo "portmon-vm: insmod $module failed"
    done
    /portmon/portmon check 2>&1 | sed 's/^/portmon-vm: check: /'
    cd /portmon
    # The harness's arguments, one a line, hold no spaces.
    # shellcheck disable=SC2046
    PORTMON_BIN=/portmon/portmon ./integration --test-threads=1 $(cat /portmon/harness-args) 2>&1
    echo "portmon-vm: exit $?"
} >"$result" 2>&1

sync
poweroff -f
