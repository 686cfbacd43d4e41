# The node agent's image: `docker build -t retrace .` from the repository root.
# Build stage: the project's own set-up (toolchain components, bpf-linker) and a release build.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN apt-get update -q && apt-get install -y -q --no-install-recommends clang llvm libelf-dev \
    && rustup component add rust-src \
    && cargo build --release -p xtask \
    && cargo xtask setup \
    && cargo build --release -p retrace-agent

# Run stage: the binary and the C library it links; nothing else.
FROM debian:bookworm-slim
RUN apt-get update -q && apt-get install -y -q --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/retrace /usr/local/bin/retrace
ENTRYPOINT ["/usr/local/bin/retrace"]
CMD ["agent", "--config", "/etc/retrace/agent.toml"]
