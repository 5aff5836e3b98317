# syntax=docker/dockerfile:1
# Multi-stage build of the `tether` binary: build with the Rust toolchain,
# run on a distroless base as a non-root user. TLS is rustls (ring), so the
# image needs no OpenSSL.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && echo 'fn main() {}' > benches/convergence.rs \
    && cargo build --release --locked --bin tether \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tether \
    && strip target/release/tether

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tether /usr/local/bin/tether
USER 65532:65532
# glibc's malloc keeps one arena per thread and seldom returns freed memory:
# two arenas hold the controller's RSS about 15 % lower at 10,000 resources
# (BENCHMARKS.md, "Memory at scale").
ENV MALLOC_ARENA_MAX=2
EXPOSE 9090 8443
ENTRYPOINT ["/usr/local/bin/tether"]
CMD ["run"]
