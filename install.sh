#!/bin/sh
# Install park: download park.py and the backend files for this platform, check each against the sha256 pinned
# below, put them in one directory and a `park` launcher on your PATH. Nothing runs unless it matched.
#
#   curl -fsSL <base-url>/install.sh | sh
#   sh install.sh [--bin-dir DIR] [--prefix DIR] [--base-url URL] [--uninstall]
#
# Shell profiles are never edited: when the launcher's directory is not on PATH, the line to add is printed.
set -u

BASE_URL="https://raw.githubusercontent.com/park-sh/park/main"

# sha256 of each file at this release (test_park.py fails, printing these lines, when one differs).
SHA256_park_py="238560a2d0ca2a14bbe66a4bc890a0a2f2311a8339dab927304e9097f246e90a"
SHA256_park_darwin_arm64_py="35e04a52d80d7f0bec27951dd9d39527268a8dfc71ddaf28203861b6a83c51bd"
SHA256_park_linux_py="434f803048cfd5806026ca98e5d196aa832952d06ac6b504c0a868d517c6115e"
SHA256_park_linux_aarch64_py="91c22682f56567e815b7982716d574b9900ca62fce5b1f7e194d1cf10b75efd6"
SHA256_park_linux_x86_64_py="c7d3395f84f43b931c8c7a0050d642bc16895c816f21526d609ca80c550a032b"

say() { printf 'park-install: %s\n' "$*"; }
err() { printf 'park-install: error: %s\n' "$*" >&2; }

need_cmd() {
    if ! command -v "$1" >/dev/null 2>&1; then
        err "$1 is required but not found${2:+ ($2)}"
        return 1
    fi
}

usage() {
    cat <<EOF
usage: sh install.sh [--bin-dir DIR] [--prefix DIR] [--base-url URL] [--uninstall]
  --bin-dir DIR   where the park launcher goes (default ~/.local/bin, or /usr/local/bin as root)
  --prefix DIR    where park.py and its backend go (default ~/.local/share/park, or /usr/local/share/park)
  --base-url URL  where to download from (default $BASE_URL)
  --uninstall     remove what an earlier run installed
EOF
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d ' ' -f 1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d ' ' -f 1
    else
        return 1
    fi
}

download() {  # URL FILE
    case "$1" in
        https://*) curl --proto '=https' --tlsv1.2 -fsSL -o "$2" "$1" ;;
        *) curl -fsSL -o "$2" "$1" ;;  # a local mirror (http://127.0.0.1:...); the sha256 still decides
    esac
}

backend_for() {  # the backend files for `uname -s` `uname -m` (the Linux engine and its architecture's), or nothing
    case "$1 $2" in
        "Linux x86_64" | "Linux amd64") echo park_linux.py park_linux_x86_64.py ;;
        "Linux aarch64" | "Linux arm64") echo park_linux.py park_linux_aarch64.py ;;
        "Darwin arm64") echo park_darwin_arm64.py ;;
        *) ;;
    esac
}

pin_of() {  # FILE -> its pinned sha256
    case "$1" in
        park.py) echo "$SHA256_park_py" ;;
        park_linux.py) echo "$SHA256_park_linux_py" ;;
        park_linux_x86_64.py) echo "$SHA256_park_linux_x86_64_py" ;;
        park_linux_aarch64.py) echo "$SHA256_park_linux_aarch64_py" ;;
        park_darwin_arm64.py) echo "$SHA256_park_darwin_arm64_py" ;;
        *) ;;
    esac
}

check_python() {
    if ! command -v python3 >/dev/null 2>&1; then
        err "python3 is not installed; park needs Python 3.9 or newer"
        return 1
    fi
    if ! python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' 2>/dev/null; then
        err "python3 is $(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unknown); park needs 3.9 or newer"
        return 1
    fi
}

uninstall() {  # PREFIX BIN_DIR
    removed=0
    if [ -f "$2/park" ] && grep -q 'installed by park install.sh' "$2/park" 2>/dev/null; then
        rm -f "$2/park" && removed=1
    fi
    for f in park.py park_linux.py park_linux_x86_64.py park_linux_aarch64.py park_darwin_arm64.py; do
        if [ -f "$1/$f" ]; then rm -f "$1/$f" && removed=1; fi
    done
    rm -rf "$1/__pycache__"
    rmdir "$1" 2>/dev/null || true
    if [ "$removed" = 1 ]; then say "removed park from $1 and $2/park"; else say "park was not installed in $1"; fi
    say "your state in ~/.park (if any) was left alone"
}

# A value as one single-quoted shell word, so that no path can run code when the launcher runs.
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

main() {
    umask 022  # what is installed is writable by its owner only, whatever the caller's umask (e.g. 000)
    if [ "$(id -u)" = 0 ]; then
        bin_dir=/usr/local/bin
        prefix=/usr/local/share/park
    else
        bin_dir="$HOME/.local/bin"
        prefix="$HOME/.local/share/park"
    fi
    base_url="$BASE_URL"
    action=install
    while [ $# -gt 0 ]; do
        case "$1" in
            --bin-dir) [ $# -ge 2 ] || { usage >&2; return 2; }; bin_dir="$2"; shift 2 ;;
            --prefix) [ $# -ge 2 ] || { usage >&2; return 2; }; prefix="$2"; shift 2 ;;
            --base-url) [ $# -ge 2 ] || { usage >&2; return 2; }; base_url="${2%/}"; shift 2 ;;
            --uninstall) action=uninstall; shift ;;
            -h | --help) usage; return 0 ;;
            *) err "unknown option: $1"; usage >&2; return 2 ;;
        esac
    done
    if [ "$action" = uninstall ]; then
        uninstall "$prefix" "$bin_dir"
        return 0
    fi

    backend=$(backend_for "$(uname -s)" "$(uname -m)")
    if [ -z "$backend" ]; then
        err "park does not support $(uname -s) $(uname -m) yet (it runs on Linux x86_64 and aarch64, and macOS arm64)"
        return 1
    fi
    check_python || return 1
    need_cmd curl || return 1
    if ! command -v sha256sum >/dev/null 2>&1 && ! command -v shasum >/dev/null 2>&1; then
        err "neither sha256sum nor shasum is available, so the download cannot be verified; install coreutils"
        return 1
    fi

    tmp=$(mktemp -d 2>/dev/null || mktemp -d -t park) || { err "cannot create a temporary directory"; return 1; }
    trap 'rm -rf "$tmp"' EXIT INT TERM
    for f in park.py $backend; do  # word splitting meant: a list of plain file names
        if ! download "$base_url/$f" "$tmp/$f"; then
            err "cannot download $base_url/$f"
            return 1
        fi
        want=$(pin_of "$f")
        got=$(sha256_of "$tmp/$f") || { err "cannot compute the sha256 of $f"; return 1; }
        if [ "$got" != "$want" ]; then
            err "$f from $base_url does not match its pinned sha256 (got $got, want $want); nothing was installed"
            return 1
        fi
    done

    mkdir -p "$prefix" "$bin_dir" || { err "cannot create $prefix or $bin_dir"; return 1; }
    for f in park.py $backend; do  # word splitting meant: a list of plain file names
        if ! { cp "$tmp/$f" "$prefix/$f.new" && chmod 0644 "$prefix/$f.new" && mv -f "$prefix/$f.new" "$prefix/$f"; }
        then
            err "cannot write $prefix/$f"
            return 1
        fi
    done
    # Byte-compiled once here, then imported as a module: a script would be compiled on every run. -I keeps
    # the current directory and PYTHON* variables out, so nothing there can stand in for park or the stdlib.
    python3 -I -m compileall -q "$prefix" >/dev/null 2>&1 || true
    cat >"$bin_dir/park.new" <<EOF
#!/bin/sh
# installed by park install.sh; remove with: sh install.sh --uninstall
exec python3 -I -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); import park; sys.exit(park.main())' \\
    $(quote "$prefix") "\$@"
EOF
    if ! { chmod 0755 "$bin_dir/park.new" && mv -f "$bin_dir/park.new" "$bin_dir/park"; }; then
        err "cannot write $bin_dir/park"
        return 1
    fi

    say "installed park $(python3 "$prefix/park.py" --version 2>/dev/null | cut -d ' ' -f 2) in $prefix"
    say "launcher: $bin_dir/park"
    case ":$PATH:" in
        *":$bin_dir:"*) ;;
        *) say "$bin_dir is not on your PATH; add this line to your shell profile:"
           # shellcheck disable=SC2016  # $PATH is meant literally: it is expanded by the user's shell later
           printf '    export PATH="%s:$PATH"\n' "$bin_dir" ;;
    esac
}

main "$@" || exit 1
