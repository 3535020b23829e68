# apphost in a container: the supervisor runs as PID 1 (it reaps orphans and forwards signals),
# and restarts never replace PID 1, so the container lives through them.
#
#   docker build -t apphost .
#   docker run --rm -p 8199:8199 apphost                      # the embedded default (seed example)
#   docker run --rm -p 8199:8199 -v $PWD/server.yaml:/app/server.yaml:ro apphost
#
# (No Docker engine runs where this project is developed; this file is kept plain on purpose.)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin apphost

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /app --create-home apphost
COPY --from=build /src/target/release/apphost /usr/local/bin/apphost
WORKDIR /app
USER apphost
EXPOSE 8199
# SIGTERM drains in-flight requests (up to shutdown_timeout) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/apphost"]
CMD ["run"]
