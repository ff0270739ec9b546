# syntax=docker/dockerfile:1
# bertqa serve in a small image: build with the Rust toolchain, run on debian-slim (glibc) as a
# non-root user.
#
#   docker build -t bertqa .
#   docker run -p 8080:8080 -v "$PWD/models:/models:ro" bertqa --model /models/minilm-xquad-qa
#
# Without --model (or BERTQA_MODEL) the server downloads the default Hub model into the
# /data volume (HF_HOME) on its first start.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# The rust image carries gcc/g++ (the tokenizer's regex engine and suffix arrays are C/C++).
WORKDIR /src
COPY . .
# No debug info and no symbols: a release binary a third of the size. No target-cpu flag: the
# kernels pick AVX-512/AVX2 at run time, so the image runs on any x86-64.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_INCREMENTAL=0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bertqa \
    && install -m 0755 target/release/bertqa /usr/local/bin/bertqa

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: Hub downloads over HTTPS. Nothing else: the health check below needs only
# bash, which the base image already has. Not version-pinned: certificates should be current.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --create-home bertqa
COPY --from=build /usr/local/bin/bertqa /usr/local/bin/bertqa
ENV HF_HOME=/data/huggingface
VOLUME ["/data"]
USER 10001:10001
WORKDIR /data
EXPOSE 8080
# bash's /dev/tcp instead of curl or wget: no extra package (and its libraries) in the image for
# one GET. It probes the default port 8080: publish another port with -p rather than --port.
# /health is 200 only once the model has answered its warm-up request; a model download on the
# first start can take minutes, hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# Stops on SIGTERM after finishing the requests in flight (Docker's default stop signal).
ENTRYPOINT ["bertqa", "serve", "--host", "0.0.0.0"]
CMD []
