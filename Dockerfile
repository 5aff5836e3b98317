# syntax=docker/dockerfile:1
# The `tether` image: the binary on a distroless base, as a non-root user.
# TLS is rustls (ring), so the image needs no OpenSSL.
#
#   docker build -t tether .                      build from source (default)
#   docker build --build-arg BINARY_FROM=prebuilt \
#     --build-arg BINARY=target/image/tether .    take a binary built outside
#
# scripts/image.sh builds it without a daemon (buildah), on base images made
# locally, and is what the tests run.

ARG BUILDER_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# Where the binary comes from: `build` (compiled here) or `prebuilt`.
ARG BINARY_FROM=build

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
# The crate registry and the target directory are build caches, not layers:
# no stub of the manifest that could drift from the targets Cargo.toml
# declares, and a source edit recompiles only what it touched.
RUN --mount=type=cache,id=tether-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=tether-target,target=/src/target \
    cargo build --release --locked --bin tether \
    && mkdir -p /out && cp target/release/tether /out/tether && strip /out/tether

# A binary built outside, for machines where a release build inside a
# container takes too long (the test command builds the image this way).
FROM scratch AS prebuilt
ARG BINARY=target/image/tether
COPY ${BINARY} /out/tether

FROM ${BINARY_FROM} AS binary

FROM ${RUNTIME_IMAGE}
COPY --from=binary /out/tether /usr/local/bin/tether
USER 65532:65532
# The controller allocates with jemalloc (its options: .cargo/config.toml);
# what still uses glibc's malloc (libc itself: name lookups) keeps two
# arenas instead of one per thread (BENCHMARKS.md, "Memory at scale").
ENV MALLOC_ARENA_MAX=2
EXPOSE 9090 8443
ENTRYPOINT ["/usr/local/bin/tether"]
CMD ["run"]
