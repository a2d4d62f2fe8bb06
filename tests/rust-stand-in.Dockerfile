# A local stand-in for the Rust image deploy/Dockerfile builds with
# (rust:1.95-slim-bookworm), for tests/compose-e2e.sh, where no registry can be
# reached. In a file of its own: the legacy builder builds every stage before
# a target, and tests/stand-ins.Dockerfile's stages need other contexts.
#
#   docker build -f tests/rust-stand-in.Dockerfile --build-arg BASE=<bookworm
#       with gcc> --build-arg RUST_VERSION=1.95.0 -t rust:1.95-slim-bookworm CONTEXT
#
ARG BASE
# BASE is bookworm with what the official image installs
# (ca-certificates, gcc, libc6-dev, wget), and CONTEXT/toolchain the host's
# own Rust release (its rustc, cargo and std, the minimal profile the
# official image installs), at the official image's paths and environment.
# The compose test checks that the host's release is the pinned one.
FROM ${BASE}
ARG RUST_VERSION
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=${RUST_VERSION}
COPY toolchain /usr/local/rustup/toolchains/${RUST_VERSION}-x86_64-unknown-linux-gnu
# The certificate authorities this machine adds to Debian's (CONTEXT/local-ca,
# from /usr/local/share/ca-certificates; empty on most machines): a network
# that inspects TLS, as this one does, would otherwise refuse cargo's
# downloads from crates.io, as it would a user's behind such a proxy.
COPY local-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
RUN mkdir -p /usr/local/cargo/bin \
 && for tool in cargo rustc rustdoc; do \
      ln -s "/usr/local/rustup/toolchains/${RUST_VERSION}-x86_64-unknown-linux-gnu/bin/$tool" /usr/local/cargo/bin/; \
    done \
 && chmod -R a+w /usr/local/cargo \
 && rustc --version && cargo --version
