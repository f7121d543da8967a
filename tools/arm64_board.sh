#!/usr/bin/env bash
# An emulated arm64 board, built from the registries alone: Debian's arm64 Python 3.11 run by
# qemu-user-static, with the aarch64 wheels of numpy and ai-edge-litert. edgempq reaches it through
# the ssh backend on a loopback sshd, as it would a Raspberry Pi (targets/linux-ssh-arm64-emulated.toml).
#
#   tools/arm64_board.sh DIR      builds DIR/python (the board's Python), DIR/root, DIR/site
#
# Needs qemu-user-static (apt-get install qemu-user-static), apt-get, dpkg-deb and python3 with pip
# on this machine; nothing is installed into the system: apt runs on a private state in the build
# folder. Idempotent: a finished board (DIR/.ready) is left as it is; a failed build leaves nothing.
# ARM64_LITERT picks the ai-edge-litert version (default 2.1.6: 2.2.0 and 2.3.0's aarch64 wheels
# crash with SIGSEGV under Debian 12's qemu 7.2 when the interpreter starts), ARM64_CPU the core
# qemu emulates (default cortex-a76, a Raspberry Pi 5's, with the dot-product instructions;
# cortex-a72 is a Pi 4's, without them). Not qemu's default "max" core: with it, XNNPACK's int8
# kernels give wrong answers (a w8a8 MNIST net at chance), which no real core does.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR (where the emulated board goes)" >&2
  exit 1
fi
dest=$(realpath -m "$1")
litert=${ARM64_LITERT:-2.1.6}
cpu=${ARM64_CPU:-cortex-a76}
if [ -f "$dest/.ready" ] && [ "$(cat "$dest/.ready")" = "ai-edge-litert==$litert $cpu" ]; then
  echo "$dest/python"
  exit 0
fi
for tool in qemu-aarch64-static apt-get dpkg-deb python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is not installed; the emulated board needs qemu-user-static, apt and python3" \
         "(apt-get install qemu-user-static)" >&2
    exit 1
  fi
done

mkdir -p "$(dirname "$dest")"
build=$(mktemp -d "$(dirname "$dest")/.arm64-board.XXXXXX")
trap 'rm -rf "$build"' EXIT
mkdir -p "$build/apt/state/lists/partial" "$build/apt/cache/archives/partial" "$build/debs" "$build/root"
touch "$build/apt/status"
# arm64 package lists in a private apt state: the machine's sources, no `dpkg --add-architecture`
apt_opts=(-q -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o "Dir::State=$build/apt/state"
          -o "Dir::State::status=$build/apt/status" -o "Dir::Cache=$build/apt/cache" -o Debug::NoLocking=1
          -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update >/dev/null
# Python 3.11 and what it loads, with the C and C++ runtimes the wheels need
packages=(libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0
          libuuid1 libncursesw6 libtinfo6 libreadline8 libdb5.3 libgdbm6 libcrypt1 libnsl2 libtirpc3
          libpython3.11-minimal libpython3.11-stdlib python3.11-minimal python3.11 media-types)
(cd "$build/debs" && apt-get "${apt_opts[@]}" download "${packages[@]}" >/dev/null)
for deb in "$build"/debs/*.deb; do
  dpkg-deb -x "$deb" "$build/root"
done

# the aarch64 wheels, for the board's Python (3.11, glibc 2.36)
platforms=()
for tag in manylinux2014_aarch64 manylinux_2_17_aarch64 manylinux_2_27_aarch64 manylinux_2_28_aarch64 \
           manylinux_2_31_aarch64 manylinux_2_34_aarch64 manylinux_2_35_aarch64 manylinux_2_36_aarch64; do
  platforms+=(--platform "$tag")
done
if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --no-warn-conflicts \
    --target "$build/site" "${platforms[@]}" --python-version 3.11 --implementation cp --only-binary=:all: \
    "ai-edge-litert==$litert" "numpy<2.3" >"$build/pip.log" 2>&1; then
  tail -5 "$build/pip.log" >&2
  echo "error: pip could not fetch the aarch64 wheels of ai-edge-litert==$litert and numpy" >&2
  exit 1
fi

cat > "$build/python" <<EOF
#!/bin/sh
# the emulated board's Python: Debian's arm64 python3.11 under qemu-user-static, on a $cpu core
# (QEMU_CPU overrides it; qemu's default, "max", computes XNNPACK's int8 kernels wrongly)
here=\$(dirname "\$(readlink -f "\$0")")
QEMU_CPU="\${QEMU_CPU:-$cpu}" PYTHONPATH="\$here/site" PYTHONNOUSERSITE=1 exec qemu-aarch64-static \\
  -L "\$here/root" "\$here/root/usr/bin/python3.11" "\$@"
EOF
chmod 755 "$build/python"
machine=$("$build/python" -c "import platform, numpy, ai_edge_litert.interpreter; print(platform.machine())")
if [ "$machine" != "aarch64" ]; then
  echo "error: the board's Python reports machine '$machine', not aarch64" >&2
  exit 1
fi
rm -rf "$build/apt" "$build/debs" "$build/pip.log"
chmod 755 "$build"
echo "ai-edge-litert==$litert $cpu" > "$build/.ready"
rm -rf "$dest"
mv "$build" "$dest"
trap - EXIT
echo "$dest/python"
