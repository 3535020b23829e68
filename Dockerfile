# apphost in a container: the supervisor runs as PID 1 (it reaps orphans and forwards signals),
# and restarts never replace PID 1, so the container lives through them.
#
#   docker build -t apphost .
#   docker run --rm -p 8199:8199 apphost                      # the embedded default (seed example)
#   docker run --rm -p 8199:8199 -v $PWD/server.yaml:/app/server.yaml:ro apphost
#
# Stopping: `docker stop` sends SIGTERM; the host goes away for `shutdown_delay` (serving on,
# `ready` answering 503), drains (up to `shutdown_timeout`) and exits 0. Give it the time:
# `docker stop -t` (default 10 s) at least shutdown_delay + shutdown_timeout.
#
# Upgrading the application inside a running container (PID 1 stays): run the executable from a
# mounted volume with `graceful: true` (the executable watch is on by default then), and replace
# it from the host with a copy and a rename, never by writing over it in place:
#
#   docker run -d -p 8199:8199 -v /srv/app:/opt/app --entrypoint /opt/app/apphost apphost \
#       run -c /opt/app/server.yaml
#   cp ./apphost-v2 /srv/app/.apphost.new && mv /srv/app/.apphost.new /srv/app/apphost
#
# The new generation must report ready (and pass its `readiness` request) before the old one
# drains; if it fails, the old one serves on. A config mounted as a Kubernetes ConfigMap (or any
# directory whose `..data` link is swapped) is watched the same way, checked, then restarted to.
#
# Build arguments: BUILDER is the image with the Rust toolchain, BASE the runtime image (it needs
# the C library the binary links against). tests/it/docker.rs builds this very file with images
# made from local material (no registry there).
ARG BUILDER=rust:1-bookworm
ARG BASE=debian:bookworm-slim

FROM ${BUILDER} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin apphost

FROM ${BASE}
COPY --from=build /src/target/release/apphost /usr/local/bin/apphost
WORKDIR /app
# A fixed unprivileged uid (no account needed: apphost writes only its control socket, under
# /tmp/apphost-UID or $XDG_RUNTIME_DIR).
USER 10001:10001
EXPOSE 8199
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/apphost"]
CMD ["run"]
