# Sourced by Scripts/package and Scripts/test: the flags of Cairn's release build, shared so that the tests and
# the portable tarball use one build. The Swift runtime and Foundation are linked statically
# (--static-swift-stdlib), and so is SQLite (GRDB links `-lsqlite3`, and a fresh Debian has no libsqlite3-0).
# To make `-lsqlite3` pick the static library, .build/static-libs holds only libsqlite3.a and must come before
# the system's library directory among the linker's -L paths. The first -L that SwiftPM passes comes from
# pkg-config's answer for libzmq (the CZeroMQ target), so a libzmq.pc in .build/static-libs/pkgconfig, the
# system's with that directory in front, is found first (--pkg-config-path). Scripts/package checks what stays
# dynamic: glibc, libstdc++, libgcc_s, libzmq and libopenblas.

# Fills the array RELEASE_FLAGS (for `swift build -c release "${RELEASE_FLAGS[@]}"`).
release_build_flags() {
    local libdir static_dir
    libdir="/usr/lib/$(uname -m)-linux-gnu"
    static_dir="$PWD/.build/static-libs"
    if [ ! -f "$libdir/libsqlite3.a" ] || ! pkg-config --exists libzmq; then
        echo "release build: $libdir/libsqlite3.a or libzmq's pkg-config file is missing;" \
            "install libsqlite3-dev and libzmq3-dev (Scripts/setup does)" >&2
        return 1
    fi
    mkdir -p "$static_dir/pkgconfig"
    ln -sfn "$libdir/libsqlite3.a" "$static_dir/libsqlite3.a"
    cat >"$static_dir/pkgconfig/libzmq.pc.new" <<PC
Name: libzmq
Description: the system's libzmq, with $static_dir searched first (Scripts/lib/release-build.sh)
Version: $(pkg-config --modversion libzmq)
Libs: -L$static_dir $(pkg-config --libs libzmq)
Cflags: $(pkg-config --cflags libzmq)
PC
    # Rewritten only when it changes, so that an unchanged build stays up to date.
    if cmp -s "$static_dir/pkgconfig/libzmq.pc.new" "$static_dir/pkgconfig/libzmq.pc"; then
        rm "$static_dir/pkgconfig/libzmq.pc.new"
    else
        mv "$static_dir/pkgconfig/libzmq.pc.new" "$static_dir/pkgconfig/libzmq.pc"
    fi
    RELEASE_FLAGS=(--static-swift-stdlib --pkg-config-path "$static_dir/pkgconfig")
}
