# Sourced by Scripts/package and Scripts/test: the flags of Cairn's release build, shared so that the tests and
# the portable tarball use one build. The Swift runtime and Foundation are linked statically
# (--static-swift-stdlib), and so is SQLite (GRDB links `-lsqlite3`, and a fresh Debian has no libsqlite3-0).
# To make `-lsqlite3` pick the static library, .build/static-libs holds only libsqlite3.a and is passed to the
# linker with -L: an explicit -L is searched before the system's library directory, which no target names
# explicitly (libzmq comes through its module map, openblas's pkg-config names only its own subdirectory).
# Scripts/package checks what stays dynamic: glibc, libstdc++, libgcc_s, libzmq and libopenblas.

# Fills the array RELEASE_FLAGS (for `swift build -c release "${RELEASE_FLAGS[@]}"`).
release_build_flags() {
    local libdir static_dir
    libdir="/usr/lib/$(uname -m)-linux-gnu"
    static_dir="$PWD/.build/static-libs"
    if [ ! -f "$libdir/libsqlite3.a" ]; then
        echo "release build: $libdir/libsqlite3.a is missing; install libsqlite3-dev (Scripts/setup does)" >&2
        return 1
    fi
    mkdir -p "$static_dir"
    ln -sfn "$libdir/libsqlite3.a" "$static_dir/libsqlite3.a"
    RELEASE_FLAGS=(--static-swift-stdlib -Xlinker "-L$static_dir")
}
