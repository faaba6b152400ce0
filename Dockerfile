# Both binaries in one small image: `liqonet-gateway` and `liqonet-route-agent`.
#   docker build -t ghcr.io/liqonet/liqonet:0.1.0 .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p liqonet-gateway -p liqonet-route-agent \
 && cp target/release/liqonet-gateway target/release/liqonet-route-agent /usr/local/bin/

# glibc and nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /usr/local/bin/liqonet-gateway /usr/local/bin/liqonet-route-agent /usr/local/bin/
ENTRYPOINT []
