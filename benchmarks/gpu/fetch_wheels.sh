#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels the GPU image lacks, listed in benchmarks/gpu/wheels.txt, for
# CPython 3.12 on x86-64 Linux; run.sh installs them on the device. Needs network (PyPI); run it here, not there.
#   bash benchmarks/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DEST=.whl
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mapfile -t SPECS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' benchmarks/gpu/wheels.txt | grep -v '^$')
for spec in "${SPECS[@]}"; do
    if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${PLATFORMS[@]}" -d "$DEST" "$spec" 2>/dev/null; then
        continue
    fi
    # no wheel on the index (fvcore, iopath publish sources only): build one; it must be pure Python
    tmp=$(mktemp -d)
    "$PY" -m pip wheel -q --no-deps -w "$tmp" "$spec"
    for w in "$tmp"/*.whl; do
        case "$w" in
            *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$w" "$DEST"/ ;;
            *) echo "fetch_wheels: $spec built a platform wheel ($w): not portable to the device" >&2; exit 1 ;;
        esac
    done
    rm -rf "$tmp"
done
# every listed package has exactly one wheel, and nothing else lies in .whl/
"$PY" - "$DEST" "${SPECS[@]}" <<'PYEOF'
import re, sys
from pathlib import Path
dest, specs = Path(sys.argv[1]), sys.argv[2:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
want = {norm(s.split("==")[0]): s.split("==")[1] for s in specs}
have = {}
for w in sorted(dest.glob("*.whl")):
    name, version = w.name.split("-")[:2]
    if norm(name) not in want or version != want[norm(name)]:
        print(f"removing {w.name}: not in wheels.txt")
        w.unlink()
        continue
    have[norm(name)] = w
missing = sorted(set(want) - set(have))
if missing:
    sys.exit(f"fetch_wheels: no wheel for {', '.join(missing)}")
total = sum(w.stat().st_size for w in have.values())
print(f"{len(have)} wheels in {dest}/, {total / 2**20:.1f} MiB")
PYEOF
