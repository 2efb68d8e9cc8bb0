#!/bin/sh
# The compiler DeepSpeed's op build runs in trainer-image/Dockerfile (CC and CXX point here).
# DeepSpeed compiles its CPU ops for the machine that builds them: -march=native, and its
# AVX-512 code path when that machine has AVX-512. An image runs on other nodes, where
# such code dies with SIGILL; build for x86-64-v3 (AVX2: Intel Haswell, AMD Zen and
# later) with DeepSpeed's AVX2 path instead, whatever the build machine is.
for arg do
  shift
  case "$arg" in
    -march=native) set -- "$@" -march=x86-64-v3 ;;
    -mtune=native) set -- "$@" -mtune=generic ;;
    -D__AVX512__) set -- "$@" -D__AVX256__ ;;
    *) set -- "$@" "$arg" ;;
  esac
done
exec g++ "$@"
