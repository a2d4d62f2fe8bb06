# Local stand-ins for the observability images docker-compose.yaml pulls, for
# tests/compose-e2e.sh (no registry can be reached on the project's machines):
# the Collector, Jaeger and Prometheus from the binaries of
# tests/build-stack-tools.sh (the pinned releases), each on the test's Debian base and tagged
# under the name the compose file pins. Each behaves like the released image
# wherever the compose file relies on it: the same entrypoint and default
# command, the same user, the same environment and volumes.
#
#   docker build -f tests/stand-ins.Dockerfile --target otelcol \
#       --build-arg BASE=<a Debian image with wget> CONTEXT
# where CONTEXT holds `otelcol`, `jaeger` and `prometheus`.
ARG BASE

# otel/opentelemetry-collector-contrib: the binary at /otelcol-contrib, its
# config read from /etc/otelcol-contrib/config.yaml (compose mounts the
# project's there and repeats the flag), user 10001 (no group, as released).
FROM ${BASE} AS otelcol
COPY otelcol /otelcol-contrib
USER 10001
EXPOSE 4317 4318 13133
ENTRYPOINT ["/otelcol-contrib"]
CMD ["--config", "/etc/otelcol-contrib/config.yaml"]

# jaegertracing/jaeger (v2): no command, so the built-in all-in-one config
# with memory storage; JAEGER_LISTEN_HOST=0.0.0.0 makes its receivers and
# health check listen beyond the container's loopback (the binary's default
# is localhost). /tmp is a volume, as in the real image, so the container runs
# with a read-only root. The compose healthcheck runs `wget`: the real image
# has busybox's, this base Debian's.
FROM ${BASE} AS jaeger
ENV JAEGER_LISTEN_HOST=0.0.0.0
COPY jaeger /cmd/jaeger/jaeger-linux
VOLUME ["/tmp"]
USER 10001
EXPOSE 4317 4318 13133 16686
ENTRYPOINT ["/cmd/jaeger/jaeger-linux"]

# prom/prometheus: /bin/prometheus, user nobody, its data in /prometheus (a
# volume, owned by nobody, so the container runs with a read-only root),
# the compose healthcheck's `wget` from the base. Built from the 3.6.0
# module without the web UI's assets (the image has them; the tests use the
# API).
FROM ${BASE} AS prometheus
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus
USER 65534
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

# registry.k8s.io/prometheus-adapter/prometheus-adapter (tests/k8s-e2e.sh):
# the binary at /adapter, as released, user nobody; deploy/k8s gives it
# every argument.
FROM ${BASE} AS prometheus-adapter
COPY adapter /adapter
USER 65534
ENTRYPOINT ["/adapter"]
