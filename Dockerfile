# The harness image: `harness agent` for in-cluster cells, `harness operator`, and the CLI.
# Build from the repository's root: docker build -t harness .
FROM rust:1.95-slim-trixie AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p harness-cli

FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/harness /usr/local/bin/harness
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["harness"]
