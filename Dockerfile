# syntax=docker/dockerfile:1
# sluice in a container: a multi-stage build (the same `cargo build --release --locked` as on
# a workstation), then a small Debian image running it as an unprivileged user.
#   docker build -t sluice .
#   docker run --rm -p 5060:5060/udp -p 5060:5060/tcp -v $PWD/my.toml:/etc/sluice/sluice.toml sluice
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY config config
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
# CA certificates: the system roots TLS gateways are verified against (without [server] tls_ca).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/sluice --create-home --shell /usr/sbin/nologin sluice \
 && mkdir -p /etc/sluice /var/log/sluice \
 && chown sluice /var/log/sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY contrib/compose/container.toml /etc/sluice/sluice.toml
USER sluice
# SIP over UDP and TCP, SIP over TLS, the admin API.
EXPOSE 5060/udp 5060/tcp 5061/tcp 9060/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "--config", "/etc/sluice/sluice.toml"]
