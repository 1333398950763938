#!/usr/bin/env bash
# Runs the compatibility suite: every test body against keel and (when installed) a real
# etcd, through etcd-client and etcdctl. See README.md for the environment variables.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# Prerequisites from Debian: protoc (etcd-client's build), etcdctl 3.4, etcd 3.4.
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
if [[ "${COMPAT_ETCD:-1}" != "0" && "${COMPAT_TARGETS:-both}" != "keel" ]]; then
    command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
fi
if ((${#missing[@]} > 0)); then
    echo "compat: installing ${missing[*]}" >&2
    if [[ "$(id -u)" -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Build keel unless the caller points at a binary (or runs etcd only).
if [[ -z "${KEEL_BIN:-}" && "${COMPAT_TARGETS:-both}" != "etcd" ]]; then
    echo "compat: building keel (cargo build --bin keel)" >&2
    if ! (cd "$repo" && cargo build --bin keel); then
        if [[ -n "${COMPAT_REQUIRE_KEEL:-}" && "${COMPAT_REQUIRE_KEEL}" != "0" ]]; then
            echo "compat: keel failed to build and COMPAT_REQUIRE_KEEL is set" >&2
            exit 1
        fi
        echo "compat: !!! keel failed to build; the suite will skip keel !!!" >&2
        # Never test a stale binary left by an earlier build.
        export KEEL_BIN="$repo/target/debug/keel-build-failed"
    else
        export KEEL_BIN="$repo/target/debug/keel"
    fi
fi

# Real processes on 2 cores: one test at a time keeps timing-sensitive tests honest.
exec cargo test --manifest-path "$here/Cargo.toml" -- \
    --test-threads="${COMPAT_TEST_THREADS:-1}" "$@"
